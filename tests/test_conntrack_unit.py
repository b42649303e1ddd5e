# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of nfbind.conntrack: no privileges, no kernel requests.

Tuple/Flow/Expectation validation, the record layout against the C struct,
flow_from_ct_attrs on crafted CTA_* attributes (the NFQA_CT/NFULA_CT path),
label bits and connlabel.conf, event filters, and the Conntrack object
itself (its bad arguments: test_arguments.py; the enums: test_enums.py).
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import struct
import sys
from typing import Optional

import pytest

from nfbind import conntrack as C
from nfbind.conntrack import _records as R
from nfbind.conntrack import labels as L
from nfbind._conntrack import ffi, lib
from nfbind.conntrack import (
    Conntrack,
    Counters,
    Endpoint,
    EventFilter,
    Expectation,
    Flow,
    LabelMap,
    Nat,
    NotFound,
    Timestamps,
    Tuple,
    flow_from_ct_attrs,
)
from nfbind.enums import CtStatus, ExpectFlag, Family, IPProto, SctpState, TcpState
from nfbind.errors import NetlinkError

pytestmark = pytest.mark.unit


# -- errors -----------------------------------------------------------------------------------


def test_not_found_is_a_netlink_error_and_a_lookup_error():
    e = NotFound(errno.ENOENT, "getting flow x", "gone")
    assert isinstance(e, NetlinkError) and isinstance(e, LookupError) and isinstance(e, OSError)
    assert e.errno == errno.ENOENT and "getting flow x failed: ENOENT" in str(e)


def test_module_all_names_exist():
    for name in C.__all__:
        assert hasattr(C, name), name


# -- frozen slotted records on every Python ------------------------------------------------------


def test_record_is_a_frozen_slotted_dataclass_on_any_python():
    """model.record gives Python 3.9 what dataclass(frozen=True, slots=True)
    gives 3.10+: slots and no __dict__, frozen (also against new names),
    equal and hashable by fields, picklable, copyable, replace()-able."""
    import copy
    import pickle

    from nfbind.conntrack.model import record

    @record
    class Pair:
        """Two values."""

        a: int
        b: Optional[int] = None

        def total(self) -> int:
            return self.a + (self.b or 0)

    p = Pair(1, 2)
    assert Pair.__slots__ == ("a", "b") and not hasattr(p, "__dict__")
    assert Pair.__doc__ == "Two values." and Pair.__qualname__.endswith("Pair")
    assert [f.name for f in dataclasses.fields(Pair)] == ["a", "b"]
    assert Pair(3).b is None and p.total() == 3 and repr(p).endswith("Pair(a=1, b=2)")
    assert p == Pair(1, 2) and p != Pair(1, 3) and hash(p) == hash(Pair(1, 2))
    for attempt in (lambda: setattr(p, "a", 5), lambda: setattr(p, "c", 5),
                    lambda: delattr(p, "a")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            attempt()
    assert (p.a, p.b) == (1, 2)
    assert dataclasses.replace(p, b=7) == Pair(1, 7)
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2),
                                              mark=proto), proto)).mark == proto
    # the public records are made by it
    for cls in (Tuple, Flow, Counters, Timestamps, Nat, Expectation):
        assert "__dict__" not in dir(cls) and cls.__slots__ == tuple(
            f.name for f in dataclasses.fields(cls)), cls


# -- Tuple ----------------------------------------------------------------------------------


