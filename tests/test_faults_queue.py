# SPDX-License-Identifier: GPL-2.0-or-later
"""NFQUEUE under load and faults, with every packet accounted for.

Each scenario streams numbered UDP datagrams over loopback inside a fresh
namespace through an NFQUEUE rule, and checks, sequence number by sequence
number, that

    sent == arrived + dropped by a verdict + dropped by the kernel (counted)
            [+ lost at a SIGKILL, explained]

with nothing unexplained: the sender counts what it sent, a receiver thread
records which numbers arrived with which tag and packet mark (SO_RCVMARK),
the consumer records the verdict it gave each number, and the kernel's own
figures (/proc/net/netfilter/nfnetlink_queue queue_dropped and user_dropped,
the namespace's UDP receive errors in /proc/net/snmp, loopback rx drops)
cover the rest.  The NFQUEUE rule sits in mangle INPUT: a packet accepted
by a verdict goes on to the next table, not to the next rule of the same
chain, so the rules that count marks are in the filter table.

Scenarios: seeded random verdicts (accept, drop, accept with a mark, accept
with a rewritten payload); a handler that raises on 10% of packets; SIGINT
to a consumer process mid-stream; close() with packets pending; deferred
verdicts from four threads; SIGKILL of a consumer process, fail-open and
rebinding.  Sizes are bounded in ``make test`` and full under ``--soak``;
every scenario reports its figures with ``fault_report()``.
"""
from __future__ import annotations

import json
import os
import queue as queue_mod
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from nfbind import NfQueue, Verdict, VerdictError
from nfbind._nfqueue import lib

from helpers.procs import child_env, script
from helpers.report import fault_report

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PORT = 9911
MARK = 0x5A
CONSUMER = script("fault_consumer.py")

# the datagram: an 8-byte sequence number, a 4-byte tag, padding
ORIG, IGOR = b"ORIG", b"IGOR"
TAIL = ORIG + b"." * 20
DATA_LEN = 8 + len(TAIL)
SEQ = struct.Struct("!Q")
T_ORIG, T_IGOR = 1, 2  # receiver's tag codes (0: never arrived)
ACCEPTED, DROPPED = 1, 2  # fault_consumer.py's record codes


# -- the three observers ----------------------------------------------------------------------

def seq_of(payload: bytes) -> int:
    """The sequence number in a queued IPv4/UDP packet."""
    d = ((payload[0] & 15) << 2) + 8
    return int.from_bytes(payload[d:d + 8], "big")


def rewritten(payload: bytes) -> bytes:
    """The packet with its tag ORIG turned into IGOR: two aligned 16-bit
    words swapped, so the IP and UDP checksums stay valid."""
    t = ((payload[0] & 15) << 2) + 16
    return payload[:t] + payload[t + 2:t + 4] + payload[t:t + 2] + payload[t + 4:]


