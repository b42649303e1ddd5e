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
* ``flush(family=, mark=, status=)``: the same filter on IPCTNL_MSG_CT_DELETE;
* ``EventFilter`` protocol, addresses and mark: a BPF program built by
  ``nfct_filter_*`` (addresses only where that program is right: see
  :class:`EventFilter`).

In userspace:

* ``dump(zone=)``: libnetfilter_conntrack 1.0.9 cannot send a zone filter;
* every filter on the dying and unconfirmed tables: the kernel ignores them;
* ``EventFilter`` ports: ``nfct_filter`` has no port match.

Every kernel-side filter is checked again in userspace (a few integer
compares per flow), so results are right even on a kernel that ignores one.

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
"""
from __future__ import annotations

import errno
import gc as _gc
import ipaddress
import os
import queue as _queue
import socket
import struct
import sys
import threading
import time as _time
import warnings
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Union,
)
import typing as _t

from ._channels import missing
from ._core import lib as core

try:
    from ._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack") from e
from ._channel import Channel
from ._netlink import check_int, iter_attrs, open_netfilter_socket
from . import netns as _netns
from .enums import CtEvent, CtStatus, ExpectFlag, Family, IPProto, SctpState, TcpState
from .errors import ClosedError, NetlinkError, PermissionDenied, error_from_errno

__all__ = [
    "Conntrack",
    "Flow",
    "Tuple",
    "Counters",
    "Timestamps",
    "Nat",
    "Endpoint",
    "Event",
    "EventFilter",
    "EventStream",
    "EventStats",
    "Expectation",
    "CtStats",
    "CpuStats",
    "LabelMap",
    "NotFound",
    "parse_proto",
    "flow_from_ct_attrs",
    "LABEL_HINT",
    "MAX_LABEL",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
AddressLike = Union[str, bytes, int, ipaddress.IPv4Address, ipaddress.IPv6Address]
TupleOrFlow = Union["Tuple", "Flow"]

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
#: the highest label bit the kernel keeps (128 bits of labels per connection)
MAX_LABEL = 127

_AF_INET = core.AF_INET
_AF_INET6 = core.AF_INET6

LABEL_HINT = (
    "the kernel keeps labels only once a rule uses them: add one, e.g. "
    "`iptables -A OUTPUT -m connlabel --label %d --set` (or nft `ct label set %d`) "
    "in this network namespace, then retry; flows that existed before the rule "
    "have no room for labels"
)

#: the protocols whose tuples have ports (GRE's keys travel as ports): the core's rule
_PORT_PROTOS = frozenset(p for p in range(256) if core.nfb_proto_has_ports(p))
_ICMP_PROTOS = frozenset((int(IPProto.ICMP), int(IPProto.ICMPV6)))
_PROTO_NAMES = {p.name.lower(): p for p in IPProto}
_PROTO_NAMES.update({"ipv6-icmp": IPProto.ICMPV6, "icmp6": IPProto.ICMPV6})
_PROTO = [IPProto(v) if v in IPProto._value2member_map_ else v for v in range(256)]
_TCP_STATE = [TcpState(v) if v in TcpState._value2member_map_ else v for v in range(256)]
_SCTP_STATE = [SctpState(v) if v in SctpState._value2member_map_ else v for v in range(256)]
_FAMILY = {_AF_INET: Family.IPV4, _AF_INET6: Family.IPV6}

_osa = object.__setattr__


class NotFound(NetlinkError, LookupError):
    """ENOENT: no such flow (or expectation) in the table.

    A NetlinkError with ``errno == errno.ENOENT`` (and a LookupError).
    """


# -- validation ---------------------------------------------------------------------


def _addr(name: str, value: Any) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, bytes, int)):
        raise TypeError(
            "%s must be an IP address (str, bytes, int or ipaddress object), not %s"
            % (name, type(value).__name__)
        )
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("%s is not an IPv4 or IPv6 address: %r" % (name, value)) from None


def _proto(name: str, value: Any) -> int:
    """A protocol number or name ("tcp", "udp", "icmp", "icmpv6", "sctp", "gre" ...)."""
    if isinstance(value, str):
        p = _PROTO_NAMES.get(value.lower())
        if p is None:
            try:
                return _PROTO[socket.getprotobyname(value)]
            except (OSError, ValueError):  # unknown, or a NUL or a lone surrogate in it
                raise ValueError(
                    "%s: unknown protocol name %r (use a number, or one of %s)"
                    % (name, value, ", ".join(sorted(_PROTO_NAMES)))
                ) from None
        return p
    return _PROTO[check_int(name, value, 0, 255)]


def parse_proto(value: Union[int, str]) -> int:
    """A layer-4 protocol from its number or its name, as :class:`Tuple` takes it.

    ``value`` is a number 0..255 or a name in any case: those of
    :class:`~nfbind.enums.IPProto` (``"tcp"``, ``"udp"``, ``"icmpv6"``, ``"sctp"``,
    ``"gre"`` ...), ``"ipv6-icmp"``/``"icmp6"``, or any name in /etc/protocols.
    Returns the :class:`~nfbind.enums.IPProto` member, or a plain int for a
    protocol IPProto does not name (``parse_proto("esp") == 50``).

    Raises ValueError (an unknown name, a number outside 0..255) or TypeError
    (neither int nor str); the message names ``proto``.
    """
    return _proto("proto", value)


def _family(name: str, value: Any) -> Optional[int]:
    """None, AF_INET/AF_INET6 (Family.IPV4/IPV6), or "ipv4"/"ipv6"."""
    if value is None:
        return None
    if isinstance(value, str):
        v = {"ipv4": _AF_INET, "inet": _AF_INET, "ip": _AF_INET, "ipv6": _AF_INET6,
             "inet6": _AF_INET6, "ip6": _AF_INET6}.get(value.lower())
        if v is None:
            raise ValueError("%s must be 'ipv4' or 'ipv6', got %r" % (name, value))
        return v
    v = check_int(name, value, 0, 255)
    if v not in (_AF_INET, _AF_INET6):
        raise ValueError(
            "%s must be socket.AF_INET or socket.AF_INET6 (Family.IPV4/IPV6), got %d" % (name, v)
        )
    return v


def _u32(name: str, value: Any) -> int:
    return check_int(name, value, 0, _U32_MAX)


def _u16(name: str, value: Any) -> int:
    return check_int(name, value, 0, _U16_MAX)


def _opt(fn: Callable[[str, Any], int], name: str, value: Any) -> Optional[int]:
    return None if value is None else fn(name, value)


def _label_bits(name: str, values: Any, labelmap: Optional[Callable[[], "LabelMap"]] = None) -> FrozenSet[int]:
    """Validate labels: bit numbers 0..127, or names from connlabel.conf."""
    if isinstance(values, (int, str)) and not isinstance(values, bool):
        values = (values,)
    try:
        if isinstance(values, (bytes, bytearray, memoryview)):
            raise TypeError  # not a collection of bits
        items = list(values)
    except TypeError:
        raise TypeError(
            "%s must be a set of label bits (0..%d) or names, not %s"
            % (name, MAX_LABEL, type(values).__name__)
        ) from None
    bits = set()
    for v in items:
        if isinstance(v, str):
            if labelmap is None:
                raise TypeError(
                    "%s: label names (%r) are resolved by Conntrack methods; a Flow holds "
                    "bit numbers" % (name, v)
                )
            bits.add(labelmap().bit(v))
        else:
            bits.add(check_int("%s bit" % name, v, 0, MAX_LABEL))
    return frozenset(bits)


def _status_filter(status: Any, status_mask: Any) -> _t.Tuple[Optional[int], Optional[int]]:
    """The checked status and status mask of a dump or flush filter; the mask
    defaults to the status itself."""
    st = _opt(_u32, "status", status)
    smask = _opt(_u32, "status_mask", status_mask)
    if smask is not None and st is None:
        raise ValueError("status_mask needs status=")
    if st is not None and smask is None:
        smask = st
    return st, smask


def _dump_filter(fam: Optional[int], mark: Optional[int], mmask: int, status: Optional[int],
                 smask: Optional[int]) -> Any:
    """The kernel-side filter of a dump or flush: family, mark under its mask,
    status under its mask."""
    f = ffi.new("struct nfb_ct_dumpf *")
    f.family = fam or 0
    if mark is not None:
        f.set |= lib.NFB_DF_MARK
        f.mark = mark & mmask
        f.mark_mask = mmask
    if status is not None:
        f.set |= lib.NFB_DF_STATUS
        f.status = status & (smask or 0)
        f.status_mask = smask or 0
    return f


def _helper_len(name: str) -> int:
    """Bytes of a helper name in UTF-8; 0 (refused) when it cannot be encoded."""
    try:
        return len(name.encode())
    except UnicodeEncodeError:
        return 0


def _labels_bytes(bits: Iterable[int]) -> bytes:
    """128 label bits as libnetfilter_conntrack lays them out: 4 native uint32 words."""
    words = [0, 0, 0, 0]
    for b in bits:
        words[b >> 5] |= 1 << (b & 31)
    return struct.pack("=4I", *words)


def _labels_from_bytes(raw: bytes) -> FrozenSet[int]:
    bits = []
    for w, word in enumerate(struct.unpack("=4I", raw[:16].ljust(16, b"\0"))):
        while word:
            low = word & -word
            bits.append(w * 32 + low.bit_length() - 1)
            word ^= low
    return frozenset(bits)


# -- records -------------------------------------------------------------------------


class Endpoint(NamedTuple):
    """An address and port (None for protocols without ports)."""

    addr: IPAddress
    port: Optional[int]


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a connection.

    ``sport``/``dport`` are set for TCP, UDP, UDP-Lite, SCTP, DCCP (ports) and
    GRE (keys); ``icmp_type``/``icmp_code``/``icmp_id`` for ICMP and ICMPv6.
    Addresses are ``ipaddress`` objects (strings are converted); ``proto`` is
    an :class:`IPProto` (or a plain int for protocols without a name), and
    accepts names such as ``"tcp"``.

    Raises ValueError/TypeError naming the field for a bad value.
    """

    src: IPAddress
    dst: IPAddress
    proto: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    icmp_id: Optional[int] = None

    def __post_init__(self) -> None:
        src = _addr("src", self.src)
        dst = _addr("dst", self.dst)
        if src.version != dst.version:
            raise ValueError("src %s and dst %s are not of the same IP version" % (src, dst))
        proto = _proto("proto", self.proto)
        sport = _opt(_u16, "sport", self.sport)
        dport = _opt(_u16, "dport", self.dport)
        itype = _opt(lambda n, v: check_int(n, v, 0, 255), "icmp_type", self.icmp_type)
        icode = _opt(lambda n, v: check_int(n, v, 0, 255), "icmp_code", self.icmp_code)
        iid = _opt(_u16, "icmp_id", self.icmp_id)
        has_ports = sport is not None or dport is not None
        has_icmp = itype is not None or icode is not None or iid is not None
        pname = getattr(proto, "name", str(proto)).lower()
        if proto in _PORT_PROTOS and has_icmp:
            raise ValueError("a %s tuple has sport/dport, not icmp_type/icmp_code/icmp_id" % pname)
        if proto in _ICMP_PROTOS:
            if itype is not None and icode is None:
                icode = 0
            if has_ports:
                raise ValueError("an %s tuple has icmp_type/icmp_code/icmp_id, not ports" % pname)
            want = 4 if proto == IPProto.ICMP else 6
            if src.version != want:
                raise ValueError(
                    "proto %s needs IPv%d addresses, got %s: use %s"
                    % (pname, want, src, "icmpv6" if want == 4 else "icmp")
                )
        if proto not in _PORT_PROTOS and proto not in _ICMP_PROTOS and (has_ports or has_icmp):
            raise ValueError("conntrack tracks protocol %s without ports or icmp fields" % pname)
        _osa(self, "src", src)
        _osa(self, "dst", dst)
        _osa(self, "proto", proto)
        _osa(self, "sport", sport)
        _osa(self, "dport", dport)
        _osa(self, "icmp_type", itype)
        _osa(self, "icmp_code", icode)
        _osa(self, "icmp_id", iid)

    @property
    def family(self) -> Family:
        """Family.IPV4 or Family.IPV6 (from the addresses)."""
        return Family.IPV4 if self.src.version == 4 else Family.IPV6

    def __str__(self) -> str:
        name = getattr(self.proto, "name", str(self.proto)).lower()
        if self.sport is not None or self.dport is not None:
            fmt = "[%s]:%s" if self.src.version == 6 else "%s:%s"
            return "%s %s -> %s" % (name, fmt % (self.src, self.sport), fmt % (self.dst, self.dport))
        text = "%s %s -> %s" % (name, self.src, self.dst)
        if self.icmp_type is not None:
            text += " type=%s code=%s id=%s" % (self.icmp_type, self.icmp_code, self.icmp_id)
        return text

    def as_dict(self) -> Dict[str, Any]:
        """The tuple as JSON-ready values: ``src`` and ``dst`` as strings,
        ``proto`` as its lower-case name (the number as a string when it has
        none), then those of ``sport``, ``dport``, ``icmp_type``, ``icmp_code``,
        ``icmp_id`` that are set (ints)."""
        d: Dict[str, Any] = {"src": str(self.src), "dst": str(self.dst),
                             "proto": getattr(self.proto, "name", str(self.proto)).lower()}
        for k in ("sport", "dport", "icmp_type", "icmp_code", "icmp_id"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass(frozen=True, slots=True)
class Counters:
    """Packets and bytes each way (``nf_conntrack_acct=1``)."""

    orig_packets: int
    orig_bytes: int
    reply_packets: int
    reply_bytes: int

    @property
    def packets(self) -> int:
        return self.orig_packets + self.reply_packets

    @property
    def bytes(self) -> int:
        return self.orig_bytes + self.reply_bytes

    def as_dict(self) -> Dict[str, int]:
        """``orig_packets``, ``orig_bytes``, ``reply_packets``, ``reply_bytes``."""
        return {"orig_packets": self.orig_packets, "orig_bytes": self.orig_bytes,
                "reply_packets": self.reply_packets, "reply_bytes": self.reply_bytes}


@dataclass(frozen=True, slots=True)
class Timestamps:
    """When the flow started and (for a destroyed flow) stopped, in ns since
    the epoch (``nf_conntrack_timestamp=1``)."""

    start_ns: int
    stop_ns: Optional[int] = None

    @property
    def start(self) -> float:
        """Start time in seconds since the epoch."""
        return self.start_ns / 1e9

    @property
    def stop(self) -> Optional[float]:
        """Stop time in seconds since the epoch, or None while the flow lives."""
        return None if self.stop_ns is None else self.stop_ns / 1e9

    @property
    def duration(self) -> Optional[float]:
        """Seconds from start to stop, or None while the flow lives."""
        return None if self.stop_ns is None else (self.stop_ns - self.start_ns) / 1e9

    def as_dict(self) -> Dict[str, Optional[float]]:
        """``start`` and ``stop`` in seconds since the epoch (``stop`` None
        while the flow lives)."""
        return {"start": self.start, "stop": self.stop}


@dataclass(frozen=True, slots=True)
class Nat:
    """Network address translation of a flow.

    ``snat`` is what the source was rewritten to (what the peer sees),
    ``dnat`` where the destination was redirected to.  In a dump they are
    read off the reply tuple; for :meth:`Conntrack.create` they ask the
    kernel to set the translation up.
    """

    snat: Optional[Endpoint] = None
    dnat: Optional[Endpoint] = None

    def as_dict(self) -> Dict[str, Optional[str]]:
        """``snat`` and ``dnat``, each None or ``"ADDRESS:PORT"`` (the port is
        ``None`` for protocols without ports)."""
        return {k: None if v is None else "%s:%s" % (v.addr, v.port)
                for k, v in (("snat", self.snat), ("dnat", self.dnat))}


@dataclass(frozen=True, slots=True)
class Flow:
    """A connection as conntrack sees it.

    ``orig`` is the direction of the first packet, ``reply`` the answer's.
    ``state`` is a :class:`TcpState` (TCP), :class:`SctpState` (SCTP), an int
    (DCCP) or None.  ``counters`` needs ``net.netfilter.nf_conntrack_acct=1``,
    ``timestamps`` ``net.netfilter.nf_conntrack_timestamp=1``; both are None
    otherwise.  ``labels`` is a frozenset of bit numbers (0..127).
    ``master`` is the tuple of the connection that expected this one.

    Made by nfbind from the kernel's answers; make one yourself for
    :meth:`Conntrack.create` (``orig`` and ``timeout`` are what you need).
    """

    orig: Tuple
    reply: Optional[Tuple] = None
    family: Optional[Family] = None
    proto: Optional[int] = None
    state: Optional[int] = None
    status: CtStatus = CtStatus(0)
    timeout: Optional[int] = None
    mark: int = 0
    secmark: int = 0
    zone: int = 0
    labels: FrozenSet[int] = frozenset()
    use: Optional[int] = None
    id: Optional[int] = None
    counters: Optional[Counters] = None
    timestamps: Optional[Timestamps] = None
    nat: Optional[Nat] = None
    helper: Optional[str] = None
    secctx: Optional[str] = None
    master: Optional[Tuple] = None

    def __post_init__(self) -> None:
        if not isinstance(self.orig, Tuple):
            raise TypeError("Flow.orig must be a Tuple, not %s" % type(self.orig).__name__)
        fam = self.orig.family
        if self.reply is not None:
            if not isinstance(self.reply, Tuple):
                raise TypeError("Flow.reply must be a Tuple or None, not %s" % type(self.reply).__name__)
            if self.reply.family != fam:
                raise ValueError("Flow.orig is IPv%d but Flow.reply is not" % self.orig.src.version)
        if self.family is not None and _family("family", self.family) != int(fam):
            raise ValueError("Flow.family %r does not match the addresses of orig (%s)"
                             % (self.family, fam.name))
        if self.proto is not None and _proto("proto", self.proto) != self.orig.proto:
            raise ValueError("Flow.proto %r does not match orig.proto %r" % (self.proto, self.orig.proto))
        state = self.state
        if state is not None:
            state = check_int("state", state, 0, 255)
            if self.orig.proto == IPProto.TCP:
                state = _TCP_STATE[state]
            elif self.orig.proto == IPProto.SCTP:
                state = _SCTP_STATE[state]
        if self.master is not None and not isinstance(self.master, Tuple):
            raise TypeError("Flow.master must be a Tuple or None")
        for name, cls in (("counters", Counters), ("timestamps", Timestamps), ("nat", Nat)):
            v = getattr(self, name)
            if v is not None and not isinstance(v, cls):
                raise TypeError("Flow.%s must be a %s or None" % (name, cls.__name__))
        if self.helper is not None:
            if not isinstance(self.helper, str) or not 0 < _helper_len(self.helper) < 16:
                raise ValueError("Flow.helper must be a helper name of 1..15 bytes, e.g. 'ftp'")
        if self.secctx is not None and not isinstance(self.secctx, str):
            raise TypeError("Flow.secctx must be a str or None")
        _osa(self, "family", fam)
        _osa(self, "proto", self.orig.proto)
        _osa(self, "state", state)
        _osa(self, "status", CtStatus(_u32("status", self.status)))
        _osa(self, "timeout", _opt(_u32, "timeout", self.timeout))
        _osa(self, "mark", _u32("mark", self.mark))
        _osa(self, "secmark", _u32("secmark", self.secmark))
        _osa(self, "zone", _u16("zone", self.zone))
        _osa(self, "labels", _label_bits("labels", self.labels))
        _osa(self, "use", _opt(_u32, "use", self.use))
        _osa(self, "id", _opt(_u32, "id", self.id))

    def __str__(self) -> str:
        parts = [str(self.orig)]
        if self.state is not None:
            parts.append(getattr(self.state, "name", str(self.state)))
        if self.reply is not None:
            parts.append("reply " + str(self.reply).split(" ", 1)[1])
        for name in ("mark", "zone"):
            v = getattr(self, name)
            if v:
                parts.append("%s=%d" % (name, v))
        if self.labels:
            parts.append("labels=%s" % ",".join(map(str, sorted(self.labels))))
        if self.id is not None:
            parts.append("id=%d" % self.id)
        return " ".join(parts)

    def as_dict(self) -> Dict[str, Any]:
        """The flow as JSON-ready values, what ``nfbind ct list --json`` prints::

            json.dumps(flow.as_dict())

        Keys, in this order: ``family`` ("ipv4"/"ipv6"), ``proto`` (lower-case
        name), ``orig`` and ``reply`` (:meth:`Tuple.as_dict`, ``reply`` may be
        None), ``state`` (the state's name, an int for DCCP, or None),
        ``status`` (the names of the :class:`~nfbind.enums.CtStatus` bits set),
        ``timeout``, ``mark``, ``zone``, ``labels`` (sorted bit numbers),
        ``id``, ``use``, ``secmark``, ``helper``; then, only when the flow has
        them, ``counters`` (:meth:`Counters.as_dict`), ``timestamps``
        (:meth:`Timestamps.as_dict`) and ``nat`` (:meth:`Nat.as_dict`).
        """
        st = int(self.status)
        d: Dict[str, Any] = {
            "family": Family(self.family).name.lower(),
            "proto": getattr(self.proto, "name", str(self.proto)).lower(),
            "orig": self.orig.as_dict(),
            "reply": None if self.reply is None else self.reply.as_dict(),
            "state": None if self.state is None else getattr(self.state, "name", self.state),
            "status": [m.name for m in CtStatus if m.value & (m.value - 1) == 0 and st & m.value],
            "timeout": self.timeout,
            "mark": self.mark,
            "zone": self.zone,
            "labels": sorted(self.labels),
            "id": self.id,
            "use": self.use,
            "secmark": self.secmark,
            "helper": self.helper,
        }
        if self.counters is not None:
            d["counters"] = self.counters.as_dict()
        if self.timestamps is not None:
            d["timestamps"] = self.timestamps.as_dict()
        if self.nat is not None:
            d["nat"] = self.nat.as_dict()
        return d


@dataclass(frozen=True, slots=True)
class Event:
    """A change in the table: ``type`` (a :class:`CtEvent`) and the ``flow``."""

    type: CtEvent
    flow: Flow


@dataclass(frozen=True, slots=True)
class Expectation:
    """A connection conntrack expects because of another one (FTP data, SIP media...).

    ``master`` is the connection that made the expectation, ``expected``
    the tuple a new connection must match under ``mask`` (address masks as
    addresses, port masks as ports).  ``helper`` names the helper that
    made it.  For :meth:`Conntrack.create_expect` the master connection
    must exist and have a helper.
    """

    master: Tuple
    expected: Tuple
    mask: Tuple
    timeout: Optional[int] = None
    zone: int = 0
    flags: ExpectFlag = ExpectFlag(0)
    helper: Optional[str] = None
    id: Optional[int] = None
    klass: Optional[int] = None
    fn: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("master", "expected", "mask"):
            if not isinstance(getattr(self, name), Tuple):
                raise TypeError("Expectation.%s must be a Tuple" % name)
        if len({self.master.family, self.expected.family, self.mask.family}) != 1:
            raise ValueError("the master, expected and mask tuples must be of one IP version")
        if self.helper is not None and (not isinstance(self.helper, str)
                                        or not 0 < _helper_len(self.helper) < 16):
            raise ValueError("Expectation.helper must be a helper name of 1..15 bytes")
        _osa(self, "timeout", _opt(_u32, "timeout", self.timeout))
        _osa(self, "zone", _u16("zone", self.zone))
        _osa(self, "flags", ExpectFlag(_u32("flags", self.flags)))
        _osa(self, "id", _opt(_u32, "id", self.id))
        _osa(self, "klass", _opt(_u32, "klass", self.klass))

    @property
    def family(self) -> Family:
        return self.expected.family


@dataclass(frozen=True, slots=True)
class CpuStats:
    """One CPU's conntrack counters (IPCTNL_MSG_CT_GET_STATS_CPU)."""

    cpu: int
    found: int = 0
    invalid: int = 0
    insert: int = 0
    insert_failed: int = 0
    drop: int = 0
    early_drop: int = 0
    error: int = 0
    search_restart: int = 0
    clash_resolve: int = 0
    chain_toolong: int = 0


_CPU_FIELDS = (
    (core.CTA_STATS_FOUND, "found"),
    (core.CTA_STATS_INVALID, "invalid"),
    (core.CTA_STATS_INSERT, "insert"),
    (core.CTA_STATS_INSERT_FAILED, "insert_failed"),
    (core.CTA_STATS_DROP, "drop"),
    (core.CTA_STATS_EARLY_DROP, "early_drop"),
    (core.CTA_STATS_ERROR, "error"),
    (core.CTA_STATS_SEARCH_RESTART, "search_restart"),
    (core.CTA_STATS_CLASH_RESOLVE, "clash_resolve"),
    (core.CTA_STATS_CHAIN_TOOLONG, "chain_toolong"),
)


@dataclass(frozen=True, slots=True)
class CtStats:
    """The table's size and limit, and per-CPU counters."""

    entries: int
    max_entries: int
    cpus: _t.Tuple[CpuStats, ...]

    def total(self, name: str) -> int:
        """A counter summed over CPUs, e.g. ``stats.total("drop")``."""
        if name not in CpuStats.__dataclass_fields__ or name == "cpu":
            raise ValueError("no per-CPU counter named %r" % name)
        return sum(getattr(c, name) for c in self.cpus)


# -- building records fast ------------------------------------------------------------------


def _twin(cls: type) -> type:
    """A mutable class with the same slots as the frozen dataclass ``cls``.

    Flows from the kernel need no validation, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, which costs
    3-4x a plain slot store.  The builder makes a twin instance and assigns
    ``__class__ = cls`` (allowed: identical slot layout), giving a genuine
    ``cls`` instance.  If the interpreter refuses, ``cls`` itself is used.
    """
    names = getattr(cls, "__slots__")
    ns: Dict[str, Any] = {"__slots__": names}
    src = "def __init__(self, %s):\n%s" % (
        ", ".join(names), "".join("    self.%s = %s\n" % (n, n) for n in names))
    exec(src, ns)  # noqa: S102 - builds a plain __init__, like dataclasses does
    twin = type("_%sBuilder" % cls.__name__, (object,), ns)
    try:
        probe = twin(*([None] * len(names)))
        probe.__class__ = cls
    except TypeError:  # pragma: no cover - layout differs on this interpreter
        return cls
    return twin


_TupleB = _twin(Tuple)
_FlowB = _twin(Flow)
_CountersB = _twin(Counters)

_REC = "struct nfb_ct_rec"
_RS = ffi.sizeof(_REC)
_FAM_OFF = ffi.offsetof(_REC, "family")


def _layout(fields: _t.Sequence[_t.Tuple[_t.Tuple[str, ...], str, int]], base: str,
            size: int) -> struct.Struct:
    """A struct format for the named fields of C type ``base`` (offsets from
    the compiler), padding the rest."""
    fmt = "="
    pos = 0
    for path, code, width in fields:
        off = ffi.offsetof(base, *path)
        if off < pos:
            raise ImportError("nfbind._conntrack: unexpected layout of %s.%s" % (base, ".".join(path)))
        if off > pos:
            fmt += "%dx" % (off - pos)
        fmt += code
        pos = off + width
    if size > pos:
        fmt += "%dx" % (size - pos)
    s = struct.Struct(fmt)
    if s.size != size:
        raise ImportError("nfbind._conntrack: record layout mismatch for %s" % base)
    return s


def _tuple_fields(prefix: _t.Tuple[str, ...], v6: bool) -> list:
    # IPv4 addresses as one native u32 (an int key for the address cache:
    # no bytes object per address); IPv6 addresses as 16 bytes
    a, w = ("16s", 16) if v6 else ("I", 4)
    return [
        (prefix + ("src",), a, w), (prefix + ("dst",), a, w),
        (prefix + ("sport",), "H", 2), (prefix + ("dport",), "H", 2),
        (prefix + ("icmp_id",), "H", 2), (prefix + ("icmp_type",), "B", 1),
        (prefix + ("icmp_code",), "B", 1), (prefix + ("proto",), "B", 1),
        (prefix + ("has",), "B", 1),
    ]


def _core_struct(v6: bool) -> struct.Struct:
    """What every flow needs: both tuples and the scalar attributes."""
    fields = _tuple_fields(("orig",), v6) + _tuple_fields(("reply",), v6)
    fields += [((n,), "I", 4) for n in ("attrs", "status", "timeout", "mark", "secmark", "use",
                                        "id")]
    fields += [(("zone",), "H", 2), (("family",), "B", 1), (("state",), "B", 1)]
    return _layout(fields, _REC, _RS)


#: the fields few flows have (read only when the record's attrs say so)
_RARE_STRUCT = _layout(
    [((n,), "Q", 8) for n in ("o_packets", "o_bytes", "r_packets", "r_bytes", "ts_start",
                              "ts_stop")]
    + [(("secctx_off",), "I", 4), (("secctx_len",), "I", 4), (("labels",), "16s", 16),
       (("helper",), "16s", 16)],
    _REC, _RS)
_RARE_UNPACK = _RARE_STRUCT.unpack_from
_CORE4_S = _core_struct(False)
_CORE6_S = _core_struct(True)
_CORE4 = _CORE4_S.unpack_from
_CORE6 = _CORE6_S.unpack_from
_MASTER_OFF = ffi.offsetof(_REC, "master")
_TSIZE = ffi.sizeof("struct nfb_ct_tuple")
_MASTER4 = _layout(_tuple_fields((), False), "struct nfb_ct_tuple", _TSIZE).unpack_from
_MASTER6 = _layout(_tuple_fields((), True), "struct nfb_ct_tuple", _TSIZE).unpack_from
_EVENT_OFF = ffi.offsetof(_REC, "event")

_T_PORTS = core.NFB_T_PORTS
_T_ICMP = core.NFB_T_ICMP
_A_REPLY = core.NFB_CT_A_REPLY
_A_TIMEOUT = core.NFB_CT_A_TIMEOUT
_A_USE = core.NFB_CT_A_USE
_A_ID = core.NFB_CT_A_ID
_A_STATE = core.NFB_CT_A_STATE
_A_COUNTERS = core.NFB_CT_A_COUNTERS
_A_TS_START = core.NFB_CT_A_TS_START
_A_TS_STOP = core.NFB_CT_A_TS_STOP
_A_LABELS = core.NFB_CT_A_LABELS
_A_HELPER = core.NFB_CT_A_HELPER
_A_SECCTX = core.NFB_CT_A_SECCTX
_A_MASTER = core.NFB_CT_A_MASTER
_A_ORIG = core.NFB_CT_A_ORIG
_NAT_BITS = int(CtStatus.SRC_NAT | CtStatus.DST_NAT)
_SRC_NAT = int(CtStatus.SRC_NAT)
_DST_NAT = int(CtStatus.DST_NAT)
_TCP = int(IPProto.TCP)
_SCTP = int(IPProto.SCTP)
_EVENT = {int(e): e for e in (CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY)}


class _IPCache(dict):
    """Raw address -> ipaddress object: a native u32 for IPv4, 16 bytes for IPv6."""

    def __missing__(self, raw: Any) -> IPAddress:
        if len(self) > 200000:
            self.clear()
        if type(raw) is int:
            a: IPAddress = ipaddress.IPv4Address(raw.to_bytes(4, sys.byteorder))
        elif len(raw) == 4:
            a = ipaddress.IPv4Address(raw)
        else:
            a = ipaddress.IPv6Address(raw)
        self[raw] = a
        return a


class _StatusCache(dict):
    def __missing__(self, v: int) -> CtStatus:
        s = CtStatus(v)
        self[v] = s
        return s


class _LabelCache(dict):
    def __missing__(self, raw: bytes) -> FrozenSet[int]:
        if len(self) > 4096:
            self.clear()
        s = _labels_from_bytes(raw)
        self[raw] = s
        return s


class _StrCache(dict):
    def __missing__(self, raw: bytes) -> str:
        s = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        self[raw] = s
        return s


_IPS = _IPCache()
_STATUS = _StatusCache()
_LABELS = _LabelCache()
_HELPERS = _StrCache()
_NO_LABELS: FrozenSet[int] = frozenset()
_LABELS[bytes(16)] = _NO_LABELS


def _master_tuple(recs: Any, off: int, v6: bool) -> Tuple:
    src, dst, sp, dp, iid, ity, ico, pr, has = (_MASTER6 if v6 else _MASTER4)(recs, off + _MASTER_OFF)
    ips = _IPS
    if has & _T_PORTS:
        t = _TupleB(ips[src], ips[dst], _PROTO[pr], sp, dp, None, None, None)
    elif has & _T_ICMP:
        t = _TupleB(ips[src], ips[dst], _PROTO[pr], None, None, ity, ico, iid)
    else:
        t = _TupleB(ips[src], ips[dst], _PROTO[pr], None, None, None, None, None)
    t.__class__ = Tuple
    return t


def _nat_of(status: int, reply: Optional[Tuple]) -> Optional[Nat]:
    if reply is None:
        return None
    snat = dnat = None
    if status & _SRC_NAT:
        snat = Endpoint(reply.dst, reply.dport)
    if status & _DST_NAT:
        dnat = Endpoint(reply.src, reply.sport)
    return Nat(snat, dnat)


_RARE = (_A_COUNTERS | _A_TS_START | _A_LABELS | _A_HELPER | _A_SECCTX | _A_MASTER)


def _rare(recs: Any, off: int, attrs: int, v6: bool, data: bytes) -> tuple:
    """counters, timestamps, labels, helper, secctx, master of one record."""
    (opk, oby, rpk, rby, tss, tse, sxo, sxl, labels, helper) = _RARE_UNPACK(recs, off)
    if attrs & _A_COUNTERS:
        ctr = _CountersB(opk, oby, rpk, rby)
        ctr.__class__ = Counters
    else:
        ctr = None
    return (
        ctr,
        Timestamps(tss, tse if attrs & _A_TS_STOP else None) if attrs & _A_TS_START else None,
        _LABELS[labels] if attrs & _A_LABELS else _NO_LABELS,
        _HELPERS[helper] if attrs & _A_HELPER else None,
        data[sxo:sxo + sxl].decode("utf-8", "replace") if attrs & _A_SECCTX else None,
        _master_tuple(recs, off, v6) if attrs & _A_MASTER else None,
    )


def _rows(recs: Any, n: int, nv6: Optional[int]) -> Iterable[tuple]:
    """The core fields of each record: one ``iter_unpack`` over a batch of
    one IP version (the common case), else one ``unpack_from`` per record."""
    size = n * _RS
    if nv6 == 0 or nv6 == n:
        view = memoryview(recs)[:size] if len(recs) != size else recs
        return (_CORE6_S if nv6 else _CORE4_S).iter_unpack(view)
    return ((_CORE6 if recs[off + _FAM_OFF] == _AF_INET6 else _CORE4)(recs, off)
            for off in range(0, size, _RS))


#: a flow on the fast path of _build_flows: these attributes present ...
_PLAIN_WANT = _A_REPLY | _A_TIMEOUT | _A_USE | _A_ID
#: ... and none of the rare ones
_PLAIN_MASK = _PLAIN_WANT | _RARE


def _build_flows(recs: Any, n: int, data: bytes, out: list, nv6: Optional[int] = None) -> None:
    """Append a Flow for each of the ``n`` records in ``recs`` to ``out``.

    The hot loop of a dump: the core fields of every record come from one
    ``struct.iter_unpack`` (a second unpack only for flows with counters,
    timestamps, labels, a helper ...), addresses and statuses from caches,
    and objects are made with slot stores instead of validated constructors
    (see ``_twin``).  Flows with ports both ways, no NAT and the usual
    attributes take a short path.  ``nv6`` is how many records are IPv6
    (None: unknown).  The cyclic garbage collector is paused meanwhile: the
    thousands of new objects would trigger collections that cannot free
    anything.
    """
    ips = _IPS
    status_c = _STATUS
    protos = _PROTO
    TB = _TupleB
    FB = _FlowB
    T = Tuple
    F = Flow
    append = out.append
    no_labels = _NO_LABELS
    fam4 = Family.IPV4
    fam6 = Family.IPV6
    af6 = _AF_INET6
    t_ports = _T_PORTS
    t_icmp = _T_ICMP
    a_state = _A_STATE
    a_reply = _A_REPLY
    a_timeout = _A_TIMEOUT
    a_use = _A_USE
    a_id = _A_ID
    rare = _RARE
    nat_bits = _NAT_BITS
    plain_mask = _PLAIN_MASK
    plain_want = _PLAIN_WANT
    tcp = _TCP
    sctp = _SCTP
    tcp_state = _TCP_STATE
    sctp_state = _SCTP_STATE
    gc_was_on = _gc.isenabled()
    if gc_was_on:
        _gc.disable()
    try:
        off = -_RS
        for (osrc, odst, osp, odp, oiid, oity, oico, opr, ohas,
             rsrc, rdst, rsp, rdp, riid, rity, rico, rpr, rhas,
             attrs, status, timeout, mark, secmark, use, ctid,
             zone, family, state) in _rows(recs, n, nv6):
            off += _RS
            proto = protos[opr]
            if attrs & a_state:
                st = (tcp_state[state] if opr == tcp else
                      sctp_state[state] if opr == sctp else state)
            else:
                st = None
            if (attrs & plain_mask == plain_want and ohas & rhas & t_ports
                    and not status & nat_bits):
                # without NAT the reply is the inverse of orig: reuse its addresses
                src = ips[osrc]
                dst = ips[odst]
                orig = TB(src, dst, proto, osp, odp, None, None, None)
                orig.__class__ = T
                reply = TB(dst if rsrc == odst else ips[rsrc], src if rdst == osrc else ips[rdst],
                           proto if rpr == opr else protos[rpr], rsp, rdp, None, None, None)
                reply.__class__ = T
                f = FB(orig, reply, fam6 if family == af6 else fam4, proto, st,
                       status_c[status], timeout, mark, secmark, zone, no_labels, use, ctid,
                       None, None, None, None, None, None)
                f.__class__ = F
                append(f)
                continue
            if ohas & t_ports:
                orig = TB(ips[osrc], ips[odst], proto, osp, odp, None, None, None)
            elif ohas & t_icmp:
                orig = TB(ips[osrc], ips[odst], proto, None, None, oity, oico, oiid)
            else:
                orig = TB(ips[osrc], ips[odst], proto, None, None, None, None, None)
            orig.__class__ = T
            if attrs & a_reply:
                if rhas & t_ports:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], rsp, rdp, None, None, None)
                elif rhas & t_icmp:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], None, None, rity, rico, riid)
                else:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], None, None, None, None, None)
                reply.__class__ = T
            else:
                reply = None
            if attrs & rare:
                ctr, ts, lbl, hlp, sctx, mst = _rare(recs, off, attrs, family == af6, data)
            else:
                ctr = ts = hlp = sctx = mst = None
                lbl = no_labels
            f = FB(orig, reply, fam6 if family == af6 else fam4, proto, st, status_c[status],
                   timeout if attrs & a_timeout else None, mark, secmark, zone, lbl,
                   use if attrs & a_use else None, ctid if attrs & a_id else None,
                   ctr, ts, _nat_of(status, reply) if status & nat_bits else None,
                   hlp, sctx, mst)
            f.__class__ = F
            append(f)
    finally:
        if gc_was_on:
            _gc.enable()


