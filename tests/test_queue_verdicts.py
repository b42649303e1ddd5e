# SPDX-License-Identifier: GPL-2.0-or-later
"""NFQUEUE verdicts against the real kernel.

Every test gets its own network namespace (fixture ``ns``), installs
``iptables -j NFQUEUE`` rules there, sends real UDP packets over the
namespace's loopback and checks what reaches the far side: a receiving
socket, rule counters, the conntrack table, /proc/net/netfilter/nfnetlink_queue.

Packets are sent before the queue is read: a local ``sendto`` returns once
the kernel queued the packet, so everything sent lands in one receive batch
(nfbind reads up to 8+ messages per ``recvmmsg``).
"""
from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import queue as _queue
from typing import List, Optional

import pytest

from nfbind import NfQueue, Verdict, VerdictError

from helpers.procs import SRC

pytestmark = pytest.mark.integration

PORT = 5555
QNUM = 7


# -- helpers -------------------------------------------------------------------------

_SOCKETS: List[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    """Close the UDP sockets the helpers opened, before the namespace goes."""
    yield
    while _SOCKETS:
        _SOCKETS.pop().close()


def _queue_rule(ns, qnum: int = QNUM, port: int = PORT, table: str = "filter",
                chain: str = "OUTPUT") -> None:
    ns.iptables("-t", table, "-A", chain, "-p", "udp", "--dport", str(port),
                "-j", "NFQUEUE", "--queue-num", str(qnum))


def _receiver(ns, port: int = PORT) -> socket.socket:
    r = ns.socket()
    _SOCKETS.append(r)
    r.bind(("127.0.0.1", port))
    return r


def _sender(ns, sport: int = 0) -> socket.socket:
    s = ns.socket()
    _SOCKETS.append(s)
    s.bind(("127.0.0.1", sport))
    return s


def _send(s: socket.socket, payloads, port: int = PORT) -> None:
    for p in payloads:
        s.sendto(p, ("127.0.0.1", port))


def _recv(sock: socket.socket, quiet: float = 0.3, limit: float = 5.0) -> List[bytes]:
    """Everything ``sock`` receives until it has been quiet for ``quiet`` s."""
    out: List[bytes] = []
    sock.settimeout(quiet)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(70000))
        except (socket.timeout, BlockingIOError):
            break
    return out


def _counter(ns, table: str, chain: str, comment: str) -> int:
    """Packet counter of the rule ``-m comment --comment COMMENT`` in TABLE/CHAIN."""
    out = ns.run("iptables", "-w", "-t", table, "-L", chain, "-v", "-n", "-x")
    for line in out.splitlines():
        if "/* %s */" % comment in line:
            return int(line.split()[0])
    raise AssertionError("no rule with comment %r in %s/%s:\n%s" % (comment, table, chain, out))


def _waiting(ns, qnum: int = QNUM) -> int:
    """Packets the kernel holds for ``qnum`` (0 when the queue is not bound)."""
    row = ns.queue_proc().get(qnum)
    return 0 if row is None else row["waiting"]


def _udp_data(ip: bytes) -> bytes:
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8:]


