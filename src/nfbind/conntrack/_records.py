# SPDX-License-Identifier: GPL-2.0-or-later
"""Records the kernel sent -> :class:`Flow`, :class:`Tuple`,
:class:`Expectation`, :class:`CpuStats`: the decoder.

The core's C parser (``nfb_ct_parse``) turns each ctnetlink message of a
dump, an event or a packet's NFQA_CT/NFULA_CT attribute into one ``struct
nfb_ct_rec``; this module turns a batch of those records into Python
objects.  It is the hot loop of a dump (a million flows is a few seconds),
so it uses tricks that plain code would not; each is marked **speed:** with
why it exists, and they live here and nowhere else:

* records are read with one ``struct.iter_unpack`` per batch, in layouts
  computed from the compiler's offsets (``_layout``);
* objects are made without their validating constructors (``_twin``);
* addresses, statuses, label sets and helper names come from caches;
* the hot loop binds globals to locals and pauses the cyclic GC;
* where the optional speedup ``nfbind._fastct`` was built, a C loop does
  what that Python loop does, with the same caches and helpers
  (:func:`build_flows` picks it; :func:`py_build_flows` is the loop).

Expectations and statistics are rare and small: their messages are walked
in Python (:func:`parse_expect`, :func:`parse_cpu_stats`,
:func:`parse_global_stats`).

Everything here depends on the core module only, so ``pkt.ct`` decodes to a
Flow without libnetfilter_conntrack.
"""
from __future__ import annotations

import gc as _gc
import ipaddress
import struct
import sys
import typing as _t
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Union

from .. import _speedups
from .._core import ffi, lib as core
from .._netlink import check_int, iter_attrs
from ..enums import CtStatus, ExpectFlag, Family, IPProto, TcpFlag
from .labels import labels_from_bytes
from .model import (
    AF_INET,
    AF_INET6,
    PROTO,
    SCTP_STATE,
    TCP_STATE,
    Counters,
    CpuStats,
    Endpoint,
    Expectation,
    ExpectStats,
    Flow,
    IPAddress,
    Nat,
    SeqAdj,
    Synproxy,
    TcpInfo,
    Timestamps,
    Tuple,
)

__all__ = ["REC_SIZE", "build_flows", "py_build_flows", "FAST", "event_codes", "ct_flow",
           "flow_from_ct_attrs", "parse_expect", "parse_cpu_stats", "parse_expect_stats",
           "parse_global_stats", "NLMSG"]

#: a batch of ``struct nfb_ct_rec`` records, copied out of C
Records = Union[bytes, memoryview]
#: a record field for _layout: its path in the C struct, struct code, width
_Field = _t.Tuple[_t.Tuple[str, ...], str, int]


# -- speed: building frozen records without their constructors ---------------------------


def _twin(cls: type, none: _t.Tuple[str, ...] = ()) -> Callable[..., Any]:
    """A mutable class with the same slots as the frozen record ``cls``.

    **speed:** flows from the kernel need no validation, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    which costs 3-4x a plain slot store (and Flow's ``__post_init__`` checks
    every field).  The builder makes a twin instance and assigns
    ``__class__ = cls`` (allowed: identical slot layout), giving a genuine
    ``cls`` instance (equal, hashable, picklable like one a user made).
    If the interpreter refuses the assignment, ``cls`` itself is used (then
    ``none`` must be empty).

    The fields named in ``none`` are not arguments: the builder sets them to
    None (**speed:** a constant store costs less than passing an argument,
    for the fields the common flows lack).
    """
    names = getattr(cls, "__slots__")
    ns: Dict[str, Any] = {"__slots__": names}
    src = "def __init__(self, %s):\n%s" % (
        ", ".join(n for n in names if n not in none),
        "".join("    self.%s = %s\n" % (n, "None" if n in none else n) for n in names))
    exec(src, ns)  # noqa: S102 - builds a plain __init__, like dataclasses does
    twin = type("_%sBuilder" % cls.__name__, (object,), ns)
    try:
        probe = twin(*([None] * (len(names) - len(none))))
        probe.__class__ = cls
    except TypeError:  # pragma: no cover - layout differs on this interpreter
        if none:
            raise
        return cls
    return twin


