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
3. the consumer (``bin/nfq_ref`` or ``nfq_nfbind.py``) binds the queue with a
   max length that holds all N packets and prints READY; it is SIGSTOPped,
   and so is the receiver;
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

The namespace is always deleted and only processes started here are killed.
The result per round is the ratio nfbind pps / C pps; the summary is the
median over rounds of each rate and of that per-round ratio.  Exit status is
non-zero if any run failed, or (drain only) any packet went missing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.join(HERE, "bin")
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
RSS_EVERY = 100000               # memory: RSS sample interval, packets

_ns_counter = 0


class RunError(Exception):
    """One implementation's run in one round failed."""


# --------------------------------------------------------------------------
# building the C helpers


def _build(name: str, src: str, libs: list[str]) -> str:
    out = os.path.join(BIN, name)
    srcpath = os.path.join(HERE, src)
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(srcpath):
        return out
    os.makedirs(BIN, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-Wall", "-o", out, srcpath, *libs]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"bench: compiling {src} failed:\n{' '.join(cmd)}\n{r.stderr}")
    return out


# --------------------------------------------------------------------------
# finding nfbind


NFQUEUE_PROBE = "import nfbind; nfbind.NfQueue; nfbind.Verdict; print(nfbind.__file__)"


def _probe(py: str, env: dict[str, str], code: str) -> tuple[str | None, str]:
    try:
        r = subprocess.run([py, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode == 0:
        return r.stdout.strip(), ""
    return None, (r.stderr.strip().splitlines() or ["?"])[-1]


def find_python(code: str, override: str | None, fallback: str | None = None
                ) -> tuple[str, dict[str, str], str] | tuple[None, None, str]:
    """(python, env, module file) that runs ``code`` (which prints a module's
    file), or (None, None, why not): ``override`` if given, else
    .venv/bin/python, then ``fallback`` (default: this interpreter), each as it
    is and with PYTHONPATH=src."""
    src = os.path.join(REPO, "src")
    base = dict(os.environ)
    base.pop("PYTHONPATH", None)
    with_src = dict(base, PYTHONPATH=src)
    venv_py = os.path.join(REPO, ".venv", "bin", "python")
    if override:
        cands = [(override, base), (override, with_src)]
    else:
        cands = []
        if os.path.exists(venv_py):
            cands += [(venv_py, base), (venv_py, with_src)]
        cands.append((fallback or sys.executable, with_src))
    tried = []
    for py, env in cands:
        where, why = _probe(py, env, code)
        if where:
            return py, env, where
        tried.append(py + (" (PYTHONPATH=src)" if "PYTHONPATH" in env else "")
                     + f": {why}")
    return None, None, "; ".join(tried)


def find_nfbind_python(override: str | None, code: str = NFQUEUE_PROBE,
                       what: str = "nfbind.NfQueue") -> tuple[str, dict[str, str], str]:
    """(python, env, nfbind.__file__) for running the nfbind consumer; exits
    saying how to build nfbind if no interpreter imports ``what``."""
    py, env, where = find_python(code, override)
    if py is None:
        sys.exit(f"bench: cannot import {what} with any of: {where}"
                 + "\n(build it with: cd %s && python build_ffi.py)" % REPO)
    return py, env, where


# --------------------------------------------------------------------------
# small process helpers


def _run(cmd: list[str], timeout: float = 30.0) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise RunError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


class Proc:
    """A started child whose stdout we read without blocking."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err,
                                  stdin=subprocess.DEVNULL, env=env, bufsize=0)
        self.out = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.eof = False

    def _pump(self, timeout: float) -> None:
        if self.eof:
            time.sleep(min(timeout, 0.05))
            return
        if self.sel.select(timeout):
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if chunk:
                self.out += chunk
            else:
                self.eof = True

    def wait_line(self, line: bytes, timeout: float) -> None:
        end = time.monotonic() + timeout
        while line + b"\n" not in self.out:
            left = end - time.monotonic()
            if left <= 0:
                raise RunError(f"{self.name}: no {line.decode()} within {timeout:.0f} s"
                               + self.stderr_tail())
            if self.eof and self.p.poll() is not None:
                raise RunError(f"{self.name}: exited ({self.p.returncode}) before "
                               f"{line.decode()}" + self.stderr_tail())
            self._pump(min(left, 0.5))

    def wait_exit(self, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if self.eof and self.p.poll() is not None:
                return self.p.returncode
            if left <= 0:
                return None
            self._pump(min(left, 0.2))

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Kill this child only (by its pid), and reap it."""
        if self.p.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.close()

    def close(self) -> None:
        self.sel.close()
        if self.p.stdout:
            self.p.stdout.close()

    def json_line(self) -> dict:
        for raw in reversed(self.out.decode(errors="replace").splitlines()):
            raw = raw.strip()
            if raw.startswith("{"):
                try:
                    return json.loads(raw)
                except ValueError:
                    break
        raise RunError(f"{self.name}: no JSON result line in {self.out!r}"
                       + self.stderr_tail())

    def stderr_tail(self) -> str:
        try:
            self.err.seek(0)
            text = self.err.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return ("; stderr: " + text[-1500:]) if text else ""


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until the kernel reports pid as stopped (state T)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError as e:
            raise RunError(f"pid {pid} vanished while stopping it: {e}") from e
        if state in ("T", "t"):
            return
        time.sleep(0.005)
    raise RunError(f"pid {pid} did not stop within {timeout} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time process pid has used so far, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return "?"


def queue_stats(ns: str) -> dict | None:
    """Our queue's line in the namespace's nfnetlink_queue, or None."""
    text = _run(["ip", "netns", "exec", ns, "cat", NFQ_PROC])
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


# --------------------------------------------------------------------------
# one run


def run_one(impl: str, consumer_cmd: list[str], env: dict[str, str] | None,
            udp_tool: str, npackets: int, size: int, cpu: int | None,
            verbose: bool) -> dict:
    global _ns_counter
    _ns_counter += 1
    ns = f"nfb-bench-{os.getpid()}-{_ns_counter}"
    procs: list[Proc] = []
    result: dict = {"impl": impl, "ok": False}
    max_len = min(max(npackets, 1024), NFQUEUE_MAX_PACKETS)

    def log(msg: str) -> None:
        if verbose:
            print(f"  [{impl} {ns}] {msg}", file=sys.stderr, flush=True)

    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-p", "udp",
              "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)])

        recv = Proc("receiver", ["ip", "netns", "exec", ns, udp_tool, "recv",
                                 str(PORT), str(npackets), str(CONSUMER_TIMEOUT + 60)])
        procs.append(recv)
        recv.wait_line(b"READY", 10.0)

        cmd = list(consumer_cmd)
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        cons = Proc(impl, ["ip", "netns", "exec", ns, *cmd, str(QUEUE_NUM),
                           str(npackets), str(max_len), str(CONSUMER_TIMEOUT)], env=env)
        procs.append(cons)
        cons.wait_line(b"READY", READY_TIMEOUT)
        # `ip netns exec` execs the command in place, so the pid is the consumer
        if _exe_name(cons.p.pid) in ("ip", "taskset"):
            raise RunError(f"pid {cons.p.pid} is still {_exe_name(cons.p.pid)!r}")
        log("consumer ready")

        cons.signal(signal.SIGSTOP)
        recv.signal(signal.SIGSTOP)
        _wait_stopped(cons.p.pid)
        _wait_stopped(recv.p.pid)

        before = queue_stats(ns)
        if before is None:
            raise RunError("queue is not bound (no line in nfnetlink_queue)")
        t0 = time.monotonic()
        r = subprocess.run(["ip", "netns", "exec", ns, udp_tool, "send", str(PORT),
                            str(npackets), str(size)],
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
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                       timeout=30)


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


def rss_summary(samples: list | None) -> dict:
    """RSS after warm-up (the first sample at or past RSS_EVERY packets), the
    largest later sample, and the growth between them in percent."""
    if not samples:
        return {}
    later = [s for s in samples if s[0] >= RSS_EVERY]
    if len(later) < 2:
        return {"rss_samples": samples}
    base = later[0][1]
    peak = max(s[1] for s in later[1:])
    return {"rss_samples": samples, "rss_warm_bytes": base, "rss_max_bytes": peak,
            "rss_growth_pct": round(100.0 * (peak - base) / base, 2)}


def run_live(impl: str, consumer_cmd: list[str], env: dict[str, str] | None,
             udp_tool: str, scenario: str, npackets: int, size: int,
             cpu: int | None, verbose: bool, sender_cpu: int | None = None,
             rcvbuf: int | None = None, fixed: bool = False) -> dict:
    global _ns_counter
    _ns_counter += 1
    ns = f"nfb-bench-{os.getpid()}-{_ns_counter}"
    procs: list[Proc] = []
    result: dict = {"impl": impl, "scenario": scenario, "ok": False}
    opts, max_len = live_args(impl, scenario, rcvbuf, fixed)
    timeout = CONSUMER_TIMEOUT + npackets // 10000

    def log(msg: str) -> None:
        if verbose:
            print(f"  [{impl} {scenario} {ns}] {msg}", file=sys.stderr, flush=True)

    pin = [] if sender_cpu is None else ["taskset", "-c", str(sender_cpu)]

    def send(n: int) -> dict:
        r = subprocess.run(["ip", "netns", "exec", ns, *pin, udp_tool, "send",
                            str(PORT), str(n), str(size)], capture_output=True,
                           text=True, timeout=SEND_TIMEOUT + n // 10000, check=False)
        if r.returncode != 0:
            raise RunError(f"sender failed ({r.returncode}): {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-p", "udp",
              "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)])
        recv = Proc("receiver", ["ip", "netns", "exec", ns, udp_tool, "recv",
                                 str(PORT), str(npackets), str(timeout + 60)])
        procs.append(recv)
        recv.wait_line(b"READY", 10.0)

        cmd = list(consumer_cmd) + opts
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        cons = Proc(impl, ["ip", "netns", "exec", ns, *cmd, str(QUEUE_NUM),
                           str(npackets), str(max_len), str(timeout)], env=env)
        procs.append(cons)
        cons.wait_line(b"READY", READY_TIMEOUT)
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
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                       timeout=30)


def live_summary(rounds: list[dict], impls: list[str]) -> dict:
    """Medians over rounds of what the live scenarios report."""
    out: dict = {}
    for impl in impls:
        ok = [row[impl] for row in rounds if row[impl]["ok"]]
        for key in ("sent", "packets", "received", "lost", "queue_dropped",
                    "user_dropped", "rss_warm_bytes", "rss_max_bytes",
                    "rss_growth_pct", "cpu_us_per_packet"):
            vals = [r[key] for r in ok if r.get(key) is not None]
            if vals:
                out[f"{impl}_{key}_median"] = statistics.median(vals)
    return out


def _install_sigterm() -> None:
    """SIGTERM runs the finally blocks (namespaces deleted, children killed)."""
    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)


# --------------------------------------------------------------------------
# main


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default="drain",
                    help="drain (default): the queue filled while the consumer is "
                    "stopped; stream, overload, memory: see the module's docstring")
    ap.add_argument("--packets", type=int,
                    help="packets per run (default by scenario: %s; drain: at most %d)"
                    % (", ".join(f"{k} {v}" for k, v in DEFAULT_PACKETS.items()),
                       NFQUEUE_MAX_PACKETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=100, help="UDP payload bytes")
    ap.add_argument("--impl", choices=("both", "c", "nfbind"), default="both")
    ap.add_argument("--python", help="interpreter for the nfbind consumer "
                    "(default: .venv/bin/python if it imports nfbind, else this "
                    "one with PYTHONPATH=src)")
    ap.add_argument("--cpu", type=int, help="pin the consumers to this CPU (taskset)")
    ap.add_argument("--rcvbuf", type=int, help="stream, overload, memory: the "
                    "receive buffer both consumers force, bytes (the kernel doubles "
                    "it; default: 64 MiB, overload 256 KiB)")
    ap.add_argument("--fixed-rcvbuf", action="store_true", help="stream, overload, "
                    "memory: nfbind's receive buffer keeps its size after an overrun "
                    "(rcvbuf_max=rcvbuf) instead of growing, as it does by default")
    ap.add_argument("--sender-cpu", type=int, help="stream, overload, memory: pin "
                    "the sender to this CPU (taskset)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)

    if os.geteuid() != 0:
        sys.exit("bench: must run as root (network namespaces, iptables)")
    if a.packets is None:
        a.packets = DEFAULT_PACKETS[a.scenario]
    limit = NFQUEUE_MAX_PACKETS if a.scenario == "drain" else 10_000_000
    if not 1 <= a.packets <= limit:
        sys.exit(f"bench: --packets must be 1..{limit}")
    if a.rcvbuf is not None and (a.scenario == "drain" or not 4096 <= a.rcvbuf <= 1 << 30):
        sys.exit("bench: --rcvbuf is for stream, overload and memory, 4096..1073741824")
    if a.scenario == "memory" and a.packets < 3 * RSS_EVERY:
        sys.exit(f"bench: --scenario memory needs --packets >= {3 * RSS_EVERY}")
    if not 0 <= a.size <= 65507:
        sys.exit("bench: --size must be 0..65507")
    if not 1 <= a.rounds <= 1000:
        sys.exit("bench: --rounds must be 1..1000")
    pinned = a.cpu is not None or a.sender_cpu is not None
    for tool in ("ip", "iptables") + (("taskset",) if pinned else ()):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found")

    udp_tool = _build("nfb_udp", "nfb_udp.c", [])
    impls = ["c", "nfbind"] if a.impl == "both" else [a.impl]
    cmds: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    info: dict = {"scenario": a.scenario, "packets": a.packets, "rounds": a.rounds,
                  "size": a.size,
                  "kernel": platform.release(), "cpus": os.cpu_count(),
                  "cpu_pin": a.cpu, "sender_cpu_pin": a.sender_cpu}
    if "c" in impls:
        cmds["c"] = ([_build("nfq_ref", "nfq_ref.c", ["-lnetfilter_queue", "-lmnl"])],
                     None)
    if "nfbind" in impls:
        py, env, where = find_nfbind_python(a.python)
        cmds["nfbind"] = ([py, os.path.join(HERE, "nfq_nfbind.py")], env)
        info["python"] = py
        info["nfbind"] = where
        info["pythonpath"] = env.get("PYTHONPATH")

    if a.scenario != "drain":
        info["consumer_options"] = {impl: live_args(impl, a.scenario, a.rcvbuf,
                                                    a.fixed_rcvbuf)[0]
                                    for impl in impls}
        info["max_len"] = live_args(impls[0], a.scenario)[1]
    _install_sigterm()
    if not a.json:
        title = "throughput" if a.scenario == "drain" else a.scenario
        print(f"NFQUEUE {title}: {a.packets} packets x {a.size} B UDP payload, "
              f"{a.rounds} rounds, kernel {info['kernel']}, {info['cpus']} CPUs")
        if "nfbind" in info:
            print(f"nfbind: {info['nfbind']} ({info['python']})")
        print(flush=True)

    rounds = []
    failed = False
    for r in range(1, a.rounds + 1):
        row: dict = {"round": r}
        for impl in impls:
            cmd, env = cmds[impl]
            if a.scenario == "drain":
                res = run_one(impl, cmd, env, udp_tool, a.packets, a.size, a.cpu,
                              a.verbose)
            else:
                res = run_live(impl, cmd, env, udp_tool, a.scenario, a.packets,
                               a.size, a.cpu, a.verbose, a.sender_cpu, a.rcvbuf,
                               a.fixed_rcvbuf)
            row[impl] = res
            if not res["ok"]:
                failed = True
        if len(impls) == 2 and row["c"]["ok"] and row["nfbind"]["ok"]:
            row["ratio"] = row["nfbind"]["pps"] / row["c"]["pps"]
        rounds.append(row)
        if not a.json:
            parts = [f"round {r}:"]
            for impl in impls:
                res = row[impl]
                if res["ok"] and a.scenario == "memory":
                    parts.append(f"{impl} {_fmt(res['pps'])} pps, RSS "
                                 f"{res['rss_warm_bytes'] >> 10} KiB at {RSS_EVERY}, "
                                 f"max {res['rss_max_bytes'] >> 10} KiB later "
                                 f"({res['rss_growth_pct']:+.2f}%)")
                elif res["ok"] and a.scenario != "drain":
                    parts.append(f"{impl} {_fmt(res['pps'])} pps (handled "
                                 f"{res['packets']}, recv {res['received']}/{res['sent']}, "
                                 f"queue_dropped {res.get('queue_dropped')}, "
                                 f"user_dropped {res.get('user_dropped')})")
                elif res["ok"]:
                    parts.append(f"{impl} {_fmt(res['pps'])} pps "
                                 f"(recv {res['received']}/{a.packets})")
                else:
                    parts.append(f"{impl} FAILED ({res.get('error')})")
            if "ratio" in row:
                parts.append(f"ratio {row['ratio']:.3f}")
            print("  ".join(parts), flush=True)

    def med(impl: str) -> float | None:
        vals = [row[impl]["pps"] for row in rounds if row[impl]["ok"]]
        return statistics.median(vals) if vals else None

    summary: dict = {}
    for impl in impls:
        summary[f"{impl}_pps_median"] = med(impl)
    ratios = [row["ratio"] for row in rounds if "ratio" in row]
    if len(impls) == 2:
        summary["ratio_median"] = statistics.median(ratios) if ratios else None
    if a.scenario != "drain":
        summary.update(live_summary(rounds, impls))
    summary["ok"] = not failed

    if a.json:
        name = "nfqueue_throughput" if a.scenario == "drain" else f"nfqueue_{a.scenario}"
        print(json.dumps({"benchmark": name, **info,
                          "rounds_detail": rounds, **summary}, indent=None))
    else:
        print()
        if "nfbind" in impls:
            print(f"median nfbind: {_fmt(summary['nfbind_pps_median'])} pps")
        if "c" in impls:
            print(f"median C:      {_fmt(summary['c_pps_median'])} pps")
        if len(impls) == 2:
            rm = summary["ratio_median"]
            print("median ratio nfbind/C: " + ("-" if rm is None else f"{rm:.3f}")
                  + f"  (per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)})")
        if a.scenario != "drain":
            for impl in impls:
                got = {k[len(impl) + 1:-7]: v for k, v in summary.items()
                       if k.startswith(impl + "_") and k.endswith("_median")
                       and not k.startswith(impl + "_pps")}
                print(f"median {impl}: " + ", ".join(f"{k} {v:,}" for k, v in got.items()))
        if failed:
            print("SOME RUNS FAILED OR LOST PACKETS", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
