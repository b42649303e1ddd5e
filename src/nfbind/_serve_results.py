# SPDX-License-Identifier: GPL-2.0-or-later
"""What :func:`nfbind.serve` reports: :class:`ServeResult`, one
:class:`WorkerStats` per worker, and :class:`WorkerError`.

Public through :mod:`nfbind.serve`, which re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import NfbindError

__all__ = ["ServeResult", "WorkerStats", "WorkerError"]


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
