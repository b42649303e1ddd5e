# SPDX-License-Identifier: GPL-2.0-or-later
"""What NFQUEUE and NFLOG share: the netlink socket, receive-buffer sizing, the
ENOBUFS policy, and the loops.

One non-blocking primitive sits under everything: ``_drain_once(handler)``
reads what the socket holds now (one batch, one syscall) and dispatches it.
``run()``, iteration, ``async for`` and users' own loops (through
``fileno()`` and ``drain()``) are built on it.  There are no hidden threads.
"""
from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections import deque
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Deque, Dict, Generic, Iterator,
                    List, Optional, Set, Tuple, TypeVar, Union)

from ._core import lib
from ._netlink import check_choice, check_int, open_netfilter_socket, set_rcvbuf
from . import netns as _netns
from ._wake import WakePipe
from .errors import ClosedError, NetlinkError, Overrun, error_from_errno

if TYPE_CHECKING:
    from typing import Protocol
    from types import FrameType

    from ._nfcore import struct_nfb_rx

    class _ChannelState(Protocol):
        """A channel's C state: NfQueue's ``struct nfb_q``, NfLog's
        ``struct nfb_log``, EventStream's ``struct nfb_ct``."""

        @property
        def rx(self) -> struct_nfb_rx: ...

__all__ = ["Channel", "OverrunWarning", "ON_OVERRUN"]

#: what a channel hands its handlers: Packet, LogPacket or Event
P = TypeVar("P")
_S = TypeVar("_S", bound="_ChannelState")
_Self = TypeVar("_Self", bound="Channel[Any]")

ON_OVERRUN = ("count", "raise")

#: batches drained back to back before the loop looks at stop() again
_MAX_BATCHES_PER_WAKE = 64


#: forks this process went through (as parent or child) since nfbind was
#: imported: a channel used since the last one is its process's to close
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_parent=_forked, after_in_child=_forked)


def _held_elsewhere(fd: int) -> bool:
    """Whether a process other than this one holds the socket ``fd`` (it
    was inherited across a fork): /proc/*/fd links to its inode.  A process
    whose descriptors cannot be read counts as holding it when it is this
    one's parent or child (a forked copy, e.g. with capabilities set on the
    interpreter, which makes /proc/PID/fd root's)."""
    target = "socket:[%d]" % os.fstat(fd).st_ino
    me, parent = os.getpid(), os.getppid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True
    for pid in pids:
        if pid == me:
            continue
        try:
            names = os.listdir("/proc/%d/fd" % pid)
        except PermissionError:
            if pid == parent or _ppid(pid) == me:
                return True
            continue
        except OSError:     # gone meanwhile
            continue
        for name in names:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, name)) == target:
                    return True
            except OSError:
                pass
    return False


def _ppid(pid: int) -> int:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


class OverrunWarning(RuntimeWarning):
    """Issued once per object when the kernel first drops messages (ENOBUFS)."""


def check_handler(handler: object) -> None:
    """TypeError unless ``handler`` is callable."""
    if not callable(handler):
        raise TypeError("handler must be callable, not %s" % type(handler).__name__)


