#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack dump: nfbind vs. a plain C dumper (and pyroute2, conntrack -L).

Run as root:

    python benchmarks/bench_conntrack.py [--flows 50000] [--rounds 5]
                                         [--impl all|c,nfbind,pyroute2,conntrack]
                                         [--json]

1. a throw-away network namespace is created and its conntrack table filled
   once with N UDP entries by ``bin/ct_fill`` (ctnetlink creates, no
   packets); ``conntrack -C`` in the namespace must then show exactly N;
2. one untimed warm-up dump by the C reference;
3. each round runs every implementation once, interleaved in the order
   c, nfbind, pyroute2, conntrack, each as its own process inside the
   namespace (``ip netns exec``):
   * ``bin/ct_dump_ref`` (libnetfilter_conntrack, nfct_query(NFCT_Q_DUMP))
   * ``ct_dump_nfbind.py`` (``list(Conntrack().dump())``: every Flow built)
   * ``ct_dump_pyroute2.py`` (``list(NFCTSocket().dump())``), if pyroute2
     imports; skipped otherwise
   * ``conntrack -L`` with its output to /dev/null
   The first three time themselves (open -> dump -> close) and report the
   flow count and per-field sums; ``conntrack -L`` is timed by this driver
   from fork to exit ("wall"), and is compared with the C dumper's wall time;
4. every run must have seen all N flows, and the sums (addresses, ports,
   protocol, mark, zone; status against the C dumper of the same round) must
   match the filled table.

Reported: per round each implementation's seconds and its ratio to C; then
the median seconds of each and the median over rounds of each per-round
ratio.

``--scenario filter`` (default ``dump``) times, on the same filled table
(100,000 flows by default), three nfbind dumps per round: the whole table
("full"), the one flow of entry N/2 selected by its exact tuple (src, dst,
proto, sport, dport: CTA_FILTER, applied by the kernel; "filtered"), and
the same selection with the kernel's filter switched off, so userspace
decodes every flow and keeps one ("userspace").  full/filtered is how much
the kernel-side filter saves; filtered must see exactly that one flow.  The namespace is always deleted, only processes started here are
killed, and a global sysctl raised here (nf_conntrack_max) is put back.
Exit status is non-zero if any run failed or saw a different table.
_harness.py holds what the drivers share.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    HERE, REPO, Namespace, RunError, add_common_options, build, check_common, emit_json,
    find_python, interleaved_rounds, json_line, median, median_of, run,
)

SYSCTL = "/proc/sys/net/netfilter/"

ALL_IMPLS = ("c", "nfbind", "pyroute2", "conntrack")
#: --scenario filter: full dump, kernel-filtered, userspace-filtered
FILTER_IMPLS = ("full", "filtered", "userspace")
FILL_TIMEOUT = 86400            # conntrack timeout of the filled entries, s
MAX_FLOWS = 1 << 22
# the sums every dumper reports; status is compared with the C dumper's
SUM_KEYS = ("orig_src", "orig_dst", "orig_sport", "orig_dport", "reply_src",
            "reply_dst", "reply_sport", "reply_dport", "with_ports", "proto",
            "mark", "zone")


# --------------------------------------------------------------------------
# finding the interpreters

NFBIND_PROBE = """\
try:
    from nfbind import Conntrack
except ImportError:
    from nfbind.conntrack import Conntrack
assert callable(getattr(Conntrack, "dump", None)), "Conntrack has no dump()"
import nfbind
print(nfbind.__file__)
"""
PYROUTE2_PROBE = "import pyroute2; from pyroute2 import NFCTSocket; print(pyroute2.__file__)"
#: the last interpreter tried for the Python dumpers
PYTHON3 = shutil.which("python3") or sys.executable


# --------------------------------------------------------------------------
# small helpers


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().split()[0])


def _ns_sysctl(ns: Namespace, name: str) -> int:
    return int(ns.run("cat", SYSCTL + name).split()[0])


def _ct_count(ns: Namespace) -> int:
    return int(ns.run("conntrack", "-C", timeout=60).split()[0])


def entry_tuple(i: int) -> list[str]:
    """Entry i's original tuple as ct_dump_nfbind.py --select takes it."""
    src = 0x0A010000 + (i >> 8)
    dst = 0x0A020001 + (i % 251)
    ip = lambda v: ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))  # noqa: E731
    return [ip(src), ip(dst), "udp", str(10000 + (i & 0xFF)), "53"]