def _events_of(recs: Any, n: int, data: bytes, nv6: Optional[int] = None) -> List[Event]:
    flows: List[Flow] = []
    _build_flows(recs, n, data, flows, nv6)
    return [Event(_EVENT.get(recs[i * _RS + _EVENT_OFF], CtEvent(0)), f)
            for i, f in enumerate(flows)]


def flow_from_ct_attrs(data: Union[bytes, bytearray, memoryview], off: int, length: int,
                       family: int) -> Flow:
    """A :class:`Flow` from the nested CTA_* attributes the kernel puts in
    NFQA_CT (NFQUEUE) or NFULA_CT (NFLOG): ``data[off:off+length]``.

    ``family`` is the packet's (NFPROTO_IPV4/IPV6, or e.g. NFPROTO_BRIDGE:
    then the addresses in the attributes decide between IPv4 and IPv6).
    The same C parser as dumps and events is used, so a packet's flow
    equals the dumped one (``use`` and ``timeout`` aside, which move).

    Raises ValueError when the attributes hold no original tuple, and
    ValueError/TypeError for bad arguments.
    """
    check_int("family", family, 0, 255)
    off = check_int("off", off, 0, len(data))
    length = check_int("length", length, 0, len(data) - off)
    chunk = bytes(data[off:off + length])
    rec = ffi.new("struct nfb_ct_rec *")
    core.nfb_ct_parse_attrs(chunk, length, 0, rec)
    if not rec.attrs & _A_ORIG:
        raise ValueError("the conntrack attributes hold no original tuple (CTA_TUPLE_ORIG)")
    rec.family = _AF_INET6 if rec.orig.has & core.NFB_T_V6 else _AF_INET
    out: List[Flow] = []
    _build_flows(ffi.buffer(rec)[:], 1, chunk, out)
    return out[0]


