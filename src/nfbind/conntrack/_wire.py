# SPDX-License-Identifier: GPL-2.0-or-later
"""What goes to the kernel: the request specs of the C helper (``struct
nfb_ct_spec``, ``nfb_exp_spec``, ``nfb_ct_dumpf``) filled from checked
Python values, and the checks a tuple must pass before the kernel can look
it up.

Only the attributes a request needs are set: an update carries the tuple,
the zone and what changes, never attributes read back from the kernel
(``conntrack -U`` resends what it read, which the kernel refuses for some
flows, e.g. with EOPNOTSUPP).
"""
from __future__ import annotations

import ipaddress
import typing as _t
from typing import Any, FrozenSet, List, NamedTuple, Optional, Union

from .._channels import missing

try:
    from .._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack._wire") from e
from .._core import lib as core
from .labels import labels_bytes
from ..enums import IPProto
from .model import (
    AF_INET,
    AF_INET6,
    ICMP_PROTOS,
    PORT_PROTOS,
    U32_MAX,
    Expectation,
    Flow,
    Tuple,
    check_addr,
    check_family,
    check_opt,
    check_proto,
    check_u16,
    check_u32,
)

__all__ = ["TABLES", "TupleOrFlow", "status_filter", "dump_filter", "Support", "DumpFilter",
           "zone_id", "complete", "as_tuple", "zone_of", "flow_spec", "create_spec",
           "update_spec", "lookup_tuple", "expect_spec", "expect_delete_spec"]

TupleOrFlow = Union[Tuple, Flow]

#: dump(table=) -> the message that dumps it
TABLES = {
    "conntrack": core.IPCTNL_MSG_CT_GET,
    "dying": core.IPCTNL_MSG_CT_GET_DYING,
    "unconfirmed": core.IPCTNL_MSG_CT_GET_UNCONFIRMED,
}


# -- filters -------------------------------------------------------------------------------


def status_filter(status: Any, status_mask: Any) -> _t.Tuple[Optional[int], Optional[int]]:
    """The checked status and status mask of a dump or flush filter; the mask
    defaults to the status itself."""
    st = check_opt(check_u32, "status", status)
    smask = check_opt(check_u32, "status_mask", status_mask)
    if smask is not None and st is None:
        raise ValueError("status_mask needs status=")
    if st is not None and smask is None:
        smask = st
    return st, smask


def dump_filter(fam: Optional[int], mark: Optional[int], mmask: int, status: Optional[int],
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


IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: the protocols whose ports the kernel's tuple filter compares
_KERNEL_PORT_PROTOS = frozenset((int(IPProto.TCP), int(IPProto.UDP)))
_FULL_PREFIX = {4: 32, 6: 128}


class Support(NamedTuple):
    """What the running kernel filters itself: CTA_FILTER tuple filters
    (Linux 5.8) and CTA_ZONE in dumps and flushes (Linux 6.8)."""

    tuples: bool
    zone: bool


def zone_id(flow: Flow) -> int:
    """The zone a flow lives in, whichever direction it applies to: Flow.zone,
    else a directional zone (orig.zone or reply.zone), else 0 (the kernel's
    nf_ct_zone_equal_any)."""
    if flow.zone:
        return flow.zone
    if flow.orig.zone is not None:
        return flow.orig.zone
    if flow.reply is not None and flow.reply.zone is not None:
        return flow.reply.zone
    return 0


def _network(name: str, value: Any) -> Optional[IPNetwork]:
    """None, or an address or network (``"10.0.0.0/8"``, an ``ipaddress``
    address or network, bytes, int) as a network."""
    if value is None:
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address, bytes, int)):
        return ipaddress.ip_network(check_addr(name, value))
    if isinstance(value, bool) or not isinstance(value, str):
        raise TypeError("%s must be an address or network (str, bytes, int or ipaddress "
                        "object), not %s" % (name, type(value).__name__))
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("%s is not an IPv4/IPv6 address or network: %r" % (name, value)) from None


