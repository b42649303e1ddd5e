# SPDX-License-Identifier: GPL-2.0-or-later
"""Request sockets for the conntrack table: the lower layer of
:class:`~nfbind.Conntrack`.

A :class:`Pool` holds a few NETLINK_NETFILTER sockets of one network
namespace, each with the C helper's receive state.  Every request takes a
socket of its own, so a dump can be iterated while ``update()``/``delete()``
run on its flows, and the pool can be shared between threads.  It sends one
request and receives its answer (:meth:`Pool.transact`), and streams a
dump's flows with the next batches received ahead on a second thread
(:meth:`Pool.dump`).

:class:`~nfbind.Conntrack` (``table.py``) builds its verbs on this, and so
does :meth:`EventStream.resync` (``events.py``), which dumps the table
without needing the Conntrack class.
"""
from __future__ import annotations

import errno
import gc as _gc
import itertools
import os
import queue as _queue
import threading
import time as _time
from typing import (Any, Callable, Dict, Generator, Iterator, List, Optional, Set, Tuple,
                    Union, cast)

from .._channels import missing

try:
    from .._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack._pool") from e
from .._core import lib as core
from .._netlink import open_netfilter_socket
from .. import netns as _netns
from ..errors import ClosedError, NetlinkError, PermissionDenied, error_from_errno
from ._records import NLMSG, REC_SIZE, build_flows, parse_expect
from ._wire import TABLES, DumpFilter, Support, dump_filter, flow_spec, lookup_tuple
from .model import AF_INET, AF_INET6, Expectation, Flow, NotFound

#: one batch of a dump, for build_flows: the records, their count, the
#: messages' bytes (for secctx) and how many of the records are IPv6 flows
RecordBatch = Tuple[bytes, int, bytes, int]

__all__ = ["Pool"]


def _filtered_builder(msg: int, flags: int, f: Any) -> Callable[[Any], int]:
    """The builder of a filtered dump or flush request (``f``: its ``struct
    nfb_ct_dumpf``)."""
    def build(buf: Any) -> int:
        return int(lib.nfb_ct_build_filtered(buf, msg, flags, f))
    return build


def _delete_builder(f: Flow) -> Callable[[Any], int]:
    """The builder of a delete of exactly this flow: its original tuple,
    zone and id."""
    s = flow_spec(f.orig, f.zone)
    if f.id is not None:
        s.set |= lib.NFB_S_ID
        s.id = f.id

    def build(buf: Any) -> int:
        return int(lib.nfb_ct_build(buf, core.IPCTNL_MSG_CT_DELETE, core.NLM_F_ACK, s))
    return build

#: records per receive call (one C call drains datagrams until it has these)
_BATCH = 8192
#: records of a dump's first receive: small, so that building flows starts
#: early while the receiver thread fetches the rest
_FIRST_BATCH = 1024
#: flows built before dump() hands them out (the latency and memory of a
#: dump's first flow; bigger chunks mean fewer garbage-collector passes)
_CHUNK = 65536
#: batches a dump's receiver thread may fetch ahead of the consumer
_AHEAD = 4
#: receive ahead on a second thread (see _Batches)
_PREFETCH = (os.cpu_count() or 1) > 1
#: idle sockets kept for later requests
_KEEP = 4

#: what the running kernel filters itself (see Pool.filter_support): probed
#: once per process, on the first dump or flush with a tuple or zone filter
_SUPPORT: Optional[Support] = None
_SUPPORT_LOCK = threading.Lock()
#: for tests: match every tuple and zone filter in userspace, as on a kernel
#: without CTA_FILTER (mark, status and family still go to the kernel)
_FORCE_USERSPACE = False


class _Handle:
    """One request socket with its C state (receive buffer, batch)."""

    __slots__ = ("sock", "c", "buf", "busy")

    def __init__(self, netns: _netns.NetNS) -> None:
        self.sock = open_netfilter_socket(netns)
        try:
            try:
                self.sock.setsockopt(core.SOL_NETLINK, core.NETLINK_EXT_ACK, 1)
            except OSError:
                pass
            c = lib.nfb_ct_new(self.sock.fileno(), 0)
            if c == ffi.NULL:
                raise MemoryError("allocating conntrack buffers")
            self.c = ffi.gc(c, lib.nfb_ct_free)
            self.buf = ffi.new("char[]", lib.NFB_CT_BUFSIZE)
            self.busy = False
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()