# -- pure-Python attribute parsing (expectations, statistics) -------------------------------

_NLMSG = struct.Struct("=IHHII")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


def _py_tuple(data: bytes, off: int, end: int) -> Tuple:
    src = dst = None
    proto = 0
    vals: Dict[int, int] = {}
    for t, o, n in iter_attrs(data, off, end):
        if t == core.CTA_TUPLE_IP:
            for t2, o2, n2 in iter_attrs(data, o, o + n):
                if t2 in (core.CTA_IP_V4_SRC, core.CTA_IP_V6_SRC) and n2 in (4, 16):
                    src = _IPS[data[o2:o2 + n2]]
                elif t2 in (core.CTA_IP_V4_DST, core.CTA_IP_V6_DST) and n2 in (4, 16):
                    dst = _IPS[data[o2:o2 + n2]]
        elif t == core.CTA_TUPLE_PROTO:
            for t2, o2, n2 in iter_attrs(data, o, o + n):
                if t2 == core.CTA_PROTO_NUM and n2 >= 1:
                    proto = data[o2]
                elif n2 >= 2 and t2 in (core.CTA_PROTO_SRC_PORT, core.CTA_PROTO_DST_PORT,
                                        core.CTA_PROTO_ICMP_ID, core.CTA_PROTO_ICMPV6_ID):
                    vals[t2] = _BE16.unpack_from(data, o2)[0]
                elif n2 >= 1:
                    vals[t2] = data[o2]
    if src is None or dst is None:
        raise ValueError("a conntrack tuple without addresses")
    g = vals.get
    t = _TupleB(src, dst, _PROTO[proto], g(core.CTA_PROTO_SRC_PORT), g(core.CTA_PROTO_DST_PORT),
                g(core.CTA_PROTO_ICMP_TYPE, g(core.CTA_PROTO_ICMPV6_TYPE)),
                g(core.CTA_PROTO_ICMP_CODE, g(core.CTA_PROTO_ICMPV6_CODE)),
                g(core.CTA_PROTO_ICMP_ID, g(core.CTA_PROTO_ICMPV6_ID)))
    t.__class__ = Tuple
    return t


