# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack events against the real kernel, cross-checked with ``conntrack
-E`` running alongside: NEW/UPDATE/DESTROY, the kernel-side (BPF) and
userspace filters, iteration, ``async for``, ``run()``/``stop()``, handler
errors, and overruns during a burst (counted, raised, resynchronised)."""
from __future__ import annotations

import asyncio
import errno
import os
import select
import subprocess
import threading
import time
import warnings
from typing import List

import pytest

from nfbind import Overrun, OverrunWarning
from nfbind.conntrack import Conntrack, Event, EventFilter, EventStream, Flow, Tuple
from nfbind.enums import CtEvent, CtStatus, IPProto
from nfbind.errors import ClosedError

from helpers.conntrack import compare, ct_ns, flow_key, parse_line, row_key

pytestmark = pytest.mark.integration


class EventLog:
    """``conntrack -E -o extended,id`` running in the namespace."""

    def __init__(self, ns, ct: Conntrack) -> None:
        # stdbuf: conntrack's stdout is block-buffered into a pipe
        self.p = ns.popen("stdbuf", "-oL", "conntrack", "-E", "-o", "extended,id",
                          stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL)
        self.lines: List[str] = []
        self._buf = b""
        # wait until it listens: a probe flow's events show up
        probe = Tuple("192.0.2.1", "192.0.2.2", "udp", 9, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ct.create(Flow(probe, timeout=5))
            ct.delete(probe)
            if self._saw_probe(0.2):
                break
        else:
            raise AssertionError("conntrack -E printed nothing")
        self.read(0.3)
        self.lines.clear()

    def _lines(self, quiet: float, limit: float = 10.0) -> List[str]:
        """Raw lines until the pipe stayed quiet for ``quiet`` seconds (os.read:
        a buffered reader would hide lines from select)."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        out: List[str] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], quiet)
            if not r:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
            *full, self._buf = self._buf.split(b"\n")
            out += [l.decode() for l in full]
        return out

    def _saw_probe(self, quiet: float) -> bool:
        return any("192.0.2.1" in l for l in self._lines(quiet))

    def read(self, quiet: float = 0.5) -> List[str]:
        """The event lines so far (probe events left out)."""
        self.lines += [l for l in self._lines(quiet)
                       if l.strip().startswith("[") and "192.0.2.1" not in l]
        return self.lines


def collect(stream: EventStream, count: int, timeout: float = 5.0) -> List[Event]:
    """Up to ``count`` events by iteration, bounded in time."""
    got: List[Event] = []
    timer = threading.Timer(timeout, stream.stop)
    timer.start()
    try:
        for ev in stream:
            got.append(ev)
            if len(got) >= count:
                break
    finally:
        timer.cancel()
    return got


