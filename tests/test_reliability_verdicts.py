# SPDX-License-Identifier: GPL-2.0-or-later
"""Exactly one verdict per packet, whatever happens: the regression tests.

Each test drives NfQueue (and NfLog where it applies) against the real
kernel in a throw-away namespace into a situation that once lost or changed
a verdict, and accounts for every packet: what arrived (with which payload
and mark), what the kernel still holds (``waiting`` in
/proc/net/netfilter/nfnetlink_queue, read before ``close()``, which would
otherwise hide a packet left without a verdict by giving it the default
one), and nfbind's counters.

* a process forked after binding: the exiting parent (or child) no longer
  unbinds the queue or group the other one serves;
* ``drain()``, ``run()`` or iteration from inside a handler: refused with a
  clear error, the outer batch's verdicts reach the right packets;
* ``configure()`` from inside a handler: the batch keeps its verdicts;
* KeyboardInterrupt anywhere in the loop (a tracer raising it before each
  bytecode of nfbind and of the handler in turn; a SIGALRM storm): no
  verdict changes, none is lost, none is sent twice;
* ``verdict_batch()`` from inside a handler: the packet being handled is
  settled in nfbind's books too, and verdicts decided before keep their value;
* handler results that are no verdict (1.0, Decimal, Fraction, a list,
  True ...): a handler error naming the value, the rest of the batch goes on;
* a corrupt datagram among good ones: only it is skipped (and counted);
* close() under a stream: fail-open is set before the queue stops taking
  packets, so none arriving in between is dropped.
"""
from __future__ import annotations

import enum
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest

import nfbind
from nfbind import NfLog, NfQueue, Verdict, VerdictError
from nfbind._core import lib as core_lib
from nfbind._nfqueue import ffi as q_ffi, lib as q_lib
from nfbind._nflog import ffi as log_ffi, lib as log_lib

from helpers.packets import udp_data
from helpers.procs import SRC
from helpers.report import fault_report

pytestmark = pytest.mark.integration

PORT = 6161
QNUM = 61
GROUP = 62
MARK = 0x2A
NFBIND_DIR = os.path.dirname(os.path.abspath(nfbind.__file__))
FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
NLMSG = struct.Struct("=IHHII")


# -- the namespace's plumbing --------------------------------------------------------


class Net:
    """Queue rule (mangle INPUT, so an accepted packet's mark reaches the
    socket), a receiver with SO_RCVMARK and a sender, in ``ns``."""

    def __init__(self, ns, qnum: int = QNUM, port: int = PORT, bypass: bool = False,
                 rule: bool = True) -> None:
        self.ns = ns
        self.qnum = qnum
        self.port = port
        if rule:
            ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", str(port),
                        "-j", "NFQUEUE", "--queue-num", str(qnum),
                        *(["--queue-bypass"] if bypass else []))
        self.rx = ns.socket()
        self.rx.setsockopt(socket.SOL_SOCKET, core_lib.SO_RCVBUFFORCE, 16 << 20)
        self.rx.setsockopt(socket.SOL_SOCKET, core_lib.SO_RCVMARK, 1)
        self.rx.bind(("127.0.0.1", port))
        self.tx = ns.socket()
        self.tx.bind(("127.0.0.1", 0))

    def send(self, payloads) -> None:
        for p in payloads:
            self.tx.sendto(p, ("127.0.0.1", self.port))

    def recv(self, want: int, limit: float = 5.0, quiet: float = 0.05) -> Dict[bytes, int]:
        """What arrives (payload -> mark), until ``want`` datagrams came and
        then ``quiet`` s passed without more (or ``limit`` s in all)."""
        out: Dict[bytes, int] = {}
        deadline = time.monotonic() + limit
        space = socket.CMSG_SPACE(4)
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            self.rx.settimeout(max(0.001, min(left, quiet if len(out) >= want else left)))
            try:
                data, anc, _, _ = self.rx.recvmsg(70000, space)
            except (socket.timeout, BlockingIOError):
                if len(out) >= want:
                    break
                continue
            mark = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == core_lib.SO_MARK:
                    mark = int.from_bytes(value[:4], sys.byteorder)
            assert data not in out, "%r arrived twice" % data
            out[data] = mark
        return out

    def waiting(self) -> int:
        row = self.ns.queue_proc().get(self.qnum)
        return 0 if row is None else row["waiting"]

    def row(self) -> dict:
        return self.ns.queue_proc().get(self.qnum) or {}

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


