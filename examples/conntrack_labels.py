#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Set conntrack labels on a flow, by bit and by name, and print them.
#
# The rule it needs: the kernel has room for labels only on connections
# created while some rule uses connlabel (without one, setting a label fails
# with ENOSPC).  This one also counts the packets of flows carrying label 3:
#
#   iptables -A OUTPUT -m connlabel --label 3
#   # or, with nftables:
#   nft add rule inet filter output ct label set 3
#
# plus a rule that makes the namespace track connections at all, e.g.
#   iptables -A INPUT -m conntrack --ctstate NEW,ESTABLISHED,RELATED -j ACCEPT
#
# Label names come from /etc/xtables/connlabel.conf (one "BIT NAME" per line,
# e.g. "3 suspicious"); without that file, use bit numbers (0..127).
#
# Run as root:  python3 conntrack_labels.py --proto udp --dport 53 --bit 3 --name suspicious
"""Add labels (bits 0..127 or connlabel.conf names) to a conntrack flow."""
import argparse
import os
import sys

from nfbind import Conntrack

DEFAULT_LABELMAP = "/etc/xtables/connlabel.conf"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proto", help="pick the first flow of this protocol (tcp, udp...)")
    ap.add_argument("--dport", type=int, help="pick the first flow to this port")
    ap.add_argument("--bit", type=int, action="append", default=[], help="a label bit to set (repeatable)")
    ap.add_argument("--name", action="append", default=[], help="a label name to set (repeatable)")
    ap.add_argument("--labelmap", default=DEFAULT_LABELMAP, help="connlabel.conf (default %(default)s)")
    args = ap.parse_args(argv)

    have_names = os.path.isfile(args.labelmap)
    if args.name and not have_names:
        print("label names need %s (one 'BIT NAME' per line)" % args.labelmap, file=sys.stderr)
        return 2
    if not args.bit and not args.name:
        args.bit = [3]

    with Conntrack(labelmap=args.labelmap if have_names else None) as ct:
        flow = None
        for f in ct.dump():
            if args.proto and getattr(f.proto, "name", str(f.proto)).lower() != args.proto.lower():
                continue
            if args.dport is not None and f.orig.dport != args.dport:
                continue
            flow = f
            break
        if flow is None:
            print("no matching connection in the table", file=sys.stderr)
            return 1
        print("flow:   %s" % flow, flush=True)
        print("before: labels=%s" % sorted(flow.labels), flush=True)
        ct.update(flow, labels_add=set(args.bit) | set(args.name))  # bits and names mix
        after = ct.get(flow)
        print("after:  labels=%s" % sorted(after.labels), flush=True)
        if have_names:
            print("names:  %s" % sorted(ct.label_names(after)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
