# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind: the Linux kernel's netfilter userspace channels for Python.

* :class:`NfQueue` — NFQUEUE: decide each packet's fate (accept, drop, mark,
  rewrite).
* :class:`NfLog` — NFLOG: watch the packets a rule logged.

Exceptions are in :mod:`nfbind.errors`, enumerations in :mod:`nfbind.enums`.
"""
from .enums import ArpHook, CopyMode, CtInfo, CtStatus, Family, Hook, QueueFlag, TcpState, Verdict
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

__version__ = "0.1.0"

__all__ = [
    "NfQueue",
    "Packet",
    "QueueStats",
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
