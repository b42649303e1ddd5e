# SPDX-License-Identifier: GPL-2.0-or-later
"""The compiled dispatch loops (nfbind._fastq) of NfQueue and NfLog beside
their Python loops.

The compiled loop is loaded wherever it was built (a silent fallback would
pass every other test, slower); every other test here runs on both loops
(fixture ``loop``: the compiled one, and the Python one forced by setting
``nfbind.queue._LOOP`` to None) against the real kernel, in a throw-away
namespace, and checks the same outcomes on both: what reaches the far side,
the fields the handler saw, handler errors, deferred verdicts, a batch
verdict from inside the handler and a KeyboardInterrupt in the middle of a
batch (every packet handed out again until its verdict is kept, and gets
exactly one).  NfLog's loops likewise: the fields and prefixes, filled
eagerly or read lazily, handler errors and a KeyboardInterrupt in the
middle of a batch (the rest of it handed out by the next loop).
"""
from __future__ import annotations

import select
import socket
import time
from decimal import Decimal
from typing import Any, Dict, List, Optional, Tuple

import pytest

import nfbind.log as log_mod
import nfbind.queue as queue_mod
from nfbind import LogPacket, NfLog, NfQueue, Verdict, VerdictError, _speedups
from nfbind.packet import PacketBase

from helpers.packets import udp_data

pytestmark = pytest.mark.integration

PORT = 5566
QNUM = 11
HOT = ("payload_len", "mark", "indev", "hw_protocol", "timestamp")


