# SPDX-License-Identifier: GPL-2.0-or-later
"""Property tests (hypothesis) over the public arguments of nfbind.

Every public argument, given arbitrary values, must either work or raise a
clear ``ValueError``/``TypeError`` (or the documented nfbind exception): never
an OverflowError from cffi, a UnicodeError, an AttributeError, a struct.error,
a crash or a hang.  Covered:

* the constructors of NfQueue, NfLog, Conntrack and EventStream
  (``Conntrack.events``), ``NfQueue.configure`` and ``serve`` (validated in
  the calling process: no worker is forked for an invalid value);
* the verdicts on real packets (``accept``, ``verdict``, ``repeat``,
  ``queue``, ``verdict_batch``) with marks, connmarks and payloads of every
  size and type: a valid payload arrives rewritten at a receiving socket, a
  valid mark is seen by an NFLOG rule after the verdict, a valid connmark is
  in the conntrack table; an invalid value raises and leaves the packet
  waiting for a verdict, and nothing stays queued in the kernel;
* ``Tuple``, ``Flow``, ``EventFilter``, ``LabelMap`` and the conntrack
  create/get/update/delete round trip against a namespace's table;
* the ``netns`` argument of every class and of :mod:`nfbind.netns`.

Run with ``--hypothesis-show-statistics`` for the number of examples each
property tried.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Set

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import nfbind
from nfbind import (
    Conntrack, CopyMode, CtEvent, CtStatus, EventFilter, Flow, LabelMap, NfLog, NfQueue,
    NotFound, Tuple, Verdict,
)
from nfbind import netns as nfnetns
from nfbind.errors import NetlinkError
from nfbind.queue import MAX_PAYLOAD

from helpers.netns import make_netns
from helpers.packets import ipv4_udp
from helpers.report import fault_report

nfserve = sys.modules["nfbind.serve"]  # the module (nfbind.serve is the function)

U16 = 0xFFFF
U32 = 0xFFFFFFFF
RCVBUF_MAX = 1 << 30
PLAIN = {int(Verdict.ACCEPT), int(Verdict.DROP), int(Verdict.REPEAT), int(Verdict.STOP)}
COPY_MODES = {int(m) for m in CopyMode}
NFLOG_FAMILIES = {int(nfbind.Family.IPV4), int(nfbind.Family.IPV6),
                  int(nfbind.Family.BRIDGE), int(nfbind.Family.ARP)}
#: the private addresses the conntrack properties put in the table
V4_NET = ipaddress.ip_network("10.77.0.0/16")
V6_NET = ipaddress.ip_network("fd00:77::/64")

QNUM = 9
GROUP = 19
PORT = 7777
SPORT = 7778

#: the examples are few: the whole module runs in well under a minute on a
#: loaded 2-CPU machine; every example has a generous deadline.
#: NFBIND_PROPERTY_SCALE=N tries N times as many (make soak: 10).
pytestmark = pytest.mark.fault

SCALE = max(1, int(os.environ.get("NFBIND_PROPERTY_SCALE", "1")))
FAST = settings(max_examples=200 * SCALE, deadline=10000,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
KERNEL = settings(FAST, max_examples=80 * SCALE, deadline=30000)
PACKETS = settings(FAST, max_examples=60 * SCALE, deadline=60000)


# -- strategies and oracles ----------------------------------------------------------------

class _Obj:
    """An object of no type nfbind knows."""

    def __repr__(self) -> str:
        return "_Obj()"


EDGE_INTS = [0, 1, -1, 0xFF, 0x100, U16, U16 + 1, 65536, 65537, 4095, 4096,
             RCVBUF_MAX, RCVBUF_MAX + 1, U32, U32 + 1, 2**63 - 1, 2**63, 2**64,
             -2**63, -2**64, 2**100]

#: ints over the whole range and beyond
INTS = st.one_of(st.sampled_from(EDGE_INTS), st.integers(min_value=-2**70, max_value=2**70),
                 st.integers(min_value=0, max_value=U32))

#: values of every other type
JUNK = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.binary(max_size=12),
    st.sampled_from(["\ud800", "a\0b", "..", "/", "", " ", "é", "count", "tcp", "1"]),
    st.lists(st.integers(min_value=-3, max_value=70000), max_size=3),
    st.builds(_Obj), st.just(object()), st.just(bytearray(b"\x01")),
    st.just(memoryview(b"\x02")), st.just({1: 2}), st.just(range(3)),
)

ANY = st.one_of(INTS, JUNK)


def is_int(v: Any, lo: int, hi: int) -> bool:
    """What nfbind accepts as an int argument: an int (not a bool) in lo..hi."""
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def opt(fn):
    return lambda v: v is None or fn(v)


def int_in(lo: int, hi: int):
    return lambda v: is_int(v, lo, hi)


def arg(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A value for one argument: a valid one, or anything."""
    return st.one_of(valid, ANY)


def clear_error(e: BaseException) -> None:
    """``e`` is a ValueError/TypeError nfbind raised on purpose, with a message."""
    assert isinstance(e, (ValueError, TypeError)), repr(e)
    assert not isinstance(e, UnicodeError), repr(e)
    assert str(e).strip(), repr(e)


def attempt(fn, *args, **kw):
    """``(True, result)`` or ``(False, error)`` for a ValueError/TypeError;
    any other exception fails the test."""
    try:
        return True, fn(*args, **kw)
    except (ValueError, TypeError) as e:
        clear_error(e)
        return False, e


def check_outcome(valid: bool, fn, *args, **kw):
    """Call ``fn``: it must succeed exactly when ``valid``."""
    ok, out = attempt(fn, *args, **kw)
    if valid:
        assert ok, "valid arguments refused: %r" % (out,)
    else:
        assert not ok, "invalid arguments accepted: %r %r" % (args, kw)
    return out


def draw_kwargs(data, spec: Dict[str, tuple]) -> tuple:
    """Draw a keyword dict from ``spec`` (name -> (strategy of valid values,
    validity test)): each argument left out, valid, or anything.  Returns
    the dict and whether every value in it is valid."""
    kw: Dict[str, Any] = {}
    valid = True
    for name, (good, test) in spec.items():
        how = data.draw(st.sampled_from(["omit", "good", "any"]), label=name + "?")
        if how == "omit":
            continue
        v = data.draw(good if how == "good" else arg(good), label=name)
        kw[name] = v
        valid = valid and test(v)
    return kw, valid


# -- namespaces ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mns():
    """One namespace for the constructor and table properties of this module."""
    n = make_netns()
    try:
        yield n
    finally:
        n.close()


def waiting(ns_name: str, qnum: int) -> int:
    """Packets the kernel holds for ``qnum`` in the namespace (0: unbound)."""
    def read() -> str:
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            return f.read()

    for line in nfnetns.call_in(ns_name, read).splitlines():
        f = line.split()
        if int(f[0]) == qnum:
            return int(f[2])
    return 0


def kernel_ct_count(ns_name: str) -> int:
    """The namespace's nf_conntrack_count, as the kernel's sysctl shows it."""
    def read() -> int:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            return int(f.read())

    return nfnetns.call_in(ns_name, read)


# -- NfQueue, NfLog, Conntrack, EventStream constructors ---------------------------------