def _cstr(data: bytes, o: int, n: int) -> str:
    return data[o:o + n].split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_expect(msg: bytes) -> Expectation:
    end = _NLMSG.unpack_from(msg, 0)[0]
    kw: Dict[str, Any] = {}
    for t, o, n in iter_attrs(msg, 20, end):
        if t == core.CTA_EXPECT_MASTER:
            kw["master"] = _py_tuple(msg, o, o + n)
        elif t == core.CTA_EXPECT_TUPLE:
            kw["expected"] = _py_tuple(msg, o, o + n)
        elif t == core.CTA_EXPECT_MASK:
            kw["mask"] = _py_tuple(msg, o, o + n)
        elif t == core.CTA_EXPECT_TIMEOUT and n >= 4:
            kw["timeout"] = _BE32.unpack_from(msg, o)[0]
        elif t == core.CTA_EXPECT_ID and n >= 4:
            kw["id"] = _BE32.unpack_from(msg, o)[0]
        elif t == core.CTA_EXPECT_ZONE and n >= 2:
            kw["zone"] = _BE16.unpack_from(msg, o)[0]
        elif t == core.CTA_EXPECT_FLAGS and n >= 4:
            kw["flags"] = ExpectFlag(_BE32.unpack_from(msg, o)[0])
        elif t == core.CTA_EXPECT_CLASS and n >= 4:
            kw["klass"] = _BE32.unpack_from(msg, o)[0]
        elif t == core.CTA_EXPECT_HELP_NAME:
            kw["helper"] = _cstr(msg, o, n)
        elif t == core.CTA_EXPECT_FN:
            kw["fn"] = _cstr(msg, o, n)
    missing = [k for k in ("master", "expected", "mask") if k not in kw]
    if missing:
        raise ValueError("an expectation without %s" % ", ".join(missing))
    return Expectation(**kw)


# -- labels ------------------------------------------------------------------------------------