def _ip_csum(hdr: bytes) -> int:
    s = sum(struct.unpack("!%dH" % (len(hdr) // 2), hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _rewrite_udp(ip: bytes, data: bytes) -> bytes:
    """The IPv4/UDP packet ``ip`` carrying ``data`` instead: IP total length
    and header checksum fixed up, UDP length fixed up, UDP checksum 0."""
    ihl = (ip[0] & 0x0F) * 4
    hdr = bytearray(ip[:ihl])
    struct.pack_into("!H", hdr, 2, ihl + 8 + len(data))
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, _ip_csum(bytes(hdr)))
    udp = ip[ihl:ihl + 4] + struct.pack("!HH", 8 + len(data), 0)
    return bytes(hdr) + udp + data


def _collect(q: NfQueue, n: int, limit: float = 5.0):
    """``n`` packets through ``for pkt in q``, without verdicts; a timer stops
    the iteration if they don't come."""
    got = []
    t = threading.Timer(limit, q.stop)
    t.start()
    try:
        for pkt in q:
            got.append(pkt)
            if len(got) >= n:
                break
    finally:
        t.cancel()
    return got


# -- accept / drop ---------------------------------------------------------------------


def test_accepted_arrive_dropped_do_not(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"acc-0", b"drop-1", b"acc-2", b"drop-3", b"acc-4", b"acc-5"]
    seen = []
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)

        def handler(pkt):
            data = _udp_data(pkt.payload)
            seen.append(data)
            return Verdict.ACCEPT if data.startswith(b"acc") else Verdict.DROP

        q.run(handler, timeout=0.5)
        assert sorted(seen) == sorted(payloads)
        assert sorted(_recv(r)) == [b"acc-0", b"acc-2", b"acc-4", b"acc-5"]
        assert q.stats.pending == 0
        assert _waiting(ns) == 0


# -- marks ---------------------------------------------------------------------------------


def _mark_rules(ns):
    # queue in mangle OUTPUT; the verdict ends that chain, so count in filter OUTPUT
    _queue_rule(ns, table="mangle")
    ns.iptables("-t", "filter", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-m", "mark", "--mark", "7", "-m", "comment", "--comment", "seen")
    ns.iptables("-t", "filter", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-m", "mark", "--mark", "0", "-m", "comment", "--comment", "unmarked")


def test_mark_from_accept_seen_by_later_rule(ns):
    _mark_rules(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"m%d" % i for i in range(4)]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        q.run(lambda pkt: pkt.accept(mark=7), timeout=0.5)
        assert sorted(_recv(r)) == payloads
    assert _counter(ns, "filter", "OUTPUT", "seen") == 4
    assert _counter(ns, "filter", "OUTPUT", "unmarked") == 0


def test_mark_mixed_with_plain_verdicts_in_one_batch(ns):
    _mark_rules(ns)
    r, s = _receiver(ns), _sender(ns)
    # A M A M M A A M: runs of plain ACCEPTs around marked packets
    marked = {1, 3, 4, 7}
    payloads = [b"x%d" % i for i in range(8)]
    calls = []
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)

        def handler(pkt):
            i = int(_udp_data(pkt.payload)[1:])
            calls.append(i)
            if i in marked:
                pkt.accept(mark=7)
                return None
            return Verdict.ACCEPT

        q.run(handler, timeout=0.5)
        assert sorted(calls) == list(range(8))
        assert sorted(_recv(r)) == sorted(payloads)
        # the plain runs (5, 6) were really sent as one kernel batch verdict
        assert q.stats.batch_verdicts >= 1
    assert _counter(ns, "filter", "OUTPUT", "seen") == len(marked)
    assert _counter(ns, "filter", "OUTPUT", "unmarked") == 8 - len(marked)


def test_connmark_from_handler_and_deferred(ns):
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    _queue_rule(ns)
    r = _receiver(ns)
    s1, s2 = _sender(ns, 40001), _sender(ns, 40002)
    later = []
    with NfQueue(QNUM, netns=ns.name) as q:
        s1.sendto(b"flow-one", ("127.0.0.1", PORT))
        s2.sendto(b"flow-two", ("127.0.0.1", PORT))

        def handler(pkt):
            if _udp_data(pkt.payload) == b"flow-one":
                pkt.accept(connmark=0x2A)  # inside the handler, with the batch
            else:
                later.append(pkt)          # deferred
            return None

        q.run(handler, timeout=0.5)
        assert len(later) == 1
        later[0].accept(connmark=0x51)
        assert sorted(_recv(r)) == [b"flow-one", b"flow-two"]
    out = ns.run("conntrack", "-L", "-p", "udp")
    marks = {}
    for line in out.splitlines():
        for sport in (40001, 40002):
            if "sport=%d " % sport in line and "dport=%d " % PORT in line:
                marks[sport] = [f for f in line.split() if f.startswith("mark=")]
    assert marks == {40001: ["mark=42"], 40002: ["mark=81"]}, out


# -- payload rewriting -------------------------------------------------------------------


def test_rewrite_raw_same_length(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, [b"hello world"])

        def handler(pkt):
            ip = pkt.payload
            ihl = (ip[0] & 0x0F) * 4
            assert ip[ihl + 8:] == b"hello world"
            new = ip[:ihl + 6] + b"\x00\x00" + b"HELLO WORLD"  # UDP checksum 0
            assert len(new) == len(ip)
            pkt.accept(payload=new)

        q.run(handler, timeout=0.5)
    assert _recv(r) == [b"HELLO WORLD"]


@pytest.mark.parametrize("new", [b"a much longer replacement payload" * 3, b"tiny"],
                         ids=["longer", "shorter"])
def test_rewrite_raw_other_length(ns, new):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, [b"original payload"])
        q.run(lambda pkt: pkt.accept(payload=_rewrite_udp(pkt.payload, new)), timeout=0.5)
    assert _recv(r) == [new]


def test_rewrite_scapy_packet_recomputes_lengths(ns):
    from scapy.layers.inet import UDP
    from scapy.packet import Raw

    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    new = b"rewritten by scapy, longer than before"
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, [b"short"])

        def handler(pkt):
            p = pkt.scapy()
            assert p[Raw].load == b"short"
            p[UDP].remove_payload()
            p = p / Raw(new)           # stale IP len, UDP len and checksums kept
            pkt.accept(payload=p)

        q.run(handler, timeout=0.5)
    assert _recv(r) == [new]


