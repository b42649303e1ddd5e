# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's compiled dispatch loop (nfbind._fastq) beside its Python loop.

The compiled loop is loaded wherever it was built (a silent fallback would
pass every other test, slower); every other test here runs on both loops
(fixture ``loop``: the compiled one, and the Python one forced by setting
``nfbind.queue._LOOP`` to None) against the real kernel, in a throw-away
namespace, and checks the same outcomes on both: what reaches the far side,
the fields the handler saw, handler errors, deferred verdicts, a batch
verdict from inside the handler and a KeyboardInterrupt in the middle of a
batch (every packet handed out again until its verdict is kept, and gets
exactly one).
"""
from __future__ import annotations

import socket
import time
from decimal import Decimal
from typing import Any, Dict, List, Tuple

import pytest

import nfbind.queue as queue_mod
from nfbind import NfQueue, Verdict, VerdictError, _speedups
from nfbind.packet import PacketBase

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


def _data(pkt: Any) -> bytes:
    ip = pkt.payload
    return ip[(ip[0] & 0x0F) * 4 + 8:]


def test_compiled_loop_is_loaded(monkeypatch) -> None:
    """Built on this machine, so NfQueue dispatches with it."""
    if _speedups.pure():
        pytest.skip("NFBIND_PURE asks for the Python loops")
    import nfbind._fastq as fastq
    assert queue_mod._fastq is fastq
    assert isinstance(queue_mod._LOOP, fastq.QueueLoop)


def test_loop_rejects_what_it_cannot_fill() -> None:
    if queue_mod._fastq is None:
        pytest.skip("nfbind._fastq is not loaded")
    args = [queue_mod.Packet, queue_mod._HotPacket, queue_mod.Flight, Verdict,
            queue_mod.PLAIN, queue_mod.NF, queue_mod.F_ID, queue_mod.F_QUEUE,
            queue_mod.V_DEFERRED, queue_mod.V_DONE, 1, 2, 4]
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
        data = _data(pkt)
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
        assert [_data(p) for p in deferred] == [payloads[2]]
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
            q.drain(lambda pkt: "yes" if _data(pkt) == b"p1" else Verdict.ACCEPT)
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
        data = _data(pkt)
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
        data = _data(pkt)
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
            j = int(_data(pkt)[1:])
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
