# SPDX-License-Identifier: GPL-2.0-or-later
"""One record per ended flow: :class:`FlowRecord`, made from the
:class:`~nfbind.conntrack.Flow` of a conntrack DESTROY event.

The counts need ``net.netfilter.nf_conntrack_acct=1`` and the times
``net.netfilter.nf_conntrack_timestamp=1`` in the flow's namespace when the
flow was created; without them those fields are None (see
:mod:`nfbind.flows.accounting`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional
from typing import Tuple as _Tuple

from ..conntrack.model import Flow, Tuple, record
from ..enums import Family

__all__ = ["FlowRecord", "COLUMNS"]

#: the record's fields in the order of :meth:`FlowRecord.as_row` (and of the
#: SQLite table's columns)
COLUMNS = (
    "ct_id", "family", "proto", "orig_src", "orig_dst", "orig_sport", "orig_dport",
    "reply_src", "reply_dst", "reply_sport", "reply_dport", "icmp_type", "icmp_code",
    "icmp_id", "zone", "mark", "start", "end", "duration", "orig_packets", "orig_bytes",
    "reply_packets", "reply_bytes",
)


def _proto_name(proto: int) -> str:
    return str(getattr(proto, "name", proto)).lower()


@record
class FlowRecord:
    """What one connection did, from its first packet to its end.

    ``orig`` is the tuple of the first packet's direction, ``reply`` that of
    the answers (it differs from ``orig`` reversed when NAT rewrote the
    flow).  ``start`` and ``end`` are seconds since the epoch (the kernel's
    clock, ``nf_conntrack_timestamp``), ``duration`` their difference;
    ``orig_packets``/``orig_bytes`` count what went in the original
    direction, ``reply_packets``/``reply_bytes`` the answers: bytes of whole
    IP packets, headers included (``nf_conntrack_acct``).  Fields the kernel
    did not send are None.  ``ct_id`` is the kernel's conntrack id.
    ``start_ns``/``end_ns`` keep the kernel's nanoseconds.
    """

    orig: Tuple
    reply: Optional[Tuple]
    zone: int
    mark: int
    ct_id: Optional[int]
    start_ns: Optional[int]
    end_ns: Optional[int]
    orig_packets: Optional[int]
    orig_bytes: Optional[int]
    reply_packets: Optional[int]
    reply_bytes: Optional[int]

    @classmethod
    def from_flow(cls, flow: Flow) -> "FlowRecord":
        """The record of ``flow``, as a DESTROY event (or a dump) carries it."""
        c = flow.counters
        ts = flow.timestamps
        if c is None:
            op = ob = rp = rb = None
        else:
            op, ob, rp, rb = c.orig_packets, c.orig_bytes, c.reply_packets, c.reply_bytes
        return cls(flow.orig, flow.reply, flow.zone, flow.mark, flow.id,
                   None if ts is None else ts.start_ns, None if ts is None else ts.stop_ns,
                   op, ob, rp, rb)

    @property
    def family(self) -> Family:
        """Family.IPV4 or Family.IPV6."""
        return self.orig.family

    @property
    def proto(self) -> int:
        """The layer-4 protocol (an :class:`~nfbind.enums.IPProto` where it has a name)."""
        return self.orig.proto

    @property
    def start(self) -> Optional[float]:
        """When the flow's first packet was seen, in seconds since the epoch."""
        return None if self.start_ns is None else self.start_ns / 1e9

    @property
    def end(self) -> Optional[float]:
        """When the kernel destroyed the flow, in seconds since the epoch."""
        return None if self.end_ns is None else self.end_ns / 1e9

    @property
    def duration(self) -> Optional[float]:
        """Seconds from start to end (None without both)."""
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e9

    def as_dict(self) -> Dict[str, Any]:
        """The record as JSON-ready values (one line of ``--json``)::

            {"ct_id": 1234, "family": "ipv4", "proto": "udp",
             "orig": {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp",
                      "sport": 40000, "dport": 53},
             "reply": {...}, "zone": 0, "mark": 0,
             "start": 1700000000.25, "end": 1700000030.5, "duration": 30.25,
             "orig_packets": 3, "orig_bytes": 96, "reply_packets": 3,
             "reply_bytes": 180}

        ``orig``/``reply`` are :meth:`Tuple.as_dict`; absent values are null.
        """
        return {
            "ct_id": self.ct_id,
            "family": "ipv4" if self.orig.src.version == 4 else "ipv6",
            "proto": _proto_name(self.orig.proto),
            "orig": self.orig.as_dict(),
            "reply": None if self.reply is None else self.reply.as_dict(),
            "zone": self.zone,
            "mark": self.mark,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "orig_packets": self.orig_packets,
            "orig_bytes": self.orig_bytes,
            "reply_packets": self.reply_packets,
            "reply_bytes": self.reply_bytes,
        }

    def as_row(self) -> _Tuple[Any, ...]:
        """The values of :data:`COLUMNS`, in that order: addresses as text,
        ``proto`` as its lower-case name, times in seconds (REAL)."""
        o, r = self.orig, self.reply
        return (
            self.ct_id, "ipv4" if o.src.version == 4 else "ipv6", _proto_name(o.proto),
            str(o.src), str(o.dst), o.sport, o.dport,
            None if r is None else str(r.src), None if r is None else str(r.dst),
            None if r is None else r.sport, None if r is None else r.dport,
            o.icmp_type, o.icmp_code, o.icmp_id, self.zone, self.mark,
            self.start, self.end, self.duration,
            self.orig_packets, self.orig_bytes, self.reply_packets, self.reply_bytes,
        )

    def __str__(self) -> str:
        def count(p: Optional[int], b: Optional[int]) -> str:
            return "? pkts ? B" if p is None or b is None else "%d pkts %d B" % (p, b)

        text = "%s  orig %s  reply %s" % (self.orig, count(self.orig_packets, self.orig_bytes),
                                          count(self.reply_packets, self.reply_bytes))
        d = self.duration
        if d is not None:
            text += "  %.3f s" % d
        if self.zone:
            text += "  zone=%d" % self.zone
        if self.mark:
            text += "  mark=%d" % self.mark
        return text
