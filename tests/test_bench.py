# SPDX-License-Identifier: GPL-2.0-or-later
"""benchmarks/bench.py runs and reports: a smoke run of two cheap rows.

Not a timed test: it checks the JSON's structure and that both the nfbind
consumer and the C reference handled packets, never a rate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks", "bench.py")


def test_bench_quick_json():
    r = subprocess.run(
        [sys.executable, BENCH, "--quick", "--json", "--packets", "5000",
         "--only", "nfqueue/drain", "--only", "nflog/overload", "--timeout", "120"],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.stdout.strip(), r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "nfbind_bench"
    assert report["rounds"] == 1 and report["quick"] is True
    rows = {(row["channel"], row["scenario"]): row for row in report["rows"]}
    assert set(rows) == {("nfqueue", "drain"), ("nflog", "overload")}, rows.keys()
    for row in rows.values():
        assert not row.get("failed"), row.get("error")
        for key in ("nfbind_rate", "c_rate", "ratio"):
            assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)
        detail = row["detail"]
        assert len(detail["rounds_detail"]) == 1
        for impl in ("c", "nfbind"):
            run = detail["rounds_detail"][0][impl]
            assert run["ok"], run
            assert run["packets"] > 0, run
    # drain: every packet reached both consumers and went on to the receiver
    drain = rows[("nfqueue", "drain")]["detail"]["rounds_detail"][0]
    assert drain["c"]["received"] == drain["nfbind"]["received"] == 5000
    # overload: the losses are accounted for, whatever they are; a message the
    # kernel dropped at the consumer's socket is a packet lost and was reported
    # (ENOBUFS), and every report stands for at least one drop
    over = rows[("nflog", "overload")]
    for side in ("nfbind_loss", "c_loss"):
        loss = over[side]
        assert loss["sent"] == 5000
        assert loss["handled"] + loss["lost"] == loss["sent"]
        assert loss["overruns"] <= loss["socket_drops"] <= loss["lost"], (side, loss)
        assert (loss["socket_drops"] > 0) == (loss["overruns"] > 0), (side, loss)
    assert r.returncode == 0, r.stderr
    # the options are documented
    text = subprocess.run(
        [sys.executable, BENCH, "--help"], capture_output=True, text=True, timeout=60)
    assert "--only" in text.stdout


# the C references and the nfbind consumers take one command line (ref_args.h
# and benchmarks/_consumer.py): what one refuses, the other refuses too
REFUSED = [
    [],                                       # no arguments
    ["1"],                                    # no packet count
    ["--bogus", "1", "2"],                    # an unknown option
    ["--idle", "x", "1", "2"],                # bad values
    ["--idle", "0", "1", "2"],
    ["--rcvbuf", "big", "1", "2"],
    ["--timeout", "-1", "1", "2"],
    ["1", "0"],                               # no packets to wait for
]


@pytest.mark.parametrize("channel", ["nfq", "nflog"])
def test_consumers_refuse_the_same_command_lines(channel):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import _harness
    finally:
        sys.path.pop(0)
    if channel == "nfq":
        ref = _harness.build("nfq_ref", "nfq_ref.c", ["-lnetfilter_queue", "-lmnl"])
        tail, other = ["64"], "--stream"    # MAX_QUEUE_LEN; nflog's flag
    else:
        ref = _harness.build("nflog_ref", "nflog_ref.c", ["-lnetfilter_log"])
        tail, other = [], "--batch"
    py = [sys.executable, os.path.join(REPO, "benchmarks", channel + "_nfbind.py")]
    for args in REFUSED + [[other, "1", "2"]]:
        args = args + tail if len(args) >= 2 else args
        for cmd in ([ref] + args, py + args):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            assert r.returncode == 64, (cmd, r.returncode, r.stdout, r.stderr)
            assert "usage:" in r.stderr or "bad" in r.stderr or "must be" in r.stderr, (
                cmd, r.stderr)


def test_breakdown_runs_both_channels():
    """benchmarks/breakdown.py with both channels (its default) reads every
    packet of each stage; more packets than a queue holds is refused with the
    limit named.  Not timed: the figures are only checked to be there."""
    script = os.path.join(REPO, "benchmarks", "breakdown.py")
    r = subprocess.run([sys.executable, script, "--packets", "2000", "--passes", "1", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for ch in ("nflog", "nfqueue"):
        stages = report[ch]
        # ns per packet by stage, some stages by field or part
        values = [v for v in stages.values() if not isinstance(v, dict)]
        values += [v for part in stages.values() if isinstance(part, dict)
                   for v in part.values()]
        assert "recv+parse" in stages and len(values) > 10, (ch, stages)
        assert all(isinstance(v, float) and v > 0 for v in values), (ch, stages)
    r = subprocess.run([sys.executable, script, "--channel", "nfqueue", "--packets", "70000"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode != 0 and "65536" in r.stderr, r.stderr


def test_handler_floor_times_the_consumers_handlers():
    """benchmarks/handler_floor.py calls the NFQUEUE and NFLOG consumers'
    own handlers (imported from them, so a change there is measured) and
    reports a CPU time per call for each.  Not timed: the figures are only
    checked to be there; a bad count is refused."""
    script = os.path.join(REPO, "benchmarks", "handler_floor.py")
    r = subprocess.run([sys.executable, script, "--calls", "20000", "--reps", "3", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    ns = json.loads(r.stdout)["ns_per_call"]
    assert set(ns) == {"object.__new__ (slotted class)", "no-op handler",
                       "nfqueue drain handler", "nfqueue fields handler",
                       "nflog drain handler", "nflog fields handler"}, ns
    assert all(isinstance(v, float) and v > 0 for v in ns.values()), ns
    r = subprocess.run([sys.executable, script, "--calls", "5"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode != 0 and "--calls" in r.stderr, r.stderr
