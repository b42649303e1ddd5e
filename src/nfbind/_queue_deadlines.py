# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's deadlines (``verdict_timeout``, ``on_timeout``) and its
``on_error`` callable.

Every packet gets its deadline ``verdict_timeout`` seconds after the receive
that read it.  Deadlines cost nothing while verdicts come in time: a batch
whose packets all got their verdict from the handler is never looked at
again.  A batch that still has packets waiting when it is handed out is put
on a FIFO with its deadline (one timeout for every packet, so the FIFO is in
deadline order); once the deadline passes, each of its packets still
waiting gets ``on_timeout``.  The receive loop does that (``_due()`` runs
before every receive, and the loops wait no longer than ``next_deadline()``).

A deadline and a deferred verdict from another thread race safely: both
take the packet's verdict slot with one atomic C step
(``nfb_q_send_timeout_at`` / ``nfb_q_send_verdict_at``), under the send
lock; whichever comes second sends nothing, and the slot says why
(NFB_V_TIMEOUT: the verdict came too late).
"""
from __future__ import annotations

import errno
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional, Tuple, Union

from ._channel import P
from ._nfqueue import lib
from ._queue_verdicts import F_QUEUE, PLAIN, V_DEFERRED, Flight, QueueVerdicts
from .enums import Verdict
from .errors import error_from_errno
from .packet import NF

if TYPE_CHECKING:  # pragma: no cover
    from ._queue_verdicts import QueuedPacket

_VERDICT_MASK = lib.NF_VERDICT_MASK
#: the longest verdict_timeout: beyond a day a deadline is no deadline
MAX_TIMEOUT = 86400.0

OnTimeout = Union[Verdict, int, Callable[[Any], Any]]
OnError = Union[Verdict, int, Callable[[Any, BaseException], Any]]


def check_verdict_timeout(value: Any) -> Optional[float]:
    """``verdict_timeout``: None, or seconds in (0, MAX_TIMEOUT]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("verdict_timeout must be a number of seconds or None, not %s"
                        % type(value).__name__)
    try:
        t = float(value)
    except OverflowError:
        t = math.inf
    if not 0 < t <= MAX_TIMEOUT:    # also NaN
        raise ValueError("verdict_timeout must be seconds > 0 and at most %d (a day), or "
                         "None for no deadline; got %r" % (MAX_TIMEOUT, value))
    return t


def _bad_result(r: Any) -> bool:
    """Whether ``r`` (not None), returned by a callable, is no plain verdict."""
    return (isinstance(r, bool) or not isinstance(r, int) or int(r) not in PLAIN)


