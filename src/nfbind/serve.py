# SPDX-License-Identifier: GPL-2.0-or-later
"""Scale-out: one handler over several NFQUEUE queues, one process per core.

A Python process runs one handler at a time (the GIL), so one
:class:`~nfbind.NfQueue` uses at most one core.  The kernel can spread packets
over a range of queues (``-j NFQUEUE --queue-balance 0:3``); :func:`serve`
binds those queues in forked worker processes and runs the same handler in
each::

    import nfbind

    def decide(pkt):
        return nfbind.Verdict.ACCEPT

    result = nfbind.serve(decide, queues=range(4), workers=4, max_len=8192)
    print(result.packets, [w.packets for w in result.workers])

Policy, in short (the docs page "Using more than one core" has the details):

* start-up: :func:`serve` returns control to nobody until every worker has
  bound its queues (``bind_timeout``); if one cannot, the others are stopped
  and the worker's error is raised in the caller with the same class
  (:class:`~nfbind.QueueBusy`, :class:`~nfbind.PermissionDenied`, ...).
* shutdown: SIGINT/SIGTERM to the calling process (when :func:`serve` runs in
  the main thread), ``stop_event.set()`` from another thread, or ``timeout``
  stop every worker; each closes its queues, which gives every packet still
  waiting the default verdict.  Workers ignore SIGINT (Ctrl-C reaches the
  whole process group; the parent coordinates the stop).  Every worker is
  reaped before :func:`serve` returns or raises.
* a handler that raises: its packet gets ``on_error``, the worker logs it on
  the ``nfbind.serve`` logger and keeps serving; the count is in the result.
* a worker that dies: restarted (``restart=True``, at most ``max_restarts``
  times per worker), or everything stops and :class:`WorkerError` is raised
  (``restart=False``, or the restarts are used up).
"""
from __future__ import annotations

import errno
import inspect
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ._channel import ON_OVERRUN, check_choice, check_int
from ._wake import WakePipe
from .errors import NetlinkError, NfbindError, Overrun
from .queue import NfQueue

__all__ = ["serve", "ServeResult", "WorkerStats", "WorkerError"]

log = logging.getLogger("nfbind.serve")

#: the NfQueue keyword arguments serve() passes through to every queue: all
#: of its keyword-only options
QUEUE_OPTIONS = tuple(name for name, p in inspect.signature(NfQueue).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY)


class _OptionsChecked(Exception):
    """NfQueue's argument checks passed (raised where it would open its socket)."""


class _CheckedQueue(NfQueue):
    """Runs NfQueue's argument checks in the calling process and stops
    before any socket exists: serve() refuses bad options before forking."""

    def _init_channel(self, *, on_overrun: str, **kw: Any) -> None:
        check_choice("on_overrun", on_overrun, ON_OVERRUN)
        raise _OptionsChecked


#: handler errors a worker logs one by one; after that, one line per 1000
_LOG_FIRST = 10

# worker exit codes
_EXIT_OK, _EXIT_BIND, _EXIT_FATAL, _EXIT_CRASH = 0, 1, 2, 70

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerError(NfbindError):
    """A worker process died or failed and was not (or no longer) restarted.

    Attributes:
        index: the worker's index (0-based).
        queues: the queue numbers it served.
        pid: its process id (of the last attempt).
        status: its exit code, negative for the signal that killed it
            (``-9``: SIGKILL), or None if it failed without exiting yet.
    """

    def __init__(self, msg: str, index: int, queues: Tuple[int, ...], pid: int,
                 status: Optional[int]) -> None:
        super().__init__(msg)
        self.index = index
        self.queues = queues
        self.pid = pid
        self.status = status


