#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""NFLOG throughput: nfbind vs. a plain C consumer, side by side.

Run as root:

    python benchmarks/bench_nflog.py [--packets 200000] [--rounds 5]
                                     [--size 100] [--impl both|c|nfbind]
                                     [--fields prefix,payload_len,...] [--json]

Each round runs every implementation once (interleaved: c, nfbind, c, ...).
One run:

1. a throw-away network namespace is created, ``lo`` brought up, and
   ``iptables -A INPUT -p udp --dport PORT -j NFLOG --nflog-group G
   --nflog-threshold 1 --nflog-prefix nfb-bench`` added;
2. a UDP receiver (``bin/nfb_udp recv``) binds 127.0.0.1:PORT, so that the
   sender's datagrams have somewhere to go (it is not part of the
   measurement and keeps running);
3. the consumer (``bin/nflog_ref`` or ``nflog_nfbind.py``, which take the
   same command line) binds the log group with a receive buffer big enough
   for all N messages and prints READY; the driver finds its netlink socket
   (by inode, in the namespace's /proc/net/netlink) and checks that it is
   the group's peer (/proc/net/netfilter/nfnetlink_log); then the consumer
   is SIGSTOPped;
4. ``bin/nfb_udp send`` sends N datagrams of SIZE payload bytes; logging
   copies them, so nothing waits for the consumer.  Before the consumer
   goes on, the rule's packet counter must be N, the kernel must hold no
   unsent batch for the group, and the consumer's socket must hold the
   messages (Rmem > 0, stable) with no drop (Drops 0);
5. the consumer is SIGCONTed; it reads the N messages and prints its own
   timing (first packet received -> N-th packet handled), its count, and
   whether it saw ENOBUFS / overruns or more than N packets.

That is the default scenario, ``--scenario drain``.  The others keep the
consumer running while the sender sends (see run_live()):

``stream``
    N packets sent as fast as the sender can, receive buffer sized for all
    of them; rate = packets handled / (last - first); lost = sent - handled,
    with the consumer's ENOBUFS count and the socket's Drops.
``overload``
    a 256 KiB receive buffer for both consumers (the group's nlbufsiz left
    at the kernel's default); what each lost (sent - handled) and how many
    ENOBUFS it was told about.
``memory``
    N packets (default 1,000,000), for nfbind a LogPacket each, sent in
    chunks the consumer keeps up with; the consumer's RSS every 100,000.

Consumers in those scenarios stop 1 s (memory: 5 s) after their last packet.

The namespace is always deleted and only processes started here are killed
(_harness.py holds what the drivers share). The result per round is the
ratio nfbind pps / C pps; the summary is the median over rounds of each rate
and of that per-round ratio. Exit status is non-zero if any run failed, or
(drain only) any message went missing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
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
from nflog_nfbind import ALL_FIELDS, parse_fields  # noqa: E402

NFLOG_PROC = "/proc/net/netfilter/nfnetlink_log"
NETLINK_PROC = "/proc/net/netlink"
NETLINK_NETFILTER = 12

GROUP = 7
PORT = 9999
PREFIX = "nfb-bench"
RCVBUF_MAX = 1 << 30             # the largest request (nfbind's limit too)
READY_TIMEOUT = 30.0             # python startup + import may be slow-ish
IDLE_SECONDS = 3                 # consumers give up this long after the last packet

SCENARIOS = ("drain", "stream", "overload", "memory")
DEFAULT_PACKETS = {"drain": 200000, "stream": 200000, "overload": 200000,
                   "memory": 1000000}
OVERLOAD_RCVBUF = 256 << 10
MEMORY_CHUNK = 50000             # memory: packets sent before waiting for the consumer

NFLOG_PROBE = "import nfbind; nfbind.NfLog; nfbind.CopyMode; print(nfbind.__file__)"


# --------------------------------------------------------------------------
# what the kernel says


def group_peer(ns: Namespace) -> dict | None:
    """Our group's line in the namespace's nfnetlink_log, or None.

    Columns: group, peer portid, messages batched but not yet sent, copy mode,
    copy range, flush timeout, use count."""
    text = ns.run("cat", NFLOG_PROC)
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == str(GROUP):
            return {"group": int(f[0]), "peer_portid": int(f[1]), "qlen": int(f[2]),
                    "copy_mode": int(f[3]), "copy_range": int(f[4])}
    return None


def netlink_socket(ns: Namespace, inode: int) -> dict | None:
    """The namespace's /proc/net/netlink line of the socket with this inode."""
    text = ns.run("cat", NETLINK_PROC)
    for line in text.splitlines()[1:]:
        f = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(f) >= 10 and f[9] == str(inode):
            return {"protocol": int(f[1]), "portid": int(f[2]), "rmem": int(f[4]),
                    "drops": int(f[8]), "inode": int(f[9])}
    return None


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process pid has open."""
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError as e:
        raise RunError(f"cannot list the consumer's descriptors: {e}") from e
    for fd in fds:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def rule_packets(ns: Namespace) -> int:
    """The packet counter of our NFLOG rule."""
    text = ns.run("iptables", "-w", "-L", "INPUT", "-v", "-x", "-n")
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == "NFLOG" and f"nflog-group {GROUP}" in line:
            return int(f[0])
    raise RunError("the NFLOG rule is missing from INPUT:\n" + text)


def find_socket(ns: Namespace, pid: int, impl: str) -> dict:
    """The consumer's netlink socket, which must be the group's peer."""
    peer = group_peer(ns)
    if peer is None:
        raise RunError(f"log group {GROUP} is not bound (no line in {NFLOG_PROC})")
    for inode in socket_inodes(pid):
        s = netlink_socket(ns, inode)
        if s and s["protocol"] == NETLINK_NETFILTER and s["portid"] == peer["peer_portid"]:
            return s
    raise RunError(f"log group {GROUP}'s peer (portid {peer['peer_portid']}) "
                   f"is not a socket of the {impl} consumer (pid {pid})")


# --------------------------------------------------------------------------
# one run


def default_rcvbuf(npackets: int, size: int) -> int:
    """Receive buffer to request: about 1 KiB + 2 x SIZE per message, which
    the kernel doubles.  A message of a 100-byte datagram takes ~830 bytes
    of the buffer (skb truesize), so this leaves more than 2x headroom."""
    return max(64 << 20, min(RCVBUF_MAX, npackets * (1024 + 2 * size)))


def setup(ns: Namespace, udp_tool: str, npackets: int, timeout: float):
    """The NFLOG rule and a UDP receiver for the logged datagrams (no part
    of the measurement)."""
    ns.run("iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT),
           "-j", "NFLOG", "--nflog-group", str(GROUP), "--nflog-threshold", "1",
           "--nflog-prefix", PREFIX)
    recv = ns.start("receiver", [udp_tool, "recv", str(PORT), str(npackets), str(timeout)])
    recv.wait_line(b"READY", 10.0)
    return recv


def start_consumer(ns: Namespace, impl: str, cmd: list[str], opts: list[str],
                   env: dict[str, str] | None, cpu: int | None, npackets: int,
                   rcvbuf: int, timeout: int, idle: float):
    """The consumer, bound and READY (the command line both take)."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    cons = ns.start(impl, [*cmd, "--rcvbuf", str(rcvbuf), "--timeout", str(timeout),
                           "--idle", str(idle), *opts, str(GROUP), str(npackets)], env=env)
    cons.wait_line(b"READY", READY_TIMEOUT)
    # `ip netns exec` execs the command in place, so the pid is the consumer
    check_exec(cons)
    return cons


