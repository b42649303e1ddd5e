# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack flows built by the compiled builder (``nfbind._fastct``) and by
the Python one (``_records.py_build_flows``): the same objects.

The compiled builder is the one in use wherever it was built.  Both are fed
the same records, from crafted CTA_* attributes (every rare field) and from
a real table in a throw-away namespace (TCP, UDP, ICMP, ICMPv6, IPv6, GRE,
SCTP, ESP, zones, directional zones, marks, labels, NAT, a helper, counters
and timestamps), and must give flows equal field by field and type by type,
sharing the address objects.  Dumps, get() and events run on both paths;
the compiled builder leaks no references, on success or on error.
"""
from __future__ import annotations

import gc
import importlib.util
import ipaddress
import os
import socket
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple as Tup

import pytest

from nfbind import _speedups
from nfbind._core import ffi as core_ffi
from nfbind._nfcore import lib as core_lib
from nfbind.conntrack import (
    Conntrack,
    Counters,
    Endpoint,
    Flow,
    Nat,
    SeqAdj,
    Synproxy,
    TcpInfo,
    Timestamps,
    Tuple,
    flow_from_ct_attrs,
)
from nfbind.conntrack import _records as R
from nfbind.enums import CtEvent, CtStatus, Family, IPProto, SctpState, TcpState

from helpers.conntrack import ct_ns
from helpers.ctlab import be16, be32, nest, nla, tuple_attrs

#: every record class a flow holds (compared slot by slot)
RECORDS = (Flow, Tuple, Counters, Timestamps, TcpInfo, SeqAdj, Synproxy)

FAST = R.FAST
needs_fast = pytest.mark.skipif(FAST is None, reason="nfbind._fastct not in use "
                                "(NFBIND_PURE set, or not built)")


def same(a: Any, b: Any, where: str = "flow") -> None:
    """``a`` and ``b`` are equal with the same type at every level; addresses
    are the very same objects (one per distinct address, from one cache)."""
    assert type(a) is type(b), "%s: %r vs %r" % (where, type(a), type(b))
    if isinstance(a, RECORDS):
        for name in type(a).__slots__:
            same(getattr(a, name), getattr(b, name), "%s.%s" % (where, name))
    elif isinstance(a, tuple):  # Nat, Endpoint
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (where, i))
    elif isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        assert a is b, where
    else:
        assert a == b, "%s: %r vs %r" % (where, a, b)
    assert a == b, where


def both(recs: bytes, n: int, data: bytes = b"") -> Tup[List[Flow], List[Flow]]:
    """The flows of ``n`` records built in C and in Python."""
    assert FAST is not None
    fast: List[Flow] = []
    slow: List[Flow] = []
    FAST(recs, n, data, fast)
    R.py_build_flows(recs, n, data, slow)
    assert len(fast) == len(slow) == n
    return fast, slow


@pytest.fixture(params=["compiled", "python"])
def builder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the compiled builder, then with the Python one."""
    if request.param == "compiled":
        if FAST is None:
            pytest.skip("nfbind._fastct not in use")
    else:
        monkeypatch.setattr(R, "FAST", None)
    return str(request.param)


# -- the module is there, and used --------------------------------------------------------


@pytest.mark.unit
def test_the_compiled_builder_is_in_use() -> None:
    """Where nfbind._fastct was built, it builds the flows: a silent fallback
    to Python would fail here."""
    if _speedups.pure():
        pytest.skip("NFBIND_PURE is set")
    assert importlib.util.find_spec("nfbind._fastct") is not None, "nfbind._fastct not built"
    import nfbind._fastct as mod

    assert R.FAST is mod.build_flows
    size, tsize, fields = mod.layout()
    assert (size, tsize) == (R.REC_SIZE, core_ffi.sizeof("struct nfb_ct_tuple"))
    assert len(fields) >= 30