# -- repeat and queue(n) -----------------------------------------------------------------


def test_repeat_reenters_the_rules(ns):
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-m", "comment", "--comment", "pass")
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-m", "mark", "--mark", "1", "-j", "ACCEPT")
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"r0", b"r1", b"r2"]
    calls = []
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)

        def handler(pkt):
            calls.append(pkt.id)
            pkt.repeat(mark=1)

        q.run(handler, timeout=0.5)
    assert len(calls) == 3          # queued once each: the mark rule let them through
    assert sorted(_recv(r)) == payloads
    assert _counter(ns, "filter", "OUTPUT", "pass") == 6


def test_queue_hands_packet_to_another_queue(ns):
    _queue_rule(ns, qnum=1)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"q0", b"q1", b"q2"]
    first, second = [], []
    with NfQueue(1, netns=ns.name) as q1, NfQueue(2, netns=ns.name) as q2:
        _send(s, payloads)

        def h1(pkt):
            first.append(_udp_data(pkt.payload))
            pkt.queue(2)

        def h2(pkt):
            second.append((pkt.queue_num, _udp_data(pkt.payload)))
            return Verdict.ACCEPT

        q1.run(h1, timeout=0.5)
        assert _recv(r, quiet=0.2) == []       # now held by queue 2
        assert _waiting(ns, 2) == 3
        q2.run(h2, timeout=0.5)
        assert sorted(first) == payloads
        assert sorted(second) == [(2, p) for p in payloads]
        assert sorted(_recv(r)) == payloads
        assert _waiting(ns, 1) == 0 and _waiting(ns, 2) == 0


# -- kernel batch verdict ------------------------------------------------------------------


def test_verdict_batch_after_iteration(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"b%d" % i for i in range(6)]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        pkts = _collect(q, 6)
        assert [_udp_data(p.payload) for p in pkts] == payloads
        assert q.stats.pending == 6
        assert _waiting(ns) == 6
        ids = [p.id for p in pkts]
        assert ids == sorted(ids)
        # the first three dropped, the rest accepted, two messages in all
        assert q.verdict_batch(ids[2], Verdict.DROP) == 3
        assert q.stats.pending == 3
        assert q.verdict_batch(ids[-1], Verdict.ACCEPT) == 3
        assert q.stats.pending == 0
        assert _waiting(ns) == 0
        with pytest.raises(VerdictError):
            pkts[0].accept()
        assert sorted(_recv(r)) == payloads[3:]


