# SPDX-License-Identifier: GPL-2.0-or-later
"""The connection tracking table: list, watch, create, update and delete flows.

A new network namespace tracks connections only once a rule uses conntrack,
e.g. ``iptables -A INPUT -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT``::

    from nfbind import Conntrack, CtEvent

    with Conntrack() as ct:
        for flow in ct.dump(family=socket.AF_INET, mark=0x10, mark_mask=0xF0):
            print(flow.proto.name, flow.orig.src, flow.orig.dport, flow.state)
        ct.update(flow, mark=7, labels_add={3})
        for event in ct.events(CtEvent.NEW | CtEvent.DESTROY):
            print(event.type.name, event.flow)

Where filtering happens
-----------------------
In the kernel:

* ``dump(family=)``: the nfgenmsg family (NFCT_FILTER_DUMP_L3NUM);
* ``dump(mark=, mark_mask=)``: CTA_MARK/CTA_MARK_MASK (NFCT_FILTER_DUMP_MARK);
* ``dump(status=, status_mask=)``: CTA_STATUS/CTA_STATUS_MASK
  (NFCT_FILTER_DUMP_STATUS);
* ``dump(src=, dst=, proto=, sport=, dport=, reply_*=)`` with IPv4
  addresses, and TCP/UDP ports: CTA_FILTER with the tuples it names (Linux
  5.8; libnetfilter_conntrack 1.0.9 cannot send it, nfbind builds it);
* ``dump(zone=)``: CTA_ZONE (Linux 6.8);
* ``flush()`` with the same filters, when the kernel applies all of them;
* ``EventFilter`` protocol, addresses and mark: a BPF program built by
  ``nfct_filter_*`` (addresses only where that program is right: see
  :class:`EventFilter`).

Which of CTA_FILTER and CTA_ZONE the kernel honours is probed once per
process.  In userspace:

* networks (``src="10.0.0.0/8"``), IPv6 addresses (the kernel's IPv6
  tuple comparison is inverted: see ``_wire.DumpFilter``), ports of other
  protocols, and what the running kernel lacks;
* a ``flush()`` with any of those: the matching flows are dumped and
  deleted one by one (by tuple and id);
* every filter on the dying and unconfirmed tables: the kernel ignores them;
* ``EventFilter`` ports: ``nfct_filter`` has no port match.

Every kernel-side filter is checked again in userspace (a few integer
compares per flow), so results are the same on any kernel.

Updates send only the tuple, the zone and what changes, never attributes
read back from the kernel (``conntrack -U`` resends what it read, which the
kernel refuses for some flows, e.g. with EOPNOTSUPP).

Resynchronising after an overrun
--------------------------------
When the event socket's buffer overflows the kernel drops events (ENOBUFS):
``stream.stats.overruns`` counts it and ``stream.needs_resync`` turns True.
Call ``stream.resync()``: it discards the events still queued (they are
older than what follows), dumps the table and returns the flows matching the
stream's filter; keep iterating the stream for what happens afterwards.

Without the conntrack channel
-----------------------------
The value types (:class:`Flow`, :class:`Tuple` ...) and
:func:`flow_from_ct_attrs` need only nfbind's core, so ``pkt.ct`` is a Flow
on every install.  :class:`Conntrack`, :class:`EventStream`,
:class:`EventFilter`, :class:`EventStats` and :class:`LabelMap` need
libnetfilter_conntrack: on a machine where nfbind was built without it,
touching them raises ImportError naming the package to install.

The package: ``model`` (the value types), ``_records`` (the decoder of the
kernel's records), ``_wire`` (requests), ``labels``, ``_pool`` (request
sockets, dumps), ``table`` (Conntrack), ``events`` (EventStream) and
``_lookup`` (``pkt.ct`` over ctnetlink for NfQueue and NfLog).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from .. import _channels
from ._records import flow_from_ct_attrs
from .labels import LABEL_HINT, MAX_LABEL
from .model import (
    Counters,
    CpuStats,
    CtStats,
    Endpoint,
    Event,
    ExpectEvent,
    Expectation,
    ExpectStats,
    Flow,
    Nat,
    NotFound,
    SeqAdj,
    Synproxy,
    TcpInfo,
    Timestamps,
    Tuple,
    parse_proto,
)

#: the names that need the conntrack channel (libnetfilter_conntrack)
_CHANNEL_NAMES: List[str] = ["Conntrack", "EventStream", "EventFilter", "EventStats", "LabelMap"]

if _channels.available("conntrack"):
    # (``import X as X``: names re-exported, for type checkers)
    from .events import EventFilter as EventFilter, EventStats as EventStats
    from .events import EventStream as EventStream
    from .labels import LabelMap as LabelMap
    from .table import Conntrack as Conntrack

    _MISSING: List[str] = []
else:
    _MISSING = _CHANNEL_NAMES


# Hidden from type checkers: for them a module __getattr__ would type every
# misspelt name as its return value instead of reporting it.
if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        if name in _MISSING:
            raise _channels.missing("conntrack", "nfbind.conntrack." + name)
        raise AttributeError("module %r has no attribute %r" % (__name__, name))


__all__ = [
    "Flow",
    "Tuple",
    "Counters",
    "Timestamps",
    "Nat",
    "Endpoint",
    "TcpInfo",
    "SeqAdj",
    "Synproxy",
    "Event",
    "ExpectEvent",
    "Expectation",
    "ExpectStats",
    "CtStats",
    "CpuStats",
    "NotFound",
    "parse_proto",
    "flow_from_ct_attrs",
    "LABEL_HINT",
    "MAX_LABEL",
]
__all__ += [name for name in _CHANNEL_NAMES if name not in _MISSING]
