# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind: the Linux kernel's netfilter userspace channels for Python.

* :class:`NfQueue` — NFQUEUE: decide each packet's fate (accept, drop, mark,
  rewrite).
* :class:`NfLog` — NFLOG: watch the packets a rule logged.
* :class:`Conntrack` — the connection tracking table: dump, get, create,
  update, delete, flush, events, labels, expectations, stats.

Exceptions are in :mod:`nfbind.errors`, enumerations in :mod:`nfbind.enums`.

Each channel is optional: nfbind builds the ones whose C library is
installed.  On a machine without, say, libnetfilter_log, ``import nfbind``
works and ``nfbind.NfLog`` raises ImportError naming the package to install.
The conntrack value types (:class:`Flow`, :class:`Tuple` ...) need only the
core: ``pkt.ct`` is a Flow on every install.
"""
from typing import TYPE_CHECKING, Any, Dict, List

from . import _channels
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
from .conntrack import (
    Counters,
    CpuStats,
    CtStats,
    Endpoint,
    Event,
    Expectation,
    Flow,
    Nat,
    NotFound,
    Timestamps,
    Tuple,
)
from .packet import CtSummary, Vlan
from .privileges import drop_privileges
from .process import Process

__version__ = "0.1.0"

#: the public names each optional channel brings
_CHANNEL_NAMES: Dict[str, List[str]] = {
    "nfqueue": ["NfQueue", "Packet", "QueueStats", "serve"],
    "nflog": ["NfLog", "LogPacket", "LogStats"],
    "conntrack": ["Conntrack", "EventFilter", "EventStream", "EventStats", "LabelMap", "CtEvent"],
}

if _channels.available("nfqueue"):
    # (``import X as X``: names re-exported, for type checkers)
    from .queue import NfQueue as NfQueue, Packet as Packet, QueueStats as QueueStats
    from .serve import serve as serve
if _channels.available("nflog"):
    from .log import LogPacket as LogPacket, LogStats as LogStats, NfLog as NfLog
if _channels.available("conntrack"):
    from .conntrack import Conntrack as Conntrack, EventFilter as EventFilter
    from .conntrack import EventStats as EventStats, EventStream as EventStream
    from .conntrack import LabelMap as LabelMap
    from .enums import CtEvent as CtEvent

#: public name -> the channel it needs, for the channels not installed here
_MISSING: Dict[str, str] = {
    name: channel
    for channel, names in _CHANNEL_NAMES.items()
    if not _channels.available(channel)
    for name in names
}


# Hidden from type checkers: for them a module __getattr__ would type every
# misspelt name as its return value instead of reporting it.
if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        channel = _MISSING.get(name)
        if channel is not None:
            raise _channels.missing(channel, "nfbind." + name)
        raise AttributeError("module 'nfbind' has no attribute %r" % name)


__all__ = [
    "drop_privileges",
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
    "Process",
    "Flow",
    "Tuple",
    "Event",
    "Expectation",
    "Counters",
    "Timestamps",
    "Nat",
    "Endpoint",
    "CtStats",
    "CpuStats",
    "NotFound",
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
__all__ += [name for names in _CHANNEL_NAMES.values() for name in names if name not in _MISSING]