class QueueDeadlines(QueueVerdicts[P]):
    """Deadlines and error callables of :class:`nfbind.NfQueue`."""

    on_error: OnError
    default_verdict: Verdict
    #: on_error's verdict, or None when on_error is a callable
    _on_error_v: Optional[int]
    _on_error_fn: Optional[Callable[[Any, BaseException], Any]]
    _verdict_timeout: Optional[float]
    _on_timeout_v: int
    _on_timeout_fn: Optional[Callable[[Any], Any]]
    #: (deadline, batch) for the batches with packets still waiting
    _dl_fifo: Deque[Tuple[float, Flight[Any]]]
    _dl_lock: threading.Lock
    _timeouts: int
    #: with several queues: timeouts by queue
    _qtimeouts: Dict[int, int]

    def _init_policies(self, on_error: Any, verdict_timeout: Any, on_timeout: Any) -> None:
        """Check and keep on_error, verdict_timeout and on_timeout."""
        if callable(on_error) and not isinstance(on_error, int):
            self._on_error_v, self._on_error_fn = None, on_error
            self.on_error = on_error
        else:
            self.on_error = self._check_callable_or_plain("on_error", on_error, "(pkt, exc)")
            self._on_error_v, self._on_error_fn = int(self.on_error), None
        self._verdict_timeout = check_verdict_timeout(verdict_timeout)
        if callable(on_timeout) and not isinstance(on_timeout, int):
            self.on_timeout: OnTimeout = on_timeout
            self._on_timeout_fn = on_timeout
            self._on_timeout_v = int(self.default_verdict)
        else:
            self.on_timeout = self._check_callable_or_plain("on_timeout", on_timeout, "(pkt)")
            self._on_timeout_fn = None
            self._on_timeout_v = int(self.on_timeout)
        self._dl_fifo = deque()
        self._dl_lock = threading.Lock()
        self._timeouts = 0
        self._qtimeouts = {}

    def _check_callable_or_plain(self, name: str, v: Any, args: str) -> Verdict:
        if v is None or isinstance(v, (str, bytes)):
            raise TypeError("%s must be a Verdict (ACCEPT, DROP, REPEAT, STOP) or a callable "
                            "%s -> Verdict, not %r" % (name, args, v))
        return self._check_plain(name, v)

    @property
    def verdict_timeout(self) -> Optional[float]:
        """Seconds a packet may wait for its verdict (None: no deadline)."""
        return self._verdict_timeout

    # -- on_error ------------------------------------------------------------------------

    def _give(self, p: QueuedPacket, v: int) -> None:
        """``v`` for ``p`` unless it has a verdict (inside the handler it
        travels with the batch, else it is sent now)."""
        if p._b.vbuf[p._o // NF] == V_DEFERRED:
            self._verdict(p, v, None, None, None)

    def _handler_failed(self, p: QueuedPacket, exc: BaseException) -> Optional[BaseException]:
        """The handler raised ``exc`` for ``p`` (or returned no verdict): give
        on_error.  Returns the exception the loop raises (None: none)."""
        fn = self._on_error_fn
        if fn is None:
            assert self._on_error_v is not None
            self._give(p, self._on_error_v)
            return exc
        try:
            r = fn(p, exc)
        except Exception as e:
            self._give(p, int(self.default_verdict))
            return e
        if r is None:
            # as after a handler that returned None: a verdict it gave
            # stands, and a packet without one waits for it
            if p._b.vbuf[p._o // NF] == V_DEFERRED:
                self._pending[self._key(p)] = p
            return None
        if _bad_result(r):
            self._give(p, int(self.default_verdict))
            return ValueError(
                "on_error returned %r for packet %d, which is no verdict: return Verdict.ACCEPT, "
                "DROP, REPEAT or STOP, or None; the packet got default_verdict (%s)"
                % (r, p.id, Verdict(self.default_verdict).name))
        if p._b.vbuf[p._o // NF] != V_DEFERRED:
            return self._already(p)
        self._verdict(p, int(r), None, None, None)
        return None

    def _on_error_name(self) -> str:
        return ("the verdict of on_error" if self._on_error_v is None
                else "on_error (%s)" % Verdict(self._on_error_v).name)

    # -- deadlines -----------------------------------------------------------------------

    def _watch(self, fl: Flight[Any]) -> None:
        """``fl`` was handed out: keep its deadline if a packet of it waits."""
        if V_DEFERRED in fl.vbuf:
            assert self._verdict_timeout is not None
            with self._dl_lock:
                self._dl_fifo.append((fl.t + self._verdict_timeout, fl))

    def next_deadline(self) -> Optional[float]:
        """The :func:`time.monotonic` time at which the earliest deadline of
        a packet still waiting for its verdict passes, or None (no packet
        waits, or no ``verdict_timeout``).  A loop of your own waits on
        :meth:`fileno` at most until then, and calls :meth:`drain`, which
        gives ``on_timeout`` to the packets whose deadline passed."""
        fifo = self._dl_fifo
        if not fifo:
            return None
        with self._dl_lock:
            while fifo and V_DEFERRED not in fifo[0][1].vbuf:
                fifo.popleft()
            return fifo[0][0] if fifo else None

    def _next_deadline(self) -> Optional[float]:
        return self.next_deadline()

    def _due(self) -> None:
        """Before a receive: give on_timeout to the packets whose deadline
        passed (raises what an on_timeout callable raised, once every due
        packet got its verdict)."""
        fifo = self._dl_fifo
        if fifo and fifo[0][0] <= time.monotonic():
            self._expire()

    def _expire(self) -> None:
        error: Optional[BaseException] = None
        with self._lock:
            now = time.monotonic()
            fifo = self._dl_fifo
            while not self._closed:
                with self._dl_lock:
                    if not fifo or fifo[0][0] > now:
                        break
                    fl = fifo.popleft()[1]
                vbuf = fl.vbuf
                for i in range(fl.n):
                    if vbuf[i] == V_DEFERRED:
                        e = self._time_out(fl, i)
                        if error is None:
                            error = e
        if error is not None:
            raise error

    def _packet_at(self, fl: Flight[Any], i: int) -> QueuedPacket:  # pragma: no cover
        raise NotImplementedError

    def _time_out(self, fl: Flight[Any], i: int) -> Optional[BaseException]:
        """Give packet ``i`` of ``fl`` on_timeout, unless a verdict beats it."""
        p = self._packet_at(fl, i)
        v = self._on_timeout_v
        error: Optional[BaseException] = None
        fn = self._on_timeout_fn
        if fn is not None:
            try:
                r = fn(p)
            except Exception as e:
                r, error = None, e
            if r is not None and _bad_result(r):
                error = ValueError(
                    "on_timeout returned %r for packet %d, which is no verdict: return "
                    "Verdict.ACCEPT, DROP, REPEAT or STOP; the packet got default_verdict (%s)"
                    % (r, p.id, Verdict(self.default_verdict).name))
            elif r is not None:
                v = int(r)
            elif error is None and fl.vbuf[i] != V_DEFERRED:
                # the callable gave the verdict itself
                self._count_timeout(fl, i)
                self._pending.pop(self._key(p), None)
                return None
        with self._send_lock:
            if self._closed:
                return error
            rc = lib.nfb_q_send_timeout_at(self._fd, self._queue_of(fl, i), fl.vptr + i,
                                           p.id, v)
            if rc >= 0:
                self._count_timeout(fl, i)
                self._vc_sent[v & _VERDICT_MASK] += 1
        if rc == -errno.EALREADY:       # a verdict came first: no timeout
            return error
        self._pending.pop(self._key(p), None)
        if rc < 0 and error is None:
            error = error_from_errno(-rc, "sending the on_timeout verdict of packet %d" % p.id)
        return error

    def _queue_of(self, fl: Flight[Any], i: int) -> int:
        return fl.recs[i * NF + F_QUEUE]

    def _count_timeout(self, fl: Flight[Any], i: int) -> None:
        self._timeouts += 1
        if self._multi:
            q = self._queue_of(fl, i)
            self._qtimeouts[q] = self._qtimeouts.get(q, 0) + 1