class Receiver(threading.Thread):
    """Reads the destination socket on its own thread while the stream runs:
    which sequence numbers arrived, how often, with which tag and mark."""

    def __init__(self, ns, n: int, port: int = PORT) -> None:
        super().__init__(daemon=True, name="receiver")
        self.sock = ns.socket()
        self.sock.setsockopt(lib.SOL_SOCKET, lib.SO_RCVBUFFORCE, 64 << 20)
        self.sock.setsockopt(lib.SOL_SOCKET, lib.SO_RCVMARK, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.count = bytearray(n)
        self.tag = bytearray(n)
        self.marks: Dict[int, int] = {}
        self.total = 0
        self.orig = 0  # arrivals still tagged ORIG (no rewriting verdict)
        self.foreign = 0  # datagrams that were not ours
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        space = socket.CMSG_SPACE(4)
        deadline = time.monotonic() + 900
        last = time.monotonic()
        sol, so_mark = lib.SOL_SOCKET, lib.SO_MARK
        try:
            while time.monotonic() < deadline:
                try:
                    data, anc, _, _ = self.sock.recvmsg(2048, space)
                except socket.timeout:
                    if self.done.is_set() and time.monotonic() - last > 1.0:
                        break
                    continue
                last = time.monotonic()
                if len(data) != DATA_LEN:
                    self.foreign += 1
                    continue
                seq = SEQ.unpack_from(data)[0]
                if seq >= len(self.count):
                    self.foreign += 1
                    continue
                self.total += 1
                self.count[seq] = min(self.count[seq] + 1, 255)
                t = data[8:12]
                self.tag[seq] = T_ORIG if t == ORIG else T_IGOR if t == IGOR else 255
                if t == ORIG:
                    self.orig += 1
                for level, kind, value in anc:
                    if level == sol and kind == so_mark:
                        m = int.from_bytes(value[:4], sys.byteorder)
                        if m:
                            self.marks[seq] = m
        except BaseException as e:  # reported by finish()
            self.error = e

    def abort(self) -> None:
        self.done.set()
        self.join(10)
        self.sock.close()

    def finish(self, timeout: float = 120) -> None:
        """Stop once the socket has been quiet for a second."""
        self.done.set()
        self.join(timeout)
        assert not self.is_alive(), "the receiver did not finish"
        self.sock.close()
        if self.error is not None:
            raise self.error
        assert self.foreign == 0, "%d datagrams that were not the test's" % self.foreign
        dup = sum(1 for c in self.count if c > 1)
        assert dup == 0, "%d sequence numbers arrived more than once" % dup


class Sender(threading.Thread):
    """Sends datagrams 0..n-1 in order and counts the ones sent.

    Flow control: it keeps at most ``window`` datagrams beyond
    ``progress()`` (the packets the consumer has finished), so the queue
    and the sockets are never flooded by accident; a wait is bounded by
    ``max_wait`` seconds.  ``pause()`` holds the stream (the seq it stopped
    at is kept in ``paused_at``), ``resume()`` lets it go on.
    """

    def __init__(self, ns, n: int, progress: Optional[Callable[[], int]], window: int = 1024,
                 max_wait: float = 5.0, port: int = PORT) -> None:
        super().__init__(daemon=True, name="sender")
        self.sock = ns.socket()
        self.n = n
        self.progress = progress
        self.window = window
        self.max_wait = max_wait
        self.port = port
        self.sent = 0
        self.failed: List[int] = []  # sendto() errors: never sent
        self.forced = 0  # sends after a max_wait timeout
        self.stopped = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self.paused_at: Optional[int] = None
        self.started_at = self.ended_at = 0.0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        dest = ("127.0.0.1", self.port)
        send = self.sock.sendto
        pack = SEQ.pack
        known = 0
        try:
            self.started_at = time.monotonic()
            for seq in range(self.n):
                if self.stopped.is_set():
                    break
                if self._pause.is_set():
                    self.paused_at = seq
                    self._paused.set()
                    self._resume.wait(300)
                    self._pause.clear()
                progress = self.progress
                if progress is not None and seq - known >= self.window:
                    known = progress()
                    until = time.monotonic() + self.max_wait
                    while seq - known >= self.window and not self.stopped.is_set():
                        if time.monotonic() > until:
                            self.forced += 1
                            break
                        time.sleep(0.0005)
                        if self.progress is None:
                            break
                        known = self.progress()
                try:
                    send(pack(seq) + TAIL, dest)
                except OSError:
                    self.failed.append(seq)
                self.sent = seq + 1
        except BaseException as e:
            self.error = e
        finally:
            self.ended_at = time.monotonic()

    def pause(self, timeout: float = 60) -> int:
        self._resume.clear()
        self._pause.set()
        assert self._paused.wait(timeout), "the sender did not pause"
        assert self.paused_at is not None
        return self.paused_at

    def resume(self) -> None:
        self._paused.clear()
        self._resume.set()

    def abort(self) -> None:
        self.stopped.set()
        self._resume.set()
        self.join(10)
        self.sock.close()

    def finish(self, timeout: float = 900) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the sender did not finish"
        self.sock.close()
        if self.error is not None:
            raise self.error

    @property
    def sent_seqs(self) -> range:
        return range(self.sent)

    @property
    def delivered(self) -> int:
        """Datagrams that left the socket (sendto() succeeded)."""
        return self.sent - len(self.failed)

    @property
    def elapsed(self) -> float:
        return max(self.ended_at - self.started_at, 1e-9)


@pytest.fixture
def threads():
    """Senders and receivers a test started: stopped at teardown, also
    when the test failed half-way."""
    started: list = []
    yield started
    for t in started:
        t.abort()


def lo_rx_dropped(ns) -> int:
    """Packets loopback dropped on receive (a full backlog) in the namespace."""
    return int(ns.run("cat", "/sys/class/net/lo/statistics/rx_dropped").strip())


def setup_rules(ns, num: int, bypass: bool = False, port: int = PORT) -> None:
    """NFQUEUE in mangle INPUT; in filter INPUT (the next table a packet
    accepted by a verdict goes through) counters of the marked and of all
    packets that passed."""
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", str(port),
                "-m", "comment", "--comment", "queued",
                "-j", "NFQUEUE", "--queue-num", str(num), *(["--queue-bypass"] if bypass else []))
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(port), "-m", "mark", "--mark",
                str(MARK), "-m", "comment", "--comment", "marked")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(port),
                "-m", "comment", "--comment", "passed")


class Kernel:
    """The kernel's side: counters read at the end of a scenario."""

    def __init__(self, ns, row: Optional[dict]) -> None:
        row = row or {}
        self.queue_dropped = row.get("queue_dropped", 0)
        self.user_dropped = row.get("user_dropped", 0)
        self.waiting = row.get("waiting", 0)
        self.id_sequence = row.get("id_sequence")
        self.udp = ns.udp_errors()
        self.lo_dropped = lo_rx_dropped(ns)
        self.queued = self._queued(ns)
        self.marked = ns.counter("INPUT", "marked")
        self.passed = ns.counter("INPUT", "passed")

    @staticmethod
    def _queued(ns) -> int:
        out = ns.run("iptables", "-w", "-t", "mangle", "-L", "INPUT", "-v", "-n", "-x")
        for line in out.splitlines():
            if "/* queued */" in line:
                return int(line.split()[0])
        raise AssertionError("no NFQUEUE rule:\n" + out)

    @property
    def overrun(self) -> int:
        return self.queue_dropped + self.user_dropped

    @property
    def udp_dropped(self) -> int:
        return self.udp["InErrors"]


def check_kernel_side(k: Kernel, sent: int, rx: Receiver) -> None:
    """What every scenario asserts of the kernel's counters."""
    assert k.lo_dropped == 0, "loopback dropped %d packets before the queue" % k.lo_dropped
    assert k.queued == sent, (k.queued, sent)
    assert k.udp["NoPorts"] == 0
    # UDP receive errors are counted (RcvbufErrors is part of InErrors) and
    # every packet that passed the filter table reached the socket or that count
    assert k.passed == rx.total + k.udp_dropped, (k.passed, rx.total, k.udp)
    assert k.udp_dropped == 0, "the receiver lost %r" % k.udp