class LabelMap:
    """Label names <-> bits, from connlabel.conf (``nfct_labelmap_*``).

    ``path`` defaults to libnetfilter_conntrack's (``/etc/xtables/connlabel.conf``).
    The file has one ``BIT NAME`` per line, e.g. ``3 suspicious``.

    Raises FileNotFoundError (with what to write) when the file is missing,
    ValueError when libnetfilter_conntrack cannot read it.
    """

    def __init__(self, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        if path is None:
            p = lib.nfct_labels_get_path()
            path = ffi.string(p).decode() if p != ffi.NULL else "/etc/xtables/connlabel.conf"
        self.path = os.fsdecode(os.fspath(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                errno.ENOENT,
                "no connlabel.conf at %s: label names need it. Create it with one "
                "'BIT NAME' per line (e.g. `echo '3 suspicious' >> %s`), pass "
                "labelmap='/path/to/connlabel.conf', or use label bit numbers (0..%d)"
                % (self.path, self.path, MAX_LABEL),
                self.path,
            )
        m = lib.nfct_labelmap_new(os.fsencode(self.path))
        if m == ffi.NULL:
            raise ValueError(
                "libnetfilter_conntrack could not read %s (%s): each line must be "
                "'BIT NAME' with BIT in 0..%d"
                % (self.path, os.strerror(ffi.errno or errno.EINVAL), MAX_LABEL)
            )
        self._m = ffi.gc(m, lib.nfct_labelmap_destroy)

    def bit(self, name: str) -> int:
        """The bit of label ``name``.  Raises KeyError naming the file."""
        if not isinstance(name, str):
            raise TypeError("a label name must be a str, not %s" % type(name).__name__)
        try:
            raw = name.encode()
        except UnicodeEncodeError:  # a lone surrogate: no such name in any file
            raw = None
        b = lib.nfct_labelmap_get_bit(self._m, raw) if raw is not None else -1
        if b < 0:
            raise KeyError("no label named %r in %s" % (name, self.path))
        return b

    def name(self, bit: int) -> Optional[str]:
        """The name of label ``bit``, or None when connlabel.conf names none."""
        bit = check_int("bit", bit, 0, MAX_LABEL)
        p = lib.nfct_labelmap_get_name(self._m, bit)
        if p == ffi.NULL:
            return None
        s = ffi.string(p).decode("utf-8", "replace")
        return s or None

    def names(self, bits: Iterable[int]) -> Set[str]:
        """Names of the given bits (unnamed bits are left out)."""
        out = set()
        for b in bits:
            n = self.name(b)
            if n is not None:
                out.add(n)
        return out

    def __repr__(self) -> str:
        return "<nfbind.LabelMap %s>" % self.path


# -- sockets -------------------------------------------------------------------------------------


class _Handle:
    """One request socket with its C state (receive buffer, batch)."""

    __slots__ = ("sock", "c", "buf", "busy")

    def __init__(self, netns: _netns.NetNS) -> None:
        self.sock = open_netfilter_socket(netns)
        try:
            try:
                self.sock.setsockopt(core.SOL_NETLINK, core.NETLINK_EXT_ACK, 1)
            except OSError:
                pass
            c = lib.nfb_ct_new(self.sock.fileno(), 0)
            if c == ffi.NULL:
                raise MemoryError("allocating conntrack buffers")
            self.c = ffi.gc(c, lib.nfb_ct_free)
            self.buf = ffi.new("char[]", lib.NFB_CT_BUFSIZE)
            self.busy = False
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()


_TABLES = {
    "conntrack": core.IPCTNL_MSG_CT_GET,
    "dying": core.IPCTNL_MSG_CT_GET_DYING,
    "unconfirmed": core.IPCTNL_MSG_CT_GET_UNCONFIRMED,
}

#: records per receive call (one C call drains datagrams until it has these)
_BATCH = 8192
#: flows built before dump() hands them out (the latency and memory of a
#: dump's first flow; bigger chunks mean fewer garbage-collector passes)
_CHUNK = 65536


def _fill_tuple(t: Any, tup: Tuple) -> None:
    raw = tup.src.packed
    ffi.memmove(t.src, raw, len(raw))
    raw = tup.dst.packed
    ffi.memmove(t.dst, raw, len(raw))
    t.proto = int(tup.proto)
    if tup.sport is not None:
        t.sport = tup.sport
    if tup.dport is not None:
        t.dport = tup.dport
    if tup.icmp_type is not None:
        t.icmp_type = tup.icmp_type
    t.icmp_code = tup.icmp_code or 0
    if tup.icmp_id is not None:
        t.icmp_id = tup.icmp_id


def _complete(tup: Tuple, what: str) -> None:
    """A tuple the kernel can look up: ports for port protocols, type and id for ICMP."""
    name = getattr(tup.proto, "name", str(tup.proto)).lower()
    if tup.proto in _PORT_PROTOS and (tup.sport is None or tup.dport is None):
        raise ValueError("%s: a %s tuple needs sport and dport" % (what, name))
    if tup.proto in _ICMP_PROTOS and (tup.icmp_type is None or tup.icmp_id is None):
        raise ValueError("%s: an %s tuple needs icmp_type and icmp_id (icmp_code defaults to 0)"
                         % (what, name))


def _as_tuple(obj: Any, what: str) -> Tuple:
    if isinstance(obj, Flow):
        return obj.orig
    if isinstance(obj, Tuple):
        return obj
    raise TypeError("%s needs a Flow or a Tuple, not %s" % (what, type(obj).__name__))


class _Batches:
    """The record batches of one dump, received ahead on a second thread.

    A dump's time is split about evenly between the kernel walking its table
    (inside the receive call, with the GIL released) and Python building
    Flow objects.  After the first batch, when more is to come, a receiver
    thread fetches the next batches while the caller builds the current one,
    so the two overlap on machines with more than one CPU.  At most
    ``_AHEAD`` batches wait, so a slow consumer pauses the kernel's dump
    instead of buffering the table.  Small dumps never start the thread.

    ``next()`` returns ``(records, count, data, nv6)`` for
    :func:`_build_flows`, or None at the end; it raises what the receive
    raised.  ``stop()`` ends the thread and says whether the handle may be
    released (False only if the thread is stuck in a receive).
    """

    __slots__ = ("ct", "h", "op", "q", "thread", "halt")

    def __init__(self, ct: "Conntrack", h: _Handle, op: str) -> None:
        self.ct = ct
        self.h = h
        self.op = op
        self.q: Any = None
        self.thread: Optional[threading.Thread] = None
        self.halt = False

    def _take(self) -> tuple:
        """Receive one batch; a copy of the records (the C buffer is reused)."""
        c = self.h.c
        n = self.ct._recv(self.h, lib.NFB_M_RECORDS, _BATCH, self.op)
        return (ffi.buffer(c.recs, n * _RS)[:] if n else b"", n,
                ffi.buffer(c.data, c.data_len)[:] if c.data_len else b"", c.nv6)

    def _run(self) -> None:
        q = self.q
        try:
            while not self.h.c.done and not self.halt:
                q.put(self._take())
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    def next(self) -> Optional[tuple]:
        if self.q is None:
            if self.h.c.done:
                return None
            batch = self._take()
            if not self.h.c.done and _PREFETCH:
                self.q = _queue.Queue(_AHEAD)
                self.thread = threading.Thread(target=self._run, name="nfbind-ct-dump",
                                               daemon=True)
                self.thread.start()
            return batch
        item = self.q.get()
        if isinstance(item, BaseException):
            self.q = _Done
            raise item
        if item is None:
            self.q = _Done
        return item

    def stop(self) -> bool:
        t = self.thread
        if t is None:
            return True
        self.halt = True
        # the thread ends after its current receive, each poll of which is
        # bounded by the request timeout
        deadline = _time.monotonic() + self.ct._timeout_ms / 1000 + 5
        while t.is_alive() and _time.monotonic() < deadline:
            if isinstance(self.q, _queue.Queue):
                try:  # make room for a blocked put()
                    while True:
                        self.q.get_nowait()
                except _queue.Empty:
                    pass
            t.join(0.05)
        return not t.is_alive()


class _DoneQueue:
    """What a finished _Batches reads from: the end, again."""

    @staticmethod
    def get() -> None:
        return None


_Done = _DoneQueue()
#: batches a dump's receiver thread may fetch ahead of the consumer
_AHEAD = 4
#: receive ahead on a second thread (see _Batches)
_PREFETCH = (os.cpu_count() or 1) > 1


class Conntrack:
    """The connection tracking table of a network namespace.

    Args:
        netns: a namespace name, path or fd (see :mod:`nfbind.netns`); None
            for the caller's.
        timeout: seconds to wait for each answer of the kernel.
        labelmap: path of connlabel.conf for label names (or a
            :class:`LabelMap`); read on first use of a name.

    Every request takes a socket of its own from a small pool, so a dump
    can be iterated while ``update()``/``delete()`` run on its flows, and
    the object can be shared between threads.

    Raises:
        ValueError, TypeError: a bad argument.
        FileNotFoundError: ``netns`` does not exist.
        PermissionDenied: entering ``netns`` needs CAP_SYS_ADMIN.
    """

    def __init__(self, *, netns: _netns.NetNS = None, timeout: float = 5.0,
                 labelmap: Union[None, str, "os.PathLike[str]", LabelMap] = None) -> None:
        self._closed = True
        _netns.resolve(netns)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ValueError("timeout must be a number of seconds in (0, 3600], got %r" % (timeout,))
        if labelmap is not None and not isinstance(labelmap, (str, os.PathLike, LabelMap)):
            raise TypeError("labelmap must be a path or a LabelMap, not %s" % type(labelmap).__name__)
        self._netns = netns
        self._timeout_ms = int(timeout * 1000)
        self._labelmap_arg = labelmap
        self._labelmap: Optional[LabelMap] = labelmap if isinstance(labelmap, LabelMap) else None
        self._lock = threading.Lock()
        self._idle: List[_Handle] = []
        self._open: Set[_Handle] = set()
        h = _Handle(netns)
        self._open.add(h)
        self._idle.append(h)
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("Conntrack is closed; create a new one")

    def _acquire(self) -> _Handle:
        with self._lock:
            self._check_open()
            if self._idle:
                h = self._idle.pop()
                h.busy = True
                return h
        h = _Handle(self._netns)
        with self._lock:
            if self._closed:
                h.close()
                self._check_open()
            h.busy = True
            self._open.add(h)
        return h

    def _release(self, h: _Handle, reuse: bool = True) -> None:
        with self._lock:
            h.busy = False
            if reuse and not self._closed and len(self._idle) < 4:
                self._idle.append(h)
                return
            self._open.discard(h)
        h.close()

    def _error(self, h: _Handle, err: int, op: str, hint: Optional[str] = None,
               not_found: Optional[str] = None) -> NetlinkError:
        said = ffi.string(h.c.errmsg).decode("utf-8", "replace") if h.c.errmsg[0] else ""
        if err == errno.ENOENT and not_found is not None:
            hint = not_found
        if said:
            hint = (hint + "; " if hint else "") + "the kernel says: " + said
        if err == errno.ENOENT and not_found is not None:
            return NotFound(err, op, hint)
        if err in (errno.EPERM, errno.EACCES):
            return PermissionDenied(err, op)
        return error_from_errno(err, op, hint=hint)

    def _send(self, h: _Handle, n: int, op: str) -> None:
        if n < 0:
            raise error_from_errno(-n, op, hint="building the request failed")
        rc = lib.nfb_ct_send(h.c, h.buf, n)
        if rc < 0:
            if self._closed:
                raise ClosedError("Conntrack was closed during %s" % op)
            raise error_from_errno(-rc, op)

    def _recv(self, h: _Handle, mode: int, max_items: int, op: str) -> int:
        n = lib.nfb_ct_recv_answer(h.c, mode, max_items, self._timeout_ms)
        if n < 0:
            if self._closed:
                raise ClosedError("Conntrack was closed during %s" % op)
            if n == -errno.ETIMEDOUT:
                raise NetlinkError(errno.ETIMEDOUT, op,
                                   "the kernel did not answer within %.1f s" % (self._timeout_ms / 1000))
            raise error_from_errno(-n, op)
        return n

    def _transact(self, build: Callable[[_Handle], int], op: str, *, mode: int = 0,
                  hint: Optional[str] = None, not_found: Optional[str] = None,
                  want: bool = False) -> Any:
        """Send one request and wait for its complete answer.

        Returns the records (mode 0: bytes and count) or raw messages (mode 1:
        a list of bytes) when ``want``.
        """
        h = self._acquire()
        ok = False
        try:
            self._send(h, build(h), op)
            recs: List[bytes] = []
            count = 0
            data = b""
            while True:
                n = self._recv(h, mode, 1 << 30, op)
                c = h.c
                if want and n:
                    if mode == lib.NFB_M_RAW:
                        blob = ffi.buffer(c.data, c.data_len)[:]
                        offs = ffi.unpack(c.moffs, n)
                        for o in offs:
                            ln = _NLMSG.unpack_from(blob, o)[0]
                            recs.append(blob[o:o + ln])
                    else:
                        recs.append(ffi.buffer(c.recs, n * _RS)[:])
                        data = ffi.buffer(c.data, c.data_len)[:] if c.data_len else b""
                    count += n
                if c.done:
                    break
            if h.c.error < 0:
                raise self._error(h, -h.c.error, op, hint, not_found)
            ok = True
            if not want:
                return None
            if mode == lib.NFB_M_RAW:
                return recs
            return b"".join(recs), count, data
        finally:
            self._release(h, ok)

    @property
    def labelmap(self) -> LabelMap:
        """The :class:`LabelMap` for label names (connlabel.conf), loaded on first use.

        Raises FileNotFoundError when connlabel.conf is missing."""
        if self._labelmap is None:
            arg = self._labelmap_arg
            self._labelmap = LabelMap(arg if not isinstance(arg, LabelMap) else None)
        return self._labelmap

    def _labels(self, name: str, values: Any) -> FrozenSet[int]:
        return _label_bits(name, values, lambda: self.labelmap)

    def label_names(self, flow_or_labels: Union["Flow", Iterable[int]]) -> Set[str]:
        """The names (from connlabel.conf) of a flow's labels."""
        bits = flow_or_labels.labels if isinstance(flow_or_labels, Flow) else flow_or_labels
        return self.labelmap.names(bits)

    def label_bits(self, labels: Union[int, str, Iterable[Union[int, str]]]) -> FrozenSet[int]:
        """The bits of ``labels``: bit numbers (0..127) and label names, which
        are looked up in connlabel.conf (:attr:`labelmap`), e.g. for a
        :class:`Flow` to :meth:`create`: ``ct.label_bits(["suspicious", 5])``.

        Raises ValueError/TypeError for a bad bit or value, KeyError for a
        name connlabel.conf does not define, FileNotFoundError when a name is
        given and connlabel.conf is missing.
        """
        return _label_bits("labels", labels, lambda: self.labelmap)

    # -- dumps ----------------------------------------------------------------------------

    def dump(
        self,
        family: Union[None, int, str] = None,
        *,
        mark: Optional[int] = None,
        mark_mask: int = _U32_MAX,
        zone: Optional[int] = None,
        status: Optional[int] = None,
        status_mask: Optional[int] = None,
        table: str = "conntrack",
    ) -> Iterator[Flow]:
        """Yield the flows of the table.

        Flows are received and built in chunks of up to 65536 (one C call
        per 8192 records), so the first flow comes once its chunk is built.
        On a machine with more than one CPU, a large dump's later batches are
        received on a second thread while the first ones are built.

        Args:
            family: AF_INET/AF_INET6 (or "ipv4"/"ipv6"); None for both.
            mark, mark_mask: only flows with ``flow.mark & mark_mask == mark & mark_mask``.
            zone: only flows of this conntrack zone (filtered in userspace).
            status, status_mask: only flows with ``flow.status & status_mask ==
                status & status_mask``; ``status_mask`` defaults to ``status``
                ("all these bits set").
            table: "conntrack" (default), "dying" (flows being destroyed) or
                "unconfirmed" (not yet confirmed; recent kernels keep no such
                list and return nothing).

        The request is sent at the first ``next()``; breaking out of the loop
        early is fine.

        Raises ValueError/TypeError for bad arguments, PermissionDenied
        without CAP_NET_ADMIN, NetlinkError for other refusals, ClosedError.
        """
        fam = _family("family", family)
        mk = _opt(_u32, "mark", mark)
        mmask = _u32("mark_mask", mark_mask)
        zn = _opt(_u16, "zone", zone)
        st, smask = _status_filter(status, status_mask)
        if table not in _TABLES:
            raise ValueError("table must be one of %s, got %r" % (", ".join(_TABLES), table))
        self._check_open()
        return self._dump(fam, mk, mmask, zn, st, smask, table)

    def _dump(self, fam: Optional[int], mark: Optional[int], mmask: int, zone: Optional[int],
              status: Optional[int], smask: Optional[int], table: str) -> Iterator[Flow]:
        msg = _TABLES[table]
        op = "dumping the %s table" % table
        kernel_filter = table == "conntrack"

        def build(h: _Handle) -> int:
            if not kernel_filter:
                return lib.nfb_ct_build_simple(h.buf, core.NFNL_SUBSYS_CTNETLINK, msg,
                                               core.NLM_F_DUMP, fam or 0, 0)
            return lib.nfb_ct_build_filtered(h.buf, msg, core.NLM_F_DUMP,
                                             _dump_filter(fam, mark, mmask, status, smask))

        check_mark = mark is not None
        want_mark = (mark or 0) & mmask
        check_status = status is not None
        smask_ = smask or 0
        want_status = (status or 0) & smask_
        filtered = fam is not None or check_mark or check_status or zone is not None
        h = self._acquire()
        ok = False
        batches = _Batches(self, h, op)
        try:
            self._send(h, build(h), op)
            more = True
            while more:
                # Receive and build up to _CHUNK flows with the garbage
                # collector paused throughout (no code of the caller runs
                # meanwhile), then hand them out: the new objects are then
                # traversed by one collection instead of one per batch.
                flows: List[Flow] = []
                gc_was_on = _gc.isenabled()
                if gc_was_on:
                    _gc.disable()
                try:
                    while len(flows) < _CHUNK:
                        batch = batches.next()
                        if batch is None:
                            more = False
                            break
                        if batch[1]:
                            _build_flows(batch[0], batch[1], batch[2], flows, batch[3])
                finally:
                    if gc_was_on:
                        _gc.enable()
                if not filtered:
                    yield from flows
                    continue
                for f in flows:
                    if fam is not None and f.family != fam:
                        continue
                    if check_mark and f.mark & mmask != want_mark:
                        continue
                    if check_status and f.status & smask_ != want_status:
                        continue
                    if zone is not None and f.zone != zone:
                        continue
                    yield f
            if h.c.error < 0:
                raise self._error(h, -h.c.error, op)
            ok = True
        finally:
            # an abandoned dump leaves answers queued on the socket: drop it
            if batches.stop():
                self._release(h, ok)

    def list(self, table: str = "conntrack", **filters: Any) -> _t.List[Any]:
        """All flows (``table="conntrack"``, "dying", "unconfirmed") or all
        expectations (``table="expect"``) as a list: conntrack-go's ConntrackTableList.

        ``filters`` are :meth:`dump`'s (family, mark, mark_mask, zone, status).
        Raises what :meth:`dump` raises."""
        if table == "expect":
            return list(self.dump_expect(**filters))
        return list(self.dump(table=table, **filters))

    # -- single flows ---------------------------------------------------------------------

    def _spec(self, tup: Tuple, zone: Optional[int]) -> Any:
        s = ffi.new("struct nfb_ct_spec *")
        s.family = _AF_INET if tup.src.version == 4 else _AF_INET6
        s.set = lib.NFB_S_ORIG
        _fill_tuple(s.orig, tup)
        if zone:
            s.set |= lib.NFB_S_ZONE
            s.zone = zone
        return s

    @staticmethod
    def _zone_of(obj: TupleOrFlow, zone: Optional[int]) -> int:
        if zone is not None:
            return _u16("zone", zone)
        return obj.zone if isinstance(obj, Flow) else 0

    def get(self, flow_or_tuple: TupleOrFlow, *, zone: Optional[int] = None) -> Flow:
        """The current state of one flow, looked up by its original tuple.

        ``zone`` defaults to the Flow's zone (0 for a Tuple).

        Raises NotFound (errno ENOENT) when the table has no such flow,
        ValueError/TypeError for an incomplete or bad tuple,
        PermissionDenied, NetlinkError, ClosedError.
        """
        tup = _as_tuple(flow_or_tuple, "get()")
        _complete(tup, "get()")
        zn = self._zone_of(flow_or_tuple, zone)
        spec = self._spec(tup, zn)
        op = "getting flow %s (zone %d)" % (tup, zn)
        recs, n, data = self._transact(
            lambda h: lib.nfb_ct_build(h.buf, core.IPCTNL_MSG_CT_GET, core.NLM_F_ACK, spec),
            op, want=True,
            not_found="no such flow in the table (in zone %d): it may have expired or never "
            "existed; dump() lists the flows" % zn,
        )
        flows: List[Flow] = []
        _build_flows(recs, n, data, flows)
        if not flows:
            raise NotFound(errno.ENOENT, op, "the kernel answered without a flow")
        return flows[0]

    def create(self, flow: Flow) -> None:
        """Add ``flow`` to the table.

        Needs ``flow.orig`` and ``flow.timeout``; ``reply`` defaults to the
        inverse of ``orig``.  Also sent when set: status, mark, zone, labels
        (needs a connlabel rule), state (TCP/SCTP), helper, nat (the
        ``nat`` table must be in use in the namespace).

        Raises ValueError/TypeError (before any syscall), NetlinkError with
        errno EEXIST when the flow exists, ENOSPC for labels without the
        connlabel extension (the message names the fix), PermissionDenied,
        ClosedError.
        """
        if not isinstance(flow, Flow):
            raise TypeError("create() needs a Flow, not %s" % type(flow).__name__)
        _complete(flow.orig, "create()")
        if flow.reply is not None:
            _complete(flow.reply, "create() reply")
        if flow.timeout is None:
            raise ValueError("create() needs Flow(timeout=SECONDS): the kernel refuses a flow without one")
        s = self._spec(flow.orig, flow.zone)
        if flow.reply is not None:
            s.set |= lib.NFB_S_REPLY
            _fill_tuple(s.reply, flow.reply)
        else:
            s.set |= lib.NFB_S_SETUP_REPLY
        s.set |= lib.NFB_S_TIMEOUT
        s.timeout = flow.timeout
        if flow.status:
            s.set |= lib.NFB_S_STATUS
            s.status = int(flow.status)
        if flow.mark:
            s.set |= lib.NFB_S_MARK
            s.mark = flow.mark
        if flow.labels:
            s.set |= lib.NFB_S_LABELS
            ffi.memmove(s.labels, _labels_bytes(flow.labels), 16)
        if flow.state is not None:
            s.set |= lib.NFB_S_STATE
            s.state = int(flow.state)
        if flow.helper is not None:
            s.set |= lib.NFB_S_HELPER
            ffi.memmove(s.helper, flow.helper.encode(), len(flow.helper.encode()))
        if flow.nat is not None:
            for ep, abit, pbit, afield, pfield in (
                (flow.nat.snat, lib.NFB_S_SNAT, lib.NFB_S_SNAT_PORT, "snat_addr", "snat_port"),
                (flow.nat.dnat, lib.NFB_S_DNAT, lib.NFB_S_DNAT_PORT, "dnat_addr", "dnat_port"),
            ):
                if ep is None:
                    continue
                a = _addr("nat address", ep[0])
                if a.version != flow.orig.src.version:
                    raise ValueError("nat address %s is not of the flow's IP version" % a)
                s.set |= abit
                ffi.memmove(getattr(s, afield), a.packed, len(a.packed))
                if ep[1] is not None:
                    s.set |= pbit
                    setattr(s, pfield, _u16("nat port", ep[1]))
        op = "creating flow %s" % flow.orig
        hint = {
            errno.EEXIST: "the flow is in the table already: update() it, or delete() it first",
            errno.ENOSPC: LABEL_HINT % ((min(flow.labels),) * 2) if flow.labels else None,
            errno.EOPNOTSUPP: "the kernel does not support something requested "
                              "(a helper name it does not know, or NAT without the nat table in use)",
            errno.EINVAL: "the kernel rejected an attribute: check both tuples and the timeout",
        }
        self._transact_hinted(
            lambda h: lib.nfb_ct_build(
                h.buf, core.IPCTNL_MSG_CT_NEW, core.NLM_F_ACK | core.NLM_F_CREATE | core.NLM_F_EXCL, s),
            op, hint)
        if flow.labels:
            # the kernel creates the flow without its labels (and says nothing)
            # when no rule allocated the label extension: undo and say so
            got = self.get(flow.orig, zone=flow.zone)
            if not flow.labels <= got.labels:
                try:
                    self.delete(got)
                except NotFound:
                    pass
                raise NetlinkError(errno.ENOSPC, op, LABEL_HINT % ((min(flow.labels),) * 2))

    def _transact_hinted(self, build: Callable[[_Handle], int], op: str,
                         hints: Dict[int, Optional[str]], not_found: Optional[str] = None) -> None:
        try:
            self._transact(build, op, not_found=not_found)
        except NotFound:
            raise
        except NetlinkError as e:
            err = e.errno or 0
            hint = hints.get(err)
            if hint and type(e) is NetlinkError:
                raise NetlinkError(err, op, (hint + "; " + e.hint) if e.hint else hint) from None
            raise

    def update(
        self,
        flow_or_tuple: TupleOrFlow,
        *,
        mark: Optional[int] = None,
        labels: Optional[Iterable[Union[int, str]]] = None,
        labels_add: Optional[Iterable[Union[int, str]]] = None,
        labels_remove: Optional[Iterable[Union[int, str]]] = None,
        timeout: Optional[int] = None,
        status: Optional[int] = None,
        zone: Optional[int] = None,
    ) -> None:
        """Change a flow in place, sending only the tuple, the zone and what changes.

        Args:
            mark: the new connection mark (u32).
            labels: replace all labels by these (bits 0..127 or names from
                connlabel.conf); ``labels=()`` clears them.
            labels_add, labels_remove: set / clear just these labels.
            timeout: seconds until the flow expires.
            status: the new status bits (:class:`CtStatus`); the kernel
                ignores bits it manages itself and refuses to clear
                SEEN_REPLY or ASSURED (EBUSY).
            zone: the zone to look the flow up in (default: the Flow's, 0).

        Raises ValueError/TypeError (nothing to change, bad values, labels=
        with labels_add/labels_remove), NotFound (ENOENT), NetlinkError
        (ENOSPC: no connlabel rule — the message names the fix; EBUSY: a
        status change the kernel refuses), PermissionDenied, ClosedError,
        FileNotFoundError for label names without connlabel.conf.
        """
        tup = _as_tuple(flow_or_tuple, "update()")
        _complete(tup, "update()")
        zn = self._zone_of(flow_or_tuple, zone)
        mk = _opt(_u32, "mark", mark)
        to = _opt(_u32, "timeout", timeout)
        st = _opt(_u32, "status", status)
        if labels is not None and (labels_add is not None or labels_remove is not None):
            raise ValueError("pass labels= (replace all) or labels_add=/labels_remove=, not both")
        lb = lm = None
        if labels is not None:
            lb = self._labels("labels", labels)
            lm = frozenset(range(MAX_LABEL + 1))
        elif labels_add is not None or labels_remove is not None:
            add = self._labels("labels_add", labels_add if labels_add is not None else ())
            rem = self._labels("labels_remove", labels_remove if labels_remove is not None else ())
            if add & rem:
                raise ValueError("labels %s are both added and removed" % sorted(add & rem))
            lb, lm = add, add | rem
            if not lm:
                lb = lm = None
        if mk is None and to is None and st is None and lm is None:
            raise ValueError(
                "update() needs something to change: mark=, labels=, labels_add=, "
                "labels_remove=, timeout= or status=")
        s = self._spec(tup, zn)
        if mk is not None:
            s.set |= lib.NFB_S_MARK
            s.mark = mk
        if to is not None:
            s.set |= lib.NFB_S_TIMEOUT
            s.timeout = to
        if st is not None:
            s.set |= lib.NFB_S_STATUS
            s.status = st
        if lm is not None:
            assert lb is not None
            s.set |= lib.NFB_S_LABELS | lib.NFB_S_LABELS_MASK
            ffi.memmove(s.labels, _labels_bytes(lb), 16)
            ffi.memmove(s.labels_mask, _labels_bytes(lm), 16)
        op = "updating flow %s (zone %d)" % (tup, zn)
        first = min(lb) if lb else (min(lm) if lm else 0)
        self._transact_hinted(
            lambda h: lib.nfb_ct_build(h.buf, core.IPCTNL_MSG_CT_NEW, core.NLM_F_ACK, s),
            op,
            {
                errno.ENOSPC: LABEL_HINT % (first, first),
                errno.EBUSY: "the kernel refuses this status change (clearing SEEN_REPLY "
                             "or ASSURED, or changing NAT bits)",
                errno.EOPNOTSUPP: "the kernel cannot change this on an existing flow",
                errno.EINVAL: "the kernel rejected an attribute of the update",
            },
            not_found="no such flow in the table (update() does not create flows: use create())",
        )

    def delete(self, flow_or_tuple: TupleOrFlow, *, zone: Optional[int] = None) -> None:
        """Remove a flow.  A Flow with an ``id`` deletes only that instance
        (not a newer flow with the same tuple).

        Raises NotFound (ENOENT), ValueError/TypeError, PermissionDenied,
        NetlinkError, ClosedError.
        """
        tup = _as_tuple(flow_or_tuple, "delete()")
        _complete(tup, "delete()")
        zn = self._zone_of(flow_or_tuple, zone)
        s = self._spec(tup, zn)
        if isinstance(flow_or_tuple, Flow) and flow_or_tuple.id is not None:
            s.set |= lib.NFB_S_ID
            s.id = flow_or_tuple.id
        self._transact(
            lambda h: lib.nfb_ct_build(h.buf, core.IPCTNL_MSG_CT_DELETE, core.NLM_F_ACK, s),
            "deleting flow %s (zone %d)" % (tup, zn),
            not_found="no such flow in the table (already gone, or a different id)",
        )

    def flush(self, family: Union[None, int, str] = None, *, mark: Optional[int] = None,
              mark_mask: int = _U32_MAX, status: Optional[int] = None,
              status_mask: Optional[int] = None) -> None:
        """Delete every flow, or those of one family and/or with a mark or
        status (filtered by the kernel, in one request).

        Raises ValueError/TypeError for bad filters, PermissionDenied,
        NetlinkError (EOPNOTSUPP: the kernel cannot flush with that filter),
        ClosedError.
        """
        fam = _family("family", family)
        mk = _opt(_u32, "mark", mark)
        mmask = _u32("mark_mask", mark_mask)
        st, smask = _status_filter(status, status_mask)
        f = _dump_filter(fam, mk, mmask, st, smask)
        what = []
        if fam:
            what.append(_FAMILY[fam].name)
        if mk is not None:
            what.append("mark %#x/%#x" % (mk, mmask))
        if st is not None:
            what.append("status %#x/%#x" % (st, smask or 0))
        op = "flushing %s flows" % (" ".join(what) if what else "all")
        self._transact_hinted(
            lambda h: lib.nfb_ct_build_filtered(h.buf, core.IPCTNL_MSG_CT_DELETE, core.NLM_F_ACK, f),
            op,
            {errno.EOPNOTSUPP: "this kernel cannot flush with that filter: dump() with the "
                               "filter and delete() each flow instead"},
        )

    # -- statistics -----------------------------------------------------------------------

    def _global_stats(self) -> _t.Tuple[int, Optional[int]]:
        msgs = self._transact(
            lambda h: lib.nfb_ct_build_simple(h.buf, core.NFNL_SUBSYS_CTNETLINK,
                                              core.IPCTNL_MSG_CT_GET_STATS, core.NLM_F_ACK, 0, 0),
            "reading the conntrack table size", mode=lib.NFB_M_RAW, want=True)
        entries, limit = 0, None
        for m in msgs:
            end = _NLMSG.unpack_from(m, 0)[0]
            for t, o, n in iter_attrs(m, 20, end):
                if t == core.CTA_STATS_GLOBAL_ENTRIES and n >= 4:
                    entries = _BE32.unpack_from(m, o)[0]
                elif t == core.CTA_STATS_GLOBAL_MAX_ENTRIES and n >= 4:
                    limit = _BE32.unpack_from(m, o)[0]
        return entries, limit

    def count(self) -> int:
        """The number of flows in the table (IPCTNL_MSG_CT_GET_STATS).

        Raises PermissionDenied, NetlinkError, ClosedError."""
        return self._global_stats()[0]

    def stats(self) -> CtStats:
        """Per-CPU counters (IPCTNL_MSG_CT_GET_STATS_CPU), the number of
        entries and the table's maximum (nf_conntrack_max).

        Raises PermissionDenied, NetlinkError, ClosedError."""
        msgs = self._transact(
            lambda h: lib.nfb_ct_build_simple(h.buf, core.NFNL_SUBSYS_CTNETLINK,
                                              core.IPCTNL_MSG_CT_GET_STATS_CPU, core.NLM_F_DUMP, 0, 0),
            "reading per-CPU conntrack statistics", mode=lib.NFB_M_RAW, want=True)
        names = dict(_CPU_FIELDS)
        cpus = []
        for m in msgs:
            end = _NLMSG.unpack_from(m, 0)[0]
            cpu = _BE16.unpack_from(m, 18)[0]
            kw: Dict[str, int] = {}
            for t, o, n in iter_attrs(m, 20, end):
                name = names.get(t)
                if name is not None and n >= 4:
                    kw[name] = _BE32.unpack_from(m, o)[0]
            cpus.append(CpuStats(cpu, **kw))
        entries, limit = self._global_stats()
        if limit is None:
            limit = _netns.call_in(self._netns, _read_int, "/proc/sys/net/netfilter/nf_conntrack_max")
        return CtStats(entries, limit, tuple(sorted(cpus, key=lambda c: c.cpu)))

    # -- expectations ---------------------------------------------------------------------

    def dump_expect(self, family: Union[None, int, str] = None, *,
                    zone: Optional[int] = None) -> Iterator[Expectation]:
        """Yield the expectations (the expect table).

        Raises ValueError/TypeError, PermissionDenied, NetlinkError, ClosedError."""
        fam = _family("family", family)
        zn = _opt(_u16, "zone", zone)
        self._check_open()
        msgs = self._transact(
            lambda h: lib.nfb_ct_build_simple(h.buf, core.NFNL_SUBSYS_CTNETLINK_EXP,
                                              core.IPCTNL_MSG_EXP_GET, core.NLM_F_DUMP, fam or 0, 0),
            "dumping the expect table", mode=lib.NFB_M_RAW, want=True)
        return iter([e for e in map(_parse_expect, msgs)
                     if (fam is None or e.family == fam) and (zn is None or e.zone == zn)])

    def _exp_spec(self, exp: Expectation) -> Any:
        s = ffi.new("struct nfb_exp_spec *")
        s.family = _AF_INET if exp.expected.src.version == 4 else _AF_INET6
        s.set = lib.NFB_ES_MASTER | lib.NFB_ES_EXPECTED | lib.NFB_ES_MASK
        _fill_tuple(s.master, exp.master)
        _fill_tuple(s.expected, exp.expected)
        _fill_tuple(s.mask, exp.mask)
        if exp.timeout is not None:
            s.set |= lib.NFB_ES_TIMEOUT
            s.timeout = exp.timeout
        if exp.zone:
            s.set |= lib.NFB_ES_ZONE
            s.zone = exp.zone
        if exp.flags:
            s.set |= lib.NFB_ES_FLAGS
            s.flags = int(exp.flags)
        if exp.klass is not None:
            s.set |= lib.NFB_ES_CLASS
            s.klass = exp.klass
        if exp.helper is not None:
            s.set |= lib.NFB_ES_HELPER
            ffi.memmove(s.helper, exp.helper.encode(), len(exp.helper.encode()))
        return s

    def create_expect(self, exp: Expectation) -> None:
        """Add an expectation.  Its master flow must exist and have a helper
        (e.g. created through ``-j CT --helper ftp``); ``timeout`` is required.

        Raises ValueError/TypeError, NotFound (no such master flow),
        NetlinkError (EEXIST; EOPNOTSUPP: the master has no helper, or the
        helper is unknown), PermissionDenied, ClosedError.
        """
        if not isinstance(exp, Expectation):
            raise TypeError("create_expect() needs an Expectation, not %s" % type(exp).__name__)
        _complete(exp.master, "create_expect() master")
        if exp.timeout is None:
            raise ValueError("create_expect() needs Expectation(timeout=SECONDS)")
        s = self._exp_spec(exp)
        self._transact_hinted(
            lambda h: lib.nfb_exp_build(h.buf, core.IPCTNL_MSG_EXP_NEW,
                                        core.NLM_F_ACK | core.NLM_F_CREATE | core.NLM_F_EXCL, s),
            "creating expectation %s (master %s)" % (exp.expected, exp.master),
            {errno.EEXIST: "the expectation exists already",
             errno.EOPNOTSUPP: "the master flow has no helper (give it one, e.g. with "
                               "`-j CT --helper ftp` in the raw table), or the helper is unknown",
             errno.EBUSY: "the helper allows no more expectations for this master"},
            not_found="the master flow is not in the table",
        )

    def delete_expect(self, exp_or_tuple: Union[Expectation, Tuple], *,
                      zone: Optional[int] = None) -> None:
        """Remove the expectation for an expected tuple (or an Expectation).

        Raises NotFound, ValueError/TypeError, PermissionDenied, NetlinkError, ClosedError."""
        if isinstance(exp_or_tuple, Expectation):
            tup, zn = exp_or_tuple.expected, exp_or_tuple.zone
        elif isinstance(exp_or_tuple, Tuple):
            tup, zn = exp_or_tuple, 0
        else:
            raise TypeError("delete_expect() needs an Expectation or a Tuple, not %s"
                            % type(exp_or_tuple).__name__)
        if zone is not None:
            zn = _u16("zone", zone)
        s = ffi.new("struct nfb_exp_spec *")
        s.family = _AF_INET if tup.src.version == 4 else _AF_INET6
        s.set = lib.NFB_ES_EXPECTED
        _fill_tuple(s.expected, tup)
        if zn:
            s.set |= lib.NFB_ES_ZONE
            s.zone = zn
        self._transact(
            lambda h: lib.nfb_exp_build(h.buf, core.IPCTNL_MSG_EXP_DELETE, core.NLM_F_ACK, s),
            "deleting expectation %s" % tup,
            not_found="no such expectation (it may have been used or expired)",
        )

    def flush_expect(self) -> None:
        """Delete every expectation.  Raises PermissionDenied, NetlinkError, ClosedError."""
        self._transact(
            lambda h: lib.nfb_ct_build_simple(h.buf, core.NFNL_SUBSYS_CTNETLINK_EXP,
                                              core.IPCTNL_MSG_EXP_DELETE, core.NLM_F_ACK, 0, 0),
            "flushing the expect table")

    # -- events ---------------------------------------------------------------------------

    def events(
        self,
        types: Union[CtEvent, int] = CtEvent.ALL,
        filter: Optional["EventFilter"] = None,
        *,
        rcvbuf: int = 4 << 20,
        on_overrun: str = "count",
        no_enobufs: bool = False,
    ) -> "EventStream":
        """Subscribe to changes of the table: an :class:`EventStream` of
        :class:`Event` (iterate it, ``async for`` it, or ``run(handler)``).

        Args:
            types: :class:`CtEvent` flags: NEW, UPDATE, DESTROY (default all).
            filter: an :class:`EventFilter`; protocol, addresses and mark are
                matched by a BPF program in the kernel, ports in userspace.
            rcvbuf: receive buffer in bytes; bursts beyond it are lost (ENOBUFS).
            on_overrun: "count" (count and warn once) or "raise" (raise
                :class:`~nfbind.Overrun` from the loop).
            no_enobufs: set NETLINK_NO_ENOBUFS: the kernel stops reporting losses.

        Close the stream (``with`` block) when done.

        Raises ValueError/TypeError, PermissionDenied (subscribing needs
        CAP_NET_ADMIN), NetlinkError, ClosedError.
        """
        self._check_open()
        return EventStream(netns=self._netns, types=types, filter=filter, rcvbuf=rcvbuf,
                           on_overrun=on_overrun, no_enobufs=no_enobufs, owner=self)

    # -- conntrack-go verbs -------------------------------------------------------------------

    @staticmethod
    def _tuple_of(src: AddressLike, dst: AddressLike, proto: Union[int, str], sport: int,
                  dport: int) -> Tuple:
        t = Tuple(_addr("src", src), _addr("dst", dst), _proto("proto", proto), sport, dport)
        _complete(t, "tuple")
        return t

    def update_mark(self, src: AddressLike, dst: AddressLike, proto: Union[int, str],
                    sport: int, dport: int, mark: int, *, zone: int = 0) -> None:
        """Set the mark of the flow with this original tuple (conntrack-go's
        ConntrackTableUpdateMark).  Raises what :meth:`update` raises."""
        self.update(self._tuple_of(src, dst, proto, sport, dport), mark=mark, zone=zone)

    def update_mark_for_available_flow(self, flows: Iterable[Flow], src: AddressLike,
                                       dst: AddressLike, proto: Union[int, str], sport: int,
                                       dport: int, mark: int) -> int:
        """Set ``mark`` on the flows among ``flows`` (e.g. from :meth:`list`)
        whose original tuple, or reply tuple, is (src, dst, proto, sport,
        dport); returns how many were updated (conntrack-go's
        ConntrackTableUpdateMarkForAvailableFlow).  A flow that vanished
        meanwhile is skipped.  Raises ValueError/TypeError, NetlinkError
        (other than ENOENT), PermissionDenied, ClosedError.
        """
        want = self._tuple_of(src, dst, proto, sport, dport)
        mk = _u32("mark", mark)
        done = 0
        for f in flows:
            if not isinstance(f, Flow):
                raise TypeError("flows must hold Flow objects, not %s" % type(f).__name__)
            if not (_same(f.orig, want) or (f.reply is not None and _same(f.reply, want))):
                continue
            try:
                self.update(f, mark=mk)
            except NotFound:
                continue
            done += 1
        return done

    def update_labels(self, src: AddressLike, dst: AddressLike, proto: Union[int, str],
                      sport: int, dport: int, labels: Iterable[Union[int, str]], *,
                      zone: int = 0) -> None:
        """Replace the labels of the flow with this original tuple (bits or
        names).  Raises what :meth:`update` raises."""
        self.update(self._tuple_of(src, dst, proto, sport, dport), labels=labels, zone=zone)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every socket.  Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = list(self._open)
            self._open.clear()
            self._idle.clear()
        for h in handles:
            h.close()

    def __enter__(self) -> "Conntrack":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                warnings.warn("unclosed Conntrack: call close() or use a with block",
                              ResourceWarning, source=self)
            finally:
                # also when the warning is an error (-W error)
                try:
                    self.close()
                except Exception:
                    pass

    def __repr__(self) -> str:
        return "<nfbind.Conntrack netns=%r%s>" % (self._netns, " closed" if self._closed else "")


def _same(t: Tuple, want: Tuple) -> bool:
    return (t.src == want.src and t.dst == want.dst and t.proto == want.proto
            and t.sport == want.sport and t.dport == want.dport)


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().split()[0])


# -- events ------------------------------------------------------------------------------------


def _items(name: str, value: Any) -> list:
    """The values of a filter condition given as a collection (not text or bytes)."""
    try:
        if isinstance(value, (str, bytes, bytearray, memoryview)):
            raise TypeError
        return list(value)
    except TypeError:
        raise TypeError("%s must be a value or a collection of values, not %s"
                        % (name, type(value).__name__)) from None


def _ports(name: str, value: Any) -> _t.Tuple[_t.Tuple[int, int], ...]:
    if value is None:
        return ()
    if isinstance(value, (int, range)) and not isinstance(value, bool):
        value = (value,)
    out = []
    for v in _items(name, value):
        if isinstance(v, range):
            if v.step != 1 or not len(v):
                raise ValueError("%s: a port range must be a non-empty range with step 1" % name)
            out.append((_u16(name, v.start), _u16(name, v.stop - 1)))
        else:
            p = _u16(name, v)
            out.append((p, p))
    return tuple(out)


def _networks(name: str, value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes, int, ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Network, ipaddress.IPv6Network)):
        value = (value,)
    out = []
    for v in _items(name, value):
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(v)
            continue
        if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            out.append(ipaddress.ip_network(v))
            continue
        try:
            if isinstance(v, bool):  # ip_network(True) would be 0.0.0.1/32
                raise TypeError
            out.append(ipaddress.ip_network(v, strict=False))
        except (ValueError, TypeError):
            raise ValueError("%s: %r is not an address or network" % (name, v)) from None
    return tuple(out)


