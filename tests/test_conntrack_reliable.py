# SPDX-License-Identifier: GPL-2.0-or-later
"""``ct.events(reliable=True)``: conntrackd's reliable event mode.

20,000 flows are destroyed at once (one flush) while the consumer reads
nothing, its receive buffer 64 KiB.  In reliable mode the kernel keeps
every DESTROY event it could not deliver (and the ended flows with them:
``ct.count()`` still counts them) and sends them again until the socket
takes them: every flow's DESTROY arrives, exactly once.  Without it the
same burst loses most of them, and the stream says so (``stats.overruns``,
``needs_resync``, an OverrunWarning).  Every wait is bounded in time.
"""
from __future__ import annotations

import ipaddress
import time
from typing import List, Set

import pytest

from nfbind._channel import OverrunWarning
from nfbind.conntrack import Conntrack, Event, EventStream, Flow, Tuple
from nfbind.enums import CtEvent

pytestmark = pytest.mark.integration

N = 20000
#: bounds: filling the table, and receiving the held events again
FILL_LIMIT = 120.0
DRAIN_LIMIT = 90.0


def _fill(ct: Conntrack, n: int) -> Set[ipaddress.IPv4Address]:
    """``n`` UDP flows, told apart by their source address."""
    srcs = set()
    deadline = time.monotonic() + FILL_LIMIT
    for i in range(n):
        src = ipaddress.IPv4Address(0x0A000000 + i)
        ct.create(Flow(Tuple(src, "10.255.0.1", "udp", 1000, 53), timeout=600))
        srcs.add(src)
        assert time.monotonic() < deadline, "filling the table took too long"
    return srcs


def _drain(ev: EventStream, want: int, idle: float) -> List[Event]:
    """Read until ``want`` events came, or nothing came for ``idle`` seconds
    (at most DRAIN_LIMIT in all)."""
    got: List[Event] = []
    start = last = time.monotonic()
    while len(got) < want and time.monotonic() - last < idle:
        assert time.monotonic() - start < DRAIN_LIMIT, "events still coming after the limit"
        if ev.drain(got.append):
            last = time.monotonic()
        else:
            time.sleep(0.002)
    return got


def test_reliable_mode_delivers_every_destroy(ns):
    # subscribed before the flows exist: they then carry events
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.DESTROY, rcvbuf=64 * 1024, reliable=True) as ev:
        assert ev.reliable
        srcs = _fill(ct, N)
        assert ct.count() == N
        ct.flush()                  # 20,000 DESTROY events; nobody reads
        time.sleep(0.5)
        # what reliable mode costs: the kernel holds the ended flows it has
        # not told about yet (they are no longer in the table, still counted)
        held = ct.count()
        assert held > N // 2, held
        assert list(ct.dump()) == []
        got = _drain(ev, N, idle=5.0)
        seen = [e.flow.orig.src for e in got]
        assert all(e.type is CtEvent.DESTROY for e in got)
        assert len(seen) == N and set(seen) == srcs      # every one, each once
        assert ev.stats.overruns == 0 and not ev.needs_resync
        assert ev.stats.events == N
        deadline = time.monotonic() + 10
        while ct.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ct.count() == 0      # delivered: the kernel let them go


def test_without_reliable_the_burst_is_lost_and_counted(ns):
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.DESTROY, rcvbuf=64 * 1024) as ev:
        assert not ev.reliable
        srcs = _fill(ct, N)
        ct.flush()
        assert ct.count() == 0      # nothing held back
        with pytest.warns(OverrunWarning, match="ENOBUFS"):
            got = _drain(ev, N, idle=1.0)
        assert 0 < len(got) < N // 2, len(got)
        assert {e.flow.orig.src for e in got} < srcs
        assert ev.stats.overruns >= 1 and ev.needs_resync
        assert ev.resync() == [] and not ev.needs_resync


def test_reliable_argument(ns):
    with pytest.raises(TypeError, match="reliable"):
        EventStream(netns=ns.name, reliable=1)  # type: ignore[arg-type]
    with EventStream(CtEvent.DESTROY, netns=ns.name, reliable=True) as ev:
        assert ev.reliable
        import socket
        from nfbind._core import lib

        s = socket.socket(fileno=ev.fileno())
        try:
            assert s.getsockopt(lib.SOL_NETLINK, lib.NETLINK_BROADCAST_ERROR) == 1
            assert s.getsockopt(lib.SOL_NETLINK, lib.NETLINK_NO_ENOBUFS) == 1
        finally:
            s.detach()
