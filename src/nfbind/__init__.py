# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind: the Linux kernel's netfilter userspace channels for Python.

* :class:`NfQueue` — NFQUEUE: decide each packet's fate (accept, drop, mark,
  rewrite).
* netfilter logging (NFLOG) and the connection tracking table live in the
  ``_nflog`` and ``_conntrack`` compiled modules.

Exceptions are in :mod:`nfbind.errors`, enumerations in :mod:`nfbind.enums`.
"""
from .enums import CopyMode, CtInfo, CtStatus, Family, Hook, QueueFlag, TcpState, Verdict
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
from .queue import NfQueue, Packet, QueueStats

__version__ = "0.1.0"

__all__ = [
    "NfQueue",
    "Packet",
    "QueueStats",
    "Verdict",
    "CopyMode",
    "QueueFlag",
    "Hook",
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