_TupleB = _twin(Tuple)
_FlowB = _twin(Flow)
#: a tuple with ports and no zone: the common one
_PortsB = _twin(Tuple, ("icmp_type", "icmp_code", "icmp_id", "zone"))
#: a flow without the rare attributes (see build_flows' short path)
_PlainB = _twin(Flow, ("counters", "timestamps", "nat", "helper", "secctx", "master",
                       "seq_adj", "synproxy"))
_CountersB = _twin(Counters)
_TcpInfoB = _twin(TcpInfo)
_SeqAdjB = _twin(SeqAdj)
_SynproxyB = _twin(Synproxy)


# -- speed: the record layout as struct formats --------------------------------------------

_REC = "struct nfb_ct_rec"
#: bytes per record
REC_SIZE = ffi.sizeof(_REC)
_FAM_OFF = ffi.offsetof(_REC, "family")
_EVENT_OFF = ffi.offsetof(_REC, "event")


def _layout(fields: _t.Sequence[_Field], base: str,
            size: int) -> struct.Struct:
    """A struct format for the named fields of C type ``base`` (offsets from
    the compiler), padding the rest.

    **speed:** ``struct.iter_unpack`` over a batch of records reads every
    field of every record in one C call, where cffi would pay one attribute
    access per field."""
    fmt = "="
    pos = 0
    for path, code, width in fields:
        off = ffi.offsetof(base, *path)
        if off < pos:
            raise ImportError("nfbind._nfcore: unexpected layout of %s.%s" % (base, ".".join(path)))
        if off > pos:
            fmt += "%dx" % (off - pos)
        fmt += code
        pos = off + width
    if size > pos:
        fmt += "%dx" % (size - pos)
    s = struct.Struct(fmt)
    if s.size != size:
        raise ImportError("nfbind._nfcore: record layout mismatch for %s" % base)
    return s


def _tuple_fields(prefix: _t.Tuple[str, ...], v6: bool, zone: bool = False,
                  icmp: bool = True) -> List[_Field]:
    # speed: IPv4 addresses as one native u32 (an int key for the address
    # cache: no bytes object per address); IPv6 addresses as 16 bytes; the
    # directional zone and the ICMP fields only where asked for (every field
    # unpacked costs each record an int object and a local store)
    a, w = ("16s", 16) if v6 else ("I", 4)
    return [
        (prefix + ("src",), a, w), (prefix + ("dst",), a, w),
        (prefix + ("sport",), "H", 2), (prefix + ("dport",), "H", 2)] + (
        [(prefix + ("icmp_id",), "H", 2)] if icmp else []) + (
        [(prefix + ("zone",), "H", 2)] if zone else []) + (
        [(prefix + ("icmp_type",), "B", 1), (prefix + ("icmp_code",), "B", 1)]
        if icmp else []) + [
        (prefix + ("proto",), "B", 1), (prefix + ("has",), "B", 1),
    ]


def _core_struct(v6: bool) -> struct.Struct:
    """What every flow needs: both tuples and the scalar attributes."""
    fields = _tuple_fields(("orig",), v6, icmp=False) + _tuple_fields(("reply",), v6, icmp=False)
    fields += [((n,), "I", 4) for n in ("attrs", "status", "timeout", "mark", "secmark", "use",
                                        "id")]
    fields += [(("zone",), "H", 2), (("family",), "B", 1), (("state",), "B", 1),
               (("tcp",), "Q", 8)]
    return _layout(fields, _REC, REC_SIZE)


