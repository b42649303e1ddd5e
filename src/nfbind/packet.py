# SPDX-License-Identifier: GPL-2.0-or-later
"""Packet metadata common to NFQUEUE and NFLOG, and scapy decoding.

The C helper parses every attribute the kernel sent into a compact record of
``uint32`` words (one per packet) plus the batch's raw message bytes.  A
packet object holds only a reference to its batch and its offset; every field
is read on first access, so a handler that looks at two fields pays for two.

**speed:** a handler that reads the hot fields (payload length, mark, input
interface, hardware protocol, timestamp; NFLOG's prefix too) of its packets
gets them as plain slot values instead: the channel counts the hot reads of
a batch (:attr:`Batch.reads`), and while they are at least
:data:`HOT_READS` per packet it fills later batches eagerly into the
channel's :func:`hot_variant` class, re-checking with a lazy batch every
:data:`HOT_SPAN` batches.  The C helper prepares the values of a whole
batch in one call (``struct nfb_hot``: the timestamp already a double,
absent values flagged, NFLOG's prefixes numbered), read with one
``struct.iter_unpack``.  A slot
read costs a few ns where a property costs 100 or more; the values are the
same, ``None`` when absent included.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Optional, Sequence, TypeVar

from ._core import lib
from .conntrack._records import ct_flow
from .enums import ArpHook, CtInfo, CtStatus, Family, Hook, TcpState
from .process import Process, process_of

if TYPE_CHECKING:
    from typing import Protocol

    from scapy.packet import Packet as ScapyPacket

    from .conntrack._lookup import CtLookup
    from .conntrack.model import Flow

    class PacketSource(Protocol):
        """What a packet reads from its channel (NfQueue, NfLog)."""

        @property
        def _ct_fallback(self) -> bool: ...
        @property
        def _ctnl(self) -> CtLookup: ...
        def _ifname(self, index: Optional[int]) -> Optional[str]: ...
        @property
        def closed(self) -> bool: ...

__all__ = ["PacketBase", "Vlan", "CtSummary", "scapy_payload", "hot_variant", "hot_struct",
           "HOT_FIELDS", "HOT_READS", "HOT_SPAN"]

#: the channel a batch came from
C = TypeVar("C", bound="PacketSource", covariant=True)

NF = lib.NFB_F_COUNT
_F_ATTRS = lib.NFB_F_ATTRS

# Record indices and presence bits as module globals: a cffi ``lib.X`` lookup
# costs more than the memoryview read it would guard.
_F_HOOK = lib.NFB_F_HOOK
_F_HWPROTO = lib.NFB_F_HWPROTO
_F_FAMILY = lib.NFB_F_FAMILY
_F_PAYLOAD_OFF = lib.NFB_F_PAYLOAD_OFF
_F_PAYLOAD_LEN = lib.NFB_F_PAYLOAD_LEN
_F_CAPLEN = lib.NFB_F_CAPLEN
_F_SECCTX_OFF = lib.NFB_F_SECCTX_OFF
_F_SECCTX_LEN = lib.NFB_F_SECCTX_LEN
_F_TS_SEC_HI = lib.NFB_F_TS_SEC_HI
_F_TS_SEC_LO = lib.NFB_F_TS_SEC_LO
_F_TS_USEC = lib.NFB_F_TS_USEC
_F_VLAN_PROTO = lib.NFB_F_VLAN_PROTO
_F_VLAN_TCI = lib.NFB_F_VLAN_TCI
_F_CTINFO = lib.NFB_F_CTINFO
_F_CT_OFF = lib.NFB_F_CT_OFF
_F_CT_LEN = lib.NFB_F_CT_LEN
_F_MARK = lib.NFB_F_MARK
_F_INDEV = lib.NFB_F_INDEV
_A_MARK = lib.NFB_A_MARK
_A_INDEV = lib.NFB_A_INDEV
_A_PAYLOAD = lib.NFB_A_PAYLOAD
_A_CAPLEN = lib.NFB_A_CAPLEN
_A_SECCTX = lib.NFB_A_SECCTX
_A_TIMESTAMP = lib.NFB_A_TIMESTAMP
_A_VLAN = lib.NFB_A_VLAN
_A_CTINFO = lib.NFB_A_CTINFO
_A_CT = lib.NFB_A_CT
_NFPROTO_ARP = lib.NFPROTO_ARP
_HOOKS = {int(h): h for h in Hook}
_ARP_HOOKS = {int(h): h for h in ArpHook}
_FAMILIES = {int(f): f for f in Family}
_CTINFOS = {int(c): c for c in CtInfo}


#: the fields every packet class gets as plain slots in its hot variant
HOT_FIELDS = ("payload_len", "mark", "indev", "hw_protocol", "timestamp")
#: hot-field reads per packet of a lazy batch from which the next batches
#: are filled eagerly (filling them costs about what one or two lazy reads
#: do: docs/performance.rst)
HOT_READS = 2
#: batches filled eagerly before a lazy one checks again that the handler
#: still reads the hot fields
HOT_SPAN = 32


class Batch(Generic[C]):
    """One receive batch: the raw messages, the parsed records, the channel
    they came from, and how many hot fields were read lazily."""

    __slots__ = ("data", "recs", "ch", "reads")

    def __init__(self, data: bytes, recs: memoryview, ch: C) -> None:
        self.data = data
        self.recs = recs
        self.ch = ch
        self.reads = 0


def hot_variant(cls: type, names: Sequence[str]) -> Any:
    """A subclass of the packet class ``cls`` whose fields ``names`` are plain
    slots (which take precedence over the properties of the same names).

    **speed:** the dispatch loop fills every one of them from the batch's
    records when it makes the packet; a slot read is several times cheaper
    than a property.  The subclass bears ``cls``'s name, so that it looks
    the same to users; ``isinstance(pkt, cls)`` holds.
    """
    sub = type(cls.__name__, (cls,), {"__slots__": tuple(names), "__module__": cls.__module__,
                                      "__doc__": cls.__doc__})
    sub.__qualname__ = cls.__qualname__
    return sub


def hot_struct(ffi: Any) -> struct.Struct:
    """A struct reading a batch of ``struct nfb_hot`` (cdef/core.h), which the
    C helper fills for the hot fields: ``iter_unpack`` yields ``(code,
    hw_protocol, mark, indev, payload_len, extra, timestamp)`` per packet.
    Raises ImportError if the compiler laid the struct out otherwise."""
    s = struct.Struct("=6Id")
    names = ("code", "hw_protocol", "mark", "indev", "payload_len", "extra", "timestamp")
    offsets = [ffi.offsetof("struct nfb_hot", f) for f in names]
    if offsets != [0, 4, 8, 12, 16, 20, 24] or ffi.sizeof("struct nfb_hot") != s.size:
        raise ImportError("nfbind: unexpected layout of struct nfb_hot: %r" % (offsets,))
    return s


class Vlan(NamedTuple):
    """An 802.1Q tag: ``proto`` (e.g. 0x8100) and ``tci``."""

    proto: int
    tci: int

    @property
    def id(self) -> int:
        """The VLAN id (VID), the low 12 bits of the TCI."""
        return self.tci & 0x0FFF

    @property
    def pcp(self) -> int:
        """The priority code point, the top 3 bits of the TCI."""
        return self.tci >> 13


@dataclass(frozen=True)
class CtSummary:
    """A summary of a connection: id, mark, status, TCP state, zone,
    timeout, use count and protocol.

    nfbind no longer makes these: ``pkt.ct`` is a full conntrack
    :class:`~nfbind.Flow` on every install (it is decoded by the core, which
    every install has), and a Flow has each of these attributes under the
    same name.  The class stays importable for code that names it.
    """

    id: Optional[int]
    mark: int
    status: CtStatus
    state: Optional[TcpState]
    zone: int
    timeout: Optional[int]
    use: Optional[int]
    proto: Optional[int]


def field(index: int, bit: int, doc: str) -> property:
    """A packet property: record word ``index`` when the kernel sent the
    attribute behind presence ``bit``, else None."""
    def get(self: "PacketBase") -> Optional[int]:
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & bit:
            return r[o + index]
        return None

    get.__doc__ = doc
    return property(get)


def blob(off_index: int, bit: int, doc: str) -> property:
    """A packet property: the bytes at record words ``off_index`` (offset)
    and ``off_index + 1`` (length), else None."""
    def get(self: "PacketBase") -> Optional[bytes]:
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & bit:
            start = r[o + off_index]
            return self._b.data[start : start + r[o + off_index + 1]]
        return None

    get.__doc__ = doc
    return property(get)


def _name(index: int, bit: int, doc: str) -> property:
    def get(self: "PacketBase") -> Optional[str]:
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & bit:
            return self._b.ch._ifname(r[o + index])
        return None

    get.__doc__ = doc
    return property(get)


def scapy_payload(payload: bytes, family: int,
                  hw_protocol: Optional[int] = None) -> ScapyPacket:
    """Decode an L3 packet with scapy: IPv6 for AF_INET6, IP for AF_INET."""
    try:
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6
        from scapy.packet import Raw
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "pkt.scapy() needs scapy: pip install 'nfbind[scapy]'"
        ) from e
    if family == lib.NFPROTO_IPV6 or hw_protocol == lib.ETH_P_IPV6:
        return IPv6(payload)
    if family == lib.NFPROTO_IPV4 or hw_protocol == lib.ETH_P_IP:
        return IP(payload)
    if payload[:1] and payload[0] >> 4 == 6:
        return IPv6(payload)
    if payload[:1] and payload[0] >> 4 == 4:
        return IP(payload)
    return Raw(payload)


class PacketBase:
    """Metadata every NFQUEUE and NFLOG packet has.

    A field the kernel did not send is ``None``.  Objects are cheap: fields are
    read from the batch record on access.
    """

    __slots__ = ("_b", "_o", "_ct")

    _b: Batch[PacketSource]
    _o: int
    _ct: Optional[Flow]

    # -- header ---------------------------------------------------------------

    @property
    def hook(self) -> int:
        """The netfilter hook: a :class:`Hook`, or an :class:`ArpHook` for
        ARP-family packets."""
        r = self._b.recs
        v = r[self._o + _F_HOOK]
        table = _ARP_HOOKS if r[self._o + _F_FAMILY] == _NFPROTO_ARP else _HOOKS
        return table.get(v, v)

    @property
    def hw_protocol(self) -> int:
        """The link-layer protocol (EtherType), e.g. 0x0800 for IPv4."""
        b = self._b
        b.reads += 1
        return b.recs[self._o + _F_HWPROTO]

    @property
    def family(self) -> int:
        """The protocol family (:class:`Family`): IPV4, IPV6, BRIDGE ..."""
        v = self._b.recs[self._o + _F_FAMILY]
        return _FAMILIES.get(v, v)

    # -- payload ----------------------------------------------------------------

    @property
    def payload(self) -> bytes:
        """The packet from its network header on, up to ``copy_range`` bytes
        (``b""`` when the copy mode sends none)."""
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_PAYLOAD:
            start = r[o + _F_PAYLOAD_OFF]
            return self._b.data[start : start + r[o + _F_PAYLOAD_LEN]]
        return b""

    @property
    def payload_len(self) -> int:
        """``len(pkt.payload)`` without copying it."""
        b = self._b
        b.reads += 1
        r = b.recs
        o = self._o
        return r[o + _F_PAYLOAD_LEN] if r[o + _F_ATTRS] & _A_PAYLOAD else 0

    @property
    def cap_len(self) -> int:
        """The packet's full length (>= ``len(payload)``) when the payload is
        copied; 0 with ``CopyMode.META``, where the kernel sends no length."""
        r = self._b.recs
        o = self._o
        a = r[o + _F_ATTRS]
        if a & _A_CAPLEN:
            return r[o + _F_CAPLEN]
        return r[o + _F_PAYLOAD_LEN] if a & _A_PAYLOAD else 0

    @property
    def truncated(self) -> bool:
        """True when ``payload`` is shorter than the packet (copy_range cut it)."""
        return self.cap_len > self.payload_len

    # -- metadata -------------------------------------------------------------

    @property
    def mark(self) -> Optional[int]:
        """The packet mark (skb->mark), or None."""
        b = self._b
        b.reads += 1
        r = b.recs
        o = self._o
        return r[o + _F_MARK] if r[o + _F_ATTRS] & _A_MARK else None

    uid = field(lib.NFB_F_UID, lib.NFB_A_UID, "UID of the local socket's owner, or None.")
    gid = field(lib.NFB_F_GID, lib.NFB_A_GID, "GID of the local socket's owner, or None.")
    priority = field(lib.NFB_F_PRIORITY, lib.NFB_A_PRIORITY, "skb->priority, or None.")
    @property
    def indev(self) -> Optional[int]:
        """Input interface index, or None."""
        b = self._b
        b.reads += 1
        r = b.recs
        o = self._o
        return r[o + _F_INDEV] if r[o + _F_ATTRS] & _A_INDEV else None

    outdev = field(lib.NFB_F_OUTDEV, lib.NFB_A_OUTDEV, "Output interface index, or None.")
    physindev = field(
        lib.NFB_F_PHYSINDEV, lib.NFB_A_PHYSINDEV, "Bridge port the packet came in on, or None."
    )
    physoutdev = field(
        lib.NFB_F_PHYSOUTDEV, lib.NFB_A_PHYSOUTDEV, "Bridge port the packet goes out on, or None."
    )
    indev_name = _name(lib.NFB_F_INDEV, lib.NFB_A_INDEV, "Input interface name (cached), or None.")
    outdev_name = _name(
        lib.NFB_F_OUTDEV, lib.NFB_A_OUTDEV, "Output interface name (cached), or None."
    )
    physindev_name = _name(
        lib.NFB_F_PHYSINDEV, lib.NFB_A_PHYSINDEV, "Bridge input port name (cached), or None."
    )
    physoutdev_name = _name(
        lib.NFB_F_PHYSOUTDEV, lib.NFB_A_PHYSOUTDEV, "Bridge output port name (cached), or None."
    )
    hwaddr = blob(
        lib.NFB_F_HWADDR_OFF, lib.NFB_A_HWADDR, "Source link-layer address (bytes), or None."
    )
    l2hdr = blob(lib.NFB_F_L2HDR_OFF, lib.NFB_A_L2HDR, "The full link-layer header, or None.")

    @property
    def secctx(self) -> Optional[str]:
        """The security context (SELinux/Smack label), or None."""
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_SECCTX:
            start = r[o + _F_SECCTX_OFF]
            raw = self._b.data[start : start + r[o + _F_SECCTX_LEN]]
            return raw.decode("utf-8", "replace")
        return None

    @property
    def timestamp(self) -> Optional[float]:
        """Arrival time in seconds since the epoch, or None (the kernel stamps
        packets only on input hooks)."""
        b = self._b
        b.reads += 1
        r = b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_TIMESTAMP:
            return ((r[o + _F_TS_SEC_HI] << 32) | r[o + _F_TS_SEC_LO]) + r[o + _F_TS_USEC] / 1e6
        return None

    @property
    def vlan(self) -> Optional[Vlan]:
        """The 802.1Q tag the packet carried, or None."""
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_VLAN:
            return Vlan(r[o + _F_VLAN_PROTO], r[o + _F_VLAN_TCI])
        return None

    @property
    def ct_info(self) -> Optional[int]:
        """How the packet relates to its connection (:class:`CtInfo`), or None."""
        r = self._b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_CTINFO:
            v = r[o + _F_CTINFO]
            return _CTINFOS.get(v, v)
        return None

    @property
    def ct(self) -> Optional[Flow]:
        """The packet's connection: a conntrack :class:`~nfbind.Flow` (id,
        mark, status, TCP state, tuples, zone, labels ...), or None.

        Needs the ``conntrack`` flag.  The kernel attaches it to the packet
        when built with CONFIG_NETFILTER_NETLINK_GLUE_CT; otherwise nfbind
        looks the connection up over ctnetlink on first access (one request,
        then cached), which finds confirmed connections only: a packet seen
        before its connection was confirmed (the first packet of a
        connection at PREROUTING/FORWARD/OUTPUT) then has ``ct`` None, and
        ``ct_info`` is always None.  Both ways work without the conntrack
        channel (libnetfilter_conntrack): the core decodes the flow.  None
        too when the kernel's conntrack attributes hold no original tuple
        (a message cut short).
        """
        try:
            return self._ct
        except AttributeError:
            pass
        r = self._b.recs
        o = self._o
        ct: Optional[Flow] = None
        ch = self._b.ch
        if r[o + _F_ATTRS] & _A_CT:
            ct = ct_flow(self._b.data, r[o + _F_CT_OFF], r[o + _F_CT_LEN], r[o + _F_FAMILY])
        elif ch._ct_fallback and r[o + _F_ATTRS] & _A_PAYLOAD:
            ct = ch._ctnl.flow(self.payload)
        self._ct = ct
        return ct

    def process(self) -> Optional[Process]:
        """The local process whose socket sent the packet (hooks OUTPUT and
        POSTROUTING) or will receive it (INPUT, PREROUTING): a
        :class:`~nfbind.Process` (pid, uid, exe, cmdline), or None.

        The socket is looked up by the packet's addresses and ports
        (NETLINK_SOCK_DIAG, in the channel's network namespace), its owner
        through ``/proc``; see "Which process" in the NFQUEUE docs for what
        it costs and what it cannot see.  TCP and UDP over IPv4 and IPv6.
        None for forwarded packets (FORWARD, and POSTROUTING of a packet
        that came in on an interface), other protocols, later fragments, a
        socket that is gone (the process exited or closed it), and a socket
        no process visible in ``/proc`` holds.  At PREROUTING a packet for
        another host can match a local socket bound to the wildcard address
        and its port: look processes up at INPUT or OUTPUT.  On a logged
        packet the lookup runs when you call it, after the packet went on:
        a short-lived socket may be gone by then.

        Raises ValueError when the packet's headers were not copied
        (``copy_mode=CopyMode.META``, or a ``copy_range`` shorter than the
        IP and TCP/UDP headers), ClosedError after the channel closed,
        NetlinkError when the kernel refuses the lookup.
        """
        r = self._b.recs
        o = self._o
        return process_of(self.payload, r[o + _F_FAMILY], r[o + _F_HOOK], self.indev,
                          self.outdev, self._b.ch)

    def scapy(self) -> ScapyPacket:
        """The payload decoded by scapy: ``IP`` or ``IPv6`` by family.

        Raises ImportError naming the extra to install when scapy is missing.
        """
        return scapy_payload(self.payload, self._b.recs[self._o + _F_FAMILY],
                             self.hw_protocol)

    def _repr_fields(self) -> str:
        return "hook=%s len=%d" % (getattr(self.hook, "name", self.hook), self.cap_len)
