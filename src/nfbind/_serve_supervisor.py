# SPDX-License-Identifier: GPL-2.0-or-later
"""The supervisor of :func:`nfbind.serve`: it forks the workers, watches
their pipes and exits, restarts or gives up on the dead ones, turns SIGINT
and SIGTERM into a stop, and stops and reaps every worker at the end.

Every wait is bounded: start-up by ``bind_timeout``, shutdown by
``stop_timeout`` and then SIGTERM and SIGKILL.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._serve_results import ServeResult, WorkerError, WorkerStats
from ._serve_worker import EXIT_CRASH, worker_main
from ._wake import WakePipe
from .errors import NetlinkError, NfbindError

log = logging.getLogger("nfbind.serve")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        self.fail: Optional[Tuple[int, Optional[BaseException], str, str]] = None
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


class Server:
    """One run of :func:`nfbind.serve`: its workers and how they are kept."""

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
                code = EXIT_CRASH
                try:
                    reader.close()
                    self._close_parent_fds_in_child()
                    code = worker_main(slot.index, slot.queues, self.handler, self.options,
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