#: the fields few flows have (speed: read by a second unpack only when the
#: record's attrs say so)
_RARE_STRUCT = _layout(
    [((n,), "Q", 8) for n in ("o_packets", "o_bytes", "r_packets", "r_bytes", "ts_start",
                              "ts_stop")]
    + [(("secctx_off",), "I", 4), (("secctx_len",), "I", 4), (("labels",), "16s", 16),
       (("helper",), "16s", 16), (("seqadj",), "6I", 24), (("synproxy",), "3I", 12)],
    _REC, REC_SIZE)
_RARE_UNPACK = _RARE_STRUCT.unpack_from
_CORE4_S = _core_struct(False)
_CORE6_S = _core_struct(True)
_CORE4 = _CORE4_S.unpack_from
_CORE6 = _CORE6_S.unpack_from
_MASTER_OFF = ffi.offsetof(_REC, "master")
_ICMP_FIELDS = (("icmp_id", "H", 2), ("icmp_type", "B", 1), ("icmp_code", "B", 1))
_TSIZE = ffi.sizeof("struct nfb_ct_tuple")
_MASTER4 = _layout(_tuple_fields((), False, True), "struct nfb_ct_tuple", _TSIZE).unpack_from
_MASTER6 = _layout(_tuple_fields((), True, True), "struct nfb_ct_tuple", _TSIZE).unpack_from
#: the ICMP id, type and code of a record's orig and reply tuples
_ICMPS = _layout([(("orig", n), c, w) for n, c, w in _ICMP_FIELDS]
                 + [(("reply", n), c, w) for n, c, w in _ICMP_FIELDS],
                 _REC, REC_SIZE).unpack_from
#: the directional zones of a record's orig and reply tuples
_ZONES = _layout([(("orig", "zone"), "H", 2), (("reply", "zone"), "H", 2)],
                 _REC, REC_SIZE).unpack_from

_T_PORTS = core.NFB_T_PORTS
_T_ICMP = core.NFB_T_ICMP
_T_V6 = core.NFB_T_V6
_T_ZONE = core.NFB_T_ZONE
_A_ORIG = core.NFB_CT_A_ORIG
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
_A_TCP = core.NFB_CT_A_TCP
_A_SEQADJ = core.NFB_CT_A_SEQADJ_ORIG | core.NFB_CT_A_SEQADJ_REPLY
_A_SYNPROXY = core.NFB_CT_A_SYNPROXY
_A_TUPLE_ZONE = core.NFB_CT_A_TUPLE_ZONE
_NAT_BITS = int(CtStatus.SRC_NAT | CtStatus.DST_NAT)
_SRC_NAT = int(CtStatus.SRC_NAT)
_DST_NAT = int(CtStatus.DST_NAT)
_TCP = int(IPProto.TCP)
_SCTP = int(IPProto.SCTP)


# -- speed: caches -----------------------------------------------------------------------------
# A dump's flows share few distinct addresses, statuses, label sets and helper
# names: each is made once and shared (they are immutable).


class _IPCache(Dict[Union[int, bytes], IPAddress]):
    """Raw address -> ipaddress object: a native u32 for IPv4, 16 bytes for IPv6."""

    def __missing__(self, raw: Union[int, bytes]) -> IPAddress:
        if len(self) > 200000:
            self.clear()
        if isinstance(raw, int):
            a: IPAddress = ipaddress.IPv4Address(raw.to_bytes(4, sys.byteorder))
        elif len(raw) == 4:
            a = ipaddress.IPv4Address(raw)
        else:
            a = ipaddress.IPv6Address(raw)
        self[raw] = a
        return a


class _StatusCache(Dict[int, CtStatus]):
    def __missing__(self, v: int) -> CtStatus:
        s = CtStatus(v)
        self[v] = s
        return s


class _LabelCache(Dict[bytes, FrozenSet[int]]):
    def __missing__(self, raw: bytes) -> FrozenSet[int]:
        if len(self) > 4096:
            self.clear()
        s = labels_from_bytes(raw)
        self[raw] = s
        return s