def _addr_in(addr: Any, want: Any) -> bool:
    """``addr`` is the address ``want``, or in the network ``want``."""
    if isinstance(want, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return bool(addr in want)
    return bool(addr == want)


class DumpFilter:
    """The checked conditions of a dump or flush, and how they are split
    between the kernel and userspace.

    Addresses are networks (an address is a /32 or /128); the kernel compares
    exact addresses only, so a shorter prefix is matched in userspace.  So
    are IPv6 addresses: the kernel's tuple filter (ctnetlink_filter_match_tuple,
    still in Linux 6.18) tests IPv6 addresses with ``!ipv6_addr_cmp()``,
    which is true when they are equal, and so returns the flows whose
    address differs (an IPv6 ``src=`` dump got every flow but the one asked
    for).  Protocol and ports of IPv6 flows still go to the kernel.
    :meth:`kernel` builds the request's filter for one family and says
    whether the kernel applies every condition (``exact``); :meth:`matches`
    applies all of them in userspace, which every dump does again (a few
    compares per flow), so the result is the same on any kernel.
    """

    __slots__ = ("family", "mark", "mark_mask", "status", "status_mask", "zone", "proto",
                 "src", "dst", "sport", "dport", "reply_src", "reply_dst", "reply_sport",
                 "reply_dport", "_addrs")

    def __init__(self, family: Any = None, *, mark: Any = None, mark_mask: Any = U32_MAX,
                 zone: Any = None, status: Any = None, status_mask: Any = None,
                 src: Any = None, dst: Any = None, proto: Any = None, sport: Any = None,
                 dport: Any = None, reply_src: Any = None, reply_dst: Any = None,
                 reply_sport: Any = None, reply_dport: Any = None) -> None:
        self.family = check_family("family", family)
        self.mark = check_opt(check_u32, "mark", mark)
        self.mark_mask = check_u32("mark_mask", mark_mask)
        self.zone = check_opt(check_u16, "zone", zone)
        self.status, self.status_mask = status_filter(status, status_mask)
        self.proto = None if proto is None else int(check_proto("proto", proto))
        self.src = _network("src", src)
        self.dst = _network("dst", dst)
        self.reply_src = _network("reply_src", reply_src)
        self.reply_dst = _network("reply_dst", reply_dst)
        self.sport = check_opt(check_u16, "sport", sport)
        self.dport = check_opt(check_u16, "dport", dport)
        self.reply_sport = check_opt(check_u16, "reply_sport", reply_sport)
        self.reply_dport = check_opt(check_u16, "reply_dport", reply_dport)
        named = [(n, getattr(self, n)) for n in ("src", "dst", "reply_src", "reply_dst")
                 if getattr(self, n) is not None]
        versions = {net.version for _, net in named}
        if len(versions) > 1:
            raise ValueError("the address filters mix IPv4 and IPv6 (%s): no flow matches "
                             "both" % ", ".join("%s=%s" % kv for kv in named))
        if versions and self.family is not None:
            want = 4 if self.family == AF_INET else 6
            if versions != {want}:
                raise ValueError("family is IPv%d but %s is not" % (want, named[0][0]))
        # for matches(): an address compares equal (fast), a network contains
        self._addrs = tuple(
            (n.network_address if n.prefixlen == _FULL_PREFIX[n.version] else n)
            if n is not None else None
            for n in (self.src, self.dst, self.reply_src, self.reply_dst))

    @property
    def has_tuple(self) -> bool:
        """Whether any condition is on a tuple (addresses, protocol, ports)."""
        return any(getattr(self, n) is not None for n in (
            "proto", "src", "dst", "sport", "dport", "reply_src", "reply_dst", "reply_sport",
            "reply_dport"))

    @property
    def empty(self) -> bool:
        """No condition at all: every flow passes."""
        return (self.family is None and self.mark is None and self.status is None
                and self.zone is None and not self.has_tuple)

    def families(self, support: Support) -> List[Optional[int]]:
        """The family of each request: the kernel takes tuple filters per
        family only, so without a family (given, or from the addresses)
        there is one request per family; else one."""
        fam = self.family
        if fam is None:
            for net in (self.src, self.dst, self.reply_src, self.reply_dst):
                if net is not None:
                    fam = AF_INET if net.version == 4 else AF_INET6
                    break
        if fam is None and support.tuples and self.has_tuple:
            return [AF_INET, AF_INET6]
        return [fam]

    def kernel(self, family: Optional[int], support: Support) -> _t.Tuple[Any, bool]:
        """The ``struct nfb_ct_dumpf`` of a request for ``family`` (None:
        both), and whether the kernel applies every condition."""
        f = dump_filter(family, self.mark, self.mark_mask, self.status, self.status_mask)
        exact = True
        if self.zone is not None:
            if support.zone:
                f.set |= lib.NFB_DF_ZONE
                f.zone = self.zone
            else:
                exact = False
        if not self.has_tuple:
            return f, exact
        if not support.tuples or family is None:
            return f, False
        proto = self.proto
        ports_ok = proto in _KERNEL_PORT_PROTOS
        for t, pre, src, dst, sport, dport in (
                (f.orig, "orig", self.src, self.dst, self.sport, self.dport),
                (f.reply, "reply", self.reply_src, self.reply_dst, self.reply_sport,
                 self.reply_dport)):
            flags = 0
            for net, bit, field in ((src, lib.NFB_CTF_IP_SRC, "src"),
                                    (dst, lib.NFB_CTF_IP_DST, "dst")):
                if net is None:
                    continue
                if net.prefixlen != _FULL_PREFIX[net.version] or net.version == 6:
                    # a network: matched in userspace; an IPv6 address too,
                    # since the kernel's IPv6 comparison is inverted (see
                    # the class docstring)
                    exact = False
                    continue
                raw = net.network_address.packed
                ffi.memmove(getattr(t, field), raw, len(raw))
                flags |= bit
            if sport is not None or dport is not None:
                if ports_ok:
                    flags |= lib.NFB_CTF_PROTO_NUM
                    if sport is not None:
                        t.sport = sport
                        flags |= lib.NFB_CTF_PROTO_SRC_PORT
                    if dport is not None:
                        t.dport = dport
                        flags |= lib.NFB_CTF_PROTO_DST_PORT
                else:
                    exact = False   # the kernel compares TCP and UDP ports only
            if proto is not None and (pre == "orig" or flags):
                flags |= lib.NFB_CTF_PROTO_NUM
            if flags & lib.NFB_CTF_PROTO_NUM:
                t.proto = proto
            setattr(f, pre + "_flags", flags)
        return f, exact

    def matches(self, flow: Flow) -> bool:
        """True when ``flow`` passes every condition."""
        if self.family is not None and flow.family != self.family:
            return False
        if self.mark is not None and flow.mark & self.mark_mask != self.mark & self.mark_mask:
            return False
        if self.status is not None:
            smask = self.status_mask or 0
            if flow.status & smask != self.status & smask:
                return False
        if self.zone is not None and zone_id(flow) != self.zone:
            return False
        if not self.has_tuple:
            return True
        o = flow.orig
        if self.proto is not None and o.proto != self.proto:
            return False
        if self.sport is not None and o.sport != self.sport:
            return False
        if self.dport is not None and o.dport != self.dport:
            return False
        src, dst, rsrc, rdst = self._addrs
        if src is not None and not _addr_in(o.src, src):
            return False
        if dst is not None and not _addr_in(o.dst, dst):
            return False
        if rsrc is None and rdst is None and self.reply_sport is None and (
                self.reply_dport is None):
            return True
        r = flow.reply
        if r is None:
            return False
        if self.reply_sport is not None and r.sport != self.reply_sport:
            return False
        if self.reply_dport is not None and r.dport != self.reply_dport:
            return False
        if rsrc is not None and not _addr_in(r.src, rsrc):
            return False
        if rdst is not None and not _addr_in(r.dst, rdst):
            return False
        return True

    def describe(self) -> str:
        """The conditions as text, for error messages ("all" when none)."""
        parts = []
        for n in self.__slots__:
            v = getattr(self, n)
            if v is None or (n == "mark_mask" and self.mark is None) or (
                    n == "status_mask" and self.status is None):
                continue
            if n == "mark_mask" and v == U32_MAX:
                continue
            parts.append("%s=%s" % (n, hex(v) if n.startswith(("mark", "status")) else v))
        return " ".join(parts) if parts else "all"


# -- tuples --------------------------------------------------------------------------------


def complete(tup: Tuple, what: str) -> None:
    """A tuple the kernel can look up: ports for port protocols, type and id for ICMP.

    Raises ValueError naming ``what``."""
    name = getattr(tup.proto, "name", str(tup.proto)).lower()
    if tup.proto in PORT_PROTOS and (tup.sport is None or tup.dport is None):
        raise ValueError("%s: a %s tuple needs sport and dport" % (what, name))
    if tup.proto in ICMP_PROTOS and (tup.icmp_type is None or tup.icmp_id is None):
        raise ValueError("%s: an %s tuple needs icmp_type and icmp_id (icmp_code defaults to 0)"
                         % (what, name))


def as_tuple(obj: Any, what: str) -> Tuple:
    """The original tuple of a Flow, or a Tuple itself.  Raises TypeError naming ``what``."""
    if isinstance(obj, Flow):
        return obj.orig
    if isinstance(obj, Tuple):
        return obj
    raise TypeError("%s needs a Flow or a Tuple, not %s" % (what, type(obj).__name__))


def zone_of(obj: TupleOrFlow, zone: Optional[int]) -> int:
    """``zone`` checked, else the Flow's zone (0 for a Tuple)."""
    if zone is not None:
        return check_u16("zone", zone)
    return obj.zone if isinstance(obj, Flow) else 0


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
    if tup.zone is not None:
        # CTA_TUPLE_ZONE: a directional zone (CT --zone-orig/--zone-reply)
        t.has |= core.NFB_T_ZONE
        t.zone = tup.zone


def _family_of(tup: Tuple) -> int:
    return AF_INET if tup.src.version == 4 else AF_INET6


# -- flows ---------------------------------------------------------------------------------


def flow_spec(tup: Tuple, zone: Optional[int]) -> Any:
    """A spec naming one flow: its original tuple and (when not 0) its zone."""
    s = ffi.new("struct nfb_ct_spec *")
    s.family = _family_of(tup)
    s.set = lib.NFB_S_ORIG
    _fill_tuple(s.orig, tup)
    if zone:
        s.set |= lib.NFB_S_ZONE
        s.zone = zone
    return s


def create_spec(flow: Flow) -> Any:
    """Everything :meth:`Conntrack.create` sends for ``flow``.

    Raises ValueError/TypeError for an incomplete tuple, a missing timeout or
    a NAT address of the other IP version."""
    complete(flow.orig, "create()")
    if flow.reply is not None:
        complete(flow.reply, "create() reply")
    if flow.timeout is None:
        raise ValueError("create() needs Flow(timeout=SECONDS): the kernel refuses a flow without one")
    s = flow_spec(flow.orig, flow.zone)
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
        ffi.memmove(s.labels, labels_bytes(flow.labels), 16)
    if flow.state is not None:
        s.set |= lib.NFB_S_STATE
        s.state = int(flow.state)
    if flow.helper is not None:
        s.set |= lib.NFB_S_HELPER
        raw = flow.helper.encode()
        ffi.memmove(s.helper, raw, len(raw))
    if flow.nat is not None:
        for ep, abit, pbit, afield, pfield in (
            (flow.nat.snat, lib.NFB_S_SNAT, lib.NFB_S_SNAT_PORT, "snat_addr", "snat_port"),
            (flow.nat.dnat, lib.NFB_S_DNAT, lib.NFB_S_DNAT_PORT, "dnat_addr", "dnat_port"),
        ):
            if ep is None:
                continue
            a = check_addr("nat address", ep[0])
            if a.version != flow.orig.src.version:
                raise ValueError("nat address %s is not of the flow's IP version" % a)
            s.set |= abit
            ffi.memmove(getattr(s, afield), a.packed, len(a.packed))
            if ep[1] is not None:
                s.set |= pbit
                setattr(s, pfield, check_u16("nat port", ep[1]))
    return s


def update_spec(tup: Tuple, zone: int, mark: Optional[int], timeout: Optional[int],
                status: Optional[int], labels: Optional[FrozenSet[int]],
                labels_mask: Optional[FrozenSet[int]]) -> Any:
    """An update of the flow ``tup`` in ``zone``: only the values given
    (checked already); ``labels`` under ``labels_mask``."""
    s = flow_spec(tup, zone)
    if mark is not None:
        s.set |= lib.NFB_S_MARK
        s.mark = mark
    if timeout is not None:
        s.set |= lib.NFB_S_TIMEOUT
        s.timeout = timeout
    if status is not None:
        s.set |= lib.NFB_S_STATUS
        s.status = status
    if labels_mask is not None:
        s.set |= lib.NFB_S_LABELS | lib.NFB_S_LABELS_MASK
        ffi.memmove(s.labels, labels_bytes(labels or ()), 16)
        ffi.memmove(s.labels_mask, labels_bytes(labels_mask), 16)
    return s


def lookup_tuple(tup: Tuple) -> Any:
    """``tup`` as the C ``struct nfb_ct_tuple`` of :func:`nfb_ct_build_lookup`."""
    t = ffi.new("struct nfb_ct_tuple *")
    _fill_tuple(t, tup)
    return t


# -- expectations ----------------------------------------------------------------------------


def expect_spec(exp: Expectation) -> Any:
    """Everything :meth:`Conntrack.create_expect` sends for ``exp``."""
    s = ffi.new("struct nfb_exp_spec *")
    s.family = _family_of(exp.expected)
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
        raw = exp.helper.encode()
        ffi.memmove(s.helper, raw, len(raw))
    return s


def expect_delete_spec(tup: Tuple, zone: int) -> Any:
    """The expectation for the expected tuple ``tup`` in ``zone``."""
    s = ffi.new("struct nfb_exp_spec *")
    s.family = _family_of(tup)
    s.set = lib.NFB_ES_EXPECTED
    _fill_tuple(s.expected, tup)
    if zone:
        s.set |= lib.NFB_ES_ZONE
        s.zone = zone
    return s