BOOL = (st.booleans(), is_bool)
NFQ_SPEC = {
    "copy_mode": (st.sampled_from(list(CopyMode)), lambda v: is_int(v, 0, 255) and v in COPY_MODES),
    "copy_range": (st.integers(0, U16), int_in(0, U16)),
    "max_len": (st.integers(1, 65536), int_in(1, 65536)),
    "fail_open": BOOL, "conntrack": BOOL, "uid_gid": BOOL, "secctx": BOOL,
    "no_enobufs": BOOL,
    "gso": (st.one_of(st.none(), st.booleans()), opt(is_bool)),
    "rcvbuf": (st.one_of(st.none(), st.integers(4096, 1 << 24)), opt(int_in(4096, RCVBUF_MAX))),
    "rcvbuf_max": (st.one_of(st.none(), st.integers(4096, RCVBUF_MAX)),
                   opt(int_in(4096, RCVBUF_MAX))),
    "on_error": (st.sampled_from(sorted(PLAIN)), lambda v: is_int(v, 0, U32) and v in PLAIN),
    "default_verdict": (st.sampled_from(list(Verdict)),
                        lambda v: is_int(v, 0, U32) and v in PLAIN),
    "on_overrun": (st.sampled_from(["count", "raise"]),
                   lambda v: isinstance(v, str) and v in ("count", "raise")),
}


@pytest.mark.integration
@KERNEL
@given(qnum=arg(st.integers(0, U16)), data=st.data())
def test_nfqueue_constructor(mns, qnum, data):
    kw, valid = draw_kwargs(data, NFQ_SPEC)
    # a queue number, or an iterable of them (one socket, several queues)
    valid = valid and valid_groups(qnum)
    q = check_outcome(valid, NfQueue, qnum, netns=mns.name, **kw)
    if valid:
        with q:
            assert q.queue_num == (qnum if isinstance(qnum, int) else tuple(qnum))
            if "copy_range" in kw:
                assert q.copy_range == kw["copy_range"]
            if "max_len" in kw:
                assert q.max_len == kw["max_len"]
            assert q.rcvbuf > 0


@pytest.mark.integration
@KERNEL
@given(data=st.data())
def test_nfqueue_configure(mns, data):
    spec = {k: NFQ_SPEC[k] for k in ("copy_mode", "copy_range", "max_len")}
    spec.update({k: (st.one_of(st.none(), st.booleans()), opt(is_bool))
                 for k in ("fail_open", "conntrack", "gso", "uid_gid", "secctx")})
    spec["copy_mode"] = (spec["copy_mode"][0], opt(spec["copy_mode"][1]))
    spec["copy_range"] = (spec["copy_range"][0], opt(spec["copy_range"][1]))
    spec["max_len"] = (spec["max_len"][0], opt(spec["max_len"][1]))
    kw, valid = draw_kwargs(data, spec)
    with NfQueue(QNUM + 1, netns=mns.name) as q:
        before = (q.copy_mode, q.copy_range, q.max_len, q.flags)
        check_outcome(valid, q.configure, **kw)
        if not valid:
            assert (q.copy_mode, q.copy_range, q.max_len, q.flags) == before
        else:
            if kw.get("copy_range") is not None:
                assert q.copy_range == kw["copy_range"]
            if kw.get("max_len") is not None:
                assert q.max_len == kw["max_len"]


def valid_groups(g: Any) -> bool:
    if isinstance(g, (str, bytes)):
        return False
    if isinstance(g, int) and not isinstance(g, bool):
        return is_int(g, 0, U16)
    try:
        items = list(g)
    except TypeError:
        return False
    return bool(items) and all(is_int(x, 0, U16) for x in items) and len(set(items)) == len(items)


def valid_timeout(t: Any) -> bool:
    return (isinstance(t, (int, float)) and not isinstance(t, bool) and t == t
            and 0 <= t <= U32 / 100)


NFLOG_SPEC = {
    "family": (st.sampled_from([None, *sorted(NFLOG_FAMILIES)]),
               lambda v: v is None or (is_int(v, 0, 255) and v in NFLOG_FAMILIES)),
    "copy_mode": NFQ_SPEC["copy_mode"],
    "copy_range": NFQ_SPEC["copy_range"],
    "qthresh": (st.integers(1, U32), int_in(1, U32)),
    "timeout": (st.one_of(st.integers(0, 100), st.floats(0, U32 / 100)), valid_timeout),
    "nlbufsiz": (st.one_of(st.none(), st.integers(4096, 131072)), opt(int_in(4096, 131072))),
    "seq": BOOL, "seq_global": BOOL, "conntrack": BOOL, "no_enobufs": BOOL,
    "rcvbuf": NFQ_SPEC["rcvbuf"], "rcvbuf_max": NFQ_SPEC["rcvbuf_max"],
    "on_overrun": NFQ_SPEC["on_overrun"],
}


@pytest.mark.integration
@KERNEL
@given(groups=arg(st.one_of(st.integers(0, U16),
                            st.lists(st.integers(0, U16), min_size=1, max_size=4, unique=True))),
       data=st.data())
@example(groups=[], data=None)
@example(groups=[3, 3], data=None)
def test_nflog_constructor(mns, groups, data):
    kw, valid = draw_kwargs(data, NFLOG_SPEC) if data is not None else ({}, True)
    valid = valid and valid_groups(groups)
    log = check_outcome(valid, NfLog, groups, netns=mns.name, **kw)
    if valid:
        with log:
            assert set(log.groups) == ({groups} if isinstance(groups, int) else set(groups))


@pytest.mark.integration
@KERNEL
@given(timeout=arg(st.one_of(st.integers(1, 3600), st.floats(0.001, 3600))),
       labelmap=st.one_of(st.none(), st.just("/nonexistent/connlabel.conf"), JUNK))
def test_conntrack_constructor(mns, timeout, labelmap):
    valid = (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
             and 0 < timeout <= 3600)
    valid = valid and (labelmap is None or isinstance(labelmap, (str, os.PathLike)))
    ct = check_outcome(valid, Conntrack, netns=mns.name, timeout=timeout, labelmap=labelmap)
    if valid:
        with ct:
            # the object answers for its namespace: its count is the kernel's
            # own, read around it (a flow of an earlier test may expire)
            before = kernel_ct_count(mns.name)
            n = ct.count()
            after = kernel_ct_count(mns.name)
            assert min(before, after) <= n <= max(before, after), (before, n, after)


def valid_types(t: Any) -> bool:
    return is_int(t, 1, U32) and not t & ~int(CtEvent.ALL)


@pytest.mark.integration
@KERNEL
@given(types=arg(st.sampled_from([CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY, CtEvent.ALL,
                                  CtEvent.NEW | CtEvent.DESTROY])),
       filt=st.one_of(st.none(), st.builds(EventFilter, proto=st.sampled_from(["tcp", 17, ()])),
                      JUNK),
       data=st.data())
def test_conntrack_events(mns, types, filt, data):
    kw, valid = draw_kwargs(data, {
        "rcvbuf": (st.integers(4096, 1 << 24), int_in(4096, RCVBUF_MAX)),
        "on_overrun": NFQ_SPEC["on_overrun"], "no_enobufs": BOOL})
    valid = valid and valid_types(types) and (filt is None or isinstance(filt, EventFilter))
    with Conntrack(netns=mns.name) as ct:
        stream = check_outcome(valid, ct.events, types, filt, **kw)
        if valid:
            with stream:
                assert int(stream.types) == int(types)
                # nothing happens in the namespace: a bounded wait returns empty
                assert stream.drain(lambda ev: None) == 0