class _StrCache(Dict[bytes, str]):
    def __missing__(self, raw: bytes) -> str:
        s = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        self[raw] = s
        return s


class _TcpCache(Dict[int, TcpInfo]):
    """``rec.tcp`` (CTA_PROTOINFO_TCP packed by the C parser) -> TcpInfo:
    a table holds few distinct combinations of state, scales and flags."""

    def __missing__(self, key: int) -> TcpInfo:
        if len(self) > 4096:
            self.clear()
        vals: List[Any] = []
        for i, (shift, has) in enumerate(_TCP_FIELDS):
            b = (key >> shift) & 0xFF
            if not key & has:
                vals.append(None)
            elif i == 0:
                vals.append(TCP_STATE[b])
            elif i >= 3:
                vals.append(TcpFlag(b))
            else:
                vals.append(b)
        t: TcpInfo = _TcpInfoB(*vals)
        t.__class__ = TcpInfo
        self[key] = t
        return t


#: the fields of TcpInfo, in order: their shift in ``rec.tcp``, and the bit
#: saying the kernel sent them
_TCP_FIELDS = (
    (core.NFB_TCP_STATE_SHIFT, core.NFB_TCP_HAS_STATE),
    (core.NFB_TCP_WSCALE_ORIG_SHIFT, core.NFB_TCP_HAS_WSCALE_ORIG),
    (core.NFB_TCP_WSCALE_REPLY_SHIFT, core.NFB_TCP_HAS_WSCALE_REPLY),
    (core.NFB_TCP_FLAGS_ORIG_SHIFT, core.NFB_TCP_HAS_FLAGS_ORIG),
    (core.NFB_TCP_FLAGS_REPLY_SHIFT, core.NFB_TCP_HAS_FLAGS_REPLY),
)

_IPS = _IPCache()
_STATUS = _StatusCache()
_LABELS = _LabelCache()
_HELPERS = _StrCache()
_TCPINFO = _TcpCache()
_NO_LABELS: FrozenSet[int] = frozenset()
_LABELS[bytes(16)] = _NO_LABELS


# -- records -> flows ---------------------------------------------------------------------------


def _master_tuple(recs: Records, off: int, v6: bool) -> Tuple:
    src, dst, sp, dp, iid, zn, ity, ico, pr, has = (_MASTER6 if v6 else _MASTER4)(
        recs, off + _MASTER_OFF)
    ips = _IPS
    zone = zn if has & _T_ZONE else None
    if has & _T_PORTS:
        t: Tuple = _TupleB(ips[src], ips[dst], PROTO[pr], sp, dp, None, None, None, zone)
    elif has & _T_ICMP:
        t = _TupleB(ips[src], ips[dst], PROTO[pr], None, None, ity, ico, iid, zone)
    else:
        t = _TupleB(ips[src], ips[dst], PROTO[pr], None, None, None, None, None, zone)
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


_RARE = (_A_COUNTERS | _A_TS_START | _A_LABELS | _A_HELPER | _A_SECCTX | _A_MASTER
         | _A_SEQADJ | _A_SYNPROXY | _A_TUPLE_ZONE)


