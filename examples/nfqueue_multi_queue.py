#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Spread packets over several queues, one worker process per queue.
#
# The rule it needs (UDP to ports 7200-7299 spread over queues 0 and 1):
#
#   iptables -A INPUT -p udp --dport 7200:7299 -j NFQUEUE --queue-balance 0:1
#   # or, with nftables:
#   nft add rule inet filter input udp dport 7200-7299 queue num 0-1
#
# The kernel picks the queue from a hash of the source and destination
# addresses, so one flow always lands in the same queue (and worker).
#
# Run as root (or with CAP_NET_ADMIN):  python3 nfqueue_multi_queue.py --queues 0:1
# Ctrl-C, SIGTERM, --count or --timeout stop the workers; each closes its
# queue (accepting what it still holds) and exits.
"""Serve an NFQUEUE --queue-balance range with one worker process per queue."""
import argparse
import multiprocessing as mp
import os
import signal
import sys
import time

from nfbind import NfQueue


def worker(num: int, ready, counter, stop) -> None:
    """Accept the packets of queue ``num`` until ``stop`` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        q = NfQueue(num)
    except Exception as e:  # e.g. QueueBusy, PermissionDenied: tell the parent
        ready.put((num, "%s: %s" % (type(e).__name__, e)))
        return
    with q:
        import scapy.layers.inet  # noqa: F401  (now, rather than on the first packet)

        def handler(pkt):
            with counter.get_lock():
                counter.value += 1
            line = "queue %d pid %d: id %d %s\n" % (num, os.getpid(), pkt.id, pkt.scapy().summary())
            sys.stdout.write(line)  # one line, one write: the workers share stdout
            sys.stdout.flush()
            pkt.accept()
            if stop.is_set():  # a steady stream never lets run() time out
                q.stop()

        ready.put((num, None))
        parent = os.getppid()
        while not stop.is_set() and os.getppid() == parent:  # also end if the parent was killed
            q.run(handler, timeout=0.2)  # returns after 0.2 s without packets, or on q.stop()
    sys.stdout.write("queue %d: worker done\n" % num)  # one write: the workers share stdout
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queues", default="0:1", help="FIRST:LAST, as in --queue-balance (default 0:1)")
    ap.add_argument("--count", type=int, default=0, help="stop after N packets in all (default: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    args = ap.parse_args(argv)
    first, _, last = args.queues.partition(":")
    nums = range(int(first), int(last or first) + 1)

    ready, counter, stop = mp.Queue(), mp.Value("Q", 0), mp.Event()
    procs = [mp.Process(target=worker, args=(n, ready, counter, stop), name="queue-%d" % n)
             for n in nums]
    for p in procs:
        p.start()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rc = 0
    for _ in procs:
        num, err = ready.get(timeout=30)
        if err:
            print("queue %d: %s" % (num, err), file=sys.stderr, flush=True)
            stop.set()
            rc = 1
    if not rc:
        print("listening on queues %s" % ", ".join(map(str, nums)), flush=True)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while not stop.is_set():
        if args.count and counter.value >= args.count:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        stop.wait(0.05)
    stop.set()
    for p in procs:
        p.join(10)
        if p.is_alive():  # should not happen: a worker checks stop every 0.2 s
            p.terminate()
            p.join()
    print("%d packets" % counter.value, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