# -- serve() validates in the calling process ----------------------------------------------

class _NoFork:
    """Stands in for serve()'s worker supervisor: reaching it means every
    argument was accepted."""

    def __init__(self, handler, assignment, options, **kw) -> None:
        self.assignment = assignment

    def run(self):
        return ("started", self.assignment)


def _valid_queues(qs: Any) -> bool:
    if isinstance(qs, (str, bytes)):
        return False
    try:
        items = list(qs)
    except TypeError:
        return False
    return bool(items) and all(is_int(q, 0, U16) for q in items) and len(set(items)) == len(items)


def _valid_seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v > 0


@given(queues=arg(st.lists(st.integers(0, U16), min_size=1, max_size=4, unique=True)),
       workers=st.one_of(st.none(), st.integers(1, 4), ANY),
       timeout=st.one_of(st.none(), st.floats(0.1, 100), ANY),
       data=st.data())
@FAST
@example(queues=[1], workers=None, timeout=None, data=None)
def test_serve_validates_before_forking(monkeypatch, queues, workers, timeout, data):
    spec = dict(NFQ_SPEC)
    spec.update({"restart": BOOL, "max_restarts": (st.integers(0, 10), int_in(0, 1 << 20)),
                 "bind_timeout": (st.floats(0.1, 100), _valid_seconds),
                 "stop_timeout": (st.floats(0.1, 100), _valid_seconds)})
    kw, valid = draw_kwargs(data, spec) if data is not None else ({"copy_range": -1}, False)
    valid = valid and _valid_queues(queues)
    if valid:
        n = len(list(queues))
        valid = workers is None or is_int(workers, 1, n)
    valid = valid and (timeout is None or _valid_seconds(timeout))
    monkeypatch.setattr(nfserve, "Server", _NoFork)
    out = check_outcome(valid, nfbind.serve, lambda pkt: None, queues, workers,
                        timeout=timeout, **kw)
    if valid:
        assert out[0] == "started"
        assert sorted(q for w in out[1] for q in w) == sorted(queues)


# -- verdicts on real packets ----------------------------------------------------------------

def marker_of(seq: int) -> bytes:
    """The marker of QEnv's packet number ``seq``."""
    return b"nfbprop-%08d:" % seq


#: the length of a marker
MARKER_LEN = len(marker_of(0))
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class QEnv:
    """A namespace whose UDP packets to PORT go through queue QNUM (OUTPUT)
    and are logged to NFLOG group GROUP after the verdict (mangle
    POSTROUTING), with a queue, a log reader, a receiver and a sender."""

    def __init__(self) -> None:
        self.ns = make_netns()
        self.seq = 0
        self.sent = 0
        self.t0 = time.monotonic()
        self.lost: Set[bytes] = set()     # markers of packets dropped on purpose
        self.arrived: Set[bytes] = set()  # markers that reached the receiver
        self.early: Dict[bytes, bytes] = {}  # datagrams read while waiting for another
        self.log_marks: Dict[bytes, int] = {}  # marker -> mark, as NFLOG saw it
        self.logged: Set[bytes] = set()   # markers NFLOG saw after their verdict
        self.socks: List[socket.socket] = []
        self.q: Optional[NfQueue] = None
        self.log: Optional[NfLog] = None
        self.ct: Optional[Conntrack] = None
        try:
            ipt = self.ns.iptables
            # a packet marked by repeat(mark=) passes; conntrack in use
            ipt("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-m", "mark", "!",
                "--mark", "0", "-j", "ACCEPT")
            ipt("-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED")
            ipt("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-num", str(QNUM))
            ipt("-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", str(PORT),
                "-j", "NFLOG", "--nflog-group", str(GROUP))
            self.q = NfQueue(QNUM, netns=self.ns.name)
            self.log = NfLog(GROUP, copy_range=128, netns=self.ns.name)
            self.ct = Conntrack(netns=self.ns.name)
            self.rx = self._sock()
            self.rx.bind(("127.0.0.1", PORT))
            self.tx = self._sock()
            self.tx.bind(("127.0.0.1", SPORT))
        except BaseException:
            self.close()
            raise

    def _sock(self) -> socket.socket:
        s = self.ns.socket()
        # forced: net.core.rmem_max would cut SO_RCVBUF to a few rewritten
        # 64 KiB payloads
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        self.socks.append(s)
        return s

    def close(self) -> None:
        for obj in (self.q, self.log, self.ct, *self.socks):
            if obj is not None:
                obj.close()
        self.ns.close()

    def marker(self) -> bytes:
        self.seq += 1
        return marker_of(self.seq)

    def next_packet(self, marker: bytes) -> nfbind.Packet:
        """The queued packet carrying ``marker`` (others: accepted)."""
        got: List[nfbind.Packet] = []

        def handler(p):
            if p.payload[28:28 + len(marker)] == marker:
                got.append(p)
                self.q.stop()
                return None
            return Verdict.ACCEPT

        end = time.monotonic() + 30
        while not got and time.monotonic() < end:
            self.q.run(handler, timeout=1.0)
        assert got, "packet %r never reached the queue" % marker
        assert len(got) == 1
        return got[0]

    def queued(self, data: bytes) -> nfbind.Packet:
        self.tx.sendto(data, ("127.0.0.1", PORT))
        self.sent += 1
        return self.next_packet(data[:MARKER_LEN])

    def arrival(self, marker: bytes, wait: float = 15.0) -> Optional[bytes]:
        """The datagram carrying ``marker`` at the receiver, or None when it
        did not come within ``wait`` seconds.  Datagrams read on the way are
        recorded by their markers and kept for their own arrival() call."""
        if marker in self.early:
            return self.early.pop(marker)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self.rx.settimeout(max(0.01, end - time.monotonic()))
            try:
                d = self.rx.recv(70000)
            except socket.timeout:
                break
            self.arrived.add(d[:MARKER_LEN])
            if d.startswith(marker):
                return d
            self.early[d[:MARKER_LEN]] = d
        return None

    def logged_mark(self, marker: bytes) -> int:
        """The mark NFLOG saw on the packet with ``marker`` after its verdict."""
        n = len(marker)

        def handler(p):
            seen = p.payload[28:28 + n]
            self.log_marks[seen] = p.mark or 0
            self.logged.add(seen)
            if marker in self.log_marks:
                self.log.stop()

        end = time.monotonic() + 30
        while marker not in self.log_marks and time.monotonic() < end:
            self.log.run(handler, timeout=1.0)
        assert marker in self.log_marks, "the packet %r was not logged after its verdict" % marker
        return self.log_marks.pop(marker)

    def settle_requeued(self, *markers: bytes) -> None:
        """Packets that came back to the queue (REPEAT, queue(QNUM)): accept
        them, all in one loop (several come back together, maybe in one batch;
        others met on the way are accepted too)."""
        back = set(markers)

        def handler(p):
            back.discard(p.payload[28:28 + MARKER_LEN])
            if not back:
                self.q.stop()
            return Verdict.ACCEPT

        end = time.monotonic() + 30
        while back and time.monotonic() < end:
            self.q.run(handler, timeout=1.0)
        assert not back, "packets %r never came back to the queue" % sorted(back)

    def note_logged(self) -> None:
        """Read the log entries waiting, keeping only which markers they saw."""
        self.log.drain(lambda p: self.logged.add(p.payload[28:28 + MARKER_LEN]))

    def settled(self) -> None:
        """No packet waits, here or in the kernel, and the kernel refused no verdict."""
        assert self.q is not None and self.q.stats.pending == 0
        assert waiting(self.ns.name, QNUM) == 0
        # read the kernel's answers to the verdicts, if any: no packet is left
        assert self.q.drain(lambda p: Verdict.ACCEPT) == 0
        assert self.q.stats.verdict_errors == 0
        self.note_logged()  # the log entries nobody asked for
        self.log_marks.clear()
        assert self.log.stats.overruns == 0


