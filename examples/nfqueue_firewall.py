#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# A small userspace firewall on NFQUEUE: drop one kind of packet, mark a
# second, rewrite a third with scapy, accept the rest.
#
#   UDP to port 7000 (--drop-port):     dropped
#   UDP to port 7001 (--mark-port):     accepted with mark 0x2a (--mark)
#   UDP to port 7002 (--rewrite-port):  accepted with its data upper-cased
#
# The rule it needs (UDP to ports 7000-7002 to queue 1).  It sits in the
# mangle table: an accepted packet goes on to the next table (filter), where a
# rule can see the mark:
#
#   iptables -t mangle -A INPUT -p udp --dport 7000:7002 -j NFQUEUE --queue-num 1
#   iptables -A INPUT -m mark --mark 0x2a      # optional: counts the marked packets
#   # or, with nftables (a chain at a priority before the one that matches the mark):
#   nft add rule inet mangle input udp dport 7000-7002 queue num 1
#
# Run as root (or with CAP_NET_ADMIN):  python3 nfqueue_firewall.py
# Rewriting needs scapy (pip install nfbind[scapy]).
"""Drop, mark or rewrite (with scapy) the packets of an NFQUEUE queue."""
import argparse
import sys
import threading

from nfbind import NfQueue


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", type=int, default=1, help="the --queue-num of the rule (default 1)")
    ap.add_argument("--drop-port", type=int, default=7000)
    ap.add_argument("--mark-port", type=int, default=7001)
    ap.add_argument("--rewrite-port", type=int, default=7002)
    ap.add_argument("--mark", type=lambda s: int(s, 0), default=0x2A, help="mark to set (default 0x2a)")
    ap.add_argument("--count", type=int, default=0, help="stop after N packets (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)

    from scapy.layers.inet import UDP
    from scapy.packet import Raw

    seen = 0
    with NfQueue(args.queue) as q:

        def handler(pkt):
            nonlocal seen
            seen += 1
            if args.count and seen >= args.count:
                q.stop()  # run() returns once this packet has its verdict
            ip = pkt.scapy()  # the IP packet, decoded
            dport = ip[UDP].dport if UDP in ip else None
            if dport == args.drop_port:
                print("drop    port=%s %s" % (dport, ip.summary()), flush=True)
                pkt.drop()
            elif dport == args.mark_port:
                print("mark    %#x port=%s %s" % (args.mark, dport, ip.summary()), flush=True)
                pkt.accept(mark=args.mark)
            elif dport == args.rewrite_port and Raw in ip:
                old = ip[Raw].load
                ip[Raw].load = old.upper()
                # lengths and checksums of a scapy packet are recomputed by nfbind
                print("rewrite %r -> %r port=%s %s" % (old, ip[Raw].load, dport, ip.summary()), flush=True)
                pkt.accept(payload=ip)
            else:
                print("accept  port=%s %s" % (dport, ip.summary()), flush=True)
                pkt.accept()

        if args.timeout:
            timer = threading.Timer(args.timeout, q.stop)  # stop() is safe from any thread
            timer.daemon = True
            timer.start()
        print("listening on queue %d" % args.queue, flush=True)
        q.run(handler)  # until q.stop() or Ctrl-C
    print("%d packets" % seen, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
