#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Where a packet's time goes: ns per packet, stage by stage, in one process.

Run as root from the repository root, with nfbind built:

    python benchmarks/breakdown.py [--channel nflog|nfqueue|both] [--packets 50000]
                                   [--passes 3] [--json]

In a throw-away namespace, N UDP datagrams are logged (``-j NFLOG``) or queued
(``-j NFQUEUE``) while nothing reads them, and then read back in one of these
ways; each pass reads a fresh N and the figure is its median over --passes,
in ns per packet:

``recv+parse``
    the C helper alone (``nfb_log_recv`` / ``nfb_q_recv`` until the socket
    is empty): ``recvmmsg`` into the batch buffer and the C attribute parser
    filling the packet records.  NFQUEUE: the packets are then accepted by
    one batch verdict per receive (not counted in the stage).
``drain, no-op handler``
    the library's own loop (``drain()``): the same, plus the batch handed to
    Python, a packet object per packet, the handler call and (NFQUEUE) the
    verdicts: ``drain`` minus ``recv+parse`` is what Python adds.
``recv+parse+batch verdict`` (NFQUEUE)
    the same, the batch verdicts counted: the whole of a C consumer with
    batch verdicts, the kernel's reinjection of the accepted packets
    included.
``handler, bench``
    ``drain()`` with the handler the drain benchmarks use (a counter, the
    clock read at the first and last packet).

Then, on the packet objects of the last pass (kept alive), the cost of
reading each field once (``for p in pkts: p.FIELD`` minus an empty loop),
and of building a packet object and calling a one-line handler, measured
apart; NFLOG also with the hot fields filled eagerly (``hot fields``, and
the stage ``drain, hot fields filled``: what the fill costs).  NFQUEUE's verdict stage is ``drain`` with ``pkt.accept()`` against
``drain`` returning ``Verdict.ACCEPT``.

The namespace is deleted afterwards.  Nothing here is part of the test
suite.
"""
from __future__ import annotations

import argparse
from array import array
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Namespace, build, install_sigterm  # noqa: E402
import nflog_nfbind  # noqa: E402
import nfq_nfbind  # noqa: E402

PORT = 9999
GROUP = 7
QUEUE = 7
#: the longest queue the kernel keeps (NfQueue max_len)
QUEUE_MAX = 65536
SIZE = 100

#: fields each channel's packet is asked for (the fields rows read these)
FIELDS = {
    "nflog": ["prefix", "payload_len", "indev", "mark", "timestamp", "hw_protocol",
              "payload", "ct"],
    "nfqueue": ["payload_len", "mark", "indev", "hw_protocol", "timestamp", "id",
                "payload"],
}


def _no_stop() -> None:
    """The consumers' handlers stop their loop at the N-th packet; here the
    stage's own loop ends."""


def _now() -> int:
    return time.thread_time_ns()


def _send(ns: Namespace, udp: str, n: int) -> None:
    ns.run(udp, "send", str(PORT), str(n), str(SIZE), timeout=120)


def _field_costs(pkts: list, fields: list[str], reps: int = 5) -> dict[str, float]:
    """ns to read each field once per packet, the loop's own cost taken off."""
    out: dict[str, float] = {}

    def empty(pkts: list) -> int:
        t0 = _now()
        for p in pkts:
            pass
        return _now() - t0

    base = min(empty(pkts) for _ in range(reps))
    for f in fields:
        src = ("def run(pkts, _now=_now):\n    t0 = _now()\n    for p in pkts:\n"
               "        p.%s\n    return _now() - t0\n" % f)
        ns: dict = {"_now": _now}
        exec(compile(src, "<field %s>" % f, "exec"), ns)  # noqa: S102
        best = min(ns["run"](pkts) for _ in range(reps))
        out[f] = round(max(0, best - base) / len(pkts), 1)
    return out


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 1)


