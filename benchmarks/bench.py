#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Every benchmark in one table: nfbind beside its C reference (``make bench``).

Run as root from the repository root:

    python benchmarks/bench.py [--rounds 5] [--json] [--only CHANNEL[/SCENARIO]]...
                               [--quick] [-v]

Each row runs one of the per-channel drivers (bench_nfqueue.py,
bench_nflog.py, bench_conntrack.py, and bench_serve.py when it exists) as a
child process with ``--json``; the drivers interleave nfbind and C runs in
every round and report medians.  Rows:

=========================  =================================================
nfqueue/drain              N packets queued while the consumer is stopped,
                           then drained (accept each)
nfqueue/drain-fields       the same, both handlers also reading five fields
                           (payload length, mark, indev, hw_protocol,
                           timestamp)
nfqueue/drain-batch        the drain again, the C reference accepting with
                           one batch verdict per 64 packets
nfqueue/stream             the consumer runs while a sender sends N as fast
                           as it can (queue 65536, 64 MiB buffer)
nfqueue/overload           queue max length 1024, 256 KiB buffer; C with one
                           batch verdict per read; what each loses, and where
                           (nfbind's buffer doubles after an overrun, as it
                           does by default)
nfqueue/overload-fixed     the same with nfbind's buffer fixed at 256 KiB
nfqueue/drain-deadline     the drain with NfQueue(verdict_timeout=30) against
                           the same drain without: what deadlines cost
nflog/drain, stream,       the same three for NFLOG (overload: 256 KiB
overload                   buffer, default nlbufsiz); the handler gets a
                           Python object per packet
nflog/drain-fields         the drain again, the handler also reading five
                           fields (prefix, payload_len, indev, mark,
                           timestamp), as the C callback does
conntrack/dump             50,000 flows dumped into Flow objects vs the
                           libnetfilter_conntrack dumper
conntrack/filter           one flow of 100,000 selected by its exact tuple
                           (filtered in the kernel) vs the full dump of the
                           same table; also the same selection filtered in
                           userspace
nfqueue/memory,            RSS of the nfbind consumer over 1,000,000 packets,
nflog/memory               sampled every 100,000; growth after warm-up
nfqueue/scale-out          bench_serve.py: 2 workers vs 1 (if present)
process/lookup             bench_process.py: pkt.process() on a queued packet,
                           warm (cached owner) vs cold (caches emptied: a
                           /proc scan each time)
=========================  =================================================

