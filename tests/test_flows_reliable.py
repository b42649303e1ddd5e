# SPDX-License-Identifier: GPL-2.0-or-later
"""The flow recorder and conntrack's reliable event mode.

``FlowRecorder`` asks for reliable DESTROY events whenever the event stream
offers them: a burst of ended flows while the recorder reads nothing, into
a 64 KiB buffer, loses no flow.  With reliable mode taken away (as on an
nfbind without it) the same burst loses flows, and the recorder counts the
losses (``stats.overruns``) and ``nfbind ct events --flows`` warns about
them on stderr.  Bounded in count and time throughout.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from typing import List, Sequence, Set

import pytest

from nfbind._channel import OverrunWarning
from nfbind.conntrack import Conntrack, Flow, Tuple
from nfbind.flows import FlowOutput, FlowRecord, FlowRecorder
from nfbind.flows import recorder as recorder_mod

from helpers.conntrack import ct_ns
from helpers.procs import child_env

pytestmark = pytest.mark.integration

N = 20000
SMALL = 64 * 1024


class Collect(FlowOutput):
    def __init__(self) -> None:
        self.records: List[FlowRecord] = []

    def write(self, records: Sequence[FlowRecord]) -> None:
        self.records += records

    def close(self) -> None:
        pass


def burst(ns, n: int, base: int = 0x0A000000) -> Set[ipaddress.IPv4Address]:
    """``n`` flows created, then ended by one flush: ``n`` DESTROY events at once."""
    srcs = set()
    deadline = time.monotonic() + 120
    with Conntrack(netns=ns.name) as ct:
        for i in range(n):
            src = ipaddress.IPv4Address(base + i)
            ct.create(Flow(Tuple(src, "10.255.0.1", "udp", 1000, 53), timeout=600))
            srcs.add(src)
            assert time.monotonic() < deadline
        ct.flush()
    return srcs


def test_the_recorder_runs_in_reliable_mode_and_loses_no_flow(ns):
    ct_ns(ns, v6=False)
    out = Collect()
    with FlowRecorder([out], netns=ns.name, rcvbuf=SMALL) as rec:
        assert rec.stats.reliable and rec._stream is not None and rec._stream.reliable
        srcs = burst(ns, N)          # while the recorder reads nothing
        time.sleep(0.3)
        got = rec.run(count=N, timeout=5.0)
        assert got == N
        s = rec.stats
        assert (s.flows, s.events, s.overruns, s.reliable) == (N, N, 0, True)
    assert {r.orig.src for r in out.records} == srcs and len(out.records) == N


def test_without_reliable_mode_the_recorder_counts_its_losses(ns, monkeypatch):
    ct_ns(ns, v6=False)
    monkeypatch.setattr(recorder_mod, "_reliable_supported", lambda: False)
    out = Collect()
    with FlowRecorder([out], netns=ns.name, rcvbuf=SMALL) as rec:
        assert not rec.stats.reliable
        srcs = burst(ns, N)
        with pytest.warns(OverrunWarning):
            rec.run(count=N, timeout=1.0)
        s = rec.stats
        assert 0 < s.flows < N // 2, s
        assert s.overruns >= 1 and not s.reliable
    assert rec.stats.overruns == s.overruns, "the losses still read after close()"
    assert {r.orig.src for r in out.records} < srcs


#: nfbind ct events --flows, optionally without reliable mode (as an nfbind
#: without it would run), its event buffer 64 KiB
CLI = """\
import sys
import nfbind.flows.recorder as r
if sys.argv[1] == "plain":
    r._reliable_supported = lambda: False
r.FlowRecorder.__init__.__kwdefaults__["rcvbuf"] = %d
from nfbind.cli import main
sys.exit(main(["ct", "events", "--flows"]))
""" % SMALL


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


@pytest.mark.parametrize("mode", ["reliable", "plain"])
def test_cli_flows_under_a_burst(ns, tmp_path, mode):
    ct_ns(ns, v6=False)
    n = 10000
    out_path = str(tmp_path / "out.txt")
    with open(out_path, "wb") as out, open(str(tmp_path / "err.txt"), "wb") as err:
        p = ns.popen(sys.executable, "-c", CLI, mode, stdout=out, stderr=err,
                     env=child_env())
    try:
        # recording once a probe flow's record appears
        deadline = time.monotonic() + 15
        probe = Tuple("10.254.0.1", "10.254.0.2", "udp", 7, 9)
        with Conntrack(netns=ns.name) as ct:
            while _lines(out_path) == 0:
                assert time.monotonic() < deadline and p.poll() is None
                ct.create(Flow(probe, timeout=5))
                ct.delete(probe)
                time.sleep(0.3)
        base = _lines(out_path)
        burst(ns, n)
        # read until the records stop coming (bounded)
        last, t_last = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _lines(out_path)
            if now != last:
                last, t_last = now, time.monotonic()
            elif time.monotonic() - t_last > 2.0:
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert p.returncode == 0
    err_text = open(str(tmp_path / "err.txt"), encoding="utf-8").read()
    records = _lines(out_path) - base
    if mode == "reliable":
        assert records == n, (records, err_text)
        assert "dropped DESTROY events" not in err_text and " 0 overruns" in err_text
    else:
        assert 0 < records < n, records
        assert "warning: the kernel dropped DESTROY events" in err_text, err_text
        assert "at least as many flows got no record" in err_text
    assert os.path.getsize(out_path) > 0
