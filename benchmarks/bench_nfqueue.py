#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""NFQUEUE throughput: nfbind vs. a plain C consumer, side by side.

Run as root:

    python benchmarks/bench_nfqueue.py [--packets 60000] [--rounds 5]
                                       [--size 100] [--impl both|c|nfbind]
                                       [--json]

Each round runs every implementation once (interleaved: c, nfbind, c, ...).
One run:

1. a throw-away network namespace is created, ``lo`` brought up, and
   ``iptables -A INPUT -p udp --dport PORT -j NFQUEUE --queue-num Q`` added;
2. a UDP receiver (``bin/nfb_udp recv``) binds 127.0.0.1:PORT;
3. the consumer (``bin/nfq_ref`` or ``nfq_nfbind.py``, which take the same
   command line) binds the queue with a max length that holds all N packets
   and prints READY; it is SIGSTOPped, and so is the receiver;
4. ``bin/nfb_udp send`` sends N datagrams of SIZE payload bytes; they all
   wait in the queue, which is checked in the namespace's
   /proc/net/netfilter/nfnetlink_queue;
5. the consumer is SIGCONTed; it drains the queue, accepting every packet,
   and prints its own timing (first packet received -> N-th verdict sent);
6. the receiver is SIGCONTed and must count all N accepted datagrams.

That is the default scenario, ``--scenario drain``.  The others keep the
consumer running while ``bin/nfb_udp send`` sends (see run_live()):

``stream``
    N packets sent as fast as the sender can into a queue of max length
    65536 and a 64 MiB receive buffer; rate = packets handled / (last -
    first); losses counted (sent, handled, received at the far side, the
    queue's drop counters).
``overload``
    queue max length 1024 and a 256 KiB receive buffer; the C reference
    reads everything readable and accepts it with one batch verdict
    (``nfq_ref --batch``).  Reported: what each consumer lost and where
    (queue_dropped, user_dropped, sent - received).
``memory``
    N packets (default 1,000,000) accepted, sent in chunks the consumer
    keeps up with; the consumer's RSS every 100,000 packets.

Consumers in those scenarios stop 1 s (memory: 5 s) after their last packet,
so a stream that lost packets still ends.

The namespace is always deleted and only processes started here are killed
(_harness.py holds what the drivers share). The result per round is the
ratio nfbind pps / C pps; the summary is the median over rounds of each rate
and of that per-round ratio. Exit status is non-zero if any run failed, or
(drain only) any packet went missing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    HERE, RSS_EVERY, Namespace, RunError, add_common_options, all_ok, build, check_common,
    check_exec, cpu_seconds, emit_json, find_nfbind_python, fmt, install_sigterm,
    interleaved_rounds, live_summary, print_rate_summary, rate_summary, round_line,
    rss_summary, rss_text, set_ratio, wait_stopped,
)

NFQ_PROC = "/proc/net/netfilter/nfnetlink_queue"

QUEUE_NUM = 7
PORT = 9999
NFQUEUE_MAX_PACKETS = 65536      # the queue length we allow ourselves
CONSUMER_TIMEOUT = 60            # seconds, passed to the consumers
READY_TIMEOUT = 30.0             # python startup + import may be slow-ish
SEND_TIMEOUT = 60.0

SCENARIOS = ("drain", "stream", "overload", "memory")
DEFAULT_PACKETS = {"drain": 60000, "stream": 100000, "overload": 200000,
                   "memory": 1000000}
STREAM_QUEUE_LEN = 65536         # stream: the queue holds what the consumer lags
STREAM_RCVBUF = 64 << 20
OVERLOAD_QUEUE_LEN = 1024        # overload: a small queue and buffer, both impls
OVERLOAD_RCVBUF = 256 << 10
MEMORY_CHUNK = 50000             # memory: packets sent before waiting for the consumer


