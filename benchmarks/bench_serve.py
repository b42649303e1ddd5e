#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""NFQUEUE scale-out: nfbind.serve() with two workers vs. one worker.

Run as root:

    python benchmarks/bench_serve.py [--packets 60000] [--rounds 5] [--size 100]
                                     [--sources 4096] [--pin] [--json] [-v]

Each round runs both configurations (interleaved: one, two, one, two ...).
One run:

1. a throw-away network namespace gets ``lo`` up and the rule
   ``iptables -A INPUT -p udp --dport 9999 -j NFQUEUE --queue-balance 0:1``
   ("two": ``serve(handler, queues=range(2), workers=2)``) or
   ``... --queue-num 0`` ("one": ``serve(handler, queues=[0], workers=1)``);
2. a UDP receiver (``bin/nfb_udp recv``) binds 127.0.0.1:9999;
3. the consumer (this file, ``_consumer`` mode) runs serve() with an
   accept-all handler (queue length and a forced 64 MiB receive buffer big
   enough for all N packets) and prints its workers' pids and READY; the
   driver SIGSTOPs the workers and the receiver;
4. this file's ``_send`` mode sends N datagrams to 127.0.0.1:9999 from
   ``--sources`` different source addresses of 127.0.0.0/8 (one socket,
   IP_PKTINFO per datagram): ``--queue-balance`` hashes the addresses, not
   the ports, so one source would fill one queue;  the driver checks in the
   namespace's /proc/net/netfilter/nfnetlink_queue that all N wait and none
   was dropped, and records the split over the queues;
5. the workers are SIGCONTed and drain the queues; once nothing waits, the
   consumer is stopped (SIGTERM) and prints serve()'s result: per worker the
   packets and the monotonic times of its first and last batch;
6. the receiver is SIGCONTed and must count all N accepted datagrams.

rate = N / (last batch of any worker - first batch of any worker).  The
summary is the median over rounds of each rate and of the per-round ratio
two/one; ``ok`` is true when every run delivered every packet and the
median ratio is at least ``--target`` (1.5).  Namespaces are deleted and
only processes started here are killed, also on errors and SIGTERM
(_harness.py holds what the drivers share).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    Namespace, RunError, add_common_options, build, check_common, emit_json,
    find_nfbind_python, install_sigterm, interleaved_rounds, median, median_of, round_line,
    set_ratio, wait_stopped,
)

PORT = 9999
MAX_QUEUE = 65536
CONSUMER_TIMEOUT = 120.0
READY_TIMEOUT = 30.0
CONFIGS = ("one", "two")


# --------------------------------------------------------------------------
# the modes run inside the namespace


def consumer_main(argv: list[str]) -> int:
    """``_consumer WORKERS FIRST_QUEUE NQUEUES MAX_LEN PIN``: serve() until
    SIGTERM, then print its result as JSON."""
    workers, first, nqueues, max_len, pin = (int(a) for a in argv)
    import nfbind
    from nfbind import Verdict

    accept = Verdict.ACCEPT

    def handler(pkt, accept=accept):
        return accept

    def ready(pids):
        if pin:  # worker k on CPU k (of those this process may use)
            cpus = sorted(os.sched_getaffinity(0))
            for k, (pid, _) in enumerate(sorted(pids.items(), key=lambda kv: kv[1])):
                os.sched_setaffinity(pid, {cpus[k % len(cpus)]})
        print("PIDS " + json.dumps({str(p): list(q) for p, q in pids.items()}), flush=True)
        print("READY", flush=True)

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(int(CONSUMER_TIMEOUT))
    result = nfbind.serve(handler, queues=range(first, first + nqueues), workers=workers,
                          ready=ready, copy_range=0xFFFF, max_len=max_len, rcvbuf=64 << 20,
                          stop_timeout=10.0)
    signal.alarm(0)
    print(json.dumps({
        "packets": result.packets,
        "seconds": result.seconds,
        "pps": result.pps,
        "overruns": result.overruns,
        "workers": [{"queues": list(w.queues), "pid": w.pid, "packets": w.packets,
                     "first": w.first_packet, "last": w.last_packet, "exitcode": w.exitcode}
                    for w in result.workers],
    }, separators=(",", ":")), flush=True)
    return 0


