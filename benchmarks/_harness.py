# SPDX-License-Identifier: GPL-2.0-or-later
"""The skeleton every benchmark driver shares (bench_nfqueue.py,
bench_nflog.py, bench_conntrack.py, bench_serve.py).

* building the C helpers into ``benchmarks/bin/`` (again when a source or a
  header it includes changed);
* finding an interpreter that imports nfbind;
* throw-away network namespaces (:class:`Namespace`) and the processes
  started in them (:class:`Proc`), killed by PID and deleted on every exit,
  SIGTERM included (:func:`install_sigterm`);
* /proc readings: a stopped process, CPU time, the executable, RSS samples;
* interleaved rounds (:func:`interleaved_rounds`), medians, and the report:
  one JSON object, or per-round lines and a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.join(HERE, "bin")

#: RSS is sampled every this many packets in the memory scenarios
RSS_EVERY = 100000


class RunError(Exception):
    """One implementation's run in one round failed."""


# --------------------------------------------------------------------------
# building the C helpers


def _local_headers(path: str) -> list[str]:
    """The benchmarks/ headers a C file includes (``#include "x.h"``)."""
    with open(path, encoding="utf-8") as f:
        names = re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), re.M)
    return [os.path.join(HERE, n) for n in names if os.path.exists(os.path.join(HERE, n))]


def build(name: str, src: str, libs: Sequence[str] = ()) -> str:
    """``benchmarks/bin/NAME`` compiled from ``benchmarks/SRC``, unless it is
    newer than the source and the headers the source includes."""
    out = os.path.join(BIN, name)
    srcpath = os.path.join(HERE, src)
    inputs = [srcpath] + _local_headers(srcpath)
    if os.path.exists(out) and all(os.path.getmtime(out) >= os.path.getmtime(p)
                                   for p in inputs):
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
# processes


def run(cmd: list[str], timeout: float = 30.0) -> str:
    """Run ``cmd`` and return its stdout; RunError if it fails or hangs."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"{' '.join(cmd)}: no exit within {timeout:.0f} s") from e
    if r.returncode != 0:
        raise RunError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def json_line(text: str, who: str) -> dict:
    """The last line of ``text`` that is a JSON object."""
    for raw in reversed(text.splitlines()):
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                return json.loads(raw)
            except ValueError:
                break
    raise RunError(f"{who}: no JSON result line in {text[-500:]!r}")


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
        try:
            return json_line(self.out.decode(errors="replace"), self.name)
        except RunError:
            raise RunError(f"{self.name}: no JSON result line in {self.out!r}"
                           + self.stderr_tail()) from None

    def stderr_tail(self) -> str:
        try:
            self.err.seek(0)
            text = self.err.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return ("; stderr: " + text[-1500:]) if text else ""


class Namespace:
    """A throw-away network namespace with ``lo`` up, for one run (``with``).

    Processes started with :meth:`start` are killed by PID, and the namespace
    deleted, when the block ends in any way (SIGTERM too, once
    :func:`install_sigterm` turned it into SystemExit)."""

    _count = 0

    def __init__(self, prefix: str = "nfb-bench", tag: str | None = None) -> None:
        Namespace._count += 1
        self.name = f"{prefix}-{os.getpid()}-{tag or Namespace._count}"
        self.procs: list[Proc] = []

    def __enter__(self) -> "Namespace":
        run(["ip", "netns", "add", self.name])
        try:
            run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        self.procs.clear()
        self.delete()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True,
                       check=False, timeout=60)

    def cmd(self, *args: str) -> list[str]:
        """``args`` as a command run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 30.0) -> str:
        return run(self.cmd(*args), timeout)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """A child inside the namespace (``ip netns exec`` execs in place, so
        its pid is the command's)."""
        p = Proc(name, self.cmd(*args), env=env)
        self.procs.append(p)
        return p


def install_sigterm() -> None:
    """SIGTERM runs the finally blocks (namespaces deleted, children killed)."""
    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)


# --------------------------------------------------------------------------
# /proc


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
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


def exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return "?"


def check_exec(proc: Proc) -> None:
    """The consumer runs as itself, not still as ``ip`` or ``taskset``."""
    if exe_name(proc.p.pid) in ("ip", "taskset"):
        raise RunError(f"pid {proc.p.pid} is still {exe_name(proc.p.pid)!r}")


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


def rss_text(res: dict) -> str:
    """A memory run's RSS figures for the per-round line."""
    return (f"RSS {res['rss_warm_bytes'] >> 10} KiB at {RSS_EVERY}, "
            f"max {res['rss_max_bytes'] >> 10} KiB later ({res['rss_growth_pct']:+.2f}%)")


# --------------------------------------------------------------------------
# rounds and medians


