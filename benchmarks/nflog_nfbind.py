# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind NFLOG consumer for benchmarks/bench_nflog.py.

    python nflog_nfbind.py [--fields FIELDS] [--stream] [--idle S] [--rcvbuf B]
                           [--rss-every K] [--timeout T] GROUP N

The same job as nflog_ref.c, with the same command line (_consumer.py; only
--fields is this one's), written with nfbind: bind the log group with
``NfLog`` (copy packet, range 0xffff, receive buffer forced to --rcvbuf
bytes, default 64 MiB, which the kernel doubles; overruns counted, not
raised), print READY, and hand every packet to a handler that reads the
packet fields named in FIELDS and counts.  FIELDS is a comma-separated
subset of prefix, payload_len, indev, mark, timestamp (default: all five,
what nflog_ref.c's callback reads), or ``none`` (the packet object is created and
handed over, no field is read).

The clock starts when the handler sees the first packet and stops when
``log.run()`` returns after the handler has seen the N-th and called
``log.stop()``.  Then whatever is still readable is drained without waiting
(not timed); packets past the N-th are reported as "extra".  Prints one line:

    {"impl":"nfbind","packets":N,"seconds":S,"pps":P,"overruns":O,"extra":X,...}

Exits 2 (printing the JSON line with the count so far) if no packet comes
for --idle seconds (default 3) while fewer than N have been seen; killed by
SIGALRM (default action) if not done within --timeout seconds (default 60)
of READY, so a stuck run can't hang the driver.

``--stream`` (the stream and overload scenarios): packets are sent while the
consumer runs and some may be lost, so running out of packets for --idle
seconds is the normal end; exit 0 with the count handled and "seconds" from
the first packet to the last one handled, for which the handler reads the
clock every packet.  ``--rss-every K``: as ``--stream``, and every K packets
the process's resident set size is read from /proc/self/statm; reported as
"rss" = [[packets, bytes], ...].
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _consumer import parse_consumer_args, rss_bytes  # noqa: E402

#: field -> the statement the handler runs for it (it accumulates the value,
#: as the C callback does, so that reading it is not dead code)
FIELDS = {
    "prefix": "    if pkt.prefix:\n        acc[0] += 1\n",
    "payload_len": "    acc[1] += pkt.payload_len\n",
    "indev": "    acc[2] += pkt.indev or 0\n",
    "mark": "    acc[4] += pkt.mark or 0\n",
    "timestamp": "    if pkt.timestamp is None:\n        acc[3] += 1\n",
}
ALL_FIELDS = ",".join(FIELDS)


def parse_fields(spec: str) -> list[str]:
    if spec == "none":
        return []
    names = [f for f in spec.split(",") if f]
    bad = [f for f in names if f not in FIELDS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"bad FIELDS {spec!r}: a comma-separated subset of "
                         f"{ALL_FIELDS}, or none")
    return names


def make_handler(fields: list[str], state: list, acc: list, n: int, clock, stop,
                 timed: bool = False, rss: list | None = None, rss_every: int = 0):
    """The handler, written out for exactly these fields (no per-packet
    loop over field names).  ``timed``: also keep the last packet's time in
    state[3]; ``rss_every``: append [count, RSS] to ``rss`` every that many
    packets."""
    src = ("def handler(pkt, state=state, acc=acc, n=n, clock=clock, stop=stop"
           + (", rss=rss, rss_bytes=rss_bytes" if rss_every else "") + "):\n"
           "    c = state[0] + 1\n"
           "    state[0] = c\n"
           "    if c == 1:\n"
           "        state[1] = clock()\n"
           + ("    state[3] = clock()\n" if timed else "")
           + (f"    if not c % {rss_every}:\n"
              "        rss.append([c, rss_bytes()])\n" if rss_every else "")
           + "".join(FIELDS[f] for f in fields) +
           "    if c == n:\n"
           "        state[2] = clock()\n"
           "        stop()\n")
    ns = {"state": state, "acc": acc, "n": n, "clock": clock, "stop": stop,
          "rss": rss, "rss_bytes": rss_bytes}
    exec(compile(src, "<nflog_nfbind handler>", "exec"), ns)  # noqa: S102
    return ns["handler"]


def main(argv: list[str]) -> int:
    a = parse_consumer_args(argv[1:], "nflog_nfbind",
                            options={"--fields": ("fields", str, ALL_FIELDS, "FIELDS")},
                            flags=["--stream"])
    rss_every = a.rss_every
    mode = "rss" if rss_every else "stream" if a.stream else "drain"
    streaming = mode != "drain"
    group, npackets, rcvbuf, timeout = a.num, a.packets, a.rcvbuf, a.timeout
    idle = a.idle if a.idle is not None else 3.0
    try:
        fields = parse_fields(a.fields)
    except ValueError as e:
        print(f"nflog_nfbind: {e}", file=sys.stderr)
        return 64

    from nfbind import CopyMode, NfLog

    clock = time.perf_counter
    # packets seen, first-packet time, N-th packet time, last-packet time
    state = [0, 0.0, 0.0, 0.0]
    rss: list = []
    # with a prefix, payload bytes, sum of indev, no timestamp, sum of marks
    acc = [0, 0, 0, 0, 0]

    with NfLog(group, copy_mode=CopyMode.PACKET, copy_range=0xFFFF,
               rcvbuf=rcvbuf, on_overrun="count") as log:
        granted = log.rcvbuf
        handler = make_handler(fields, state, acc, npackets, clock, log.stop,
                               timed=mode == "stream", rss=rss, rss_every=rss_every)
        if rss_every:
            rss.append([0, rss_bytes()])

        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(timeout)
        cpu0 = time.process_time()
        print("READY", flush=True)
        # wait for the first packet (SIGALRM bounds this), then run until
        # the handler stops the loop at the N-th, or nothing comes for IDLE s
        while state[0] == 0:
            log.run(handler, timeout=1.0)
        if state[0] < npackets:
            log.run(handler, timeout=idle)
        t_run_end = clock()
        cpu = round(time.process_time() - cpu0, 3)
        signal.alarm(0)

        # not timed: whatever is still readable (there should be nothing)
        late = [0]

        def count_late(pkt, late=late):
            late[0] += 1

        log.drain(count_late)
        stats = log.stats.as_dict()

    seen, t_first, t_nth, t_last = state
    if streaming and seen < npackets:
        # the stream ended early (packets were lost): a result all the same
        if rss_every:
            t_last = t_run_end - idle
        secs = t_last - t_first
        print(json.dumps({
            "impl": "nfbind", "packets": seen, "seconds": round(secs, 6),
            "pps": round(seen / secs, 1) if secs > 0 else 0.0,
            "overruns": stats["overruns"], "extra": late[0], "rcvbuf": granted,
            "recv_calls": stats["recv_calls"], "fields": ",".join(fields) or "none",
            "with_prefix": acc[0], "no_timestamp": acc[3], "payload_bytes": acc[1],
            "mark_sum": acc[4],
            "idle_stop": True, **({"rss": rss} if rss_every else {}),
            "cpu_seconds": cpu, "stats": stats,
        }, separators=(",", ":")), flush=True)
        return 0
    ok = seen >= npackets
    secs = t_run_end - t_first
    print(json.dumps({
        "impl": "nfbind",
        "packets": min(seen, npackets),
        "seconds": round(secs, 6) if ok else 0.0,
        "pps": round(npackets / secs, 1) if ok and secs > 0 else 0.0,
        "overruns": stats["overruns"],
        "extra": max(0, seen - npackets) + late[0],
        "rcvbuf": granted,
        "recv_calls": stats["recv_calls"],
        "fields": ",".join(fields) or "none",
        "with_prefix": acc[0],
        "no_timestamp": acc[3],
        "payload_bytes": acc[1], "mark_sum": acc[4],
        "seconds_to_nth_handler": round(t_nth - t_first, 6) if ok else None,
        **({"rss": rss} if rss_every else {}),
        "cpu_seconds": cpu,
        "stats": stats,
    }, separators=(",", ":")), flush=True)
    if not ok:
        print(f"nflog_nfbind: no packet for {idle:g} s after {seen} of {npackets}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