def send_main(argv: list[str]) -> int:
    """``_send PORT N SIZE SOURCES``: N datagrams to 127.0.0.1:PORT, source
    address k % SOURCES of 127.1.0.1 ... (set per datagram with IP_PKTINFO)."""
    port, n, size, sources = (int(a) for a in argv)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(("0.0.0.0", 0))
    pktinfo = getattr(socket, "IP_PKTINFO", 8)  # Python < 3.12 lacks it; 8 in <linux/in.h>
    cmsgs = []
    for k in range(sources):
        src = socket.inet_aton("127.%d.%d.%d" % (1 + (k >> 16) % 254, (k >> 8) & 255,
                                                 1 + (k & 255) % 254))
        # struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
        cmsgs.append([(socket.IPPROTO_IP, pktinfo,
                       struct.pack("=i4s4s", 0, src, b"\0\0\0\0"))])
    payload = [b"x" * size]
    dst = ("127.0.0.1", port)
    sendmsg = s.sendmsg
    t0 = time.monotonic()
    for k in range(n):
        sendmsg(payload, cmsgs[k % sources], 0, dst)
    print(json.dumps({"sent": n, "seconds": round(time.monotonic() - t0, 3)}), flush=True)
    return 0


# --------------------------------------------------------------------------
# the driver


def _queues(pid: int) -> dict[int, dict]:
    """The nfnetlink_queue rows of the namespace process ``pid`` lives in
    (read through /proc/PID/net: no process is started for it)."""
    rows = {}
    with open("/proc/%d/net/netfilter/nfnetlink_queue" % pid, encoding="ascii") as f:
        for line in f:
            v = line.split()
            if len(v) >= 8:
                rows[int(v[0])] = {"waiting": int(v[2]), "queue_dropped": int(v[5]),
                                   "user_dropped": int(v[6])}
    return rows


def _cpu_seconds(pid: int) -> float:
    """Time ``pid`` has spent on a CPU so far (/proc/PID/schedstat, ns)."""
    with open("/proc/%d/schedstat" % pid, encoding="ascii") as f:
        return int(f.read().split()[0]) / 1e9