def run_one(impl: str, consumer_cmd: list[str], consumer_opts: list[str],
            env: dict[str, str] | None, udp_tool: str, npackets: int, size: int,
            rcvbuf: int, cpu: int | None, verbose: bool) -> dict:
    result: dict = {"impl": impl, "ok": False}
    consumer_timeout = 60 + npackets // 10000
    try:
        with Namespace() as ns:
            def log(msg: str) -> None:
                if verbose:
                    print(f"  [{impl} {ns.name}] {msg}", file=sys.stderr, flush=True)

            recv = setup(ns, udp_tool, npackets, consumer_timeout + 60)
            cons = start_consumer(ns, impl, consumer_cmd, consumer_opts, env, cpu, npackets,
                                  rcvbuf, consumer_timeout, IDLE_SECONDS)
            # the consumer's own socket must be the group's peer
            sock = find_socket(ns, cons.p.pid, impl)
            log(f"consumer ready, socket inode {sock['inode']} portid {sock['portid']}")

            cons.signal(signal.SIGSTOP)
            wait_stopped(cons.p.pid)

            t0 = time.monotonic()
            r = subprocess.run(ns.cmd(udp_tool, "send", str(PORT), str(npackets), str(size)),
                               capture_output=True, text=True,
                               timeout=60 + npackets // 5000, check=False)
            send_secs = time.monotonic() - t0
            if r.returncode != 0:
                raise RunError(f"sender failed ({r.returncode}): {r.stderr.strip()}")
            result["sender"] = json.loads(r.stdout.strip().splitlines()[-1])
            result["send_seconds"] = round(send_secs, 3)
            log(f"sent {npackets} in {send_secs:.3f} s")

            # every packet logged, the kernel's batch flushed, and the socket's
            # queue settled (softirq may lag the sender a little)
            end = time.monotonic() + 10.0
            prev = None
            while True:
                logged = rule_packets(ns)
                peer = group_peer(ns)
                s = netlink_socket(ns, sock["inode"])
                if s is None or peer is None:
                    raise RunError("the consumer's socket or the group vanished while "
                                   "the consumer was stopped")
                state = (logged, peer["qlen"], s["rmem"], s["drops"])
                if state == prev and logged >= npackets and peer["qlen"] == 0:
                    break
                if time.monotonic() > end:
                    break
                prev = state
                time.sleep(0.1)
            result["logged"] = logged
            result["queued_bytes"] = s["rmem"]
            result["socket_drops"] = s["drops"]
            if logged != npackets:
                raise RunError(f"the NFLOG rule counted {logged} packets, expected {npackets}")
            if s["drops"] or peer["qlen"] or not s["rmem"]:
                raise RunError(
                    f"the consumer's socket shows {s['drops']} dropped messages and "
                    f"{s['rmem']} bytes queued, {peer['qlen']} unsent in the kernel"
                    + (" (drops: the receive buffer is too small; raise --rcvbuf or "
                       "lower --packets)" if s["drops"] else ""))
            log(f"{logged} logged, {s['rmem']} bytes waiting "
                f"({s['rmem'] / npackets:.0f} per message), no drops")

            cons.signal(signal.SIGCONT)
            rc = cons.wait_exit(consumer_timeout + 15)
            if rc is None:
                raise RunError(f"{impl} consumer did not exit" + cons.stderr_tail())
            res = cons.json_line() if rc in (0, 2) else {}
            if rc != 0:
                raise RunError(f"{impl} consumer exited {rc} "
                               f"(handled {res.get('packets', '?')} of {npackets})"
                               + cons.stderr_tail())
            result.update(packets=res.get("packets"), seconds=res.get("seconds"),
                          pps=res.get("pps"))
            extra = {k: v for k, v in res.items()
                     if k not in ("impl", "packets", "seconds", "pps")}
            result["consumer_extra"] = extra
            log(f"consumer: {res}")

            # the receiver is no part of the measurement: just collect its count
            rrc = recv.wait_exit(0.5)
            if rrc is None:
                recv.signal(signal.SIGTERM)
                rrc = recv.wait_exit(5.0)
            if rrc is not None:
                try:
                    result["udp_received"] = recv.json_line().get("received")
                except RunError:
                    pass

        problems = []
        if result["packets"] != npackets:
            problems.append(f"consumer handled {result['packets']} of {npackets}")
        lost = extra.get("enobufs", 0) + extra.get("overruns", 0)
        if lost:
            problems.append(f"consumer saw {lost} ENOBUFS (messages lost)")
        if extra.get("extra"):
            problems.append(f"consumer got {extra['extra']} packets more than {npackets}")
        # the attributes read must be right: every packet has the prefix, a
        # timestamp (INPUT hook) and an IPv4+UDP payload of 28 + SIZE bytes
        fields = extra.get("fields", ALL_FIELDS).split(",")
        want = {"with_prefix": ("prefix", npackets),
                "no_timestamp": ("timestamp", 0),
                "payload_bytes": ("payload_len", npackets * (28 + size))}
        for key, (field, value) in want.items():
            if field in fields and extra.get(key) != value:
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


def live_rcvbuf(scenario: str, npackets: int, size: int, rcvbuf: int | None) -> int:
    """The receive buffer to request in a live scenario (--rcvbuf wins)."""
    if rcvbuf is not None:
        return rcvbuf
    if scenario == "overload":
        return OVERLOAD_RCVBUF
    if scenario == "memory":
        return default_rcvbuf(MEMORY_CHUNK, size)
    return default_rcvbuf(npackets, size)


def run_live(impl: str, consumer_cmd: list[str], consumer_opts: list[str],
             env: dict[str, str] | None, udp_tool: str, scenario: str,
             npackets: int, size: int, rcvbuf: int, cpu: int | None,
             verbose: bool) -> dict:
    result: dict = {"impl": impl, "scenario": scenario, "ok": False, "rcvbuf": rcvbuf}
    consumer_timeout = 60 + npackets // 10000
    idle = 5 if scenario == "memory" else 1
    mode = ["--rss-every", str(RSS_EVERY)] if scenario == "memory" else ["--stream"]
    try:
        with Namespace() as ns:
            def log(msg: str) -> None:
                if verbose:
                    print(f"  [{impl} {scenario} {ns.name}] {msg}", file=sys.stderr,
                          flush=True)

            def send(n: int) -> dict:
                r = subprocess.run(ns.cmd(udp_tool, "send", str(PORT), str(n), str(size)),
                                   capture_output=True, text=True,
                                   timeout=60 + n // 5000, check=False)
                if r.returncode != 0:
                    raise RunError(f"sender failed ({r.returncode}): {r.stderr.strip()}")
                return json.loads(r.stdout.strip().splitlines()[-1])

            setup(ns, udp_tool, npackets, consumer_timeout + 60)
            cons = start_consumer(ns, impl, consumer_cmd, consumer_opts + mode, env, cpu,
                                  npackets, rcvbuf, consumer_timeout, idle)
            sock = find_socket(ns, cons.p.pid, impl)
            log(f"consumer ready, socket inode {sock['inode']}, rcvbuf {rcvbuf}")

            t0 = time.monotonic()
            sent = retries = 0
            drops = 0
            if scenario == "memory":
                # chunks the consumer keeps up with: wait until its socket has
                # (nearly) emptied before the next one
                end = t0 + consumer_timeout
                while sent < npackets:
                    res = send(min(MEMORY_CHUNK, npackets - sent))
                    sent += res["sent"]
                    retries += res.get("retries", 0)
                    while time.monotonic() < end and cons.p.poll() is None:
                        s = netlink_socket(ns, sock["inode"])
                        if s is None or s["rmem"] < (1 << 20):
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
            result["rule_packets"] = rule_packets(ns)

            # the socket's drop counter goes away with the consumer: read it
            # while it runs
            end = time.monotonic() + consumer_timeout + 15
            cpu = None
            while cons.p.poll() is None and time.monotonic() < end:
                s = netlink_socket(ns, sock["inode"])
                if s is not None:
                    drops = s["drops"]
                cpu = cpu_seconds(cons.p.pid) or cpu   # the last look before it exits
                cons.wait_exit(0.2)
            rc = cons.wait_exit(max(0.0, end - time.monotonic()))
            result["socket_drops"] = drops
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
        result["overruns"] = extra.get("enobufs", 0) + extra.get("overruns", 0)
        # the consumer's own count (READY to its report) if it gives one,
        # else the driver's last look at /proc/PID/stat
        cpu = extra.get("cpu_seconds", cpu)
        if cpu is not None and result["packets"]:
            result["cpu_seconds"] = cpu
            result["cpu_us_per_packet"] = round(cpu * 1e6 / result["packets"], 2)
        result["lost"] = sent - (result["packets"] or 0)
        if verbose:
            print(f"  [{impl} {scenario}] consumer: {extra} handled {result['packets']} at "
                  f"{result['pps']} pps", file=sys.stderr, flush=True)

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
            return (f"{impl} {fmt(res['pps'])} pps (handled {res['packets']}/{res['sent']}, "
                    f"overruns {res['overruns']}, socket drops {res['socket_drops']})")
        return f"{impl} {fmt(res['pps'])} pps ({res['packets']}/{npackets})"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default="drain",
                    help="drain (default): all logged while the consumer is stopped; "
                    "stream, overload, memory: see the module's docstring")
    ap.add_argument("--packets", type=int,
                    help="packets per run (default by scenario: %s)"
                    % ", ".join(f"{k} {v}" for k, v in DEFAULT_PACKETS.items()))
    ap.add_argument("--impl", choices=("both", "c", "nfbind"), default="both")
    ap.add_argument("--fields", default=ALL_FIELDS,
                    help="packet fields the nfbind handler reads: a comma-separated "
                    "subset of %s, or none (default: all five, as the C callback)"
                    % ALL_FIELDS)
    ap.add_argument("--rcvbuf", type=int,
                    help="receive buffer to request, bytes (the kernel doubles it; "
                    "default: 1 KiB + 2 x SIZE per packet, at least 64 MiB, at most 1 GiB)")
    add_common_options(ap)
    a = ap.parse_args(argv)

    check_common(a)
    if a.packets is None:
        a.packets = DEFAULT_PACKETS[a.scenario]
    if a.scenario == "memory" and a.packets < 3 * RSS_EVERY:
        sys.exit(f"bench: --scenario memory needs --packets >= {3 * RSS_EVERY}")
    if not 1 <= a.packets <= 10_000_000:
        sys.exit("bench: --packets must be 1..10000000")
    if a.scenario == "drain":
        rcvbuf = a.rcvbuf if a.rcvbuf is not None else default_rcvbuf(a.packets, a.size)
    else:
        rcvbuf = live_rcvbuf(a.scenario, a.packets, a.size, a.rcvbuf)
    if not 4096 <= rcvbuf <= RCVBUF_MAX:
        sys.exit(f"bench: --rcvbuf must be 4096..{RCVBUF_MAX}")
    try:
        parse_fields(a.fields)
    except ValueError as e:
        sys.exit(f"bench: --fields: {e}")

    udp_tool = build("nfb_udp", "nfb_udp.c")
    impls = ["c", "nfbind"] if a.impl == "both" else [a.impl]
    # impl -> (command, its own options, environment)
    cmds: dict[str, tuple[list[str], list[str], dict[str, str] | None]] = {}
    info: dict = {"scenario": a.scenario, "packets": a.packets, "rounds": a.rounds,
                  "size": a.size,
                  "rcvbuf_request": rcvbuf, "kernel": platform.release(),
                  "cpus": os.cpu_count(), "cpu_pin": a.cpu}
    if "c" in impls:
        cmds["c"] = ([build("nflog_ref", "nflog_ref.c", ["-lnetfilter_log"])], [], None)
    if "nfbind" in impls:
        py, env, where = find_nfbind_python(a.python, NFLOG_PROBE, "nfbind.NfLog")
        cmds["nfbind"] = ([py, os.path.join(HERE, "nflog_nfbind.py")],
                          ["--fields", a.fields], env)
        info["python"] = py
        info["nfbind"] = where
        info["pythonpath"] = env.get("PYTHONPATH")
        info["fields"] = a.fields

    install_sigterm()
    if not a.json:
        title = "throughput" if a.scenario == "drain" else a.scenario
        print(f"NFLOG {title}: {a.packets} packets x {a.size} B UDP payload, "
              f"{a.rounds} rounds, kernel {info['kernel']}, {info['cpus']} CPUs, "
              f"rcvbuf {rcvbuf >> 20} MiB requested")
        if "nfbind" in info:
            print(f"nfbind: {info['nfbind']} ({info['python']}), handler reads: "
                  f"{a.fields}")
        print(flush=True)

    def one(impl: str, _round: int) -> dict:
        cmd, opts, env = cmds[impl]
        if a.scenario == "drain":
            return run_one(impl, cmd, opts, env, udp_tool, a.packets, a.size, rcvbuf,
                           a.cpu, a.verbose)
        return run_live(impl, cmd, opts, env, udp_tool, a.scenario, a.packets, a.size,
                        rcvbuf, a.cpu, a.verbose)

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
        for impl in impls:
            for key in ("overruns", "socket_drops"):
                vals = [row[impl][key] for row in rounds if row[impl]["ok"]]
                if vals:
                    summary[f"{impl}_{key}_median"] = statistics.median(vals)
    summary["ok"] = not failed

    if a.json:
        name = "nflog_throughput" if a.scenario == "drain" else f"nflog_{a.scenario}"
        emit_json({"benchmark": name, **info, "rounds_detail": rounds, **summary})
    else:
        print_rate_summary(summary, impls, ratios, live=a.scenario != "drain")
        if failed:
            print("SOME RUNS FAILED OR LOST PACKETS", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
