# SPDX-License-Identifier: GPL-2.0-or-later
"""Expectation events (``ct.expect_events()``) and expectation statistics
(``ct.expect_stats()``) against real expectations: the FTP helper behind
SNAT expects the data connection of a PORT command, the data connection
uses the expectation, ``create_expect``/``flush_expect`` make and remove
others.  Cross-checked with ``conntrack -E expect`` (run beside the stream)
and ``conntrack -S expect``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import socket
import subprocess
import time
from typing import Dict, List

import pytest

from nfbind.conntrack import (
    Conntrack,
    EventStream,
    ExpectEvent,
    Expectation,
    ExpectStats,
    Tuple,
)
from nfbind.enums import CtEvent, CtStatus

from helpers.ctlab import (
    CLIENT,
    CLIENT_NAT,
    SERVER,
    ftp_rules,
    ftp_session,
    link,
    port_command,
)

pytestmark = pytest.mark.integration


def _tool_stats(ns) -> List[Dict[str, int]]:
    """``conntrack -S expect``, one dict per CPU."""
    rows = []
    for line in ns.run("conntrack", "-S", "expect").splitlines():
        d = dict(re.findall(r"(\w+)=(\d+)", line))
        if "cpu" in d:
            rows.append({k: int(v) for k, v in d.items()})
    return rows


def _mine(stats: List[ExpectStats]) -> List[Dict[str, int]]:
    return [{"cpu": s.cpu, "expect_new": s.new, "expect_create": s.create,
             "expect_delete": s.delete} for s in stats]


def ipaddr(text: str) -> "ipaddress.IPv4Address | ipaddress.IPv6Address":
    return ipaddress.ip_address(text)


def _collect(ev: EventStream, want: int, limit: float = 5.0) -> List[ExpectEvent]:
    got: List[ExpectEvent] = []
    deadline = time.monotonic() + limit
    while len(got) < want and time.monotonic() < deadline:
        ev.run(got.append, timeout=0.2)
    return got


def _tool_line(e: ExpectEvent) -> str:
    """How ``conntrack -E expect`` prints the expectation's tuples."""
    x = e.expectation
    return ("proto=%d src=%s dst=%s sport=%d dport=%d mask-src=%s mask-dst=%s sport=%d "
            "dport=%d master-src=%s master-dst=%s sport=%d dport=%d" % (
                int(x.expected.proto), x.expected.src, x.expected.dst, x.expected.sport,
                x.expected.dport, x.mask.src, x.mask.dst, x.mask.sport, x.mask.dport,
                x.master.src, x.master.dst, x.master.sport, x.master.dport))