@pytest.mark.unit
@needs_fast
def test_bad_arguments() -> None:
    assert FAST is not None
    rec = bytes(R.REC_SIZE)
    with pytest.raises(ValueError, match="do not fit"):
        FAST(rec, 2, b"", [])
    with pytest.raises(ValueError, match="do not fit"):
        FAST(rec, -1, b"", [])
    with pytest.raises(TypeError):
        FAST("text", 0, b"", [])
    with pytest.raises(TypeError):
        FAST(rec, 1, b"", ())
    out: List[Flow] = []
    FAST(memoryview(rec + rec)[:R.REC_SIZE], 1, b"", out)   # a buffer, not bytes
    assert len(out) == 1 and type(out[0]) is Flow


# -- crafted records: every field ---------------------------------------------------------------


def _be64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def _rich_attrs() -> bytes:
    """One flow with every attribute the builders read."""
    L = core_lib
    tcp = nest(L.CTA_PROTOINFO, nest(
        L.CTA_PROTOINFO_TCP,
        nla(L.CTA_PROTOINFO_TCP_STATE, bytes([TcpState.ESTABLISHED])),
        nla(L.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, bytes([7])),
        nla(L.CTA_PROTOINFO_TCP_WSCALE_REPLY, bytes([2])),
        nla(L.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([0x23, 0])),
        nla(L.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([0x02, 0]))))

    def seqadj(t: int, pos: int, before: int, after: int) -> bytes:
        return nest(t, nla(L.CTA_SEQADJ_CORRECTION_POS, be32(pos)),
                    nla(L.CTA_SEQADJ_OFFSET_BEFORE, be32(before)),
                    nla(L.CTA_SEQADJ_OFFSET_AFTER, be32(after)))

    return (tuple_attrs(L, L.CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 6, 1000, 21, zone=9)
            + tuple_attrs(L, L.CTA_TUPLE_REPLY, "10.0.0.2", "10.0.0.9", 6, 21, 1000)
            + tuple_attrs(L, L.CTA_TUPLE_MASTER, "10.0.0.1", "10.0.0.2", 6, 999, 21)
            + nla(L.CTA_STATUS, be32(int(CtStatus.SEQ_ADJUST | CtStatus.SRC_NAT
                                         | CtStatus.SEEN_REPLY)))
            + nla(L.CTA_TIMEOUT, be32(77)) + nla(L.CTA_MARK, be32(0xFFFFFFFF))
            + nla(L.CTA_SECMARK, be32(3)) + nla(L.CTA_USE, be32(2)) + nla(L.CTA_ID, be32(4242))
            + nla(L.CTA_ZONE, be16(0))
            + tcp
            + nest(L.CTA_COUNTERS_ORIG, nla(L.CTA_COUNTERS_PACKETS, _be64(5)),
                   nla(L.CTA_COUNTERS_BYTES, _be64(1 << 40)))
            + nest(L.CTA_COUNTERS_REPLY, nla(L.CTA_COUNTERS_PACKETS, _be64(6)),
                   nla(L.CTA_COUNTERS_BYTES, _be64(600)))
            + nest(L.CTA_TIMESTAMP, nla(L.CTA_TIMESTAMP_START, _be64(10 ** 18)),
                   nla(L.CTA_TIMESTAMP_STOP, _be64(10 ** 18 + 5)))
            + nla(L.CTA_LABELS, (1 | 1 << 100).to_bytes(16, sys.byteorder))
            + nest(L.CTA_HELP, nla(L.CTA_HELP_NAME, b"ftp\0"))
            + nest(L.CTA_SECCTX, nla(L.CTA_SECCTX_NAME, b"system_u:object_r:x_t:s0\0"))
            + seqadj(L.CTA_SEQ_ADJ_ORIG, 0xFFFFFFF0, 0, 2)
            + seqadj(L.CTA_SEQ_ADJ_REPLY, 5, 1, 3)
            + nest(L.CTA_SYNPROXY, nla(L.CTA_SYNPROXY_ISN, be32(11)),
                   nla(L.CTA_SYNPROXY_ITS, be32(12)), nla(L.CTA_SYNPROXY_TSOFF, be32(13))))