def test_events_match_conntrack_e(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct:
        log = EventLog(ns, ct)
        with ct.events(CtEvent.NEW | CtEvent.UPDATE | CtEvent.DESTROY) as stream:
            t = Tuple("10.0.0.1", "10.0.0.2", "udp", 1111, 53)
            ct.create(Flow(t, timeout=30))
            ct.update(t, mark=7)
            ct.delete(t)
            tcp = Tuple("10.0.0.1", "10.0.0.2", "tcp", 2222, 80)
            ct.create(Flow(tcp, timeout=30, status=CtStatus.SEEN_REPLY))
            ct.update(tcp, timeout=100)
            ct.flush()
            events = collect(stream, 6)
        rows = [parse_line(l) for l in log.read()]
    assert [e.type for e in events] == [CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY,
                                        CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY]
    assert [r["event"] for r in rows] == [e.type.name for e in events]
    for e, r in zip(events, rows):
        assert flow_key(e.flow) == row_key(r)
        compare(e.flow, r)
    assert events[1].flow.mark == 7 and events[0].flow.mark == 0
    destroyed = events[2].flow
    assert destroyed.counters is not None and destroyed.counters.packets == 0
    assert destroyed.timestamps is not None and destroyed.timestamps.stop is not None
    assert stream.stats.events == 6 and stream.stats.delivered == 6
    assert stream.closed
    # the channels' counters, read from what the stream kept at close
    stats = stream.stats
    assert list(stats.as_dict()) == ["events", "delivered", "filtered", "overruns", "recv_calls"]
    assert stats.packets == stats.events == 6 and stats.filtered == 0 and stats.overruns == 0
    assert stats.recv_calls >= 1 and stats.handler_errors == 0
    assert repr(stats).startswith("EventStats(events=6, delivered=6")


def test_drain_returns_the_events_it_dispatched(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW) as every, \
            ct.events(CtEvent.NEW, EventFilter(dport=range(100, 200))) as none_pass:
        for port in (1001, 1002, 1003):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", port, 53), timeout=30))
        got: List[Event] = []
        seen: List[Event] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            select.select([every], [], [], 0.5)
            before = len(got)
            assert every.drain(got.append) == len(got) - before
        assert len(got) == 3
        assert sorted(e.flow.orig.sport for e in got) == [1001, 1002, 1003]
        # a stream whose filter passes none of them dispatches nothing and says so
        deadline = time.monotonic() + 10
        while none_pass.stats.events < 3 and time.monotonic() < deadline:
            select.select([none_pass], [], [], 0.5)
            assert none_pass.drain(seen.append) == 0
        assert none_pass.stats.events == 3 and seen == []


def test_events_of_real_traffic_and_type_selection(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.DESTROY) as only_destroy, \
            ct.events() as everything:
        s = ns.socket()
        r = ns.socket()
        try:
            r.bind(("127.0.0.1", 5000))
            s.sendto(b"a", ("127.0.0.1", 5000))
            r.settimeout(5)
            data, peer = r.recvfrom(10)
            r.sendto(b"b", peer)  # the reply: an UPDATE (SEEN_REPLY)
            s.recv(10)
        finally:
            s.close()
            r.close()
        ct.flush()
        evs = collect(everything, 3)
        assert [e.type for e in evs] == [CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY]
        assert CtStatus.SEEN_REPLY in evs[1].flow.status
        assert evs[0].flow.orig.dport == 5000 and evs[0].flow.proto == IPProto.UDP
        (d,) = collect(only_destroy, 1)
        assert d.type == CtEvent.DESTROY and d.flow.id == evs[0].flow.id
        assert only_destroy.drain(lambda e: None) == 0  # nothing else was subscribed


def test_kernel_filter_and_userspace_ports(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct:
        flt = EventFilter(proto="udp", dst=["10.1.0.0/16"], mark=0x10, mark_mask=0xF0)
        mixed = EventFilter(proto="udp", dst=["10.1.0.0/16", "fd00::/8"], mark=0x10,
                            mark_mask=0xF0)
        assert flt.kernel_side and mixed.kernel_side
        with ct.events(CtEvent.NEW, flt) as kern, ct.events(CtEvent.NEW, mixed) as mix, \
                ct.events(CtEvent.NEW, EventFilter(dport=range(100, 200))) as ports, \
                ct.events(CtEvent.NEW, EventFilter(src="10.9.9.9")) as v4only, \
                ct.events(CtEvent.NEW, EventFilter(dst=["fe00::/8", "fd00::/8"])) as two6:
            make = [
                (Tuple("10.0.0.1", "10.1.2.3", "udp", 1, 150), 0x11),   # all of kern's
                (Tuple("10.0.0.1", "10.1.2.3", "tcp", 1, 150), 0x11),   # not udp
                (Tuple("10.0.0.1", "10.2.0.1", "udp", 1, 150), 0x10),   # 10.2 is not in 10.1/16
                (Tuple("10.0.0.1", "10.1.0.1", "udp", 1, 250), 0x21),   # mark 0x20 & 0xF0
                (Tuple("10.0.0.1", "10.1.0.2", "udp", 1, 99), 0x1F),    # kern's; port 99
                (Tuple("fd00::1", "fd00::2", "udp", 1, 120), 0x10),     # kern's (v6)
            ]
            for t, mark in make:
                ct.create(Flow(t, timeout=30, mark=mark))
            k = collect(kern, 2, timeout=2)
            m = collect(mix, 3, timeout=2)
            p = collect(ports, 4, timeout=2)
            v = collect(v4only, 1, timeout=0.5)
            assert sorted((str(e.flow.orig.dst), e.flow.orig.dport) for e in k) == [
                ("10.1.0.2", 99), ("10.1.2.3", 150)]
            # the BPF program dropped the rest: nothing reached userspace to filter
            assert kern.stats.filtered == 0 and kern.stats.events == 2
            assert sorted((str(e.flow.orig.dst), e.flow.orig.dport) for e in m) == [
                ("10.1.0.2", 99), ("10.1.2.3", 150), ("fd00::2", 120)]
            # proto and mark in the kernel, the mixed-version addresses in userspace
            assert mix.stats.events == 4 and mix.stats.filtered == 1
            assert sorted(e.flow.orig.dport for e in p) == [120, 150, 150, 150]
            assert ports.stats.filtered == 2  # ports are matched in userspace
            assert v == [] and v4only.stats.delivered == 0
            # two IPv6 networks: matched in userspace (the library's BPF misses the 2nd)
            (e6,) = collect(two6, 1, timeout=1)
            assert str(e6.flow.orig.dst) == "fd00::2" and two6.stats.filtered == 5


def test_async_for_and_run_stop(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW) as stream:

        async def main() -> List[int]:
            ports = []

            async def consume() -> None:
                async for ev in stream:
                    ports.append(ev.flow.orig.sport)
                    if len(ports) == 3:
                        break

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.05)
            for p in (1, 2, 3):
                ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", p, 9), timeout=30))
                await asyncio.sleep(0)
            await asyncio.wait_for(task, 5)
            return ports

        assert asyncio.run(main()) == [1, 2, 3]

        got: List[Event] = []

        def handler(ev: Event) -> None:
            got.append(ev)
            if len(got) == 2:
                stream.stop()

        for p in (4, 5, 6):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", p, 9), timeout=30))
        t0 = time.monotonic()
        stream.run(handler, timeout=5)
        assert [e.flow.orig.sport for e in got] == [4, 5]
        stream.run(handler, timeout=0.5)  # the third; then idle for 0.5 s
        assert [e.flow.orig.sport for e in got] == [4, 5, 6]
        assert time.monotonic() - t0 < 5
        # stop() from another thread ends a blocked run()
        threading.Timer(0.2, stream.stop).start()
        t0 = time.monotonic()
        stream.run(handler)
        assert time.monotonic() - t0 < 3


def test_a_handler_error_leaves_the_rest_for_the_next_loop(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW) as stream:
        for p in (1, 2, 3):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", p, 9), timeout=30))
        time.sleep(0.1)
        seen: List[int] = []

        def bad(ev: Event) -> None:
            seen.append(ev.flow.orig.sport)
            if ev.flow.orig.sport == 1:
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            stream.run(bad, timeout=1)
        assert seen == [1]
        stream.run(lambda ev: (seen.append(ev.flow.orig.sport), stream.stop()), timeout=2)
        stream.run(lambda ev: (seen.append(ev.flow.orig.sport), stream.stop()), timeout=2)
        assert seen == [1, 2, 3]


def _burst(ct: Conntrack, n: int) -> None:
    for p in range(1, n + 1):
        ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", p, 7), timeout=60))


def test_overrun_is_counted_then_resync(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW, rcvbuf=4096) as stream:
        _burst(ct, 400)
        got: List[Event] = []
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            stream.run(got.append, timeout=0.5)
        assert stream.stats.overruns >= 1
        assert stream.needs_resync
        assert len(got) < 400  # some were lost
        assert [x for x in w if issubclass(x.category, OverrunWarning)]
        flows = stream.resync()
        assert not stream.needs_resync
        assert sorted(f.orig.sport for f in flows) == list(range(1, 401))
        # later events still arrive
        ct.create(Flow(Tuple("10.0.0.9", "10.0.0.2", "udp", 1, 7), timeout=60))
        (ev,) = collect(stream, 1)
        assert str(ev.flow.orig.src) == "10.0.0.9"


def test_resync_without_a_conntrack_object(ns):
    """resync() dumps through the sockets of the Conntrack that made the
    stream, and through sockets of its own for a stream made directly or
    once that Conntrack is closed; the stream's filter applies either way."""
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct:
        _burst(ct, 5)
        with EventStream(CtEvent.NEW, EventFilter(sport=range(2, 4)), netns=ns.name) as alone:
            assert sorted(f.orig.sport for f in alone.resync()) == [2, 3]
        stream = ct.events(CtEvent.NEW)
    with stream:
        assert ct.closed
        assert sorted(f.orig.sport for f in stream.resync(family="ipv4")) == [1, 2, 3, 4, 5]
        assert stream.resync(family="ipv6") == []


def test_overrun_raises_when_asked(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.NEW, rcvbuf=4096, on_overrun="raise") as stream:
        _burst(ct, 400)
        with pytest.raises(Overrun) as ei:
            stream.run(lambda ev: None, timeout=0.5)
        assert ei.value.errno == errno.ENOBUFS and ei.value.count >= 1
        assert "rcvbuf" in str(ei.value)


def test_no_enobufs_silences_the_kernel(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.NEW, rcvbuf=4096, no_enobufs=True, on_overrun="raise") as stream:
        _burst(ct, 400)
        got: List[Event] = []
        stream.run(got.append, timeout=0.5)
        assert 0 < len(got) < 400 and stream.stats.overruns == 0


def test_stream_close_twice_and_use_after_close(ns):
    ct_ns(ns, v6=False)
    stream = EventStream(CtEvent.NEW, netns=ns.name)
    stream.close()
    stream.close()
    with pytest.raises(ClosedError):
        stream.fileno()
    with pytest.raises(ClosedError):
        stream.resync()