def start_stream(ns, num: int, rx: Receiver, tx: Sender, threads: list,
                 settled: Callable[[], int]) -> Callable[[], bool]:
    """Start the receiver and the sender; return what ``run_until`` waits for:
    the sender has finished and each packet it delivered to queue ``num`` was
    settled (``settled()`` counts them) or counted as dropped by the kernel."""
    threads.append(rx)
    rx.start()
    threads.append(tx)
    tx.start()

    def done() -> bool:
        if tx.is_alive():
            return False
        row = ns.queue_proc()[num]
        return settled() + row["queue_dropped"] + row["user_dropped"] >= tx.delivered
    return done


def run_until(q: NfQueue, handler, done: Callable[[], bool], deadline: float,
              on_error=None) -> int:
    """``q.run(handler)`` until ``done()``; an exception from run() goes to
    ``on_error`` (the loop then goes on).  Returns how often run() raised."""
    raised = 0
    while not done():
        assert time.monotonic() < deadline, "the consumer did not finish in time"
        try:
            q.run(handler, timeout=0.3)
        except Exception as e:
            if on_error is None:
                raise
            on_error(e)
            raised += 1
    return raised


def equation(sent: int, arrived: int, dropped_by_verdict: int, overrun: int,
             lost_at_kill: int = 0, **extra) -> int:
    unexplained = sent - arrived - dropped_by_verdict - overrun - lost_at_kill
    assert unexplained == 0, dict(sent=sent, arrived=arrived,
                                  dropped_by_verdict=dropped_by_verdict, overrun=overrun,
                                  lost_at_kill=lost_at_kill, **extra)
    return unexplained


# -- 1: a stream with seeded random verdicts ----------------------------------------------

V_ACCEPT, V_DROP, V_MARK, V_REWRITE = 1, 2, 3, 4


def test_random_verdicts_stream(ns, soak, threads):
    """Seeded random verdicts over a long stream: accept, drop, accept with
    a mark (seen by the receiver through SO_RCVMARK and counted by a
    ``-m mark`` rule), accept with a rewritten payload (the rewritten bytes
    arrive).  Every sequence number is checked."""
    n = soak.size(20_000, 1_000_000)
    num = 31
    setup_rules(ns, num)
    plan = random.Random(0x5EED1).randbytes(n)
    given = bytearray(n)
    handled = [0]

    def handler(pkt):
        p = pkt.payload
        seq = seq_of(p)
        handled[0] += 1
        c = plan[seq] & 3
        given[seq] = c + 1 if not given[seq] else 255
        if c == 0:
            return Verdict.ACCEPT
        if c == 1:
            return Verdict.DROP
        if c == 2:
            pkt.accept(mark=MARK)
        else:
            pkt.accept(payload=rewritten(p))
        return None

    rx = Receiver(ns, n)
    with NfQueue(num, netns=ns.name) as q:
        tx = Sender(ns, n, lambda: handled[0])
        done = start_stream(ns, num, rx, tx, threads, lambda: handled[0])
        deadline = time.monotonic() + (1800 if soak.full else 120)

        run_until(q, handler, done, deadline)
        tx.finish()
        stream_time = time.monotonic() - tx.started_at
        assert q.stats.pending == 0 and q.stats.verdict_errors == 0
        row = ns.queue_proc()[num]
        stats = q.stats.as_dict()
    rx.finish()
    k = Kernel(ns, row)
    check_kernel_side(k, tx.delivered, rx)
    assert k.waiting == 0
    assert not tx.failed
    assert 255 not in given, "a packet was handled twice"
    want = {V_ACCEPT: (T_ORIG, 0), V_MARK: (T_ORIG, MARK), V_REWRITE: (T_IGOR, 0)}
    counts = {v: 0 for v in (V_ACCEPT, V_DROP, V_MARK, V_REWRITE)}
    no_verdict = 0
    wrong = []
    for seq in tx.sent_seqs:
        v = given[seq]
        if v == 0:
            no_verdict += 1
            if rx.count[seq]:
                wrong.append((seq, "arrived without a verdict"))
            continue
        counts[v] += 1
        if v == V_DROP:
            if rx.count[seq]:
                wrong.append((seq, "dropped but arrived"))
        elif (rx.tag[seq], rx.marks.get(seq, 0)) != want[v] or not rx.count[seq]:
            wrong.append((seq, v, rx.count[seq], rx.tag[seq], rx.marks.get(seq)))
    assert not wrong, wrong[:10]
    assert no_verdict == k.overrun, (no_verdict, k.queue_dropped, k.user_dropped)
    assert k.id_sequence == tx.delivered - k.queue_dropped
    assert stats["packets"] == handled[0] == tx.delivered - k.overrun
    assert k.marked == counts[V_MARK]
    assert all(counts.values()), counts
    arrived = rx.total
    dropped = counts[V_DROP]
    u = equation(tx.delivered, arrived, dropped, k.overrun)
    fault_report("queue.random_verdicts", sent=tx.delivered, arrived=arrived,
                 dropped_by_verdict=dropped, accepted=counts[V_ACCEPT],
                 accepted_marked=counts[V_MARK], accepted_rewritten=counts[V_REWRITE],
                 queue_dropped=k.queue_dropped, user_dropped=k.user_dropped,
                 overruns=stats["overruns"], handler_errors=stats["handler_errors"],
                 udp_rcv_errors=k.udp_dropped, unexplained=u,
                 elapsed=round(stream_time, 3), pps=round(tx.delivered / stream_time))


# -- 2: a handler that raises ---------------------------------------------------------------