Progress goes to stderr; the table (or with ``--json`` one JSON object with
every row and the drivers' per-round details) to stdout.  Exit status is
non-zero if any row failed (a row whose driver file does not exist is shown
as failed, with the reason, but does not count).
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# (channel, scenario, driver, extra driver arguments)
ROWS = [
    ("nfqueue", "drain", "bench_nfqueue.py", ["--scenario", "drain"]),
    # handlers that read fields: nfbind's and the C reference's read the same five
    ("nfqueue", "drain-fields", "bench_nfqueue.py", ["--scenario", "drain", "--fields"]),
    # the C reference at the kernel path's practical limit: batch verdicts
    ("nfqueue", "drain-batch", "bench_nfqueue.py", ["--scenario", "drain", "--c-batch", "64"]),
    ("nfqueue", "stream", "bench_nfqueue.py", ["--scenario", "stream"]),
    ("nfqueue", "overload", "bench_nfqueue.py", ["--scenario", "overload"]),
    # the cost of deadlines: the drain with NfQueue(verdict_timeout=...)
    # against the same drain without (the reference column is nfbind)
    ("nfqueue", "drain-deadline", "bench_nfqueue.py",
     ["--scenario", "drain", "--deadline", "30"]),
    # the same with nfbind's buffer kept at 256 KiB (by default it doubles
    # after an overrun, up to the size nfbind picks for max_len 1024)
    ("nfqueue", "overload-fixed", "bench_nfqueue.py",
     ["--scenario", "overload", "--fixed-rcvbuf"]),
    # NFLOG's handler gets a Python object per packet and reads no field (as
    # nfqueue's accepts without reading one); drain-fields also reads five
    ("nflog", "drain", "bench_nflog.py", ["--scenario", "drain", "--fields", "none"]),
    ("nflog", "drain-fields", "bench_nflog.py", ["--scenario", "drain"]),
    ("nflog", "stream", "bench_nflog.py", ["--scenario", "stream", "--fields", "none"]),
    ("nflog", "overload", "bench_nflog.py", ["--scenario", "overload", "--fields", "none"]),
    ("conntrack", "dump", "bench_conntrack.py", ["--impl", "c,nfbind"]),
    ("conntrack", "filter", "bench_conntrack.py", ["--scenario", "filter", "--flows", "100000"]),
    ("nfqueue", "memory", "bench_nfqueue.py", ["--scenario", "memory"]),
    ("nflog", "memory", "bench_nflog.py", ["--scenario", "memory"]),
    ("nfqueue", "scale-out", "bench_serve.py", []),
    ("flows", "json", "bench_flows.py", ["--output", "json"]),
    ("flows", "sqlite", "bench_flows.py", ["--output", "sqlite"]),
    ("flows", "ipfix", "bench_flows.py", ["--output", "ipfix"]),
    ("process", "lookup", "bench_process.py", []),
]

# --quick: packets (flows) per row, one round
QUICK = {
    ("nfqueue", "drain"): 10000, ("nfqueue", "stream"): 20000,
    ("nfqueue", "drain-fields"): 10000, ("nfqueue", "drain-batch"): 10000,
    ("nfqueue", "drain-deadline"): 10000,
    ("nfqueue", "overload"): 30000, ("nfqueue", "overload-fixed"): 30000,
    ("nflog", "drain"): 20000, ("nflog", "drain-fields"): 20000,
    ("nflog", "stream"): 20000, ("nflog", "overload"): 30000,
    ("conntrack", "dump"): 5000, ("conntrack", "filter"): 5000,
    ("nfqueue", "memory"): 300000,
    ("nflog", "memory"): 300000,
    ("flows", "json"): 5000, ("flows", "sqlite"): 5000, ("flows", "ipfix"): 5000,
    ("process", "lookup"): 5000,
}
SCALE_OUT_LABEL = "scale-out 2 workers vs 1"

_child: subprocess.Popen | None = None


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def selected(channel: str, scenario: str, only: list[str]) -> bool:
    if not only:
        return True
    for sel in only:
        ch, _, sc = sel.partition("/")
        if ch == channel and (not sc or sc == scenario):
            return True
    return False


def run_driver(cmd: list[str], timeout: float, verbose: bool) -> tuple[dict | None, str]:
    """Run one driver with --json; (its JSON object or None, error text)."""
    global _child
    err_to = None if verbose else subprocess.PIPE
    try:
        _child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_to,
                                  stdin=subprocess.DEVNULL, text=True, cwd=REPO)
    except OSError as e:
        return None, f"cannot start {cmd[1]}: {e}"
    try:
        out, err = _child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the drivers then delete their namespaces
        _child.send_signal(signal.SIGTERM)
        try:
            out, err = _child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            _child.kill()
            out, err = _child.communicate()
        _child = None
        return None, f"{os.path.basename(cmd[1])} did not finish within {timeout:.0f} s"
    rc = _child.returncode
    _child = None
    obj = None
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                pass
            break
    tail = (err or "").strip()[-800:]
    if obj is None:
        return None, f"{os.path.basename(cmd[1])} exited {rc} without a JSON result" + (
            f": {tail}" if tail else "")
    why = ""
    if rc != 0:
        why = obj.get("error") or f"{os.path.basename(cmd[1])} exited {rc}"
        errors = [r.get(impl, {}).get("error") for r in obj.get("rounds_detail", [])
                  for impl in ("c", "nfbind") if isinstance(r.get(impl), dict)]
        errors = [e for e in errors if e]
        if errors:
            why += f" ({len(errors)} failed runs; first: {errors[0]})"
    return obj, why


