# SPDX-License-Identifier: GPL-2.0-or-later
"""The body of one :func:`nfbind.serve` worker process.

A worker binds its queues, tells the supervisor (``("bound", pid)`` on its
pipe, or ``("fail", queue, exception)``), serves them until SIGTERM or until
the supervisor closes the stop pipe, closes them (waiting packets get the
default verdict) and sends its counts (``("stats", {...})``, after
``("fatal", text)`` when a queue itself failed).  Its return value is the
process's exit code.

Whatever the handler raises is the handler's error, SystemExit and
KeyboardInterrupt included: a worker ignores SIGINT and turns SIGTERM into
a flag, so neither can come from anywhere else.  The handler runs wrapped:
an exception outside ``Exception`` comes out as :class:`HandlerExit`, which
NfQueue treats as any handler error (``on_error`` for the packet, the rest
of the batch handled) and the worker logs, counts and serves on.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._wake import WakePipe
from .errors import Overrun
from .queue import NfQueue

log = logging.getLogger("nfbind.serve")

#: handler errors a worker logs one by one; after that, one line per 1000
_LOG_FIRST = 10

#: worker exit codes: done, could not bind, a queue failed, died of an exception
EXIT_OK, EXIT_BIND, EXIT_FATAL, EXIT_CRASH = 0, 1, 2, 70


class HandlerExit(Exception):
    """The handler raised an exception outside ``Exception`` (SystemExit,
    KeyboardInterrupt, ...): that exception is ``__cause__``."""


def _guarded(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``handler``, raising HandlerExit instead of an exception outside
    ``Exception``, so that it cannot end the worker."""
    def call(pkt: Any) -> Any:
        try:
            return handler(pkt)
        except Exception:
            raise
        except BaseException as e:
            raise HandlerExit("%s: %s" % (type(e).__name__, e)) from e
    return call


def _shown(e: BaseException) -> BaseException:
    """The exception the handler raised (unwrapping HandlerExit)."""
    if isinstance(e, HandlerExit) and e.__cause__ is not None:
        return e.__cause__
    return e


def _send(conn: Connection, msg: Tuple[object, ...]) -> None:
    try:
        conn.send(msg)
    except Exception:  # an unpicklable exception object: send its text
        if msg[0] == "fail":
            conn.send(("fail", msg[1], None, type(msg[2]).__name__, str(msg[2])))
        else:
            raise


def _failed_queue(e: BaseException, queues: Tuple[int, ...]) -> int:
    """The queue a bind error names (its message says "... queue N")."""
    text = str(e)
    for num in queues:
        if "queue %d" % num in text:
            return num
    return queues[0]


def worker_main(index: int, queues: Tuple[int, ...], handler: Callable[[Any], Any],
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

    # one socket bound to all of this worker's queues
    try:
        qs: List[Any] = [NfQueue(queues[0] if len(queues) == 1 else queues, **options)]
    except Exception as e:
        _send(conn, ("fail", _failed_queue(e, queues), e))
        return EXIT_BIND
    try:
        conn.send(("bound", os.getpid()))
    except OSError:  # the parent is gone
        stopping = True

    name = "worker %d" % index
    qname = ",".join(map(str, queues))
    handler = _guarded(handler)
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
                    log.warning("%s (queue %s): %s", name, qname, e)
                    continue
                except Exception as e:
                    now = q.stats.handler_errors
                    if now == before:  # not the handler's: the queue itself failed
                        fatal = "%s (queue %s): %s: %s" % (name, qname,
                                                          type(e).__name__, e)
                        stopping = True
                        break
                    prev, errors = errors, errors + now - before
                    if prev < _LOG_FIRST or prev // 1000 != errors // 1000:
                        shown = _shown(e)
                        log.error("%s (queue %s): the handler raised %s: %s; the packet "
                                  "got on_error (%d handler error%s so far in this worker)",
                                  name, qname, type(shown).__name__, shown, errors,
                                  "" if errors == 1 else "s",
                                  exc_info=shown if not prev else None)
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
                log.warning("%s: closing queue %s: %s", name, qname, e)
        wake.close()
    try:
        if fatal is not None:
            log.error("%s", fatal)
            conn.send(("fatal", fatal))
        conn.send(("stats", {
            "packets": sum(q.stats.packets for q in qs),
            "handler_errors": sum(q.stats.handler_errors for q in qs),
            "overruns": sum(q.stats.overruns for q in qs),
            "per_queue": {n: c.packets for q in qs for n, c in q.stats.per_queue.items()},
            "first": first,
            "last": last,
        }))
    except OSError:  # the parent is gone: nobody to report to
        pass
    return EXIT_FATAL if fatal is not None else EXIT_OK