def _icmp_attrs(v6: bool, zone: Optional[int] = None) -> bytes:
    L = core_lib
    s, d = (ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2")) if v6 else (
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
    ip = nest(L.CTA_TUPLE_IP, nla(L.CTA_IP_V6_SRC if v6 else L.CTA_IP_V4_SRC, s.packed),
              nla(L.CTA_IP_V6_DST if v6 else L.CTA_IP_V4_DST, d.packed))
    pr = nest(L.CTA_TUPLE_PROTO, nla(L.CTA_PROTO_NUM, bytes([58 if v6 else 1])),
              nla(L.CTA_PROTO_ICMPV6_TYPE if v6 else L.CTA_PROTO_ICMP_TYPE, bytes([128 if v6 else 8])),
              nla(L.CTA_PROTO_ICMPV6_CODE if v6 else L.CTA_PROTO_ICMP_CODE, bytes([0])),
              nla(L.CTA_PROTO_ICMPV6_ID if v6 else L.CTA_PROTO_ICMP_ID, be16(77)))
    extra = [nla(L.CTA_TUPLE_ZONE, be16(zone))] if zone is not None else []
    return (nest(L.CTA_TUPLE_ORIG, ip, pr, *extra) + nla(L.CTA_STATUS, be32(0))
            + nla(L.CTA_TIMEOUT, be32(30)))


def _record(attrs: bytes) -> bytes:
    """The C parser's record of ``attrs`` (as ct_flow makes it)."""
    rec = core_ffi.new("struct nfb_ct_rec *")
    core_lib.nfb_ct_parse_attrs(attrs, len(attrs), 0, rec)
    rec.family = socket.AF_INET6 if rec.orig.has & core_lib.NFB_T_V6 else socket.AF_INET
    return bytes(core_ffi.buffer(rec))


@pytest.mark.unit
@needs_fast
@pytest.mark.parametrize("attrs", [_rich_attrs(), _icmp_attrs(False), _icmp_attrs(True),
                                   _icmp_attrs(True, zone=3)], ids=["rich", "icmp", "icmpv6",
                                                                    "zone"])
def test_crafted_records_give_the_same_flows(attrs: bytes) -> None:
    rec = _record(attrs)
    (fast,), (slow,) = both(rec, 1, attrs)
    same(fast, slow)
    # and flow_from_ct_attrs (pkt.ct) builds through the compiled builder
    same(flow_from_ct_attrs(attrs, 0, len(attrs), socket.AF_INET), slow)


@pytest.mark.unit
@needs_fast
def test_the_rich_record_field_by_field() -> None:
    attrs = _rich_attrs()
    (f,), _ = both(_record(attrs), 1, attrs)
    assert f.orig == Tuple("10.0.0.1", "10.0.0.2", "tcp", 1000, 21, zone=9)
    assert f.reply == Tuple("10.0.0.2", "10.0.0.9", "tcp", 21, 1000)
    assert f.master == Tuple("10.0.0.1", "10.0.0.2", "tcp", 999, 21)
    assert f.family is Family.IPV4 and f.proto is IPProto.TCP
    assert f.state is TcpState.ESTABLISHED and type(f.status) is CtStatus
    assert (f.timeout, f.mark, f.secmark, f.zone, f.use, f.id) == (77, 0xFFFFFFFF, 3, 0, 2, 4242)
    assert f.counters == Counters(5, 1 << 40, 6, 600)
    assert f.timestamps == Timestamps(10 ** 18, 10 ** 18 + 5)
    assert f.labels == frozenset({0, 100})
    assert f.helper == "ftp" and f.secctx == "system_u:object_r:x_t:s0"
    assert f.nat == Nat(snat=Endpoint(ipaddress.ip_address("10.0.0.9"), 1000))
    assert f.seq_adj == SeqAdj(0xFFFFFFF0, 0, 2, 5, 1, 3)
    assert f.synproxy == Synproxy(11, 12, 13)
    assert f.tcp is not None and f.tcp.wscale_orig == 7 and f.tcp.wscale_reply == 2
    # built in C, the flow and its tuples are left out of the cyclic
    # collector's lists (nothing they hold can lead back to them); records
    # the Python helpers add are as they always were
    assert not gc.is_tracked(f) and not gc.is_tracked(f.orig) and not gc.is_tracked(f.reply)
    assert gc.is_tracked(f.counters)
    # a genuine, frozen, hashable, picklable Flow
    import pickle

    assert pickle.loads(pickle.dumps(f)) == f and hash(f) == hash(pickle.loads(pickle.dumps(f)))
    with pytest.raises(Exception, match="cannot assign"):
        f.mark = 1  # type: ignore[misc]


# -- no leaks -----------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _batch(k: int) -> bytes:
    """``k`` records: plain UDP/TCP v4 and v6 flows with distinct ports,
    ICMP, a directional zone, and every 16th the rich record."""
    L = core_lib
    parts = []
    for i in range(k):
        if i % 16 == 15:
            parts.append(_record(_rich_attrs()))
            continue
        if i % 16 == 7:
            parts.append(_record(_icmp_attrs(bool(i & 1), zone=i & 0xFF)))
            continue
        v6 = i % 4 == 3
        a, b = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.%d.2" % (i & 0xFF))
        proto = 6 if i & 1 else 17
        attrs = (tuple_attrs(L, L.CTA_TUPLE_ORIG, a, b, proto, 1024 + i, 53)
                 + tuple_attrs(L, L.CTA_TUPLE_REPLY, b, a, proto, 53, 1024 + i)
                 + nla(L.CTA_STATUS, be32(int(CtStatus.SEEN_REPLY | CtStatus.CONFIRMED)))
                 + nla(L.CTA_TIMEOUT, be32(30)) + nla(L.CTA_USE, be32(1))
                 + nla(L.CTA_ID, be32(i)) + nla(L.CTA_MARK, be32(i)))
        parts.append(_record(attrs))
    return b"".join(parts)


@pytest.mark.unit
@needs_fast
def test_a_million_flows_leak_nothing() -> None:
    """Building 1,000,000 flows (and dropping them) leaves the reference
    counts of the shared objects and the RSS where they were."""
    assert FAST is not None
    k = 1000
    recs = _batch(k)
    data = _rich_attrs()
    fast, slow = both(recs, k, data)
    for a, b in zip(fast, slow):
        same(a, b)
    del fast, slow
    shared = [Family.IPV4, Family.IPV6, IPProto.TCP, IPProto.UDP, TcpState.ESTABLISHED,
              R._NO_LABELS, R._IPS[ipaddress.ip_address("10.0.0.1").packed],
              R._STATUS[int(CtStatus.SEEN_REPLY | CtStatus.CONFIRMED)], None]
    for _ in range(20):         # warm: caches filled, allocator pools in place
        FAST(recs, k, b"", [])
    gc.collect()
    refs = [sys.getrefcount(o) for o in shared]
    rss = _rss_kib()
    for _ in range(1000):
        out: List[Flow] = []
        FAST(recs, k, b"", out)
    del out
    gc.collect()
    assert [sys.getrefcount(o) for o in shared] == refs
    assert _rss_kib() - rss < 2048


@pytest.mark.unit
@needs_fast
def test_errors_leak_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing helper stops the batch with its exception; the flows built
    before it stay in the list and nothing else keeps a reference."""
    import nfbind._fastct as mod

    assert FAST is not None
    k = 64
    recs = _batch(k)
    calls = [0]

    def failing(*args: Any) -> Any:
        calls[0] += 1
        raise RuntimeError("no")

    class Flaky(dict):  # type: ignore[type-arg]
        """An address cache that keeps nothing and fails every third miss."""

        misses = 0

        def __missing__(self, raw: Any) -> Any:
            self.misses += 1
            if self.misses % 3 == 0:
                raise KeyError(raw)
            return R._IPS[raw]

    def configure(rare: Callable[..., Any], ips: Any = R._IPS) -> None:
        mod.configure(Tuple, Flow, ips, R._STATUS, R._TCPINFO, tuple(R.PROTO),
                      tuple(R.TCP_STATE), tuple(R.SCTP_STATE), Family.IPV4, Family.IPV6,
                      R._NO_LABELS, rare, R._nat_of, R._NAT_BITS, socket.AF_INET6)

    FAST(recs, k, b"", [])
    gc.collect()
    refs = sys.getrefcount(Family.IPV4), sys.getrefcount(IPProto.UDP)
    rss = _rss_kib()
    try:
        configure(failing)
        for _ in range(20000):
            out: List[Flow] = []
            with pytest.raises(RuntimeError, match="no"):
                FAST(recs, k, b"", out)
            assert len(out) == 15       # the 16th record is the first rich one
        configure(R._rare, Flaky())
        for i in range(20000):          # each address of a flow in turn fails
            out = []
            with pytest.raises(KeyError):
                FAST(recs[i % 7 * R.REC_SIZE:], k - i % 7, b"", out)
        del out
    finally:
        configure(R._rare)
    gc.collect()
    assert calls[0] == 20000
    assert (sys.getrefcount(Family.IPV4), sys.getrefcount(IPProto.UDP)) == refs
    assert _rss_kib() - rss < 2048
    fast, slow = both(recs, k)
    same(fast, slow)


# -- a real table --------------------------------------------------------------------------------


class Capture:
    """Wraps the compiled builder: keeps a copy of every batch it is given."""

    def __init__(self, real: Callable[..., None]) -> None:
        self.real = real
        self.batches: List[Tup[bytes, int, bytes]] = []

    def __call__(self, recs: Any, n: int, data: bytes, out: List[Flow]) -> None:
        self.batches.append((bytes(memoryview(recs)[:n * R.REC_SIZE]), n, bytes(data)))
        self.real(recs, n, data, out)


def _fill(ns: Any, ct: Conntrack, socks: List[socket.socket]) -> int:
    """Flows of every kind in ``ns``'s table; returns how many."""
    ns.iptables("-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.99", "-j", "ACCEPT")
    ns.iptables("-A", "OUTPUT", "-m", "connlabel", "--label", "1", "--set")
    made = [
        Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 1234, 80), timeout=120, mark=5,
             state=TcpState.ESTABLISHED, status=CtStatus.SEEN_REPLY | CtStatus.ASSURED),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", 1234, 53), timeout=120, zone=7),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_code=0, icmp_id=77),
             timeout=30),
        Flow(Tuple("fd00::1", "fd00::2", "udp", 7, 8), timeout=120, labels={4, 100}),
        Flow(Tuple("fd00::1", "fd00::2", "icmpv6", icmp_type=128, icmp_id=9), timeout=30),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "sctp", 7, 8), timeout=120,
             state=SctpState.ESTABLISHED),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "gre", 0x10, 0x20), timeout=120),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "esp"), timeout=120, mark=9),
        Flow(Tuple("192.0.2.1", "192.0.2.2", "tcp", 1, 2, zone=9), timeout=60),
        Flow(Tuple("192.0.2.1", "192.0.2.2", "tcp", 1, 3),
             Tuple("192.0.2.2", "192.0.2.1", "tcp", 3, 1, zone=10), timeout=60),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 1000, 80), timeout=60,
             nat=Nat(dnat=Endpoint(ipaddress.ip_address("10.0.0.3"), 8080))),
        Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", 1000, 53), timeout=60,
             nat=Nat(snat=Endpoint(ipaddress.ip_address("192.0.2.7"), None))),
        Flow(Tuple("10.0.0.5", "10.0.0.6", "tcp", 2000, 21), timeout=60, helper="ftp",
             state=TcpState.ESTABLISHED),
    ]
    for f in made:
        ct.create(f)
    ns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1",
           "net.netfilter.nf_conntrack_timestamp=1")
    # real traffic, counted and stamped: TCP (with its window scales) and UDP,
    # both families, and ICMP echoes
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = ns.socket(fam, socket.SOCK_STREAM)
        socks.append(srv)
        srv.bind((host, 0))
        srv.listen()
        cl = ns.socket(fam, socket.SOCK_STREAM)
        socks.append(cl)
        cl.settimeout(5)
        cl.connect(srv.getsockname()[:2])
        a, _ = srv.accept()
        socks.append(a)
        cl.sendall(b"hello")
        assert a.recv(10) == b"hello"
        u = ns.socket(fam, socket.SOCK_DGRAM)
        socks.append(u)
        u.sendto(b"x", (host, 9))
    for fam, proto, host, pkt in (
            (socket.AF_INET, socket.IPPROTO_ICMP, "127.0.0.1",
             bytes.fromhex("0800f7f5000a0000")),  # echo request, id 10, sum filled in
            (socket.AF_INET6, socket.IPPROTO_ICMPV6, "::1", bytes.fromhex("80000000000b0001"))):
        s = ns.socket(fam, socket.SOCK_RAW, proto)
        socks.append(s)
        s.sendto(pkt, (host, 0))
    return len(made) + 6