def test_tuple_converts_and_validates():
    t = Tuple("10.0.0.1", b"\x0a\x00\x00\x02", "TCP", 1, 2)
    assert t.src == ipaddress.IPv4Address("10.0.0.1") and t.dst == ipaddress.IPv4Address("10.0.0.2")
    assert t.proto is IPProto.TCP and t.family is Family.IPV4
    assert str(t) == "tcp 10.0.0.1:1 -> 10.0.0.2:2"
    assert str(Tuple("::1", "::2", 17, 5, 6)) == "udp [::1]:5 -> [::2]:6"
    assert Tuple("10.0.0.1", "10.0.0.2", 50).proto == 50  # no name: a plain int
    icmp = Tuple("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_id=3)
    assert icmp.icmp_code == 0 and "type=8 code=0 id=3" in str(icmp)
    assert Tuple("fd00::1", "fd00::2", "ipv6-icmp", icmp_type=128, icmp_id=1).proto is IPProto.ICMPV6
    assert Tuple("10.0.0.1", "10.0.0.2", "gre", 1, 2).sport == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.sport = 3  # type: ignore[misc]
    assert t == Tuple("10.0.0.1", "10.0.0.2", 6, 1, 2) and hash(t) == hash(Tuple("10.0.0.1", "10.0.0.2", 6, 1, 2))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(src="10.0.0.1", dst="::1", proto="udp"), ValueError, "same IP version"),
    (dict(src="10.0.0.300", dst="10.0.0.1", proto="udp"), ValueError, "src is not"),
    (dict(src=None, dst="10.0.0.1", proto="udp"), TypeError, "src must be"),
    (dict(src=True, dst="10.0.0.1", proto="udp"), TypeError, "src must be"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="nosuch"), ValueError, "unknown protocol"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto=256), ValueError, "proto"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="udp", sport=65536), ValueError, "sport"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="udp", dport=-1), ValueError, "dport"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="udp", sport="1"), TypeError, "sport"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="udp", icmp_type=8), ValueError, "not icmp"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="icmp", sport=1), ValueError, "not ports"),
    (dict(src="::1", dst="::2", proto="icmp", icmp_type=8), ValueError, "needs IPv4"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="icmpv6", icmp_type=128), ValueError, "IPv6"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto="icmp", icmp_type=256), ValueError, "icmp_type"),
    (dict(src="10.0.0.1", dst="10.0.0.2", proto=50, sport=1), ValueError, "without ports"),
])
def test_tuple_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        Tuple(**kw)


# -- Flow ------------------------------------------------------------------------------------


def test_flow_defaults_and_coercions():
    t = Tuple("10.0.0.1", "10.0.0.2", "tcp", 1, 2)
    f = Flow(t, timeout=30, state=3, status=CtStatus.SEEN_REPLY | 8, labels=[1, 127, 1])
    assert f.family is Family.IPV4 and f.proto is IPProto.TCP
    assert f.state is TcpState.ESTABLISHED
    assert f.status == CtStatus.SEEN_REPLY | CtStatus.CONFIRMED and isinstance(f.status, CtStatus)
    assert f.labels == frozenset({1, 127}) and isinstance(f.labels, frozenset)
    assert (f.mark, f.zone, f.reply, f.counters, f.nat) == (0, 0, None, None, None)
    sctp = Flow(Tuple("10.0.0.1", "10.0.0.2", "sctp", 1, 2), state=4)
    assert sctp.state is SctpState.ESTABLISHED
    assert dataclasses.is_dataclass(f) and f.__slots__
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.mark = 1  # type: ignore[misc]
    assert "tcp 10.0.0.1:1 -> 10.0.0.2:2 ESTABLISHED" in str(f)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(orig=("10.0.0.1", "10.0.0.2")), TypeError, "Tuple"),
    (dict(reply=Tuple("::1", "::2", "udp", 2, 1)), ValueError, "reply"),
    (dict(family=socket.AF_INET6), ValueError, "family"),
    (dict(proto="tcp"), ValueError, "proto"),
    (dict(mark=1 << 32), ValueError, "mark"),
    (dict(zone=65536), ValueError, "zone"),
    (dict(labels={128}), ValueError, "0..127"),
    (dict(labels={"blocked"}), TypeError, "label names"),
    (dict(timeout=-1), ValueError, "timeout"),
    (dict(helper="x" * 16), ValueError, "helper"),
    (dict(counters=(1, 2, 3, 4)), TypeError, "counters"),
    (dict(status=1 << 33), ValueError, "status"),
])
def test_flow_rejects(kw, exc, match):
    args = dict(orig=Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2))
    args.update(kw)
    with pytest.raises(exc, match=match):
        Flow(**args)