class CountingLoop:
    """The compiled loop, counting its run() calls."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.calls = 0

    def run(self, *args: Any) -> Any:
        self.calls += 1
        return self.loop.run(*args)


@pytest.fixture(params=["compiled", "python"])
def loop(request, monkeypatch) -> str:
    """Which dispatch loop the test runs on; the compiled one counts its
    calls, so that a test can tell it ran."""
    if request.param == "python":
        monkeypatch.setattr(queue_mod, "_LOOP", None)
    else:
        if queue_mod._LOOP is None:
            pytest.skip("nfbind._fastq is not loaded (NFBIND_PURE, or not built)")
        monkeypatch.setattr(queue_mod, "_LOOP", CountingLoop(queue_mod._LOOP))
    return request.param


def _ran(kind: str) -> None:
    """The loop ``kind`` is the one that dispatched."""
    if kind == "compiled":
        assert queue_mod._LOOP.calls > 0
    else:
        assert queue_mod._LOOP is None


class Net:
    """A UDP sender and receiver over the namespace's loopback, the sent
    packets queued to QNUM at OUTPUT."""

    def __init__(self, ns) -> None:
        ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                    "-j", "NFQUEUE", "--queue-num", str(QNUM))
        self.r = ns.socket()
        self.r.bind(("127.0.0.1", PORT))
        self.s = ns.socket()
        self.s.bind(("127.0.0.1", 0))

    def send(self, payloads: List[bytes]) -> None:
        for p in payloads:
            self.s.sendto(p, ("127.0.0.1", PORT))

    def recv(self, quiet: float = 0.3, limit: float = 5.0) -> List[bytes]:
        out: List[bytes] = []
        self.r.settimeout(quiet)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                out.append(self.r.recv(70000))
            except (socket.timeout, BlockingIOError):
                break
        return out

    def close(self) -> None:
        self.r.close()
        self.s.close()


@pytest.fixture
def net(ns):
    n = Net(ns)
    yield n
    n.close()


def test_compiled_loop_is_loaded(monkeypatch) -> None:
    """Built on this machine, so NfQueue dispatches with it."""
    if _speedups.pure():
        pytest.skip("NFBIND_PURE asks for the Python loops")
    import nfbind._fastq as fastq
    assert queue_mod._fastq is fastq
    assert isinstance(queue_mod._LOOP, fastq.QueueLoop)
    assert log_mod._fastq is fastq
    assert isinstance(log_mod._LOOP, fastq.LogLoop)


def test_loop_rejects_what_it_cannot_fill() -> None:
    if queue_mod._fastq is None:
        pytest.skip("nfbind._fastq is not loaded")
    args = [queue_mod.Packet, queue_mod._HotPacket, queue_mod.Flight, Verdict,
            queue_mod.PLAIN, queue_mod.NF, queue_mod.F_ID, queue_mod.F_QUEUE,
            queue_mod.V_DEFERRED, queue_mod.V_DONE]
    with pytest.raises(TypeError, match="subclass"):
        queue_mod._fastq.QueueLoop(queue_mod.Packet, int, *args[2:])

    class NoSlots(queue_mod.Packet):
        payload_len = 0

    with pytest.raises(TypeError, match="slot"):
        queue_mod._fastq.QueueLoop(queue_mod.Packet, NoSlots, *args[2:])
    with pytest.raises(TypeError):
        queue_mod._LOOP.run(lambda p: None, object(), {}, -1, False, None)


def test_results_of_every_kind(ns, net, loop) -> None:
    """Plain verdicts (int and Verdict), None with a deferred verdict, a
    verdict given in the handler, an exception, results that are no
    verdict and a verdict for a packet that has one, in one batch."""
    plan = ["int-accept", "verdict-drop", "defer", "raise", "float", "bool", "mark",
            "twice", "big", "accept"]
    payloads = [b"%02d-%s" % (j, w.encode()) for j, w in enumerate(plan)]
    deferred: List[Any] = []
    seen: List[bytes] = []

    def handler(pkt: Any) -> Any:
        data = udp_data(pkt.payload)
        seen.append(data)
        what = data[3:].decode()
        if what == "int-accept":
            return 1
        if what == "verdict-drop":
            return Verdict.DROP
        if what == "defer":
            deferred.append(pkt)
            return None
        if what == "raise":
            raise LookupError("no such thing")
        if what == "float":
            return 1.0
        if what == "bool":
            return True
        if what == "mark":
            pkt.accept(mark=5)
            return None
        if what == "twice":
            pkt.drop()
            return Verdict.ACCEPT
        if what == "big":
            return Decimal(1)
        return Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name, on_error=Verdict.DROP) as q:
        net.send(payloads)
        raised: List[BaseException] = []
        for _ in range(10):
            if len(seen) == len(payloads):
                break
            try:
                q.drain(handler)
            except Exception as e:
                raised.append(e)
        assert seen == payloads
        # the first error of the batch, raised once every packet of it was handed out
        assert isinstance(raised[0], LookupError) and "no such thing" in str(raised[0])
        assert q.stats.handler_errors == 5      # raise, float, bool, twice, big
        assert [udp_data(p.payload) for p in deferred] == [payloads[2]]
        assert not deferred[0].has_verdict
        assert q.stats.pending == 1
        deferred[0].accept()
        with pytest.raises(VerdictError):
            deferred[0].drop()
        assert q.stats.pending == 0
        got = sorted(net.recv())
    # raise, float, bool and big got on_error (DROP), twice its pkt.drop()
    assert got == sorted([payloads[0], payloads[2], payloads[6], payloads[9]])
    _ran(loop)


def test_error_result_raised_after_the_batch(ns, net, loop) -> None:
    """A result that is no verdict is raised by the loop once the batch's
    other packets were handed out and their verdicts sent."""
    payloads = [b"p%d" % j for j in range(6)]
    with NfQueue(QNUM, netns=ns.name) as q:
        net.send(payloads)
        with pytest.raises(TypeError, match="no verdict"):
            q.drain(lambda pkt: "yes" if udp_data(pkt.payload) == b"p1" else Verdict.ACCEPT)
        assert q.stats.handler_errors == 1
        assert sorted(net.recv()) == payloads       # on_error: ACCEPT
    _ran(loop)


def test_hot_fields_filled_as_read(ns, net, loop) -> None:
    """With the hot fields filled eagerly the packets carry the values their
    properties read from the records, None where absent; the ids are those
    of the records, in order."""
    payloads = [b"h%03d" % j for j in range(40)]
    rows: List[Tuple[Any, ...]] = []
    ids: List[int] = []

    def handler(pkt: Any) -> Any:
        ids.append(pkt.id)
        lazy = tuple(getattr(PacketBase, f).fget(pkt) for f in HOT)
        rows.append((type(pkt).__name__, tuple(getattr(pkt, f) for f in HOT), lazy,
                     pkt.has_verdict))
        return Verdict.ACCEPT

    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "MARK", "--set-mark", "9")
    with NfQueue(QNUM, netns=ns.name) as q:
        q._hot_left = 1000      # fill every batch eagerly
        net.send(payloads)
        for _ in range(10):
            if len(rows) == len(payloads):
                break
            q.drain(handler)
        assert len(rows) == len(payloads)
        assert sorted(net.recv()) == payloads
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for name, eager, lazy, has in rows:
        assert name == "Packet"
        assert eager == lazy
        assert eager[0] == len(b"h000") + 28
        assert eager[1] == 9        # the MARK rule's
        assert eager[3] == 0x0800
        assert not has
    _ran(loop)


def test_verdict_batch_from_the_handler(ns, net, loop) -> None:
    """A batch verdict given while packet 3 is handled settles it and the
    ones before it that wait; the rest of the batch is still handed out."""
    payloads = [b"b%d" % j for j in range(8)]
    calls: List[bytes] = []
    later: List[Any] = []

    def handler(pkt: Any) -> Any:
        data = udp_data(pkt.payload)
        calls.append(data)
        if data in (b"b1", b"b2"):
            later.append(pkt)
            return None
        if data == b"b3":
            assert q.verdict_batch(pkt.id, Verdict.DROP) == 3
            assert pkt.has_verdict and all(p.has_verdict for p in later)
            return None
        return Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name) as q:
        net.send(payloads)
        q.drain(handler)
        assert calls == payloads
        assert q.stats.pending == 0
        assert q.stats.handler_errors == 0
        got = sorted(net.recv())
    assert got == [b"b0", b"b4", b"b5", b"b6", b"b7"]
    _ran(loop)


def test_keyboard_interrupt_mid_batch(ns, net, loop) -> None:
    """A KeyboardInterrupt from the handler of packet 4 leaves it and the
    rest of the batch to the next loop: packet 4 is handed out again, the
    verdicts decided before it are sent, each packet arrives once."""
    payloads = [b"k%d" % j for j in range(9)]
    calls: List[bytes] = []
    fired: Dict[str, int] = {"k": 0}

    def handler(pkt: Any) -> Any:
        data = udp_data(pkt.payload)
        calls.append(data)
        if data == b"k4" and not fired["k"]:
            fired["k"] = 1
            raise KeyboardInterrupt
        if data == b"k6":
            pkt.accept(mark=3)
            return None
        return Verdict.DROP if data == b"k2" else Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name) as q:
        net.send(payloads)
        with pytest.raises(KeyboardInterrupt):
            q.drain(handler)
        assert calls == payloads[:5]
        assert q.stats.pending == 5         # k4 .. k8: none has its verdict
        q.drain(handler)
        assert calls == payloads[:5] + payloads[4:]
        assert q.stats.pending == 0
        got = sorted(net.recv())
    assert got == sorted(p for p in payloads if p != b"k2")
    _ran(loop)


def test_same_outcome_on_both_loops(ns, net, monkeypatch) -> None:
    """The same packets and handler through the compiled and the Python
    loop: the same results, fields and arrivals."""
    if queue_mod._LOOP is None:
        pytest.skip("nfbind._fastq is not loaded")
    compiled = queue_mod._LOOP
    outcomes = []
    for which in (compiled, None):
        monkeypatch.setattr(queue_mod, "_LOOP", which)
        tag = b"c" if which is not None else b"p"
        payloads = [tag + b"%02d" % j for j in range(30)]
        seen: List[Tuple[Any, ...]] = []

        def handler(pkt: Any) -> Any:
            j = int(udp_data(pkt.payload)[1:])
            seen.append((j, pkt.payload_len, pkt.mark, pkt.indev, pkt.hw_protocol,
                         pkt.timestamp is None, pkt.queue_num))
            if j % 7 == 3:
                raise ValueError(j)
            return (Verdict.ACCEPT, Verdict.DROP, 1, 0)[j % 4]

        with NfQueue(QNUM, netns=ns.name, on_error=Verdict.ACCEPT) as q:
            net.send(payloads)
            errors = 0
            for _ in range(20):
                if len(seen) >= len(payloads):
                    break
                try:
                    q.drain(handler)
                except ValueError:
                    errors += 1
            arrived = sorted(int(d[1:]) for d in net.recv())
            outcomes.append((seen, arrived, q.stats.handler_errors, errors > 0))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == [j for j in range(30) if j % 4 in (0, 2) or j % 7 == 3]


# -- NfLog ------------------------------------------------------------------------------

LOG_PORT = 6110
GROUP = 23


@pytest.fixture(params=["compiled", "python"])
def log_loop(request, monkeypatch) -> str:
    """Which of NfLog's dispatch loops the test runs on (as ``loop``)."""
    if request.param == "python":
        monkeypatch.setattr(log_mod, "_LOOP", None)
    else:
        if log_mod._LOOP is None:
            pytest.skip("nfbind._fastq is not loaded (NFBIND_PURE, or not built)")
        monkeypatch.setattr(log_mod, "_LOOP", CountingLoop(log_mod._LOOP))
    return request.param