@dataclass
class WorkerStats:
    """What one worker slot did, summed over its restarts.

    Times are ``time.monotonic()`` values; CLOCK_MONOTONIC is the same clock
    in every process, so they compare across workers.

    Attributes:
        index: the worker's index (0-based).
        queues: the queue numbers it served.
        pid: the process id of its last process.
        packets: packets received (handled, plus those the final ``close()``
            gave the default verdict).
        handler_errors: packets whose handler raised (they got ``on_error``).
        overruns: ENOBUFS reports of its sockets.
        restarts: how many times it was restarted.
        per_queue: packets received, by queue number.
        first_packet: when its first batch was being read, or None.
        last_packet: when its last batch had its verdicts sent, or None.
        exitcode: the exit status of its last process (negative: the signal
            that killed it), None while unknown.
        lost_stats: processes of this slot that died before they could
            report; their counts are missing from the figures above.
    """

    index: int
    queues: Tuple[int, ...]
    pid: int = 0
    packets: int = 0
    handler_errors: int = 0
    overruns: int = 0
    restarts: int = 0
    per_queue: Dict[int, int] = field(default_factory=dict)
    first_packet: Optional[float] = None
    last_packet: Optional[float] = None
    exitcode: Optional[int] = None
    lost_stats: int = 0

    def _add(self, d: Dict[str, Any]) -> None:
        self.packets += d["packets"]
        self.handler_errors += d["handler_errors"]
        self.overruns += d["overruns"]
        for q, n in d["per_queue"].items():
            self.per_queue[q] = self.per_queue.get(q, 0) + n
        if d["first"] is not None:
            self.first_packet = d["first"] if self.first_packet is None else min(
                self.first_packet, d["first"])
        if d["last"] is not None:
            self.last_packet = d["last"] if self.last_packet is None else max(
                self.last_packet, d["last"])


@dataclass
class ServeResult:
    """What :func:`serve` returns: one :class:`WorkerStats` per worker, and totals.

    Iterating over it (or indexing it) gives the workers' statistics.
    """

    workers: List[WorkerStats]

    def __iter__(self) -> Iterator[WorkerStats]:
        return iter(self.workers)

    def __len__(self) -> int:
        return len(self.workers)

    def __getitem__(self, i: int) -> WorkerStats:
        return self.workers[i]

    @property
    def packets(self) -> int:
        """Packets received by all workers."""
        return sum(w.packets for w in self.workers)

    @property
    def handler_errors(self) -> int:
        """Packets whose handler raised, in all workers."""
        return sum(w.handler_errors for w in self.workers)

    @property
    def overruns(self) -> int:
        """ENOBUFS reports, in all workers."""
        return sum(w.overruns for w in self.workers)

    @property
    def restarts(self) -> int:
        """Worker restarts."""
        return sum(w.restarts for w in self.workers)

    @property
    def seconds(self) -> Optional[float]:
        """From the first packet any worker read to the last verdict any
        worker sent, or None if no packet came."""
        firsts = [w.first_packet for w in self.workers if w.first_packet is not None]
        lasts = [w.last_packet for w in self.workers if w.last_packet is not None]
        if not firsts or not lasts:
            return None
        return max(lasts) - min(firsts)

    @property
    def pps(self) -> Optional[float]:
        """``packets / seconds`` over all workers (a drain rate), or None."""
        s = self.seconds
        return self.packets / s if s else None


# -- the worker process ---------------------------------------------------------------


def _status_text(status: Optional[int]) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return "killed by %s" % signal.Signals(-status).name
        except ValueError:
            return "killed by signal %d" % -status
    return "exit status %d" % status


def _qtext(queues: Sequence[int]) -> str:
    return ("queue %d" % queues[0]) if len(queues) == 1 else (
        "queues %s" % ", ".join(map(str, queues)))


def _send(conn: Connection, msg: tuple) -> None:
    try:
        conn.send(msg)
    except Exception:  # an unpicklable exception object: send its text
        if msg[0] == "fail":
            conn.send(("fail", msg[1], None, type(msg[2]).__name__, str(msg[2])))
        else:
            raise


