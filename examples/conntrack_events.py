#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Stream the changes of the conntrack table: NEW, UPDATE and DESTROY events
# (what `conntrack -E` shows).
#
# The rule it needs: a network namespace tracks connections only once some
# rule uses conntrack, e.g.:
#
#   iptables -A INPUT -m conntrack --ctstate NEW,ESTABLISHED,RELATED -j ACCEPT
#   # or, with nftables:
#   nft add rule inet filter input ct state new,established,related accept
#
# Run as root (or with CAP_NET_ADMIN):  python3 conntrack_events.py --types new,destroy
"""Print conntrack events as they happen."""
import argparse
import sys
import threading

from nfbind import Conntrack, CtEvent


def event_types(text: str) -> CtEvent:
    types = CtEvent(0)
    for name in text.split(","):
        try:
            types |= CtEvent[name.strip().upper()]
        except KeyError:
            raise argparse.ArgumentTypeError("unknown event type %r (new, update, destroy)" % name)
    return types


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--types", type=event_types, default=CtEvent.NEW | CtEvent.UPDATE | CtEvent.DESTROY,
                    help="comma-separated: new, update, destroy (default all three)")
    ap.add_argument("--count", type=int, default=0, help="stop after N events (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)

    seen = 0
    with Conntrack() as ct, ct.events(args.types) as events:
        if args.timeout:
            timer = threading.Timer(args.timeout, events.stop)  # stop() is safe from any thread
            timer.daemon = True
            timer.start()
        # single-bit members only: before Python 3.11, iterating a flag class also
        # yields the combined ALL
        names = ", ".join(t.name for t in CtEvent if t.value & (t.value - 1) == 0
                          and t in args.types)
        print("listening for %s events" % names, flush=True)
        for event in events:  # ends on events.stop() or Ctrl-C
            seen += 1
            print("%-7s %s" % (event.type.name, event.flow), flush=True)
            if args.count and seen >= args.count:
                break
    print("%d events" % seen, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