def test_expectation_events_and_stats_of_an_ftp_data_connection(ns, more_ns):
    a, b = ns, more_ns()
    link(a, b, "x")
    ftp_rules(a, "x")
    keep: List[socket.socket] = []
    tool = a.popen("conntrack", "-E", "expect", stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
    try:
        with Conntrack(netns=a.name) as ct, ct.expect_events() as ev:
            assert ev.types == CtEvent.NEW | CtEvent.DESTROY
            before = ct.expect_stats()
            assert _mine(before) == _tool_stats(a)
            assert [s.cpu for s in before] == sorted(s.cpu for s in before)
            lab = ftp_session(a, b, keep)
            # the client waits for the data connection on CLIENT:10000
            data_srv = a.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(data_srv)
            data_srv.bind((CLIENT, 10000))
            data_srv.listen()
            data_srv.settimeout(5)
            port_command(lab, 10000)
            (new,) = _collect(ev, 1)
            assert new.type is CtEvent.NEW
            x = new.expectation
            assert isinstance(x, Expectation) and x.helper == "ftp"
            assert x.master.dport == 21 and x.master.src == ipaddr(CLIENT)
            # the peer connects to the translated address: the expectation's
            assert (x.expected.src, x.expected.dst, x.expected.dport) == (
                ipaddr(SERVER), ipaddr(CLIENT_NAT), 10000)
            (dumped,) = ct.dump_expect()
            assert dataclasses.replace(dumped, timeout=None) == dataclasses.replace(x, timeout=None)

            # the server opens the data connection: it matches the expectation,
            # which is used up (DESTROY) and counted as expect_new
            data = b.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(data)
            data.settimeout(5)
            data.connect((CLIENT_NAT, 10000))
            conn, peer = data_srv.accept()
            keep.append(conn)
            data.sendall(b"file")
            assert conn.recv(10) == b"file"
            (gone,) = _collect(ev, 1)
            assert gone.type is CtEvent.DESTROY and gone.expectation.id == x.id
            assert list(ct.dump_expect()) == []
            (child,) = [f for f in ct.dump() if f.orig.dport == 10000]
            assert CtStatus.EXPECTED in child.status and child.master == x.master
            after = ct.expect_stats()
            assert _mine(after) == _tool_stats(a)
            total = {k: sum(getattr(s, k) for s in after) - sum(getattr(s, k) for s in before)
                     for k in ("new", "create", "delete")}
            assert total == {"new": 1, "create": 1, "delete": 1}
            assert ev.stats.by_type[CtEvent.NEW] == 1 and ev.stats.by_type[CtEvent.DESTROY] == 1
            assert ev.stats.events == 2 and ev.stats.overruns == 0
        time.sleep(0.2)
    finally:
        tool.terminate()
        out, _ = tool.communicate(timeout=10)
        for s in keep:
            s.close()
    lines = [l for l in out.splitlines() if l.strip()]
    assert [l.split()[0] for l in lines] == ["[NEW]", "[DESTROY]"]
    assert all(_tool_line(new) in l for l in lines), (lines, _tool_line(new))


def test_expect_events_from_create_and_flush_async_and_resync(ns, more_ns):
    a, b = ns, more_ns()
    link(a, b, "y")
    ftp_rules(a, "y")
    keep: List[socket.socket] = []
    try:
        # subscribed before the master connection exists: with the default
        # nf_conntrack_events=2 a connection made while nobody listens
        # carries no events, its expectations' neither
        with Conntrack(netns=a.name) as ct, ct.expect_events(CtEvent.NEW) as only_new, \
                ct.expect_events() as ev:
            lab = ftp_session(a, b, keep)
            (master,) = [f for f in ct.dump() if f.orig.dport == 21]
            exp = Expectation(
                master=master.orig,
                expected=Tuple(SERVER, CLIENT_NAT, "tcp", 0, 20000),
                mask=Tuple("255.255.255.255", "255.255.255.255", "tcp", 0, 0xFFFF),
                timeout=60)

            async def take(n: int) -> List[ExpectEvent]:
                got: List[ExpectEvent] = []
                async for e in ev:
                    got.append(e)
                    if len(got) == n:
                        break
                return got

            ct.create_expect(exp)
            (made,) = asyncio.run(asyncio.wait_for(take(1), 5))
            assert made.type is CtEvent.NEW and made.expectation.expected.dport == 20000
            assert made.expectation.helper == "ftp"
            # the FTP helper allows one expectation per control connection:
            # the PORT command's replaces it
            port_command(lab, 10001)
            got = asyncio.run(asyncio.wait_for(take(2), 5))
            assert sorted((e.type, e.expectation.expected.dport) for e in got) == [
                (CtEvent.NEW, 10001), (CtEvent.DESTROY, 20000)]
            # resync() of an expectation stream returns the expectation table
            assert [e.expected.dport for e in ev.resync()] == [10001]
            ct.flush_expect()
            (gone,) = _collect(ev, 1)
            assert gone.type is CtEvent.DESTROY and gone.expectation.expected.dport == 10001
            # a stream of NEW only got the two NEW events, none of the DESTROYs
            news = _collect(only_new, 3, limit=1.0)
            assert [(e.type, e.expectation.expected.dport) for e in news] == [
                (CtEvent.NEW, 20000), (CtEvent.NEW, 10001)]
    finally:
        for s in keep:
            s.close()


def test_expect_events_arguments(ns):
    with Conntrack(netns=ns.name) as ct:
        with pytest.raises(ValueError, match="NEW and DESTROY events only"):
            ct.expect_events(CtEvent.UPDATE)
        with pytest.raises(ValueError, match="types"):
            ct.expect_events(0)
        with pytest.raises(ValueError, match="on_overrun"):
            ct.expect_events(on_overrun="drop")
        with ct.expect_events() as ev:
            assert "expectations" in repr(ev) and not ev.closed
        assert ev.closed
