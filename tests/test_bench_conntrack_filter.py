# SPDX-License-Identifier: GPL-2.0-or-later
"""benchmarks/bench_conntrack.py --scenario filter runs and checks itself:
a smoke run on a small table (not a timed test: no rate is asserted).  The
kernel-filtered and the userspace-filtered dumps must each return exactly
the selected flow, the full dump every flow."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "benchmarks", "bench_conntrack.py")


def test_filter_scenario_quick_json():
    r = subprocess.run([sys.executable, DRIVER, "--scenario", "filter", "--flows", "3000",
                        "--rounds", "1", "--json", "--python", sys.executable],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["scenario"] == "filter" and d["flows"] == 3000 and d["ok"]
    (rnd,) = d["rounds_detail"]
    assert rnd["full"]["flows"] == 3000 and rnd["full"]["ok"]
    want = d["selected"]
    for impl in ("filtered", "userspace"):
        run = rnd[impl]
        assert run["ok"] and run["flows"] == 1, run
        assert run["selected"] == [want[0], want[1], want[2], int(want[3]), int(want[4])]
    assert rnd["filtered"]["userspace"] is False and rnd["userspace"]["userspace"] is True
    for key in ("full_seconds_median", "filtered_seconds_median", "userspace_seconds_median",
                "ratio_filtered_full_median"):
        assert d[key] is not None and d[key] > 0, key