@pytest.fixture(scope="module")
def qenv():
    env = QEnv()
    try:
        yield env
        # nothing stayed in the kernel, and no packet dropped on purpose came late
        # (the datagrams not read yet are recorded by their markers too)
        time.sleep(0.2)
        env.arrival(b"\xff" * MARKER_LEN, wait=0.3)
        assert waiting(env.ns.name, QNUM) == 0
        assert not env.lost & env.arrived
        assert env.sent == env.seq
        env.note_logged()
        elapsed = time.monotonic() - env.t0
        stats = env.q.stats
        row = env.ns.queue_proc()[QNUM]
        udp = env.ns.udp_errors()
        # where a packet that neither arrived nor was dropped on purpose went:
        # seen by NFLOG after its verdict (then lost on the way to the
        # receiver: udp counts it) or not (lost at the queue: row counts it)
        missing = sorted(m for m in map(marker_of, range(1, env.seq + 1))
                         if m not in env.arrived and m not in env.lost)
        where = {"after_verdict": [m for m in missing if m in env.logged],
                 "before_verdict": [m for m in missing if m not in env.logged],
                 "queue": row, "udp": udp, "nfbind": stats.as_dict()}
        fault_report("property-verdicts", sent=env.sent, arrived=len(env.arrived),
                     dropped_by_verdict=len(env.lost), queued=stats.packets,
                     overruns=stats.overruns, verdict_errors=stats.verdict_errors,
                     queue_dropped=row["queue_dropped"], user_dropped=row["user_dropped"],
                     udp_rcvbuf_errors=udp["RcvbufErrors"], missing=len(missing),
                     elapsed_s=round(elapsed, 2), rate_pps=round(stats.packets / elapsed, 1))
        assert not missing, where
        assert env.sent == len(env.arrived) + len(env.lost)
        assert stats.overruns == 0 and stats.verdict_errors == 0
        assert row["queue_dropped"] == row["user_dropped"] == 0, row
        assert udp["InErrors"] == 0, udp
    finally:
        env.close()


MARKS = st.one_of(st.none(), INTS, JUNK)


def valid_mark(m: Any) -> bool:
    return m is None or is_int(m, 0, U32)


@pytest.mark.integration
@PACKETS
@given(mark=MARKS, how=st.sampled_from(["accept", "verdict", "repeat"]))
@example(mark=U32 + 1, how="accept")
@example(mark=True, how="repeat")
@example(mark=2**64, how="verdict")
def test_verdict_marks(qenv, mark, how):
    m = qenv.marker()
    p = qenv.queued(m + b"mark")
    valid = valid_mark(mark)
    fn = {"accept": p.accept, "repeat": p.repeat,
          "verdict": lambda mark: p.verdict(Verdict.ACCEPT, mark=mark)}[how]
    ok, err = attempt(fn, mark=mark)
    assert ok == valid, err
    if not ok:
        assert not p.has_verdict
        p.accept()
        assert qenv.arrival(m) == m + b"mark"
        qenv.settled()
        return
    assert p.has_verdict
    if how == "repeat" and not mark:
        qenv.settle_requeued(m)  # unmarked, it comes straight back
    assert qenv.arrival(m) == m + b"mark"
    assert qenv.logged_mark(m) == (mark or 0)
    qenv.settled()


@pytest.mark.integration
@PACKETS
@given(connmark=MARKS)
@example(connmark=-1)
@example(connmark=U32)
def test_verdict_connmark(qenv, connmark):
    m = qenv.marker()
    p = qenv.queued(m + b"connmark")
    ok, err = attempt(p.accept, connmark=connmark)
    assert ok == valid_mark(connmark), err
    if not ok:
        assert not p.has_verdict
        p.accept()
    assert qenv.arrival(m) == m + b"connmark"
    if ok and connmark is not None:
        flow = qenv.ct.get(Tuple("127.0.0.1", "127.0.0.1", "udp", SPORT, PORT))
        assert flow.mark == connmark
    qenv.settled()


#: the bytes of rewritten payloads
_FILL = bytes(range(256)) * 260


