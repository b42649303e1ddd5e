# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue(verdict_timeout=..., on_timeout=...): a packet still without a
verdict at its deadline gets ``on_timeout``, promptly, whichever loop runs
the queue (run, for, async for, a user's own poll loop with
``next_deadline()``); verdicts racing the deadline from other threads reach
the kernel exactly once.  Real packets in a throw-away namespace; the
kernel's /proc/net/netfilter/nfnetlink_queue row and the receiving socket
are the witnesses."""
from __future__ import annotations

import asyncio
import math
import queue as _queue
import random
import select
import socket
import threading
import time
from typing import Dict, List

import pytest

from nfbind import NfQueue, Verdict, VerdictError

from helpers.packets import recv_all

pytestmark = pytest.mark.integration

PORT = 5621
QNUM = 21
#: how late (after its deadline) a packet may get on_timeout
LATE = 0.05
#: <asm-generic/socket.h> (as root: past net.core.wmem_max)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _rule(ns, port: int = PORT, qnum: int = QNUM) -> None:
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(port), "-j", "NFQUEUE",
                "--queue-num", str(qnum))


@pytest.fixture
def udp(ns):
    r = ns.socket()
    r.bind(("127.0.0.1", PORT))
    s = ns.socket()
    s.bind(("127.0.0.1", 0))
    yield r, s
    r.close()
    s.close()


def _send(s: socket.socket, n: int, prefix: bytes = b"p") -> List[bytes]:
    out = [b"%s%d" % (prefix, i) for i in range(n)]
    for p in out:
        s.sendto(p, ("127.0.0.1", PORT))
    return out


def _data(pkt) -> bytes:
    return pkt.payload[28:]


def _row(ns, qnum: int = QNUM) -> Dict[str, int]:
    return ns.queue_proc()[qnum]


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("bad,exc", [
    (0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (True, TypeError), ("1", TypeError), (86400 * 365 * 100, ValueError),
])
def test_verdict_timeout_is_checked(ns, bad, exc):
    with pytest.raises(exc, match="verdict_timeout"):
        NfQueue(QNUM, netns=ns.name, verdict_timeout=bad)


@pytest.mark.parametrize("bad,exc", [
    (Verdict.QUEUE, ValueError), (99, ValueError), ("accept", TypeError), (None, TypeError),
])
def test_on_timeout_is_checked(ns, bad, exc):
    with pytest.raises(exc, match="on_timeout"):
        NfQueue(QNUM, netns=ns.name, verdict_timeout=1, on_timeout=bad)


def test_no_deadline_without_verdict_timeout(ns, udp):
    _rule(ns)
    r, s = udp
    with NfQueue(QNUM, netns=ns.name) as q:
        assert q.verdict_timeout is None
        _send(s, 2)
        held = []
        q.run(held.append, timeout=0.3)
        assert len(held) == 2 and q.next_deadline() is None
        assert q.stats.timeouts == 0 and q.stats.pending == 2
        for p in held:
            p.accept()
    assert sorted(recv_all(r, 0.3)) == [b"p0", b"p1"]


# -- the deadline, in each loop --------------------------------------------------------


def _expect_timeouts(ns, q, r, seen, fired, verdict, timeout, n):
    """Every packet in ``seen`` (time handed out) got on_timeout (``fired``:
    time it was decided) no earlier than its deadline and at most LATE
    after; the receiver and the kernel agree."""
    assert sorted(fired) == sorted(seen), (fired, seen)
    for key, t_seen in seen.items():
        late = fired[key] - (t_seen + timeout)
        # the deadline counts from the receive, a moment before the handler
        assert -0.02 <= late <= LATE, (key, late)
    assert q.stats.timeouts == n and q.stats.pending == 0
    got = sorted(recv_all(r, 0.3))
    assert got == (sorted(seen) if verdict == Verdict.ACCEPT else [])
    row = _row(ns)
    assert row["waiting"] == 0 and row["user_dropped"] == 0


@pytest.mark.parametrize("verdict", [Verdict.ACCEPT, Verdict.DROP])
@pytest.mark.parametrize("loop", ["run", "iter", "async", "user"])
def test_deadline_gives_on_timeout_promptly(ns, udp, loop, verdict):
    _rule(ns)
    r, s = udp
    timeout, n = 0.25, 4
    seen: Dict[bytes, float] = {}
    fired: Dict[bytes, float] = {}

    def decide(pkt):
        fired[_data(pkt)] = time.monotonic()
        return verdict

    def hold(pkt):
        seen[_data(pkt)] = time.monotonic()

    with NfQueue(QNUM, netns=ns.name, verdict_timeout=timeout, on_timeout=decide,
                 default_verdict=Verdict.DROP if verdict == Verdict.ACCEPT
                 else Verdict.ACCEPT) as q:
        assert q.verdict_timeout == timeout and q.next_deadline() is None
        _send(s, n)
        end = time.monotonic() + timeout + 1.0
        if loop == "run":
            q.run(hold, timeout=timeout + 0.5)
        elif loop == "iter":
            threading.Timer(timeout + 0.5, q.stop).start()
            for pkt in q:
                hold(pkt)
        elif loop == "async":
            async def main():
                asyncio.get_running_loop().call_later(timeout + 0.5, q.stop)
                async for pkt in q:
                    hold(pkt)
            asyncio.run(main())
        else:
            while time.monotonic() < end and len(fired) < n:
                nd = q.next_deadline()
                wait = 0.5 if nd is None else max(0.0, nd - time.monotonic())
                select.select([q.fileno()], [], [], wait)
                q.drain(hold)
                if seen and len(fired) < n:
                    assert q.next_deadline() is not None
        assert q.next_deadline() is None
        _expect_timeouts(ns, q, r, seen, fired, verdict, timeout, n)


def test_plain_verdict_on_timeout_and_late_verdict_raises(ns, udp):
    _rule(ns)
    r, s = udp
    with NfQueue(QNUM, netns=ns.name, verdict_timeout=0.15, on_timeout=Verdict.DROP) as q:
        _send(s, 3)
        held = []

        def hold(pkt):
            held.append(pkt)
            if _data(pkt) == b"p1":
                pkt.accept()           # in time: not a timeout

        q.run(hold, timeout=0.4)
        assert q.stats.timeouts == 2
        assert q.stats.verdicts[Verdict.DROP] == 2
        assert [p.has_verdict for p in held] == [True, True, True]
        with pytest.raises(VerdictError, match="verdict_timeout"):
            held[0].accept()
        with pytest.raises(VerdictError, match="already has its verdict"):
            held[1].drop()
        assert recv_all(r, 0.3) == [b"p1"]
        assert q.stats.verdict_errors == 0


def test_on_timeout_callable_that_raises(ns, udp):
    """The callable's exception comes out of the loop; its packet gets
    default_verdict, and the other packets still get their on_timeout."""
    _rule(ns)
    r, s = udp

    def decide(pkt):
        if _data(pkt) == b"p0":
            raise RuntimeError("cannot decide p0")
        return Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name, verdict_timeout=0.1, on_timeout=decide,
                 default_verdict=Verdict.DROP) as q:
        _send(s, 3)
        with pytest.raises(RuntimeError, match="cannot decide p0"):
            q.run(lambda pkt: None, timeout=0.5)
        q.run(lambda pkt: None, timeout=0.2)
        assert q.stats.timeouts == 3
        assert q.stats.pending == 0
        assert sorted(recv_all(r, 0.3)) == [b"p1", b"p2"]


def test_deferred_verdicts_before_the_deadline_are_not_timeouts(ns, udp):
    _rule(ns)
    r, s = udp
    with NfQueue(QNUM, netns=ns.name, verdict_timeout=0.3, on_timeout=Verdict.DROP) as q:
        held: "_queue.Queue" = _queue.Queue()

        def worker():
            for _ in range(5):
                p = held.get(timeout=5)
                if _data(p) in (b"p0", b"p2", b"p4"):
                    p.accept()

        t = threading.Thread(target=worker)
        t.start()
        _send(s, 5)
        q.run(held.put, timeout=0.6)
        t.join(5)
        assert q.stats.timeouts == 2 and q.stats.pending == 0
        assert sorted(recv_all(r, 0.3)) == [b"p0", b"p2", b"p4"]


# -- verdicts racing the deadline from threads ---------------------------------------------


@pytest.mark.parametrize("on_timeout", [Verdict.DROP, Verdict.ACCEPT])
def test_threads_racing_the_deadline_exactly_one_verdict(ns, udp, on_timeout):
    """Four threads give each packet its verdict at a random moment within
    2 ms of its deadline while the loop gives on_timeout: every packet gets
    exactly one verdict, the kernel refuses none and holds none, and the
    packets that arrived are exactly those the winning verdict accepted."""
    _rule(ns)
    r, s = udp
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # the queued datagrams stay charged to the sender until their verdicts:
    # room for all of them, or sendto() blocks
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20)
    n, timeout = 1200, 0.2
    mine = Verdict.ACCEPT if on_timeout == Verdict.DROP else Verdict.DROP
    work: "_queue.Queue" = _queue.Queue()
    won: List[bytes] = []
    lost: List[bytes] = []
    lock = threading.Lock()
    rnd = random.Random(1)
    jitter = [rnd.uniform(-0.002, 0.002) for _ in range(n)]

    def racer():
        while True:
            item = work.get()
            if item is None:
                return
            t_seen, k, pkt = item
            delay = t_seen + timeout + jitter[k] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                pkt.verdict(mine)
                with lock:
                    won.append(_data(pkt))
            except VerdictError as e:
                assert "verdict_timeout" in str(e)
                with lock:
                    lost.append(_data(pkt))

    racers = [threading.Thread(target=racer) for _ in range(4)]
    for t in racers:
        t.start()
    count = [0]

    def hold(pkt):
        work.put((time.monotonic(), count[0] % n, pkt))
        count[0] += 1

    try:
        with NfQueue(QNUM, netns=ns.name, verdict_timeout=timeout, on_timeout=on_timeout,
                     max_len=n * 2) as q:
            sent = _send(s, n)
            deadline = time.monotonic() + 20
            while (len(won) + len(lost) < n or q.stats.pending) and time.monotonic() < deadline:
                q.run(hold, timeout=0.05)
            assert len(won) + len(lost) == n
            assert sorted(won + lost) == sorted(sent)
            assert q.stats.timeouts == len(lost)
            assert q.stats.verdict_errors == 0 and q.stats.pending == 0
            row = _row(ns)
            assert row["waiting"] == 0 and row["user_dropped"] == 0
            assert row["id_sequence"] == n
            # both sides won some races: the test did race
            assert won and lost, (len(won), len(lost))
    finally:
        for _ in racers:
            work.put(None)
        for t in racers:
            t.join(10)
    got = recv_all(r, 0.3)
    accepted = won if mine == Verdict.ACCEPT else lost
    assert sorted(got) == sorted(accepted)
