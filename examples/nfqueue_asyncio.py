#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# NFQUEUE in an asyncio program: `async for pkt in q` next to other tasks.
#
# The rule it needs (UDP to port 7100 to queue 2):
#
#   iptables -A INPUT -p udp --dport 7100 -j NFQUEUE --queue-num 2
#   # or, with nftables:
#   nft add rule inet filter input udp dport 7100 queue num 2
#
# Run as root (or with CAP_NET_ADMIN):  python3 nfqueue_asyncio.py
# No thread is started: the queue's socket is watched by the event loop.
"""Accept the packets of an NFQUEUE queue from an asyncio task."""
import argparse
import asyncio
import sys

from nfbind import NfQueue


async def heartbeat(interval: float) -> None:
    """Another task, to show that the loop is not blocked by the queue."""
    n = 0
    while True:
        await asyncio.sleep(interval)
        n += 1
        print("tick %d" % n, flush=True)


async def serve(args: argparse.Namespace) -> int:
    seen = 0
    loop = asyncio.get_running_loop()
    with NfQueue(args.queue) as q:
        if args.timeout:
            loop.call_later(args.timeout, q.stop)
        ticker = asyncio.create_task(heartbeat(1.0))
        print("listening on queue %d" % args.queue, flush=True)
        try:
            async for pkt in q:  # ends on q.stop()
                seen += 1
                print("%d %s %d bytes" % (pkt.id, pkt.indev_name, len(pkt.payload)), flush=True)
                pkt.accept()
                if args.count and seen >= args.count:
                    q.stop()  # the loop ends cleanly (packets already read come first)
        finally:
            ticker.cancel()
    print("%d packets" % seen, flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", type=int, default=2, help="the --queue-num of the rule (default 2)")
    ap.add_argument("--count", type=int, default=0, help="stop after N packets (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