@pytest.fixture
def net(ns):
    n = Net(ns)
    yield n
    n.close()


def with_udp_data(ip: bytes, data: bytes) -> bytes:
    """The IPv4/UDP packet ``ip`` carrying ``data`` instead (lengths and the
    IP checksum fixed, UDP checksum 0)."""
    ihl = (ip[0] & 0x0F) * 4
    hdr = bytearray(ip[:ihl])
    struct.pack_into("!HH", hdr, 2, ihl + 8 + len(data), 0)
    struct.pack_into("!H", hdr, 10, 0)
    s = sum(struct.unpack("!%dH" % (ihl // 2), bytes(hdr)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr) + ip[ihl:ihl + 4] + struct.pack("!HH", 8 + len(data), 0) + data


# -- 1: fork after binding ----------------------------------------------------------------

_FORK = textwrap.dedent("""
    import os, sys
    from nfbind import NfLog, NfQueue, Verdict

    kind, num, n, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    obj = NfQueue(num) if kind == "queue" else NfLog(num)
    r, w = os.pipe()
    pid = os.fork()
    # who serves: the child after its parent exited (daemonizing), or the
    # parent after its child exited
    serving = (pid == 0) == how.startswith("parent-exits")
    if not serving:
        os.close(r)
        if pid:
            print(pid, flush=True)
        if how.endswith("close"):
            obj.close()
        sys.exit(0)     # at exit the interpreter closes what is left
    os.close(w)
    if pid:
        print(pid, flush=True)
        os.waitpid(pid, 0)
    else:
        os.read(r, 1)       # EOF: the parent has exited
    got = []

    def handler(pkt):
        got.append(pkt)
        if len(got) == n:
            obj.stop()
        return Verdict.ACCEPT if kind == "queue" else None

    print("serving", flush=True)
    obj.run(handler, timeout=10)
    print(len(got), flush=True)
    obj.close()
""")


def _read_line(p: subprocess.Popen, timeout: float = 15) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "no line from the process in time"
    line = p.stdout.readline()
    assert line, "the process ended early: %s" % p.stderr.read()
    return line.strip()


@pytest.mark.parametrize("kind", ["queue", "log"])
@pytest.mark.parametrize("how", ["parent-exits", "parent-exits-close", "child-exits-close",
                                 "child-exits"])
def test_fork_after_binding_keeps_the_binding(ns, tmp_path, kind, how):
    """Bind, fork, and one of the two processes exits (closing its copy, or
    letting the interpreter do it): the other one still gets every packet,
    and the kernel holds none of them at the end."""
    n = 10
    if kind == "queue":
        net = Net(ns)
    else:
        ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                    "-j", "NFLOG", "--nflog-group", str(GROUP))
        net = Net(ns, rule=False)
    script = tmp_path / "fork.py"
    script.write_text(_FORK)
    p = ns.popen("env", "PYTHONPATH=" + SRC, sys.executable, str(script), kind,
                 str(QNUM if kind == "queue" else GROUP), str(n), how,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = None
    try:
        other = int(_read_line(p))
        assert _read_line(p) == "serving"
        payloads = [b"fork-%d" % i for i in range(n)]
        net.send(payloads)
        assert _read_line(p) == str(n)
        rc = p.wait(15)
        err = p.stderr.read()
        assert rc == 0 and "Traceback" not in err, err
        if kind == "queue":
            assert sorted(net.recv(n)) == sorted(payloads)
            assert net.waiting() == 0
        else:
            assert len(net.recv(n)) == n
    finally:
        if other is not None:
            try:
                os.kill(other, signal.SIGKILL)   # only if it is still around
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()
            p.wait(5)
        p.stdout.close()
        p.stderr.close()
        net.close()


# -- 2, 3: re-entering the loop, configure() from a handler --------------------------------


def test_loops_refused_inside_a_handler(net):
    """drain(), run() and iteration of the same queue inside its handler are
    refused with an error that says so; the outer handler's DROP stays on
    its packet, the others are accepted, nothing waits in the kernel."""
    payloads = [b"re-drop", b"re-1", b"re-2", b"re-3"]
    errors: List[str] = []
    with NfQueue(QNUM, netns=net.ns.name) as q:
        net.send(payloads)

        def inner(pkt):
            return Verdict.ACCEPT

        def handler(pkt):
            if udp_data(pkt.payload) == b"re-drop":
                for call in (lambda: q.drain(inner), lambda: q.run(inner, timeout=0.1),
                             lambda: next(iter(q))):
                    try:
                        call()
                    except RuntimeError as e:
                        errors.append(str(e))
                return Verdict.DROP
            return Verdict.ACCEPT

        q.run(handler, timeout=0.3)
        assert len(errors) == 3, errors
        assert all("inside one of its own handlers" in e for e in errors), errors
        assert sorted(net.recv(3)) == sorted(payloads[1:])
        assert net.waiting() == 0
        assert q.stats.pending == 0 and q.stats.verdict_errors == 0
        # the queue works as before afterwards
        net.send([b"re-after"])
        q.run(inner, timeout=0.3)
        assert list(net.recv(1)) == [b"re-after"]


def test_log_loops_refused_inside_a_handler(ns):
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFLOG", "--nflog-group", str(GROUP))
    tx = ns.socket()
    errors: List[str] = []
    seen = []
    try:
        with NfLog(GROUP, netns=ns.name) as log:
            for i in range(3):
                tx.sendto(b"log-%d" % i, ("127.0.0.1", PORT))

            def handler(pkt):
                seen.append(pkt)
                try:
                    log.drain(lambda p: None)
                except RuntimeError as e:
                    errors.append(str(e))

            log.run(handler, timeout=0.3)
    finally:
        tx.close()
    assert len(seen) == 3 and len(errors) == 3
    assert "NfLog" in errors[0] and "drain()" in errors[0]


def test_log_loops_refused_inside_a_handler_that_reads_fields(ns):
    """A handler that reads the hot fields gets, from its second batch on,
    packets with them filled in (another dispatcher): nesting is refused
    there as well."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFLOG", "--nflog-group", str(GROUP))
    tx = ns.socket()
    errors: List[str] = []
    kinds = []
    try:
        with NfLog(GROUP, netns=ns.name) as log:

            def handler(pkt):
                kinds.append(type(pkt))
                assert (pkt.payload_len, pkt.mark, pkt.indev, pkt.prefix) == (33, None, None, "")
                try:
                    log.drain(lambda p: None)
                except RuntimeError as e:
                    errors.append(str(e))

            for i in range(3):      # a batch each
                tx.sendto(b"log-%d" % i, ("127.0.0.1", PORT))
                deadline = time.monotonic() + 2
                while len(kinds) <= i and time.monotonic() < deadline:
                    select.select([log.fileno()], [], [], 0.1)
                    log.drain(handler)
    finally:
        tx.close()
    assert len(set(kinds)) == 2, kinds      # the lazy packet, then the filled one
    assert len(errors) == 3 and all("inside one of its own handlers" in e for e in errors)


@pytest.mark.parametrize("default", [Verdict.ACCEPT, Verdict.DROP], ids=["ACCEPT", "DROP"])
def test_configure_from_a_handler_keeps_the_batch(net, default):
    """configure(copy_range=100) from the handler resizes the receive
    buffers: the batch's verdicts still reach its packets (before, all ten
    stayed queued with pending=0, and close() gave them the default)."""
    payloads = [b"cfg-%d" % i for i in range(10)]
    with NfQueue(QNUM, netns=net.ns.name, default_verdict=default) as q:
        net.send(payloads)
        first = []

        def handler(pkt):
            if not first:
                first.append(pkt)
                q.configure(copy_range=100, max_len=2048)
            return Verdict.ACCEPT

        q.run(handler, timeout=0.3)
        assert q.copy_range == 100
        assert q.stats.packets == 10 and q.stats.pending == 0
        assert net.waiting() == 0
        assert sorted(net.recv(10)) == sorted(payloads)
        assert q.stats.verdict_errors == 0


# -- 5: verdict_batch() from a handler -----------------------------------------------------


def test_verdict_batch_inside_a_handler(net):
    """The first packet's handler returns DROP; the second's calls
    verdict_batch(its id): the DROP is sent first and stays a DROP, the
    packet being handled has its verdict in nfbind's books (has_verdict,
    pending), and a later verdict on it raises VerdictError, sending
    nothing."""
    payloads = [b"vb-drop", b"vb-batch", b"vb-after"]
    seen: Dict[str, Any] = {}
    with NfQueue(QNUM, netns=net.ns.name) as q:
        net.send(payloads)

        def handler(pkt):
            d = udp_data(pkt.payload)
            if d == b"vb-drop":
                return Verdict.DROP
            if d == b"vb-batch":
                seen["settled"] = q.verdict_batch(pkt.id, Verdict.ACCEPT)
                seen["has_verdict"] = pkt.has_verdict
                seen["pending"] = q.stats.pending
                seen["pkt"] = pkt
                return None
            return Verdict.ACCEPT

        q.run(handler, timeout=0.3)
        assert seen["has_verdict"] is True
        assert seen["settled"] == 1
        # inside the handler, only vb-after (received, not handed out yet) waited
        assert seen["pending"] == 1 and q.stats.pending == 0
        with pytest.raises(VerdictError):
            seen["pkt"].drop()
        assert sorted(net.recv(2)) == [b"vb-after", b"vb-batch"]
        assert net.waiting() == 0
        q.drain(lambda p: Verdict.ACCEPT)   # read the kernel's answers, if any
        assert q.stats.verdict_errors == 0


# -- 8: handler results that are no verdict ------------------------------------------------


class Other(enum.IntEnum):
    ONE = 1


BAD_RESULTS = [1.0, Decimal(1), Fraction(1), [1], (1,), True, False, "1", b"\x01",
               int(Verdict.QUEUE), 7, -1, 2**40, object()]


@pytest.mark.parametrize("value", BAD_RESULTS, ids=lambda v: type(v).__name__ + ":" + repr(v)[:12])
def test_handler_result_that_is_no_verdict(net, value):
    """A handler returning something that is no verdict: a handler error
    whose message names the value, on_error (DROP here) for that packet, the
    rest of the batch handled in the same run() and accepted."""
    payloads = [b"res-0", b"res-bad", b"res-2", b"res-3"]
    calls = []
    with NfQueue(QNUM, netns=net.ns.name, on_error=Verdict.DROP) as q:
        net.send(payloads)

        def handler(pkt):
            d = udp_data(pkt.payload)
            calls.append(d)
            return value if d == b"res-bad" else Verdict.ACCEPT

        with pytest.raises((TypeError, ValueError)) as ei:
            q.run(handler, timeout=0.3)
        assert repr(value) in str(ei.value)
        assert calls == payloads
        assert q.stats.handler_errors == 1 and q.stats.pending == 0
        assert sorted(net.recv(3)) == [b"res-0", b"res-2", b"res-3"]
        assert net.waiting() == 0
        assert q.stats.verdict_errors == 0


def test_handler_result_int_like_verdicts(net):
    """Values that are verdicts whatever their int type (another IntEnum,
    a plain int) are taken as such."""
    payloads = [b"ok-0", b"ok-1"]
    results = iter([Other.ONE, int(Verdict.DROP)])
    with NfQueue(QNUM, netns=net.ns.name) as q:
        net.send(payloads)
        q.run(lambda pkt: next(results), timeout=0.3)
        assert q.stats.handler_errors == 0
        assert list(net.recv(1)) == [b"ok-0"]
        assert net.waiting() == 0


# -- 4: KeyboardInterrupt anywhere ---------------------------------------------------------

#: what the handler does with the j-th packet of a round, and its fate
PLAN = ["accept", "drop", "mark", "rewrite", "defer", "drop-call", "accept-call"]
FATE = {"accept": "plain", "drop": None, "mark": "mark", "rewrite": "rewritten",
        "defer": "plain", "drop-call": None, "accept-call": "plain"}


class Round:
    """One round of packets through a queue, the handler that decides them
    by PLAN, and the check of what arrived."""

    def __init__(self, q: NfQueue, net: Net, tag: str, n: int = len(PLAN)) -> None:
        self.q = q
        self.net = net
        self.payloads = [b"%s-%03d-" % (tag.encode(), j) + PLAN[j % len(PLAN)].encode()
                         for j in range(n)]
        self.index = {p: j for j, p in enumerate(self.payloads)}
        self.pkts: Dict[int, Any] = {}     # j -> the packet as last handed out
        self.deferred: Dict[int, Any] = {}
        self.calls = 0

    def handler(self, pkt):
        self.calls += 1
        data = udp_data(pkt.payload)
        j = self.index[data]
        self.pkts[j] = pkt
        what = PLAN[j % len(PLAN)]
        if len(self.pkts) == len(self.payloads):
            self.q.stop()
        if what == "accept":
            return Verdict.ACCEPT
        if what == "drop":
            return Verdict.DROP
        if what == "mark":
            pkt.accept(mark=MARK)
        elif what == "rewrite":
            pkt.accept(payload=with_udp_data(pkt.payload, data.upper()))
        elif what == "defer":
            self.deferred[j] = pkt
        elif what == "drop-call":
            pkt.drop()
        else:
            pkt.verdict(Verdict.ACCEPT)
        return None

    def work(self) -> bool:
        """One go at the round: the loop (while a packet was not handed out,
        or its handler did not finish), then the deferred verdicts.  True
        once every packet has its verdict."""
        n = len(self.payloads)
        pkts, deferred = self.pkts, self.deferred
        if any(j not in pkts or not (pkts[j].has_verdict or j in deferred) for j in range(n)):
            self.q.run(self.handler, timeout=0.5)
        for pkt in list(deferred.values()):
            if not pkt.has_verdict:
                pkt.accept()
        return all(j in pkts and pkts[j].has_verdict for j in range(n))

    def check(self, quiet: float = 0.05) -> None:
        """Every packet met the handler's verdict; none waits anywhere (a
        packet of this round arriving late shows in the next round)."""
        q, net = self.q, self.net
        assert q.stats.pending == 0
        assert net.waiting() == 0, net.row()
        want = {}
        for j, p in enumerate(self.payloads):
            fate = FATE[PLAN[j % len(PLAN)]]
            if fate == "plain":
                want[p] = 0
            elif fate == "mark":
                want[p] = MARK
            elif fate == "rewritten":
                want[p.upper()] = 0
        got = net.recv(len(want), quiet=quiet)
        assert got == want, (sorted(set(got) ^ set(want)), self.calls)


def _interrupting_tracer(at: int, handler_code, fired: List[int]):
    """A sys.settrace function that raises KeyboardInterrupt before the
    ``at``-th bytecode run in nfbind's modules or in the handler (counting
    from 0), once."""
    count = [0]

    def local(frame, event, arg):
        if event == "opcode":
            if count[0] == at:
                fired.append((frame.f_code.co_name, frame.f_lineno, frame.f_lasti))
                sys.settrace(None)
                raise KeyboardInterrupt
            count[0] += 1
        return local

    def tracer(frame, event, arg):
        code = frame.f_code
        if code is handler_code or code.co_filename.startswith(NFBIND_DIR):
            frame.f_trace_opcodes = True
            return local(frame, event, arg)
        return None

    return tracer, count


def test_keyboard_interrupt_before_every_bytecode(net, soak):
    """KeyboardInterrupt before each bytecode in turn of the loop, the
    verdict machinery and the handler (one per round; the caller restarts
    run() and retries its deferred verdict, as a program that survives
    Ctrl-C does): every packet gets the verdict its handler decided, none is
    left waiting in the kernel without one (read before close()), none gets
    two (the kernel refused nothing), and nfbind's books match."""
    stride = 1 if soak.full else 3
    deadline = time.monotonic() + (1200 if soak.full else 240)
    with NfQueue(QNUM, netns=net.ns.name) as q:
        at = 0
        rounds = 0
        calls = [0]
        while True:
            assert time.monotonic() < deadline, "stopped at bytecode %d" % at
            r = Round(q, net, "t%d" % at)
            net.send(r.payloads)
            fired: List[int] = []
            tracer, count = _interrupting_tracer(at, Round.handler.__code__, fired)
            sys.settrace(tracer)
            try:
                done = r.work()
            except KeyboardInterrupt:
                done = False
            finally:
                sys.settrace(None)
            tries = 0
            while not done:
                tries += 1
                assert tries < 20, "round %d does not finish" % at
                done = r.work()
            calls[0] += r.calls
            try:
                r.check(quiet=0.001)
            except AssertionError as e:
                raise AssertionError("interrupted at %r (bytecode %d): %s" % (fired, at, e))
            rounds += 1
            if not fired:   # the round ran to its end: every bytecode was tried
                break
            at += stride
        assert q.stats.verdict_errors == 0
        assert q.stats.packets == rounds * len(PLAN)
        fault_report("verdicts.interrupt_every_bytecode", bytecodes=at, stride=stride,
                     rounds=rounds, packets=q.stats.packets, handler_calls=calls[0])
    assert at > 200, "only %d bytecodes: the tracer saw too little" % at