class HandlerFault(Exception):
    pass


def test_handler_raising_on_ten_percent(ns, soak, threads):
    """A handler that raises on 10% of packets: each of those gets the
    queue's ``on_error`` verdict (ACCEPT by default: it arrives unmarked and
    untouched) and is counted in ``q.stats.handler_errors``; the rest of its
    batch still gets the handler's verdicts (accept with a mark, or drop);
    the exception comes out of run() and the consumer carries on."""
    n = soak.size(10_000, 200_000)
    num = 32
    setup_rules(ns, num)
    plan = random.Random(0x5EED2).randbytes(n)
    raises = [plan[s] % 10 == 0 for s in range(n)]
    given = bytearray(n)
    handled = [0]

    def handler(pkt):
        seq = seq_of(pkt.payload)
        handled[0] += 1
        given[seq] = given[seq] + 1
        if raises[seq]:
            raise HandlerFault(seq)
        if plan[seq] & 0x10:
            return Verdict.DROP
        pkt.accept(mark=MARK)
        return None

    seen: List[int] = []
    rx = Receiver(ns, n)
    with NfQueue(num, netns=ns.name) as q:
        assert q.on_error == Verdict.ACCEPT
        tx = Sender(ns, n, lambda: handled[0])
        done = start_stream(ns, num, rx, tx, threads, lambda: handled[0])
        deadline = time.monotonic() + (900 if soak.full else 120)

        def on_error(e):
            assert isinstance(e, HandlerFault), repr(e)
            seen.append(e.args[0])

        run_raised = run_until(q, handler, done, deadline, on_error)
        tx.finish()
        stream_time = time.monotonic() - tx.started_at
        stats = q.stats.as_dict()
        row = ns.queue_proc()[num]
        assert q.stats.pending == 0
    rx.finish()
    k = Kernel(ns, row)
    check_kernel_side(k, tx.delivered, rx)
    assert k.waiting == 0
    assert max(given) <= 1, "a packet went to the handler twice"
    errors = dropped = accepted = no_verdict = 0
    wrong = []
    for seq in tx.sent_seqs:
        if not given[seq]:
            no_verdict += 1
            if rx.count[seq]:
                wrong.append((seq, "arrived unhandled"))
            continue
        got = (rx.count[seq], rx.tag[seq], rx.marks.get(seq, 0))
        if raises[seq]:
            errors += 1
            want = (1, T_ORIG, 0)  # on_error: ACCEPT, no mark
        elif plan[seq] & 0x10:
            dropped += 1
            want = (0, 0, 0)
        else:
            accepted += 1
            want = (1, T_ORIG, MARK)
        if got != want:
            wrong.append((seq, got, want))
    assert not wrong, wrong[:10]
    assert no_verdict == k.overrun
    assert errors > 0 and stats["handler_errors"] == errors
    # the first exception of a batch comes out of run(); each one raised is ours
    assert 1 <= run_raised == len(seen) <= errors
    assert all(raises[s] for s in seen)
    assert stats["packets"] == handled[0] == tx.delivered - k.overrun
    assert k.marked == accepted
    assert k.passed - k.marked == errors  # the on_error verdicts, unmarked
    u = equation(tx.delivered, rx.total, dropped, k.overrun)
    fault_report("queue.handler_raises", sent=tx.delivered, arrived=rx.total,
                 dropped_by_verdict=dropped, handler_errors=stats["handler_errors"],
                 accepted_on_error=errors, run_raised=run_raised,
                 queue_dropped=k.queue_dropped, user_dropped=k.user_dropped,
                 overruns=stats["overruns"], udp_rcv_errors=k.udp_dropped, unexplained=u,
                 elapsed=round(stream_time, 3), pps=round(tx.delivered / stream_time))


# -- 4: close() with packets pending ----------------------------------------------------------

@pytest.mark.parametrize("default", [Verdict.ACCEPT, Verdict.DROP])
def test_close_settles_pending(ns, soak, threads, default):
    """close() with 1,000 packets received and held without a verdict, and
    more still unread in the socket: every one gets ``default_verdict`` and
    arrives (ACCEPT) or not (DROP) exactly as it says; a verdict after close
    raises VerdictError."""
    held_n = soak.size(1000, 1000)
    unread_n = soak.size(200, 1000)
    n = held_n + unread_n
    num = 33 if default == Verdict.ACCEPT else 34
    setup_rules(ns, num)
    rx = Receiver(ns, n)
    threads.append(rx)
    rx.start()
    held: List = []
    with NfQueue(num, netns=ns.name, default_verdict=default) as q:
        tx = Sender(ns, held_n, None)
        threads.append(tx)
        tx.start()
        tx.finish()
        deadline = time.monotonic() + 120
        while len(held) < held_n:
            assert time.monotonic() < deadline, "only %d packets held" % len(held)
            select.select([q.fileno()], [], [], 1.0)
            q.drain(lambda p: held.append(p))  # None: no verdict yet
        assert q.stats.pending == held_n
        # the rest of the stream, left unread in the socket
        s = ns.socket()
        for seq in range(held_n, n):
            s.sendto(SEQ.pack(seq) + TAIL, ("127.0.0.1", PORT))
        s.close()
        while ns.queue_proc()[num]["waiting"] < n:
            assert time.monotonic() < deadline, ns.queue_proc()
            time.sleep(0.05)
        row = ns.queue_proc()[num]
        assert row["waiting"] == n and row["queue_dropped"] == row["user_dropped"] == 0
        t0 = time.monotonic()
        q.close()
        close_time = time.monotonic() - t0
        assert num not in ns.queue_proc()
        assert q.stats.packets == n  # close() read the unread ones too
        assert q.stats.handler_errors == 0
    assert all(p.has_verdict for p in held)
    assert sorted(seq_of(p.payload) for p in held) == list(range(held_n))
    with pytest.raises(VerdictError, match="closed"):
        held[0].accept()
    with pytest.raises(VerdictError):
        held[-1].drop()
    rx.finish()
    k = Kernel(ns, row)
    check_kernel_side(k, n, rx)
    if default == Verdict.ACCEPT:
        assert rx.total == n and all(rx.count[s] == 1 and rx.tag[s] == T_ORIG
                                     for s in range(n))
        assert not rx.marks
        dropped = 0
    else:
        assert rx.total == 0
        dropped = n
    u = equation(n, rx.total, dropped, k.overrun)
    fault_report("queue.close_pending_%s" % default.name.lower(), sent=n, arrived=rx.total,
                 dropped_by_verdict=dropped, held=held_n, unread_in_socket=unread_n,
                 handler_errors=0,
                 queue_dropped=k.queue_dropped, user_dropped=k.user_dropped,
                 udp_rcv_errors=k.udp_dropped, unexplained=u, elapsed=round(close_time, 3),
                 pps=round(n / close_time))


