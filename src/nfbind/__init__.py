# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind: the Linux kernel's netfilter userspace channels for Python.

* :class:`NfQueue` — NFQUEUE: decide each packet's fate (accept, drop, mark,
  rewrite).
* :class:`NfLog` — NFLOG: watch the packets a rule logged.
* :class:`Conntrack` — the connection tracking table: dump, get, create,
  update, delete, flush, events, labels, expectations, stats.

Exceptions are in :mod:`nfbind.errors`, enumerations in :mod:`nfbind.enums`.
"""
from .enums import (
    ArpHook,
    CopyMode,
    CtInfo,
    CtStatus,
    ExpectFlag,
    Family,
    Hook,
    IPProto,
    QueueFlag,
    SctpState,
    TcpState,
    Verdict,
)
from .errors import (
    ClosedError,
    NetlinkError,
    NfbindError,
    Overrun,
    PermissionDenied,
    QueueBusy,
    VerdictError,
)
from ._channel import OverrunWarning
from .packet import CtSummary, Vlan
from .log import LogPacket, LogStats, NfLog
from .queue import NfQueue, Packet, QueueStats
from .privileges import drop_privileges
from .serve import serve

try:  # absent on a machine without libnetfilter_conntrack
    from .conntrack import (
        Conntrack,
        Counters,
        CpuStats,
        CtStats,
        Endpoint,
        Event,
        EventFilter,
        EventStats,
        EventStream,
        Expectation,
        Flow,
        LabelMap,
        Nat,
        NotFound,
        Timestamps,
        Tuple,
    )
    from .enums import CtEvent

    _CONNTRACK = [
        "Conntrack", "Flow", "Tuple", "Event", "EventFilter", "EventStream", "EventStats",
        "Expectation", "Counters", "Timestamps", "Nat", "Endpoint", "CtStats", "CpuStats",
        "LabelMap", "NotFound", "CtEvent",
    ]
except ImportError:  # pragma: no cover - depends on the machine
    _CONNTRACK = []

__version__ = "0.1.0"

__all__ = [
    "NfQueue",
    "Packet",
    "QueueStats",
    "serve",
    "drop_privileges",
    "NfLog",
    "LogPacket",
    "LogStats",
    "Verdict",
    "CopyMode",
    "QueueFlag",
    "Hook",
    "ArpHook",
    "Family",
    "CtInfo",
    "CtStatus",
    "TcpState",
    "IPProto",
    "SctpState",
    "ExpectFlag",
    "CtSummary",
    "Vlan",
    "NfbindError",
    "NetlinkError",
    "PermissionDenied",
    "QueueBusy",
    "Overrun",
    "VerdictError",
    "ClosedError",
    "OverrunWarning",
    "__version__",
]
__all__ += _CONNTRACK
