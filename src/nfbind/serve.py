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
* a handler that raises, whatever the exception's class (SystemExit and
  KeyboardInterrupt included: in a worker they can only come from the
  handler): its packet gets ``on_error``, the worker logs it on the
  ``nfbind.serve`` logger and keeps serving; the count is in the result.
* a worker that dies: restarted (``restart=True``, at most ``max_restarts``
  times per worker), or everything stops and :class:`WorkerError` is raised
  (``restart=False``, or the restarts are used up).

This module checks the arguments; the supervisor is in ``_serve_supervisor.py``,
a worker's body in ``_serve_worker.py``, the result types in
``_serve_results.py``.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ._channel import ON_OVERRUN
from ._netlink import check_choice, check_int
from ._serve_results import ServeResult, WorkerError, WorkerStats
from ._serve_supervisor import Server
from .queue import NfQueue

__all__ = ["serve", "ServeResult", "WorkerStats", "WorkerError"]

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
    (one socket for all of them, ``NfQueue(its_queues)``) with
    ``queue_options`` and calls ``handler(pkt)`` for every packet, with
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
    server = Server(handler, assignment, dict(queue_options), restart=restart,
                    max_restarts=max_restarts, timeout=timeout, stop_event=stop_event,
                    ready=ready, bind_timeout=bind_timeout, stop_timeout=stop_timeout)
    return server.run()