def _last_cpu(pid: int) -> int:
    with open("/proc/%d/stat" % pid, encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def _is_worker(pid: int) -> bool:
    """True while ``pid`` is still one of our consumer's processes."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"_consumer" in cmdline and os.path.basename(__file__).encode() in cmdline


def _signal_worker(pid: int, sig: int) -> None:
    if _is_worker(pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_one(config: str, py: str, env: dict, udp_tool: str, npackets: int, size: int,
            sources: int, pin: bool, verbose: bool, tag: str) -> dict:
    worker_pids: list[int] = []
    nq = 2 if config == "two" else 1
    result: dict = {"config": config, "ok": False}
    with open("/proc/loadavg", encoding="ascii") as f:
        result["loadavg_1min"] = float(f.read().split()[0])
    try:
        with Namespace("nfb-serve", tag) as ns:
            def log(msg: str) -> None:
                if verbose:
                    print("  [%s %s] %s" % (config, ns.name, msg), file=sys.stderr,
                          flush=True)

            try:
                _drain_run(ns, log, result, worker_pids, nq, py, env, udp_tool, npackets,
                           size, sources, pin)
            finally:
                # stopped workers must run to see their parent go (their stop
                # pipe closes) and exit; the ones that do not are killed by pid
                for pid in worker_pids:
                    _signal_worker(pid, signal.SIGCONT)
                for p in ns.procs:
                    p.kill()
                end = time.monotonic() + 5.0
                while any(_is_worker(pid) for pid in worker_pids) and time.monotonic() < end:
                    time.sleep(0.05)
                for pid in worker_pids:
                    _signal_worker(pid, signal.SIGKILL)
    except (RunError, subprocess.TimeoutExpired, OSError, ValueError, KeyError,
            StopIteration) as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
        return result
    problems = []
    if result["packets"] != npackets:
        problems.append("consumer handled %s of %d" % (result["packets"], npackets))
    if result["received"] != npackets:
        problems.append("receiver got %s of %d" % (result["received"], npackets))
    if problems:
        result["error"] = "; ".join(problems)
    else:
        result["ok"] = True
    return result


def _drain_run(ns: Namespace, log, result: dict, worker_pids: list[int], nq: int, py: str,
               env: dict, udp_tool: str, npackets: int, size: int, sources: int,
               pin: bool) -> None:
    """Steps 1-6 of the module's docstring, for one configuration."""
    target = (["--queue-balance", "0:1"] if nq == 2 else ["--queue-num", "0"])
    ns.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j",
           "NFQUEUE", *target)
    recv = ns.start("receiver", [udp_tool, "recv", str(PORT), str(npackets),
                                 str(int(CONSUMER_TIMEOUT + 60))])
    recv.wait_line(b"READY", 10.0)

    max_len = min(max(npackets, 1024), MAX_QUEUE)
    cons = ns.start(result["config"], [py, os.path.abspath(__file__), "_consumer", str(nq),
                                       "0", str(nq), str(max_len), "1" if pin else "0"],
                    env=env)
    cons.wait_line(b"READY", READY_TIMEOUT)
    line = next(l for l in cons.out.decode().splitlines() if l.startswith("PIDS "))
    pids = [int(p) for p in json.loads(line[5:])]
    worker_pids.extend(pids)
    log("workers %s ready" % pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    recv.signal(signal.SIGSTOP)
    for pid in pids:
        wait_stopped(pid)
    wait_stopped(recv.p.pid)

    r = subprocess.run(ns.cmd(py, os.path.abspath(__file__), "_send", str(PORT),
                              str(npackets), str(size), str(sources)),
                       capture_output=True, text=True, timeout=120, env=env, check=False)
    if r.returncode != 0:
        raise RunError("sender failed (%d): %s" % (r.returncode, r.stderr.strip()[-500:]))
    result["sender"] = json.loads(r.stdout.strip().splitlines()[-1])
    log("sent: %s" % result["sender"])

    end = time.monotonic() + 5.0
    rows = _queues(cons.p.pid)
    while sum(q["waiting"] for q in rows.values()) < npackets and time.monotonic() < end:
        time.sleep(0.05)
        rows = _queues(cons.p.pid)
    waiting = {q: rows[q]["waiting"] for q in sorted(rows)}
    result["split"] = waiting
    drops = sum(q["queue_dropped"] + q["user_dropped"] for q in rows.values())
    if sum(waiting.values()) != npackets or drops:
        raise RunError("expected %d packets waiting, queues show %s (%d dropped)"
                       % (npackets, waiting, drops))
    log("queued: %s" % waiting)

    cpu0 = [_cpu_seconds(pid) for pid in pids]
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    end = time.monotonic() + CONSUMER_TIMEOUT
    while time.monotonic() < end:
        rows = _queues(cons.p.pid)
        if not any(q["waiting"] for q in rows.values()):
            break
        time.sleep(0.02)
    else:
        raise RunError("the workers did not drain the queues")
    # CPU time each worker used for the drain, and where it last ran:
    # both near the drain's length, on different CPUs = real parallelism
    result["worker_cpu"] = [
        {"pid": pid, "cpu_seconds": round(_cpu_seconds(pid) - c0, 3),
         "last_cpu": _last_cpu(pid)} for pid, c0 in zip(pids, cpu0)]
    cons.signal(signal.SIGTERM)
    rc = cons.wait_exit(30.0)
    if rc != 0:
        raise RunError("consumer exited %s" % rc + cons.stderr_tail())
    res = cons.json_line()
    result.update(packets=res["packets"], seconds=res["seconds"], pps=res["pps"],
                  workers=res["workers"])
    cpu = sum(w["cpu_seconds"] for w in result["worker_cpu"])
    # >1: the workers really ran at the same time; packets per CPU second:
    # the cost of a packet, whatever else the machine was doing
    result["parallelism"] = round(cpu / res["seconds"], 2) if res["seconds"] else None
    result["cpu_pps"] = round(res["packets"] / cpu) if cpu else None
    log("consumer: %s" % res)
    log("worker CPU: %s" % result["worker_cpu"])

    recv.signal(signal.SIGCONT)
    rrc = recv.wait_exit(10.0)
    if rrc is None:
        recv.signal(signal.SIGTERM)
        rrc = recv.wait_exit(5.0)
    if rrc is None:
        raise RunError("receiver did not report")
    result["received"] = recv.json_line().get("received")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=60000,
                    help="packets per run, queued all at once (max %d)" % MAX_QUEUE)
    ap.add_argument("--sources", type=int, default=4096,
                    help="source addresses the packets come from (the balance hash input)")
    ap.add_argument("--pin", action="store_true", help="pin worker k to CPU k")
    ap.add_argument("--target", type=float, default=1.5, help="the ratio that counts as ok")
    add_common_options(ap, cpu=False)
    a = ap.parse_args(argv)
    check_common(a)
    if not 2 <= a.packets <= MAX_QUEUE:
        sys.exit("bench: --packets must be 2..%d" % MAX_QUEUE)
    if not 1 <= a.sources <= 1 << 20:
        sys.exit("bench: --sources must be 1..1048576")

    udp_tool = build("nfb_udp", "nfb_udp.c")
    py, env, where = find_nfbind_python(a.python)
    info = {"packets": a.packets, "rounds": a.rounds, "size": a.size, "sources": a.sources,
            "pin": a.pin, "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": py, "nfbind": where}
    if not a.json:
        print("NFQUEUE scale-out: %d packets x %d B, %d rounds, 1 worker/1 queue vs. "
              "2 workers/--queue-balance 0:1, kernel %s, %s CPUs"
              % (a.packets, a.size, a.rounds, info["kernel"], info["cpus"]), flush=True)
    install_sigterm()

    def describe(config: str, res: dict) -> str:
        split = "/".join(str(v) for v in res["split"].values())
        return "%s %s pps (split %s, parallelism %.2f)" % (
            "1 worker" if config == "one" else "2 workers",
            "{:,.0f}".format(res["pps"]), split, res["parallelism"] or 0)

    def on_row(row: dict) -> None:
        set_ratio(row, "two", "one")
        if not a.json:
            print(round_line(row, CONFIGS, describe, digits=2)
                  + "  load %.1f" % row["one"]["loadavg_1min"], flush=True)

    rounds = interleaved_rounds(
        a.rounds, CONFIGS,
        lambda config, r: run_one(config, py, env, udp_tool, a.packets, a.size, a.sources,
                                  a.pin, a.verbose, "%d%s" % (r, config)),
        on_row)
    failed = any(not row[c]["ok"] for row in rounds for c in CONFIGS)

    ratios = [row["ratio"] for row in rounds if "ratio" in row]
    ratio = median(ratios)
    ok = not failed and ratio is not None and ratio >= a.target
    summary = {"one_worker_pps_median": median_of(rounds, "one", "pps"),
               "two_workers_pps_median": median_of(rounds, "two", "pps"),
               "ratio_median": ratio, "target": a.target, "ok": ok, "info": info,
               "rounds_detail": rounds}
    if a.json:
        emit_json(summary, compact=True)
    else:
        fmt = lambda x: "-" if x is None else "{:,.0f}".format(x)  # noqa: E731
        print("\nmedian: 1 worker %s pps, 2 workers %s pps, ratio %s (target %.2f): %s" % (
            fmt(summary["one_worker_pps_median"]), fmt(summary["two_workers_pps_median"]),
            "-" if ratio is None else "%.2f" % ratio, a.target, "ok" if ok else "NOT ok"))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_consumer":
        sys.exit(consumer_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_send":
        sys.exit(send_main(sys.argv[2:]))
    sys.exit(main())
