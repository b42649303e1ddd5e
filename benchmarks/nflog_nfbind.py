# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind NFLOG consumer for benchmarks/bench_nflog.py.

    python nflog_nfbind.py GROUP N RCVBUF_BYTES [TIMEOUT_SECONDS [IDLE_SECONDS [FIELDS [MODE]]]]

The same job as nflog_ref.c, written with nfbind: bind the log group with
``NfLog`` (copy packet, range 0xffff, receive buffer forced to RCVBUF_BYTES,
which the kernel doubles; overruns counted, not raised), print READY, and
hand every packet to a handler that reads the packet fields named in FIELDS
and counts.  FIELDS is a comma-separated subset of prefix, payload_len,
indev, timestamp (default: all four, what nflog_ref.c's callback reads), or
``none`` (the packet object is created and handed over, no field is read).

The clock starts when the handler sees the first packet and stops when
``log.run()`` returns after the handler has seen the N-th and called
``log.stop()``.  Then whatever is still readable is drained without waiting
(not timed); packets past the N-th are reported as "extra".  Prints one line:

    {"impl":"nfbind","packets":N,"seconds":S,"pps":P,"overruns":O,"extra":X,...}

Exits 2 (printing the JSON line with the count so far) if no packet comes
for IDLE_SECONDS (default 3) while fewer than N have been seen; killed by
SIGALRM (default action) if not done within TIMEOUT_SECONDS (default 60) of
READY, so a stuck run can't hang the driver.

MODE is ``drain`` (the default: all of the above), ``stream`` (the stream
and overload scenarios: packets are sent while the consumer runs and some
may be lost, so running out of packets for IDLE_SECONDS is the normal end;
exit 0 with the count handled and "seconds" from the first packet to the
last one handled, for which the handler reads the clock every packet), or
``rss=K`` (as ``stream``, and every K packets the process's resident set
size is read from /proc/self/statm; reported as "rss" = [[packets, bytes],
...]).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

#: field -> the statement the handler runs for it (it accumulates the value,
#: as the C callback does, so that reading it is not dead code)
FIELDS = {
    "prefix": "    if pkt.prefix:\n        acc[0] += 1\n",
    "payload_len": "    acc[1] += pkt.payload_len\n",
    "indev": "    acc[2] += pkt.indev or 0\n",
    "timestamp": "    if pkt.timestamp is None:\n        acc[3] += 1\n",
}
ALL_FIELDS = ",".join(FIELDS)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


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
    if not 4 <= len(argv) <= 8:
        print(f"usage: {argv[0]} GROUP N RCVBUF_BYTES [TIMEOUT_SECONDS [IDLE_SECONDS "
              f"[FIELDS [MODE]]]]", file=sys.stderr)
        return 64
    mode = argv[7] if len(argv) == 8 else "drain"
    rss_every = 0
    if mode.startswith("rss="):
        rss_every = int(mode[4:]) if mode[4:].isdigit() else 0
        if rss_every <= 0:
            print(f"nflog_nfbind: bad MODE {mode!r}", file=sys.stderr)
            return 64
    elif mode not in ("drain", "stream"):
        print(f"nflog_nfbind: bad MODE {mode!r}: drain, stream or rss=K",
              file=sys.stderr)
        return 64
    streaming = mode != "drain"
    group, npackets, rcvbuf = int(argv[1]), int(argv[2]), int(argv[3])
    timeout = int(argv[4]) if len(argv) >= 5 else 60
    idle = float(argv[5]) if len(argv) >= 6 else 3.0
    try:
        fields = parse_fields(argv[6] if len(argv) >= 7 else ALL_FIELDS)
    except ValueError as e:
        print(f"nflog_nfbind: {e}", file=sys.stderr)
        return 64
    if npackets <= 0:
        print("nflog_nfbind: packet count must be > 0", file=sys.stderr)
        return 64

    from nfbind import CopyMode, NfLog

    clock = time.perf_counter
    # packets seen, first-packet time, N-th packet time, last-packet time
    state = [0, 0.0, 0.0, 0.0]
    rss: list = []
    acc = [0, 0, 0, 0]      # with a prefix, payload bytes, sum of indev, no timestamp

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
        "payload_bytes": acc[1],
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