@dataclass(frozen=True)
class EventFilter:
    """Which events an :class:`EventStream` delivers (all given conditions must hold;
    a condition with several values matches any of them).

    Args:
        proto: protocol numbers or names ("tcp", "udp" ...).   kernel (BPF)
        src: networks or addresses the original source is in.  kernel (BPF) (*)
        dst: the same for the original destination.            kernel (BPF) (*)
        mark, mark_mask: ``flow.mark & mark_mask == mark & mark_mask``.  kernel (BPF)
        sport, dport: ports or ``range`` objects (original direction).  userspace

    (*) when all of ``src`` and ``dst`` are of one IP version, with at most
    127 IPv4 networks or one IPv6 network per direction; otherwise addresses
    are matched in userspace (libnetfilter_conntrack 1.0.9's BPF program gets
    those cases wrong: see ``_kernel_addrs``).  Everything is checked again in
    userspace, so the result is the same either way; only the kernel's work
    and the socket's load differ.

    Raises ValueError/TypeError naming the argument.
    """

    proto: Any = ()
    src: Any = ()
    dst: Any = ()
    sport: Any = ()
    dport: Any = ()
    mark: Optional[int] = None
    mark_mask: int = _U32_MAX

    def __post_init__(self) -> None:
        p = self.proto
        if isinstance(p, (int, str)):
            p = (p,)
        protos = tuple(_proto("proto", v) for v in (_items("proto", p) if p is not None else ()))
        src = _networks("src", self.src)
        dst = _networks("dst", self.dst)
        object.__setattr__(self, "proto", protos)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "sport", _ports("sport", self.sport))
        object.__setattr__(self, "dport", _ports("dport", self.dport))
        object.__setattr__(self, "mark", _opt(_u32, "mark", self.mark))
        object.__setattr__(self, "mark_mask", _u32("mark_mask", self.mark_mask))

    def matches(self, flow: Flow) -> bool:
        """True when ``flow`` passes every condition."""
        o = flow.orig
        if self.proto and o.proto not in self.proto:
            return False
        if self.src and not any(o.src in n for n in self.src):
            return False
        if self.dst and not any(o.dst in n for n in self.dst):
            return False
        if self.sport and (o.sport is None or not any(a <= o.sport <= b for a, b in self.sport)):
            return False
        if self.dport and (o.dport is None or not any(a <= o.dport <= b for a, b in self.dport)):
            return False
        if self.mark is not None and flow.mark & self.mark_mask != self.mark & self.mark_mask:
            return False
        return True

    @property
    def _kernel_addrs(self) -> bool:
        """Whether the addresses go into the BPF program.

        Checked against libnetfilter_conntrack 1.0.9 on this kernel: with
        rules of both IP versions its program drops matching IPv6 events;
        with two or more IPv6 networks in one direction only the first
        matches; beyond 127 IPv4 networks in one direction the rest are
        silently left out.  In those cases addresses are matched in
        userspace only."""
        versions = {n.version for n in self.src + self.dst}
        if len(versions) != 1:
            return False
        limit = 127 if 4 in versions else 1
        return len(self.src) <= limit and len(self.dst) <= limit

    @property
    def kernel_side(self) -> bool:
        """True when some condition runs in the kernel's BPF filter."""
        return bool(self.proto or self.mark is not None or self._kernel_addrs)

    def _attach(self, fd: int) -> None:
        f = lib.nfct_filter_create()
        if f == ffi.NULL:
            raise MemoryError("nfct_filter_create")
        try:
            for p in self.proto:
                lib.nfct_filter_add_attr_u32(f, lib.NFCT_FILTER_L4PROTO, int(p))
            addrs = ((self.src, lib.NFCT_FILTER_SRC_IPV4, lib.NFCT_FILTER_SRC_IPV6),
                     (self.dst, lib.NFCT_FILTER_DST_IPV4, lib.NFCT_FILTER_DST_IPV6))
            for nets, a4, a6 in (addrs if self._kernel_addrs else ()):
                for n in nets:
                    if n.version == 4:
                        v4 = ffi.new("struct nfct_filter_ipv4 *")
                        v4.addr = int(n.network_address)
                        v4.mask = int(n.netmask)
                        lib.nfct_filter_add_attr(f, a4, v4)
                    else:
                        v6 = ffi.new("struct nfct_filter_ipv6 *")
                        addr, mask = int(n.network_address), int(n.netmask)
                        for i in range(4):
                            v6.addr[i] = (addr >> (96 - 32 * i)) & _U32_MAX
                            v6.mask[i] = (mask >> (96 - 32 * i)) & _U32_MAX
                        lib.nfct_filter_add_attr(f, a6, v6)
            if self.mark is not None:
                m = ffi.new("struct nfct_filter_dump_mark *")
                m.val = self.mark & self.mark_mask
                m.mask = self.mark_mask
                lib.nfct_filter_add_attr(f, lib.NFCT_FILTER_MARK, m)
            if lib.nfct_filter_attach(fd, f) < 0:
                err = ffi.errno or errno.EINVAL
                raise error_from_errno(err, "attaching the conntrack event filter (BPF)")
        finally:
            lib.nfct_filter_destroy(f)