def _worker_main(index: int, queues: Tuple[int, ...], handler: Callable[[Any], Any],
                 options: Dict[str, Any], conn: Connection, stop_r: int,
                 old_mask: Any) -> int:
    """The body of a worker process; returns its exit code."""
    stopping = False
    wake = WakePipe()

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        wake.wake()

    # Ctrl-C goes to the whole process group: the parent stops us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    qs: List[Any] = []
    try:
        for num in queues:
            qs.append(NfQueue(num, **options))
    except Exception as e:
        for q in qs:
            q.close()
        _send(conn, ("fail", num, e))
        return _EXIT_BIND
    try:
        conn.send(("bound", os.getpid()))
    except OSError:  # the parent is gone
        stopping = True

    name = "worker %d" % index
    first: Optional[float] = None
    last: Optional[float] = None
    fatal: Optional[str] = None
    errors = 0
    by_fd = {q.fileno(): q for q in qs}
    waiter = wake.waiter([*by_fd, stop_r])  # SIGTERM wakes it
    mono = time.monotonic
    try:
        while not stopping:
            for fd in waiter.wait():
                q = by_fd.get(fd)
                if q is None:  # the parent closed the stop pipe (or is gone)
                    stopping = True
                    break
                before = q.stats.handler_errors
                t0 = mono()
                try:
                    n = q.drain(handler)
                except Overrun as e:  # on_overrun="raise": report it, keep serving
                    log.warning("%s (queue %d): %s", name, q.queue_num, e)
                    continue
                except Exception as e:
                    now = q.stats.handler_errors
                    if now == before:  # not the handler's: the queue itself failed
                        fatal = "%s (queue %d): %s: %s" % (name, q.queue_num,
                                                          type(e).__name__, e)
                        stopping = True
                        break
                    prev, errors = errors, errors + now - before
                    if prev < _LOG_FIRST or prev // 1000 != errors // 1000:
                        log.error("%s (queue %d): the handler raised %s: %s; the packet "
                                  "got on_error (%d handler error%s so far in this worker)",
                                  name, q.queue_num, type(e).__name__, e, errors,
                                  "" if errors == 1 else "s", exc_info=e if not prev else None)
                    if first is None:
                        first = t0
                    last = mono()
                    continue
                if n:
                    if first is None:
                        first = t0
                    last = mono()
    finally:
        for q in qs:
            try:
                q.close()
            except Exception as e:  # keep closing the others
                log.warning("%s: closing queue %d: %s", name, q.queue_num, e)
        wake.close()
    try:
        if fatal is not None:
            log.error("%s", fatal)
            conn.send(("fatal", fatal))
        conn.send(("stats", {
            "packets": sum(q.stats.packets for q in qs),
            "handler_errors": sum(q.stats.handler_errors for q in qs),
            "overruns": sum(q.stats.overruns for q in qs),
            "per_queue": {q.queue_num: q.stats.packets for q in qs},
            "first": first,
            "last": last,
        }))
    except OSError:  # the parent is gone: nobody to report to
        pass
    return _EXIT_FATAL if fatal is not None else _EXIT_OK


# -- the parent ------------------------------------------------------------------------


class _Slot:
    """One worker position: its queues, its current process, its totals."""

    def __init__(self, index: int, queues: Tuple[int, ...]) -> None:
        self.index = index
        self.queues = queues
        self.stats = WorkerStats(index, queues)
        self.pid = 0
        self.pidfd = -1
        self.conn: Optional[Connection] = None
        self.alive = False
        self.bound = False
        self.reported = False
        self.bind_deadline = 0.0
        self.respawn_at: Optional[float] = None
        self.fail: Optional[tuple] = None
        self.fatal: Optional[str] = None
        self.status: Optional[int] = None
        self.handled_death = True

    @property
    def label(self) -> str:
        return "worker %d (%s, pid %d)" % (self.index, _qtext(self.queues), self.pid)


def _rebuild(exc: Optional[BaseException], type_name: str, text: str, prefix: str
             ) -> BaseException:
    """The worker's exception again, of the same class, its message starting
    with ``prefix`` (which worker, which queues)."""
    if exc is None:
        return NfbindError("%s%s: %s" % (prefix, type_name, text))
    if isinstance(exc, NetlinkError):
        try:
            return type(exc)(exc.errno or errno.EIO, prefix + exc.op, exc.hint)
        except Exception:
            pass
    elif isinstance(exc, OSError) and exc.errno is not None:
        try:
            return type(exc)(exc.errno, prefix + (exc.strerror or str(exc)),
                             *((exc.filename,) if exc.filename is not None else ()))
        except Exception:
            pass
    try:
        return type(exc)(prefix + str(exc))
    except Exception:
        return NfbindError("%s%s: %s" % (prefix, type(exc).__name__, exc))