# -- 5: deferred verdicts from four threads -------------------------------------------------

def test_deferred_verdicts_from_four_threads(ns, soak, threads):
    """The handler returns None and hands each packet to one of 4 worker
    threads, which give seeded random verdicts concurrently (accept, drop,
    accept with a mark, accept rewritten).  Every packet gets exactly one
    verdict; a second verdict, tried on purpose on every 101st packet,
    raises VerdictError and changes nothing."""
    n = soak.size(10_000, 200_000)
    num = 35
    setup_rules(ns, num)
    plan = random.Random(0x5EED5).randbytes(n)
    given = bytearray(n)
    done_count = [0] * 4
    double = [0] * 4
    errors: List[BaseException] = []
    inboxes = [queue_mod.SimpleQueue() for _ in range(4)]
    handled = [0]

    def worker(i: int) -> None:
        inbox = inboxes[i]
        try:
            while True:
                pkt = inbox.get()
                if pkt is None:
                    return
                p = pkt.payload
                seq = seq_of(p)
                c = plan[seq] & 3
                if c == 0:
                    pkt.accept()
                elif c == 1:
                    pkt.drop()
                elif c == 2:
                    pkt.accept(mark=MARK)
                else:
                    pkt.accept(payload=rewritten(p))
                given[seq] = c + 1  # one writer per packet
                done_count[i] += 1
                if seq % 101 == 0:
                    try:
                        pkt.drop()
                    except VerdictError:
                        double[i] += 1
        except BaseException as e:
            errors.append(e)

    def handler(pkt):
        inboxes[handled[0] & 3].put(pkt)
        handled[0] += 1

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    for w in workers:
        w.start()
    rx = Receiver(ns, n)
    try:
        with NfQueue(num, netns=ns.name) as q:
            tx = Sender(ns, n, lambda: sum(done_count))
            streamed = start_stream(ns, num, rx, tx, threads, lambda: sum(done_count))
            deadline = time.monotonic() + (900 if soak.full else 120)

            def done():
                assert not errors, errors
                return streamed()

            run_until(q, handler, done, deadline)
            tx.finish()
            stream_time = time.monotonic() - tx.started_at
            assert q.stats.pending == 0
            stats = q.stats.as_dict()
            row = ns.queue_proc()[num]
    finally:
        for box in inboxes:
            box.put(None)
        for w in workers:
            w.join(30)
    assert not errors, errors
    rx.finish()
    k = Kernel(ns, row)
    check_kernel_side(k, tx.delivered, rx)
    assert k.waiting == 0 and stats["verdict_errors"] == 0
    want = {V_ACCEPT: (1, T_ORIG, 0), V_DROP: (0, 0, 0), V_MARK: (1, T_ORIG, MARK),
            V_REWRITE: (1, T_IGOR, 0)}
    counts = {v: 0 for v in want}
    wrong = []
    no_verdict = 0
    for seq in tx.sent_seqs:
        v = given[seq]
        if not v:
            no_verdict += 1
            continue
        counts[v] += 1
        got = (rx.count[seq], rx.tag[seq], rx.marks.get(seq, 0))
        if got != want[v]:
            wrong.append((seq, v, got))
    assert not wrong, wrong[:10]
    assert no_verdict == k.overrun
    assert all(done_count), done_count  # all four threads gave verdicts
    assert sum(done_count) == sum(counts.values()), "a packet got two verdicts"
    assert sum(double) == sum(1 for s in tx.sent_seqs if given[s] and s % 101 == 0) > 0
    assert k.marked == counts[V_MARK]
    u = equation(tx.delivered, rx.total, counts[V_DROP], k.overrun)
    fault_report("queue.deferred_4_threads", sent=tx.delivered, arrived=rx.total,
                 dropped_by_verdict=counts[V_DROP], per_thread=done_count,
                 double_verdicts_refused=sum(double), queue_dropped=k.queue_dropped,
                 user_dropped=k.user_dropped, overruns=stats["overruns"],
                 handler_errors=stats["handler_errors"], udp_rcv_errors=k.udp_dropped,
                 unexplained=u,
                 elapsed=round(stream_time, 3), pps=round(tx.delivered / stream_time))


# -- consumer processes (fault_consumer.py) ---------------------------------------------------