def _rare(recs: Records, off: int, attrs: int, v6: bool, data: bytes) -> _t.Tuple[
        Optional[Counters], Optional[Timestamps], FrozenSet[int], Optional[str], Optional[str],
        Optional[Tuple], Optional[SeqAdj], Optional[Synproxy]]:
    """counters, timestamps, labels, helper, secctx, master, seq_adj,
    synproxy of one record."""
    (opk, oby, rpk, rby, tss, tse, sxo, sxl, labels, helper,
     sa0, sa1, sa2, sa3, sa4, sa5, isn, its, tsoff) = _RARE_UNPACK(recs, off)
    if attrs & _A_COUNTERS:
        ctr: Optional[Counters] = _CountersB(opk, oby, rpk, rby)
        ctr.__class__ = Counters
    else:
        ctr = None
    sadj: Optional[SeqAdj] = None
    if attrs & _A_SEQADJ:
        sadj = _SeqAdjB(sa0, sa1, sa2, sa3, sa4, sa5)
        sadj.__class__ = SeqAdj
    sprx: Optional[Synproxy] = None
    if attrs & _A_SYNPROXY:
        sprx = _SynproxyB(isn, its, tsoff)
        sprx.__class__ = Synproxy
    return (
        ctr,
        Timestamps(tss, tse if attrs & _A_TS_STOP else None) if attrs & _A_TS_START else None,
        _LABELS[labels] if attrs & _A_LABELS else _NO_LABELS,
        _HELPERS[helper] if attrs & _A_HELPER else None,
        data[sxo:sxo + sxl].decode("utf-8", "replace") if attrs & _A_SECCTX else None,
        _master_tuple(recs, off, v6) if attrs & _A_MASTER else None,
        sadj,
        sprx,
    )


def _rows(recs: Records, n: int, nv6: Optional[int]) -> Iterable[_t.Tuple[Any, ...]]:
    """The core fields of each record: one ``iter_unpack`` over a batch of
    one IP version (the common case), else one ``unpack_from`` per record."""
    size = n * REC_SIZE
    if nv6 == 0 or nv6 == n:
        view = memoryview(recs)[:size] if len(recs) != size else recs
        return (_CORE6_S if nv6 else _CORE4_S).iter_unpack(view)
    return ((_CORE6 if recs[off + _FAM_OFF] == AF_INET6 else _CORE4)(recs, off)
            for off in range(0, size, REC_SIZE))


#: a flow on the fast path of build_flows: these attributes present ...
_PLAIN_WANT = _A_REPLY | _A_TIMEOUT | _A_USE | _A_ID
#: ... and none of the rare ones
_PLAIN_MASK = _PLAIN_WANT | _RARE


def build_flows(recs: Records, n: int, data: bytes, out: List[Flow],
                nv6: Optional[int] = None) -> None:
    """Append a Flow for each of the ``n`` records in ``recs`` to ``out``.

    ``recs`` holds ``n`` ``struct nfb_ct_rec`` (bytes or a buffer), ``data``
    the batch's strings (security contexts), ``nv6`` how many records are
    IPv6 (None: unknown).

    With the compiled speedup ``nfbind._fastct`` the flows are built in C
    (same values, same caches, see ``_fast_builder``), else by
    :func:`py_build_flows`; either way with the cyclic garbage collector
    paused, since the thousands of new objects would trigger collections
    that cannot free anything.
    """
    fast = FAST
    if fast is None:
        py_build_flows(recs, n, data, out, nv6)
        return
    gc_was_on = _gc.isenabled()
    if gc_was_on:
        _gc.disable()
    try:
        fast(recs, n, data, out)
    finally:
        if gc_was_on:
            _gc.enable()