class _Server:
    def __init__(self, handler: Callable[[Any], Any], assignment: List[Tuple[int, ...]],
                 options: Dict[str, Any], *, restart: bool, max_restarts: int,
                 timeout: Optional[float], stop_event: Any,
                 ready: Optional[Callable[[Dict[int, Tuple[int, ...]]], Any]],
                 bind_timeout: float, stop_timeout: float) -> None:
        self.handler = handler
        self.options = options
        self.slots = [_Slot(i, qs) for i, qs in enumerate(assignment)]
        self.restart = restart
        self.max_restarts = max_restarts
        self.timeout = timeout
        self.stop_event = stop_event
        self.ready = ready
        self.bind_timeout = bind_timeout
        self.stop_timeout = stop_timeout
        self.stopping = False
        self.stop_requested = False
        self.wake = WakePipe()  # SIGINT/SIGTERM end the current wait
        self.stop_r = self.stop_w = -1
        self._old_handlers: Dict[int, Any] = {}

    # -- signals and wake-ups -----------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        self.wake.wake()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in _STOP_SIGNALS:
            try:
                self._old_handlers[s] = signal.signal(s, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                pass

    def _restore_signals(self) -> None:
        for s, h in self._old_handlers.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._old_handlers.clear()

    # -- processes --------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        reader, writer = Pipe(duplex=False)
        for f in (sys.stdout, sys.stderr):  # or the child flushes our buffered text again
            try:
                f.flush()
            except Exception:
                pass
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                code = _EXIT_CRASH
                try:
                    reader.close()
                    self._close_parent_fds_in_child()
                    code = _worker_main(slot.index, slot.queues, self.handler, self.options,
                                        writer, self.stop_r, old_mask)
                except BaseException:
                    try:
                        log.exception("worker %d (%s) failed", slot.index, _qtext(slot.queues))
                    except BaseException:
                        pass
                finally:
                    try:
                        writer.close()
                        sys.stdout.flush()
                        sys.stderr.flush()
                    except BaseException:
                        pass
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        writer.close()
        slot.pid = pid
        slot.stats.pid = pid
        try:
            slot.pidfd = os.pidfd_open(pid)
        except OSError:  # pragma: no cover - kernels before 5.3
            slot.pidfd = -1
        slot.conn = reader
        slot.alive = True
        slot.bound = False
        slot.reported = False
        slot.fail = None
        slot.fatal = None
        slot.status = None
        slot.handled_death = False
        slot.respawn_at = None
        slot.bind_deadline = time.monotonic() + self.bind_timeout

    def _close_parent_fds_in_child(self) -> None:
        try:
            os.close(self.stop_w)
        except OSError:
            pass
        self.wake.close()
        for other in self.slots:  # (the other workers' pipes are closed at exit)
            if other.pidfd >= 0:
                try:
                    os.close(other.pidfd)
                except OSError:
                    pass

    def _read(self, slot: _Slot) -> None:
        conn = slot.conn
        if conn is None:
            return
        try:
            while conn.poll(0):
                msg = conn.recv()
                kind = msg[0]
                if kind == "bound":
                    slot.bound = True
                elif kind == "fail":
                    slot.fail = msg[1:] if len(msg) == 5 else (msg[1], msg[2], "", "")
                elif kind == "fatal":
                    slot.fatal = msg[1]
                elif kind == "stats":
                    slot.stats._add(msg[1])
                    slot.reported = True
        except (EOFError, OSError):
            conn.close()
            slot.conn = None
        except Exception as e:  # a message we could not unpickle
            log.warning("%s: unreadable message: %s", slot.label, e)

    def _reap(self, slot: _Slot, block: bool = False) -> bool:
        """Collect the worker if it has exited; True if it has."""
        if not slot.alive:
            return True
        try:
            pid, st = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, st = slot.pid, 0
        if pid == 0:
            return False
        self._read(slot)
        slot.alive = False
        slot.status = os.waitstatus_to_exitcode(st) if pid == slot.pid and st else 0
        slot.stats.exitcode = slot.status
        if slot.bound and not slot.reported:
            slot.stats.lost_stats += 1
        if slot.pidfd >= 0:
            os.close(slot.pidfd)
            slot.pidfd = -1
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        return True

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages, exits and wake-ups."""
        fds: Dict[int, Tuple[_Slot, str]] = {}
        for slot in self.slots:
            if slot.alive:
                if slot.conn is not None:
                    fds[slot.conn.fileno()] = (slot, "conn")
                if slot.pidfd >= 0:
                    fds[slot.pidfd] = (slot, "exit")
        if self.slots and not fds:  # nothing tells of an exit: look again soon
            timeout = min(timeout, 0.05)
        exited = []
        for fd in self.wake.waiter(fds).wait(timeout):
            slot, kind = fds[fd]
            if kind == "conn":
                self._read(slot)
            else:
                exited.append(slot)
        for slot in exited:
            self._reap(slot)
        for slot in self.slots:  # pidfd-less kernels, and exits seen only via EOF
            if slot.alive and slot.pidfd < 0:
                self._reap(slot)

    def _signal(self, slot: _Slot, sig: int) -> None:
        if not slot.alive:
            return
        try:
            if slot.pidfd >= 0:
                signal.pidfd_send_signal(slot.pidfd, sig)
            else:  # pragma: no cover - not yet reaped, so the pid is still ours
                os.kill(slot.pid, sig)
        except (ProcessLookupError, OSError):
            pass

    # -- policy -------------------------------------------------------------------------

    def _failure(self, slot: _Slot) -> BaseException:
        """The exception reporting how ``slot``'s process failed."""
        if slot.fail is not None:
            num, exc, type_name, text = slot.fail
            return _rebuild(exc, type_name, text, "worker %d (%s): " % (
                slot.index, _qtext(slot.queues)))
        if slot.fatal is not None:
            return WorkerError(slot.fatal, slot.index, slot.queues, slot.pid, slot.status)
        if slot.alive and not slot.bound:
            return WorkerError("%s did not bind its queues within %g s"
                               % (slot.label, self.bind_timeout), slot.index, slot.queues,
                               slot.pid, None)
        return WorkerError("%s died unexpectedly (%s)" % (slot.label, _status_text(slot.status)),
                           slot.index, slot.queues, slot.pid, slot.status)

    def _supervise(self) -> None:
        """Restart dead workers, or raise; kill workers that do not bind in time."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.alive:
                if not slot.bound and now > slot.bind_deadline:
                    log.error("%s did not bind its queues within %g s; killing it",
                              slot.label, self.bind_timeout)
                    slot.fatal = slot.fatal or ("%s did not bind its queues within %g s"
                                                % (slot.label, self.bind_timeout))
                    self._signal(slot, signal.SIGKILL)
                continue
            if not slot.handled_death:
                slot.handled_death = True
                err = self._failure(slot)
                if not self.restart or slot.stats.restarts >= self.max_restarts:
                    if self.restart:
                        log.error("%s: giving up after %d restart%s", slot.label,
                                  slot.stats.restarts, "" if slot.stats.restarts == 1 else "s")
                    raise err
                slot.stats.restarts += 1
                delay = min(0.1 * (2 ** (slot.stats.restarts - 1)), 2.0)
                slot.respawn_at = now + delay
                log.warning("%s; restarting it (restart %d of at most %d)",
                            err, slot.stats.restarts, self.max_restarts)
            elif slot.respawn_at is not None and now >= slot.respawn_at:
                self._spawn(slot)

    # -- the whole run ----------------------------------------------------------------

    def _should_stop(self, end: Optional[float]) -> bool:
        if self.stop_requested:
            return True
        if self.stop_event is not None and self.stop_event.is_set():
            return True
        return end is not None and time.monotonic() >= end

    def run(self) -> ServeResult:
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self._install_signals()
        try:
            try:
                self._start()
                if not self.stop_requested:
                    self._serve()
            finally:
                self._shutdown()
        finally:
            self._restore_signals()
            self.wake.close()
            for fd in (self.stop_r, self.stop_w):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.stop_w = -1
        return ServeResult([s.stats for s in self.slots])

    def _start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        deadline = time.monotonic() + self.bind_timeout
        while True:
            for slot in self.slots:
                if slot.fail is not None or not slot.alive:
                    raise self._failure(slot)
            if all(s.bound for s in self.slots):
                break
            if self.stop_requested or (self.stop_event is not None and self.stop_event.is_set()):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                slot = next(s for s in self.slots if not s.bound)
                raise self._failure(slot)
            self._pump(min(left, 0.2))
        if self.ready is not None:
            self.ready({s.pid: s.queues for s in self.slots})

    def _serve(self) -> None:
        end = None if self.timeout is None else time.monotonic() + self.timeout
        while not self._should_stop(end):
            wait = 0.25
            if end is not None:
                wait = min(wait, max(0.0, end - time.monotonic()))
            for slot in self.slots:
                if slot.respawn_at is not None and not slot.alive:
                    wait = min(wait, max(0.0, slot.respawn_at - time.monotonic()))
            self._pump(wait)
            if not self._should_stop(end):
                self._supervise()

    def _shutdown(self) -> None:
        """Stop every worker and reap it; every wait is bounded."""
        self.stopping = True
        if self.stop_w >= 0:
            os.close(self.stop_w)  # EOF on every worker's stop pipe
            self.stop_w = -1
        for slot in self.slots:
            self._signal(slot, signal.SIGCONT)  # a stopped (SIGSTOP) worker must see it too
        deadline = time.monotonic() + self.stop_timeout
        while any(s.alive for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(min(left, 0.2))
        for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            late = [s for s in self.slots if s.alive]
            if not late:
                break
            for slot in late:
                log.warning("%s did not stop within %g s; sending %s", slot.label,
                            self.stop_timeout, signal.Signals(sig).name)
                self._signal(slot, sig)
            deadline = time.monotonic() + grace
            while any(s.alive for s in late) and time.monotonic() < deadline:
                self._pump(0.1)
        for slot in self.slots:
            if slot.alive:  # pragma: no cover - unkillable (D state): last, blocking reap
                log.error("%s survived SIGKILL; waiting for it", slot.label)
                self._reap(slot, block=True)


# -- the public function ----------------------------------------------------------------


def _check_number(name: str, value: Any, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if value != value or (positive and value <= 0) or value < 0:
        raise ValueError("%s must be > 0, got %r" % (name, value))
    return float(value)


def serve(
    handler: Callable[[Any], Any],
    queues: Iterable[int] = range(4),
    workers: Optional[int] = None,
    *,
    restart: bool = True,
    max_restarts: int = 5,
    timeout: Optional[float] = None,
    stop_event: Any = None,
    ready: Optional[Callable[[Dict[int, Tuple[int, ...]]], Any]] = None,
    bind_timeout: float = 10.0,
    stop_timeout: float = 5.0,
    **queue_options: Any,
) -> ServeResult:
    """Run ``handler`` over several NFQUEUE queues in forked worker processes.

    Pair it with a rule that spreads packets over the queues, e.g.
    ``iptables -A INPUT -j NFQUEUE --queue-balance 0:3 --queue-cpu-fanout``.
    The queues are dealt round-robin to ``workers`` processes (queue ``k`` of
    the list goes to worker ``k % workers``); each worker binds its queues
    with ``queue_options`` and calls ``handler(pkt)`` for every packet, with
    the same meaning of the return value as :meth:`NfQueue.run`.  Workers
    are forked, so the handler may be any callable, closures included; what it
    changes lives in its worker's memory.

    Blocks until stopped: by SIGINT or SIGTERM (when called from the main
    thread; the previous handlers are restored afterwards), by
    ``stop_event.set()``, or after ``timeout`` seconds.  Every worker then
    closes its queues (packets still waiting get ``default_verdict``) and
    sends its counts; all are reaped before this returns.

    Args:
        handler: called with each :class:`~nfbind.Packet`, in a worker.
        queues: the queue numbers (0..65535, no duplicates), e.g. ``range(4)``
            for ``--queue-balance 0:3``.
        workers: how many processes (1..number of queues); default
            ``min(len(queues), os.cpu_count())``.
        restart: restart a worker that dies (killed, crashed, its socket
            failed), at most ``max_restarts`` times per worker, waiting 0.1 s,
            0.2 s, 0.4 s ... (up to 2 s) first.  False: a dead worker stops
            everything and :class:`WorkerError` is raised.  Either way a
            worker that cannot bind its queues at start-up makes serve() raise.
        max_restarts: restarts allowed per worker before giving up.
        timeout: stop after this many seconds of serving (None: no limit).
        stop_event: an object with ``is_set()`` (e.g. :class:`threading.Event`),
            checked four times a second: setting it stops serve().
        ready: called once, in the calling process, when every worker has
            bound its queues, with ``{pid: (queue, ...)}`` of the workers.
        bind_timeout: seconds every worker gets to bind its queues.
        stop_timeout: seconds the workers get to stop before SIGTERM, then
            SIGKILL.
        **queue_options: passed to every :class:`~nfbind.NfQueue`:
            ``copy_mode``, ``copy_range``, ``max_len``, ``fail_open``,
            ``conntrack``, ``gso``, ``uid_gid``, ``secctx``, ``rcvbuf``,
            ``netns``, ``on_error``, ``default_verdict``, ``on_overrun``,
            ``no_enobufs``.

    Returns:
        A :class:`ServeResult`: a :class:`WorkerStats` per worker (queues,
        pid, packets, handler errors, overruns, restarts, first and last
        packet times) and totals.

    Raises:
        ValueError, TypeError: a bad argument, before any process starts.
        QueueBusy, PermissionDenied, NetlinkError, FileNotFoundError...: a
            worker could not bind its queues (same class as NfQueue raises;
            the message names the worker and its queues).
        WorkerError: a worker died and was not restarted, or a worker did
            not bind within ``bind_timeout``.
    """
    if not callable(handler):
        raise TypeError("handler must be callable, not %s" % type(handler).__name__)
    if isinstance(queues, (str, bytes)) or not isinstance(queues, Iterable):
        raise TypeError("queues must be an iterable of queue numbers, not %s"
                        % type(queues).__name__)
    qlist = [check_int("queues", q, 0, 0xFFFF) for q in queues]
    if not qlist:
        raise ValueError("queues must name at least one queue")
    dup = sorted({q for q in qlist if qlist.count(q) > 1})
    if dup:
        raise ValueError("queues must not repeat a queue number: %s"
                         % ", ".join(map(str, dup)))
    if workers is None:
        workers = min(len(qlist), os.cpu_count() or 1)
    workers = check_int("workers", workers, 1, 1 << 16)
    if workers > len(qlist):
        raise ValueError("workers must be 1..%d (the number of queues), got %d"
                         % (len(qlist), workers))
    if not isinstance(restart, bool):
        raise TypeError("restart must be True or False, not %r" % (restart,))
    max_restarts = check_int("max_restarts", max_restarts, 0, 1 << 20)
    if timeout is not None:
        timeout = _check_number("timeout", timeout)
    bind_timeout = _check_number("bind_timeout", bind_timeout)
    stop_timeout = _check_number("stop_timeout", stop_timeout)
    if stop_event is not None and not callable(getattr(stop_event, "is_set", None)):
        raise TypeError("stop_event must have an is_set() method (e.g. threading.Event)")
    if ready is not None and not callable(ready):
        raise TypeError("ready must be callable, not %s" % type(ready).__name__)
    unknown = sorted(set(queue_options) - set(QUEUE_OPTIONS))
    if unknown:
        raise TypeError("serve() got unknown queue option%s %s (known: %s)" % (
            "" if len(unknown) == 1 else "s", ", ".join(map(repr, unknown)),
            ", ".join(QUEUE_OPTIONS)))
    try:  # the options' values, as NfQueue checks them (netns included)
        _CheckedQueue(qlist[0], **queue_options)
    except _OptionsChecked:
        pass
    assignment = [tuple(qlist[i::workers]) for i in range(workers)]
    server = _Server(handler, assignment, dict(queue_options), restart=restart,
                     max_restarts=max_restarts, timeout=timeout, stop_event=stop_event,
                     ready=ready, bind_timeout=bind_timeout, stop_timeout=stop_timeout)
    return server.run()