def test_keyboard_interrupt_storm(net, soak):
    """SIGALRM raising KeyboardInterrupt every 1 ms (only while nfbind's code
    or the handler runs, as a Ctrl-C in the loop would) while the caller
    restarts run() and retries its deferred verdicts; a sender streams
    meanwhile.  Every packet gets its handler's verdict, the kernel holds
    none without one before close(), and none was verdicted twice."""
    n = 21000 if soak.full else 5000
    r = Round(None, net, "storm", n=n)  # type: ignore[arg-type]
    interrupts = [0, 0]
    handler_code = Round.handler.__code__

    def on_alarm(signum, frame):
        f = frame
        if f is not None and (f.f_code is handler_code or
                              f.f_code.co_filename.startswith(NFBIND_DIR)):
            interrupts[0] += 1
            raise KeyboardInterrupt
        interrupts[1] += 1

    sent = [0]
    stop = threading.Event()

    def sender():
        dest = ("127.0.0.1", net.port)
        for i, p in enumerate(r.payloads):
            # at most 256 packets ahead of the handler
            while i - len(r.pkts) > 256 and not stop.is_set():
                time.sleep(0.0005)
            if stop.is_set():
                return
            net.tx.sendto(p, dest)
            sent[0] = i + 1

    with NfQueue(QNUM, netns=net.ns.name) as q:
        r.q = q
        old = signal.signal(signal.SIGALRM, on_alarm)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        deadline = time.monotonic() + (900 if soak.full else 120)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        try:
            while time.monotonic() < deadline:
                try:
                    if r.work() and sent[0] == n:
                        break
                except KeyboardInterrupt:
                    pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
            stop.set()
            t.join(10)
        assert sent[0] == n and len(r.pkts) == n, (sent[0], len(r.pkts))
        r.check()
        assert q.stats.verdict_errors == 0
        assert q.stats.packets == n
        assert q.stats.overruns == 0
    assert interrupts[0] > 50, interrupts