def py_build_flows(recs: Records, n: int, data: bytes, out: List[Flow],
                   nv6: Optional[int] = None) -> None:
    """:func:`build_flows` in Python (without ``nfbind._fastct``).

    The hot loop of a dump: the core fields of every record come from one
    ``struct.iter_unpack`` (a second unpack only for flows with counters,
    timestamps, labels, a helper ...), addresses and statuses from caches,
    and objects are made with slot stores instead of validated constructors
    (see ``_twin``).  **speed:** flows with ports both ways, no NAT and the
    usual attributes take a short path that reuses orig's address objects
    for the reply; globals are bound to locals (a local load is cheaper
    than a global one, per field of every flow); and the cyclic garbage
    collector is paused meanwhile, since the thousands of new objects would
    trigger collections that cannot free anything.
    """
    ips = _IPS
    status_c = _STATUS
    protos = PROTO
    TB = _TupleB
    FB = _FlowB
    PB = _PortsB
    LB = _PlainB
    T = Tuple
    F = Flow
    append = out.append
    no_labels = _NO_LABELS
    fam4 = Family.IPV4
    fam6 = Family.IPV6
    af6 = AF_INET6
    t_ports = _T_PORTS
    t_icmp = _T_ICMP
    a_state = _A_STATE
    a_tzone = _A_TUPLE_ZONE
    a_tcp = _A_TCP
    tcp_c = _TCPINFO
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
    tcp_state = TCP_STATE
    sctp_state = SCTP_STATE
    gc_was_on = _gc.isenabled()
    if gc_was_on:
        _gc.disable()
    try:
        off = -REC_SIZE
        for (osrc, odst, osp, odp, opr, ohas, rsrc, rdst, rsp, rdp, rpr, rhas,
             attrs, status, timeout, mark, secmark, use, ctid,
             zone, family, state, tcpk) in _rows(recs, n, nv6):
            off += REC_SIZE
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
                orig = PB(src, dst, proto, osp, odp)
                orig.__class__ = T
                reply = PB(dst if rsrc == odst else ips[rsrc], src if rdst == osrc else ips[rdst],
                           proto if rpr == opr else protos[rpr], rsp, rdp)
                reply.__class__ = T
                f = LB(orig, reply, fam6 if family == af6 else fam4, proto, st,
                       status_c[status], timeout, mark, secmark, zone, no_labels, use, ctid,
                       tcp_c[tcpk] if attrs & a_tcp else None)
                f.__class__ = F
                append(f)
                continue
            if attrs & a_tzone:
                ozn, rzn = _ZONES(recs, off)
                oz = ozn if ohas & _T_ZONE else None
                rz = rzn if rhas & _T_ZONE else None
            else:
                oz = rz = None
            if (ohas | rhas) & t_icmp:
                oiid, oity, oico, riid, rity, rico = _ICMPS(recs, off)
            if ohas & t_ports:
                orig = TB(ips[osrc], ips[odst], proto, osp, odp, None, None, None, oz)
            elif ohas & t_icmp:
                orig = TB(ips[osrc], ips[odst], proto, None, None, oity, oico, oiid, oz)
            else:
                orig = TB(ips[osrc], ips[odst], proto, None, None, None, None, None, oz)
            orig.__class__ = T
            if attrs & a_reply:
                if rhas & t_ports:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], rsp, rdp, None, None, None, rz)
                elif rhas & t_icmp:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], None, None, rity, rico, riid,
                               rz)
                else:
                    reply = TB(ips[rsrc], ips[rdst], protos[rpr], None, None, None, None, None,
                               rz)
                reply.__class__ = T
            else:
                reply = None
            if attrs & rare:
                ctr, ts, lbl, hlp, sctx, mst, sadj, sprx = _rare(recs, off, attrs, family == af6,
                                                                 data)
            else:
                ctr = ts = hlp = sctx = mst = sadj = sprx = None
                lbl = no_labels
            f = FB(orig, reply, fam6 if family == af6 else fam4, proto, st, status_c[status],
                   timeout if attrs & a_timeout else None, mark, secmark, zone, lbl,
                   use if attrs & a_use else None, ctid if attrs & a_id else None,
                   ctr, ts, _nat_of(status, reply) if status & nat_bits else None,
                   hlp, sctx, mst, tcp_c[tcpk] if attrs & a_tcp else None, sadj, sprx)
            f.__class__ = F
            append(f)
    finally:
        if gc_was_on:
            _gc.enable()