def test_counters_timestamps_nat_expectation():
    c = Counters(1, 100, 2, 300)
    assert (c.packets, c.bytes) == (3, 400)
    ts = Timestamps(2_000_000_000, 5_500_000_000)
    assert (ts.start, ts.stop, ts.duration) == (2.0, 5.5, 3.5)
    assert Timestamps(1).stop is None and Timestamps(1).duration is None
    n = Nat(dnat=Endpoint(ipaddress.ip_address("10.0.0.1"), 80))
    assert n.snat is None and n.dnat.port == 80
    assert n.as_dict() == {"snat": None, "dnat": "10.0.0.1:80"}
    n6 = Nat(snat=Endpoint(ipaddress.ip_address("fd00::1"), 53),
             dnat=Endpoint(ipaddress.ip_address("192.0.2.9"), None))
    assert n6.as_dict() == {"snat": "[fd00::1]:53", "dnat": "192.0.2.9"}
    m = Tuple("10.0.0.1", "10.0.0.2", "tcp", 1, 21)
    e = Expectation(m, Tuple("10.0.0.2", "10.0.0.1", "tcp", 0, 2000),
                    Tuple("255.255.255.255", "255.255.255.255", "tcp", 0, 0xFFFF), timeout=5,
                    flags=1)
    assert e.flags is ExpectFlag.PERMANENT and e.family is Family.IPV4
    with pytest.raises(ValueError, match="one IP version"):
        Expectation(m, Tuple("::1", "::2", "tcp", 0, 1), m)
    with pytest.raises(TypeError, match="mask"):
        Expectation(m, m, None)  # type: ignore[arg-type]


# -- labels -----------------------------------------------------------------------------------


def test_label_bits_round_trip():
    for bits in (set(), {0}, {31, 32}, {63, 64, 65}, {127}, set(range(128))):
        raw = L.labels_bytes(bits)
        assert len(raw) == 16 and L.labels_from_bytes(raw) == bits
    # the layout libnetfilter_conntrack uses: bit i in native uint32 word i // 32
    assert struct.unpack("=4I", L.labels_bytes({33})) == (0, 2, 0, 0)


def test_labelmap(tmp_path):
    conf = tmp_path / "connlabel.conf"
    conf.write_text("# comment\n0 zero\n5 five\n127 last\n")
    m = LabelMap(conf)
    assert (m.bit("zero"), m.bit("five"), m.bit("last")) == (0, 5, 127)
    assert m.name(5) == "five" and m.name(6) is None
    assert m.names([0, 1, 127]) == {"zero", "last"}
    with pytest.raises(KeyError, match="nope"):
        m.bit("nope")
    with pytest.raises(ValueError):
        m.name(128)
    with pytest.raises(FileNotFoundError, match="connlabel.conf") as ei:
        LabelMap(tmp_path / "missing" / "connlabel.conf")
    assert ei.value.errno == errno.ENOENT and "BIT NAME" in str(ei.value)


# -- records and the CTA_* parser -----------------------------------------------------------------


def nla(t: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), t) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nest(t: int, *children: bytes) -> bytes:
    return nla(t | lib.NLA_F_NESTED, b"".join(children))


