# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind conntrack dumper for benchmarks/bench_conntrack.py.

    python ct_dump_nfbind.py [--family unspec|inet|inet6] [--timeout S]
                             [--select SRC,DST,PROTO,SPORT,DPORT [--userspace]]

The same job as ct_dump_ref.c, written with nfbind: one full dump of the
current network namespace's conntrack table into a list, so every ``Flow``
object is built::

    with Conntrack() as ct:
        flows = list(ct.dump())

The clock runs from before ``Conntrack()`` to after the ``with`` block has
closed it ("seconds").  Afterwards, outside the timed region, one pass over
the list reads the fields ct_dump_ref.c reads in its callback and computes the
same per-field sums (IPv4 entries only), so the driver can check that both saw
the same table; how long that pass took is reported as "touch_seconds".
Prints one line:

    {"impl":"nfbind","flows":N,"seconds":S,"sums":{...},...}

``--family`` other than unspec is passed as ``dump(family=socket.AF_INET...)``.
``--select`` dumps only the flow with that original tuple
(``dump(src=, dst=, proto=, sport=, dport=)``, which the kernel filters);
``--userspace`` switches the kernel-side filter off (as on a kernel without
CTA_FILTER: every flow is decoded, userspace keeps the one); the flow found
is reported as "selected", the tuple asked for as "want".
Killed by SIGALRM (default action) after --timeout seconds (default 120).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import time

PORT_PROTOS = {socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132, 136, 33}  # sctp udplite dccp
FAMILIES = {"unspec": None, "inet": socket.AF_INET, "inet6": socket.AF_INET6}


def rss_kib() -> int:
    """Resident set size now (ru_maxrss keeps the
    pre-exec high-water mark: the driver's, through vfork)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def touch(flows: list) -> dict:
    """Read every flow the way ct_dump_ref.c's callback does."""
    s = dict.fromkeys(("orig_src", "orig_dst", "orig_sport", "orig_dport",
                       "reply_src", "reply_dst", "reply_sport", "reply_dport",
                       "with_ports", "proto", "mark", "status", "zone"), 0)
    ipv4 = other = id_nonzero = 0
    tmin = tmax = None
    seen = set()
    v4 = ipaddress.IPv4Address
    for f in flows:
        o, r = f.orig, f.reply
        proto = int(f.proto)
        if isinstance(o.src, v4):
            ipv4 += 1
            s["orig_src"] += int(o.src)
            s["orig_dst"] += int(o.dst)
            s["reply_src"] += int(r.src)
            s["reply_dst"] += int(r.dst)
            if proto in PORT_PROTOS:
                s["with_ports"] += 1
                s["orig_sport"] += o.sport
                s["orig_dport"] += o.dport
                s["reply_sport"] += r.sport
                s["reply_dport"] += r.dport
            s["proto"] += proto
            s["mark"] += f.mark or 0
            s["status"] += int(f.status)
            s["zone"] += f.zone or 0
        else:
            other += 1
        if f.id:
            id_nonzero += 1
        t = f.timeout
        if t is not None:
            tmin = t if tmin is None or t < tmin else tmin
            tmax = t if tmax is None or t > tmax else tmax
        seen.add((proto, o.src, o.dst, o.sport, o.dport, f.zone))
    return {"ipv4": ipv4, "other_l3": other, "id_nonzero": id_nonzero,
            "timeout_min": tmin, "timeout_max": tmax, "distinct": len(seen),
            "sums": s}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=tuple(FAMILIES), default="unspec")
    ap.add_argument("--timeout", type=int, default=120,
                    help="SIGALRM after this many seconds")
    ap.add_argument("--select", metavar="SRC,DST,PROTO,SPORT,DPORT",
                    help="dump only the flow with this original tuple")
    ap.add_argument("--userspace", action="store_true",
                    help="with --select: filter in userspace only")
    a = ap.parse_args(argv[1:])
    family = FAMILIES[a.family]
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(a.timeout)

    try:
        from nfbind import Conntrack
    except ImportError:
        from nfbind.conntrack import Conntrack
    kwargs: dict = {} if family is None else {"family": family}
    want = None
    if a.select:
        src, dst, proto, sport, dport = a.select.split(",")
        want = [src, dst, proto, int(sport), int(dport)]
        kwargs.update(src=src, dst=dst, proto=proto, sport=int(sport), dport=int(dport))
        if a.userspace:
            from nfbind.conntrack import _pool
            _pool._FORCE_USERSPACE = True

    clock = time.perf_counter
    rss0 = rss_kib()
    cpu0 = os.times()
    t0 = clock()
    with Conntrack() as ct:
        flows = list(ct.dump(**kwargs))
    t1 = clock()
    cpu1 = os.times()
    rss1 = rss_kib()

    out = {"impl": "nfbind", "flows": len(flows), "seconds": round(t1 - t0, 6),
           "user": round(cpu1.user - cpu0.user, 3),
           "sys": round(cpu1.system - cpu0.system, 3),
           "rss_growth_kib": rss1 - rss0}
    if want is not None:
        out["want"] = want
        out["userspace"] = a.userspace
        if len(flows) == 1:
            o = flows[0].orig
            out["selected"] = [str(o.src), str(o.dst), getattr(o.proto, "name", "").lower(),
                               o.sport, o.dport]
    t2 = clock()
    try:
        out.update(touch(flows))
    except Exception as e:  # noqa: BLE001 - reported, the driver flags it
        out["touch_error"] = f"{type(e).__name__}: {e}"
    out["touch_seconds"] = round(clock() - t2, 6)
    if flows:
        out["flow_type"] = f"{type(flows[0]).__module__}.{type(flows[0]).__qualname__}"
    signal.alarm(0)
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
