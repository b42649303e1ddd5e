# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's counters: :class:`QueueStats` (``q.stats``), and with several
queues on one socket, :class:`QueueCounters` for each of them
(``q.stats.per_queue``)."""
from __future__ import annotations

from typing import Any, Dict

from ._channel import ChannelStats, c_counter
from ._queue_verdicts import F_QUEUE, V_DEFERRED
from .enums import Verdict
from .packet import NF

__all__ = ["QueueStats", "QueueCounters"]


class QueueCounters:
    """The counters of one queue of an NfQueue bound to several
    (``q.stats.per_queue[n]``): a snapshot taken when read."""

    __slots__ = ("queue", "packets", "pending", "timeouts")

    def __init__(self, queue: int, packets: int, pending: int, timeouts: int) -> None:
        #: the queue number
        self.queue = queue
        #: packets received from this queue
        self.packets = packets
        #: of those, packets still waiting for their verdict
        self.pending = pending
        #: of those, packets that got ``on_timeout`` at their deadline
        self.timeouts = timeouts

    def as_dict(self) -> Dict[str, int]:
        return {"packets": self.packets, "pending": self.pending, "timeouts": self.timeouts}

    def __repr__(self) -> str:
        return "QueueCounters(queue=%d, packets=%d, pending=%d, timeouts=%d)" % (
            self.queue, self.packets, self.pending, self.timeouts)


class QueueStats(ChannelStats):
    """Counters of one NfQueue (read live), over all its queues."""

    __slots__ = ()
    #: the NfQueue (typed loosely: nfbind.queue imports this module)
    _ch: Any
    _NAMES = ("packets", "overruns", "verdict_errors", "handler_errors", "timeouts",
              "batch_verdicts", "recv_calls", "send_calls", "pending", "malformed")

    _c_packets = c_counter("packets", "Packets received (each once).", rx=False)
    verdict_errors = c_counter(
        "async_errors", "Verdicts the kernel refused (e.g. for an id it no longer holds).",
        key="verdict_errors")
    batch_verdicts = c_counter(
        "batch_verdicts", "Kernel batch verdicts sent for runs of equal verdicts.", rx=False)
    send_calls = c_counter("send_calls", "Send syscalls made for verdicts and configuration.")
    malformed = c_counter(
        "malformed", "Datagrams with a malformed message, skipped (the packets of the rest "
        "of their receive batch are handed out as usual).")

    @property
    def packets(self) -> int:
        """Packets received (each once)."""
        ch = self._ch
        if ch._multi:
            return sum(ch._qpackets.values())
        return int(self._c_packets)

    @property
    def timeouts(self) -> int:
        """Packets that got ``on_timeout`` at their deadline (``verdict_timeout``)."""
        return int(self._ch._timeouts)

    @property
    def pending(self) -> int:
        """Packets received that still wait for their verdict (handed out
        without one, or not handed to the handler yet)."""
        return int(self._ch._waiting())

    @property
    def verdicts(self) -> Dict[Verdict, int]:
        """Verdicts given so far, by verdict (every :class:`Verdict`, zeros
        included; ``QUEUE`` whatever the target queue): returned by the
        handler, given by the packet's methods, by :meth:`NfQueue.verdict_batch`
        and by ``close()``.  A packet the handler failed on counts under
        ``on_error``'s verdict."""
        ch = self._ch
        c = ch._c
        out = {}
        for v in Verdict:
            i = int(v)
            n = ch._final.get("by_verdict_%d" % i, 0) if c is None else int(c.by_verdict[i])
            out[v] = n + ch._vc_sent[i]
        return out

    @property
    def per_queue(self) -> Dict[int, QueueCounters]:
        """Each queue's packets, pending and timeouts, by queue number (for
        an NfQueue of one queue, that queue's are the totals)."""
        ch = self._ch
        if not ch._multi:
            n = ch.queues[0]
            return {n: QueueCounters(n, self.packets, self.pending, self.timeouts)}
        waiting: Dict[int, int] = dict.fromkeys(ch.queues, 0)
        for p in list(ch._pending.values()):
            if p._b.vbuf[p._o // NF] == V_DEFERRED:
                q = p._b.recs[p._o + F_QUEUE]
                waiting[q] = waiting.get(q, 0) + 1
        fl: Any = ch._flight
        if fl is not None:
            for i in range(fl.pos, fl.n):
                if fl.vbuf[i] == V_DEFERRED:
                    q = fl.recs[i * NF + F_QUEUE]
                    waiting[q] = waiting.get(q, 0) + 1
        return {n: QueueCounters(n, ch._qpackets.get(n, 0), waiting.get(n, 0),
                                 ch._qtimeouts.get(n, 0)) for n in ch.queues}