def test_verdict_batch_with_mark(ns):
    _mark_rules(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"bm%d" % i for i in range(4)]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        pkts = _collect(q, 4)
        assert len(pkts) == 4
        assert q.verdict_batch(pkts[-1].id, Verdict.ACCEPT, mark=7) == 4
        assert q.stats.pending == 0
        assert sorted(_recv(r)) == payloads
    assert _counter(ns, "filter", "OUTPUT", "seen") == 4


# -- deferred verdicts -------------------------------------------------------------------------


def test_deferred_verdicts_from_other_threads(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    handed: "_queue.Queue" = _queue.Queue()
    with NfQueue(QNUM, netns=ns.name) as q:
        def handler(pkt):
            handed.put(pkt)
            return None

        loop = threading.Thread(target=q.run, args=(handler,), kwargs={"timeout": 5})
        loop.start()
        try:
            # while run() is running: verdicts from this (another) thread
            _send(s, [b"keep-now", b"drop-now"])
            got = {}
            for _ in range(2):
                p = handed.get(timeout=5)
                got[_udp_data(p.payload)] = p
            got[b"keep-now"].accept()
            got[b"drop-now"].drop()
            assert sorted(_recv(r)) == [b"keep-now"]
        finally:
            q.stop()
            loop.join(10)
        assert not loop.is_alive()

        # after run() returned: verdicts from yet another thread
        _send(s, [b"keep-later", b"drop-later"])
        q.run(handler, timeout=0.5)
        assert q.stats.pending == 2
        assert _waiting(ns) == 2
        later = {}
        for _ in range(2):
            p = handed.get(timeout=1)
            later[_udp_data(p.payload)] = p
        errors = []

        def give():
            try:
                later[b"keep-later"].accept()
                later[b"drop-later"].drop()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=give)
        t.start()
        t.join(5)
        assert errors == []
        assert q.stats.pending == 0
        assert _waiting(ns) == 0
        assert sorted(_recv(r)) == [b"keep-later"]


# -- exactly one verdict -------------------------------------------------------------------------


def test_second_verdict_raises_in_handler_and_outside(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    raised = []
    deferred = []
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, [b"inside", b"outside", b"closed"])

        def handler(pkt):
            data = _udp_data(pkt.payload)
            if data == b"inside":
                pkt.accept()
                for second in (pkt.accept, pkt.drop, lambda: pkt.queue(3)):
                    try:
                        second()
                    except VerdictError as e:
                        raised.append(e)
                assert pkt.has_verdict
            else:
                deferred.append(pkt)
            return None

        q.run(handler, timeout=0.5)
        assert len(raised) == 3
        out, closed = sorted(deferred, key=lambda p: _udp_data(p.payload), reverse=True)
        assert _udp_data(out.payload) == b"outside"
        out.accept()
        with pytest.raises(VerdictError):
            out.accept()
        with pytest.raises(VerdictError):
            out.drop()
        with pytest.raises(VerdictError):
            out.repeat(mark=1)
        # no duplicate verdict reached the kernel: it would answer with an error
        q.run(lambda pkt: Verdict.ACCEPT, timeout=0.2)
        assert q.stats.verdict_errors == 0
    # the third got the default verdict at close(); after that, no verdict at all
    with pytest.raises(VerdictError):
        closed.drop()
    assert sorted(_recv(r)) == [b"closed", b"inside", b"outside"]


def test_verdict_returned_after_accept_raises_from_run(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"v0", b"v1-twice", b"v2", b"v3"]
    calls = []
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)

        def handler(pkt):
            data = _udp_data(pkt.payload)
            calls.append(data)
            if data == b"v1-twice":
                pkt.accept()
                return Verdict.DROP
            return Verdict.ACCEPT

        with pytest.raises(VerdictError):
            q.run(handler, timeout=0.5)
        assert sorted(calls) == sorted(payloads)   # the whole batch was handled
        assert q.stats.pending == 0
        assert _waiting(ns) == 0
        # each arrives exactly once: the accept() won, the DROP was not sent
        assert sorted(_recv(r)) == sorted(payloads)
        q.run(lambda pkt: Verdict.ACCEPT, timeout=0.2)
        assert q.stats.verdict_errors == 0