# --------------------------------------------------------------------------
# one row out of a driver's JSON


def _loss(channel: str, d: dict, impl: str) -> dict:
    """What one consumer lost: the figures of its median round by loss (so
    that they add up), with every round's loss and their sum."""
    runs = [r[impl] for r in d.get("rounds_detail", [])
            if isinstance(r.get(impl), dict) and r[impl].get("ok")
            and r[impl].get("lost") is not None]
    if not runs:
        return {}
    per_round = [r["lost"] for r in runs]
    runs.sort(key=lambda r: r["lost"])
    m = runs[(len(runs) - 1) // 2]
    keys = (("sent", "sent"), ("handled", "packets"), ("lost", "lost"))
    if channel == "nfqueue":
        keys += (("received", "received"), ("queue_dropped", "queue_dropped"),
                 ("user_dropped", "user_dropped"))
    else:
        keys += (("overruns", "overruns"), ("socket_drops", "socket_drops"))
    out = {k: m.get(src) for k, src in keys}
    out.update(lost_per_round=per_round, lost_sum=sum(per_round),
               round=next(r["round"] for r in d["rounds_detail"] if r.get(impl) is m))
    return out


def make_row(channel: str, scenario: str, d: dict) -> dict:
    row: dict = {"channel": channel, "scenario": scenario, "unit": "pps"}
    if scenario == "drain-deadline":
        row["reference"] = "no verdict_timeout"
    if scenario in ("drain-fields", "drain-batch", "overload-fixed", "drain-deadline"):
        scenario = scenario.split("-")[0]
    if channel == "conntrack" and scenario == "filter":
        # seconds of one dump: the selection vs the whole table, as dumps/s
        flows = d.get("flows")
        fs, full = d.get("filtered_seconds_median"), d.get("full_seconds_median")
        us = d.get("userspace_seconds_median")
        row.update(unit="dumps/s", flows=flows, reference="full dump",
                   nfbind_rate=1 / fs if fs else None, c_rate=1 / full if full else None,
                   ratio=full / fs if fs and full else None,
                   filtered_seconds_median=fs, full_seconds_median=full,
                   userspace_seconds_median=us)
        return row
    if channel == "conntrack":
        flows = d.get("flows")
        cs, ns = d.get("c_seconds_median"), d.get("nfbind_seconds_median")
        tr = d.get("ratio_nfbind_c_median")
        row.update(unit="flows/s", flows=flows,
                   nfbind_rate=flows / ns if flows and ns else None,
                   c_rate=flows / cs if flows and cs else None,
                   ratio=1.0 / tr if tr else None, time_ratio=tr,
                   nfbind_seconds_median=ns, c_seconds_median=cs,
                   cpu_ratio=d.get("cpu_ratio_nfbind_c_median"))
        return row
    if channel == "process":
        # pkt.process() per second: warm (the owner cached) vs cold (the
        # caches emptied before each lookup: a /proc scan each time)
        row.update(unit="lookups/s", reference="cold", lookups=d.get("packets"),
                   nfbind_rate=d.get("nfbind_pps_median"), c_rate=d.get("c_pps_median"),
                   ratio=d.get("ratio_median"), processes=d.get("processes"),
                   fds=d.get("fds"))
        return row
    if scenario == "scale-out":
        row.update(nfbind_rate=d.get("two_workers_pps_median"),
                   c_rate=d.get("one_worker_pps_median"),
                   ratio=d.get("ratio_median"), reference="1 worker",
                   target=d.get("target"), target_met=d.get("ok"))
        return row
    row.update(packets=d.get("packets"), nfbind_rate=d.get("nfbind_pps_median"),
               c_rate=d.get("c_pps_median"), ratio=d.get("ratio_median"))
    if channel == "flows":
        # flow records per second from a churn of N ended flows, beside the
        # same recorder writing nowhere
        row.update(unit="flows/s", reference="no output")
        return row
    if scenario == "memory":
        # the worst run of each consumer (the C one is for comparison only)
        for impl, prefix in (("nfbind", ""), ("c", "c_")):
            runs = [r[impl] for r in d.get("rounds_detail", [])
                    if r.get(impl, {}).get("ok") and "rss_growth_pct" in r[impl]]
            if runs:
                worst = max(runs, key=lambda r: r["rss_growth_pct"])
                row.update({prefix + k: worst.get(k) for k in (
                    "rss_warm_bytes", "rss_max_bytes", "rss_growth_pct",
                    "rss_samples")})
        row["ratio"] = None
        return row
    if scenario in ("stream", "overload"):
        row["nfbind_loss"] = _loss(channel, d, "nfbind")
        row["c_loss"] = _loss(channel, d, "c")
        # CPU time each consumer process used per packet handled (median)
        row["nfbind_cpu_us_per_packet"] = d.get("nfbind_cpu_us_per_packet_median")
        row["c_cpu_us_per_packet"] = d.get("c_cpu_us_per_packet_median")
        if scenario == "overload" and channel == "nfqueue":
            row["reference"] = "C, batch verdicts"
    elif scenario == "drain":
        # the drain drivers fail a round that lost anything
        row["nfbind_loss"] = row["c_loss"] = {"lost": 0}
    return row


# --------------------------------------------------------------------------
# the table


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _lost_text(channel: str, loss: dict | None) -> str:
    if not loss or loss.get("lost") is None:
        return "-"
    text = _num(loss["lost"])
    if channel == "nfqueue" and "queue_dropped" in loss:
        text += (f" (q {_num(loss.get('queue_dropped'))},"
                 f" user {_num(loss.get('user_dropped'))})")
    elif channel == "nflog" and "overruns" in loss:
        text += f" (ENOBUFS {_num(loss.get('overruns'))})"
    return text


HEAD = ["channel", "scenario", "nfbind", "reference", "ratio", "nfbind lost",
        "reference lost"]


def cells(rows: list[dict]) -> list[list[str]]:
    """The table's rows as lists of cell texts."""
    lines = []
    for r in rows:
        label = r["scenario"]
        if r["scenario"] == "scale-out":
            label = SCALE_OUT_LABEL
        elif r["scenario"] == "drain-fields":
            fields = (r.get("detail") or {}).get("fields", "five fields")
            if fields is True:       # nfqueue: both handlers read the same five
                fields = "payload_len,mark,indev,hw_protocol,timestamp (C too)"
            label = f"drain, reading {fields}"
        elif r["scenario"] == "drain-batch":
            label = "drain (ref: C, batch verdicts of 64)"
        elif r["scenario"] == "overload-fixed":
            label = "overload, nfbind's buffer fixed"
        elif r.get("reference"):
            label += f" (ref: {r['reference']})"
        if r.get("failed"):
            lines.append([r["channel"], label, "FAILED (below)", "-", "-", "-", "-"])
            continue
        unit = r["unit"]
        if r["scenario"] == "memory":
            def rss(prefix: str) -> str:
                if r.get(prefix + "rss_growth_pct") is None:
                    return "-"
                return (f"RSS {r[prefix + 'rss_warm_bytes'] / 2**20:.1f} -> "
                        f"{r[prefix + 'rss_max_bytes'] / 2**20:.1f} MiB "
                        f"({r[prefix + 'rss_growth_pct']:+.2f}%)")
            growth = r.get("rss_growth_pct")
            lines.append([r["channel"], f"memory {_num(r.get('packets'))} packets",
                          rss(""), rss("c_"),
                          "-" if growth is None else f"growth {growth:+.2f}%",
                          "-", "-"])
            continue
        nf = f"{_num(r.get('nfbind_rate'))} {unit}"
        ref = f"{_num(r.get('c_rate'))} {unit}"
        if r["channel"] == "conntrack" and r["scenario"] == "filter":
            def ms(x: float | None) -> str:
                return "-" if x is None else f"{x * 1000:,.1f} ms"
            us = r.get("userspace_seconds_median")
            lines.append([r["channel"], f"filter 1 of {_num(r.get('flows'))}",
                          f"{ms(r.get('filtered_seconds_median'))} (kernel filter)",
                          f"{ms(r.get('full_seconds_median'))} (full dump)",
                          "-" if r.get("ratio") is None else
                          f"x{r['ratio']:.1f} faster (userspace filter: {ms(us)})", "-", "-"])
            continue
        if r["scenario"] == "scale-out":
            nf += " (2 workers)"
            ref += " (1 worker)"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.3f}"
        if r.get("time_ratio") is not None:
            ratio += f" (time x{r['time_ratio']:.2f})"
        if r.get("target") is not None:
            ratio += f" (target {r['target']:g}: {'met' if r.get('target_met') else 'not met'})"
        lines.append([r["channel"], label, nf, ref, ratio,
                      _lost_text(r["channel"], r.get("nfbind_loss")),
                      _lost_text(r["channel"], r.get("c_loss"))])
    return lines