def _log_ran(kind: str) -> None:
    if kind == "compiled":
        assert log_mod._LOOP.calls > 0
    else:
        assert log_mod._LOOP is None


def _log_rules(ns) -> None:
    """Port LOG_PORT + k logged with prefix "pfx-k" (k = 0, 1), LOG_PORT + 2
    without one; marked 5 first."""
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "-j", "MARK", "--set-mark", "5")
    for k in range(3):
        extra = ["--nflog-prefix", "pfx-%d" % k] if k < 2 else []
        ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(LOG_PORT + k), "-j", "NFLOG",
                    "--nflog-group", str(GROUP), *extra)


def _log_send(ns, payloads: List[bytes]) -> None:
    s = ns.socket()
    try:
        for j, data in enumerate(payloads):
            s.sendto(data, ("127.0.0.1", LOG_PORT + j % 3))
    finally:
        s.close()


def _log_drain(log: NfLog, handler: Any, want: int, seen: List[Any],
               hot_left: Optional[int] = None) -> List[BaseException]:
    """drain() until ``seen`` holds ``want`` entries (bounded); the
    exceptions it raised.  ``hot_left``: set before each drain (how many
    batches to fill eagerly)."""
    raised: List[BaseException] = []
    for _ in range(50):
        if len(seen) >= want:
            break
        select.select([log.fileno()], [], [], 0.2)
        if hot_left is not None:
            log._hot_left = hot_left
        try:
            log.drain(handler)
        except Exception as e:
            raised.append(e)
    return raised


