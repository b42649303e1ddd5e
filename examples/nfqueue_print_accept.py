#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# The go-nfqueue example: print each queued packet's id and payload, accept it.
#
# The rule it needs (ICMP to queue 100):
#
#   iptables -A INPUT -p icmp -j NFQUEUE --queue-num 100
#   # or, with nftables:
#   nft add rule inet filter input meta l4proto icmp queue num 100
#
# Run as root (or with CAP_NET_ADMIN):  python3 nfqueue_print_accept.py
# While nothing listens on the queue the kernel drops what the rule sends
# there (add --queue-bypass to the rule to accept it instead).
"""Print the id and payload (hex) of each packet on an NFQUEUE queue and accept it."""
import argparse
import sys
import threading

from nfbind import NfQueue


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", type=int, default=100, help="the --queue-num of the rule (default 100)")
    ap.add_argument("--count", type=int, default=0, help="stop after N packets (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)

    seen = 0
    with NfQueue(args.queue) as q:

        def handler(pkt):
            nonlocal seen
            print("%d\t%s" % (pkt.id, pkt.payload.hex()), flush=True)
            pkt.accept()
            seen += 1
            if args.count and seen >= args.count:
                q.stop()

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