def nflog(ns: Namespace, udp: str, n: int, passes: int) -> dict:
    from nfbind import NfLog
    from nfbind._nflog import lib

    ns.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j",
           "NFLOG", "--nflog-group", str(GROUP), "--nflog-threshold", "1",
           "--nflog-prefix", "nfb-bench")
    res: dict[str, list[float]] = {}
    kept: list = []
    with NfLog(GROUP, rcvbuf=max(64 << 20, n * 1200), netns=ns.name) as log:
        c = log._c

        def recv_only() -> int:
            got = 0
            while True:
                k = lib.nfb_log_recv(c)
                if k < 0:
                    raise OSError(-k, "nfb_log_recv")
                if k == 0 and not c.rx.data_len:
                    return got
                got += k

        state = [0, 0.0, 0.0, 0.0]
        # nflog_nfbind.py's handler: the drain row's (no field read)
        bench = nflog_nfbind.make_handler([], state, [0] * 5, n, time.perf_counter, _no_stop)

        def keep(pkt, kept=kept):
            kept.append(pkt)

        stages = [("recv+parse", None), ("drain, no-op handler", lambda p: None),
                  ("drain, hot fields filled, no-op handler", lambda p: None),
                  ("handler, bench", bench)]
        for _ in range(passes):
            for name, h in stages:
                state[0] = 0
                _send(ns, udp, n)
                gc.collect()
                # the eager fill of the hot fields (nfbind.packet), forced
                log._hot_left = 10 ** 9 if "hot" in name else 0
                t0 = _now()
                if h is None:
                    got = recv_only()
                else:
                    got = 0
                    while True:
                        k = log.drain(h)
                        if not k:
                            break
                        got += k
                dt = _now() - t0
                if got != n:
                    raise RuntimeError("%s: read %d of %d packets" % (name, got, n))
                res.setdefault(name, []).append(dt / n)
        log._hot_left = 0
        _send(ns, udp, n)
        while log.drain(keep):
            pass
        out = {k: _median(v) for k, v in res.items()}
        out["fields"] = _field_costs(kept, FIELDS["nflog"])
        out["objects"] = _object_cost(kept, lambda p: None)
        kept.clear()
        log._hot_left = 10 ** 9
        _send(ns, udp, n)
        while log.drain(keep):
            pass
        log._hot_left = 0
        out["hot fields"] = _field_costs(kept, FIELDS["nflog"][:5])
        kept.clear()
    return out


def _object_cost(pkts: list, handler) -> dict[str, float]:
    """Building a packet object like the hot loop does, and calling a handler."""
    cls = type(pkts[0])
    b = pkts[0]._b
    new = object.__new__
    m = len(pkts)
    t0 = _now()
    for o in range(m):
        p = new(cls)
        p._b = b
        p._o = o
    t_obj = _now() - t0
    p = pkts[0]
    t0 = _now()
    for _ in range(m):
        handler(p)
    t_call = _now() - t0
    t0 = _now()
    for _ in range(m):
        pass
    t_loop = _now() - t0
    return {"object": round((t_obj - t_loop) / m, 1), "handler call": round(
        (t_call - t_loop) / m, 1), "loop": round(t_loop / m, 1)}