class EventStats:
    """Counters of one EventStream (read live)."""

    __slots__ = ("_s",)

    def __init__(self, s: "EventStream") -> None:
        self._s = s

    @property
    def events(self) -> int:
        """Events received from the kernel."""
        return self._s._nevents

    @property
    def delivered(self) -> int:
        """Events handed to the handler / iteration."""
        return self._s._ndelivered

    @property
    def filtered(self) -> int:
        """Events the userspace part of the filter dropped."""
        return self._s._nfiltered

    @property
    def overruns(self) -> int:
        """Times the kernel reported ENOBUFS (events lost to a full buffer)."""
        c = self._s._c
        return int(c.rx.overruns) if c is not None else self._s._final_overruns

    @property
    def recv_calls(self) -> int:
        c = self._s._c
        return int(c.rx.recv_calls) if c is not None else 0

    def as_dict(self) -> Dict[str, int]:
        return {n: getattr(self, n) for n in ("events", "delivered", "filtered", "overruns",
                                               "recv_calls")}

    def __repr__(self) -> str:
        return "EventStats(%s)" % ", ".join("%s=%d" % kv for kv in self.as_dict().items())


_GROUPS = (
    (CtEvent.NEW, core.NFNLGRP_CONNTRACK_NEW),
    (CtEvent.UPDATE, core.NFNLGRP_CONNTRACK_UPDATE),
    (CtEvent.DESTROY, core.NFNLGRP_CONNTRACK_DESTROY),
)