def tuple_attrs(t: int, src: str, dst: str, proto: int, a: int, b: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ip = (nla(lib.CTA_IP_V4_SRC, s.packed) + nla(lib.CTA_IP_V4_DST, d.packed) if s.version == 4
          else nla(lib.CTA_IP_V6_SRC, s.packed) + nla(lib.CTA_IP_V6_DST, d.packed))
    if proto in (1, 58):
        v6 = proto == 58
        l4 = (nla(lib.CTA_PROTO_ICMPV6_TYPE if v6 else lib.CTA_PROTO_ICMP_TYPE, bytes([a]))
              + nla(lib.CTA_PROTO_ICMPV6_CODE if v6 else lib.CTA_PROTO_ICMP_CODE, b"\0")
              + nla(lib.CTA_PROTO_ICMPV6_ID if v6 else lib.CTA_PROTO_ICMP_ID, struct.pack(">H", b)))
    else:
        l4 = nla(lib.CTA_PROTO_SRC_PORT, struct.pack(">H", a)) + nla(lib.CTA_PROTO_DST_PORT,
                                                                  struct.pack(">H", b))
    return nest(t, nest(lib.CTA_TUPLE_IP, ip),
                nest(lib.CTA_TUPLE_PROTO, nla(lib.CTA_PROTO_NUM, bytes([proto])), l4))


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def full_attrs() -> bytes:
    labels = L.labels_bytes({2, 100})
    return b"".join([
        tuple_attrs(lib.CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 6, 1234, 80),
        tuple_attrs(lib.CTA_TUPLE_REPLY, "10.0.0.9", "10.0.0.1", 6, 8080, 1234),
        tuple_attrs(lib.CTA_TUPLE_MASTER, "10.0.0.1", "10.0.0.2", 6, 1000, 21),
        nla(lib.CTA_STATUS, be32(int(CtStatus.SEEN_REPLY | CtStatus.ASSURED | CtStatus.CONFIRMED
                                     | CtStatus.DST_NAT | CtStatus.DST_NAT_DONE))),
        nla(lib.CTA_TIMEOUT, be32(120)),
        nla(lib.CTA_MARK, be32(0xDEADBEEF)),
        nla(lib.CTA_SECMARK, be32(7)),
        nla(lib.CTA_USE, be32(1)),
        nla(lib.CTA_ID, be32(0x12345678)),
        nla(lib.CTA_ZONE, struct.pack(">H", 9)),
        nest(lib.CTA_PROTOINFO, nest(lib.CTA_PROTOINFO_TCP,
                                     nla(lib.CTA_PROTOINFO_TCP_STATE, bytes([3])))),
        nest(lib.CTA_COUNTERS_ORIG, nla(lib.CTA_COUNTERS_PACKETS, struct.pack(">Q", 3)),
             nla(lib.CTA_COUNTERS_BYTES, struct.pack(">Q", 1 << 40))),
        nest(lib.CTA_COUNTERS_REPLY, nla(lib.CTA_COUNTERS_PACKETS, struct.pack(">Q", 2)),
             nla(lib.CTA_COUNTERS_BYTES, struct.pack(">Q", 99))),
        nest(lib.CTA_TIMESTAMP, nla(lib.CTA_TIMESTAMP_START, struct.pack(">Q", 5 * 10**9)),
             nla(lib.CTA_TIMESTAMP_STOP, struct.pack(">Q", 7 * 10**9))),
        nla(lib.CTA_LABELS, labels),
        nest(lib.CTA_HELP, nla(lib.CTA_HELP_NAME, b"ftp\0")),
        nest(lib.CTA_SECCTX, nla(lib.CTA_SECCTX_NAME, b"system_u:object_r:x:s0\0")),
        nla(200, b"an unknown attribute is skipped"),
    ])


def test_flow_from_ct_attrs_every_field():
    raw = b"\xff" * 3 + full_attrs() + b"\xee" * 5
    f = flow_from_ct_attrs(memoryview(raw), 3, len(raw) - 8, socket.AF_INET)
    assert type(f) is Flow and type(f.orig) is Tuple and type(f.counters) is Counters
    assert f.orig == Tuple("10.0.0.1", "10.0.0.2", "tcp", 1234, 80)
    assert f.reply == Tuple("10.0.0.9", "10.0.0.1", "tcp", 8080, 1234)
    assert f.master == Tuple("10.0.0.1", "10.0.0.2", "tcp", 1000, 21)
    assert f.family is Family.IPV4 and f.proto is IPProto.TCP
    assert f.state is TcpState.ESTABLISHED
    assert CtStatus.DST_NAT in f.status and f.timeout == 120
    assert (f.mark, f.secmark, f.use, f.id, f.zone) == (0xDEADBEEF, 7, 1, 0x12345678, 9)
    assert f.counters == Counters(3, 1 << 40, 2, 99)
    assert f.timestamps == Timestamps(5 * 10**9, 7 * 10**9)
    assert f.labels == {2, 100}
    assert f.helper == "ftp" and f.secctx == "system_u:object_r:x:s0"
    assert f.nat == Nat(snat=None, dnat=Endpoint(ipaddress.ip_address("10.0.0.9"), 8080))
    # frozen, comparable and hashable like a user-made Flow
    twin = Flow(**{fld.name: getattr(f, fld.name) for fld in dataclasses.fields(Flow)})
    assert twin == f and hash(twin) == hash(f)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.orig.sport = 1  # type: ignore[misc]


def test_parsed_flows_pickle_and_copy():
    import copy
    import pickle

    attrs = full_attrs()
    f = flow_from_ct_attrs(attrs, 0, len(attrs), socket.AF_INET)
    back = pickle.loads(pickle.dumps(f))
    assert back == f and type(back) is Flow and type(back.orig) is Tuple
    assert copy.copy(f) == f and copy.deepcopy(f) == f
    g = dataclasses.replace(f, mark=1)
    assert g.mark == 1 and g.orig is f.orig


def test_flow_from_ct_attrs_ipv6_icmp_and_minimal():
    attrs = (tuple_attrs(lib.CTA_TUPLE_ORIG, "fd00::1", "fd00::2", 58, 128, 77)
             + tuple_attrs(lib.CTA_TUPLE_REPLY, "fd00::2", "fd00::1", 58, 129, 77)
             + nla(lib.CTA_STATUS, be32(8)))
    f = flow_from_ct_attrs(attrs, 0, len(attrs), socket.AF_INET6)
    assert f.family is Family.IPV6 and f.proto is IPProto.ICMPV6
    assert (f.orig.icmp_type, f.orig.icmp_code, f.orig.icmp_id) == (128, 0, 77)
    assert f.reply.icmp_type == 129 and f.orig.sport is None
    assert (f.timeout, f.id, f.use, f.counters, f.timestamps, f.helper, f.state) == (None,) * 7
    assert f.labels == frozenset() and f.status == CtStatus.CONFIRMED
    with pytest.raises(ValueError, match="original tuple"):
        flow_from_ct_attrs(nla(lib.CTA_MARK, be32(1)), 0, 8, socket.AF_INET)
    # a bridge packet (NFPROTO_BRIDGE): the addresses say IPv6
    assert flow_from_ct_attrs(attrs, 0, len(attrs), 7) == f
    with pytest.raises(ValueError, match="family"):
        flow_from_ct_attrs(attrs, 0, len(attrs), 256)
    with pytest.raises(ValueError, match="length"):
        flow_from_ct_attrs(attrs, 4, len(attrs), socket.AF_INET6)
    # a truncated buffer parses what is whole and never reads past the end
    cut = attrs[:len(attrs) - 6]
    g = flow_from_ct_attrs(cut, 0, len(cut), socket.AF_INET6)
    assert g.orig == f.orig


def _field(rec, name):
    obj = rec
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("v6", [False, True])
def test_record_layout_matches_the_c_struct(v6):
    attrs = full_attrs() if not v6 else (
        tuple_attrs(lib.CTA_TUPLE_ORIG, "fd00::1", "fd00::2", 17, 5, 6)
        + tuple_attrs(lib.CTA_TUPLE_REPLY, "fd00::2", "fd00::1", 17, 6, 5)
        + nla(lib.CTA_MARK, be32(0xABCDEF01)) + nla(lib.CTA_ZONE, struct.pack(">H", 3)))
    rec = ffi.new("struct nfb_ct_rec *")
    lib.nfb_ct_parse_attrs(attrs, len(attrs), socket.AF_INET6 if v6 else socket.AF_INET, rec)
    raw = ffi.buffer(rec)[:]
    names = []
    for d in ("orig", "reply"):
        names += ["%s.%s" % (d, n) for n in ("src", "dst", "sport", "dport", "proto", "has")]
    names += ["attrs", "status", "timeout", "mark", "secmark", "use", "id", "zone", "family",
              "state", "tcp"]
    vals = (R._CORE6 if v6 else R._CORE4)(raw, 0)
    assert len(vals) == len(names)
    for name, v in zip(names, vals):
        c = _field(rec, name)
        if name.endswith(("src", "dst")):
            got = bytes(ffi.buffer(c))
            assert (v == got) if v6 else (v.to_bytes(4, sys.byteorder) == got[:4]), name
        else:
            assert c == v, name
    assert vals[names.index("orig.sport")] == (5 if v6 else 1234)
    rare = ["o_packets", "o_bytes", "r_packets", "r_bytes", "ts_start", "ts_stop",
            "secctx_off", "secctx_len", "labels", "helper"]
    rare += ["seqadj"] * 6 + ["synproxy"] * 3
    rvals = R._RARE_UNPACK(raw, 0)
    assert len(rvals) == len(rare)
    assert list(rvals[-9:-3]) == list(rec.seqadj) and list(rvals[-3:]) == list(rec.synproxy)
    for name, v in zip(rare[:-9], rvals):
        c = _field(rec, name)
        assert (bytes(ffi.buffer(c)) == v) if isinstance(v, bytes) else (c == v), name
    assert raw[R._FAM_OFF] == (socket.AF_INET6 if v6 else socket.AF_INET)
    # the ICMP fields, read apart from the core ones
    rec.orig.icmp_id, rec.orig.icmp_type, rec.orig.icmp_code = 0x1234, 8, 3
    rec.reply.icmp_id, rec.reply.icmp_type, rec.reply.icmp_code = 0x4321, 0, 5
    assert R._ICMPS(ffi.buffer(rec)[:], 0) == (0x1234, 8, 3, 0x4321, 0, 5)


# -- event filters --------------------------------------------------------------------------------


def test_event_filter_normalises_and_matches():
    f = EventFilter(proto="udp", src="10.0.0.0/8", dst=["192.0.2.1", "fd00::/8"],
                    sport=[53, range(1000, 2000)], mark=0x10, mark_mask=0xF0)
    assert f.proto == (IPProto.UDP,) and f.sport == ((53, 53), (1000, 1999))
    assert f.dst == (ipaddress.ip_network("192.0.2.1/32"), ipaddress.ip_network("fd00::/8"))
    ok = Flow(Tuple("10.1.2.3", "192.0.2.1", "udp", 1500, 9), mark=0x1F)
    assert f.matches(ok)
    for bad in (
        Flow(Tuple("10.1.2.3", "192.0.2.1", "tcp", 1500, 9), mark=0x1F),
        Flow(Tuple("11.1.2.3", "192.0.2.1", "udp", 1500, 9), mark=0x1F),
        Flow(Tuple("10.1.2.3", "192.0.2.2", "udp", 1500, 9), mark=0x1F),
        Flow(Tuple("10.1.2.3", "192.0.2.1", "udp", 2000, 9), mark=0x1F),
        Flow(Tuple("10.1.2.3", "192.0.2.1", "udp", 1500, 9), mark=0x2F),
    ):
        assert not f.matches(bad)
    assert EventFilter().matches(ok) and not EventFilter().kernel_side
    assert not EventFilter(sport=53).kernel_side
    assert EventFilter(src="10.0.0.0/8").kernel_side
    # addresses go to the BPF program only where libnetfilter_conntrack gets them right
    assert EventFilter(dst=["10.%d.0.0/16" % i for i in range(127)])._kernel_addrs
    assert not EventFilter(dst=["10.%d.0.0/16" % i for i in range(128)])._kernel_addrs
    assert EventFilter(src="fd00::/8", dst="fe00::/8")._kernel_addrs
    assert not EventFilter(dst=["fd00::/8", "fe00::/8"])._kernel_addrs
    assert not f._kernel_addrs  # IPv4 and IPv6


@pytest.mark.parametrize("kw, exc, match", [
    (dict(proto="nosuch"), ValueError, "protocol"),
    (dict(src="10.0.0.0/33"), ValueError, "src"),
    (dict(dport=70000), ValueError, "dport"),
    (dict(sport=range(5, 1)), ValueError, "sport"),
    (dict(mark=-1), ValueError, "mark"),
    (dict(mark_mask="x"), TypeError, "mark_mask"),
])
def test_event_filter_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        EventFilter(**kw)


# -- the object itself (its bad arguments: test_arguments.py) --------------------------------------


def test_conntrack_repr_and_with_closes():
    with Conntrack() as ct:  # a socket needs no privileges; requests would
        assert "Conntrack" in repr(ct)
    assert ct.closed
