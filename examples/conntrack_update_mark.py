#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# The conntrack-go sample: dump the table, set the mark of the first entry,
# print it before and after.
#
# The rule it needs: none to change a mark, but a network namespace tracks
# connections only once some rule uses conntrack, e.g.:
#
#   iptables -A INPUT -m conntrack --ctstate NEW,ESTABLISHED,RELATED -j ACCEPT
#   # or, with nftables:
#   nft add rule inet filter input ct state new,established,related accept
#
# Run as root (or with CAP_NET_ADMIN):  python3 conntrack_update_mark.py --mark 10
# Check with conntrack-tools:  conntrack -L
"""Set the mark of the first connection in the conntrack table."""
import argparse
import sys

from nfbind import Conntrack


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mark", type=lambda s: int(s, 0), default=10, help="the new mark (default 10)")
    ap.add_argument("--proto", help="only flows of this protocol (tcp, udp, icmp...)")
    ap.add_argument("--dport", type=int, help="only flows to this port")
    ap.add_argument("--family", help="ipv4 or ipv6 (default both)")
    args = ap.parse_args(argv)

    with Conntrack() as ct:
        first = None
        for flow in ct.dump(family=args.family):
            if args.proto and getattr(flow.proto, "name", str(flow.proto)).lower() != args.proto.lower():
                continue
            if args.dport is not None and flow.orig.dport != args.dport:
                continue
            first = flow
            break  # leaving a dump early is fine
        if first is None:
            print("no connection in the table", file=sys.stderr)
            return 1
        print("before: %s mark=%d" % (first.orig, first.mark), flush=True)
        o = first.orig
        if o.sport is not None:
            # conntrack-go's ConntrackTableUpdateMark(src, dst, proto, sport, dport, mark)
            ct.update_mark(o.src, o.dst, o.proto, o.sport, o.dport, args.mark, zone=first.zone)
        else:  # ICMP and other flows without ports: update the Flow itself
            ct.update(first, mark=args.mark)
        after = ct.get(first)
        print("after:  %s mark=%d" % (after.orig, after.mark), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
