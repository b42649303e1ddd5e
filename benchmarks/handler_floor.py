#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""What the benchmarks' own handlers cost, with no library around them.

    python benchmarks/handler_floor.py [--calls N] [--reps R] [--json]

The drain handlers of ``nfq_nfbind.py`` and ``nflog_nfbind.py`` (with and
without their five field reads) are called N times from C (``map`` over one
pre-made packet-like object whose fields are plain slots) and the CPU time
per call is printed, the minimum of R repetitions.  No root, no kernel.

This is the part of a packet's time that no binding can remove as long as
it calls a Python handler per packet: the call and the handler's own
bytecode.  Added to the C receive of ``breakdown.py`` (``recv+parse``), it
gives the best rate any design of that kind could reach; see "What the
targets need" in docs/performance.rst.  Also: ``object.__new__`` of a
slotted class called the same way (a Python packet object's creation).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from itertools import repeat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nflog_nfbind  # noqa: E402
import nfq_nfbind  # noqa: E402


class FakePacket:
    """The fields the handlers read, as plain slots (a hot packet's)."""

    __slots__ = ("prefix", "payload_len", "indev", "mark", "timestamp", "hw_protocol")

    def __init__(self) -> None:
        self.prefix = b"nfb-bench"
        self.payload_len = 128
        self.indev = 1
        self.mark = 0
        self.timestamp = 1.7e9
        self.hw_protocol = 0x0800


def per_call(fn, arg, calls: int, reps: int) -> float:
    """ns of CPU per ``fn(arg)`` called from C, the minimum over ``reps``."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        deque(map(fn, repeat(arg, calls)), 0)
        best = min(best, time.thread_time() - t0)
    return best / calls * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not 1000 <= a.calls <= 10_000_000 or not 1 <= a.reps <= 100:
        sys.exit("handler_floor: --calls 1000..10000000, --reps 1..100")
    # a count never reached: the handlers stop nothing
    n = 1 << 62
    clock = time.perf_counter
    pkt = FakePacket()
    q_drain, q_fields = nfq_nfbind.make_handlers([0, 0.0, 0.0, 0.0], [0] * 6, n, clock, 1, None)
    log_drain = nflog_nfbind.make_handler([], [0, 0.0, 0.0, 0.0], [0] * 5, n, clock, None)
    log_fields = nflog_nfbind.make_handler(nflog_nfbind.parse_fields(nflog_nfbind.ALL_FIELDS),
                                           [0, 0.0, 0.0, 0.0], [0] * 5, n, clock, None)

    def noop(p):
        return None

    report = {
        "calls": a.calls, "reps": a.reps, "python": sys.version.split()[0],
        "ns_per_call": {
            "object.__new__ (slotted class)": per_call(object.__new__, FakePacket, a.calls, a.reps),
            "no-op handler": per_call(noop, pkt, a.calls, a.reps),
            "nfqueue drain handler": per_call(q_drain, pkt, a.calls, a.reps),
            "nfqueue fields handler": per_call(q_fields, pkt, a.calls, a.reps),
            "nflog drain handler": per_call(log_drain, pkt, a.calls, a.reps),
            "nflog fields handler": per_call(log_fields, pkt, a.calls, a.reps),
        },
    }
    report["ns_per_call"] = {k: round(v, 1) for k, v in report["ns_per_call"].items()}
    if a.json:
        print(json.dumps(report))
        return 0
    print("ns of CPU per call from C, minimum of %d x %d calls (Python %s)"
          % (a.reps, a.calls, report["python"]))
    for k, v in report["ns_per_call"].items():
        print("  %-32s %7.1f" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