def table(rows: list[dict]) -> str:
    lines = cells(rows)
    widths = [max(len(x[i]) for x in [HEAD] + lines) for i in range(len(HEAD))]
    fmt = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()  # noqa: E731
    out = [fmt(HEAD), fmt(["-" * w for w in widths])]
    out += [fmt(x) for x in lines]
    for r in rows:
        if r.get("failed"):
            out.append(f"FAILED {r['channel']}/{r['scenario']}: {r.get('error', '')[:600]}")
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    """The same table in Markdown."""
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(x) + " |" for x in cells(rows)]
    return "\n".join(out)


# --------------------------------------------------------------------------
# main


def print_report(info: dict, rows: list[dict], md: bool) -> None:
    print(f"nfbind benchmarks: {info['rounds']} rounds (medians), kernel "
          f"{info['kernel']}, {info['cpus']} CPUs, Python {info['python']}, commit "
          f"{info['commit']}, {info['seconds']:.0f} s")
    print()
    print(table(rows))
    print()
    print("ratio = nfbind rate / reference rate (conntrack: also nfbind time / C "
          "time; filter: full-dump time / filtered-dump time); lost = sent - received at the far side (nfqueue: q = "
          "queue_dropped, user = user_dropped) or sent - handled (nflog: ENOBUFS "
          "= overruns reported), from the round with the median loss; memory: RSS "
          "after 100,000 packets -> largest later sample, growth in %")
    if md:
        print()
        print(markdown(rows))


