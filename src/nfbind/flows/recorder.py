# SPDX-License-Identifier: GPL-2.0-or-later
""":class:`FlowRecorder`: conntrack DESTROY events in, one
:class:`~nfbind.flows.FlowRecord` per ended flow out, to any number of
outputs, one batch at a time."""
from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from .. import netns as _netns
from .._netlink import check_int
from .._wake import WakePipe
from ..conntrack.events import EventFilter, EventStream
from ..conntrack.model import Event
from ..enums import CtEvent
from .accounting import enable_accounting as _enable_accounting
from .accounting import warn_if_off
from .outputs import FlowOutput
from .record import FlowRecord

__all__ = ["FlowRecorder", "RecorderStats"]

#: outputs' tick() is called at least this often (s), also while idle
TICK = 1.0


def _reliable_supported() -> bool:
    """Whether this nfbind's event streams have conntrack's reliable mode."""
    try:
        return "reliable" in inspect.signature(EventStream.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


class RecorderStats:
    """What a :class:`FlowRecorder` did: ``flows`` (records written to every
    output), ``batches``, ``events`` (DESTROY events received), ``overruns``
    (times the kernel reported events lost to a full socket buffer: each
    stands for at least one flow without a record), ``reliable`` (whether
    the kernel was asked not to drop DESTROY events)."""

    __slots__ = ("flows", "batches", "events", "overruns", "reliable")

    def __init__(self, flows: int, batches: int, events: int, overruns: int,
                 reliable: bool) -> None:
        self.flows = flows
        self.batches = batches
        self.events = events
        self.overruns = overruns
        self.reliable = reliable

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return "RecorderStats(%s)" % ", ".join("%s=%r" % kv for kv in self.as_dict().items())


class FlowRecorder:
    """Record every flow of a namespace's conntrack table as it ends.

    ::

        from nfbind.flows import FlowRecorder, JsonLines, SQLite, IpfixExporter

        outputs = [JsonLines("flows.jsonl"), SQLite("flows.db"),
                   IpfixExporter("127.0.0.1:4739")]
        with FlowRecorder(outputs) as rec:
            rec.run()              # until rec.stop(), a signal handler's, or Ctrl-C

    ``outputs`` are :class:`~nfbind.flows.FlowOutput` objects; each gets
    every batch of records (what one read of the event socket brought) and
    is closed with the recorder.  ``filter`` is an
    :class:`~nfbind.conntrack.EventFilter` (which flows to record);
    ``netns`` the namespace whose table is watched; ``rcvbuf`` the event
    socket's receive buffer: a burst of ended flows beyond it is lost unless
    the kernel delivers DESTROY events reliably (``stats.overruns`` counts
    such losses, and a warning names the fix).

    At start the namespace's ``nf_conntrack_acct`` and
    ``nf_conntrack_timestamp`` are read: one that is off gives an
    :class:`~nfbind.flows.AccountingWarning` naming the sysctl (records then
    lack counts or times); ``enable_accounting=True`` switches both on first.

    Raises ValueError/TypeError, PermissionDenied (needs CAP_NET_ADMIN),
    FileNotFoundError (netns, or conntrack not loaded there), NetlinkError.
    """

    def __init__(self, outputs: Sequence[FlowOutput], *, filter: Optional[EventFilter] = None,
                 netns: _netns.NetNS = None, rcvbuf: int = 16 << 20,
                 enable_accounting: bool = False) -> None:
        self._stream: Optional[EventStream] = None
        self.outputs = list(outputs)
        for o in self.outputs:
            if not callable(getattr(o, "write", None)):
                raise TypeError("every output must be a FlowOutput (with write()), not %s"
                                % type(o).__name__)
        rcvbuf = check_int("rcvbuf", rcvbuf, 4096, 1 << 30)
        if not isinstance(enable_accounting, bool):
            raise TypeError("enable_accounting must be True or False")
        if enable_accounting:
            _enable_accounting(netns)
        #: the namespace's accounting sysctls as they were at start
        self.accounting = warn_if_off(netns)
        kw: Dict[str, Any] = {}
        self._reliable = _reliable_supported()
        if self._reliable:
            kw["reliable"] = True
        self._stream = EventStream(CtEvent.DESTROY, filter, netns=netns, rcvbuf=rcvbuf, **kw)
        self._wake = WakePipe()
        self._stop = False
        self._lock = threading.Lock()
        self._flows = 0
        self._batches = 0
        self._events = 0
        self._overruns_at_close = 0

    @property
    def stats(self) -> RecorderStats:
        """Live counters (see :class:`RecorderStats`)."""
        s = self._stream
        return RecorderStats(self._flows, self._batches, self._events,
                             self._overruns_at_close if s is None else s.stats.overruns,
                             self._reliable)

    def fileno(self) -> int:
        """The event socket, for your own loop (then call :meth:`step`)."""
        if self._stream is None:
            raise ValueError("the FlowRecorder is closed")
        return self._stream.fileno()

    def step(self, limit: Optional[int] = None) -> int:
        """Read what is waiting now, write it as one batch; never blocks.
        Returns the records written (at most ``limit``)."""
        stream = self._stream
        if stream is None:
            raise ValueError("the FlowRecorder is closed")
        batch: List[FlowRecord] = []
        make = FlowRecord.from_flow
        destroy = CtEvent.DESTROY

        def handle(ev: Event) -> None:
            self._events += 1
            if ev.type == destroy:
                batch.append(make(ev.flow))

        stream.drain(handle)
        if limit is not None:
            del batch[limit:]  # run(count=N) ends with the N-th record
        if batch:
            for o in self.outputs:
                o.write(batch)
            self._flows += len(batch)
            self._batches += 1
        return len(batch)

    def tick(self, now: Optional[float] = None) -> None:
        """Give each output its periodic turn (IPFIX template refresh)."""
        now = time.monotonic() if now is None else now
        for o in self.outputs:
            o.tick(now)

    def run(self, *, count: Optional[int] = None, timeout: Optional[float] = None) -> int:
        """Record flows until :meth:`stop` (any thread, or a signal handler),
        Ctrl-C, ``count`` records, or ``timeout`` seconds without one.
        Returns the number of records written.

        Raises ValueError (closed), OSError from an output, NetlinkError.
        """
        stream = self._stream
        if stream is None:
            raise ValueError("the FlowRecorder is closed")
        if count is not None:
            count = check_int("count", count, 1, 1 << 62)
        done = 0
        waiter = self._wake.waiter([stream.fileno()])
        idle_since = next_tick = time.monotonic()
        try:
            while not self._stop:
                n = self.step(None if count is None else count - done)
                now = time.monotonic()
                if n:
                    done += n
                    idle_since = now
                    if count is not None and done >= count:
                        break
                if now >= next_tick:
                    self.tick(now)
                    next_tick = now + TICK
                if n:
                    continue
                wait = next_tick - now
                if timeout is not None:
                    left = timeout - (now - idle_since)
                    if left <= 0:
                        break
                    wait = min(wait, left)
                waiter.wait(max(wait, 0.0))
        except KeyboardInterrupt:
            pass
        finally:
            self._stop = False
            self._wake.clear()
        return done

    def stop(self) -> None:
        """Make :meth:`run` return soon; safe from any thread or a signal handler."""
        self._stop = True
        self._wake.wake()

    def close(self) -> None:
        """Close the event socket and every output; safe to call twice."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._overruns_at_close = stream.stats.overruns
        try:
            stream.close()
        finally:
            self._wake.close()
            for o in self.outputs:
                o.close()

    def __enter__(self) -> "FlowRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
