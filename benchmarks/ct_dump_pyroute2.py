# SPDX-License-Identifier: GPL-2.0-or-later
"""pyroute2 conntrack dumper for benchmarks/bench_conntrack.py (comparison only).

    python ct_dump_pyroute2.py [--family unspec|inet|inet6] [--timeout S] [--check]

One full dump of the current network namespace's conntrack table with
pyroute2, collected into a list of its parsed netlink messages::

    s = NFCTSocket(nfgen_family=...)
    msgs = list(s.dump())
    s.close()

Timed from before ``NFCTSocket()`` to after ``close()`` ("seconds").  With
--check, then, untimed, the same per-field sums as ct_dump_ref.c (IPv4
entries only); pyroute2's nested attribute lookups make that pass take far
longer than the dump itself (about 0.5 ms per entry), so the driver asks for
it in the first round only.
Prints ``{"impl":"pyroute2","flows":N,"seconds":S,"sums":{...},...}``.
Exits 3 (with a message) if pyroute2 cannot be imported, so the driver can
skip it.  Killed by SIGALRM (default action) after --timeout seconds (default 300)
for the dump, and again for the --check pass.
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

PORT_PROTOS = {socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132, 136, 33}
FAMILIES = {"unspec": socket.AF_UNSPEC, "inet": socket.AF_INET,
            "inet6": socket.AF_INET6}


def _sub(nla, *path):
    for name in path:
        if nla is None:
            return None
        nla = nla.get(name)
    return nla


def rss_kib() -> int:
    """Resident set size now (ru_maxrss keeps the
    pre-exec high-water mark: the driver's, through vfork)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def touch(msgs: list) -> dict:
    s = dict.fromkeys(("orig_src", "orig_dst", "orig_sport", "orig_dport",
                       "reply_src", "reply_dst", "reply_sport", "reply_dport",
                       "with_ports", "proto", "mark", "status", "zone"), 0)
    ipv4 = other = id_nonzero = 0
    tmin = tmax = None
    seen = set()
    for m in msgs:
        o, r = m.get("CTA_TUPLE_ORIG"), m.get("CTA_TUPLE_REPLY")
        osrc = _sub(o, "CTA_TUPLE_IP", "CTA_IP_V4_SRC")
        proto = _sub(o, "CTA_TUPLE_PROTO", "CTA_PROTO_NUM") or 0
        osport = _sub(o, "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT")
        odport = _sub(o, "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT")
        if osrc is not None:
            ipv4 += 1
            odst = _sub(o, "CTA_TUPLE_IP", "CTA_IP_V4_DST")
            s["orig_src"] += int(ipaddress.IPv4Address(osrc))
            s["orig_dst"] += int(ipaddress.IPv4Address(odst))
            s["reply_src"] += int(ipaddress.IPv4Address(
                _sub(r, "CTA_TUPLE_IP", "CTA_IP_V4_SRC")))
            s["reply_dst"] += int(ipaddress.IPv4Address(
                _sub(r, "CTA_TUPLE_IP", "CTA_IP_V4_DST")))
            if proto in PORT_PROTOS:
                s["with_ports"] += 1
                s["orig_sport"] += osport
                s["orig_dport"] += odport
                s["reply_sport"] += _sub(r, "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT")
                s["reply_dport"] += _sub(r, "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT")
            s["proto"] += proto
            s["mark"] += m.get("CTA_MARK") or 0
            s["status"] += m.get("CTA_STATUS") or 0
            s["zone"] += m.get("CTA_ZONE") or 0
        else:
            other += 1
            odst = None
        if m.get("CTA_ID"):
            id_nonzero += 1
        t = m.get("CTA_TIMEOUT")
        if t is not None:
            tmin = t if tmin is None or t < tmin else tmin
            tmax = t if tmax is None or t > tmax else tmax
        seen.add((proto, osrc, odst, osport, odport, m.get("CTA_ZONE") or 0))
    return {"ipv4": ipv4, "other_l3": other, "id_nonzero": id_nonzero,
            "timeout_min": tmin, "timeout_max": tmax, "distinct": len(seen),
            "sums": s}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=tuple(FAMILIES), default="unspec")
    ap.add_argument("--timeout", type=int, default=300,
                    help="SIGALRM after this many seconds")
    ap.add_argument("--check", action="store_true",
                    help="also compute the per-field sums (slow: tens of s)")
    a = ap.parse_args(argv[1:])
    family = FAMILIES[a.family]
    try:
        from pyroute2 import NFCTSocket
    except ImportError as e:
        print(f"ct_dump_pyroute2: pyroute2 not available: {e}", file=sys.stderr)
        return 3
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(a.timeout)

    clock = time.perf_counter
    rss0 = rss_kib()
    cpu0 = os.times()
    t0 = clock()
    sock = NFCTSocket(nfgen_family=family)
    try:
        msgs = list(sock.dump())
    finally:
        sock.close()
    t1 = clock()
    cpu1 = os.times()
    rss1 = rss_kib()

    out = {"impl": "pyroute2", "flows": len(msgs), "seconds": round(t1 - t0, 6),
           "user": round(cpu1.user - cpu0.user, 3),
           "sys": round(cpu1.system - cpu0.system, 3),
           "rss_growth_kib": rss1 - rss0}
    if a.check:
        t2 = clock()
        signal.alarm(a.timeout)
        try:
            out.update(touch(msgs))
        except Exception as e:  # noqa: BLE001 - reported, the driver flags it
            out["touch_error"] = f"{type(e).__name__}: {e}"
        out["touch_seconds"] = round(clock() - t2, 6)
    try:
        import pyroute2
        out["version"] = getattr(pyroute2, "__version__", None)
    except Exception:  # noqa: BLE001
        pass
    signal.alarm(0)
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