class _Batches:
    """The record batches of one dump, received ahead on a second thread.

    A dump's time is split about evenly between the kernel walking its table
    (inside the receive call, with the GIL released) and Python building
    Flow objects.  After the first batch (a small one, so that building
    starts early), when more is to come, a receiver thread fetches the next
    batches while the caller builds the current one, so the two overlap on
    machines with more than one CPU.  At most ``_AHEAD`` batches wait, so a
    slow consumer pauses the kernel's dump instead of buffering the table.
    Dumps that fit in the first batch never start the thread.

    ``next()`` returns ``(records, count, data, nv6)`` for
    :func:`build_flows`, or None at the end; it raises what the receive
    raised.  ``stop()`` ends the thread and says whether the handle may be
    released (False only if the thread is stuck in a receive).
    """

    __slots__ = ("pool", "h", "op", "q", "thread", "halt")

    def __init__(self, pool: "Pool", h: _Handle, op: str) -> None:
        self.pool = pool
        self.h = h
        self.op = op
        self.q: Any = None
        self.thread: Optional[threading.Thread] = None
        self.halt = False

    def _take(self, most: int = _BATCH) -> RecordBatch:
        """Receive one batch of up to ``most`` records; a copy of the
        records (the C buffer is reused)."""
        c = self.h.c
        n = self.pool.recv(self.h, lib.NFB_M_RECORDS, most, self.op)
        return (ffi.buffer(c.recs, n * REC_SIZE)[:] if n else b"", n,
                ffi.buffer(c.data, c.data_len)[:] if c.data_len else b"", c.nv6)

    def _run(self) -> None:
        q = self.q
        try:
            while not self.h.c.done and not self.halt:
                q.put(self._take())
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    def next(self) -> Optional[RecordBatch]:
        if self.q is None:
            if self.h.c.done:
                return None
            batch = self._take(_FIRST_BATCH)
            if not self.h.c.done and _PREFETCH:
                self.q = _queue.Queue(_AHEAD)
                self.thread = threading.Thread(target=self._run, name="nfbind-ct-dump",
                                               daemon=True)
                self.thread.start()
            return batch
        item: Union[RecordBatch, BaseException, None] = self.q.get()
        if isinstance(item, BaseException):
            self.q = _Done
            raise item
        if item is None:
            self.q = _Done
        return item

    def stop(self) -> bool:
        t = self.thread
        if t is None:
            return True
        self.halt = True
        # the thread ends after its current receive, each poll of which is
        # bounded by the request timeout
        deadline = _time.monotonic() + self.pool.timeout_ms / 1000 + 5
        while t.is_alive() and _time.monotonic() < deadline:
            if isinstance(self.q, _queue.Queue):
                try:  # make room for a blocked put()
                    while True:
                        self.q.get_nowait()
                except _queue.Empty:
                    pass
            t.join(0.05)
        return not t.is_alive()


class _Flows(itertools.chain):  # type: ignore[type-arg]
    """The flows of a dump's chunks, one at a time (``itertools.chain``'s
    own ``next``), with a generator's ``close()``: it ends the dump at
    once (its receiver thread stopped, its socket back in the pool)."""

    __slots__ = ("_chunks",)
    _chunks: Generator[List[Flow], None, None]

    @classmethod
    def over(cls, chunks: Generator[List[Flow], None, None]) -> "_Flows":
        it = cast("_Flows", cls.from_iterable(chunks))
        it._chunks = chunks
        return it

    def close(self) -> None:
        """Abandon the dump (what ``close()`` does to a generator)."""
        self._chunks.close()


class _DoneQueue:
    """What a finished _Batches reads from: the end, again."""

    @staticmethod
    def get() -> None:
        return None


_Done = _DoneQueue()