def expected_sums(n: int) -> dict[str, int]:
    """The sums of the table ct_fill.c builds (see its header comment)."""
    s = dict.fromkeys(SUM_KEYS, 0)
    for i in range(n):
        src = 0x0A010000 + (i >> 8)
        dst = 0x0A020001 + (i % 251)
        sport = 10000 + (i & 0xFF)
        s["orig_src"] += src
        s["orig_dst"] += dst
        s["orig_sport"] += sport
        s["orig_dport"] += 53
        s["reply_src"] += dst
        s["reply_dst"] += src
        s["reply_sport"] += 53
        s["reply_dport"] += sport
        s["mark"] += i
    s["with_ports"] = n
    s["proto"] = 17 * n
    s["zone"] = 0
    return s


# --------------------------------------------------------------------------
# one run


def run_one(impl: str, cmd: list[str], env: dict[str, str] | None, ns: Namespace,
            nflows: int, timeout: float, cpu: int | None,
            expect: dict[str, int], verbose: bool) -> dict:
    """Run one dumper inside the namespace; check what it saw."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    full = ns.cmd(*cmd)
    result: dict = {"impl": impl, "ok": False}
    try:
        t0 = time.perf_counter()
        try:
            r = subprocess.run(full, env=env, capture_output=True, text=True,
                               timeout=timeout, check=False,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RunError(f"no exit within {timeout:.0f} s (killed)") from e
        wall = time.perf_counter() - t0
        result["wall"] = round(wall, 6)
        err_tail = r.stderr.strip()[-1500:]
        if r.returncode != 0:
            raise RunError(f"exited {r.returncode}"
                           + (f"; stderr: {err_tail}" if err_tail else ""))
        if impl == "conntrack":
            m = re.search(r"(\d+) flow entries have been shown", r.stderr)
            if not m:
                raise RunError(f"no entry count in conntrack's stderr: {err_tail!r}")
            result["flows"] = int(m.group(1))
            result["seconds"] = None
        else:
            res = json_line(r.stdout, impl)
            result.update({k: v for k, v in res.items() if k != "impl"})
            if err_tail:
                result["stderr"] = err_tail

        problems = []
        if impl in ("filtered", "userspace"):
            nflows = 1          # the one selected entry, checked below
            if result.get("flows") == 1 and result.get("selected") != result.get("want"):
                problems.append(f"selected {result.get('selected')}, "
                                f"not {result.get('want')}")
        if result.get("flows") != nflows:
            problems.append(f"saw {result.get('flows')} of {nflows} flows")
        if "touch_error" in result:
            problems.append(f"reading the flows failed: {result['touch_error']}")
        if "distinct" in result and result["distinct"] != result.get("flows"):
            problems.append(f"{result['flows'] - result['distinct']} duplicate "
                            f"original tuples")
        sums = result.get("sums")
        if sums is not None and result.get("flows") == nflows \
                and impl not in ("filtered", "userspace"):
            bad = [k for k in SUM_KEYS if sums.get(k) != expect[k]]
            if bad:
                problems.append("fields differ from the filled table: " + ", ".join(
                    f"{k} (sum {sums.get(k)} != {expect[k]})" for k in bad))
            tmin, tmax = result.get("timeout_min"), result.get("timeout_max")
            if (tmin is None or tmax is None or not 0 < tmin <= tmax <= FILL_TIMEOUT):
                problems.append(f"timeouts {tmin}..{tmax} not within "
                                f"(0, {FILL_TIMEOUT}]")
            if result.get("id_nonzero") != nflows:
                problems.append(f"{nflows - (result.get('id_nonzero') or 0)} "
                                f"flows without an id")
        if problems:
            result["error"] = "; ".join(problems)
        else:
            result["ok"] = True
    except RunError as e:
        result["error"] = str(e)
    if verbose:
        print(f"  [{impl}] {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------
# main


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=50000,
                    help="conntrack entries to create and dump (default 50000)")
    ap.add_argument("--impl", default="all",
                    help="comma-separated subset of %s, or all (default; "
                         "pyroute2 is skipped if it does not import)"
                         % ",".join(ALL_IMPLS))
    ap.add_argument("--family", choices=("unspec", "inet", "inet6"),
                    default="unspec", help="family passed to every dumper "
                    "(default unspec: all families)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed C dumps before round 1 (default 1)")
    ap.add_argument("--timeout", type=int, default=300,
                    help="seconds one run may take before it is killed")
    ap.add_argument("--pyroute2-python", help="interpreter for the pyroute2 "
                    "dumper (default: as for --python)")
    ap.add_argument("--scenario", choices=("dump", "filter"), default="dump",
                    help="dump: every dumper reads the whole table (default); filter: "
                    "nfbind's whole-table dump beside the one flow selected by its "
                    "tuple, in the kernel and in userspace (--impl is ignored)")
    add_common_options(ap, consumer="dumper", size=False,
                       fallback="python3 with PYTHONPATH=src")
    a = ap.parse_args(argv)

    check_common(a, needs="network namespaces, ctnetlink", tools=("ip", "conntrack"))
    if not 1 <= a.flows <= MAX_FLOWS:
        sys.exit(f"bench: --flows must be 1..{MAX_FLOWS}")
    if not 0 <= a.warmup <= 100:
        sys.exit("bench: --warmup must be 0..100")
    if a.family == "inet6":
        sys.exit("bench: the filler creates IPv4 entries only; use unspec or inet")
    filtering = a.scenario == "filter"
    #: what every ratio is against
    base = "full" if filtering else "c"
    if filtering:
        impls = list(FILTER_IMPLS)
        explicit = True
    elif a.impl == "all":
        impls = list(ALL_IMPLS)
        explicit = False
    else:
        impls = [x.strip() for x in a.impl.split(",") if x.strip()]
        bad = [x for x in impls if x not in ALL_IMPLS]
        if bad or not impls or len(set(impls)) != len(impls):
            sys.exit(f"bench: --impl takes a subset of {','.join(ALL_IMPLS)} or all")
        impls = [x for x in ALL_IMPLS if x in impls]    # fixed order
        explicit = True

    log = (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)) \
        if a.verbose else (lambda msg: None)

    fill = build("ct_fill", "ct_fill.c", ["-lnetfilter_conntrack", "-lmnl"])
    dump_ref = build("ct_dump_ref", "ct_dump_ref.c", ["-lnetfilter_conntrack", "-lmnl"])
    fam_args = ["--family", a.family]
    conntrack_cmd = ["conntrack", "-L"] + (["-f", "ipv4"] if a.family == "inet" else [])
    info: dict = {"scenario": a.scenario, "flows": a.flows, "rounds": a.rounds,
                  "family": a.family,
                  "kernel": platform.release(), "cpus": os.cpu_count(),
                  "cpu_pin": a.cpu, "warmup": a.warmup,
                  "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    skipped: dict[str, str] = {}
    cmds: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    if "c" not in impls and not filtering:
        sys.exit("bench: --impl must include c (every ratio is against it)")
    cmds["c"] = ([dump_ref, a.family], None)
    if filtering:
        py, env, where = find_python(NFBIND_PROBE, a.python, PYTHON3)
        if py is None:
            sys.exit("bench: cannot import nfbind's Conntrack: " + where
                     + f"\n(build it with: cd {REPO} && python build_ffi.py)")
        full = [py, os.path.join(HERE, "ct_dump_nfbind.py"), *fam_args,
                "--timeout", str(a.timeout)]
        want = entry_tuple(a.flows // 2)
        cmds["full"] = (full, env)
        cmds["filtered"] = (full + ["--select", ",".join(want)], env)
        cmds["userspace"] = (full + ["--select", ",".join(want), "--userspace"], env)
        info.update(python=py, nfbind=where, pythonpath=env.get("PYTHONPATH"),
                    selected=want)
    if "nfbind" in impls:
        py, env, where = find_python(NFBIND_PROBE, a.python, PYTHON3)
        if py is None:
            sys.exit("bench: cannot import nfbind's Conntrack: " + where
                     + f"\n(build it with: cd {REPO} && python build_ffi.py; "
                     "or leave nfbind out: --impl c,pyroute2,conntrack)")
        cmds["nfbind"] = ([py, os.path.join(HERE, "ct_dump_nfbind.py"), *fam_args,
                           "--timeout", str(a.timeout)], env)
        info.update(python=py, nfbind=where, pythonpath=env.get("PYTHONPATH"))
    if "pyroute2" in impls:
        py, env, where = find_python(PYROUTE2_PROBE, a.pyroute2_python or a.python, PYTHON3)
        if py is None:
            if explicit:
                sys.exit("bench: cannot import pyroute2: " + where)
            skipped["pyroute2"] = "does not import (pip install pyroute2)"
            impls.remove("pyroute2")
        else:
            cmds["pyroute2"] = ([py, os.path.join(HERE, "ct_dump_pyroute2.py"),
                                 *fam_args, "--timeout", str(a.timeout)], env)
            info.update(pyroute2_python=py, pyroute2=where)
    if "conntrack" in impls:
        cmds["conntrack"] = (conntrack_cmd, None)
        info["conntrack_tools"] = run(["conntrack", "--version"]).strip() or None
    info["impls"] = impls
    if skipped:
        info["skipped"] = skipped

    expect = expected_sums(a.flows)
    restore_max: int | None = None
    rounds: list[dict] = []
    failed = False

    def on_term(signum, frame):            # run the finally blocks on SIGTERM
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    def one(ns: Namespace, impl: str, rnd: int) -> dict:
        cmd, env = cmds[impl]
        if impl == "pyroute2" and rnd == 1:
            cmd = cmd + ["--check"]        # slow; once is enough
        return run_one(impl, cmd, env, ns, a.flows,
                       a.timeout * (2 if impl == "pyroute2" else 1) + 30,
                       a.cpu, expect, a.verbose)

    def on_row(row: dict) -> None:
        c = row[base]
        ratios = {}
        for impl in impls[1:]:
            res = row[impl]
            if res["ok"] and impl != "conntrack" and "sums" in res and c["ok"] \
                    and not filtering \
                    and res["sums"].get("status") != c["sums"].get("status"):
                res["ok"] = False
                res["error"] = (f"status sum {res['sums'].get('status')} != C's "
                                f"{c['sums'].get('status')}")
            if not (res["ok"] and c["ok"]):
                continue
            if impl == "conntrack":
                ratios[impl] = res["wall"] / c["wall"]
            else:
                ratios[impl] = res["seconds"] / c["seconds"]
        row["ratios"] = ratios
        cpu_ratios = {}
        for impl in ratios:
            res = row[impl]
            if impl != "conntrack" and c.get("user") is not None \
                    and res.get("user") is not None and c["user"] + c["sys"] > 0:
                cpu_ratios[impl] = (res["user"] + res["sys"]) / (c["user"] + c["sys"])
        row["cpu_ratios"] = cpu_ratios
        if a.json:
            return
        parts = [f"round {row['round']}:"]
        for impl in impls:
            res = row[impl]
            name = "conntrack -L" if impl == "conntrack" else impl
            if not res["ok"]:
                parts.append(f"{name} FAILED ({res.get('error')})")
            elif impl == "conntrack":
                parts.append(f"{name} {res['wall']:.4f} s wall "
                             f"(C wall {c['wall']:.4f} s)")
            else:
                parts.append(f"{name} {res['seconds']:.4f} s")
            if impl in ratios:
                parts[-1] += f" x{ratios[impl]:.2f}"
            if impl in cpu_ratios:
                parts[-1] += f" (cpu x{cpu_ratios[impl]:.2f})"
        print("  ".join(parts), flush=True)

    try:
        with Namespace("nfb-ctbench") as ns:
            # nf_conntrack_max: read-only inside a namespace on this kernel line,
            # mirroring the global value, which is what limits the namespace's
            # table; nf_conntrack_buckets (the shared hash) is global only.
            ns_max = _ns_sysctl(ns, "nf_conntrack_max")
            if ns_max and ns_max < a.flows:
                glob_max = _read_int(SYSCTL + "nf_conntrack_max")
                want = a.flows + 4096
                log(f"nf_conntrack_max {ns_max} < {a.flows}: raising the global "
                    f"value {glob_max} -> {want} for this run")
                with open(SYSCTL + "nf_conntrack_max", "w", encoding="ascii") as f:
                    f.write(str(want))
                restore_max = glob_max
                ns_max = _ns_sysctl(ns, "nf_conntrack_max")
                if ns_max and ns_max < a.flows:
                    raise RunError(f"nf_conntrack_max in the namespace is {ns_max} "
                                   f"even after raising the global value")
            info["nf_conntrack_max"] = ns_max
            info["nf_conntrack_buckets"] = _ns_sysctl(ns, "nf_conntrack_buckets")
            info["host_entries"] = _read_int(SYSCTL + "nf_conntrack_count")

            out = ns.run(fill, str(a.flows), str(FILL_TIMEOUT), timeout=a.timeout)
            info["fill"] = json_line(out, "ct_fill")
            count = _ct_count(ns)
            info["count_after_fill"] = count
            if count != a.flows:
                raise RunError(f"conntrack -C shows {count} entries after filling "
                               f"{a.flows}")
            log(f"filled {a.flows} in {info['fill'].get('seconds')} s, "
                f"conntrack -C: {count}")

            if not a.json:
                print(f"conntrack dump: {a.flows} UDP flows, {a.rounds} rounds, "
                      f"family {a.family}, kernel {info['kernel']}, {info['cpus']} CPUs, "
                      f"nf_conntrack_buckets {info['nf_conntrack_buckets']}, "
                      f"{info['host_entries']} entries in the initial namespace")
                if "nfbind" in info:
                    print(f"nfbind: {info['nfbind']} ({info['python']})")
                if "pyroute2" in info:
                    print(f"pyroute2: {info['pyroute2']}")
                for k, why in skipped.items():
                    print(f"{k}: skipped, {why}")
                print(f"filled in {info['fill'].get('seconds', 0):.3f} s; "
                      f"conntrack -C: {count}")
                print(flush=True)

            for _ in range(a.warmup):
                w = run_one(base, cmds[base][0], cmds[base][1], ns, a.flows, a.timeout,
                            a.cpu, expect, a.verbose)
                if not w["ok"]:
                    raise RunError(f"warm-up C dump failed: {w.get('error')}")

            rounds = interleaved_rounds(a.rounds, impls,
                                        lambda impl, rnd: one(ns, impl, rnd), on_row)
            failed = any(not row[impl]["ok"] for row in rounds for impl in impls)

            final = _ct_count(ns)
            info["count_after_rounds"] = final
            if final != a.flows:
                failed = True
                info["error"] = f"conntrack -C shows {final} after the rounds"
    except RunError as e:
        failed = True
        info["error"] = str(e)
    finally:
        if restore_max is not None:
            try:
                with open(SYSCTL + "nf_conntrack_max", "w", encoding="ascii") as f:
                    f.write(str(restore_max))
            except OSError as e:
                print(f"bench: could not restore nf_conntrack_max={restore_max}: {e}",
                      file=sys.stderr)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    summary: dict = {}
    for impl in impls:
        key = "wall" if impl == "conntrack" else "seconds"
        summary[f"{impl}_{key}_median"] = median_of(rounds, impl, key)
    if "conntrack" in impls:
        summary["c_wall_median"] = median_of(rounds, "c", "wall")
    for impl in impls[1:]:
        summary[f"ratio_{impl}_{base}_median"] = median(
            [row["ratios"][impl] for row in rounds if impl in row["ratios"]])
        cpu = median([row["cpu_ratios"][impl] for row in rounds if impl in row["cpu_ratios"]])
        if cpu is not None:
            summary[f"cpu_ratio_{impl}_{base}_median"] = cpu
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary["ok"] = not failed

    if a.json:
        emit_json({"benchmark": "conntrack_dump", **info, "rounds_detail": rounds, **summary})
    else:
        if "error" in info:
            print(f"ERROR: {info['error']}", file=sys.stderr)
        if rounds:
            print()
            for impl in impls:
                if impl == "conntrack":
                    v = summary["conntrack_wall_median"]
                    print(f"median conntrack -L: {_secs(v)} wall "
                          f"(C wall {_secs(summary['c_wall_median'])})")
                else:
                    print(f"median {impl}: {_secs(summary[f'{impl}_seconds_median'])}")
            for impl in impls[1:]:
                vals = [row["ratios"][impl] for row in rounds if impl in row["ratios"]]
                rm = summary[f"ratio_{impl}_{base}_median"]
                name = ("conntrack -L/C (wall)" if impl == "conntrack" else
                        f"{impl}/{base}" if filtering else f"{impl}/C")
                print(f"median ratio {name}: " + ("-" if rm is None else f"{rm:.3f}")
                      + f"  (per round: {', '.join(f'{x:.3f}' for x in vals)})")
                cr = summary.get(f"cpu_ratio_{impl}_{base}_median")
                if cr is not None:
                    print(f"  median CPU-time ratio {impl}/{'C' if base == 'c' else base} "
                          f"(user+sys): {cr:.3f}")
            print(f"load average: {info['loadavg_start']} at start, "
                  f"{info['loadavg_end']} at end")
        if failed:
            print("SOME RUNS FAILED OR SAW A DIFFERENT TABLE", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