class EventStream(Channel):
    """Conntrack events: ``for event in stream``, ``async for``, ``run(handler)``.

    Made by :meth:`Conntrack.events`, or directly with the same keywords
    plus ``netns``.  Stop a loop with ``stop()`` from any thread or a signal
    handler.  A handler exception comes out of ``run()``; the events after
    it in the batch are delivered by the next loop.

    Raises ValueError/TypeError, PermissionDenied (subscribing needs
    CAP_NET_ADMIN), NetlinkError, FileNotFoundError (netns).
    """

    def __init__(
        self,
        types: Union[CtEvent, int] = CtEvent.ALL,
        filter: Optional[EventFilter] = None,
        *,
        netns: _netns.NetNS = None,
        rcvbuf: int = 4 << 20,
        on_overrun: str = "count",
        no_enobufs: bool = False,
        owner: Optional[Conntrack] = None,
    ) -> None:
        self._c: Any = None
        t = check_int("types", types, 0, _U32_MAX)
        if not t or t & ~int(CtEvent.ALL):
            raise ValueError("types must be CtEvent flags (NEW, UPDATE, DESTROY), got %r" % (types,))
        self.types = CtEvent(t)
        if filter is not None and not isinstance(filter, EventFilter):
            raise TypeError("filter must be an EventFilter, not %s" % type(filter).__name__)
        self.filter = filter
        if not isinstance(no_enobufs, bool):
            raise TypeError("no_enobufs must be True or False, not %r" % (no_enobufs,))
        rcvbuf = check_int("rcvbuf", rcvbuf, 4096, 1 << 30)
        _netns.resolve(netns)
        self._owner = owner
        self._backlog: List[Event] = []
        self._nevents = 0
        self._ndelivered = 0
        self._nfiltered = 0
        self._final_overruns = 0
        self.needs_resync = False
        self._init_channel(netns=netns, rcvbuf=rcvbuf, on_overrun=on_overrun,
                           no_enobufs=no_enobufs)
        try:
            assert self._sock is not None
            for bit, group in _GROUPS:
                if t & bit:
                    try:
                        self._sock.setsockopt(core.SOL_NETLINK, core.NETLINK_ADD_MEMBERSHIP, group)
                    except PermissionError as e:
                        raise PermissionDenied(e.errno or errno.EPERM,
                                               "subscribing to conntrack events") from None
                    except OSError as e:
                        raise error_from_errno(e.errno or errno.EINVAL,
                                               "subscribing to conntrack events") from None
            if filter is not None and filter.kernel_side:
                filter._attach(self._fd)
            c = lib.nfb_ct_new(self._fd, 64)
            if c == ffi.NULL:
                raise MemoryError("allocating conntrack event buffers")
            self._c = ffi.gc(c, lib.nfb_ct_free)
        except BaseException:
            self._c = None
            self._abort_open()
            raise

    def _describe(self) -> str:
        return "EventStream(%s)" % self.types.name if self.types.name else "EventStream"

    @property
    def stats(self) -> EventStats:
        """Live counters: events, delivered, filtered, overruns."""
        return EventStats(self)

    def _recv(self) -> int:
        c = self._c
        n = lib.nfb_ct_recv_events(c)
        if n == -errno.ENOBUFS:
            self.needs_resync = True
            self._overrun(int(c.rx.overruns))  # raises with on_overrun="raise"
            n = lib.nfb_ct_recv_events(c)  # the socket is readable again after one
            if n == -errno.ENOBUFS:
                return 0
        if n < 0:
            raise error_from_errno(-n, "receiving conntrack events")
        return n

    def _short_read(self) -> bool:
        return False  # events are read until the socket says EAGAIN

    def _drain_once(self, handler: Callable[[Event], Any]) -> int:
        with self._lock:
            if self._closed or self._stop_requested:
                return 0
            got = 0
            if self._backlog:
                todo, self._backlog = self._backlog, []
            else:
                n = self._recv()
                if n == 0:
                    return 0
                c = self._c
                events = _events_of(memoryview(ffi.buffer(c.recs, n * _RS)), n,
                                    ffi.buffer(c.data, c.data_len)[:] if c.data_len else b"",
                                    c.nv6)
                self._nevents += n
                got = n
                flt = self.filter
                if flt is None:
                    todo = events
                else:
                    todo = [ev for ev in events if flt.matches(ev.flow)]
                    self._nfiltered += n - len(todo)
            done = 0
            for ev in todo:
                done += 1
                self._ndelivered += 1
                try:
                    handler(ev)
                except BaseException:
                    # the rest of the batch goes to the next loop
                    self._backlog = todo[done:] + self._backlog
                    raise
                if self._stop_requested and done < len(todo):
                    # stop() ends the loop after this event; the rest wait
                    self._backlog = todo[done:] + self._backlog
                    break
            # a batch the filter emptied is no reason to stop draining
            return done if done or not got else -1

    def _close_channel(self) -> None:
        if self._c is not None:
            self._final_overruns = int(self._c.rx.overruns)
        self._c = None

    def resync(self, family: Union[None, int, str] = None) -> _t.List[Flow]:
        """Start over after lost events: drop the events still queued, dump
        the table and return its flows (those the stream's filter passes).
        Events that follow are newer than the dump.

        Raises ClosedError, PermissionDenied, NetlinkError.
        """
        self._check_open()
        fam = _family("family", family)
        with self._lock:
            self._backlog.clear()
            while True:
                n = lib.nfb_ct_recv_events(self._c)
                if n == 0:
                    break
                if n < 0 and n != -errno.ENOBUFS:
                    raise error_from_errno(-n, "discarding queued conntrack events")
            self.needs_resync = False
        owner = self._owner
        if owner is not None and not owner.closed:
            flows = owner.list(family=fam)
        else:
            with Conntrack(netns=self._netns) as ct:
                flows = ct.list(family=fam)
        flt = self.filter
        return [f for f in flows if flt is None or flt.matches(f)]

    def __repr__(self) -> str:
        return "<nfbind.EventStream %s%s>" % (self.types, " closed" if self._closed else "")