def nfqueue(ns: Namespace, udp: str, n: int, passes: int) -> dict:
    from nfbind import NfQueue, Verdict
    from nfbind._nfqueue import ffi, lib

    ns.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j",
           "NFQUEUE", "--queue-num", str(QUEUE))
    res: dict[str, list[float]] = {}
    kept: list = []
    accept = Verdict.ACCEPT
    with NfQueue(QUEUE, max_len=max(n, 1024), rcvbuf=max(64 << 20, n * 1200),
                 netns=ns.name) as q:
        c = q._c

        def recv_only() -> int:
            got = 0
            while True:
                k = lib.nfb_q_recv(c)
                if k < 0:
                    raise OSError(-k, "nfb_q_recv")
                if k == 0 and not c.rx.data_len:
                    return got
                if k:
                    # accepted by one batch verdict, not timed
                    t = _now()
                    vb = array("q", [lib.NF_ACCEPT]) * k
                    lib.nfb_q_settle(c, c.rx.recs, ffi.from_buffer("int64_t[]", vb), k, 0)
                    lib.nfb_q_take(c)
                    recv_only.excluded += _now() - t
                got += k
        recv_only.excluded = 0

        state = [0, 0.0, 0.0, 0.0]
        # nfq_nfbind.py's drain handler
        bench = nfq_nfbind.make_handlers(state, [0] * 6, n, time.perf_counter, accept,
                                         _no_stop)[0]

        def method(pkt):
            pkt.accept()

        stages = [("recv+parse", None), ("recv+parse+batch verdict", None),
                  ("drain, no-op handler", lambda p: accept),
                  ("handler, bench", bench), ("verdict by pkt.accept()", method)]
        for _ in range(passes):
            for name, h in stages:
                state[0] = 0
                recv_only.excluded = 0
                _send_async = ns.start("sender", [udp, "send", str(PORT), str(n), str(SIZE)])
                # the sender blocks on nothing: queued packets wait in the kernel
                _wait_queued(ns, n)
                gc.collect()
                t0 = _now()
                if h is None:
                    got = recv_only()
                else:
                    got = 0
                    while True:
                        k = q.drain(h)
                        if not k:
                            break
                        got += k
                dt = _now() - t0
                if name == "recv+parse":
                    dt -= recv_only.excluded
                _send_async.wait_exit(30.0)
                if got != n:
                    raise RuntimeError("%s: read %d of %d packets" % (name, got, n))
                res.setdefault(name, []).append(dt / n)
        out = {k: _median(v) for k, v in res.items()}
        ns.start("sender", [udp, "send", str(PORT), str(min(n, 5000)), str(SIZE)])
        _wait_queued(ns, min(n, 5000))

        def keep(pkt, kept=kept):
            kept.append(pkt)
            return accept
        while q.drain(keep):
            pass
        out["fields"] = _field_costs(kept, FIELDS["nfqueue"])
        kept.clear()
    return out


def _wait_queued(ns: Namespace, n: int, timeout: float = 30.0) -> None:
    """Until the namespace's queue holds n packets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").splitlines():
            f = line.split()
            if f and f[0] == str(QUEUE) and int(f[2]) >= n:
                return
        time.sleep(0.05)
    raise RuntimeError("the queue never held %d packets" % n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channel", choices=("nflog", "nfqueue", "both"), default="both")
    ap.add_argument("--packets", type=int, default=50000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("breakdown: must run as root (network namespaces, iptables)")
    if not 1000 <= a.packets <= 1_000_000 or not 1 <= a.passes <= 50:
        sys.exit("breakdown: --packets 1000..1000000, --passes 1..50")
    if a.channel != "nflog" and a.packets > QUEUE_MAX:
        sys.exit("breakdown: a queue holds at most %d packets: give --packets %d or fewer "
                 "for NFQUEUE, or --channel nflog" % (QUEUE_MAX, QUEUE_MAX))
    install_sigterm()
    udp = build("nfb_udp", "nfb_udp.c")
    report: dict = {"packets": a.packets, "passes": a.passes, "size": SIZE}
    for ch in ("nflog", "nfqueue"):
        if a.channel not in (ch, "both"):
            continue
        with Namespace("nfb-brk") as ns:
            recv = ns.start("receiver", [udp, "recv", str(PORT), str(10 ** 9), "3600"])
            recv.wait_line(b"READY", 10.0)
            report[ch] = (nflog if ch == "nflog" else nfqueue)(ns, udp, a.packets, a.passes)
    if a.json:
        print(json.dumps(report))
    else:
        for ch in ("nflog", "nfqueue"):
            if ch not in report:
                continue
            print("%s (ns per packet, %d packets x %d B, median of %d passes)"
                  % (ch, a.packets, SIZE, a.passes))
            for k, v in report[ch].items():
                if isinstance(v, dict):
                    for f, x in v.items():
                        print("  %-28s %8.1f" % ("%s: %s" % (k, f), x))
                else:
                    print("  %-28s %8.1f" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