# -- 13: a corrupt datagram among good ones ------------------------------------------------


def _seed(target: str, name: str) -> bytes:
    return (FUZZ / "corpus" / target / name).read_bytes()


def _liar(msg: bytes) -> bytes:
    """``msg`` with an nlmsg_len claiming more than the datagram holds."""
    return struct.pack("=I", len(msg) + 4096) + msg[4:]


class PairRx:
    """nfb_q_* / nfb_log_* reading a datagram socket pair."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.r, self.w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.r.setblocking(False)
        if kind == "queue":
            self.ffi, self.lib = q_ffi, q_lib
            self.c = q_ffi.gc(q_lib.nfb_q_new(self.r.fileno(), 0, 8192, 8), q_lib.nfb_q_free)
        else:
            self.ffi, self.lib = log_ffi, log_lib
            self.c = log_ffi.gc(log_lib.nfb_log_new(self.r.fileno(), 8192, 8, -1),
                                log_lib.nfb_log_free)

    def recv(self) -> int:
        if self.kind == "queue":
            n = q_lib.nfb_q_recv(self.c)
            if n > 0:
                q_lib.nfb_q_take(self.c)
            return n
        return log_lib.nfb_log_recv(self.c)

    def close(self) -> None:
        self.r.close()
        self.w.close()


@pytest.mark.parametrize("kind", ["queue", "log"])
def test_corrupt_datagram_costs_only_itself(kind):
    """Good, corrupt (a lying nlmsg_len), good, good, as four datagrams read
    in one receive: three packets, one datagram counted as malformed (it
    used to end the walk of the whole batch)."""
    target = "nfqueue" if kind == "queue" else "nflog"
    good = [_seed(target, "packet-%d" % i) for i in range(3)]
    rx = PairRx(kind)
    try:
        for d in (good[0], _liar(good[1]), good[1], good[2]):
            rx.w.send(d)
        assert rx.recv() == 3
        assert rx.c.rx.malformed == 1
        assert rx.recv() == 0
    finally:
        rx.close()


def test_corrupt_datagram_while_configuring():
    """The same batch read by a configuration's wait for its answers: the
    packets after the corrupt datagram are kept for the next receive too."""
    good = [_seed("nfqueue", "packet-%d" % i) for i in range(3)]
    rx = PairRx("queue")
    try:
        for d in (good[0], _liar(good[1]), good[1], good[2]):
            rx.w.send(d)
        cfg = q_ffi.new("struct nfb_qcfg *", dict(copy_mode=-1, max_len=100))
        assert q_lib.nfb_q_config(rx.c, cfg, 0, q_ffi.new("int *")) < 0  # no answer
        assert rx.recv() == 3
        assert rx.c.rx.malformed == 1
    finally:
        rx.close()


@pytest.mark.parametrize("configure", [False, True], ids=["run", "configure-then-run"])
def test_corrupt_datagram_in_a_real_queue(net, configure):
    """A corrupt datagram injected into the queue's netlink socket between
    real packets (a root process can unicast to it): every real packet is
    handed out and accepted in the same loop, none waits in the kernel,
    stats.malformed counts the bad one."""
    with NfQueue(QNUM, netns=net.ns.name) as q:
        with socket.socket(fileno=os.dup(q.fileno())) as qs:
            portid = qs.getsockname()[0]
        inj = net.ns.socket(socket.AF_NETLINK, socket.SOCK_RAW, core_lib.NETLINK_NETFILTER)
        try:
            net.send([b"cd-0", b"cd-1"])
            bad = _liar(_seed("nfqueue", "packet-0"))
            inj.sendto(bad, (portid, 0))
            net.send([b"cd-2", b"cd-3", b"cd-4"])
        finally:
            inj.close()
        if configure:
            q.configure(max_len=1000)
        seen = []
        q.run(lambda pkt: seen.append(pkt) or Verdict.ACCEPT, timeout=0.3)
        assert len(seen) == 5
        assert q.stats.malformed == 1
        assert net.waiting() == 0
        assert sorted(net.recv(5)) == [b"cd-%d" % i for i in range(5)]


# -- close() under a stream (issue: a packet dropped between two settings) ----------------


def test_close_under_a_stream_drops_nothing(ns, soak):
    """Bind, take a few packets, close, again and again while a sender
    streams (the rule has --queue-bypass, so what comes while no queue is
    bound passes): every datagram that reached the queue's rule arrives,
    except those the kernel counted as dropped while a queue was bound (its
    counters, read before each close).  close() used to stop the queue
    (max_len 0) before setting fail-open: a packet arriving between the two
    requests was dropped by the kernel and counted only in the queue's own
    counter, which the unbind then destroyed."""
    net = Net(ns, bypass=True)
    ns.iptables("-t", "mangle", "-R", "INPUT", "1", "-p", "udp", "--dport", str(PORT),
                "-m", "comment", "--comment", "queued",
                "-j", "NFQUEUE", "--queue-num", str(QNUM), "--queue-bypass")
    cycles = 2000 if soak.full else 300
    stop = threading.Event()
    sent = [0]

    def sender():
        dest = ("127.0.0.1", net.port)
        i = 0
        while not stop.is_set():
            try:
                net.tx.sendto(b"cl-%07d" % i, dest)
            except OSError:
                break
            i += 1
            sent[0] = i
            if i % 16 == 0:
                time.sleep(0.0005)

    got: Set[bytes] = set()

    def receiver():
        net.rx.settimeout(1.0)
        while True:
            try:
                got.add(net.rx.recv(100))
            except socket.timeout:
                if stop.is_set():
                    return

    udp_before = _udp_in_errors(ns)
    lo_before = _lo_rx_dropped(ns)
    counted = 0     # dropped by the kernel while a queue was bound
    ts = [threading.Thread(target=sender, daemon=True),
          threading.Thread(target=receiver, daemon=True)]
    for t in ts:
        t.start()
    try:
        for _ in range(cycles):
            with NfQueue(QNUM, netns=ns.name) as q:
                # a few packets, then close: run()'s timeout counts idle
                # time only, and the stream may leave no 2 ms gap at all
                taken = [0]

                def take(p: Any, q: NfQueue = q, taken: List[int] = taken) -> Verdict:
                    taken[0] += 1
                    if taken[0] >= 8:
                        q.stop()
                    return Verdict.ACCEPT

                q.run(take, timeout=0.002)
                row = net.row()
                counted += row["queue_dropped"] + row["user_dropped"]
    finally:
        stop.set()
        ts[0].join(10)
        ts[1].join(30)
        net.close()
    assert sent[0] > cycles
    assert _udp_in_errors(ns) == udp_before, "the receiver's socket overflowed"
    queued = _counter(ns, "mangle", "INPUT", "queued")
    assert queued + _lo_rx_dropped(ns) - lo_before == sent[0]
    missing = queued - len(got) - counted
    assert missing == 0, dict(sent=sent[0], reached_the_queue=queued, arrived=len(got),
                              counted_dropped=counted)


def _lo_rx_dropped(ns) -> int:
    return int(ns.run("cat", "/sys/class/net/lo/statistics/rx_dropped").strip())


def _counter(ns, table: str, chain: str, comment: str) -> int:
    out = ns.run("iptables", "-w", "-t", table, "-L", chain, "-v", "-n", "-x")
    for line in out.splitlines():
        if "/* %s */" % comment in line:
            return int(line.split()[0])
    raise AssertionError("no rule %r in %s/%s" % (comment, table, chain))


def _udp_in_errors(ns) -> int:
    lines = [l.split() for l in ns.run("cat", "/proc/net/snmp").splitlines()
             if l.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["InErrors"])


def _config_requests(cfg_fields: dict) -> List[Set[int]]:
    """The attribute types of each request nfb_q_config() sends for
    ``cfg_fields`` (read from a socket pair; nobody answers)."""
    rx = PairRx("queue")
    try:
        cfg = q_ffi.new("struct nfb_qcfg *", cfg_fields)
        q_lib.nfb_q_config(rx.c, cfg, 0, q_ffi.new("int *"))
        data = rx.w.recv(65536)
    finally:
        rx.close()
    out = []
    off = 0
    while off + NLMSG.size <= len(data):
        ln = NLMSG.unpack_from(data, off)[0]
        types = set()
        a = off + NLMSG.size + 4
        while a + 4 <= off + ln:
            alen, atype = struct.unpack_from("=HH", data, a)
            types.add(atype & 0x3FFF)
            a += (alen + 3) & ~3
        out.append(types)
        off += (ln + 3) & ~3
    return out


def test_close_sets_fail_open_before_it_stops_the_queue():
    """What close() asks of the kernel: fail-open and max_len 0 in one
    configuration go out as two requests, fail-open first (the kernel
    applies them in turn; a packet finding the queue full in between meets
    fail-open, not a drop)."""
    reqs = _config_requests(dict(copy_mode=-1, max_len=0,
                                 flags_mask=core_lib.NFQA_CFG_F_FAIL_OPEN,
                                 flags=core_lib.NFQA_CFG_F_FAIL_OPEN))
    assert reqs == [{q_lib.NFQA_CFG_FLAGS, q_lib.NFQA_CFG_MASK},
                    {q_lib.NFQA_CFG_QUEUE_MAXLEN}]


def test_bind_request_carries_the_copy_mode():
    """The kernel creates a bound queue with copy mode NONE and drops,
    counting it nowhere, a packet that reaches it before its copy mode is
    set: the bind request carries the copy mode itself, so no other request
    stands between the two."""
    reqs = _config_requests(dict(cmd=q_lib.NFQNL_CFG_CMD_BIND, copy_mode=2,
                                 copy_range=0xFFFF, max_len=1024))
    assert reqs[0] == {q_lib.NFQA_CFG_CMD, q_lib.NFQA_CFG_PARAMS}
    assert all(q_lib.NFQA_CFG_PARAMS not in r for r in reqs[1:])
    # a change of copy mode alone is a request of its own
    assert _config_requests(dict(copy_mode=1, copy_range=0, max_len=-1)) == [
        {q_lib.NFQA_CFG_PARAMS}]