@pytest.mark.parametrize("eager", [True, False])
def test_log_fields_and_prefixes(ns, log_loop, eager) -> None:
    """Filled eagerly, the hot fields and prefixes are what the properties
    read; read lazily, the packets are plain LogPackets."""
    _log_rules(ns)
    payloads = [b"L%02d" % j for j in range(30)]
    rows: List[Tuple[Any, ...]] = []

    def handler(pkt: Any) -> None:
        lazy = tuple(getattr(PacketBase, f).fget(pkt) for f in HOT)
        rows.append((pkt.payload[28:], pkt.prefix, LogPacket.prefix.fget(pkt),
                     tuple(getattr(pkt, f) for f in HOT), lazy, type(pkt) is LogPacket))

    with NfLog(GROUP, netns=ns.name) as log:
        _log_send(ns, payloads)
        _log_drain(log, handler, len(payloads), rows, hot_left=10 ** 6 if eager else 0)
    assert [r[0] for r in rows] == payloads
    for j, (_, prefix, lazy_prefix, fields, lazy, plain) in enumerate(rows):
        assert prefix == lazy_prefix == ("pfx-%d" % (j % 3) if j % 3 < 2 else "")
        assert fields == lazy
        assert fields[0] == 28 + 3 and fields[1] == 5 and fields[3] == 0x0800
        assert fields[2] is not None and fields[4] is not None     # indev, timestamp at INPUT
        assert plain is not eager
    _log_ran(log_loop)


def test_log_errors_and_interrupt(ns, log_loop) -> None:
    """Handler errors are counted and the first is raised after the batch;
    a KeyboardInterrupt leaves the rest of its batch to the next loop."""
    _log_rules(ns)
    payloads = [b"E%02d" % j for j in range(9)]
    seen: List[bytes] = []

    def failing(pkt: Any) -> None:
        data = pkt.payload[28:]
        seen.append(data)
        if data in (b"E02", b"E05"):
            raise ValueError(data)

    with NfLog(GROUP, netns=ns.name) as log:
        _log_send(ns, payloads)
        raised = _log_drain(log, failing, len(payloads), seen)
        assert seen == payloads
        assert [str(e) for e in raised] == [str(b"E02")] or \
            [str(e) for e in raised] == [str(b"E02"), str(b"E05")]
        assert log.stats.handler_errors == 2

        seen.clear()
        again = [b"K%02d" % j for j in range(6)]

        def interrupted(pkt: Any) -> None:
            data = pkt.payload[28:]
            seen.append(data)
            if data == b"K02":
                raise KeyboardInterrupt

        _log_send(ns, again)
        time.sleep(0.2)
        with pytest.raises(KeyboardInterrupt):
            log.drain(interrupted)
        assert seen == again[:3]
        rest: List[bytes] = []
        _log_drain(log, lambda p: rest.append(p.payload[28:]), 3, rest)
        assert rest == again[3:]
        assert log.stats.handler_errors == 2
    _log_ran(log_loop)
