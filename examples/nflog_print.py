#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Print each packet a rule logs to an NFLOG group, decoded by scapy.
#
# The rule it needs (log UDP to port 9999, group 5, prefix "udp9999 "):
#
#   iptables -A INPUT -p udp --dport 9999 -j NFLOG --nflog-group 5 --nflog-prefix "udp9999 "
#   # or, with nftables:
#   nft add rule inet filter input udp dport 9999 log group 5 prefix '"udp9999 "'
#
# Run as root (or with CAP_NET_ADMIN):  python3 nflog_print.py --group 5
# Decoding needs scapy (pip install nfbind[scapy]).  Logging never holds
# packets: they go on whatever this script does.
"""Print the packets logged to an NFLOG group: prefix, devices, scapy summary."""
import argparse
import sys
import threading

from nfbind import NfLog


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--group", type=int, default=5, help="the --nflog-group of the rule (default 5)")
    ap.add_argument("--count", type=int, default=0, help="stop after N packets (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)

    seen = 0
    with NfLog(args.group) as log:
        if args.timeout:
            timer = threading.Timer(args.timeout, log.stop)  # stop() is safe from any thread
            timer.daemon = True
            timer.start()
        print("listening on NFLOG group %d" % args.group, flush=True)
        for pkt in log:  # ends on log.stop() or Ctrl-C
            seen += 1
            print("group=%d prefix=%r in=%s out=%s %s" % (
                pkt.group, pkt.prefix, pkt.indev_name, pkt.outdev_name,
                pkt.scapy().summary()), flush=True)
            if args.count and seen >= args.count:
                break
    print("%d packets" % seen, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
