# SPDX-License-Identifier: GPL-2.0-or-later
"""Loops end when they are asked to, and errors say what went wrong.

* ``close()`` ends an ``async for`` of NfQueue, NfLog and EventStream
  promptly, from another task of its event loop or from another thread; the
  event loop is left clean, so the next channel it iterates (which may get
  the very descriptor numbers the closed one had) gets its packets.
* ``drain()`` on a closed channel raises ClosedError, as ``run()`` does.
* ``Conntrack.create()`` of a flow whose status asks for bits the kernel
  refuses to set names those bits.

Each test runs in a throw-away namespace and bounds every wait.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from nfbind import ClosedError, NetlinkError, NfLog, NfQueue, Verdict
from nfbind.conntrack import Conntrack, EventStream, Flow, Tuple
from nfbind.enums import CtStatus

from helpers.conntrack import ct_ns

pytestmark = pytest.mark.integration

PORT = 7400

#: the three channel classes, opened on group/queue 40 of a namespace
OPENERS: Dict[str, Callable[[Any], Any]] = {
    "NfQueue": lambda ns: NfQueue(40, netns=ns.name),
    "NfLog": lambda ns: NfLog(40, netns=ns.name),
    "EventStream": lambda ns: EventStream(netns=ns.name),
}


def _consume(ch: Any) -> "asyncio.Future[List[Any]]":
    async def run() -> List[Any]:
        got = []
        async for item in ch:
            got.append(item)
        return got
    return asyncio.ensure_future(run())


# -- close() ends async for ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", sorted(OPENERS))
@pytest.mark.parametrize("closer", ["another task", "another thread"])
def test_close_ends_async_for_promptly(ns, cls, closer):
    ch = OPENERS[cls](ns)

    async def main() -> float:
        task = _consume(ch)
        await asyncio.sleep(0.2)  # the iteration waits on its event loop
        assert not task.done()
        t0 = time.monotonic()
        if closer == "another task":
            async def closing() -> None:
                ch.close()
            await asyncio.ensure_future(closing())
        else:
            t = threading.Thread(target=ch.close)
            t.start()
            t.join(5)
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "%s: async for did not end within 5 s of close()" % cls
        assert task.result() == []
        return time.monotonic() - t0

    try:
        took = asyncio.run(main())
    finally:
        ch.close()
    assert took < 2.0, took


def _log_rule(ns, group: int, port: int) -> None:
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(port), "-j", "NFLOG",
                "--nflog-group", str(group))


def _send(ns, port: int, payload: bytes) -> None:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(payload, ("127.0.0.1", port))
    finally:
        s.close()


def test_after_close_the_next_channel_on_the_loop_gets_its_packets(ns):
    # close() from another task releases the descriptors at once; a channel
    # opened right after gets the same numbers.  Its async for must see its
    # packets: the first iteration's clean-up must not take its readers away.
    _log_rule(ns, 41, PORT)
    first = NfLog(40, netns=ns.name)
    second = None

    async def main() -> List[bytes]:
        nonlocal second
        t1 = _consume(first)
        await asyncio.sleep(0.1)
        numbers = {first.fileno()}
        first.close()
        second = NfLog(41, netns=ns.name)  # typically the same descriptor numbers
        reused = second.fileno() in numbers
        got: List[bytes] = []

        async def take_one() -> None:
            async for pkt in second:
                got.append(pkt.payload[28:])
                return

        t2 = asyncio.ensure_future(take_one())
        await asyncio.sleep(0.1)
        done, _ = await asyncio.wait([t1], timeout=5)
        assert done and t1.result() == []
        await asyncio.sleep(0.1)  # the first iteration has cleaned up
        _send(ns, PORT, b"for the second")
        done, _ = await asyncio.wait([t2], timeout=5)
        assert done, "the second channel's async for got nothing (descriptor reused: %s)" % reused
        return got

    try:
        got = asyncio.run(main())
    finally:
        first.close()
        if second is not None:
            second.close()
    assert got == [b"for the second"]


def test_async_for_after_close_leaves_no_descriptor(ns):
    from helpers.procs import open_fds

    ch = NfLog(40, netns=ns.name)
    before = open_fds()

    async def main() -> None:
        task = _consume(ch)
        await asyncio.sleep(0.1)
        ch.close()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert open_fds() <= before - 2  # the socket and the wake-up pipe's read end at least


# -- drain() after close -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", sorted(OPENERS))
def test_drain_after_close_raises_closed_error(ns, cls):
    ch = OPENERS[cls](ns)
    ch.close()
    with pytest.raises(ClosedError, match="closed"):
        ch.drain(lambda pkt: None)
    with pytest.raises(ClosedError, match="closed"):
        ch.run(lambda pkt: None)


def test_close_from_another_thread_during_run_still_just_returns(ns):
    # run() returns after close(); the close must not surface as ClosedError
    q = NfQueue(40, netns=ns.name)
    t = threading.Timer(0.2, q.close)
    t.start()
    t0 = time.monotonic()
    try:
        q.run(lambda pkt: Verdict.ACCEPT)
    finally:
        t.join()
        q.close()
    assert time.monotonic() - t0 < 5


# -- conntrack status bits the kernel refuses ---------------------------------------------------------


def test_create_with_refused_status_bits_names_them(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct:
        for status, named in ((0xFFFFFFFF, ("EXPECTED", "DYING")),
                              (int(CtStatus.SEEN_REPLY | CtStatus.DYING), ("DYING",)),
                              (int(CtStatus.EXPECTED), ("EXPECTED",))):
            t = Tuple("10.0.0.1", "10.0.0.2", "udp", 1000 + (status & 0xFF), 2)
            with pytest.raises(NetlinkError) as ei:
                ct.create(Flow(t, timeout=60, status=status))
            text = str(ei.value)
            assert "EBUSY" in text, text
            for name in named:
                assert name in text, text
            assert "status" in text, text
        # without those bits the same flow is created
        t = Tuple("10.0.0.1", "10.0.0.2", "udp", 999, 2)
        ct.create(Flow(t, timeout=60, status=int(CtStatus.SEEN_REPLY | CtStatus.ASSURED)))
        assert CtStatus.ASSURED in ct.get(t).status
