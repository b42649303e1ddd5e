# SPDX-License-Identifier: GPL-2.0-or-later
"""Receive buffer overruns (ENOBUFS) of an NfLog with a tiny buffer: counted
and warned about once by default, raised as Overrun with
``on_overrun="raise"``, silenced with ``no_enobufs=True``; the loop keeps
going after each."""
from __future__ import annotations

import errno
import warnings
from typing import List

import pytest

from nfbind import LogPacket, NetlinkError, NfLog, Overrun, OverrunWarning

from helpers.nflog import collect, drain_all, log_proc, nflog, send, udp_data

pytestmark = pytest.mark.integration


# -- receive buffer overruns ----------------------------------------------------------------

BURST = 2000
SIZE = 1000
OPORT = 6100


def _overrun_setup(ns, group: int, **kw) -> NfLog:
    nflog(ns, "INPUT", OPORT, group)
    log = NfLog(group, netns=ns.name, rcvbuf=4096, **kw)
    # SO_RCVBUFFORCE ignores rmem_max; the kernel doubles the request: a few
    # 1 kB log messages fill it
    assert log.rcvbuf <= 16384
    return log


def _burst(ns, tag: bytes) -> None:
    send(ns, [tag + b"x" * (SIZE - len(tag))] * BURST, ("127.0.0.1", OPORT))


def _after(ns, log: NfLog) -> List[LogPacket]:
    """A packet sent after the overrun still arrives."""
    send(ns, [b"after"], ("127.0.0.1", OPORT))
    return collect(log, 1, keep=lambda p: udp_data(p) == b"after")


def test_overrun_counted_and_warned_once(ns):
    log = _overrun_setup(ns, 5)
    got: List[LogPacket] = []
    try:
        with pytest.warns(OverrunWarning) as rec:
            _burst(ns, b"A")
            drain_all(log, got.append)
            first = log.stats.overruns
            _burst(ns, b"B")
            drain_all(log, got.append)
        assert first >= 1
        assert log.stats.overruns > first, "the second burst was not counted"
        warned = [w for w in rec if issubclass(w.category, OverrunWarning)]
        assert len(warned) == 1, [str(w.message) for w in warned]
        assert "ENOBUFS" in str(warned[0].message) and "NfLog(5)" in str(warned[0].message)
        assert 0 < len(got) < 2 * BURST  # the kernel dropped the rest
        assert {udp_data(p)[:1] for p in got} == {b"A", b"B"}
        assert all(p.payload_len == 28 + SIZE for p in got)
        assert len(_after(ns, log)) == 1  # the loop keeps going
        assert log.stats.packets == len(got) + 1
    finally:
        log.close()
    assert log.stats.overruns > first  # kept after close


def test_overrun_raised(ns):
    log = _overrun_setup(ns, 6, on_overrun="raise")
    got: List[LogPacket] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)  # raise mode never warns
            _burst(ns, b"A")
            with pytest.raises(Overrun) as ei:
                log.run(got.append, timeout=5)
            e = ei.value
            assert isinstance(e, NetlinkError) and e.errno == errno.ENOBUFS
            assert e.count == log.stats.overruns >= 1
            assert "NfLog(6)" in str(e)
            # what is left in the socket is still delivered
            drain_all(log, got.append)
            _burst(ns, b"B")
            with pytest.raises(Overrun):
                for _ in range(200):  # bounded: the first read reports it
                    log.drain(got.append)
            drain_all(log, got.append)
        assert log.stats.overruns >= 2
        assert 0 < len(got) < 2 * BURST
        assert len(_after(ns, log)) == 1
    finally:
        log.close()


def test_no_enobufs_silences_the_report(ns):
    log = _overrun_setup(ns, 7, on_overrun="raise", no_enobufs=True)
    got: List[LogPacket] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)
            _burst(ns, b"A")
            drain_all(log, got.append)
        assert log.stats.overruns == 0
        assert 0 < len(got) < BURST  # the kernel still dropped, it just did not say
        assert len(_after(ns, log)) == 1
    finally:
        log.close()


def test_smallest_buffer_binds_many_groups(ns):
    """Binding several groups at once asks the kernel six things per group,
    each answered: with the smallest receive buffer those answers did not
    fit and the bind timed out (ETIMEDOUT for groups [0, 1]).  They are now
    asked in turns whose answers fit; every group is bound as asked and
    logs."""
    groups = list(range(20, 28))
    for i, g in enumerate(groups):
        nflog(ns, "INPUT", OPORT + 10 + i, g)
    with NfLog(groups, netns=ns.name, rcvbuf=4096, qthresh=1, timeout=0) as log:
        assert log.rcvbuf <= 16384
        rows = log_proc(ns)
        assert all(g in rows for g in groups), rows
        for i in range(len(groups)):
            send(ns, [b"group%d" % i], ("127.0.0.1", OPORT + 10 + i))
            got = collect(log, 1, keep=lambda p: udp_data(p) == b"group%d" % i)
            assert len(got) == 1 and got[0].group == groups[i], (i, got)
    assert not set(groups) & set(log_proc(ns)), "a group stayed bound after close()"
