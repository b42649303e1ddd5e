# SPDX-License-Identifier: GPL-2.0-or-later
"""Every public entry point refuses a bad argument before it reaches the kernel.

One table: NfQueue, NfLog, Conntrack, EventStream and serve(), and the
methods of an open Conntrack; each row is a bad value, the exception it must
raise and a fragment of the message that names the argument (or the fix).

* Constructors and serve() must raise before any netlink socket is opened,
  before any process is forked, and without leaving a descriptor open; they
  run in this process, without privileges.
* The methods of an open Conntrack (dump, get, create, update, delete, flush,
  events, the conntrack-go verbs) run against a throw-away namespace holding
  one flow, which must be there unchanged afterwards (``conntrack -L``).
* The loops of an open NfQueue, NfLog and EventStream (``run()``,
  ``drain()``) refuse a bad handler, timeout or batch count at once, before
  they read or wait.
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple as Tup

import pytest

import nfbind
from nfbind import NfLog, NfQueue, Verdict
from nfbind.conntrack import Conntrack, EventStream, Flow, Tuple
from nfbind.enums import CtEvent

from helpers.conntrack import conntrack_l, ct_ns, row_key
from helpers.netns import make_netns
from helpers.procs import children, open_fds


class Junk:
    """An object of no type nfbind knows."""

    def __repr__(self) -> str:
        return "Junk()"


def accept(pkt: Any) -> Verdict:
    return Verdict.ACCEPT


class Case(NamedTuple):
    """One bad call: ``target(*args, **kwargs)`` raises ``exc`` whose message
    contains ``says``."""

    target: str
    args: tuple
    kwargs: Dict[str, Any]
    exc: type
    says: str


MISSING_NS = "nfbt-missing-%d" % os.getpid()

#: the netns argument of every class; nfbind.netns.resolve gives the messages
NETNS = [
    (3.5, TypeError, "netns"),
    (True, TypeError, "netns"),
    (b"blue", TypeError, "netns"),
    (["blue"], TypeError, "netns"),
    (Junk(), TypeError, "netns"),
    ("", ValueError, "netns"),
    ("a\0b", ValueError, "netns"),
    (MISSING_NS, FileNotFoundError, "ip netns add %s" % MISSING_NS),
]

#: options NfQueue and NfLog share, with the same limits
CHANNEL = [
    ({"copy_mode": 7}, ValueError, "copy_mode"),
    ({"copy_mode": "PACKET"}, TypeError, "copy_mode"),
    ({"copy_range": -1}, ValueError, "copy_range"),
    ({"copy_range": 65536}, ValueError, "copy_range"),
    ({"copy_range": 70000}, ValueError, "copy_range"),
    ({"conntrack": "yes"}, TypeError, "conntrack"),
    ({"conntrack": None}, TypeError, "conntrack"),
    ({"no_enobufs": 1}, TypeError, "no_enobufs"),
    ({"rcvbuf": 0}, ValueError, "rcvbuf"),
    ({"rcvbuf": "big"}, TypeError, "rcvbuf"),
    ({"on_overrun": "x"}, ValueError, "on_overrun"),
]

NFQUEUE = [
    ((-1,), {}, ValueError, "queue_num"),
    ((65536,), {}, ValueError, "queue_num"),
    (("3",), {}, TypeError, "queue_num"),
    ((True,), {}, TypeError, "queue_num"),
    ((1.5,), {}, TypeError, "queue_num"),
    ((None,), {}, TypeError, "queue_num"),
    ((1,), {"max_len": 0}, ValueError, "max_len"),
    ((1,), {"max_len": 65537}, ValueError, "max_len"),
    ((1,), {"on_error": 99}, ValueError, "on_error"),
    ((1,), {"on_error": Verdict.QUEUE}, ValueError, "on_error"),
    ((1,), {"default_verdict": -1}, ValueError, "default_verdict"),
    ((1,), {"fail_open": 1}, TypeError, "fail_open"),
    ((1,), {"gso": "yes"}, TypeError, "gso"),
    ((1,), {"uid_gid": 0}, TypeError, "uid_gid"),
    ((1,), {"secctx": 1.0}, TypeError, "secctx"),
]

NFLOG = [
    (([],), {}, ValueError, "groups"),
    ((-1,), {}, ValueError, "group"),
    ((65536,), {}, ValueError, "group"),
    (([1, 70000],), {}, ValueError, "group"),
    (([5, 6, 5],), {}, ValueError, "duplicates"),
    (("5",), {}, TypeError, "groups"),
    ((b"5",), {}, TypeError, "groups"),
    ((None,), {}, TypeError, "groups"),
    ((True,), {}, TypeError, "group"),
    (([1, "2"],), {}, TypeError, "group"),
    ((1.5,), {}, TypeError, "groups"),
    ((5,), {"family": 99}, ValueError, "family"),
    ((5,), {"family": "inet"}, TypeError, "family"),
    ((5,), {"qthresh": 0}, ValueError, "qthresh"),
    ((5,), {"qthresh": 2 ** 32}, ValueError, "qthresh"),
    ((5,), {"qthresh": 1.0}, TypeError, "qthresh"),
    ((5,), {"timeout": -1}, ValueError, "timeout"),
    ((5,), {"timeout": "1"}, TypeError, "timeout"),
    ((5,), {"timeout": True}, TypeError, "timeout"),
    ((5,), {"nlbufsiz": 100}, ValueError, "nlbufsiz"),
    ((5,), {"nlbufsiz": 10 ** 6}, ValueError, "nlbufsiz"),
    ((5,), {"seq": 1}, TypeError, "seq"),
    ((5,), {"seq_global": "yes"}, TypeError, "seq_global"),
]

CONNTRACK = [
    ((), {"timeout": 0}, ValueError, "timeout"),
    ((), {"labelmap": 5}, TypeError, "labelmap"),
]

#: EventStream(...) and Conntrack.events(...) take the same arguments
EVENTS = [
    ((0,), {}, ValueError, "types"),
    ((8,), {}, ValueError, "types"),
    ((CtEvent.NEW, {"proto": "udp"}), {}, TypeError, "EventFilter"),
    ((), {"on_overrun": "ignore"}, ValueError, "on_overrun"),
    ((), {"rcvbuf": 10}, ValueError, "rcvbuf"),
    ((), {"no_enobufs": 1}, TypeError, "no_enobufs"),
    ((), {"reliable": "yes"}, TypeError, "reliable"),
]

SERVE = [
    ((None,), {}, TypeError, "handler"),
    ((accept,), {"queues": [1, 2, 1]}, ValueError, "queues"),
    ((accept,), {"queues": [70000]}, ValueError, "queues"),
    ((accept,), {"queues": []}, ValueError, "queues"),
    ((accept,), {"queues": range(2), "workers": 3}, ValueError, "workers"),
    ((accept,), {"queues": range(2), "workers": 0}, ValueError, "workers"),
    ((accept,), {"queues": range(2), "workers": "2"}, TypeError, "workers"),
    ((accept,), {"queues": range(2), "bogus": 1}, TypeError, "bogus"),
    ((accept,), {"queues": range(2), "stop_event": Junk()}, TypeError, "stop_event"),
]

#: the flow the method rows' namespace holds; the tuples below are about it
FLOW_T = Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2)
#: conntrack-go verbs: src, dst, proto, sport, dport, then the mark
VERB = ("10.0.0.1", "10.0.0.2", "udp", 1, 2)

CONNTRACK_METHODS = [
    ("dump", (), {"family": 3}, ValueError, "family"),
    ("dump", (), {"family": "ipx"}, ValueError, "family"),
    ("dump", (), {"mark": 1, "mark_mask": 1 << 32}, ValueError, "mark_mask"),
    ("dump", (), {"zone": -1}, ValueError, "zone"),
    ("dump", (), {"status_mask": 4}, ValueError, "status_mask needs status"),
    ("dump", (), {"table": "nope"}, ValueError, "table"),
    ("dump", (), {"src": "10.0.0.300"}, ValueError, "src"),
    ("dump", (), {"reply_dst": 1.5}, TypeError, "reply_dst"),
    ("dump", (), {"sport": 70000}, ValueError, "sport"),
    ("dump", (), {"proto": "nosuch"}, ValueError, "proto"),
    ("dump", (), {"family": "ipv4", "dst": "fd00::/8"}, ValueError, "family is IPv4"),
    ("dump", (), {"zero_counters": 1}, TypeError, "zero_counters"),
    ("dump", (), {"table": "dying", "zero_counters": True}, ValueError, "zero_counters"),
    ("get", (FLOW_T,), {"reply": 1}, TypeError, "reply"),
    ("get", (Tuple("10.0.0.1", "10.0.0.2", "tcp", 1),), {}, ValueError, "sport and dport"),
    ("get", (("10.0.0.1", "10.0.0.2"),), {}, TypeError, "Flow or a Tuple"),
    ("get", (FLOW_T,), {"zone": 70000}, ValueError, "zone"),
    ("delete", (Tuple("10.0.0.1", "10.0.0.2", "icmp"),), {}, ValueError,
     "icmp_type and icmp_id"),
    ("create", (FLOW_T,), {}, TypeError, "needs a Flow"),
    ("create", (Flow(FLOW_T),), {}, ValueError, "timeout"),
    ("create_expect", (FLOW_T,), {}, TypeError, "Expectation"),
    ("update", (FLOW_T,), {}, ValueError, "something to change"),
    ("update", (FLOW_T,), {"labels_add": {1}, "labels_remove": {1}}, ValueError, "labels"),
    ("update", (FLOW_T,), {"labels": 3.5}, TypeError, "labels"),
    ("update", (FLOW_T,), {"labels": {1}, "labels_add": {2}}, ValueError, "not both"),
    ("flush", (), {"family": 7}, ValueError, "family"),
    ("flush", (), {"mark": 1 << 32}, ValueError, "mark"),
    ("flush", (), {"mark": "1"}, TypeError, "mark"),
    ("flush", (), {"status_mask": 1}, ValueError, "status_mask needs status"),
    ("flush", (), {"zone": 70000}, ValueError, "zone"),
    ("flush", (), {"src": "10.0.0.1", "dst": "fd00::1"}, ValueError, "mix IPv4 and IPv6"),
    ("update_mark", VERB + (-1,), {}, ValueError, "mark"),
    ("update_mark", ("10.0.0.1", "10.0.0.2", "udp", 70000, 2, 1), {}, ValueError, "sport"),
    ("update_mark", ("10.0.0.300", "10.0.0.2", "udp", 1, 2, 1), {}, ValueError, "src"),
    ("update_mark", ("10.0.0.1", "10.0.0.2", "nosuchproto", 1, 2, 1), {}, ValueError,
     "protocol"),
    ("update_mark_for_available_flow", ([1],) + VERB + (3,), {}, TypeError, "Flow objects"),
] + [("events",) + row for row in EVENTS]

#: the loops of an open NfQueue, NfLog and EventStream: run() and drain()
LOOPS = [
    ("run", (accept,), {"timeout": float("nan")}, ValueError, "timeout"),
    ("run", (accept,), {"timeout": "1"}, TypeError, "timeout"),
    ("run", (accept,), {"timeout": 10 ** 400}, ValueError, "timeout"),
    ("run", (accept,), {"timeout": True}, TypeError, "timeout"),
    ("run", (accept,), {"timeout": -1}, ValueError, "timeout"),
    ("run", (accept,), {"timeout": [1]}, TypeError, "timeout"),
    ("run", (None,), {}, TypeError, "handler"),
    ("drain", (None,), {}, TypeError, "handler"),
    ("drain", ("accept",), {}, TypeError, "handler"),
    ("drain", (accept,), {"max_batches": 0}, ValueError, "max_batches"),
    ("drain", (accept,), {"max_batches": "2"}, TypeError, "max_batches"),
    ("drain", (accept,), {"max_batches": True}, TypeError, "max_batches"),
]


def _cases() -> List[Case]:
    out: List[Case] = []
    for target, base, rows in (("NfQueue", (1,), NFQUEUE), ("NfLog", (5,), NFLOG),
                               ("Conntrack", (), CONNTRACK), ("EventStream", (), EVENTS),
                               ("serve", (accept,), SERVE)):
        out += [Case(target, *row) for row in rows]
        if target in ("NfQueue", "NfLog"):
            out += [Case(target, base, kw, exc, says) for kw, exc, says in CHANNEL]
        kw = {"queues": range(2)} if target == "serve" else {}
        out += [Case(target, base, dict(kw, netns=value), exc, says)
                for value, exc, says in NETNS]
    out += [Case("Conntrack." + m, args, kw, exc, says)
            for m, args, kw, exc, says in CONNTRACK_METHODS]
    out += [Case(cls + "." + m, args, kw, exc, says)
            for cls in ("NfQueue", "NfLog", "EventStream")
            for m, args, kw, exc, says in LOOPS]
    return out


CASES = _cases()


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 24 else text[:21] + "..."


def _case_id(c: Case) -> str:
    shown = [_short(a) for a in c.args if a is not accept]
    shown += ["%s=%s" % (k, _short(v)) for k, v in c.kwargs.items()]
    return "%s(%s)" % (c.target, ",".join(shown))


def _param(c: Case):
    # the methods need an open Conntrack on a namespace's table: root
    marks = [pytest.mark.integration if "." in c.target else pytest.mark.unit]
    return pytest.param(c, id=_case_id(c), marks=marks)


# -- what must not happen before the arguments are checked -----------------------------------------


@contextlib.contextmanager
def nothing_reaches_the_kernel(monkeypatch) -> Iterator[List[str]]:
    """Record (and refuse) every netlink socket opened and every fork."""
    seen: List[str] = []
    real_socket = socket.socket

    class GuardedSocket(real_socket):  # type: ignore[misc, valid-type]
        def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                     fileno: Any = None) -> None:
            if family == socket.AF_NETLINK:
                seen.append("a netlink socket was opened")
                raise AssertionError("a netlink socket was opened before the arguments "
                                     "were checked")
            super().__init__(family, type, proto, fileno)

    def no_fork() -> int:
        seen.append("a process was forked")
        raise AssertionError("a worker was forked before the arguments were checked")

    with monkeypatch.context() as m:
        m.setattr(socket, "socket", GuardedSocket)
        m.setattr(os, "fork", no_fork)
        yield seen


# -- the namespace of the method rows ------------------------------------------------------------


class Table(NamedTuple):
    ct: Conntrack
    snapshot: Callable[[], List[Tup[tuple, str, str]]]


@pytest.fixture(scope="module")
def ct_table() -> Iterator[Table]:
    """A namespace holding one flow (FLOW_T, mark 7) and a Conntrack on it."""
    ns = make_netns()
    try:
        ct_ns(ns, v6=False)
        with Conntrack(netns=ns.name) as ct:
            ct.create(Flow(FLOW_T, timeout=600, mark=7))

            def snapshot() -> List[Tup[tuple, str, str]]:
                return sorted((row_key(r), r.get("mark", "0"), r.get("zone", "0"))
                              for r in conntrack_l(ns))

            rows = conntrack_l(ns)
            assert len(rows) == 1 and rows[0].get("mark") == "7", rows
            yield Table(ct, snapshot)
    finally:
        ns.close()


@pytest.fixture(scope="module")
def open_channels() -> Iterator[Dict[str, Any]]:
    """An open NfQueue, NfLog and EventStream in a throw-away namespace."""
    ns = make_netns()
    opened: Dict[str, Any] = {}
    try:
        opened["NfQueue"] = NfQueue(1, netns=ns.name)
        opened["NfLog"] = NfLog(5, netns=ns.name)
        opened["EventStream"] = EventStream(netns=ns.name)
        yield opened
    finally:
        for ch in opened.values():
            ch.close()
        ns.close()


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_argument_is_rejected_first(case: Case, request, monkeypatch):
    cls, _, method = case.target.partition(".")
    table: Optional[Table] = None
    if cls == "Conntrack" and method:
        table = request.getfixturevalue("ct_table")
        call: Callable[..., Any] = getattr(table.ct, method)
        before = table.snapshot()
    elif method:  # a loop of an open channel: it must refuse at once, not wait
        call = getattr(request.getfixturevalue("open_channels")[cls], method)
    else:
        call = {"NfQueue": NfQueue, "NfLog": NfLog, "Conntrack": Conntrack,
                "EventStream": EventStream, "serve": nfbind.serve}[cls]
    fds = open_fds()
    kids = children()
    with nothing_reaches_the_kernel(monkeypatch) as seen:
        with pytest.raises(case.exc) as ei:
            call(*case.args, **case.kwargs)
    assert case.says in str(ei.value), "%s: %r does not name the argument" % (
        case.target, str(ei.value))
    assert seen == [], seen
    assert open_fds() <= fds, "a descriptor was left open"
    assert children() == kids, "a child process was started"
    if table is not None:
        assert table.snapshot() == before, "the request reached the kernel"