# -- a handler that raises ---------------------------------------------------------------------


@pytest.mark.parametrize("on_error", [Verdict.ACCEPT, Verdict.DROP], ids=["ACCEPT", "DROP"])
def test_handler_exception_gets_on_error_and_batch_continues(ns, on_error):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"e0", b"e1", b"boom", b"e3", b"e4"]
    calls = []
    with NfQueue(QNUM, netns=ns.name, on_error=on_error) as q:
        _send(s, payloads)

        def handler(pkt):
            data = _udp_data(pkt.payload)
            calls.append(data)
            if data == b"boom":
                raise RuntimeError("handler failed on purpose")
            return Verdict.ACCEPT

        with pytest.raises(RuntimeError, match="on purpose"):
            q.run(handler, timeout=0.5)
        # one run() call, one batch: every packet was handled before it raised
        assert calls == payloads
        assert q.stats.handler_errors == 1
        assert q.stats.pending == 0
        assert _waiting(ns) == 0
        expected = sorted(payloads) if on_error == Verdict.ACCEPT else sorted(
            p for p in payloads if p != b"boom")
        assert sorted(_recv(r)) == expected

        # the queue keeps working after the exception
        _send(s, [b"after"])
        q.run(handler, timeout=0.3)
        assert _recv(r) == [b"after"]


# -- Ctrl-C ------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from nfbind import NfQueue, Verdict

    want = int(sys.argv[2])
    kept = []
    q = NfQueue(%d, default_verdict=Verdict[sys.argv[1]])

    def handler(pkt):
        kept.append(pkt)          # deferred: no verdict
        if len(kept) == want:
            print("have", len(kept), flush=True)
        return None

    print("ready", flush=True)
    q.run(handler, timeout=20)
    print("run returned", len(kept), q.stats.pending, flush=True)
    q.close()
    print("closed", all(p.has_verdict for p in kept), flush=True)
