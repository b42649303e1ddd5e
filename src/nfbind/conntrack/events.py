# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack events: :class:`EventStream`, :class:`EventFilter`, :class:`EventStats`.

An EventStream is a channel like NfQueue and NfLog (``nfbind._channel``):
the same loops (``run``, iteration, ``async for``, ``drain``), the same
receive path (the core's recvmmsg batcher, the ENOBUFS policy) and the same
counters (:class:`~nfbind._channel.ChannelStats`).  What is its own: the
multicast groups it joins, the BPF filter, decoding records into
:class:`Event` objects, the userspace part of the filter, reliable mode,
and :meth:`EventStream.resync`, which dumps the table through the socket
pool (``_pool``) after lost events.

A stream of the expectation table (:meth:`Conntrack.expect_events`) is an
``EventStream[ExpectEvent]``: the same class and loops, other groups
(NFNLGRP_CONNTRACK_EXP_*), its messages kept whole and parsed in Python.

Reliable mode (``reliable=True``) is conntrackd's: the socket asks for
broadcast delivery errors (NETLINK_BROADCAST_ERROR) and stops reporting
ENOBUFS (NETLINK_NO_ENOBUFS).  When a DESTROY event does not fit in the
buffer the kernel then learns it, keeps the dying flow (off the hash table,
still counted in nf_conntrack_count, its memory held) and sends the event
again from its event worker, every tenth of a second or so, until it is
delivered; a NEW or UPDATE event that does not fit is folded into the
flow's next event.  Nothing is lost, and a consumer that stops holds the
flows that end meanwhile: enough of them fill the table (new connections
are then dropped).
"""
from __future__ import annotations

import errno
import ipaddress
import typing as _t
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union, cast, overload

from .._channel import Channel, ChannelStats
from .._channels import missing

try:
    from .._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack.events") from e
from .._core import lib as core
from .._netlink import check_int
from .. import netns as _netns
from ..enums import CtEvent

if _t.TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVar

    from .._conntrack import struct_nfb_ct

    #: what a stream hands out: Event (flows), or ExpectEvent (expectations)
    _E = TypeVar("_E", default=Event)
else:
    _E = _t.TypeVar("_E")

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
from ..errors import PermissionDenied, error_from_errno
from ._pool import Pool
from ._wire import DumpFilter
from ._records import NLMSG, REC_SIZE, build_flows, event_codes, parse_expect
from .model import (
    U32_MAX,
    Event,
    ExpectEvent,
    Expectation,
    Flow,
    check_family,
    check_opt,
    check_proto,
    check_u16,
    check_u32,
)

__all__ = ["EventStream", "EventFilter", "EventStats"]

#: how long resync() waits for each answer when it opens sockets of its own
#: (Conntrack's default timeout), in milliseconds
_RESYNC_TIMEOUT_MS = 5000


# -- filters ---------------------------------------------------------------------------------


def _items(name: str, value: Any) -> List[Any]:
    """The values of a filter condition given as a collection (not text or bytes)."""
    try:
        if isinstance(value, (str, bytes, bytearray, memoryview)):
            raise TypeError
        return list(value)
    except TypeError:
        raise TypeError("%s must be a value or a collection of values, not %s"
                        % (name, type(value).__name__)) from None


def _ports(name: str, value: Any) -> _t.Tuple[_t.Tuple[int, int], ...]:
    if value is None:
        return ()
    if isinstance(value, (int, range)) and not isinstance(value, bool):
        value = (value,)
    out = []
    for v in _items(name, value):
        if isinstance(v, range):
            if v.step != 1 or not len(v):
                raise ValueError("%s: a port range must be a non-empty range with step 1" % name)
            out.append((check_u16(name, v.start), check_u16(name, v.stop - 1)))
        else:
            p = check_u16(name, v)
            out.append((p, p))
    return tuple(out)


def _networks(name: str, value: Any) -> _t.Tuple[IPNetwork, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes, int, ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Network, ipaddress.IPv6Network)):
        value = (value,)
    out: List[IPNetwork] = []
    for v in _items(name, value):
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(v)
            continue
        if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            out.append(ipaddress.ip_network(v))
            continue
        try:
            if isinstance(v, bool):  # ip_network(True) would be 0.0.0.1/32
                raise TypeError
            out.append(ipaddress.ip_network(v, strict=False))
        except (ValueError, TypeError):
            raise ValueError("%s: %r is not an address or network" % (name, v)) from None
    return tuple(out)


@dataclass(frozen=True)
class EventFilter:
    """Which events an :class:`EventStream` delivers (all given conditions must hold;
    a condition with several values matches any of them).

    Args:
        proto: protocol numbers or names ("tcp", "udp" ...).   kernel (BPF)
        src: networks or addresses the original source is in.  kernel (BPF) (*)
        dst: the same for the original destination.            kernel (BPF) (*)
        mark, mark_mask: ``flow.mark & mark_mask == mark & mark_mask``.  kernel (BPF)
        sport, dport: ports or ``range`` objects (original direction).  userspace

    (*) when all of ``src`` and ``dst`` are of one IP version, with at most
    127 IPv4 networks or one IPv6 network per direction; otherwise addresses
    are matched in userspace (libnetfilter_conntrack 1.0.9's BPF program gets
    those cases wrong: see ``_kernel_addrs``).  Everything is checked again in
    userspace, so the result is the same either way; only the kernel's work
    and the socket's load differ.

    Raises ValueError/TypeError naming the argument.
    """

    proto: Any = ()
    src: Any = ()
    dst: Any = ()
    sport: Any = ()
    dport: Any = ()
    mark: Optional[int] = None
    mark_mask: int = U32_MAX

    def __post_init__(self) -> None:
        p = self.proto
        if isinstance(p, (int, str)):
            p = (p,)
        protos = tuple(check_proto("proto", v) for v in (_items("proto", p) if p is not None else ()))
        src = _networks("src", self.src)
        dst = _networks("dst", self.dst)
        object.__setattr__(self, "proto", protos)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "sport", _ports("sport", self.sport))
        object.__setattr__(self, "dport", _ports("dport", self.dport))
        object.__setattr__(self, "mark", check_opt(check_u32, "mark", self.mark))
        object.__setattr__(self, "mark_mask", check_u32("mark_mask", self.mark_mask))

    def matches(self, flow: Flow) -> bool:
        """True when ``flow`` passes every condition."""
        o = flow.orig
        if self.proto and o.proto not in self.proto:
            return False
        if self.src and not any(o.src in n for n in self.src):
            return False
        if self.dst and not any(o.dst in n for n in self.dst):
            return False
        if self.sport and (o.sport is None or not any(a <= o.sport <= b for a, b in self.sport)):
            return False
        if self.dport and (o.dport is None or not any(a <= o.dport <= b for a, b in self.dport)):
            return False
        if self.mark is not None and flow.mark & self.mark_mask != self.mark & self.mark_mask:
            return False
        return True

    @property
    def _kernel_addrs(self) -> bool:
        """Whether the addresses go into the BPF program.

        Checked against libnetfilter_conntrack 1.0.9 on this kernel: with
        rules of both IP versions its program drops matching IPv6 events;
        with two or more IPv6 networks in one direction only the first
        matches; beyond 127 IPv4 networks in one direction the rest are
        silently left out.  In those cases addresses are matched in
        userspace only."""
        versions = {n.version for n in self.src + self.dst}
        if len(versions) != 1:
            return False
        limit = 127 if 4 in versions else 1
        return len(self.src) <= limit and len(self.dst) <= limit

    @property
    def kernel_side(self) -> bool:
        """True when some condition runs in the kernel's BPF filter."""
        return bool(self.proto or self.mark is not None or self._kernel_addrs)

    def _attach(self, fd: int) -> None:
        f = lib.nfct_filter_create()
        if f == ffi.NULL:
            raise MemoryError("nfct_filter_create")
        try:
            for p in self.proto:
                lib.nfct_filter_add_attr_u32(f, lib.NFCT_FILTER_L4PROTO, int(p))
            addrs = ((self.src, lib.NFCT_FILTER_SRC_IPV4, lib.NFCT_FILTER_SRC_IPV6),
                     (self.dst, lib.NFCT_FILTER_DST_IPV4, lib.NFCT_FILTER_DST_IPV6))
            for nets, a4, a6 in (addrs if self._kernel_addrs else ()):
                for n in nets:
                    if n.version == 4:
                        v4 = ffi.new("struct nfct_filter_ipv4 *")
                        v4.addr = int(n.network_address)
                        v4.mask = int(n.netmask)
                        lib.nfct_filter_add_attr(f, a4, v4)
                    else:
                        v6 = ffi.new("struct nfct_filter_ipv6 *")
                        addr, mask = int(n.network_address), int(n.netmask)
                        for i in range(4):
                            v6.addr[i] = (addr >> (96 - 32 * i)) & U32_MAX
                            v6.mask[i] = (mask >> (96 - 32 * i)) & U32_MAX
                        lib.nfct_filter_add_attr(f, a6, v6)
            if self.mark is not None:
                m = ffi.new("struct nfct_filter_dump_mark *")
                m.val = self.mark & self.mark_mask
                m.mask = self.mark_mask
                lib.nfct_filter_add_attr(f, lib.NFCT_FILTER_MARK, m)
            if lib.nfct_filter_attach(fd, f) < 0:
                err = ffi.errno or errno.EINVAL
                raise error_from_errno(err, "attaching the conntrack event filter (BPF)")
        finally:
            lib.nfct_filter_destroy(f)


# -- the stream ------------------------------------------------------------------------------


class EventStats(ChannelStats):
    """Counters of one EventStream, read live: ``events``, ``delivered``,
    ``filtered``, ``overruns``, ``recv_calls`` (also ``packets``, the same
    as ``events``, and ``handler_errors``, as on every channel); besides
    them, ``resyncs`` and ``by_type``."""

    __slots__ = ()
    _ch: EventStream[Any]

    _NAMES = ("events", "delivered", "filtered", "overruns", "recv_calls")

    @property
    def events(self) -> int:
        """Events received from the kernel."""
        return int(self._ch._npackets)

    @property
    def delivered(self) -> int:
        """Events handed to the handler / iteration."""
        return int(self._ch._ndelivered)

    @property
    def filtered(self) -> int:
        """Events the userspace part of the filter dropped."""
        return int(self._ch._nfiltered)

    @property
    def resyncs(self) -> int:
        """Calls of :meth:`EventStream.resync` (table dumps after lost events)."""
        return int(self._ch._nresyncs)

    @property
    def by_type(self) -> Dict[CtEvent, int]:
        """Events received from the kernel, by type (NEW, UPDATE, DESTROY)."""
        return {e: int(n) for e, n in zip(_EVENT.values(), self._ch._by_type.values())}


_GROUPS = (
    (CtEvent.NEW, core.NFNLGRP_CONNTRACK_NEW),
    (CtEvent.UPDATE, core.NFNLGRP_CONNTRACK_UPDATE),
    (CtEvent.DESTROY, core.NFNLGRP_CONNTRACK_DESTROY),
)
_EVENT = {int(e): e for e in (CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY)}
_NO_EVENT = CtEvent(0)
#: the groups of the expectation table's events
_EXP_GROUPS = (
    (CtEvent.NEW, core.NFNLGRP_CONNTRACK_EXP_NEW),
    (CtEvent.DESTROY, core.NFNLGRP_CONNTRACK_EXP_DESTROY),
)
_EXP_NEW = (core.NFNL_SUBSYS_CTNETLINK_EXP << 8) | core.IPCTNL_MSG_EXP_NEW
_EXP_DELETE = (core.NFNL_SUBSYS_CTNETLINK_EXP << 8) | core.IPCTNL_MSG_EXP_DELETE


class EventStream(Channel[_E]):
    """Conntrack events: ``for event in stream``, ``async for``, ``run(handler)``.

    Made by :meth:`Conntrack.events`, or directly with the same keywords
    plus ``netns``; :meth:`Conntrack.expect_events` makes one of the
    expectation table (an ``EventStream[ExpectEvent]``).  Stop a loop with
    ``stop()`` from any thread or a signal handler.  A handler exception
    comes out of ``run()``; the events after it in the batch are delivered
    by the next loop.

    ``reliable=True`` is conntrackd's reliable mode (see the module
    docstring): the kernel keeps every DESTROY event until this socket has
    room for it, instead of dropping it; ``stats.overruns`` then stays 0.

    Raises ValueError/TypeError, PermissionDenied (subscribing needs
    CAP_NET_ADMIN), NetlinkError, FileNotFoundError (netns).
    """

    #: expectation events (set by _expectations() before __init__ runs)
    _expect = False

    def __init__(
        self,
        types: Union[CtEvent, int] = CtEvent.ALL,
        filter: Optional[EventFilter] = None,
        *,
        netns: _netns.NetNS = None,
        rcvbuf: int = 4 << 20,
        on_overrun: str = "count",
        no_enobufs: bool = False,
        reliable: bool = False,
    ) -> None:
        self._c: Optional[struct_nfb_ct] = None
        t = check_int("types", types, 0, U32_MAX)
        if not t or t & ~int(CtEvent.ALL):
            raise ValueError("types must be CtEvent flags (NEW, UPDATE, DESTROY), got %r" % (types,))
        if self._expect and t & CtEvent.UPDATE:
            raise ValueError("expectations have NEW and DESTROY events only, not UPDATE")
        self.types = CtEvent(t)
        if filter is not None and not isinstance(filter, EventFilter):
            raise TypeError("filter must be an EventFilter, not %s" % type(filter).__name__)
        if filter is not None and self._expect:
            raise TypeError("an EventFilter matches flows: expect_events() takes none")
        self.filter = filter
        if not isinstance(no_enobufs, bool):
            raise TypeError("no_enobufs must be True or False, not %r" % (no_enobufs,))
        if not isinstance(reliable, bool):
            raise TypeError("reliable must be True or False, not %r" % (reliable,))
        #: whether the kernel holds DESTROY events until they are delivered
        self.reliable = reliable
        rcvbuf = check_int("rcvbuf", rcvbuf, 4096, 1 << 30)
        _netns.resolve(netns)
        #: the request sockets of the Conntrack that made the stream (set
        #: by Conntrack.events()), which resync() uses while they are open
        self._pool: Optional[Pool] = None
        self._backlog: List[_E] = []
        self._npackets = 0
        self._handler_errors = 0
        self._ndelivered = 0
        self._nfiltered = 0
        self._nresyncs = 0
        #: events received, by type code (the keys of _EVENT, in its order)
        self._by_type: Dict[int, int] = dict.fromkeys(_EVENT, 0)
        self._final: Dict[str, int] = {}
        self.needs_resync = False
        self._init_channel(netns=netns, rcvbuf=rcvbuf, on_overrun=on_overrun,
                           no_enobufs=no_enobufs or reliable)
        try:
            assert self._sock is not None
            if reliable:
                # delivery failures come back to the kernel's sender, which
                # keeps the DESTROY event and tries again (conntrackd's
                # NETLINK_BROADCAST_SEND_ERROR + NETLINK_NO_ENOBUFS)
                self._sock.setsockopt(core.SOL_NETLINK, core.NETLINK_BROADCAST_ERROR, 1)
            for bit, group in (_EXP_GROUPS if self._expect else _GROUPS):
                if t & bit:
                    try:
                        self._sock.setsockopt(core.SOL_NETLINK, core.NETLINK_ADD_MEMBERSHIP, group)
                    except PermissionError as e:
                        raise PermissionDenied(e.errno or errno.EPERM,
                                               "subscribing to conntrack events") from None
                    except OSError as e:
                        raise error_from_errno(e.errno or errno.EINVAL,
                                               "subscribing to conntrack events") from None
            if filter is not None and filter.kernel_side:
                filter._attach(self._fd)
            c = lib.nfb_ct_new(self._fd, 64)
            if c == ffi.NULL:
                raise MemoryError("allocating conntrack event buffers")
            self._c = ffi.gc(c, lib.nfb_ct_free)
        except BaseException:
            self._c = None
            self._abort_open()
            raise

    @classmethod
    def _expectations(cls, types: Union[CtEvent, int], *, netns: _netns.NetNS, rcvbuf: int,
                      on_overrun: str, no_enobufs: bool) -> "EventStream[ExpectEvent]":
        """A stream of the expectation table (for Conntrack.expect_events)."""
        s = cast("EventStream[ExpectEvent]", cls.__new__(cls))
        s._expect = True
        s.__init__(types, netns=netns, rcvbuf=rcvbuf,  # type: ignore[misc]
                   on_overrun=on_overrun, no_enobufs=no_enobufs)
        return s

    def _describe(self) -> str:
        what = "ExpectEvents" if self._expect else "EventStream"
        return "%s(%s)" % (what, self.types.name) if self.types.name else what

    @property
    def stats(self) -> EventStats:
        """Live counters: events, delivered, filtered, overruns, recv_calls."""
        return EventStats(self)

    def _overrun(self, count: int) -> None:
        # events were lost: the table must be dumped again to know its state
        self.needs_resync = True
        super()._overrun(count)

    def _short_read(self) -> bool:
        c = self._c
        return c is None or bool(c.rx.short_read)

    def _expect_events(self, n: int) -> List[ExpectEvent]:
        """The ``n`` expectation events of the current batch (whole messages)."""
        c = self._c
        assert c is not None  # called by _drain_once on an open stream
        blob = ffi.buffer(c.data, c.data_len)[:]
        out: List[ExpectEvent] = []
        by_type = self._by_type
        for o in ffi.unpack(c.moffs, n):
            ln, typ = NLMSG.unpack_from(blob, o)[:2]
            if typ == _EXP_NEW:
                kind = CtEvent.NEW
            elif typ == _EXP_DELETE:
                kind = CtEvent.DESTROY
            else:
                continue
            try:
                exp: Expectation = parse_expect(blob[o:o + ln])
            except ValueError:  # cut by the buffer: no tuples to show
                continue
            by_type[int(kind)] += 1
            out.append(ExpectEvent(kind, exp))
        return out

    def _events(self, n: int) -> List[Event]:
        """The ``n`` events of the current batch."""
        c = self._c
        assert c is not None  # called by _drain_once on an open stream
        recs = memoryview(ffi.buffer(c.recs, n * REC_SIZE))
        flows: List[Flow] = []
        build_flows(recs, n, ffi.buffer(c.data, c.data_len)[:] if c.data_len else b"",
                    flows, c.nv6)
        kinds = _EVENT
        codes = event_codes(recs, n)
        by_type = self._by_type
        for code in by_type:
            by_type[code] += codes.count(code)
        return [Event(kinds.get(code, _NO_EVENT), f) for code, f in zip(codes, flows)]

    def _drain_once(self, handler: Callable[[_E], Any]) -> int:
        with self._lock:
            if self._closed or self._stop_requested:
                return 0
            got = 0
            todo: List[_E]
            if self._backlog:
                todo, self._backlog = self._backlog, []
            elif self._expect:
                c = self._c
                assert c is not None  # open: checked above, under the lock
                n = self._recv_batch(lib.nfb_ct_recv_raw_events, c)
                if n == 0:
                    return 0
                todo = cast(List[_E], self._expect_events(n))
                self._npackets += len(todo)
                got = n
            else:
                c = self._c
                assert c is not None  # open: checked above, under the lock
                n = self._recv_batch(lib.nfb_ct_recv_events, c)
                if n == 0:
                    return 0
                events = self._events(n)
                self._npackets += n
                got = n
                flt = self.filter
                if flt is None:
                    todo = cast(List[_E], events)
                else:
                    todo = cast(List[_E], [ev for ev in events if flt.matches(ev.flow)])
                    self._nfiltered += n - len(todo)
            done = 0
            for ev in todo:
                done += 1
                self._ndelivered += 1
                try:
                    handler(ev)
                except BaseException:
                    self._handler_errors += 1
                    # the rest of the batch goes to the next loop
                    self._backlog = todo[done:] + self._backlog
                    raise
                if self._stop_requested and done < len(todo):
                    # stop() ends the loop after this event; the rest wait
                    self._backlog = todo[done:] + self._backlog
                    break
            # a batch the filter emptied is no reason to stop draining
            return done if done or not got else -1

    def _close_channel(self) -> None:
        c = self._c
        if c is not None:
            self._final = {"overruns": int(c.rx.overruns), "recv_calls": int(c.rx.recv_calls)}
        self._c = None

    @overload
    def resync(self: "EventStream[Event]",
               family: Union[None, int, str] = None) -> _t.List[Flow]: ...

    @overload
    def resync(self: "EventStream[ExpectEvent]",
               family: Union[None, int, str] = None) -> _t.List[Expectation]: ...

    def resync(self, family: Union[None, int, str] = None) -> _t.List[Any]:
        """Start over after lost events: drop the events still queued, dump
        the table and return its flows (those the stream's filter passes),
        or for a stream of expectations the expectation table.  Events that
        follow are newer than the dump.

        The dump goes through the sockets of the :class:`Conntrack` that
        made the stream while it is open, else through sockets opened for it.

        Raises ClosedError, PermissionDenied, NetlinkError.
        """
        self._check_open()
        fam = check_family("family", family)
        with self._lock:
            c = self._c
            assert c is not None  # checked open above
            self._backlog.clear()
            recv = lib.nfb_ct_recv_raw_events if self._expect else lib.nfb_ct_recv_events
            while True:
                n = recv(c)
                if n == 0:
                    break
                if n < 0 and n != -errno.ENOBUFS:
                    raise error_from_errno(-n, "discarding queued conntrack events")
            self.needs_resync = False
            self._nresyncs += 1
        pool = self._pool
        if pool is not None and not pool.closed:
            return self._dump(pool, fam)
        with Pool(self._netns, _RESYNC_TIMEOUT_MS) as own:
            return self._dump(own, fam)

    def _dump(self, pool: Pool, fam: Optional[int]) -> _t.List[Any]:
        if self._expect:
            return [e for e in pool.dump_expect(fam)]
        flt = self.filter
        return [f for f in pool.dump(DumpFilter(fam)) if flt is None or flt.matches(f)]

    def __repr__(self) -> str:
        return "<nfbind.EventStream%s %s%s>" % (" of expectations" if self._expect else "",
                                                self.types, " closed" if self._closed else "")
