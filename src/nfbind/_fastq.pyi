# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind._fastq: the packet channels' dispatch loop, compiled (cext/fastq.c)."""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

class QueueLoop:
    """NfQueue's dispatch loop for these classes and constants (see run())."""

    def __init__(self, packet: type, hot_packet: type, flight: type, verdict: type,
                 plain: Iterable[int], nf: int, f_id: int, f_queue: int, deferred: int,
                 done: int) -> None: ...

    def run(self, handler: Callable[[Any], Any], fl: Any, pending: Dict[int, Any], floor: int,
            multi: bool, hot: Optional[bytes], /) -> Tuple[int, Any, Any,
                                                           Optional[Exception]]:
        """Hand the packets of ``fl`` from ``fl.pos`` on to ``handler``;
        returns (handed, packet, result, exc): packet None when the batch is
        done, else the packet whose handler returned ``result`` (no plain
        verdict, or one for a packet that has its verdict) or raised ``exc``."""
        ...

class LogLoop:
    """NfLog's dispatch loop for these classes and constants (see run())."""

    def __init__(self, packet: type, hot_packet: type, nf: int) -> None: ...

    def run(self, handler: Callable[[Any], Any], b: Any, n: int, hot: Optional[bytes],
            names: List[str], prefix_number: Callable[[Any, int, int], str], /
            ) -> Tuple[int, int, Optional[Exception], Optional[BaseException]]:
        """Hand the ``n`` packets of ``b`` to ``handler``; returns (o, errors,
        error, stop): the record offset of the first packet not handed out,
        the handlers that raised an Exception and the first of those, and
        the exception that ended the loop (None: none did)."""
        ...