""" % QNUM)


def _read_line(p: subprocess.Popen, sel: selectors.BaseSelector, deadline: float) -> str:
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise AssertionError("child said nothing in time; rc=%r" % p.poll())
        line = p.stdout.readline()
        if not line:
            raise AssertionError("child exited early: rc=%r stderr=%s"
                                 % (p.wait(5), p.stderr.read()))
        return line.strip()


@pytest.mark.parametrize("default", ["ACCEPT", "DROP"])
def test_ctrl_c_returns_cleanly_and_close_settles(ns, tmp_path, default):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    payloads = [b"c%d" % i for i in range(3)]
    p = ns.popen("env", "PYTHONPATH=" + SRC, sys.executable, str(script), default,
                 str(len(payloads)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 15
    try:
        assert _read_line(p, sel, deadline) == "ready"
        _send(s, payloads)
        assert _read_line(p, sel, deadline) == "have %d" % len(payloads)
        assert _waiting(ns) == len(payloads)      # held, no verdict yet
        assert _recv(r, quiet=0.1) == []
        p.send_signal(signal.SIGINT)
        assert _read_line(p, sel, deadline) == "run returned %d %d" % (
            len(payloads), len(payloads))
        assert _read_line(p, sel, deadline) == "closed True"
        rc = p.wait(10)
        err = p.stderr.read()
    finally:
        sel.close()
        if p.poll() is None:
            p.kill()
            p.wait(5)
        p.stdout.close()
        p.stderr.close()
    assert rc == 0, err
    assert "Traceback" not in err, err
    got = sorted(_recv(r))
    assert got == (payloads if default == "ACCEPT" else [])
    assert _waiting(ns) == 0


# -- close() -----------------------------------------------------------------------------------------


def test_close_settles_pending_and_unread(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    q = NfQueue(QNUM, netns=ns.name)
    try:
        _send(s, [b"pend0", b"pend1", b"pend2"])
        kept = []
        q.run(lambda pkt: kept.append(pkt), timeout=0.3)   # None: deferred
        assert len(kept) == 3 and q.stats.pending == 3
        _send(s, [b"unread0", b"unread1", b"unread2"])      # left in the socket
        assert _waiting(ns) == 6
        assert _recv(r, quiet=0.1) == []
    finally:
        q.close()
    # had close() not given them a verdict, the unbind would have dropped them
    assert sorted(_recv(r)) == sorted([b"pend0", b"pend1", b"pend2",
                                       b"unread0", b"unread1", b"unread2"])
    assert _waiting(ns) == 0
    assert all(p.has_verdict for p in kept)
    q.close()   # twice is fine


def test_close_without_run_default_accept(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, [b"n0", b"n1", b"n2", b"n3"])
        assert _waiting(ns) == 4
    assert q.closed
    assert sorted(_recv(r)) == [b"n0", b"n1", b"n2", b"n3"]
    assert _waiting(ns) == 0


def test_close_default_drop(ns):
    _queue_rule(ns)
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT + 1),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    r, s = _receiver(ns), _sender(ns)
    r2 = _receiver(ns, PORT + 1)
    q = NfQueue(QNUM, netns=ns.name, default_verdict=Verdict.DROP)
    _send(s, [b"d0", b"d1"])
    q.run(lambda pkt: None, timeout=0.3)
    _send(s, [b"d2"])
    _send(s, [b"still-here"], port=PORT + 1)
    assert _waiting(ns) == 4
    q.close()
    assert _recv(r) == []
    assert _recv(r2) == []
    assert _waiting(ns) == 0


# -- iteration and asyncio ---------------------------------------------------------------------------


def test_iteration_with_user_verdicts(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"it-acc0", b"it-drop1", b"it-acc2", b"it-drop3", b"it-acc4"]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        n = 0
        stopper = threading.Timer(5, q.stop)
        stopper.start()
        try:
            for pkt in q:
                if b"acc" in _udp_data(pkt.payload):
                    pkt.accept()
                else:
                    pkt.drop()
                n += 1
                if n == len(payloads):
                    break
        finally:
            stopper.cancel()
        assert n == len(payloads)
        assert q.stats.pending == 0
        assert sorted(_recv(r)) == [b"it-acc0", b"it-acc2", b"it-acc4"]


def test_async_iteration_with_user_verdicts(ns):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"as-acc0", b"as-drop1", b"as-acc2", b"as-acc3"]

    with NfQueue(QNUM, netns=ns.name) as q:
        async def consume():
            n = 0
            # two packets wait before the iteration starts, two come while
            # the loop is waiting for the reader
            _send(s, payloads[:2])
            async for pkt in q:
                if b"acc" in _udp_data(pkt.payload):
                    pkt.accept()
                else:
                    pkt.drop()
                n += 1
                if n == 2:
                    loop = asyncio.get_running_loop()
                    loop.call_later(0.05, _send, s, payloads[2:])
                if n == len(payloads):
                    break
            return n

        n = asyncio.run(asyncio.wait_for(consume(), 5))
        assert n == len(payloads)
        assert q.stats.pending == 0
        assert sorted(_recv(r)) == [b"as-acc0", b"as-acc2", b"as-acc3"]


# -- netns by name, path, fd ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["name", "path", "fd"])
def test_netns_by_name_path_fd(ns, how):
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    path = "/run/netns/" + ns.name
    fd: Optional[int] = None
    if how == "name":
        arg = ns.name
    elif how == "path":
        arg = path
    else:
        fd = arg = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with NfQueue(QNUM, netns=arg) as q:
            assert QNUM in ns.queue_proc()     # bound in the namespace
            _send(s, [b"ns-" + how.encode()])
            seen = []
            q.run(lambda pkt: (seen.append(_udp_data(pkt.payload)), Verdict.ACCEPT)[1],
                  timeout=0.5)
            assert seen == [b"ns-" + how.encode()]
            assert _recv(r) == [b"ns-" + how.encode()]
        assert QNUM not in ns.queue_proc()     # unbound by close()
    finally:
        if fd is not None:
            os.close(fd)


# -- leaving an iteration early ------------------------------------------------------------


def test_break_out_of_iteration_keeps_the_rest_of_the_batch(ns):
    """Packets read in the same batch as the one the loop broke on are handed
    out by the next loop (to run() here), not lost in the kernel queue."""
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"it-%d" % i for i in range(5)]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        deadline = time.monotonic() + 5
        while _waiting(ns) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        (first,) = _collect(q, 1)
        first.accept()
        assert q.stats.packets == 5  # the whole batch was read from the socket
        rest: List[bytes] = []

        def handler(pkt):
            rest.append(_udp_data(pkt.payload))
            if len(rest) == 4:
                q.stop()
            return Verdict.ACCEPT

        q.run(handler, timeout=2)
        assert [_udp_data(first.payload)] + rest == payloads
        assert sorted(_recv(r)) == sorted(payloads)
        assert q.stats.pending == 0 and _waiting(ns) == 0


def test_mixed_plain_and_marked_verdicts_keep_the_order(ns):
    """A verdict with a mark does not overtake the plain verdicts given before
    it in the same batch: the kernel reinjects the packets in call order."""
    _queue_rule(ns)
    r, s = _receiver(ns), _sender(ns)
    payloads = [b"order-%d" % i for i in range(8)]
    with NfQueue(QNUM, netns=ns.name) as q:
        _send(s, payloads)
        deadline = time.monotonic() + 5
        while _waiting(ns) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = []

        def handler(pkt):
            seen.append(pkt.id)
            if len(seen) % 2 == 0:
                pkt.accept(mark=7)
                return None
            return Verdict.ACCEPT

        q.run(handler, timeout=0.5)
        assert len(seen) == len(payloads)  # all were queued before run(): one batch
        assert _recv(r) == payloads


def test_rewrite_completes_checksums_the_kernel_left_to_the_device(ns, more_ns):
    """Locally sent UDP leaves its checksum to the device (csum_notready,
    with GSO on by default).  The kernel takes a rewritten payload's checksum
    as final, so nfbind completes it: a packet echoed unchanged, and one
    changed in place with the received checksum field, both arrive at a peer
    that verifies checksums, in a namespace over veth."""
    from helpers.netns import veth

    peer = more_ns()
    veth(ns, peer, "va", "vb")
    ns.run("ip", "addr", "add", "10.99.4.1/24", "dev", "va")
    ns.run("ip", "link", "set", "va", "up")
    peer.run("ip", "addr", "add", "10.99.4.2/24", "dev", "vb")
    peer.run("ip", "link", "set", "vb", "up")
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    r = peer.socket()
    _SOCKETS.append(r)
    r.bind(("10.99.4.2", PORT))
    s = ns.socket()
    _SOCKETS.append(s)


    def errors() -> int:
        """The peer's UDP InCsumErrors counter."""
        names, values = [line.split() for line in peer.run("cat", "/proc/net/snmp").splitlines()
                         if line.startswith("Udp:")]
        return int(values[names.index("InCsumErrors")])

    before = errors()
    seen = []
    with NfQueue(QNUM, netns=ns.name) as q:
        for data in (b"echo me unchanged", b"change me in place"):
            s.sendto(data, ("10.99.4.2", PORT))

        def handler(pkt):
            seen.append(pkt.csum_notready)
            ip = pkt.payload
            if ip.endswith(b"unchanged"):
                pkt.accept(payload=ip)
            else:
                pkt.accept(payload=ip.replace(b"change me", b"CHANGED!!"))

        q.run(handler, timeout=1.0)
    assert seen == [True, True], "the device was expected to own the checksums"
    assert sorted(_recv(r)) == [b"CHANGED!! in place", b"echo me unchanged"]
    assert errors() == before