def _fast_builder() -> Optional[Callable[[Records, int, bytes, List[Flow]], None]]:
    """``nfbind._fastct.build_flows`` set up with this module's classes,
    caches and helpers, or None when the speedup is not there (or
    ``NFBIND_PURE`` is set, or it was compiled for another record layout)."""
    mod = _speedups.load("_fastct")
    if mod is None:
        return None
    size, tsize, fields = mod.layout()
    if size != REC_SIZE or tsize != _TSIZE or any(
            off != (ffi.offsetof("struct nfb_ct_tuple", name[6:]) if name.startswith("tuple.")
                    else ffi.offsetof(_REC, name)) for name, off in fields):
        return None
    mod.configure(Tuple, Flow, _IPS, _STATUS, _TCPINFO, tuple(PROTO), tuple(TCP_STATE),
                  tuple(SCTP_STATE), Family.IPV4, Family.IPV6, _NO_LABELS, _rare, _nat_of,
                  _NAT_BITS, AF_INET6)
    build: Callable[[Records, int, bytes, List[Flow]], None] = mod.build_flows
    return build


#: the compiled builder build_flows uses, or None: py_build_flows
FAST = _fast_builder()


def event_codes(recs: Records, n: int) -> List[int]:
    """The event type byte of each of the ``n`` records (libnetfilter_conntrack's
    NFCT_T_NEW/UPDATE/DESTROY, 0 for none)."""
    return [recs[i * REC_SIZE + _EVENT_OFF] for i in range(n)]


def ct_flow(data: Union[bytes, bytearray, memoryview], off: int, length: int,
            family: int) -> Optional[Flow]:
    """A packet's connection from the nested CTA_* attributes at
    ``data[off:off+length]`` (NFQA_CT, NFULA_CT, or a ctnetlink answer), or
    None when they hold no original tuple.  Arguments are not checked: see
    :func:`flow_from_ct_attrs`."""
    chunk = bytes(data[off:off + length])
    rec = ffi.new("struct nfb_ct_rec *")
    core.nfb_ct_parse_attrs(chunk, length, 0, rec)
    if not rec.attrs & _A_ORIG:
        return None
    # the packet's family may be NFPROTO_BRIDGE or the like: the addresses decide
    rec.family = AF_INET6 if rec.orig.has & _T_V6 else AF_INET
    out: List[Flow] = []
    build_flows(ffi.buffer(rec)[:], 1, chunk, out)
    return out[0]


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
    flow = ct_flow(data, off, length, family)
    if flow is None:
        raise ValueError("the conntrack attributes hold no original tuple (CTA_TUPLE_ORIG)")
    return flow


# -- whole messages in Python: expectations and statistics -------------------------------------

#: struct nlmsghdr (its length comes first)
NLMSG = struct.Struct("=IHHII")
#: the netlink header and nfgenmsg before a ctnetlink message's attributes
_ATTRS_AT = 20
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")

_PORT_ATTRS = frozenset((core.CTA_PROTO_SRC_PORT, core.CTA_PROTO_DST_PORT,
                         core.CTA_PROTO_ICMP_ID, core.CTA_PROTO_ICMPV6_ID))


def parse_tuple(data: bytes, off: int, end: int) -> Tuple:
    """A CTA_TUPLE_* nest at ``data[off:end]``.  Raises ValueError without addresses."""
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
                elif n2 >= 2 and t2 in _PORT_ATTRS:
                    vals[t2] = _BE16.unpack_from(data, o2)[0]
                elif n2 >= 1:
                    vals[t2] = data[o2]
        elif t == core.CTA_TUPLE_ZONE and n >= 2:
            vals[-1] = _BE16.unpack_from(data, o)[0]
    if src is None or dst is None:
        raise ValueError("a conntrack tuple without addresses")
    g = vals.get
    tup: Tuple = _TupleB(
        src, dst, PROTO[proto], g(core.CTA_PROTO_SRC_PORT), g(core.CTA_PROTO_DST_PORT),
        g(core.CTA_PROTO_ICMP_TYPE, g(core.CTA_PROTO_ICMPV6_TYPE)),
        g(core.CTA_PROTO_ICMP_CODE, g(core.CTA_PROTO_ICMPV6_CODE)),
        g(core.CTA_PROTO_ICMP_ID, g(core.CTA_PROTO_ICMPV6_ID)), g(-1))
    tup.__class__ = Tuple
    return tup


