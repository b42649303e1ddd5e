#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""pkt.process() lookups per second, warm and cold.

Run as root:

    python benchmarks/bench_process.py [--lookups 20000] [--cold-lookups 500]
                                       [--rounds 5] [--json]

Each round, in a throw-away namespace: a sender process sends one UDP
datagram that a rule queues at OUTPUT, and keeps its socket; the consumer
(a child with ``NfQueue(netns=...)``) holds that packet and calls
``pkt.process()`` on it

* "warm" (the ``nfbind`` column): N times in a row: one sock_diag request
  and the cache's check (a readlink of the descriptor and of the
  executable);
* "cold" (the reference column): with the caches emptied before each call:
  also a scan of /proc until the socket turns up, and the process's
  details read (stat, exe, cmdline, status).

The cold figure depends on how many processes and descriptors the machine
has (reported as ``processes`` and ``fds``); the scan reads the newest pids
first, and the sender is among the newest.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    Namespace, RunError, add_common_options, check_common, emit_json, find_nfbind_python,
    install_sigterm, rate_summary, round_line,
)

PORT = 5399
QUEUE = 17
SENDER = ("import socket, time\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "s.sendto(b'x', ('127.0.0.1', %d))\n"
          "print('SENT', flush=True)\n"
          "time.sleep(300)\n" % PORT)


def consume(a: argparse.Namespace) -> int:
    """The consumer: measure on the first packet, accept it, print JSON."""
    import json

    from nfbind import NfQueue, Verdict
    from nfbind import process as proc_mod

    out: dict = {"ok": False, "error": "no packet within 30 s"}

    def handler(pkt):  # noqa: ANN001
        first = pkt.process()
        if first is None:
            out.update(error="the lookup found no process")
            q.stop()
            return Verdict.ACCEPT
        t0 = time.perf_counter()
        for _ in range(a.lookups):
            pkt.process()
        warm = time.perf_counter() - t0
        owners = proc_mod._owners
        scans = owners.scans
        t0 = time.perf_counter()
        for _ in range(a.cold_lookups):
            owners.by_inode.clear()
            owners.procs.clear()
            pkt.process()
        cold = time.perf_counter() - t0
        assert owners.scans - scans == a.cold_lookups
        pids = [n for n in os.listdir("/proc") if n.isdigit()]
        fds = 0
        for pid in pids:
            try:
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                pass
        out.clear()
        out.update(ok=True, pid=first.pid, warm_per_s=a.lookups / warm, cold_per_s=a.cold_lookups / cold,
                   warm_us=warm / a.lookups * 1e6, cold_us=cold / a.cold_lookups * 1e6,
                   processes=len(pids), fds=fds)
        q.stop()
        return Verdict.ACCEPT

    with NfQueue(QUEUE, netns=a.netns) as q:
        print("READY", flush=True)
        q.run(handler, timeout=30)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def one_round(a: argparse.Namespace, py: str, env: dict, r: int) -> dict:
    with Namespace("nfb-procbench", tag=str(r)) as ns:
        ns.run("iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
               "-j", "NFQUEUE", "--queue-num", str(QUEUE))
        try:
            cons = ns.start("consumer", [py, os.path.abspath(__file__), "--consume",
                                         "--netns", ns.name, "--lookups", str(a.lookups),
                                         "--cold-lookups", str(a.cold_lookups)], env=env)
            cons.wait_line(b"READY", 60)
            sender = ns.start("sender", [py, "-c", SENDER], env=env)
            sender.wait_line(b"SENT", 30)
            if cons.wait_exit(120) is None:
                raise RunError("consumer did not finish within 120 s")
            res = cons.json_line()
            if res.get("ok") and res.get("pid") != sender.p.pid:
                res = {"ok": False, "error": "the lookup found pid %s, not the sender's %d"
                       % (res.get("pid"), sender.p.pid)}
        except RunError as e:
            return {"nfbind": {"ok": False, "error": str(e)}, "c": {"ok": False, "error": str(e)}}
    if not res.get("ok"):
        err = res.get("error", "failed")
        return {"nfbind": {"ok": False, "error": err}, "c": {"ok": False, "error": err}}
    common = {"processes": res["processes"], "fds": res["fds"]}
    return {"nfbind": dict(common, ok=True, pps=res["warm_per_s"], us=res["warm_us"]),
            "c": dict(common, ok=True, pps=res["cold_per_s"], us=res["cold_us"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(ap, size=False, cpu=False)
    ap.add_argument("--lookups", type=int, default=20000, help="warm lookups per round")
    ap.add_argument("--cold-lookups", type=int, default=500, help="cold lookups per round")
    ap.add_argument("--packets", type=int, help="same as --lookups (for bench.py)")
    ap.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--netns", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.packets:
        a.lookups = a.packets
        a.cold_lookups = max(10, min(a.cold_lookups, a.packets // 20))
    if a.consume:
        return consume(a)
    check_common(a)
    install_sigterm()
    py, env, where = find_nfbind_python(a.python)
    rows = []
    impls = ("nfbind", "c")
    for r in range(1, a.rounds + 1):
        row = {"round": r, **one_round(a, py, env, r)}
        if row["nfbind"]["ok"] and row["c"]["ok"]:
            row["ratio"] = row["nfbind"]["pps"] / row["c"]["pps"]
        rows.append(row)
        if not a.json:
            print(round_line(row, impls, lambda impl, res: (
                f"{'warm' if impl == 'nfbind' else 'cold'} {res['pps']:,.0f}/s "
                f"({res['us']:.1f} us)"), digits=1), flush=True)
    summary, _ = rate_summary(rows, impls)
    ok = all(row[i]["ok"] for row in rows for i in impls)
    last = next((row["nfbind"] for row in reversed(rows) if row["nfbind"]["ok"]), {})
    result = dict(summary, benchmark="process_lookup", packets=a.lookups,
                  cold_lookups=a.cold_lookups, rounds=a.rounds, nfbind=where,
                  processes=last.get("processes"), fds=last.get("fds"), rounds_detail=rows)
    if not ok:
        result["error"] = "a round failed"
    if a.json:
        emit_json(result)
    else:
        print(f"median warm: {summary['nfbind_pps_median'] or 0:,.0f} lookups/s, cold: "
              f"{summary['c_pps_median'] or 0:,.0f} lookups/s ({last.get('processes')} "
              f"processes, {last.get('fds')} descriptors)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