class Pool:
    """Request sockets of one network namespace (see the module docstring).

    Opens its first socket at once: raises FileNotFoundError (no such
    ``netns``), PermissionDenied (entering it needs CAP_SYS_ADMIN), OSError.
    ``timeout_ms`` bounds the wait for each answer.
    """

    def __init__(self, netns: _netns.NetNS, timeout_ms: int) -> None:
        self.closed = True
        self.netns = netns
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._idle: List[_Handle] = []
        self._open: Set[_Handle] = set()
        h = _Handle(netns)
        self._open.add(h)
        self._idle.append(h)
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("Conntrack is closed; create a new one")

    def _acquire(self) -> _Handle:
        with self._lock:
            self.check_open()
            if self._idle:
                h = self._idle.pop()
                h.busy = True
                return h
        h = _Handle(self.netns)
        with self._lock:
            if self.closed:
                h.close()
                self.check_open()
            h.busy = True
            self._open.add(h)
        return h

    def _release(self, h: _Handle, reuse: bool = True) -> None:
        with self._lock:
            h.busy = False
            if reuse and not self.closed and len(self._idle) < _KEEP:
                self._idle.append(h)
                return
            self._open.discard(h)
        h.close()

    def _error(self, h: _Handle, err: int, op: str, hint: Optional[str] = None,
               not_found: Optional[str] = None) -> NetlinkError:
        said = ffi.string(h.c.errmsg).decode("utf-8", "replace") if h.c.errmsg[0] else ""
        if err == errno.ENOENT and not_found is not None:
            hint = not_found
        if said:
            hint = (hint + "; " if hint else "") + "the kernel says: " + said
        if err == errno.ENOENT and not_found is not None:
            return NotFound(err, op, hint)
        if err in (errno.EPERM, errno.EACCES):
            return PermissionDenied(err, op)
        return error_from_errno(err, op, hint=hint)

    def _send(self, h: _Handle, n: int, op: str) -> None:
        if n < 0:
            raise error_from_errno(-n, op, hint="building the request failed")
        rc = lib.nfb_ct_send(h.c, h.buf, n)
        if rc < 0:
            if self.closed:
                raise ClosedError("Conntrack was closed during %s" % op)
            raise error_from_errno(-rc, op)

    def recv(self, h: _Handle, mode: int, max_items: int, op: str) -> int:
        """Receive the next part of the answer on ``h`` (see nfb_ct_recv_answer)."""
        n = lib.nfb_ct_recv_answer(h.c, mode, max_items, self.timeout_ms)
        if n < 0:
            if self.closed:
                raise ClosedError("Conntrack was closed during %s" % op)
            if n == -errno.ETIMEDOUT:
                raise NetlinkError(errno.ETIMEDOUT, op,
                                   "the kernel did not answer within %.1f s" % (self.timeout_ms / 1000))
            raise error_from_errno(-n, op)
        return int(n)

    def transact(self, build: Callable[[Any], int], op: str, *, mode: int = 0,
                 hint: Optional[str] = None, not_found: Optional[str] = None,
                 want: bool = False) -> Any:
        """Send one request and wait for its complete answer.

        ``build(buf)`` writes the request into the C buffer ``buf`` and
        returns its length (or -errno).  Returns the records (mode
        NFB_M_RECORDS: ``(bytes, count, data)``) or raw messages (mode
        NFB_M_RAW: a list of bytes) when ``want``, else None.  Raises
        NotFound (ENOENT, when ``not_found`` says what that means),
        PermissionDenied, NetlinkError, ClosedError.
        """
        h = self._acquire()
        ok = False
        try:
            self._send(h, build(h.buf), op)
            recs: List[bytes] = []
            count = 0
            data = b""
            while True:
                n = self.recv(h, mode, 1 << 30, op)
                c = h.c
                if want and n:
                    if mode == lib.NFB_M_RAW:
                        blob = ffi.buffer(c.data, c.data_len)[:]
                        for o in ffi.unpack(c.moffs, n):
                            ln = NLMSG.unpack_from(blob, o)[0]
                            recs.append(blob[o:o + ln])
                    else:
                        recs.append(ffi.buffer(c.recs, n * REC_SIZE)[:])
                        data = ffi.buffer(c.data, c.data_len)[:] if c.data_len else b""
                    count += n
                if c.done:
                    break
            if h.c.error < 0:
                raise self._error(h, -h.c.error, op, hint, not_found)
            ok = True
            if not want:
                return None
            if mode == lib.NFB_M_RAW:
                return recs
            return b"".join(recs), count, data
        finally:
            self._release(h, ok)

    def transact_hinted(self, build: Callable[[Any], int], op: str,
                        hints: Dict[int, Optional[str]], not_found: Optional[str] = None) -> None:
        """:meth:`transact`, with the advice ``hints[errno]`` added to a
        plain NetlinkError."""
        try:
            self.transact(build, op, not_found=not_found)
        except NotFound:
            raise
        except NetlinkError as e:
            err = e.errno or 0
            hint = hints.get(err)
            if hint and type(e) is NetlinkError:
                raise NetlinkError(err, op, (hint + "; " + e.hint) if e.hint else hint) from None
            raise

    # -- filters the kernel applies ---------------------------------------------------

    def filter_support(self) -> Support:
        """What the running kernel filters itself, probed once per process.

        Two requests that fail on a kernel that has the feature and match
        no flow (mark 1 under mask 0) on one that ignores it:

        * a tuple filter with a flag no kernel knows (bit 31): refused from
          Linux 5.8 (CTA_FILTER; EOPNOTSUPP, or EINVAL where the attribute
          policy checks the flags), ignored before;
        * CTA_ZONE together with a tuple filter on CTA_TUPLE_ZONE: EINVAL
          from Linux 6.8, which filters dumps by CTA_ZONE and then refuses
          a second zone; accepted by 5.8 to 6.7, which ignore CTA_ZONE.

        Raises PermissionDenied without CAP_NET_ADMIN, NetlinkError.
        """
        global _SUPPORT
        if _FORCE_USERSPACE:
            return Support(False, False)
        if _SUPPORT is None:
            with _SUPPORT_LOCK:
                if _SUPPORT is None:
                    _SUPPORT = self._probe()
        return _SUPPORT

    def _probe(self) -> Support:
        def refused(f: Any) -> int:
            try:
                self.transact(lambda buf: int(lib.nfb_ct_build_filtered(
                    buf, core.IPCTNL_MSG_CT_GET, core.NLM_F_DUMP, f)),
                    "probing the kernel's conntrack dump filters")
            except PermissionDenied:
                raise
            except NetlinkError as e:
                return e.errno or -1
            return 0

        def nothing() -> Any:
            f = dump_filter(AF_INET, 0, 0, None, None)
            f.mark = 1      # under mask 0: no flow matches, on any kernel
            return f

        f = nothing()
        f.orig_flags = 1 << 31  # far above the flags any kernel knows
        if refused(f) not in (errno.EOPNOTSUPP, errno.EINVAL):
            return Support(False, False)
        g = nothing()
        g.set |= lib.NFB_DF_ZONE
        g.zone = 1
        g.orig_flags = lib.NFB_CTF_TUPLE_ZONE
        g.orig.has = core.NFB_T_ZONE
        g.orig.zone = 1
        return Support(True, refused(g) == errno.EINVAL)

    def _requests(self, flt: DumpFilter, msg: int) -> Tuple[List[Callable[[Any], int]], bool]:
        """The requests of a filtered dump (msg) or flush of the conntrack
        table, one per family; and whether the kernel applies every
        condition."""
        need = flt.has_tuple or flt.zone is not None
        support = self.filter_support() if need else Support(False, False)
        builds: List[Callable[[Any], int]] = []
        exact = True
        flags = core.NLM_F_DUMP if msg != core.IPCTNL_MSG_CT_DELETE else core.NLM_F_ACK
        for fam in flt.families(support):
            f, ok = flt.kernel(fam, support)
            exact = exact and ok
            builds.append(_filtered_builder(msg, flags, f))
        return builds, exact

    # -- dumps ------------------------------------------------------------------------

    def dump(self, flt: Optional[DumpFilter] = None, table: str = "conntrack",
             zero_counters: bool = False) -> Iterator[Flow]:
        """Yield the flows of ``table`` that pass ``flt``: in the kernel where
        it filters (family, mark and status; addresses, protocol, ports and
        zone as CTA_FILTER/CTA_ZONE where the kernel has them), and again in
        userspace, so the result is the same on any kernel.

        ``zero_counters`` zeroes the counters of the flows yielded, which
        carry the values before zeroing (IPCTNL_MSG_CT_GET_CTRZERO): by the
        dump itself when the kernel applies every condition, else flow by
        flow once userspace has matched it.  The first request goes out at
        the first ``next()``.
        """
        flt = flt if flt is not None else DumpFilter()
        if (table == "conntrack" and not zero_counters and not flt.has_tuple
                and flt.zone is None):
            # speed: one request (no tuple: one family) and nothing to do
            # per flow: hand out _dump_one's own iterator (a generator around
            # it would cost every flow another resume)
            (build,), _ = self._requests(flt, core.IPCTNL_MSG_CT_GET)
            return self._dump_one(build, "dumping the conntrack table",
                                  None if flt.empty else flt)
        return self._dump(flt, table, zero_counters)

    def _dump(self, flt: DumpFilter, table: str, zero_counters: bool) -> Iterator[Flow]:
        """dump(), the general case."""
        op = "dumping the %s table" % table
        if table != "conntrack":
            msg = TABLES[table]
            fam = flt.family or 0
            builds: List[Callable[[Any], int]] = [lambda buf: int(lib.nfb_ct_build_simple(
                buf, core.NFNL_SUBSYS_CTNETLINK, msg, core.NLM_F_DUMP, fam, 0))]
            exact = flt.empty
        else:
            builds, exact = self._requests(flt, core.IPCTNL_MSG_CT_GET)
            if zero_counters and exact:
                builds, _ = self._requests(flt, core.IPCTNL_MSG_CT_GET_CTRZERO)
        zero_each = zero_counters and not exact
        for build in builds:
            for f in self._dump_one(build, op, None if flt.empty else flt):
                if zero_each:
                    z = self._zeroed(f)
                    if z is None:
                        continue
                    f = z
                yield f

    def _zeroed(self, f: Flow) -> Optional[Flow]:
        """Zero one flow's counters: the flow as it was, or None when it is gone."""
        tup = lookup_tuple(f.orig)
        fam = AF_INET if f.orig.src.version == 4 else AF_INET6
        try:
            recs, n, data = self.transact(
                lambda buf: int(lib.nfb_ct_build_lookup(buf, core.IPCTNL_MSG_CT_GET_CTRZERO,
                                                        core.NLM_F_ACK, fam, tup, 0, f.zone)),
                "zeroing the counters of flow %s" % f.orig, want=True, not_found="gone")
        except NotFound:
            return None
        out: List[Flow] = []
        if n:
            build_flows(recs, n, data, out)
        return out[0] if out else None

    def _dump_one(self, build: Callable[[Any], int], op: str,
                  flt: Optional[DumpFilter]) -> Iterator[Flow]:
        """One dump request: its flows that pass ``flt`` (None: all).

        **speed:** the flows are handed out by a C iterator over the chunks
        _dump_chunks builds, where a generator would be resumed per flow."""
        return _Flows.over(self._dump_chunks(build, op, flt))

    def _dump_chunks(self, build: Callable[[Any], int], op: str,
                     flt: Optional[DumpFilter]) -> Generator[List[Flow], None, None]:
        """_dump_one's flows, a list at a time."""
        h = self._acquire()
        ok = False
        batches = _Batches(self, h, op)
        try:
            self._send(h, build(h.buf), op)
            more = True
            while more:
                # Receive and build up to _CHUNK flows with the garbage
                # collector paused throughout (no code of the caller runs
                # meanwhile), then hand them out: the new objects are then
                # traversed by one collection instead of one per batch.
                flows: List[Flow] = []
                gc_was_on = _gc.isenabled()
                if gc_was_on:
                    _gc.disable()
                try:
                    while len(flows) < _CHUNK:
                        batch = batches.next()
                        if batch is None:
                            more = False
                            break
                        if batch[1]:
                            build_flows(batch[0], batch[1], batch[2], flows, batch[3])
                finally:
                    if gc_was_on:
                        _gc.enable()
                yield flows if flt is None else list(filter(flt.matches, flows))
            if h.c.error < 0:
                raise self._error(h, -h.c.error, op)
            ok = True
        finally:
            # an abandoned dump leaves answers queued on the socket: drop it
            if batches.stop():
                self._release(h, ok)

    def flush(self, flt: DumpFilter, hints: Dict[int, Optional[str]]) -> int:
        """Delete the flows of the conntrack table that pass ``flt``: with one
        request per family where the kernel applies every condition, else by
        deleting each flow a dump matched (by tuple and id: a newer flow with
        the same tuple stays).  Returns the number deleted in userspace, -1
        when the kernel deleted them.
        """
        op = "flushing %s flows" % flt.describe()
        builds, exact = self._requests(flt, core.IPCTNL_MSG_CT_DELETE)
        if exact:
            for build in builds:
                self.transact_hinted(build, op, hints)
            return -1
        done = 0
        for f in list(self.dump(flt)):
            try:
                self.transact(_delete_builder(f), "%s: deleting %s" % (op, f.orig),
                              not_found="gone")
            except NotFound:
                continue
            done += 1
        return done

    def dump_expect(self, fam: Optional[int] = None) -> List[Expectation]:
        """The expectation table (of one family, or both)."""
        msgs = self.transact(
            lambda buf: int(lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK_EXP,
                                                    core.IPCTNL_MSG_EXP_GET, core.NLM_F_DUMP,
                                                    fam or 0, 0)),
            "dumping the expect table", mode=lib.NFB_M_RAW, want=True)
        return [e for e in map(parse_expect, msgs) if fam is None or e.family == fam]

    def close(self) -> None:
        """Close every socket.  Safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            handles = list(self._open)
            self._open.clear()
            self._idle.clear()
        for h in handles:
            h.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
