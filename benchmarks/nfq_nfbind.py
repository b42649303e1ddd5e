# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind NFQUEUE consumer for benchmarks/bench_nfqueue.py.

    python nfq_nfbind.py [--fields] [--idle S] [--rcvbuf B] [--rcvbuf-max B]
                         [--rss-every K] [--verdict-timeout S] [--timeout T]
                         QUEUE_NUM N MAX_QUEUE_LEN

The same job as nfq_ref.c, with the same command line (_consumer.py), written
with nfbind: bind the queue (copy packet, range 0xffff, a forced receive
buffer, default 64 MiB), print READY, accept every packet.  The clock starts
when the handler sees the first packet and stops when the handler has seen
the N-th; the last verdicts are flushed when ``q.run()`` returns, so the end
time is taken again after that and reported as well ("seconds" covers up to
the return of ``run()``).  Prints one line:

    {"impl":"nfbind","packets":N,"seconds":S,"pps":P,...}

Killed by SIGALRM (default action) if not done within --timeout seconds
(default 60) of READY, so a stuck run can't hang the driver.

Options for the other scenarios (without them it is the drain consumer
above):

``--fields``
    the handler also reads five fields of every packet, as ``nfq_ref
    --fields`` does: ``payload_len``, ``mark``, ``indev``, ``hw_protocol``
    and ``timestamp``, and sums them (reported as nfq_ref reports them).
``--idle S``
    stop S seconds after the last packet even if fewer than N came (packets
    were lost); exit 0.  "seconds" then runs from the first packet to the
    last one handled (the handler reads the clock for every packet), or to
    the return of ``run()`` if all N came.
``--rcvbuf B``
    the receive buffer to force (default 64 MiB).
``--rcvbuf-max B``
    how far an overrun may grow it (``NfQueue(rcvbuf_max=B)``; default:
    nfbind's own, the size it picks from MAX_QUEUE_LEN).  The size the
    buffer ended with is reported as "rcvbuf_final" (as the kernel reports
    it: twice the request).
``--verdict-timeout S``
    ``NfQueue(verdict_timeout=S)``: every packet gets a deadline (the
    handler still accepts each at once); for the cost of deadlines.
``--rss-every K``
    every K packets, record the process's resident set size (from
    /proc/self/statm); reported as "rss" = [[packets, bytes], ...].
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _consumer import parse_consumer_args, rss_bytes  # noqa: E402


def make_handlers(state: list, sums: list, n: int, clock, accept, stop):
    """The drain handler (counts, reads the clock at the first and the N-th
    packet, accepts) and the one that also reads five fields into ``sums``
    (benchmarks/handler_floor.py times them alone)."""

    def handler(pkt, state=state, n=n, clock=clock, accept=accept, stop=stop):
        c = state[0] + 1
        state[0] = c
        if c == 1:
            state[1] = clock()
        if c == n:
            state[2] = clock()
            stop()
        return accept

    def fields_handler(pkt, state=state, n=n, clock=clock, accept=accept, stop=stop,
                       sums=sums):
        c = state[0] + 1
        state[0] = c
        if c == 1:
            state[1] = clock()
        sums[0] += pkt.payload_len
        sums[1] += pkt.mark or 0
        sums[2] += pkt.indev or 0
        sums[3] += pkt.hw_protocol
        ts = pkt.timestamp
        if ts is None:
            sums[4] += 1
        else:
            sums[5] += int(ts * 1e6)
        if c == n:
            state[2] = clock()
            stop()
        return accept

    return handler, fields_handler


def main(argv: list[str]) -> int:
    a = parse_consumer_args(argv[1:], "nfq_nfbind", max_len=True,
                            options={"--rcvbuf-max": ("rcvbuf_max", int, None, "B"),
                                     "--verdict-timeout": ("verdict_timeout", float, None,
                                                           "S")},
                            flags=["--fields"])
    idle = a.idle
    rss_every = a.rss_every
    queue_num, npackets, max_len, timeout = a.num, a.packets, a.max_len, a.timeout

    from nfbind import NfQueue, Verdict

    accept = Verdict.ACCEPT
    clock = time.perf_counter
    # count, first-packet time, N-th packet time, last-packet time
    state = [0, 0.0, 0.0, 0.0]
    rss: list = []

    with NfQueue(queue_num, copy_range=0xFFFF, max_len=max_len,
                 rcvbuf=a.rcvbuf, rcvbuf_max=a.rcvbuf_max,
                 **({"verdict_timeout": a.verdict_timeout} if a.verdict_timeout else {})) as q:
        stop = q.stop

        # payload bytes, mark, indev, hw_protocol sums; packets without a timestamp;
        # the timestamps' sum in microseconds
        sums = [0, 0, 0, 0, 0, 0]
        handler, fields_handler = make_handlers(state, sums, npackets, clock, accept, stop)

        def timed_handler(pkt, state=state, n=npackets, clock=clock,
                          accept=accept, stop=stop):
            c = state[0] + 1
            state[0] = c
            t = clock()
            if c == 1:
                state[1] = t
            state[3] = t
            if c == n:
                state[2] = t
                stop()
            return accept

        def rss_handler(pkt, state=state, n=npackets, clock=clock, accept=accept,
                        stop=stop, k=rss_every or 1, rss=rss, rss_bytes=rss_bytes):
            c = state[0] + 1
            state[0] = c
            if c == 1:
                state[1] = clock()
            if not c % k:
                rss.append([c, rss_bytes()])
            if c == n:
                state[2] = state[3] = clock()
                stop()
            return accept

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(timeout)
        cpu0 = time.process_time()
        print("READY", flush=True)
        if rss_every:
            rss.append([0, rss_bytes()])
        if idle or rss_every:
            live = rss_handler if rss_every else timed_handler
            # wait for the first packet (SIGALRM bounds this), then run until
            # the N-th, or until nothing came for IDLE seconds
            while state[0] == 0:
                q.run(live, timeout=1.0)
            if state[0] < npackets:
                q.run(live, timeout=idle or 3.0)
        else:
            q.run(fields_handler if a.fields else handler)
        t_run_end = clock()
        cpu = round(time.process_time() - cpu0, 3)
        signal.alarm(0)
        try:  # nfbind's own counters (recv/send calls, batching), if it has them
            stats = dict(q.stats.as_dict())
        except Exception:  # noqa: BLE001 - informational only
            stats = None
        rcvbuf_final = q.rcvbuf

    count, t_first, t_nth, t_last = state
    if (idle or rss_every) and count < npackets:
        secs = t_last - t_first
        print(json.dumps({
            "impl": "nfbind", "packets": count, "seconds": round(secs, 6),
            "pps": round(count / secs, 1) if secs > 0 else 0.0,
            "idle_stop": True, "rss": rss or None, "cpu_seconds": cpu,
            "rcvbuf_final": rcvbuf_final, "stats": stats,
        }, separators=(",", ":")), flush=True)
        return 0
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
        **({"idle_stop": False} if idle else {}),
        **({"fields": "payload_len,mark,indev,hw_protocol,timestamp",
            "payload_bytes": sums[0], "mark_sum": sums[1], "indev_sum": sums[2],
            "hw_protocol_sum": sums[3], "no_timestamp": sums[4],
            "timestamp_sum_us": sums[5]} if a.fields else {}),
        **({"rss": rss} if rss_every else {}),
        "cpu_seconds": cpu,
        "rcvbuf_final": rcvbuf_final,
        "stats": stats,
    }, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