def start_consumer(ns, num: int, record: Path, mode: str, **opts) -> subprocess.Popen:
    """fault_consumer.py inside the namespace, once it has bound the queue."""
    opts.setdefault("mark", MARK)
    child = ns.popen(sys.executable, CONSUMER, str(num), str(record), mode, json.dumps(opts),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env=child_env())
    ready, _, _ = select.select([child.stdout], [], [], 60)
    line = child.stdout.readline().strip() if ready else ""
    if line != "ready":
        child.kill()
        _, err = child.communicate(timeout=30)
        raise AssertionError("the consumer did not start: %r %s" % (line, err))
    # ip netns exec execs the command: the PID is the consumer itself
    with open("/proc/%d/cmdline" % child.pid, "rb") as f:
        assert CONSUMER.encode() in f.read()
    return child


def record_count(path: Path) -> int:
    try:
        return os.stat(path).st_size // 4
    except FileNotFoundError:
        return 0


def read_records(path: Path) -> Dict[int, int]:
    """seq -> ACCEPTED/DROPPED, as fault_consumer.py recorded them."""
    data = path.read_bytes() if path.exists() else b""
    a = array("I")
    a.frombytes(data[:len(data) // 4 * 4])
    out: Dict[int, int] = {}
    for v in a:
        seq = v >> 2
        assert seq not in out, "seq %d recorded twice" % seq
        out[seq] = v & 3
    return out


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


def check_recorded(records: Dict[int, int], rx: Receiver) -> Dict[str, int]:
    """A recorded verdict is the fate the packet met."""
    wrong = []
    acc = drop = 0
    for seq, code in records.items():
        got = (rx.count[seq], rx.tag[seq], rx.marks.get(seq, 0))
        if code == ACCEPTED:
            acc += 1
            ok = got == (1, T_IGOR, MARK)
        else:
            drop += 1
            ok = got[0] == 0
        if not ok:
            wrong.append((seq, code, got))
    assert not wrong, wrong[:10]
    return {"accepted": acc, "dropped": drop}


def consumer_exit(child: subprocess.Popen, timeout: float = 120) -> dict:
    """The clean exit of a consumer: status 0, nothing on stderr, its report."""
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, (child.returncode, err)
    assert "Traceback" not in err and err.strip() == "", err
    return json.loads(out.strip().splitlines()[-1])


# -- 3: SIGINT mid-stream -----------------------------------------------------------------------

def test_sigint_mid_stream(ns, soak, threads, tmp_path):
    """A consumer process in ``q.run(handler)`` gets SIGINT while the sender
    streams: run() absorbs the KeyboardInterrupt and returns, ``close()``
    settles every packet still waiting (the rest of the batch the interrupt
    hit, and what is in the socket) with the default verdict (ACCEPT), the
    process exits with status 0 and no traceback.  The rule has
    ``--queue-bypass``, so what is sent after the queue is unbound passes.

    Every recorded verdict is the fate its packet met (accepted: rewritten
    and marked; dropped: never arrived); every other packet arrived
    untouched and unmarked, except those the kernel counted as dropped;
    nothing else is missing (none is flushed by the unbind)."""
    n = soak.size(10_000, 200_000)
    num = 36
    setup_rules(ns, num, bypass=True)
    rec = tmp_path / "records"
    child = start_consumer(ns, num, rec, "run", drop_mod=5)
    rx = Receiver(ns, n)
    threads.append(rx)
    rx.start()
    tx = Sender(ns, n, lambda: record_count(rec) + rx.orig)
    threads.append(tx)
    tx.start()
    try:
        wait_for(lambda: record_count(rec) >= n // 2 or not tx.is_alive(),
                 900 if soak.full else 120, "half the stream")
        assert tx.is_alive(), "the stream ended before the SIGINT"
        sent_at_sigint = tx.sent
        child.send_signal(signal.SIGINT)
        report = consumer_exit(child)
        sent_at_exit = tx.sent
        assert num not in ns.queue_proc()
        # a little more stream after the exit, then stop
        wait_for(lambda: tx.sent >= min(n, sent_at_exit + 500) or not tx.is_alive(), 120,
                 "the stream after the exit")
    finally:
        tx.stopped.set()
        tx.finish()
    rx.finish()
    before, after = report["before_close"], report["after_close"]
    row = before["proc"]
    k = Kernel(ns, row)
    check_kernel_side(k, tx.delivered, rx)
    records = read_records(rec)
    got = check_recorded(records, rx)
    interrupted = report["interrupted"]
    # every packet the consumer read got a verdict: the handler's, or the
    # default one at close (those still waiting: the rest of the batch the
    # interrupt hit, and the packet whose handler it hit before the verdict,
    # which a next run() would have handed out again)
    settled_at_close = before["pending"] + after["packets"] - before["packets"]
    read_by_handler = before["packets"] - before["pending"]
    hit = read_by_handler - len(records)
    # the interrupt may fall between a verdict and its record: then that
    # packet has its verdict and no record
    assert hit in (0, 1), (read_by_handler, len(records))
    if hit == 1:
        assert interrupted >= 0 and interrupted not in records
    assert after["pending"] == 0
    assert sent_at_sigint < tx.sent, "SIGINT came after the stream"
    untouched = missing = interrupted_dropped = 0
    wrong = []
    for seq in tx.sent_seqs:
        if seq in records:
            continue
        if not rx.count[seq]:
            if seq == interrupted and seq % 5 == 4:
                interrupted_dropped += 1  # its handler's drop() went through
            else:
                missing += 1
        elif seq == interrupted and rx.tag[seq] == T_IGOR:
            got["accepted"] += 1  # its handler's accept() went through
        elif (rx.tag[seq], rx.marks.get(seq, 0)) == (T_ORIG, 0):
            untouched += 1
        else:
            wrong.append((seq, rx.tag[seq], rx.marks.get(seq)))
    assert not wrong, wrong[:10]
    assert missing == k.overrun, dict(missing=missing, proc=row)
    assert untouched >= settled_at_close
    assert k.marked == got["accepted"]
    dropped = got["dropped"] + interrupted_dropped
    u = equation(tx.delivered, rx.total, dropped, k.overrun, interrupted=interrupted)
    fault_report("queue.sigint_mid_stream", sent=tx.delivered, sent_at_sigint=sent_at_sigint,
                 arrived=rx.total, dropped_by_verdict=dropped,
                 handler_verdicts=len(records), settled_at_close=settled_at_close,
                 passed_unverdicted=untouched - settled_at_close,
                 interrupted_in_handler=interrupted >= 0, interrupt_hit_packets=hit,
                 queue_dropped=k.queue_dropped, user_dropped=k.user_dropped,
                 handler_errors=after["handler_errors"], overruns=after["overruns"],
                 udp_rcv_errors=k.udp_dropped, unexplained=u,
                 elapsed=round(tx.elapsed, 3), pps=round(tx.delivered / tx.elapsed))


# -- 6: SIGKILL mid-stream --------------------------------------------------------------------

def test_sigkill_fail_open(ns, soak, threads, tmp_path):
    """A consumer with ``fail_open=True`` behind a rule with
    ``--queue-bypass`` (what a firewall that must fail open configures) is
    SIGKILLed mid-stream, and traffic keeps flowing.

    What the kernel does: ``fail_open`` only covers a living consumer (a
    full queue, or a message the socket could not take, is accepted instead
    of dropped).  When the process dies its netlink socket closes and the
    kernel destroys the queue, dropping the packets it held; from then on
    the rule finds no listener, which drops every packet unless the rule has
    ``--queue-bypass`` (then they pass).  So the only packets lost are those
    held at the kill: the missing sequence numbers must all be unrecorded
    by the consumer, lie after everything it recorded before the kill and
    no later than the last datagram sent before the reap, and number at most
    max_len."""
    n = soak.size(10_000, 200_000)
    num, max_len = 37, 512
    setup_rules(ns, num, bypass=True)
    rec = tmp_path / "records"
    child = start_consumer(ns, num, rec, "drain", fail_open=True, max_len=max_len)
    rx = Receiver(ns, n)
    threads.append(rx)
    rx.start()
    # until the kill, paced by the consumer's records alone (what fail-open
    # lets through when the queue is full does not speed the stream up)
    tx = Sender(ns, n, lambda: record_count(rec))
    threads.append(tx)
    tx.start()
    try:
        wait_for(lambda: record_count(rec) >= n // 2 or not tx.is_alive(),
                 900 if soak.full else 120, "half the stream")
        assert tx.is_alive() and tx.sent < n, "the stream ended before the kill"
        row = ns.queue_proc()[num]
        recorded_at_kill = read_records(rec)
        sent_at_kill = tx.sent
        child.kill()
        child.wait(60)
        sent_at_reap = tx.sent
        recorded = read_records(rec)
        assert num not in ns.queue_proc(), "the queue outlived its process"
        # from now on what passes (--queue-bypass) is the stream's progress.
        # Counted from the reap: what the dead consumer held (lost) and what
        # it gave a verdict without recording can add up to the whole window,
        # and counting from its records would then hold the stream forever.
        orig_at_reap = rx.orig
        tx.progress = lambda: sent_at_reap + rx.orig - orig_at_reap
        wait_for(lambda: not tx.is_alive(), 900 if soak.full else 120, "the stream")
    finally:
        tx.stopped.set()
        tx.finish()
    rx.finish()
    assert child.returncode == -signal.SIGKILL
    # with fail_open the kernel never drops at enqueue
    assert row["queue_dropped"] == row["user_dropped"] == 0, row
    k = Kernel(ns, None)
    check_kernel_side(k, tx.delivered, rx)
    records = read_records(rec)
    got = check_recorded(records, rx)
    assert got["dropped"] == 0
    lost = [s for s in tx.sent_seqs if not rx.count[s]]
    unrecorded_verdicts = untouched = 0
    for seq in tx.sent_seqs:
        if rx.count[seq] and seq not in records:
            if rx.tag[seq] == T_IGOR:  # verdict sent, the record not yet written
                assert rx.marks.get(seq) == MARK
                unrecorded_verdicts += 1
            else:
                assert rx.marks.get(seq, 0) == 0
                untouched += 1  # failed open while alive, bypassed once dead
    assert not set(lost) & set(records)
    if lost:
        assert min(lost) > max(recorded_at_kill), (min(lost), max(recorded_at_kill))
        # the sender counts a datagram once its send has returned and it holds
        # the GIL again: the one sent last before the reap (seq sent_at_reap)
        # may not be counted yet, and may have met the queue before it went
        assert max(lost) <= sent_at_reap, (max(lost), sent_at_reap)
    assert len(lost) <= max_len, len(lost)
    assert tx.sent == n and rx.total > len(records)
    assert k.marked == got["accepted"] + unrecorded_verdicts
    u = equation(tx.delivered, rx.total, 0, 0, len(lost))
    fault_report("queue.sigkill_fail_open", sent=tx.delivered, arrived=rx.total,
                 dropped_by_verdict=0, handler_verdicts=len(records) + unrecorded_verdicts,
                 passed_without_verdict=untouched, lost_at_kill=len(lost), max_len=max_len,
                 sent_at_kill=sent_at_kill, sent_at_reap=sent_at_reap,
                 queue_dropped=0, user_dropped=0, udp_rcv_errors=k.udp_dropped,
                 unexplained=u, elapsed=round(tx.elapsed, 3),
                 pps=round(tx.delivered / tx.elapsed))


PROBES = 50


def test_sigkill_then_rebind(ns, soak, threads, tmp_path):
    """A consumer without fail_open is SIGKILLed mid-stream; the sender
    pauses, a new process binds the same queue number and the stream goes
    on.  The rule has no ``--queue-bypass``: packets that reach the queue
    while nobody is bound are dropped by the kernel (50 probes sent then,
    numbered past the stream, are counted by the rule and never arrive).

    Lost are the packets the dead consumer held and those sent between the
    kill and the pause: each is unrecorded, after everything recorded before
    the kill and before the pause, and there are at most max_len plus the
    ones sent in that gap.  Everything sent after the pause is handled by
    the new consumer and meets the fate it recorded."""
    n = soak.size(10_000, 200_000)
    num, max_len = 38, 1024
    setup_rules(ns, num)
    rec1, rec2 = tmp_path / "records1", tmp_path / "records2"
    child = start_consumer(ns, num, rec1, "drain", drop_mod=7, max_len=max_len)
    rx = Receiver(ns, n)
    threads.append(rx)
    rx.start()
    tx = Sender(ns, n, lambda: record_count(rec1), window=768)
    threads.append(tx)
    tx.start()
    second = None
    try:
        wait_for(lambda: record_count(rec1) >= n // 3 or not tx.is_alive(),
                 900 if soak.full else 120, "a third of the stream")
        assert tx.is_alive(), "the stream ended before the kill"
        recorded_at_kill = read_records(rec1)
        sent_at_kill = tx.sent
        child.kill()
        paused_at = tx.pause()
        child.wait(60)
        assert num not in ns.queue_proc()
        # while nobody is bound the rule (no --queue-bypass) drops: probes
        # numbered past the stream must never arrive (the receiver counts
        # any datagram outside the stream as foreign)
        s = ns.socket()
        for seq in range(n, n + PROBES):
            s.sendto(SEQ.pack(seq) + TAIL, ("127.0.0.1", PORT))
        s.close()
        second = start_consumer(ns, num, rec2, "run", drop_mod=7, max_len=max_len)
        tx.progress = lambda: paused_at + record_count(rec2)
        tx.resume()
        wait_for(lambda: not tx.is_alive(), 900 if soak.full else 120, "the stream")

        def caught_up():
            r = ns.queue_proc()[num]
            return r["waiting"] == 0 and (r["id_sequence"] + r["queue_dropped"]
                                          >= tx.delivered - paused_at)

        wait_for(caught_up, 120, "the second consumer")
        second.send_signal(signal.SIGINT)
        report = consumer_exit(second)
    finally:
        tx.stopped.set()
        tx.finish()
        if second is not None and second.poll() is None:
            second.kill()
    rx.finish()
    assert child.returncode == -signal.SIGKILL
    row = report["before_close"]["proc"]
    k = Kernel(ns, row)
    check_kernel_side(k, tx.delivered + PROBES, rx)  # the probes were queued, none arrived
    r1, r2 = read_records(rec1), read_records(rec2)
    assert not set(r1) & set(r2)
    records = dict(r1)
    records.update(r2)
    got = check_recorded(records, rx)
    assert report["interrupted"] == -1 and report["before_close"]["pending"] == 0
    lost, unrecorded_verdicts = [], 0
    for seq in tx.sent_seqs:
        if seq in records:
            continue
        if rx.count[seq]:
            # the dead consumer's verdicts sent before their record was written
            assert (rx.tag[seq], rx.marks.get(seq)) == (T_IGOR, MARK), seq
            assert seq < paused_at
            unrecorded_verdicts += 1
        else:
            lost.append(seq)
    # after the pause nothing is missing but what the kernel counted
    late = [s for s in lost if s >= paused_at]
    assert len(late) == k.overrun, (late[:10], row)
    lost = [s for s in lost if s < paused_at]
    if lost:
        assert min(lost) > max(recorded_at_kill), (min(lost), max(recorded_at_kill))
    gap = paused_at - sent_at_kill
    # a lost packet the dead consumer had dropped without recording it is a
    # drop all the same: it counts among the lost, bounded the same way
    assert len(lost) <= max_len + gap, (len(lost), gap)
    assert all(s in range(paused_at, tx.sent) for s in r2)
    assert k.marked == got["accepted"] + unrecorded_verdicts
    u = equation(tx.delivered, rx.total, got["dropped"], k.overrun, len(lost))
    fault_report("queue.sigkill_rebind", sent=tx.delivered, arrived=rx.total,
                 dropped_by_verdict=got["dropped"], lost_at_kill=len(lost),
                 sent_between_kill_and_pause=gap, max_len=max_len,
                 dropped_unbound=PROBES,
                 handled_first=len(r1) + unrecorded_verdicts, handled_second=len(r2),
                 queue_dropped=k.queue_dropped, user_dropped=k.user_dropped,
                 handler_errors=report["after_close"]["handler_errors"],
                 udp_rcv_errors=k.udp_dropped, unexplained=u,
                 elapsed=round(tx.elapsed, 3), pps=round(tx.delivered / tx.elapsed))
