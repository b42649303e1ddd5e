# SPDX-License-Identifier: GPL-2.0-or-later
"""``async with`` on NfQueue, NfLog, EventStream and Conntrack, against the
real kernel in a throw-away namespace: the block hands out the object, its
``async for`` works inside, and leaving the block (normally, by an
exception, by a cancellation) closes it, settling what an NfQueue holds."""
from __future__ import annotations

import asyncio
import socket

import pytest

from nfbind import ClosedError, Conntrack, CtEvent, NfLog, NfQueue, Verdict

from helpers.conntrack import ct_ns
from helpers.nflog import nflog
from helpers.packets import recv_all

pytestmark = pytest.mark.integration

PORT = 5611
QNUM = 11
GROUP = 12


def _udp(ns, port: int = PORT):
    r = ns.socket()
    r.bind(("127.0.0.1", port))
    s = ns.socket()
    s.bind(("127.0.0.1", 0))
    return r, s


def test_nfqueue_async_with_async_for(ns):
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-num", str(QNUM))
    r, s = _udp(ns)
    try:
        async def main():
            async with NfQueue(QNUM, netns=ns.name, default_verdict=Verdict.DROP) as q:
                assert not q.closed
                for i in range(6):
                    s.sendto(b"m%d" % i, ("127.0.0.1", PORT))
                seen = []
                async for pkt in q:
                    seen.append(pkt.payload[28:])
                    if len(seen) <= 4:
                        pkt.accept()
                    # the last two keep no verdict: the block's end gives
                    # them default_verdict (DROP)
                    if len(seen) == 6:
                        break
            return q, seen

        q, seen = asyncio.run(asyncio.wait_for(main(), 10))
        assert q.closed
        assert seen == [b"m%d" % i for i in range(6)]
        assert sorted(recv_all(r, 0.3)) == [b"m0", b"m1", b"m2", b"m3"]
        assert q.stats.verdicts[Verdict.DROP] == 2
        # the queue is unbound: nobody listens on it any more
        assert QNUM not in ns.queue_proc()
    finally:
        r.close()
        s.close()


def test_nfqueue_async_with_closes_on_exception_and_cancel(ns):
    async def boom():
        async with NfQueue(QNUM, netns=ns.name) as q:
            raise LookupError("inside")

    holder = {}

    async def cancelled():
        async with NfQueue(QNUM, netns=ns.name) as q:
            holder["q"] = q
            async for _ in q:     # waits: nothing is queued
                pass

    async def main():
        with pytest.raises(LookupError, match="inside"):
            await boom()
        t = asyncio.ensure_future(cancelled())
        await asyncio.sleep(0.1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert holder["q"].closed
        # the queue number is free again
        async with NfQueue(QNUM, netns=ns.name) as q2:
            assert QNUM in ns.queue_proc()
        assert q2.closed

    asyncio.run(asyncio.wait_for(main(), 10))


def test_async_with_on_closed_objects_raises(ns):
    q = NfQueue(QNUM, netns=ns.name)
    q.close()
    log = NfLog(GROUP, netns=ns.name)
    log.close()
    ct = Conntrack(netns=ns.name)
    ct.close()

    async def main():
        for obj in (q, log, ct):
            with pytest.raises(ClosedError):
                async with obj:
                    pass

    asyncio.run(main())


def test_nflog_async_with(ns):
    nflog(ns, "OUTPUT", PORT, GROUP, "--nflog-prefix", "aw")
    r, s = _udp(ns)
    try:
        async def main():
            async with NfLog(GROUP, netns=ns.name, qthresh=1) as log:
                s.sendto(b"logged", ("127.0.0.1", PORT))
                async for pkt in log:
                    return log, pkt.prefix, pkt.payload[28:]
            raise AssertionError("the loop ended without a packet")

        log, prefix, data = asyncio.run(asyncio.wait_for(main(), 10))
        assert (prefix, data) == ("aw", b"logged")
        assert log.closed
    finally:
        r.close()
        s.close()


def test_conntrack_and_event_stream_async_with(ns):
    ct_ns(ns, v6=False)
    r, s = _udp(ns)
    try:
        async def main():
            async with Conntrack(netns=ns.name) as ct:
                async with ct.events(CtEvent.NEW) as stream:
                    s.sendto(b"x", ("127.0.0.1", PORT))
                    async for ev in stream:
                        f = ev.flow
                        if f.orig.dport == PORT:
                            break
                assert stream.closed
                # the table works inside the block, with the same object
                flows = [fl for fl in ct.dump() if fl.orig.dport == PORT]
                assert len(flows) == 1
                assert flows[0].orig.sport == s.getsockname()[1]
            return ct, stream

        ct, stream = asyncio.run(asyncio.wait_for(main(), 10))
        assert ct.closed and stream.closed
    finally:
        r.close()
        s.close()