@pytest.fixture
def table(ns: Any) -> Iterator[Tup[Any, Conntrack, int]]:
    """A table with flows of every kind (counters and timestamps only for
    the real traffic's flows, so records with and without them are there)."""
    ct_ns(ns, acct=False, tstamp=False)
    socks: List[socket.socket] = []
    with Conntrack(netns=ns.name) as ct:
        n = _fill(ns, ct, socks)
        try:
            yield ns, ct, n
        finally:
            for s in socks:
                s.close()


@pytest.mark.integration
@needs_fast
def test_a_real_table_gives_the_same_flows(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ns, ct, n = table
    cap = Capture(FAST)  # type: ignore[arg-type]
    monkeypatch.setattr(R, "FAST", cap)
    flows = list(ct.dump())
    assert len(flows) >= n and cap.batches
    kinds = set()
    for recs, k, data in cap.batches:
        fast, slow = both(recs, k, data)
        for a, b in zip(fast, slow):
            same(a, b)
            kinds.add((int(a.proto), a.family, a.orig.zone is not None, a.labels != frozenset(),
                       a.nat is not None, a.helper, a.counters is not None,
                       a.timestamps is not None, a.tcp is not None))
    by = {k[0] for k in kinds}
    assert {6, 17, 1, 58, 132, 47, 50} <= by
    assert any(k[2] for k in kinds) and any(k[3] for k in kinds) and any(k[4] for k in kinds)
    assert any(k[6] and k[7] for k in kinds) and any(not k[6] for k in kinds)
    assert any(k[5] == "ftp" for k in kinds) and any(k[8] for k in kinds)
    assert any(k[1] is Family.IPV6 for k in kinds)


@pytest.mark.integration
def test_dump_get_and_events_on_both_paths(table: Any, builder: str) -> None:
    ns, ct, n = table
    flows = {(f.orig.src, f.orig.dst, int(f.proto), f.orig.sport, f.orig.dport): f
             for f in ct.dump()}
    assert len(flows) >= n
    assert all(type(f) is Flow and type(f.orig) is Tuple for f in flows.values())
    udp = flows[(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 17,
                 1234, 53)]
    assert udp.zone == 7 and udp.labels == frozenset() and udp.counters is None
    assert udp.reply is not None and udp.reply.src is udp.orig.dst
    six = flows[(ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2"), 17, 7, 8)]
    assert six.labels == {4, 100} and six.family is Family.IPV6
    got = ct.get(udp.orig, zone=7)
    assert (got.orig, got.reply, got.zone, got.id, got.status) == (
        udp.orig, udp.reply, 7, udp.id, udp.status)
    tup = Tuple("10.0.0.8", "10.0.0.9", "udp", 4000, 53)
    with ct.events(CtEvent.NEW | CtEvent.UPDATE | CtEvent.DESTROY) as stream:
        ct.create(Flow(tup, timeout=30))
        ct.update(tup, mark=7)
        ct.delete(tup)
        events: List[Any] = []
        timer = threading.Timer(5.0, stream.stop)
        timer.start()
        try:
            for ev in stream:
                events.append(ev)
                if len(events) >= 3:
                    break
        finally:
            timer.cancel()
    assert [e.type for e in events] == [CtEvent.NEW, CtEvent.UPDATE, CtEvent.DESTROY]
    assert all(e.flow.orig == tup and type(e.flow) is Flow for e in events)
    assert [e.flow.mark for e in events] == [0, 7, 7]


@pytest.mark.integration
@needs_fast
def test_repeated_dumps_leak_nothing(table: Any) -> None:
    ns, ct, n = table
    for _ in range(20):
        list(ct.dump())
    gc.collect()
    refs = sys.getrefcount(Family.IPV4), sys.getrefcount(IPProto.UDP)
    rss = _rss_kib()
    for _ in range(500):
        assert len(list(ct.dump())) >= n
    gc.collect()
    assert (sys.getrefcount(Family.IPV4), sys.getrefcount(IPProto.UDP)) == refs
    assert _rss_kib() - rss < 2048