def queue_stats(ns: Namespace) -> dict | None:
    """Our queue's line in the namespace's nfnetlink_queue, or None."""
    text = ns.run("cat", NFQ_PROC)
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == str(QUEUE_NUM):
            return {
                "queue_number": int(f[0]), "peer_portid": int(f[1]),
                "waiting": int(f[2]), "copy_mode": int(f[3]),
                "copy_range": int(f[4]), "queue_dropped": int(f[5]),
                "user_dropped": int(f[6]), "id_sequence": int(f[7]),
            }
    return None


def setup(ns: Namespace, udp_tool: str, npackets: int, timeout: float):
    """The NFQUEUE rule and the UDP receiver behind the queue."""
    ns.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT),
           "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))
    recv = ns.start("receiver", [udp_tool, "recv", str(PORT), str(npackets), str(timeout)])
    recv.wait_line(b"READY", 10.0)
    return recv


def start_consumer(ns: Namespace, impl: str, cmd: list[str], env: dict[str, str] | None,
                   cpu: int | None, npackets: int, max_len: int, timeout: int):
    """The consumer, bound and READY (the command line both take)."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    cons = ns.start(impl, [*cmd, "--timeout", str(timeout), str(QUEUE_NUM), str(npackets),
                           str(max_len)], env=env)
    cons.wait_line(b"READY", READY_TIMEOUT)
    return cons


# --------------------------------------------------------------------------
# one run


def run_one(impl: str, consumer_cmd: list[str], env: dict[str, str] | None,
            udp_tool: str, npackets: int, size: int, cpu: int | None,
            verbose: bool) -> dict:
    result: dict = {"impl": impl, "ok": False}
    max_len = min(max(npackets, 1024), NFQUEUE_MAX_PACKETS)
    try:
        with Namespace() as ns:
            def log(msg: str) -> None:
                if verbose:
                    print(f"  [{impl} {ns.name}] {msg}", file=sys.stderr, flush=True)

            recv = setup(ns, udp_tool, npackets, CONSUMER_TIMEOUT + 60)
            cons = start_consumer(ns, impl, consumer_cmd, env, cpu, npackets, max_len,
                                  CONSUMER_TIMEOUT)
            check_exec(cons)
            log("consumer ready")

            cons.signal(signal.SIGSTOP)
            recv.signal(signal.SIGSTOP)
            wait_stopped(cons.p.pid)
            wait_stopped(recv.p.pid)

            before = queue_stats(ns)
            if before is None:
                raise RunError("queue is not bound (no line in nfnetlink_queue)")
            t0 = time.monotonic()
            r = subprocess.run(ns.cmd(udp_tool, "send", str(PORT), str(npackets), str(size)),
                               capture_output=True, text=True, timeout=SEND_TIMEOUT,
                               check=False)
            send_secs = time.monotonic() - t0
            if r.returncode != 0:
                raise RunError(f"sender failed ({r.returncode}): {r.stderr.strip()}")
            result["sender"] = json.loads(r.stdout.strip().splitlines()[-1])
            result["send_seconds"] = round(send_secs, 3)
            log(f"sent {npackets} in {send_secs:.3f} s")

            # all N must be waiting in the queue (give the softirq a moment)
            end = time.monotonic() + 5.0
            stats = queue_stats(ns)
            while stats and stats["waiting"] < npackets and time.monotonic() < end:
                time.sleep(0.05)
                stats = queue_stats(ns)
            result["queue"] = stats
            if stats is None:
                raise RunError("queue vanished while the consumer was stopped")
            if stats["waiting"] != npackets or stats["queue_dropped"] or stats["user_dropped"]:
                raise RunError(
                    f"expected {npackets} packets waiting, queue shows {stats['waiting']} "
                    f"waiting, {stats['queue_dropped']} queue_dropped, "
                    f"{stats['user_dropped']} user_dropped"
                    + (" (user_dropped: the consumer's netlink receive buffer filled up;"
                       " use fewer --packets or a smaller --size)"
                       if stats["user_dropped"] else ""))
            log("queue holds all packets")

            cons.signal(signal.SIGCONT)
            rc = cons.wait_exit(CONSUMER_TIMEOUT + 15)
            if rc is None:
                raise RunError(f"{impl} consumer did not exit" + cons.stderr_tail())
            if rc != 0:
                raise RunError(f"{impl} consumer exited {rc}" + cons.stderr_tail())
            res = cons.json_line()
            result.update(packets=res.get("packets"), seconds=res.get("seconds"),
                          pps=res.get("pps"))
            extra = {k: v for k, v in res.items()
                     if k not in ("impl", "packets", "seconds", "pps")}
            if extra:
                result["consumer_extra"] = extra
            log(f"consumer: {res}")

            recv.signal(signal.SIGCONT)
            rrc = recv.wait_exit(5.0)
            if rrc is None:          # not all arrived: ask it for its count
                recv.signal(signal.SIGTERM)
                rrc = recv.wait_exit(5.0)
            if rrc is None:
                raise RunError("receiver did not report")
            result["received"] = recv.json_line().get("received")

        problems = []
        if result["packets"] != npackets:
            problems.append(f"consumer handled {result['packets']} of {npackets}")
        if result["received"] != npackets:
            problems.append(f"receiver got {result['received']} of {npackets}")
        # --fields: what the handler read must be right (every packet an
        # IPv4 datagram of 28 + SIZE bytes; both consumers sum the same)
        extra = result.get("consumer_extra", {})
        if "fields" in extra:
            want = {"payload_bytes": npackets * (28 + size),
                    "hw_protocol_sum": npackets * 0x0800}
            for key, value in want.items():
                if extra.get(key) != value:
                    problems.append(f"{key} is {extra.get(key)}, expected {value}")
        if problems:
            result["error"] = "; ".join(problems)
        else:
            result["ok"] = True
        return result
    except RunError as e:
        result["error"] = str(e)
        return result
    except subprocess.TimeoutExpired as e:
        result["error"] = f"timeout: {e}"
        return result


# --------------------------------------------------------------------------
# the live scenarios: the consumer runs while the sender sends


def live_args(impl: str, scenario: str, rcvbuf: int | None = None,
              fixed: bool = False) -> tuple[list[str], int]:
    """(consumer options, queue max length) for a live scenario; ``rcvbuf``
    replaces the scenario's receive buffer; ``fixed`` keeps nfbind's from
    growing after an overrun (the C consumers never grow theirs)."""
    if fixed and impl == "nfbind":
        opts, max_len = live_args(impl, scenario, rcvbuf)
        size = opts[opts.index("--rcvbuf") + 1]
        return ["--rcvbuf-max", size] + opts, max_len
    if scenario == "stream":
        return (["--idle", "1", "--rcvbuf", str(rcvbuf or STREAM_RCVBUF)],
                STREAM_QUEUE_LEN)
    if scenario == "overload":
        opts = ["--idle", "1", "--rcvbuf", str(rcvbuf or OVERLOAD_RCVBUF)]
        return (["--batch"] if impl == "c" else []) + opts, OVERLOAD_QUEUE_LEN
    if scenario == "memory":
        return (["--idle", "5", "--rcvbuf", str(rcvbuf or STREAM_RCVBUF),
                 "--rss-every", str(RSS_EVERY)], STREAM_QUEUE_LEN)
    raise ValueError(scenario)


def run_live(impl: str, consumer_cmd: list[str], env: dict[str, str] | None,
             udp_tool: str, scenario: str, npackets: int, size: int,
             cpu: int | None, verbose: bool, sender_cpu: int | None = None,
             rcvbuf: int | None = None, fixed: bool = False) -> dict:
    result: dict = {"impl": impl, "scenario": scenario, "ok": False}
    opts, max_len = live_args(impl, scenario, rcvbuf, fixed)
    timeout = CONSUMER_TIMEOUT + npackets // 10000
    pin = [] if sender_cpu is None else ["taskset", "-c", str(sender_cpu)]
    try:
        with Namespace() as ns:
            def log(msg: str) -> None:
                if verbose:
                    print(f"  [{impl} {scenario} {ns.name}] {msg}", file=sys.stderr,
                          flush=True)

            def send(n: int) -> dict:
                r = subprocess.run(ns.cmd(*pin, udp_tool, "send", str(PORT), str(n),
                                          str(size)),
                                   capture_output=True, text=True,
                                   timeout=SEND_TIMEOUT + n // 10000, check=False)
                if r.returncode != 0:
                    raise RunError(f"sender failed ({r.returncode}): {r.stderr.strip()}")
                return json.loads(r.stdout.strip().splitlines()[-1])

            recv = setup(ns, udp_tool, npackets, timeout + 60)
            cons = start_consumer(ns, impl, list(consumer_cmd) + opts, env, cpu, npackets,
                                  max_len, timeout)
            if queue_stats(ns) is None:
                raise RunError("queue is not bound (no line in nfnetlink_queue)")
            log(f"consumer ready ({' '.join(opts)}, max_len {max_len})")

            t0 = time.monotonic()
            sent = retries = 0
            if scenario == "memory":
                # chunks the consumer keeps up with: wait for the queue to empty
                # before the next one (bounded by the consumer's own deadline)
                end = t0 + timeout
                while sent < npackets:
                    res = send(min(MEMORY_CHUNK, npackets - sent))
                    sent += res["sent"]
                    retries += res.get("retries", 0)
                    while time.monotonic() < end:
                        st = queue_stats(ns)
                        if st is None or st["waiting"] <= 1000 or cons.p.poll() is not None:
                            break
                        time.sleep(0.02)
                    if cons.p.poll() is not None:
                        break
            else:
                res = send(npackets)
                sent, retries = res["sent"], res.get("retries", 0)
            result["sent"] = sent
            result["sender_retries"] = retries
            result["send_seconds"] = round(time.monotonic() - t0, 3)
            log(f"sent {sent} in {result['send_seconds']} s")

            # the drop counters are final once the sender is done; the queue's
            # line goes away with the consumer, so read it while it runs
            stats = queue_stats(ns)
            end = time.monotonic() + timeout + 15
            cpu = None
            while cons.p.poll() is None and time.monotonic() < end:
                st = queue_stats(ns)
                if st is not None:
                    stats = st
                cpu = cpu_seconds(cons.p.pid) or cpu   # the last look before it exits
                cons.wait_exit(0.2)
            rc = cons.wait_exit(max(0.0, end - time.monotonic()))
            result["queue"] = stats
            if rc is None:
                raise RunError(f"{impl} consumer did not exit" + cons.stderr_tail())
            if rc != 0:
                raise RunError(f"{impl} consumer exited {rc}" + cons.stderr_tail())
            res = cons.json_line()
            result.update(packets=res.get("packets"), seconds=res.get("seconds"),
                          pps=res.get("pps"))
            extra = {k: v for k, v in res.items()
                     if k not in ("impl", "packets", "seconds", "pps", "rss")}
            result["consumer_extra"] = extra
            result.update(rss_summary(res.get("rss")))
            # the consumer's own count (READY to its report) if it gives one,
            # else the driver's last look at /proc/PID/stat
            cpu = extra.get("cpu_seconds", cpu)
            if cpu is not None and result["packets"]:
                result["cpu_seconds"] = cpu
                result["cpu_us_per_packet"] = round(cpu * 1e6 / result["packets"], 2)
            log(f"consumer: {extra} handled {result['packets']} at {result['pps']} pps")

            rrc = recv.wait_exit(1.0)
            if rrc is None:          # not all arrived: ask it for its count
                recv.signal(signal.SIGTERM)
                rrc = recv.wait_exit(5.0)
            if rrc is None:
                raise RunError("receiver did not report")
            result["received"] = recv.json_line().get("received")

        result["lost"] = sent - result["received"]
        if stats is not None:
            result["queue_dropped"] = stats["queue_dropped"]
            result["user_dropped"] = stats["user_dropped"]
        elif result["packets"] == sent:
            # the consumer had everything and was gone before the first look:
            # nothing can have been dropped
            result["queue_dropped"] = result["user_dropped"] = 0
        if not result["packets"]:
            result["error"] = "the consumer handled no packet"
        elif scenario == "memory" and "rss_growth_pct" not in result:
            result["error"] = f"too few RSS samples ({result['packets']} packets)"
        else:
            result["ok"] = True
        return result
    except RunError as e:
        result["error"] = str(e)
        return result
    except subprocess.TimeoutExpired as e:
        result["error"] = f"timeout: {e}"
        return result


# --------------------------------------------------------------------------
# main


def describe(scenario: str, npackets: int):
    """How a round's line words an ok run of this scenario."""
    def text(impl: str, res: dict) -> str:
        if scenario == "memory":
            return f"{impl} {fmt(res['pps'])} pps, " + rss_text(res)
        if scenario != "drain":
            return (f"{impl} {fmt(res['pps'])} pps (handled {res['packets']}, recv "
                    f"{res['received']}/{res['sent']}, queue_dropped "
                    f"{res.get('queue_dropped')}, user_dropped {res.get('user_dropped')})")
        return f"{impl} {fmt(res['pps'])} pps (recv {res['received']}/{npackets})"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default="drain",
                    help="drain (default): the queue filled while the consumer is "
                    "stopped; stream, overload, memory: see the module's docstring")
    ap.add_argument("--packets", type=int,
                    help="packets per run (default by scenario: %s; drain: at most %d)"
                    % (", ".join(f"{k} {v}" for k, v in DEFAULT_PACKETS.items()),
                       NFQUEUE_MAX_PACKETS))
    ap.add_argument("--impl", choices=("both", "c", "nfbind"), default="both")
    ap.add_argument("--rcvbuf", type=int, help="stream, overload, memory: the "
                    "receive buffer both consumers force, bytes (the kernel doubles "
                    "it; default: 64 MiB, overload 256 KiB)")
    ap.add_argument("--fixed-rcvbuf", action="store_true", help="stream, overload, "
                    "memory: nfbind's receive buffer keeps its size after an overrun "
                    "(rcvbuf_max=rcvbuf) instead of growing, as it does by default")
    ap.add_argument("--sender-cpu", type=int, help="stream, overload, memory: pin "
                    "the sender to this CPU (taskset)")
    ap.add_argument("--fields", action="store_true", help="drain: both handlers also "
                    "read five fields of every packet (payload length, mark, indev, "
                    "hw_protocol, timestamp)")
    ap.add_argument("--c-batch", type=int, metavar="K", help="drain: the C reference "
                    "accepts every K packets it read with one batch verdict "
                    "(nfq_ref --batch-size K) instead of one verdict per packet")
    ap.add_argument("--deadline", type=float, metavar="S", help="drain only: the cost "
                    "of deadlines, nfbind with NfQueue(verdict_timeout=S) against nfbind "
                    "without (in place of the C reference; the handler accepts every "
                    "packet at once, as in the plain drain)")
    add_common_options(ap)
    a = ap.parse_args(argv)
    if a.deadline is not None and (a.scenario != "drain" or a.impl != "both"
                                   or not 0 < a.deadline <= 86400):
        sys.exit("bench: --deadline is for --scenario drain with --impl both, 0 < S <= 86400")

    check_common(a, tools=("ip", "iptables") + (("taskset",) if a.sender_cpu is not None
                                                 else ()))
    if a.packets is None:
        a.packets = DEFAULT_PACKETS[a.scenario]
    limit = NFQUEUE_MAX_PACKETS if a.scenario == "drain" else 10_000_000
    if not 1 <= a.packets <= limit:
        sys.exit(f"bench: --packets must be 1..{limit}")
    if a.rcvbuf is not None and (a.scenario == "drain" or not 4096 <= a.rcvbuf <= 1 << 30):
        sys.exit("bench: --rcvbuf is for stream, overload and memory, 4096..1073741824")
    if a.scenario == "memory" and a.packets < 3 * RSS_EVERY:
        sys.exit(f"bench: --scenario memory needs --packets >= {3 * RSS_EVERY}")
    if (a.fields or a.c_batch is not None) and a.scenario != "drain":
        sys.exit("bench: --fields and --c-batch are for --scenario drain")

    udp_tool = build("nfb_udp", "nfb_udp.c")
    impls = ["c", "nfbind"] if a.impl == "both" else [a.impl]
    cmds: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    info: dict = {"scenario": a.scenario, "packets": a.packets, "rounds": a.rounds,
                  "size": a.size,
                  "kernel": platform.release(), "cpus": os.cpu_count(),
                  "cpu_pin": a.cpu, "sender_cpu_pin": a.sender_cpu,
                  "fields": a.fields, "c_batch": a.c_batch}
    if "c" in impls and a.deadline is None:
        cmds["c"] = ([build("nfq_ref", "nfq_ref.c", ["-lnetfilter_queue", "-lmnl"])]
                     + (["--fields"] if a.fields else [])
                     + (["--batch-size", str(a.c_batch)] if a.c_batch else []), None)
    if "nfbind" in impls:
        py, env, where = find_nfbind_python(a.python)
        cmds["nfbind"] = ([py, os.path.join(HERE, "nfq_nfbind.py")]
                          + (["--fields"] if a.fields else []), env)
        info["python"] = py
        info["nfbind"] = where
        info["pythonpath"] = env.get("PYTHONPATH")
    if a.deadline is not None:
        # the "c" column is nfbind without deadlines, "nfbind" with them
        cmds["c"] = cmds["nfbind"]
        cmds["nfbind"] = (cmds["nfbind"][0] + ["--verdict-timeout", str(a.deadline)],
                          cmds["nfbind"][1])
        info["reference"] = "nfbind without verdict_timeout"
        info["verdict_timeout"] = a.deadline

    if a.scenario != "drain":
        info["consumer_options"] = {impl: live_args(impl, a.scenario, a.rcvbuf,
                                                    a.fixed_rcvbuf)[0]
                                    for impl in impls}
        info["max_len"] = live_args(impls[0], a.scenario)[1]
    install_sigterm()
    if not a.json:
        title = "throughput" if a.scenario == "drain" else a.scenario
        print(f"NFQUEUE {title}: {a.packets} packets x {a.size} B UDP payload, "
              f"{a.rounds} rounds, kernel {info['kernel']}, {info['cpus']} CPUs")
        if "nfbind" in info:
            print(f"nfbind: {info['nfbind']} ({info['python']})")
        print(flush=True)

    def one(impl: str, _round: int) -> dict:
        cmd, env = cmds[impl]
        if a.scenario == "drain":
            return run_one(impl, cmd, env, udp_tool, a.packets, a.size, a.cpu, a.verbose)
        return run_live(impl, cmd, env, udp_tool, a.scenario, a.packets, a.size, a.cpu,
                        a.verbose, a.sender_cpu, a.rcvbuf, a.fixed_rcvbuf)

    text = describe(a.scenario, a.packets)

    def on_row(row: dict) -> None:
        set_ratio(row, "nfbind", "c")
        if not a.json:
            print(round_line(row, impls, text), flush=True)

    rounds = interleaved_rounds(a.rounds, impls, one, on_row)
    failed = not all_ok(rounds, impls)
    summary, ratios = rate_summary(rounds, impls)
    if a.scenario != "drain":
        summary.update(live_summary(rounds, impls))
    summary["ok"] = not failed

    if a.json:
        name = "nfqueue_throughput" if a.scenario == "drain" else f"nfqueue_{a.scenario}"
        emit_json({"benchmark": name, **info, "rounds_detail": rounds, **summary})
    else:
        print_rate_summary(summary, impls, ratios, live=a.scenario != "drain")
        if failed:
            print("SOME RUNS FAILED OR LOST PACKETS", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