def _commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10, check=False)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="rounds per row (default 5; --quick: 1)")
    ap.add_argument("--memory-rounds", type=int, default=1,
                    help="runs of the memory rows (default 1; the worst growth is shown)")
    ap.add_argument("--only", action="append", default=[], metavar="CHANNEL[/SCENARIO]",
                    help="run only these rows (repeatable), e.g. nfqueue, nflog/overload, "
                    "conntrack, nfqueue/scale-out")
    ap.add_argument("--quick", action="store_true",
                    help="small packet counts and one round: a smoke run, not a measurement")
    ap.add_argument("--packets", type=int,
                    help="packets (conntrack: flows) for every selected row except memory")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: print the table of a saved --json report")
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds one driver may take before it is stopped (default 900)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="the drivers' own step-by-step logs on stderr")
    a = ap.parse_args(argv)

    if a.from_json:
        with open(a.from_json, encoding="utf-8") as f:
            saved = json.loads(f.read().strip().splitlines()[-1])
        rows = []
        for row in saved["rows"]:        # rebuilt from the drivers' own output
            if row.get("detail"):
                new = make_row(row["channel"], row["scenario"], row["detail"])
                new.update({k: row[k] for k in ("failed", "error", "missing",
                                                "detail", "command", "seconds")
                            if k in row})
                row = new
            rows.append(row)
        print_report(saved, rows, a.markdown)
        return 0 if saved.get("ok") else 1
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (network namespaces, iptables, ctnetlink)")
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 5)
    if not 1 <= rounds <= 1000 or not 1 <= a.memory_rounds <= 100:
        sys.exit("bench: --rounds must be 1..1000, --memory-rounds 1..100")
    known = {(ch, sc) for ch, sc, _, _ in ROWS}
    for sel in a.only:
        ch, _, sc = sel.partition("/")
        if not any(c == ch and (not sc or s == sc) for c, s in known):
            sys.exit(f"bench: --only {sel}: no such row; rows: "
                     + ", ".join(f"{c}/{s}" for c, s, _, _ in ROWS))

    def on_term(signum, frame):
        if _child is not None and _child.poll() is None:
            _child.send_signal(signal.SIGTERM)     # it cleans up its namespaces
            try:
                _child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _child.kill()
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    todo = [r for r in ROWS if selected(r[0], r[1], a.only)]
    started = time.time()
    info = {"benchmark": "nfbind_bench", "rounds": rounds,
            "memory_rounds": a.memory_rounds, "quick": a.quick,
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "commit": _commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    rows: list[dict] = []
    log(f"{len(todo)} rows, {rounds} rounds each, kernel {info['kernel']}, "
        f"{info['cpus']} CPUs")
    for i, (channel, scenario, driver, extra) in enumerate(todo, 1):
        path = os.path.join(HERE, driver)
        name = f"{channel}/{scenario}"
        t0 = time.monotonic()
        log(f"[{i}/{len(todo)}] {name} ...")
        if not os.path.exists(path):
            # not counted in the exit status: there is nothing to run
            row = {"channel": channel, "scenario": scenario, "failed": True,
                   "missing": True, "error": f"benchmarks/{driver} does not exist"}
            rows.append(row)
            log(f"[{i}/{len(todo)}] {name}: skipped, {row['error']}")
            continue
        n_rounds = a.memory_rounds if scenario == "memory" else rounds
        cmd = [sys.executable, path, *extra, "--rounds", str(n_rounds), "--json"]
        count = a.packets if scenario != "memory" else None
        if count is None and a.quick:
            count = QUICK.get((channel, scenario))
        if count is not None and scenario != "scale-out":
            cmd += ["--flows" if channel == "conntrack" else "--packets", str(count)]
        if a.verbose and driver != "bench_serve.py":
            cmd.append("-v")
        obj, why = run_driver(cmd, a.timeout, a.verbose)
        if scenario == "scale-out" and obj is not None \
                and obj.get("ratio_median") is not None:
            why = ""     # it exits 1 when the ratio is below its target: shown as such
        secs = time.monotonic() - t0
        if obj is None:
            row = {"channel": channel, "scenario": scenario, "failed": True, "error": why}
        else:
            try:
                row = make_row(channel, scenario, obj)
            except (KeyError, TypeError, ValueError) as e:
                row = {"channel": channel, "scenario": scenario, "failed": True,
                       "error": f"unexpected JSON from {driver}: {e!r}"}
            else:
                if why:
                    row.update(failed=True, error=why)
                elif scenario == "memory" and "rss_growth_pct" not in row:
                    row.update(failed=True, error="no RSS figures")
                elif scenario not in ("memory",) and row.get("nfbind_rate") is None:
                    row.update(failed=True, error="no nfbind rate")
            row["detail"] = obj
        row["command"] = " ".join(os.path.relpath(c, REPO) if c == path else c
                                  for c in cmd[1:])
        row["seconds"] = round(secs, 1)
        rows.append(row)
        if row.get("failed"):
            log(f"[{i}/{len(todo)}] {name}: FAILED after {secs:.0f} s: {row['error']}")
        else:
            log(f"[{i}/{len(todo)}] {name}: done in {secs:.0f} s")

    info["seconds"] = round(time.time() - started, 1)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    failed = any(r.get("failed") and not r.get("missing") for r in rows)
    if a.json:
        print(json.dumps({**info, "rows": rows, "ok": not failed}))
    else:
        print_report(info, rows, a.markdown)
    if failed:
        log("SOME ROWS FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
