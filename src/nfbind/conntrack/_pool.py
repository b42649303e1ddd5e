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
import os
import queue as _queue
import threading
import time as _time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

from .._channels import missing

try:
    from .._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack._pool") from e
from .._core import lib as core
from .._netlink import open_netfilter_socket
from .. import netns as _netns
from ..errors import ClosedError, NetlinkError, PermissionDenied, error_from_errno
from ._records import NLMSG, REC_SIZE, build_flows
from ._wire import TABLES, dump_filter
from .model import Flow, NotFound

#: one batch of a dump, for build_flows: the records, their count, the
#: messages' bytes (for secctx) and how many of the records are IPv6 flows
RecordBatch = Tuple[bytes, int, bytes, int]

__all__ = ["Pool"]

#: records per receive call (one C call drains datagrams until it has these)
_BATCH = 8192
#: flows built before dump() hands them out (the latency and memory of a
#: dump's first flow; bigger chunks mean fewer garbage-collector passes)
_CHUNK = 65536
#: batches a dump's receiver thread may fetch ahead of the consumer
_AHEAD = 4
#: receive ahead on a second thread (see _Batches)
_PREFETCH = (os.cpu_count() or 1) > 1
#: idle sockets kept for later requests
_KEEP = 4


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
    Flow objects.  After the first batch, when more is to come, a receiver
    thread fetches the next batches while the caller builds the current one,
    so the two overlap on machines with more than one CPU.  At most
    ``_AHEAD`` batches wait, so a slow consumer pauses the kernel's dump
    instead of buffering the table.  Small dumps never start the thread.

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

    def _take(self) -> RecordBatch:
        """Receive one batch; a copy of the records (the C buffer is reused)."""
        c = self.h.c
        n = self.pool.recv(self.h, lib.NFB_M_RECORDS, _BATCH, self.op)
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
            batch = self._take()
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

    def dump(self, fam: Optional[int] = None, mark: Optional[int] = None,
             mmask: int = 0xFFFFFFFF, zone: Optional[int] = None, status: Optional[int] = None,
             smask: Optional[int] = None, table: str = "conntrack") -> Iterator[Flow]:
        """Yield the flows of ``table`` that pass the (checked) filters: in
        the kernel where it filters, and again in userspace (a few integer
        compares per flow), so the result is right even on a kernel that
        ignores a filter.  The request goes out at the first ``next()``.
        """
        msg = TABLES[table]
        op = "dumping the %s table" % table
        kernel_filter = table == "conntrack"

        def build(buf: Any) -> int:
            if not kernel_filter:
                return int(lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK, msg,
                                                   core.NLM_F_DUMP, fam or 0, 0))
            return int(lib.nfb_ct_build_filtered(buf, msg, core.NLM_F_DUMP,
                                                 dump_filter(fam, mark, mmask, status, smask)))

        check_mark = mark is not None
        want_mark = (mark or 0) & mmask
        check_status = status is not None
        smask_ = smask or 0
        want_status = (status or 0) & smask_
        filtered = fam is not None or check_mark or check_status or zone is not None
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
                if not filtered:
                    yield from flows
                    continue
                for f in flows:
                    if fam is not None and f.family != fam:
                        continue
                    if check_mark and f.mark & mmask != want_mark:
                        continue
                    if check_status and f.status & smask_ != want_status:
                        continue
                    if zone is not None and f.zone != zone:
                        continue
                    yield f
            if h.c.error < 0:
                raise self._error(h, -h.c.error, op)
            ok = True
        finally:
            # an abandoned dump leaves answers queued on the socket: drop it
            if batches.stop():
                self._release(h, ok)

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