def check_timeout(timeout: object) -> Optional[float]:
    """A loop's ``timeout``: seconds >= 0 as a float, or None for no limit
    (``math.inf`` means no limit too).  TypeError/ValueError name it."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number of seconds or None, not %s"
                        % type(timeout).__name__)
    try:
        t = float(timeout)
    except OverflowError:
        raise ValueError("timeout must be a number of seconds (or None, or math.inf, for "
                         "no limit), got an int too large for a float") from None
    if math.isnan(t) or t < 0:
        raise ValueError("timeout must be a number of seconds >= 0 (or None for no "
                         "limit), got %r" % (timeout,))
    return None if math.isinf(t) else t


def _forget_readers(loop: asyncio.AbstractEventLoop, fds: List[int]) -> None:
    """Remove ``loop``'s readers of ``fds`` and close them (they are copies
    an ``async for`` made for its event loop)."""
    for fd in fds:
        try:
            loop.remove_reader(fd)
        except (OSError, ValueError, KeyError, RuntimeError):  # RuntimeError: loop closed
            pass
        try:
            os.close(fd)
        except OSError:
            pass


def _open_netlink(netns: _netns.NetNS, rcvbuf: int, no_enobufs: bool) -> socket.socket:
    sock = open_netfilter_socket(netns)
    try:
        set_rcvbuf(sock, rcvbuf)
        if no_enobufs:
            sock.setsockopt(lib.SOL_NETLINK, lib.NETLINK_NO_ENOBUFS, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def c_counter(field: str, doc: str, *, key: Optional[str] = None, rx: bool = True) -> property:
    """A stats property read from the channel's C state: ``field`` of its
    ``rx`` part (``rx=False``: of the channel struct itself); once the channel
    is closed, the value it kept in ``_final[key]``."""
    key = key or field

    def get(self: "ChannelStats") -> int:
        c = self._ch._c
        if c is None:
            return self._ch._final.get(key, 0)
        return int(getattr(c.rx if rx else c, field))  # a field named at run time

    get.__doc__ = doc
    return property(get)


class ChannelStats:
    """Counters of one channel, read live; subclasses add their own."""

    __slots__ = ("_ch",)

    #: the counters as_dict() and repr() show, in order
    _NAMES: Tuple[str, ...] = ("packets", "overruns", "handler_errors", "recv_calls")

    def __init__(self, ch: "Channel[Any]") -> None:
        self._ch = ch

    @property
    def packets(self) -> int:
        """Packets received."""
        return self._ch._npackets

    @property
    def handler_errors(self) -> int:
        """Packets whose handler raised."""
        return self._ch._handler_errors

    overruns = c_counter(
        "overruns", "Times the kernel reported ENOBUFS (messages lost to a full buffer).")
    recv_calls = c_counter("recv_calls", "Receive syscalls made.")

    def as_dict(self) -> Dict[str, int]:
        return {n: getattr(self, n) for n in self._NAMES}

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%d" % kv for kv in self.as_dict().items()))


def config_error(err: int, what: str, *, binding: bool, flags: bool,
                 busy_hint: str) -> NetlinkError:
    """The exception for a refused NFQUEUE/NFLOG configuration step.

    A bind refused with EPERM (EBUSY: bound by this very socket) means no
    CAP_NET_ADMIN or another owner: ``error_from_errno`` tells them apart;
    EOPNOTSUPP on the flags step means this kernel lacks one of them.
    """
    if err == errno.EBUSY:
        err = errno.EPERM
    if binding:
        return error_from_errno(err, what, busy_hint=busy_hint)
    if flags and err == errno.EOPNOTSUPP:
        return NetlinkError(err, what, "this kernel does not support one of the flags")
    return error_from_errno(err, what)


class Channel(Generic[P]):
    """Base of NfQueue and NfLog: a netlink socket with loops on top.

    Subclasses implement ``_drain_once(handler) -> int`` (non-blocking: read one
    batch, dispatch it, return the number of packets, or -1 when a batch was
    read but nothing in it was dispatched) and ``_close_channel()``.  ``P`` is
    what they hand the handlers (Packet, LogPacket, Event).
    """

    _sock: Optional[socket.socket] = None
    _closed = True
    #: the thread handing a batch to handlers right now (None: none)
    _dispatch_thread: Optional[int] = None
    #: what other modules keep for this channel and close with it (an object
    #: with close(): pkt.process()'s sock_diag socket); see _close_with()
    _close_also: Tuple[Any, ...] = ()
    #: _FORKS when the channel was opened or a loop last ran on it
    _used_at = 0
    #: the subclass's C state; None once closed
    _c: Optional[_ChannelState]
    #: its counters as they were when it closed (ChannelStats reads them then)
    _final: Dict[str, int]
    _npackets: int
    _handler_errors: int
    #: packets read from the socket but not yet handed to a handler (a list
    #: or a deque, the subclass's choice)
    _backlog: Union[List[P], Deque[P]]
    #: what stop() writes to, and every loop waits on beside the socket
    _wake: WakePipe
    #: one per ``async for`` in progress: sets its event on its event loop
    _async_wakers: Set[Callable[[], None]]

    def _init_channel(
        self,
        *,
        netns: _netns.NetNS,
        rcvbuf: int,
        on_overrun: str,
        no_enobufs: bool,
        rcvbuf_max: Optional[int] = None,
    ) -> None:
        self._on_overrun = check_choice("on_overrun", on_overrun, ON_OVERRUN)
        # an overrun doubles the receive buffer, up to rcvbuf_max
        self._rcvbuf_req = rcvbuf
        self._rcvbuf_max = rcvbuf if rcvbuf_max is None else max(rcvbuf, rcvbuf_max)
        self._netns = netns
        self._stop_requested = False
        self._more = True
        self._warned_overrun = False
        self._ifnames: Dict[int, Optional[str]] = {}
        self._lock = threading.RLock()
        self._wake = WakePipe()
        self._async_wakers = set()
        try:
            self._sock = _open_netlink(netns, rcvbuf, no_enobufs)
        except BaseException:
            self._wake.close()
            raise
        self._fd = self._sock.fileno()
        self._used_at = _FORKS[0]
        self._closed = False

    def _abort_open(self) -> None:
        """Undo ``_init_channel`` when the subclass's set-up failed."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
        self._wake.close()

    # -- plumbing ---------------------------------------------------------

    def fileno(self) -> int:
        """The netlink socket's descriptor, for select/poll/epoll/trio loops.

        When it is readable, call ``drain(handler)``.
        """
        self._check_open()
        return self._fd

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran."""
        return self._closed

    @property
    def rcvbuf(self) -> int:
        """The socket's receive buffer size in bytes, as the kernel reports it."""
        self._check_open()
        assert self._sock is not None
        rcvbuf: int = self._sock.getsockopt(lib.SOL_SOCKET, lib.SO_RCVBUF)
        return rcvbuf

    def set_rcvbuf(self, size: int) -> int:
        """Resize the receive buffer; returns the size granted.  It is also
        the new ceiling for growth after overruns."""
        self._check_open()
        assert self._sock is not None
        size = check_int("rcvbuf", size, 4096, 1 << 30)
        granted = set_rcvbuf(self._sock, size)
        self._rcvbuf_req = self._rcvbuf_max = size
        return granted

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("%s is closed; create a new one" % type(self).__name__)

    def _inherited(self) -> bool:
        """Whether close() must leave the binding to another process: this
        one forked (or was forked) since it last used the channel, and
        another process still holds the socket.  Then close() only closes
        this process's descriptors; the last process holding it, or one that
        ran a loop on it since its fork, unbinds and settles."""
        if self._used_at == _FORKS[0] or self._sock is None:
            return False
        return _held_elsewhere(self._sock.fileno())

    def _check_not_in_handler(self, what: str) -> None:
        """Refuse to enter a loop from one of this channel's own handlers:
        the batch being handed out has not been finished (for NfQueue: its
        verdicts not sent), and a nested loop would read the next one."""
        if self._dispatch_thread != threading.get_ident():
            return
        # the marker is cleared in a finally; make sure a dispatch of this
        # channel really is on the stack (and not a marker left behind)
        f: Optional[FrameType] = sys._getframe(1)
        while f is not None:
            if f.f_code.co_name in self._DISPATCHERS and f.f_locals.get("self") is self:
                raise RuntimeError(
                    "%s.%s() was called from inside one of its own handlers; a handler "
                    "must return before the loop reads more packets: return the verdict "
                    "(or None and give it later with pkt.accept()/drop()), and call "
                    "stop() to leave the loop" % (self._describe(), what))
            f = f.f_back
        self._dispatch_thread = None

    #: the methods that call handlers (for _check_not_in_handler)
    _DISPATCHERS: Tuple[str, ...] = ("_dispatch", "_dispatch_hot", "_dispatch_list",
                                     "_run_backlog")

    def _overrun(self, count: int) -> None:
        """Apply the ENOBUFS policy (called by _drain_once on -ENOBUFS)."""
        grown = self._grow_rcvbuf()
        if self._on_overrun == "raise":
            raise Overrun(count=count, op="receiving from %s" % self._describe())
        if not self._warned_overrun:
            self._warned_overrun = True
            warnings.warn(
                "%s: the kernel dropped messages because the receive buffer was "
                "full (ENOBUFS); counting them in .stats.overruns%s. Raise rcvbuf= "
                "(or rcvbuf_max=), or pass on_overrun='raise' to get an exception, "
                "or no_enobufs=True to silence the kernel's report." % (
                    self._describe(),
                    "; the buffer now has %d bytes and doubles at each overrun up to "
                    "rcvbuf_max=%d" % (self._rcvbuf_req, self._rcvbuf_max) if grown else ""),
                OverrunWarning,
                stacklevel=4,
            )

    def _grow_rcvbuf(self) -> bool:
        """Double the receive buffer after an overrun, up to rcvbuf_max (as
        conntrackd and ulogd do); True if it grew."""
        if self._rcvbuf_req >= self._rcvbuf_max or self._sock is None:
            return False
        size = min(self._rcvbuf_req * 2, self._rcvbuf_max)
        try:
            set_rcvbuf(self._sock, size)
        except OSError:  # no CAP_NET_ADMIN to pass rmem_max: stay as we are
            self._rcvbuf_max = self._rcvbuf_req
            return False
        self._rcvbuf_req = size
        return True

    def _recv_batch(self, recv: Callable[[_S], int], c: _S) -> int:
        """One receive by the C helper ``recv`` into ``c.rx``, never blocking.

        An overrun gets the ENOBUFS policy (counted, or raised) and the read
        goes on, since the socket stays readable after one; so does a batch
        that held no packet (only the kernel's error replies, or packets the
        C filter dropped).  Returns the number of packets, 0 for none.
        """
        for _ in range(_MAX_BATCHES_PER_WAKE):
            n = recv(c)
            if n < 0:
                if n != -errno.ENOBUFS:
                    raise error_from_errno(-n, "receiving from %s" % self._describe())
                self._overrun(int(c.rx.overruns))
                continue
            if n == 0 and c.rx.data_len:
                continue
            return n
        return 0

    def _describe(self) -> str:
        return type(self).__name__

    def _ifname(self, index: Optional[int]) -> Optional[str]:
        """Interface name for ``index`` in the channel's namespace, cached."""
        if index is None:
            return None
        try:
            return self._ifnames[index]
        except KeyError:
            pass
        try:
            name: Optional[str] = _netns.call_in(self._netns, socket.if_indextoname, index)
        except OSError:
            name = None
        self._ifnames[index] = name
        return name

    def refresh_ifnames(self) -> None:
        """Forget cached interface names (after interfaces were renamed)."""
        self._ifnames.clear()

    # -- loops ------------------------------------------------------------

    def _drain_once(self, handler: Callable[[P], Any]) -> int:  # pragma: no cover
        raise NotImplementedError

    def _close_channel(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def drain(self, handler: Callable[[P], Any], *, max_batches: int = _MAX_BATCHES_PER_WAKE) -> int:
        """Dispatch every packet readable now to ``handler``; never blocks.

        Returns the number of packets dispatched (0: nothing was waiting).  For
        users' own event loops: call it when ``fileno()`` is readable.
        ``max_batches`` bounds the receive calls of one drain.

        Raises ClosedError (the channel is closed), TypeError/ValueError (a
        bad argument), RuntimeError (called from inside one of this
        channel's own handlers), and what the handler raises (after its
        batch).
        """
        self._check_open()
        check_handler(handler)
        max_batches = check_int("max_batches", max_batches, 1, 1 << 30)
        self._check_not_in_handler("drain")
        return self._drain(handler, max_batches)

    def _drain(self, handler: Callable[[P], Any], max_batches: int = _MAX_BATCHES_PER_WAKE) -> int:
        """drain() for nfbind's own loops: 0 once the channel is closed (also
        by another thread meanwhile), which ends them."""
        self._used_at = _FORKS[0]
        total = 0
        more = True
        try:
            for _ in range(max_batches):
                if self._closed:
                    more = False
                    break
                self._due()
                n = self._drain_once(handler)
                if not n:
                    more = False
                    break
                total += max(n, 0)
                # the last receive found the socket drained (and the handlers
                # stashed nothing meanwhile): no need to ask it again
                if self._closed or self._short_read():
                    more = False
                    break
        except Exception:
            raise
        except BaseException:
            # KeyboardInterrupt and the like, in a handler or between two:
            # what was decided before it goes out now
            self._interrupted()
            raise
        self._more = more
        return total

    def _interrupted(self) -> None:
        """After an interruption of the loop (NfQueue: send the verdicts
        decided and not sent yet)."""

    def _due(self) -> None:
        """Before each receive: what is due by the clock (NfQueue: the
        packets whose verdict deadline passed get on_timeout)."""

    def _next_deadline(self) -> Optional[float]:
        """When ``_due()`` next has work (time.monotonic()), or None: the
        loops wait no longer than that."""
        return None

    def _wait_time(self, limit: Optional[float]) -> Optional[float]:
        """How long a loop may wait: at most ``limit`` seconds (None: no
        limit), and no later than a millisecond past the next deadline."""
        nd = self._next_deadline()
        if nd is None:
            return limit
        left = max(0.0, nd - time.monotonic()) + 0.001
        return left if limit is None else min(left, limit)

    def _short_read(self) -> bool:
        """Whether the last receive found the socket drained."""
        assert self._c is not None  # drain() checked that the channel is open
        return bool(self._c.rx.short_read)

    def stop(self) -> None:
        """Make ``run()`` and iteration return soon.

        Safe from any thread and from a signal handler.
        """
        self._stop_requested = True
        self._wake.wake()

    def _push_back(self, items: Deque[P]) -> None:
        """Packets read but not handed out yet (an iterator was left): the
        next loop hands them out first."""
        if not items or self._closed:
            return
        if isinstance(self._backlog, deque):
            self._backlog.extendleft(reversed(list(items)))
        else:
            self._backlog = list(items) + self._backlog

    def _consume_stop(self) -> None:
        """A stop() ends exactly one run() or iteration: the one running when
        it came, or the next one to start."""
        if not self._closed:
            self._stop_requested = False
            self._wake.clear()

    def run(self, handler: Callable[[P], Any], *, timeout: Optional[float] = None) -> None:
        """Call ``handler(packet)`` for every packet until ``stop()``.

        Returns after ``stop()`` (from the handler, another thread or a signal
        handler), after ``close()``, on Ctrl-C (KeyboardInterrupt is absorbed),
        or when ``timeout`` seconds (a number >= 0; None or ``math.inf``: no
        limit) passed without a packet.  An exception raised by the handler
        comes out of ``run()`` once the batch it was in has been completed.

        Raises ClosedError, Overrun (``on_overrun="raise"``), NetlinkError,
        TypeError/ValueError (a bad handler or timeout, before any wait),
        RuntimeError (called from inside one of this channel's own handlers).
        """
        self._check_open()
        check_handler(handler)
        timeout = check_timeout(timeout)
        self._check_not_in_handler("run")
        waiter = self._wake.waiter([self._fd])
        try:
            idle_since = time.monotonic()
            while not self._stop_requested and not self._closed:
                if self._drain(handler):
                    idle_since = time.monotonic()
                    if self._more:
                        continue
                    # the last receive drained the socket: wait in poll(),
                    # which returns at once if more came meanwhile
                if self._stop_requested or self._closed:
                    break
                if timeout is not None:
                    left = timeout - (time.monotonic() - idle_since)
                    if left <= 0:
                        break
                    waiter.wait(self._wait_time(min(left, 3600.0)))
                else:
                    waiter.wait(self._wait_time(None))
        except KeyboardInterrupt:
            return
        finally:
            self._consume_stop()

    def _collect(self) -> Iterator[P]:
        """Packets one by one, for ``for pkt in channel``."""
        self._check_open()
        self._check_not_in_handler("__iter__")
        buf: Deque[P] = deque()
        waiter = self._wake.waiter([self._fd])
        try:
            while True:
                while buf:
                    yield buf.popleft()
                if self._stop_requested or self._closed:
                    return
                if not self._drain(buf.append):
                    if self._stop_requested or self._closed:
                        return
                    waiter.wait(self._wait_time(None))
        finally:
            self._push_back(buf)
            self._consume_stop()

    def __iter__(self) -> Iterator[P]:
        return self._collect()

    async def __aiter__(self) -> AsyncIterator[P]:
        """``async for pkt in channel`` on the running asyncio loop.

        Ends after ``stop()`` or ``close()``, from any task or thread.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        buf: Deque[P] = deque()
        # The event loop watches copies of the socket and of the wake-up
        # pipe's read end that this iteration owns: close() may release the
        # originals at any moment, and their numbers may be reused (by the
        # next channel this loop iterates) before this iteration has removed
        # its readers.  The copy of the pipe turns readable (end of file)
        # when close() closes the write end, so close() also wakes it.
        fds: List[int] = []
        try:
            for fd in (self._fd, self._wake.r):
                fds.append(os.dup(fd))
                loop.add_reader(fds[-1], ready.set)
        except BaseException:
            _forget_readers(loop, fds)
            raise

        def waker() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # that event loop is closed
                pass

        self._async_wakers.add(waker)
        try:
            while True:
                while buf:
                    yield buf.popleft()
                if self._stop_requested or self._closed:
                    return
                ready.clear()
                if not self._drain(buf.append):
                    if self._stop_requested or self._closed:
                        return
                    wait = self._wait_time(None)
                    timer = None if wait is None else loop.call_later(wait, ready.set)
                    try:
                        await ready.wait()
                    finally:
                        if timer is not None:
                            timer.cancel()
                    self._wake.clear()
        finally:
            self._async_wakers.discard(waker)
            self._push_back(buf)
            self._consume_stop()
            _forget_readers(loop, fds)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Release the socket.  Safe to call twice.  After a fork, a process
        that has not run a loop on the channel since, while another process
        holds the socket, only closes its own descriptors: the binding is
        the other process's."""
        if self._closed:
            return
        self.stop()
        with self._lock:
            if self._closed:
                return
            try:
                self._close_channel()
            finally:
                self._closed = True
                if self._sock is not None:
                    self._sock.close()
                self._wake.close()
                for other in self._close_also:
                    other.close()
                self._close_also = ()
                # an async for sees no wake-up on a pipe closed before its
                # event loop looked: tell it on that loop
                for waker in list(self._async_wakers):
                    waker()

    def _close_with(self, other: Any) -> None:
        """Close ``other`` (anything with ``close()``) when this channel
        closes."""
        self._close_also += (other,)

    def __enter__(self: _Self) -> _Self:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _Self) -> _Self:
        """``async with channel:``, the same as ``with``: the block's end
        closes it (also on an exception or a cancellation, which then goes
        on).  Raises ClosedError on a closed channel."""
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed and self._sock is not None:
            try:
                warnings.warn(
                    "unclosed %s: call close() or use a with block" % type(self).__name__,
                    ResourceWarning,
                    source=self,
                )
            finally:
                # also when the warning is an error (-W error): nothing else
                # would close the wake-up pipe or settle waiting packets
                try:
                    self.close()
                except Exception:
                    pass