def _cstr(data: bytes, o: int, n: int) -> str:
    return data[o:o + n].split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_expect(msg: bytes) -> Expectation:
    """One IPCTNL_MSG_EXP_* message.  Raises ValueError when a tuple is missing."""
    end = NLMSG.unpack_from(msg, 0)[0]
    kw: Dict[str, Any] = {}
    for t, o, n in iter_attrs(msg, _ATTRS_AT, end):
        if t == core.CTA_EXPECT_MASTER:
            kw["master"] = parse_tuple(msg, o, o + n)
        elif t == core.CTA_EXPECT_TUPLE:
            kw["expected"] = parse_tuple(msg, o, o + n)
        elif t == core.CTA_EXPECT_MASK:
            kw["mask"] = parse_tuple(msg, o, o + n)
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


_CPU_FIELDS = {
    core.CTA_STATS_FOUND: "found",
    core.CTA_STATS_INVALID: "invalid",
    core.CTA_STATS_INSERT: "insert",
    core.CTA_STATS_INSERT_FAILED: "insert_failed",
    core.CTA_STATS_DROP: "drop",
    core.CTA_STATS_EARLY_DROP: "early_drop",
    core.CTA_STATS_ERROR: "error",
    core.CTA_STATS_SEARCH_RESTART: "search_restart",
    core.CTA_STATS_CLASH_RESOLVE: "clash_resolve",
    core.CTA_STATS_CHAIN_TOOLONG: "chain_toolong",
}


_EXP_FIELDS = {
    core.CTA_STATS_EXP_NEW: "new",
    core.CTA_STATS_EXP_CREATE: "create",
    core.CTA_STATS_EXP_DELETE: "delete",
}

_S = _t.TypeVar("_S", CpuStats, ExpectStats)


def _per_cpu(msgs: Iterable[bytes], fields: Dict[int, str],
             cls: Callable[..., _S]) -> _t.Tuple[_S, ...]:
    """One record per CPU (its number is the nfgenmsg's res_id) of the be32
    attributes named in ``fields``, sorted by CPU."""
    cpus = []
    for m in msgs:
        end = NLMSG.unpack_from(m, 0)[0]
        cpu = _BE16.unpack_from(m, 18)[0]
        kw: Dict[str, int] = {}
        for t, o, n in iter_attrs(m, _ATTRS_AT, end):
            name = fields.get(t)
            if name is not None and n >= 4:
                kw[name] = _BE32.unpack_from(m, o)[0]
        cpus.append(cls(cpu, **kw))
    return tuple(sorted(cpus, key=lambda c: c.cpu))


def parse_cpu_stats(msgs: Iterable[bytes]) -> _t.Tuple[CpuStats, ...]:
    """The IPCTNL_MSG_CT_GET_STATS_CPU answer: one CpuStats per CPU, sorted by CPU."""
    return _per_cpu(msgs, _CPU_FIELDS, CpuStats)


def parse_expect_stats(msgs: Iterable[bytes]) -> _t.Tuple[ExpectStats, ...]:
    """The IPCTNL_MSG_EXP_GET_STATS_CPU answer: one ExpectStats per CPU, sorted by CPU."""
    return _per_cpu(msgs, _EXP_FIELDS, ExpectStats)


def parse_global_stats(msgs: Iterable[bytes]) -> _t.Tuple[int, Optional[int]]:
    """The IPCTNL_MSG_CT_GET_STATS answer: (entries, maximum or None)."""
    entries, limit = 0, None
    for m in msgs:
        end = NLMSG.unpack_from(m, 0)[0]
        for t, o, n in iter_attrs(m, _ATTRS_AT, end):
            if t == core.CTA_STATS_GLOBAL_ENTRIES and n >= 4:
                entries = _BE32.unpack_from(m, o)[0]
            elif t == core.CTA_STATS_GLOBAL_MAX_ENTRIES and n >= 4:
                limit = _BE32.unpack_from(m, o)[0]
    return entries, limit
