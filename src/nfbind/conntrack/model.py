# SPDX-License-Identifier: GPL-2.0-or-later
"""The conntrack value types: :class:`Tuple`, :class:`Flow`, :class:`Counters`,
:class:`Timestamps`, :class:`Nat`, :class:`Endpoint`, :class:`TcpInfo`,
:class:`SeqAdj`, :class:`Synproxy`, :class:`Event`, :class:`ExpectEvent`,
:class:`Expectation`, :class:`CtStats`, :class:`CpuStats`,
:class:`ExpectStats`, and :class:`NotFound`; with the checks their
constructors run on every value.

They depend on the core module only (no libnetfilter_conntrack), so the
flow of a queued or logged packet (``pkt.ct``) is a :class:`Flow` on every
install.  Records are frozen dataclasses with ``__slots__``, made by
:func:`record` so that Python 3.9 (whose ``dataclass`` has no ``slots=``)
gets the same classes as later versions.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import socket
import typing as _t
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, TypeVar, Union

from .._core import lib as core
from .._netlink import check_int
from ..enums import CtStatus, ExpectFlag, Family, IPProto, SctpState, TcpFlag, TcpState
from ..errors import NetlinkError
from .labels import label_bits

if _t.TYPE_CHECKING:  # pragma: no cover
    from ..enums import CtEvent

__all__ = [
    "Tuple",
    "Flow",
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
    "CtStats",
    "CpuStats",
    "ExpectStats",
    "NotFound",
    "parse_proto",
    "record",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF

AF_INET = core.AF_INET
AF_INET6 = core.AF_INET6

#: the protocols whose tuples have ports (GRE's keys travel as ports): the core's rule
PORT_PROTOS = frozenset(p for p in range(256) if core.nfb_proto_has_ports(p))
ICMP_PROTOS = frozenset((int(IPProto.ICMP), int(IPProto.ICMPV6)))
#: protocol, TCP state and SCTP state number -> the enum member (or the int)
PROTO = [IPProto(v) if v in IPProto._value2member_map_ else v for v in range(256)]
TCP_STATE = [TcpState(v) if v in TcpState._value2member_map_ else v for v in range(256)]
SCTP_STATE = [SctpState(v) if v in SctpState._value2member_map_ else v for v in range(256)]
FAMILY = {AF_INET: Family.IPV4, AF_INET6: Family.IPV6}

_PROTO_NAMES = {p.name.lower(): p for p in IPProto}
_PROTO_NAMES.update({"ipv6-icmp": IPProto.ICMPV6, "icmp6": IPProto.ICMPV6})
_FAMILY_NAMES = {"ipv4": AF_INET, "inet": AF_INET, "ip": AF_INET,
                 "ipv6": AF_INET6, "inet6": AF_INET6, "ip6": AF_INET6}

_osa = object.__setattr__

_C = TypeVar("_C", bound=type)
_F = TypeVar("_F")

if _t.TYPE_CHECKING:  # pragma: no cover
    # For type checkers, ``@record`` is what it makes: a frozen dataclass (PEP 681).
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**kwargs: Any) -> Callable[[_F], _F]:
        return lambda f: f


# -- frozen, slotted records on every Python ------------------------------------------------


@dataclass_transform(frozen_default=True)
def record(cls: _C) -> _C:
    """``@dataclass(frozen=True, slots=True)`` for Python 3.9 as well.

    ``dataclass(slots=True)`` appeared in Python 3.10.  This makes the frozen
    dataclass, then rebuilds the class with ``__slots__`` holding its fields,
    as ``dataclasses`` does on 3.10+: instances have no ``__dict__`` (a
    third of the memory of a dict-backed Flow) and the layout the fast
    decoder relies on (see ``_records``).  The rebuilt class gets its own
    ``__setattr__``/``__delattr__`` (the generated ones name the class they
    were made for) and ``__getstate__``/``__setstate__``, so that pickle
    and copy can restore a frozen slotted object.
    """
    dc: type = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(f.name for f in dataclasses.fields(dc))
    ns = dict(dc.__dict__)
    for name in names:  # class attributes holding defaults would clash with the slots
        ns.pop(name, None)
    ns.pop("__dict__", None)
    ns.pop("__weakref__", None)
    ns["__slots__"] = names

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError("cannot assign to field %r" % name)

    def __delattr__(self: Any, name: str) -> None:
        raise dataclasses.FrozenInstanceError("cannot delete field %r" % name)

    def __getstate__(self: Any) -> List[Any]:
        return [getattr(self, n) for n in names]

    def __setstate__(self: Any, state: List[Any]) -> None:
        for n, v in zip(names, state):
            _osa(self, n, v)

    ns["__setattr__"] = __setattr__
    ns["__delattr__"] = __delattr__
    ns["__getstate__"] = __getstate__
    ns["__setstate__"] = __setstate__
    new: type = type(dc)(dc.__name__, dc.__bases__, ns)
    new.__qualname__ = dc.__qualname__
    return _t.cast(_C, new)


class NotFound(NetlinkError, LookupError):
    """ENOENT: no such flow (or expectation) in the table.

    A NetlinkError with ``errno == errno.ENOENT`` (and a LookupError).
    """


# -- value checks ----------------------------------------------------------------------


def check_addr(name: str, value: Any) -> IPAddress:
    """An ``ipaddress`` object from a str, bytes, int or address object."""
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


def check_proto(name: str, value: Any) -> int:
    """A protocol number or name ("tcp", "udp", "icmp", "icmpv6", "sctp", "gre" ...)."""
    if isinstance(value, str):
        p = _PROTO_NAMES.get(value.lower())
        if p is None:
            try:
                return PROTO[socket.getprotobyname(value)]
            except (OSError, ValueError):  # unknown, or a NUL or a lone surrogate in it
                raise ValueError(
                    "%s: unknown protocol name %r (use a number, or one of %s)"
                    % (name, value, ", ".join(sorted(_PROTO_NAMES)))
                ) from None
        return p
    return PROTO[check_int(name, value, 0, 255)]


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
    return check_proto("proto", value)


def check_family(name: str, value: Any) -> Optional[int]:
    """None, AF_INET/AF_INET6 (Family.IPV4/IPV6), or "ipv4"/"ipv6"."""
    if value is None:
        return None
    if isinstance(value, str):
        v = _FAMILY_NAMES.get(value.lower())
        if v is None:
            raise ValueError("%s must be 'ipv4' or 'ipv6', got %r" % (name, value))
        return v
    v = check_int(name, value, 0, 255)
    if v not in (AF_INET, AF_INET6):
        raise ValueError(
            "%s must be socket.AF_INET or socket.AF_INET6 (Family.IPV4/IPV6), got %d" % (name, v)
        )
    return v


def check_u32(name: str, value: Any) -> int:
    return check_int(name, value, 0, U32_MAX)


def check_u16(name: str, value: Any) -> int:
    return check_int(name, value, 0, U16_MAX)


def check_u8(name: str, value: Any) -> int:
    return check_int(name, value, 0, 255)


def check_opt(fn: Callable[[str, Any], int], name: str, value: Any) -> Optional[int]:
    """``fn(name, value)``, or None for None."""
    return None if value is None else fn(name, value)


def helper_len(name: str) -> int:
    """Bytes of a helper name in UTF-8; 0 (refused) when it cannot be encoded."""
    try:
        return len(name.encode())
    except UnicodeEncodeError:
        return 0


# -- records -----------------------------------------------------------------------------


class Endpoint(NamedTuple):
    """An address and port (None for protocols without ports)."""

    addr: IPAddress
    port: Optional[int]


@record
class Tuple:
    """One direction of a connection.

    ``sport``/``dport`` are set for TCP, UDP, UDP-Lite, SCTP, DCCP (ports) and
    GRE (keys); ``icmp_type``/``icmp_code``/``icmp_id`` for ICMP and ICMPv6.
    Addresses are ``ipaddress`` objects (strings are converted); ``proto`` is
    an :class:`IPProto` (or a plain int for protocols without a name), and
    accepts names such as ``"tcp"``.

    ``zone`` is a directional zone (``-j CT --zone-orig N`` or
    ``--zone-reply N``, the kernel's CTA_TUPLE_ZONE): the zone this direction
    alone is tracked in.  It is None for the usual zone of both directions,
    which is :attr:`Flow.zone`.  A flow with a directional zone is looked up,
    updated and deleted by a tuple carrying that zone.

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
    zone: Optional[int] = None

    def __post_init__(self) -> None:
        src = check_addr("src", self.src)
        dst = check_addr("dst", self.dst)
        if src.version != dst.version:
            raise ValueError("src %s and dst %s are not of the same IP version" % (src, dst))
        proto = check_proto("proto", self.proto)
        sport = check_opt(check_u16, "sport", self.sport)
        dport = check_opt(check_u16, "dport", self.dport)
        itype = check_opt(check_u8, "icmp_type", self.icmp_type)
        icode = check_opt(check_u8, "icmp_code", self.icmp_code)
        iid = check_opt(check_u16, "icmp_id", self.icmp_id)
        has_ports = sport is not None or dport is not None
        has_icmp = itype is not None or icode is not None or iid is not None
        pname = getattr(proto, "name", str(proto)).lower()
        if proto in PORT_PROTOS and has_icmp:
            raise ValueError("a %s tuple has sport/dport, not icmp_type/icmp_code/icmp_id" % pname)
        if proto in ICMP_PROTOS:
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
        if proto not in PORT_PROTOS and proto not in ICMP_PROTOS and (has_ports or has_icmp):
            raise ValueError("conntrack tracks protocol %s without ports or icmp fields" % pname)
        _osa(self, "src", src)
        _osa(self, "dst", dst)
        _osa(self, "proto", proto)
        _osa(self, "sport", sport)
        _osa(self, "dport", dport)
        _osa(self, "icmp_type", itype)
        _osa(self, "icmp_code", icode)
        _osa(self, "icmp_id", iid)
        _osa(self, "zone", check_opt(check_u16, "zone", self.zone))

    @property
    def family(self) -> Family:
        """Family.IPV4 or Family.IPV6 (from the addresses)."""
        return Family.IPV4 if self.src.version == 4 else Family.IPV6

    def __str__(self) -> str:
        name = getattr(self.proto, "name", str(self.proto)).lower()
        if self.sport is not None or self.dport is not None:
            fmt = "[%s]:%s" if self.src.version == 6 else "%s:%s"
            text = "%s %s -> %s" % (name, fmt % (self.src, self.sport), fmt % (self.dst, self.dport))
            return text if self.zone is None else text + " zone=%d" % self.zone
        text = "%s %s -> %s" % (name, self.src, self.dst)
        if self.icmp_type is not None:
            text += " type=%s code=%s id=%s" % (self.icmp_type, self.icmp_code, self.icmp_id)
        if self.zone is not None:
            text += " zone=%d" % self.zone
        return text

    def as_dict(self) -> Dict[str, Any]:
        """The tuple as JSON-ready values: ``src`` and ``dst`` as strings,
        ``proto`` as its lower-case name (the number as a string when it has
        none), then those of ``sport``, ``dport``, ``icmp_type``, ``icmp_code``,
        ``icmp_id``, ``zone`` that are set (ints)."""
        d: Dict[str, Any] = {"src": str(self.src), "dst": str(self.dst),
                             "proto": getattr(self.proto, "name", str(self.proto)).lower()}
        for k in ("sport", "dport", "icmp_type", "icmp_code", "icmp_id", "zone"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@record
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


@record
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


@record
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
        """``snat`` and ``dnat``, each None or the endpoint as text:
        ``"ADDRESS:PORT"``, ``"[IPV6-ADDRESS]:PORT"``, or the address alone
        for protocols without ports."""
        return {k: None if v is None else _endpoint_text(v)
                for k, v in (("snat", self.snat), ("dnat", self.dnat))}


def _endpoint_text(e: Endpoint) -> str:
    if e.port is None:
        return str(e.addr)
    if e.addr.version == 6:
        return "[%s]:%d" % (e.addr, e.port)
    return "%s:%d" % (e.addr, e.port)


@record
class TcpInfo:
    """What conntrack tracks of a TCP connection (CTA_PROTOINFO_TCP): its
    ``state`` (a :class:`TcpState`, also :attr:`Flow.state`), the window
    scale each side announced, and the :class:`TcpFlag` flags of each
    direction.  A field is None when the kernel did not send it (a DESTROY
    event carries the state only)."""

    state: Optional[int] = None
    wscale_orig: Optional[int] = None
    wscale_reply: Optional[int] = None
    flags_orig: Optional[TcpFlag] = None
    flags_reply: Optional[TcpFlag] = None

    def __post_init__(self) -> None:
        st = check_opt(check_u8, "state", self.state)
        _osa(self, "state", None if st is None else TCP_STATE[st])
        _osa(self, "wscale_orig", check_opt(check_u8, "wscale_orig", self.wscale_orig))
        _osa(self, "wscale_reply", check_opt(check_u8, "wscale_reply", self.wscale_reply))
        for name in ("flags_orig", "flags_reply"):
            v = check_opt(check_u8, name, getattr(self, name))
            _osa(self, name, None if v is None else TcpFlag(v))

    def as_dict(self) -> Dict[str, Any]:
        """``state`` (its name), ``wscale_orig``, ``wscale_reply`` (ints),
        ``flags_orig``, ``flags_reply`` (the names of the flags set); None
        for what the kernel did not send."""
        def names(f: Optional[TcpFlag]) -> Optional[List[str]]:
            return None if f is None else [m.name for m in TcpFlag
                                           if m.name is not None and f & m]
        return {"state": None if self.state is None else getattr(self.state, "name", self.state),
                "wscale_orig": self.wscale_orig, "wscale_reply": self.wscale_reply,
                "flags_orig": names(self.flags_orig), "flags_reply": names(self.flags_reply)}


@record
class SeqAdj:
    """TCP sequence number adjustment of a flow whose payload a NAT helper
    resized (CTA_SEQ_ADJ_ORIG/REPLY, status SEQ_ADJUST): per direction,
    from which sequence number on (``*_correction_pos``) the offset applies,
    and the offsets before and after it."""

    orig_correction_pos: int = 0
    orig_offset_before: int = 0
    orig_offset_after: int = 0
    reply_correction_pos: int = 0
    reply_offset_before: int = 0
    reply_offset_after: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _osa(self, f.name, check_u32(f.name, getattr(self, f.name)))

    def as_dict(self) -> Dict[str, int]:
        """The six fields by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@record
class Synproxy:
    """What the SYNPROXY target keeps of a connection it answered
    (CTA_SYNPROXY): the initial sequence number (``isn``), the timestamp
    (``its``) and the timestamp offset (``tsoff``).  ``Flow.synproxy`` is
    None for other flows, also for those made over ctnetlink, which carry
    the kernel's SYNPROXY extension empty (all zeros)."""

    isn: int = 0
    its: int = 0
    tsoff: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _osa(self, f.name, check_u32(f.name, getattr(self, f.name)))

    def as_dict(self) -> Dict[str, int]:
        """``isn``, ``its``, ``tsoff``."""
        return {"isn": self.isn, "its": self.its, "tsoff": self.tsoff}


@record
class Flow:
    """A connection as conntrack sees it.

    ``orig`` is the direction of the first packet, ``reply`` the answer's.
    ``state`` is a :class:`TcpState` (TCP), :class:`SctpState` (SCTP), an int
    (DCCP) or None.  ``counters`` needs ``net.netfilter.nf_conntrack_acct=1``,
    ``timestamps`` ``net.netfilter.nf_conntrack_timestamp=1``; both are None
    otherwise.  ``labels`` is a frozenset of bit numbers (0..127).
    ``master`` is the tuple of the connection that expected this one.
    ``tcp`` (a :class:`TcpInfo`) is set for TCP flows, ``seq_adj`` (a
    :class:`SeqAdj`) and ``synproxy`` (a :class:`Synproxy`) when the kernel
    sends them; they are read from the kernel, :meth:`Conntrack.create` does
    not send them.

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
    tcp: Optional[TcpInfo] = None
    seq_adj: Optional[SeqAdj] = None
    synproxy: Optional[Synproxy] = None

    def __post_init__(self) -> None:
        if not isinstance(self.orig, Tuple):
            raise TypeError("Flow.orig must be a Tuple, not %s" % type(self.orig).__name__)
        fam = self.orig.family
        if self.reply is not None:
            if not isinstance(self.reply, Tuple):
                raise TypeError("Flow.reply must be a Tuple or None, not %s" % type(self.reply).__name__)
            if self.reply.family != fam:
                raise ValueError("Flow.orig is IPv%d but Flow.reply is not" % self.orig.src.version)
        if self.family is not None and check_family("family", self.family) != int(fam):
            raise ValueError("Flow.family %r does not match the addresses of orig (%s)"
                             % (self.family, fam.name))
        if self.proto is not None and check_proto("proto", self.proto) != self.orig.proto:
            raise ValueError("Flow.proto %r does not match orig.proto %r" % (self.proto, self.orig.proto))
        state = self.state
        if state is not None:
            state = check_u8("state", state)
            if self.orig.proto == IPProto.TCP:
                state = TCP_STATE[state]
            elif self.orig.proto == IPProto.SCTP:
                state = SCTP_STATE[state]
        zones = [z for z in (self.orig.zone, None if self.reply is None else self.reply.zone)
                 if z is not None]
        if len(zones) > 1 or (zones and self.zone):
            raise ValueError("a flow has one zone: Flow.zone (both directions), orig.zone "
                             "(--zone-orig) or reply.zone (--zone-reply), not several")
        if self.master is not None and not isinstance(self.master, Tuple):
            raise TypeError("Flow.master must be a Tuple or None")
        for name, cls in (("counters", Counters), ("timestamps", Timestamps), ("nat", Nat),
                          ("tcp", TcpInfo), ("seq_adj", SeqAdj), ("synproxy", Synproxy)):
            v = getattr(self, name)
            if v is not None and not isinstance(v, cls):
                raise TypeError("Flow.%s must be a %s or None" % (name, cls.__name__))
        if self.helper is not None:
            if not isinstance(self.helper, str) or not 0 < helper_len(self.helper) < 16:
                raise ValueError("Flow.helper must be a helper name of 1..15 bytes, e.g. 'ftp'")
        if self.secctx is not None and not isinstance(self.secctx, str):
            raise TypeError("Flow.secctx must be a str or None")
        _osa(self, "family", fam)
        _osa(self, "proto", self.orig.proto)
        _osa(self, "state", state)
        _osa(self, "status", CtStatus(check_u32("status", self.status)))
        _osa(self, "timeout", check_opt(check_u32, "timeout", self.timeout))
        _osa(self, "mark", check_u32("mark", self.mark))
        _osa(self, "secmark", check_u32("secmark", self.secmark))
        _osa(self, "zone", check_u16("zone", self.zone))
        _osa(self, "labels", label_bits("labels", self.labels))
        _osa(self, "use", check_opt(check_u32, "use", self.use))
        _osa(self, "id", check_opt(check_u32, "id", self.id))

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
        (:meth:`Timestamps.as_dict`), ``nat`` (:meth:`Nat.as_dict`), ``tcp``
        (:meth:`TcpInfo.as_dict`), ``seq_adj`` and ``synproxy``.
        """
        st = int(self.status)
        assert self.family is not None  # set by __post_init__, and by the decoder
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
        if self.tcp is not None:
            d["tcp"] = self.tcp.as_dict()
        if self.seq_adj is not None:
            d["seq_adj"] = self.seq_adj.as_dict()
        if self.synproxy is not None:
            d["synproxy"] = self.synproxy.as_dict()
        return d


@record
class Event:
    """A change in the table: ``type`` (a :class:`CtEvent`) and the ``flow``."""

    type: "CtEvent"
    flow: Flow


@record
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
                                        or not 0 < helper_len(self.helper) < 16):
            raise ValueError("Expectation.helper must be a helper name of 1..15 bytes")
        _osa(self, "timeout", check_opt(check_u32, "timeout", self.timeout))
        _osa(self, "zone", check_u16("zone", self.zone))
        _osa(self, "flags", ExpectFlag(check_u32("flags", self.flags)))
        _osa(self, "id", check_opt(check_u32, "id", self.id))
        _osa(self, "klass", check_opt(check_u32, "klass", self.klass))

    @property
    def family(self) -> Family:
        return self.expected.family


@record
class ExpectEvent:
    """A change in the expectation table (:meth:`Conntrack.expect_events`):
    ``type`` (CtEvent.NEW or CtEvent.DESTROY) and the ``expectation``."""

    type: "CtEvent"
    expectation: "Expectation"


@record
class ExpectStats:
    """One CPU's expectation counters (IPCTNL_MSG_EXP_GET_STATS_CPU,
    ``conntrack -S expect``): expectations looked up and found for a new
    connection (``new``), made (``create``) and removed (``delete``)."""

    cpu: int
    new: int = 0
    create: int = 0
    delete: int = 0


@record
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


@record
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