def _payload(kind: str, marker: bytes, n: int) -> Any:
    """A replacement for the queued packet: an IPv4/UDP packet whose UDP data
    is ``marker`` and ``n`` more bytes (a raw blob when too long for IPv4)."""
    body = marker + _FILL[:n]
    if 28 + len(body) > U16:
        return b"\x45" + _FILL[:27 + len(body)]
    if kind == "scapy":
        from scapy.layers.inet import IP, UDP
        from scapy.packet import Raw

        return IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=SPORT, dport=PORT) / Raw(body)
    raw = ipv4_udp("127.0.0.1", "127.0.0.1", SPORT, PORT, body)
    return {"bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw)}[kind]


@pytest.mark.integration
@PACKETS
@given(kind=st.sampled_from(["bytes", "bytearray", "memoryview", "scapy"]),
       n=st.one_of(st.integers(0, 2000), st.integers(0, U16 + 100),
                   st.sampled_from([MAX_PAYLOAD - 28 - 17, MAX_PAYLOAD - 28 - 16, U16 - 28 - 17])),
       how=st.sampled_from(["accept", "verdict"]))
@example(kind="bytes", n=MAX_PAYLOAD - 28 - 17, how="accept")   # exactly MAX_PAYLOAD
@example(kind="bytes", n=MAX_PAYLOAD - 28 - 16, how="accept")   # one byte more
@example(kind="memoryview", n=U16 + 100, how="verdict")
def test_verdict_payload(qenv, kind, n, how):
    m = qenv.marker()
    p = qenv.queued(m + b"original")
    payload = _payload(kind, m, n)
    size = len(bytes(payload))
    if how == "accept":
        ok, err = attempt(p.accept, payload=payload)
    else:
        ok, err = attempt(p.verdict, Verdict.ACCEPT, payload=payload)
    assert ok == (size <= MAX_PAYLOAD), (size, err)
    if ok:
        assert qenv.arrival(m) == m + _FILL[:n]
    else:
        assert "payload" in str(err)
        assert not p.has_verdict
        p.accept()
        assert qenv.arrival(m) == m + b"original"
    qenv.settled()


@pytest.mark.integration
@PACKETS
@given(payload=st.one_of(st.binary(max_size=80), JUNK, INTS))
@example(payload=b"")
@example(payload="a text")
@example(payload=12)
def test_verdict_payload_any_value(qenv, payload):
    """Bytes that are no packet are still a valid verdict (the kernel drops
    what it cannot route); every other type raises and the packet waits."""
    m = qenv.marker()
    p = qenv.queued(m + b"x")
    ok, err = attempt(p.accept, payload=payload)
    bytes_like = isinstance(payload, (bytes, bytearray, memoryview))
    assert ok == (payload is None or bytes_like), err
    if not ok:
        assert not p.has_verdict
        p.accept()
        assert qenv.arrival(m) == m + b"x"
    elif payload is None:
        assert qenv.arrival(m) == m + b"x"
    else:
        qenv.lost.add(m)
    qenv.settled()


@pytest.mark.integration
@PACKETS
@given(verdict=st.one_of(st.sampled_from(list(Verdict)), INTS, JUNK))
@example(verdict=int(Verdict.QUEUE))
@example(verdict=float(Verdict.ACCEPT))
def test_verdict_value(qenv, verdict):
    m = qenv.marker()
    p = qenv.queued(m + b"v")
    ok, err = attempt(p.verdict, verdict)
    assert ok == (is_int(verdict, 0, U32) and verdict in PLAIN), err
    if not ok:
        assert not p.has_verdict
        p.accept()
        verdict = Verdict.ACCEPT
    if verdict == Verdict.DROP:
        qenv.lost.add(m)
    else:
        if verdict == Verdict.REPEAT:
            qenv.settle_requeued(m)
        assert qenv.arrival(m) == m + b"v"
    qenv.settled()


@pytest.mark.integration
@PACKETS
@given(num=st.one_of(st.just(QNUM), st.integers(0, U16), INTS, JUNK),
       bypass=st.one_of(st.booleans(), JUNK))
@example(num=QNUM + 1, bypass="yes")
@example(num=U16 + 1, bypass=True)
def test_verdict_queue(qenv, num, bypass):
    m = qenv.marker()
    p = qenv.queued(m + b"q")
    ok, err = attempt(p.queue, num, bypass=bypass)
    assert ok == (is_int(num, 0, U16) and is_bool(bypass)), err
    if not ok:
        assert not p.has_verdict
        p.accept()
    elif num == QNUM:
        qenv.settle_requeued(m)
    elif not bypass:
        qenv.lost.add(m)  # nobody reads queue num: the kernel drops it
        qenv.settled()
        return
    assert qenv.arrival(m) == m + b"q"
    qenv.settled()


@pytest.mark.integration
@PACKETS
@given(count=st.integers(1, 4), pick=st.one_of(st.integers(-2, 6), INTS, JUNK),
       verdict=st.one_of(st.sampled_from(list(Verdict)), INTS, JUNK),
       mark=MARKS)
@example(count=2, pick=U32, verdict=Verdict.ACCEPT, mark=None)
@example(count=1, pick=2**31 + 5, verdict=Verdict.ACCEPT, mark=None)
@example(count=2, pick=0, verdict=Verdict.ACCEPT, mark=None)  # below every waiting id
@example(count=2, pick=1, verdict=Verdict.REPEAT, mark=None)
@example(count=1, pick=1, verdict=Verdict.REPEAT, mark=7)
@example(count=4, pick=3, verdict=Verdict.REPEAT, mark=None)  # three come back together
def test_verdict_batch(qenv, count, pick, verdict, mark):
    """verdict_batch(up_to_id, verdict, mark) settles the received waiting
    packets with an id up to up_to_id, and only those: later packets still
    reach the handler."""
    q = qenv.q
    marks = [qenv.marker() for _ in range(count)]
    pkts = [qenv.queued(mk + b"b") for mk in marks]
    ids = [p.id for p in pkts]
    # small picks are relative to the packets' ids, the rest taken as they are
    up_to = ids[0] - 1 + pick if is_int(pick, -2, 6) else pick
    valid = (is_int(up_to, 0, U32) and is_int(verdict, 0, U32) and verdict in PLAIN
             and valid_mark(mark))
    ok, out = attempt(q.verdict_batch, up_to, verdict, mark=mark)
    assert ok == valid, out
    done = [p for p in pkts if ok and p.id <= up_to]
    if ok:
        assert out == len(done)
        if verdict == Verdict.REPEAT and not mark:
            # unmarked, they come straight back
            qenv.settle_requeued(*[mk for p, mk in zip(pkts, marks) if p in done])
    for p, mk in zip(pkts, marks):
        if p in done:
            assert p.has_verdict
            if verdict == Verdict.DROP:
                qenv.lost.add(mk)
                continue
            assert qenv.arrival(mk) == mk + b"b"
            assert qenv.logged_mark(mk) == (mark or 0)
        else:
            assert not p.has_verdict
            p.accept()
            assert qenv.arrival(mk) == mk + b"b"
    qenv.settled()
    # a packet sent afterwards is handed out as usual
    last = qenv.marker()
    qenv.queued(last + b"after").accept()
    assert qenv.arrival(last) == last + b"after"
    qenv.settled()


# -- Tuple, Flow, EventFilter, LabelMap ----------------------------------------------------

ADDRS4 = st.builds(lambda n: ipaddress.IPv4Address(int(V4_NET.network_address) + n),
                   st.integers(1, V4_NET.num_addresses - 2))
ADDRS6 = st.builds(lambda n: ipaddress.IPv6Address(int(V6_NET.network_address) + n),
                   st.integers(1, 2**32))


def addr_forms(a: Any) -> st.SearchStrategy:
    """The forms an address argument takes: object, text, packed, int."""
    return st.sampled_from([a, str(a), a.packed, int(a)])


ADDR_ANY = st.one_of(ADDRS4.flatmap(addr_forms), ADDRS6.flatmap(addr_forms), ANY,
                     st.sampled_from(["10.0.0.256", "::g", "1.2.3", "fe80::1%lo",
                                      "10.0.0.1\0", " 10.0.0.1"]))
PROTOS = st.sampled_from(["tcp", "udp", "TCP", "icmp", "icmpv6", "sctp", "gre", "udplite",
                          "dccp", 6, 17, 1, 58, 132, 47, 136, 33, 0, 255, 256, -1,
                          "no-such-proto", "\ud800", "a\0", "", 6.0])


def addr_value(v: Any) -> Optional[ipaddress._BaseAddress]:
    """The address nfbind must make of ``v``, or None when it must refuse it."""
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return v
    if isinstance(v, bool) or not isinstance(v, (str, bytes, int)):
        return None
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


@given(src=ADDR_ANY, dst=ADDR_ANY, proto=st.one_of(PROTOS, ANY),
       sport=st.one_of(st.none(), st.integers(0, U16), INTS, JUNK),
       dport=st.one_of(st.none(), st.integers(0, U16), INTS, JUNK))
@FAST
@example(src="10.0.0.1", dst="10.0.0.2", proto="\ud800", sport=1, dport=2)
@example(src="10.0.0.1", dst="10.0.0.2", proto="a\0b", sport=1, dport=2)
def test_tuple(src, dst, proto, sport, dport):
    ok, t = attempt(Tuple, src, dst, proto, sport, dport)
    a, b = addr_value(src), addr_value(dst)
    if a is None or b is None or a.version != b.version:
        assert not ok
    if not is_int(sport, 0, U16) and sport is not None:
        assert not ok
    if not is_int(dport, 0, U16) and dport is not None:
        assert not ok
    if ok:
        assert t.src == a and t.dst == b
        assert is_int(int(t.proto), 0, 255)
        assert t.sport == sport and t.dport == dport
        assert str(t)
        assert t.family in (nfbind.Family.IPV4, nfbind.Family.IPV6)


def valid_labels(v: Any) -> bool:
    """Label bits: one int 0..127, or a collection of them (no bytes)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return is_int(v, 0, 127)
    if isinstance(v, (str, bytes, bytearray, memoryview)):
        return False
    try:
        return all(is_int(x, 0, 127) for x in v)
    except TypeError:
        return False


FLOW_SPEC = {
    "mark": (st.integers(0, U32), int_in(0, U32)),
    "secmark": (st.integers(0, U32), int_in(0, U32)),
    "zone": (st.integers(0, U16), int_in(0, U16)),
    "timeout": (st.one_of(st.none(), st.integers(0, U32)), opt(int_in(0, U32))),
    "status": (st.sampled_from([CtStatus(0), CtStatus.ASSURED, CtStatus.SEEN_REPLY, 0, U32]),
               int_in(0, U32)),
    "use": (st.one_of(st.none(), st.integers(0, U32)), opt(int_in(0, U32))),
    "id": (st.one_of(st.none(), st.integers(0, U32)), opt(int_in(0, U32))),
    "state": (st.one_of(st.none(), st.integers(0, 255)), opt(int_in(0, 255))),
    "labels": (st.frozensets(st.integers(0, 127), max_size=5), lambda v: valid_labels(v)),
    "helper": (st.one_of(st.none(), st.sampled_from(["ftp", "sip", "x" * 15])),
               lambda v: v is None or (isinstance(v, str) and "\0" not in v
                                       and 0 < len(v.encode("utf-8", "surrogatepass")) < 16
                                       and not any("\ud800" <= c <= "\udfff" for c in v))),
    "family": (st.sampled_from([None, socket.AF_INET, "ipv4", nfbind.Family.IPV4]),
               lambda v: v is None or (is_int(v, 0, 255) and v == socket.AF_INET)
               or (isinstance(v, str) and v.lower() in ("ipv4", "inet", "ip"))),
}


@given(data=st.data())
@FAST
def test_flow(data):
    kw, valid = draw_kwargs(data, FLOW_SPEC)
    orig = Tuple("10.77.0.1", "10.77.0.2", "tcp", 1000, 80)
    ok, f = attempt(Flow, orig, **kw)
    if "helper" in kw and isinstance(kw["helper"], str) and "\0" in kw["helper"] and ok:
        valid = True  # a NUL is passed on as it is; the kernel knows no such helper
    assert ok == valid, (kw, f)
    if ok:
        assert f.orig == orig and f.family == nfbind.Family.IPV4
        assert is_int(f.mark, 0, U32) and is_int(f.zone, 0, U16)
        assert all(is_int(b, 0, 127) for b in f.labels)
        assert str(f)


@given(helper=st.one_of(st.text(max_size=20), JUNK))
@FAST
@example(helper="\ud800")
@example(helper="ftp\udcff")
def test_flow_helper(helper):
    orig = Tuple("10.77.0.1", "10.77.0.2", "tcp", 1000, 80)
    ok, f = attempt(Flow, orig, helper=helper)
    if ok:
        assert helper is None or (isinstance(helper, str)
                                  and 0 < len(helper.encode()) < 16)


def _item_ok(v: Any, test) -> bool:
    try:
        return bool(test(v))
    except Exception:
        return False


def valid_protos(p: Any) -> bool:
    def one(v):
        if isinstance(v, str):
            if v.lower() in ("tcp", "udp", "icmp", "icmpv6", "icmp6", "ipv6-icmp", "sctp",
                             "gre", "udplite", "dccp"):
                return True
            try:
                socket.getprotobyname(v)  # a name the system's protocol table knows
            except (OSError, ValueError):
                return False
            return True
        return is_int(v, 0, 255)

    if p is None:
        return True
    if isinstance(p, (int, str)) and not isinstance(p, bool):
        return one(p)
    if isinstance(p, (bytes, bytearray, memoryview)) or isinstance(p, (bool, float)):
        return False
    try:
        return all(one(v) for v in p)
    except TypeError:
        return False


def valid_ports(p: Any) -> bool:
    def one(v):
        if isinstance(v, range):
            return (v.step == 1 and len(v) > 0 and is_int(v.start, 0, U16)
                    and is_int(v.stop - 1, 0, U16))
        return is_int(v, 0, U16)

    if p is None:
        return True
    if isinstance(p, (int, range)) and not isinstance(p, bool):
        return one(p)
    if isinstance(p, (str, bytes, bytearray, memoryview)):
        return False
    try:
        return all(one(v) for v in p)
    except TypeError:
        return False


def valid_networks(v: Any) -> bool:
    """Addresses or networks: one, or a collection of them (bools are neither)."""
    if v is None:
        return True
    if isinstance(v, (bytearray, memoryview)):
        return False
    single = (str, bytes, int, ipaddress.IPv4Address, ipaddress.IPv6Address,
              ipaddress.IPv4Network, ipaddress.IPv6Network)
    try:
        items = [v] if isinstance(v, single) else list(v)
    except TypeError:
        return False
    for x in items:
        if isinstance(x, bool):
            return False
        try:
            ipaddress.ip_network(x, strict=False)
        except (ValueError, TypeError):
            return False
    return True


@given(proto=st.one_of(PROTOS, st.lists(PROTOS, max_size=3), ANY),
       sport=st.one_of(st.integers(0, U16), st.builds(range, st.integers(-2, 70000),
                                                       st.integers(-2, 70000)),
                       st.lists(st.integers(0, U16), max_size=3), ANY),
       src=st.one_of(st.just("10.77.0.0/16"), st.just(["10.0.0.1", "fd00::/8"]),
                     ADDR_ANY, st.lists(ADDR_ANY, max_size=2)),
       mark=MARKS)
@FAST
@example(proto=b"tcp", sport=None, src=None, mark=None)
@example(proto=0.0, sport=None, src=None, mark=None)
@example(proto=None, sport=b"\x00P", src=None, mark=None)
@example(proto="\ud800", sport=None, src=None, mark=None)
@example(proto=None, sport=None, src=True, mark=None)
@example(proto=None, sport="", src=None, mark=None)
@example(proto=None, sport=None, src=[False], mark=None)
def test_event_filter(proto, sport, src, mark):
    ok, f = attempt(EventFilter, proto=proto, sport=sport, src=src, mark=mark)
    valid = (valid_protos(proto) and valid_ports(sport) and valid_mark(mark)
             and valid_networks(src))
    assert ok == valid, f
    if ok:
        assert all(is_int(int(p), 0, 255) for p in f.proto)
        assert all(0 <= a <= b <= U16 for a, b in f.sport)
        flow = Flow(Tuple("10.77.0.1", "10.77.0.2", "tcp", 1000, 80), mark=3)
        assert f.matches(flow) in (True, False)


@given(name=st.one_of(st.text(max_size=10), JUNK, st.sampled_from(["five", "\ud800", "fi\0ve"])),
       bit=st.one_of(st.integers(0, 127), INTS, JUNK))
@FAST
@example(name="\ud800", bit=5)
def test_labelmap(tmp_path_factory, name, bit):
    path = tmp_path_factory.getbasetemp() / "connlabel.conf"
    if not path.exists():
        path.write_text("5 five\n127 last\n")
    lm = LabelMap(str(path))
    try:
        b = lm.bit(name)
    except KeyError as e:
        assert "no label named" in str(e)
    except TypeError as e:
        clear_error(e)
        assert not isinstance(name, str)
    else:
        assert {"five": 5, "last": 127}[name] == b
    ok, n = attempt(lm.name, bit)
    assert ok == is_int(bit, 0, 127), n
    if ok:
        assert n == {5: "five", 127: "last"}.get(bit)


@given(path=st.one_of(st.text(max_size=20), JUNK, st.sampled_from(["/", "/etc", "\ud800x",
                                                                    "/etc/passwd\0"])))
@FAST
@example(path=b"/etc/hostname")
@example(path=b"/nonexistent")
def test_labelmap_path(path):
    try:
        lm = LabelMap(path)
    except FileNotFoundError as e:
        assert "connlabel.conf" in str(e)
    except (ValueError, TypeError) as e:
        clear_error(e)
    else:
        assert isinstance(lm.path, str)


# -- conntrack table round trips ------------------------------------------------------------

@pytest.fixture(scope="module")
def ctns(mns):
    """The module namespace with labels kept for new flows, and a Conntrack."""
    mns.iptables("-A", "OUTPUT", "-m", "connlabel", "--label", "1", "--set")
    with Conntrack(netns=mns.name) as ct:
        yield ct
        ct.flush()


@pytest.mark.integration
@KERNEL
@given(v6=st.booleans(), a=st.integers(1, 60000), b=st.integers(1, 60000),
       proto=st.sampled_from(["tcp", "udp", "icmp"]), data=st.data())
def test_conntrack_round_trip(ctns, v6, a, b, proto, data):
    ct = ctns
    net = V6_NET if v6 else V4_NET
    src = net.network_address + a
    dst = net.network_address + 60000 + b
    if proto == "icmp":
        proto = "icmpv6" if v6 else "icmp"
        tup = Tuple(src, dst, proto, icmp_type=128 if v6 else 8, icmp_id=a)
    else:
        tup = Tuple(data.draw(addr_forms(src)), data.draw(addr_forms(dst)), proto, a, b)
    kw, valid = draw_kwargs(data, {
        "mark": FLOW_SPEC["mark"], "zone": FLOW_SPEC["zone"],
        "timeout": (st.integers(1, 10000), opt(int_in(0, U32))),
        "labels": FLOW_SPEC["labels"]})
    kw.setdefault("timeout", 600)
    ok, flow = attempt(Flow, tup, **kw)
    assert ok == valid, flow
    if not ok:
        return
    if flow.timeout is None:
        with pytest.raises(ValueError, match="timeout"):
            ct.create(flow)
        return
    try:
        ct.delete(flow)
    except NotFound:
        pass
    try:
        ct.create(flow)
        got = ct.get(tup, zone=flow.zone)
    except NotFound:
        assert flow.timeout == 0  # a flow without time left is gone at once
        return
    assert got.orig == tup and got.mark == flow.mark and got.zone == flow.zone
    assert got.labels == flow.labels
    # an update with arbitrary values: valid ones land in the table
    ukw, uvalid = draw_kwargs(data, {
        "mark": (st.integers(0, U32), opt(int_in(0, U32))),
        "timeout": (st.integers(1, 10000), opt(int_in(0, U32))),
        "labels_add": (st.frozensets(st.integers(0, 127), max_size=3), opt(valid_labels)),
    })
    la = ukw.get("labels_add")
    adds = (set() if la is None or not valid_labels(la)
            else {la} if isinstance(la, int) else set(la))
    uvalid = uvalid and (ukw.get("mark") is not None or ukw.get("timeout") is not None
                         or bool(adds))
    try:
        ok, err = attempt(ct.update, tup, zone=flow.zone, **ukw)
    except FileNotFoundError as e:
        # label names need connlabel.conf, which this machine lacks
        assert "connlabel.conf" in str(e) and not uvalid
        ok = False
    assert ok == uvalid, (ukw, err)
    if ok and ukw.get("timeout") == 0:
        return  # expired at once
    after = ct.get(tup, zone=flow.zone)
    if ok:
        if ukw.get("mark") is not None:
            assert after.mark == ukw["mark"]
        assert after.labels == flow.labels | adds
    else:
        assert after.mark == flow.mark and after.labels == flow.labels
    ct.delete(tup, zone=flow.zone)
    with pytest.raises(NotFound):
        ct.get(tup, zone=flow.zone)


LABEL_NAMES = {"five": 5, "sixty-four": 64, "last": 127}


@pytest.fixture(scope="module")
def labelled(ctns, mns, tmp_path_factory):
    """A Conntrack with a connlabel.conf, and a flow to label."""
    conf = tmp_path_factory.mktemp("labels") / "connlabel.conf"
    conf.write_text("".join("%d %s\n" % (b, n) for n, b in LABEL_NAMES.items()))
    tup = Tuple("10.77.1.1", "10.77.1.2", "udp", 4000, 53)
    with Conntrack(netns=mns.name, labelmap=str(conf)) as ct:
        ct.create(Flow(tup, timeout=3600))
        yield ct, tup


LABEL_ITEMS = st.one_of(st.sampled_from(sorted(LABEL_NAMES)), st.integers(0, 127),
                        st.sampled_from(["nope", "", "\ud800", "fi\0ve", 128, -1, True, 1.0, None]))


@pytest.mark.integration
@KERNEL
@given(labels=st.one_of(LABEL_ITEMS, st.lists(LABEL_ITEMS, max_size=4),
                        st.frozensets(st.integers(0, 127), max_size=4), JUNK))
@example(labels="\ud800")
@example(labels=b"five")
def test_conntrack_labels_by_name(labelled, labels):
    """update(labels=...) takes bits and connlabel.conf names; an unknown name
    is a KeyError naming the file, anything else invalid a ValueError/TypeError."""
    ct, tup = labelled
    before = ct.get(tup).labels
    items = ([labels] if isinstance(labels, (int, str)) and not isinstance(labels, bool)
             else None if isinstance(labels, (bytes, bytearray, memoryview)) else labels)
    try:
        items = list(items) if items is not None else None
    except TypeError:
        items = None
    want: Optional[Set[int]] = None
    unknown = False
    if items is not None:
        want = set()
        for v in items:
            if isinstance(v, str):
                if v in LABEL_NAMES:
                    want.add(LABEL_NAMES[v])
                else:
                    unknown = True
            elif is_int(v, 0, 127):
                want.add(v)
            else:
                want = None
                break
    try:
        ok, err = attempt(ct.update, tup, labels=labels)
    except KeyError as e:
        assert unknown and "no label named" in str(e) and "connlabel.conf" in str(e)
        assert ct.get(tup).labels == before
        return
    assert ok == (want is not None and not unknown), (labels, err)
    after = ct.get(tup).labels
    assert after == (want if ok else before)
    if ok:
        assert ct.label_names(after) == {n for n, b in LABEL_NAMES.items() if b in after}


LOOKUPS = st.one_of(
    st.builds(Tuple, st.just("10.77.2.1"), st.just("10.77.2.2"), st.sampled_from(["tcp", "udp"]),
              st.one_of(st.none(), st.integers(1, U16)), st.one_of(st.none(), st.integers(1, U16))),
    st.builds(lambda: Flow(Tuple("10.77.2.1", "10.77.2.2", "tcp", 1, 2), zone=7)),
    st.builds(Tuple, st.just("10.77.2.1"), st.just("10.77.2.2"), st.just("icmp"),
              icmp_type=st.one_of(st.none(), st.just(8)), icmp_id=st.one_of(st.none(), st.just(9))),
    JUNK, INTS)


@pytest.mark.integration
@KERNEL
@given(target=LOOKUPS, zone=st.one_of(st.none(), st.integers(0, U16), INTS, JUNK),
       how=st.sampled_from(["get", "delete", "update"]), mark=MARKS)
def test_conntrack_lookup_arguments(ctns, target, zone, how, mark):
    """get/delete/update of a flow that is not in the table: NotFound for
    complete, valid arguments, ValueError/TypeError for anything else."""
    ct = ctns
    complete = isinstance(target, (Tuple, Flow)) and (
        (target.orig if isinstance(target, Flow) else target).sport is not None
        if int((target.orig if isinstance(target, Flow) else target).proto) != 1
        else (target.icmp_type is not None and target.icmp_id is not None))
    if isinstance(target, Tuple) and int(target.proto) != 1:
        complete = complete and target.dport is not None
    valid = complete and (zone is None or is_int(zone, 0, U16))
    if how == "update":
        valid = valid and mark is not None and is_int(mark, 0, U32)
        call = lambda: ct.update(target, zone=zone, mark=mark)  # noqa: E731
    else:
        call = lambda: getattr(ct, how)(target, zone=zone)  # noqa: E731
    try:
        ok, err = attempt(call)
    except NotFound as e:
        assert valid and "no such flow" in str(e)
        return
    assert not ok and not valid, (target, zone, mark, err)


@pytest.mark.integration
@KERNEL
@given(family=st.one_of(st.sampled_from([None, "ipv4", "ipv6", socket.AF_INET, socket.AF_INET6]),
                        ANY),
       zone=st.one_of(st.none(), st.integers(0, U16), ANY),
       mark=MARKS, table=st.one_of(st.sampled_from(["conntrack", "dying", "unconfirmed"]), JUNK))
@example(family=None, zone=None, mark=None, table=["conntrack"])
def test_conntrack_dump_filters(ctns, family, zone, mark, table):
    def fam_ok(f):
        if f is None:
            return True
        if isinstance(f, str):
            return f.lower() in ("ipv4", "inet", "ip", "ipv6", "inet6", "ip6")
        return is_int(f, 0, 255) and f in (socket.AF_INET, socket.AF_INET6)

    valid = (fam_ok(family) and (zone is None or is_int(zone, 0, U16)) and valid_mark(mark)
             and isinstance(table, str) and table in ("conntrack", "dying", "unconfirmed"))
    ok, it = attempt(ctns.dump, family, zone=zone, mark=mark, table=table)
    assert ok == valid, it
    if ok:
        assert all(isinstance(f, Flow) for f in it)


# -- network namespaces ----------------------------------------------------------------------

NETNS_VALUES = st.one_of(
    st.sampled_from(["", "..", ".", "/", "a/b", "../..", "a\0b", "x" * 300, "x" * 5000,
                     "no-such-netns-nfbprop", "/proc/self/ns/net", "/proc/self/ns/pid",
                     "/etc/passwd", "/tmp", "\ud800", "/run/netns/../netns"]),
    st.text(max_size=30), INTS, JUNK)


def netns_outcome(value: Any, call) -> str:
    """Run ``call``; "ok", or the kind of the documented refusal."""
    try:
        call()
    except FileNotFoundError as e:
        assert "not found" in str(e) or "No such file" in str(e), e
        return "missing"
    except NetlinkError as e:
        # the kernel refused a file that is no network namespace
        assert e.errno == errno.EINVAL and "network namespace" in str(e), e
        assert isinstance(value, (str, int)) and not isinstance(value, bool)
        return "kernel"
    except (ValueError, TypeError) as e:
        clear_error(e)
        return "invalid"
    return "ok"


@pytest.mark.integration
@KERNEL
@given(value=NETNS_VALUES, cls=st.sampled_from(["resolve", "socket", "NfQueue", "NfLog",
                                                "Conntrack", "EventStream"]))
@example(value=2**70, cls="resolve")
@example(value=2**31, cls="NfQueue")
@example(value="/proc/self/ns/pid", cls="Conntrack")
def test_netns_argument(mns, value, cls):
    calls = {
        "resolve": lambda: nfnetns.resolve(value),
        "socket": lambda: nfnetns.socket(value).close(),
        "NfQueue": lambda: NfQueue(QNUM + 2, netns=value).close(),
        "NfLog": lambda: NfLog(GROUP + 2, netns=value).close(),
        "Conntrack": lambda: Conntrack(netns=value).close(),
        "EventStream": lambda: nfbind.EventStream(netns=value).close(),
    }
    kind = netns_outcome(value, calls[cls])
    if value is None:
        assert kind == "ok"
    elif isinstance(value, bool) or not isinstance(value, (str, int, os.PathLike)):
        assert kind == "invalid"
    elif isinstance(value, str) and (value == "" or "\0" in value):
        assert kind == "invalid"
    elif isinstance(value, int) and value < 0:
        assert kind == "invalid"
    if kind == "ok" and isinstance(value, str) and "/" not in value:
        assert os.path.exists(os.path.join(nfnetns.NETNS_RUN_DIR, value))


@pytest.mark.integration
def test_netns_forms_of_one_namespace(mns):
    """A namespace by name, path, PathLike and fd: all the same table."""
    import pathlib

    path = os.path.join(nfnetns.NETNS_RUN_DIR, mns.name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        inodes = set()
        for value in (mns.name, path, pathlib.Path(path), fd):
            inodes.add(nfnetns.call_in(value, lambda: os.stat("/proc/thread-self/ns/net").st_ino))
        assert len(inodes) == 1
        assert inodes != {os.stat("/proc/self/ns/net").st_ino}
    finally:
        os.close(fd)


# -- the values that found bugs, as plain cases -------------------------------------------

T = ("10.77.0.1", "10.77.0.2")


@pytest.mark.parametrize("make, exc", [
    (lambda: Tuple(*T, "\ud800", 1, 2), ValueError),
    (lambda: Tuple(*T, "tc\0p", 1, 2), ValueError),
    (lambda: Flow(Tuple(*T, "tcp", 1, 2), helper="\ud800"), ValueError),
    (lambda: Flow(Tuple(*T, "tcp", 1, 2), labels=b"\x01\x02"), TypeError),
    (lambda: EventFilter(proto=b"tcp"), TypeError),
    (lambda: EventFilter(proto=0.0), TypeError),
    (lambda: EventFilter(sport=b"\x00P"), TypeError),
    (lambda: EventFilter(src=True), ValueError),
    (lambda: EventFilter(sport=""), TypeError),
    (lambda: nfnetns.resolve(2**70), ValueError),
], ids=["proto-surrogate", "proto-nul", "helper-surrogate", "labels-bytes", "filter-proto-bytes",
        "filter-proto-float", "filter-sport-bytes", "filter-src-bool", "filter-sport-text",
        "netns-fd-2**70"])
def test_found_values(make, exc):
    with pytest.raises(exc) as ei:
        make()
    clear_error(ei.value)


def test_found_values_labelmap(tmp_path):
    conf = tmp_path / "connlabel.conf"
    conf.write_text("5 five\n")
    lm = LabelMap(os.fsencode(str(conf)))  # a bytes path
    assert lm.path == str(conf) and lm.bit("five") == 5
    with pytest.raises(KeyError):
        lm.bit("\ud800")