def interleaved_rounds(rounds: int, impls: Sequence[str],
                       run_one: Callable[[str, int], dict],
                       on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Each round runs every implementation once, in ``impls`` order (so slow
    drifts of the machine hit all alike); ``run_one(impl, round)`` returns a
    dict with "ok".  ``on_row(row)`` may add ratios and print the round."""
    out = []
    for r in range(1, rounds + 1):
        row: dict = {"round": r}
        for impl in impls:
            row[impl] = run_one(impl, r)
        if on_row is not None:
            on_row(row)
        out.append(row)
    return out


def all_ok(rounds: list[dict], impls: Iterable[str]) -> bool:
    return all(row[impl]["ok"] for row in rounds for impl in impls)


def set_ratio(row: dict, num: str, den: str, key: str = "pps") -> None:
    """row["ratio"] = num's key / den's key, when both runs are ok."""
    if num in row and den in row and row[num]["ok"] and row[den]["ok"]:
        row["ratio"] = row[num][key] / row[den][key]


def median_of(rounds: list[dict], impl: str, key: str) -> float | None:
    """The median of ``key`` over ``impl``'s ok runs (None if it has none)."""
    vals = [row[impl][key] for row in rounds
            if row[impl]["ok"] and row[impl].get(key) is not None]
    return statistics.median(vals) if vals else None


def median(vals: list) -> float | None:
    return statistics.median(vals) if vals else None


#: the figures the live scenarios report per run, summarized as medians
LIVE_KEYS = ("sent", "packets", "received", "lost", "queue_dropped", "user_dropped",
             "rss_warm_bytes", "rss_max_bytes", "rss_growth_pct", "cpu_us_per_packet")


def live_summary(rounds: list[dict], impls: Iterable[str],
                 keys: Sequence[str] = LIVE_KEYS) -> dict:
    """``{impl}_{key}_median`` over the ok runs, for the keys they report."""
    out: dict = {}
    for impl in impls:
        for key in keys:
            m = median_of(rounds, impl, key)
            if m is not None:
                out[f"{impl}_{key}_median"] = m
    return out


def rate_summary(rounds: list[dict], impls: Sequence[str]) -> tuple[dict, list[float]]:
    """Median pps per implementation and, with two, the median of the
    per-round ratios; also the ratios themselves."""
    summary: dict = {f"{impl}_pps_median": median_of(rounds, impl, "pps") for impl in impls}
    ratios = [row["ratio"] for row in rounds if "ratio" in row]
    if len(impls) == 2:
        summary["ratio_median"] = median(ratios)
    return summary, ratios


# --------------------------------------------------------------------------
# the report


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def emit_json(obj: dict, compact: bool = False) -> None:
    print(json.dumps(obj, separators=(",", ":") if compact else None), flush=True)


def round_line(row: dict, impls: Sequence[str], describe: Callable[[str, dict], str],
               digits: int = 3) -> str:
    """``round R: impl TEXT  impl TEXT  ratio X``; ``describe`` words an ok run."""
    parts = [f"round {row['round']}:"]
    for impl in impls:
        res = row[impl]
        parts.append(describe(impl, res) if res["ok"]
                     else f"{impl} FAILED ({res.get('error')})")
    if "ratio" in row:
        parts.append(f"ratio {row['ratio']:.{digits}f}")
    return "  ".join(parts)


def print_rate_summary(summary: dict, impls: Sequence[str], ratios: list[float],
                       live: bool) -> None:
    """The text summary of the NFQUEUE and NFLOG drivers."""
    print()
    if "nfbind" in impls:
        print(f"median nfbind: {fmt(summary['nfbind_pps_median'])} pps")
    if "c" in impls:
        print(f"median C:      {fmt(summary['c_pps_median'])} pps")
    if len(impls) == 2:
        rm = summary["ratio_median"]
        print("median ratio nfbind/C: " + ("-" if rm is None else f"{rm:.3f}")
              + f"  (per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)})")
    if live:
        for impl in impls:
            got = {k[len(impl) + 1:-7]: v for k, v in summary.items()
                   if k.startswith(impl + "_") and k.endswith("_median")
                   and not k.startswith(impl + "_pps")}
            print(f"median {impl}: " + ", ".join(f"{k} {v:,}" for k, v in got.items()))


# --------------------------------------------------------------------------
# the drivers' command line


def add_common_options(ap: argparse.ArgumentParser, *, consumer: str = "consumer",
                       size: bool = True, cpu: bool = True,
                       fallback: str = "this one with PYTHONPATH=src") -> None:
    """--rounds, --size, --python, --cpu, --json and -v, as every driver has them."""
    ap.add_argument("--rounds", type=int, default=5)
    if size:
        ap.add_argument("--size", type=int, default=100, help="UDP payload bytes")
    ap.add_argument("--python", help=f"interpreter for the nfbind {consumer} "
                    f"(default: .venv/bin/python if it imports nfbind, else {fallback})")
    if cpu:
        ap.add_argument("--cpu", type=int, help=f"pin the {consumer}s to this CPU (taskset)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("-v", "--verbose", action="store_true")


def check_common(a: argparse.Namespace, needs: str = "network namespaces, iptables",
                 tools: Sequence[str] = ("ip", "iptables")) -> None:
    """Root, the common options' ranges, and the tools the driver runs."""
    if os.geteuid() != 0:
        sys.exit(f"bench: must run as root ({needs})")
    if getattr(a, "size", None) is not None and not 0 <= a.size <= 65507:
        sys.exit("bench: --size must be 0..65507")
    if not 1 <= a.rounds <= 1000:
        sys.exit("bench: --rounds must be 1..1000")
    for tool in tuple(tools) + (("taskset",) if getattr(a, "cpu", None) is not None else ()):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found")
