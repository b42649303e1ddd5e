# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind NFQUEUE consumer for benchmarks/bench_nfqueue.py.

    python nfq_nfbind.py QUEUE_NUM N MAX_QUEUE_LEN [TIMEOUT_SECONDS]

The same job as nfq_ref.c, written with nfbind: bind the queue (copy packet,
range 0xffff, a forced 64 MiB receive buffer), print READY, accept every
packet.  The clock starts when the handler sees the first packet and stops
when the handler has seen the N-th; the last verdicts are flushed when
``q.run()`` returns, so the end time is taken again after that and reported
as well ("seconds" covers up to the return of ``run()``).  Prints one line:

    {"impl":"nfbind","packets":N,"seconds":S,"pps":P,...}

Killed by SIGALRM (default action) if not done within TIMEOUT_SECONDS
(default 60) of READY, so a stuck run can't hang the driver.
"""
from __future__ import annotations

import json
import signal
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(f"usage: {argv[0]} QUEUE_NUM N MAX_QUEUE_LEN [TIMEOUT_SECONDS]",
              file=sys.stderr)
        return 64
    queue_num, npackets, max_len = int(argv[1]), int(argv[2]), int(argv[3])
    timeout = int(argv[4]) if len(argv) == 5 else 60
    if npackets <= 0:
        print("nfq_nfbind: packet count must be > 0", file=sys.stderr)
        return 64

    from nfbind import NfQueue, Verdict

    accept = Verdict.ACCEPT
    clock = time.perf_counter
    state = [0, 0.0, 0.0]  # count, first-packet time, N-th packet time

    with NfQueue(queue_num, copy_range=0xFFFF, max_len=max_len,
                 rcvbuf=64 << 20) as q:
        stop = q.stop

        def handler(pkt, state=state, n=npackets, clock=clock,
                    accept=accept, stop=stop):
            c = state[0] + 1
            state[0] = c
            if c == 1:
                state[1] = clock()
            if c == n:
                state[2] = clock()
                stop()
            return accept

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(timeout)
        print("READY", flush=True)
        q.run(handler)
        t_run_end = clock()
        signal.alarm(0)
        try:  # nfbind's own counters (recv/send calls, batching), if it has them
            stats = dict(q.stats.as_dict())
        except Exception:  # noqa: BLE001 - informational only
            stats = None

    count, t_first, t_nth = state
    if count < npackets:
        print(f"nfq_nfbind: run() returned after {count} of {npackets} packets",
              file=sys.stderr)
        return 2
    # Count the time until run() returned: verdicts still buffered when the
    # handler saw the N-th packet are sent by then.
    secs = t_run_end - t_first
    print(json.dumps({
        "impl": "nfbind",
        "packets": count,
        "seconds": round(secs, 6),
        "pps": round(count / secs, 1) if secs > 0 else 0.0,
        "seconds_to_nth_handler": round(t_nth - t_first, 6),
        "stats": stats,
    }, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
