# SPDX-License-Identifier: GPL-2.0-or-later
"""Tuple filters of ``ct.dump()`` and ``ct.flush()`` (CTA_FILTER, CTA_ZONE),
``dump(zero_counters=True)`` and ``ct.get(reply_tuple, reply=True)``.

One table is built per test in a throw-away namespace (IPv4 and IPv6; TCP,
UDP, SCTP, ICMP; zones, directional zones, translated reply tuples), and
every filter is answered three ways that must agree: by the kernel where it
can (the default), by userspace alone (the private switch that makes nfbind
behave as on a kernel without CTA_FILTER), and by a plain predicate over the
whole table written here.  That the kernel path really filters in the
kernel is shown by counting the records the decoder built; conntrack-tools'
own filters (``conntrack -L -s/-d/-p/--sport/-r/-q/-w``) are checked against
the same tables.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any, Callable, Dict, List

import pytest

from nfbind.conntrack import Conntrack, Flow, NotFound, Tuple
from nfbind.conntrack import _pool, _records
from nfbind.conntrack._wire import DumpFilter, Support, zone_id
from nfbind.enums import IPProto

from helpers.conntrack import conntrack_l, ct_ns, flow_key, row_key


# -- the filter object, no kernel ------------------------------------------------------------


def test_filter_arguments_are_checked():
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        DumpFilter(src="10.0.0.1", reply_dst="fd00::1")
    with pytest.raises(ValueError, match="family is IPv6 but src"):
        DumpFilter("ipv6", src="10.0.0.0/8")
    with pytest.raises(ValueError, match="src is not an IPv4/IPv6 address or network"):
        DumpFilter(src="10.0.0.300")
    with pytest.raises(TypeError, match="dst must be an address or network"):
        DumpFilter(dst=1.5)
    with pytest.raises(ValueError, match="sport"):
        DumpFilter(sport=70000)
    with pytest.raises(ValueError, match="proto"):
        DumpFilter(proto="nosuch")
    f = DumpFilter(src="10.1.2.3/8", dst=ipaddress.ip_address("10.0.0.1"), reply_sport=5)
    assert str(f.src) == "10.0.0.0/8" and f.dst.prefixlen == 32 and f.has_tuple


ALL = Support(True, True)
NONE = Support(False, False)


def test_what_goes_to_the_kernel():
    from nfbind._conntrack import lib

    f, exact = DumpFilter(src="10.0.0.1", proto="tcp", dport=80).kernel(socket.AF_INET, ALL)
    assert exact and f.orig_flags == (lib.NFB_CTF_IP_SRC | lib.NFB_CTF_PROTO_NUM
                                      | lib.NFB_CTF_PROTO_DST_PORT) and f.reply_flags == 0
    assert bytes(f.orig.src[0:4]) == bytes([10, 0, 0, 1]) and f.orig.dport == 80
    # a network, an IPv6 address, ports without a protocol or of SCTP: userspace
    for kw in (dict(src="10.0.0.0/8"), dict(src="fd00::1"), dict(sport=5),
               dict(proto="sctp", sport=5)):
        f, exact = DumpFilter(**kw).kernel(socket.AF_INET6 if "fd" in str(kw) else
                                           socket.AF_INET, ALL)
        assert not exact, kw
        assert not f.orig_flags & (lib.NFB_CTF_IP_SRC | lib.NFB_CTF_PROTO_SRC_PORT), kw
    f, exact = DumpFilter(reply_dst="10.0.0.1", proto="udp", reply_sport=53).kernel(
        socket.AF_INET, ALL)
    assert exact and f.reply_flags == (lib.NFB_CTF_IP_DST | lib.NFB_CTF_PROTO_NUM
                                       | lib.NFB_CTF_PROTO_SRC_PORT)
    assert f.orig_flags == lib.NFB_CTF_PROTO_NUM
    f, exact = DumpFilter(zone=4).kernel(None, ALL)
    assert exact and f.set & lib.NFB_DF_ZONE and f.zone == 4
    assert not DumpFilter(zone=4).kernel(None, Support(True, False))[1]
    assert not DumpFilter(proto="udp").kernel(socket.AF_INET, NONE)[1]
    # tuple filters are per family: one request each when none is known
    assert DumpFilter(proto="udp").families(ALL) == [socket.AF_INET, socket.AF_INET6]
    assert DumpFilter(proto="udp").families(NONE) == [None]
    assert DumpFilter(dst="fd00::1").families(ALL) == [socket.AF_INET6]


def test_zone_matches_either_direction():
    a, b = "10.0.0.1", "10.0.0.2"
    both = Flow(Tuple(a, b, "udp", 1, 2), zone=3)
    orig = Flow(Tuple(a, b, "udp", 1, 2, zone=3))
    reply = Flow(Tuple(a, b, "udp", 1, 2), Tuple(b, a, "udp", 2, 1, zone=3))
    assert [zone_id(f) for f in (both, orig, reply)] == [3, 3, 3]
    assert all(DumpFilter(zone=3).matches(f) for f in (both, orig, reply))
    assert not DumpFilter(zone=0).matches(orig)


# -- against the kernel ------------------------------------------------------------------------

V4 = ["10.0.%d.%d" % (i // 8, i % 8 + 1) for i in range(16)]
V6 = ["fd00::%x" % (i + 1) for i in range(8)]


def fill(ct: Conntrack) -> List[Flow]:
    """A table of 160 flows: TCP, UDP, SCTP, ICMP over IPv4, UDP and TCP over
    IPv6, zones (both directions, orig only, reply only), and reply tuples
    that are not the inverse of the original (as after NAT)."""
    for i in range(120):
        src, proto = V4[i % 16], ("tcp", "udp", "sctp")[i % 3]
        dst = "10.9.0.%d" % (i % 4 + 1)
        reply = None
        if i % 10 == 0:   # translated: the peer answers to another address and port
            reply = Tuple(dst, "192.0.2.%d" % (i % 7 + 1), proto, 80 + i % 2, 20000 + i)
        zone = 0
        otup = Tuple(src, dst, proto, 1000 + i, 80 + i % 2)
        if i % 11 == 0:
            zone = 1 + i % 3
        elif i % 13 == 0:
            otup = Tuple(src, dst, proto, 1000 + i, 80 + i % 2, zone=4)
        elif i % 17 == 0 and reply is None:
            reply = Tuple(dst, src, proto, 80 + i % 2, 1000 + i, zone=5)
        ct.create(Flow(otup, reply, timeout=600, zone=zone,
                       state=3 if proto == "tcp" else None))
    for i in range(20):
        ct.create(Flow(Tuple(V4[i % 16], "10.9.0.9", "icmp", icmp_type=8, icmp_id=100 + i),
                       timeout=600))
    for i in range(20):
        ct.create(Flow(Tuple(V6[i % 8], "fd09::%d" % (i % 3 + 1), ("udp", "tcp")[i % 2],
                             2000 + i, 53 + i % 2), timeout=600, zone=2 if i % 7 == 0 else 0,
                       state=3 if i % 2 else None))
    return list(ct.dump())


def _net(v: Any) -> Any:
    return ipaddress.ip_network(v, strict=False)


def predicate(kw: Dict[str, Any]) -> Callable[[Flow], bool]:
    """The filter, written out plainly over the Flow's fields."""
    def ok(f: Flow) -> bool:
        o, r = f.orig, f.reply
        fam = kw.get("family")
        if fam is not None and f.family != {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}[fam]:
            return False
        if "proto" in kw and o.proto != {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}[kw["proto"]]:
            return False
        for key, val in (("src", o.src), ("dst", o.dst), ("reply_src", r and r.src),
                         ("reply_dst", r and r.dst)):
            if key in kw and (val is None or val not in _net(kw[key])):
                return False
        for key, val in (("sport", o.sport), ("dport", o.dport), ("reply_sport", r and r.sport),
                         ("reply_dport", r and r.dport)):
            if key in kw and val != kw[key]:
                return False
        if "zone" in kw:
            zones = {f.zone} | {t.zone for t in (o, r) if t is not None and t.zone is not None}
            if kw["zone"] not in zones or (kw["zone"] == 0 and zones != {0}):
                return False
        return True
    return ok


FILTERS: List[Dict[str, Any]] = [
    dict(src="10.0.0.3"),
    dict(src="10.0.1.0/29"),
    dict(dst="10.9.0.2", proto="tcp"),
    dict(proto="udp", dport=81),
    dict(proto="tcp", sport=1009, dport=81),
    dict(sport=1010),                                   # no protocol: userspace ports
    dict(proto="sctp", sport=1002),                     # SCTP ports: userspace
    dict(reply_dst="192.0.2.4"),
    dict(reply_src="10.9.0.1", reply_dport=20000, proto="tcp"),
    dict(proto="udp", reply_sport=80),
    dict(zone=2),
    dict(zone=4),                                       # a --zone-orig zone
    dict(zone=5, proto="tcp"),                          # a --zone-reply zone
    dict(zone=0, proto="sctp", dst="10.9.0.1"),
    dict(proto="icmp", src="10.0.0.5"),
    dict(src="fd00::3"),                                # IPv6 addresses: userspace
    dict(family="ipv6", proto="udp", dport=53),
    dict(dst="fd09::/120", proto="tcp"),
    dict(family="ipv4", src="10.0.0.0/24", proto="udp", dport=80),
]


def _keys(flows: List[Flow]) -> List[tuple]:
    return sorted((str(f.orig), str(f.reply), f.zone, f.id) for f in flows)


@pytest.fixture
def table(ns):
    ct_ns(ns)
    with Conntrack(netns=ns.name) as ct:
        yield ct, fill(ct)


@pytest.mark.integration
def test_kernel_and_userspace_filters_agree(table, monkeypatch):
    ct, everything = table
    assert len(everything) == 160
    assert ct._pool.filter_support() == Support(True, True)   # this kernel has both
    for kw in FILTERS:
        want = [f for f in everything if predicate(kw)(f)]
        assert want, kw   # every filter selects something ...
        assert len(want) < len(everything) // 2, kw   # ... and leaves most out
        kernel = list(ct.dump(**kw))
        monkeypatch.setattr(_pool, "_FORCE_USERSPACE", True)
        user = list(ct.dump(**kw))
        monkeypatch.setattr(_pool, "_FORCE_USERSPACE", False)
        assert _keys(kernel) == _keys(user) == _keys(want), kw


@pytest.mark.integration
def test_the_kernel_sends_only_the_selected_flows(table, monkeypatch):
    ct, everything = table
    built: List[int] = []
    real = _records.build_flows

    def counting(recs, n, data, out, nv6=None):
        built.append(n)
        return real(recs, n, data, out, nv6)

    monkeypatch.setattr(_pool, "build_flows", counting)
    one = [f for f in everything if f.orig.proto == IPProto.UDP and f.family == socket.AF_INET
           and zone_id(f) == 0][3]
    kw = dict(src=str(one.orig.src), dst=str(one.orig.dst), proto=one.orig.proto.name.lower(),
              sport=one.orig.sport, dport=one.orig.dport)
    assert [f.id for f in ct.dump(**kw)] == [one.id]
    assert sum(built) == 1
    built.clear()
    assert [f.id for f in ct.dump(**dict(kw, src=str(one.orig.src) + "/32"))] == [one.id]
    assert sum(built) == 1   # a /32 is an address: still the kernel's
    built.clear()
    monkeypatch.setattr(_pool, "_FORCE_USERSPACE", True)
    assert [f.id for f in ct.dump(**kw)] == [one.id]
    assert sum(built) == 140   # every IPv4 flow: only the family went to the kernel


@pytest.mark.integration
def test_support_is_probed_once(table, monkeypatch):
    ct, _ = table
    calls = []
    real = _pool.Pool._probe
    monkeypatch.setattr(_pool, "_SUPPORT", None)
    monkeypatch.setattr(_pool.Pool, "_probe", lambda self: calls.append(1) or real(self))
    for _ in range(3):
        list(ct.dump(proto="udp", dport=80))
    list(ct.dump(mark=5))   # no tuple or zone filter: no probe needed
    assert calls == [1]


@pytest.mark.integration
def test_conntrack_tools_filters_agree(table, ns):
    ct, _ = table
    cases = [
        (dict(src="10.0.0.3"), ["-s", "10.0.0.3"]),
        (dict(dst="10.9.0.2", proto="tcp"), ["-d", "10.9.0.2", "-p", "tcp"]),
        (dict(proto="udp", dport=81), ["-p", "udp", "--dport", "81"]),
        (dict(reply_dst="192.0.2.4"), ["-q", "192.0.2.4"]),
        (dict(reply_src="10.9.0.1", proto="tcp", reply_dport=20000),
         ["-r", "10.9.0.1", "-p", "tcp", "--reply-port-dst", "20000"]),
        (dict(zone=2), ["-w", "2"]),
    ]
    for kw, args in cases:
        rows = conntrack_l(ns, *args)
        assert rows, args
        assert sorted(flow_key(f) for f in ct.dump(**kw)) == sorted(row_key(r) for r in rows), args


def _udp_flows(ns, ports: List[int], keep: List[socket.socket]) -> Dict[int, int]:
    """One UDP flow per port with 3 packets out and 2 back; port -> client port."""
    out = {}
    for p in ports:
        srv = ns.socket()
        srv.bind(("127.0.0.1", p))
        cl = ns.socket()
        cl.bind(("127.0.0.1", 0))
        keep += [srv, cl]
        for _ in range(3):
            cl.sendto(b"ping", ("127.0.0.1", p))
        for _ in range(2):
            srv.sendto(b"pong!", cl.getsockname())
        out[p] = cl.getsockname()[1]
    time.sleep(0.1)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("how", ["kernel", "per-flow"])
def test_zero_counters(ns, how):
    ct_ns(ns, v6=False)
    keep: List[socket.socket] = []
    try:
        _udp_flows(ns, [7801, 7802, 7803], keep)
        with Conntrack(netns=ns.name) as ct:
            kw: Dict[str, Any] = dict(proto="udp", dport=7802)
            if how == "per-flow":   # a network: matched in userspace, zeroed flow by flow
                kw["dst"] = "127.0.0.0/8"
            (f,) = ct.dump(zero_counters=True, **kw)
            assert f.orig.dport == 7802 and f.counters is not None
            assert (f.counters.orig_packets, f.counters.reply_packets) == (3, 2)
            after = {g.orig.dport: g.counters for g in ct.dump(proto="udp")}
            assert after[7802] is not None and after[7802].packets == 0
            assert after[7801] is not None and after[7801].packets == 5   # not zeroed
            assert after[7803] is not None and after[7803].packets == 5
            rows = {int(r["orig"]["dport"]): r for r in conntrack_l(ns, "-p", "udp")}
            assert rows[7802]["orig"]["packets"] == "0" and rows[7801]["orig"]["packets"] == "3"
            # conntrack -L -z takes no filter and zeroes the whole table
            ns.run("conntrack", "-L", "-z")
            assert all(g.counters is not None and g.counters.packets == 0
                       for g in ct.dump(proto="udp"))
            with pytest.raises(TypeError, match="zero_counters"):
                ct.dump(zero_counters=1)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="zero_counters needs table='conntrack'"):
                ct.dump(table="dying", zero_counters=True)
    finally:
        for s in keep:
            s.close()


@pytest.mark.integration
@pytest.mark.parametrize("force_userspace", [False, True])
def test_flush_with_filters(table, ns, monkeypatch, force_userspace):
    ct, everything = table
    monkeypatch.setattr(_pool, "_FORCE_USERSPACE", force_userspace)
    left = list(everything)
    for kw in (dict(proto="udp", dport=81), dict(src="10.0.1.0/29"), dict(zone=4),
               dict(src="fd00::3"), dict(reply_dst="192.0.2.4")):
        gone = [f for f in left if predicate(kw)(f)]
        assert gone, kw
        ct.flush(**kw)
        left = [f for f in left if not predicate(kw)(f)]
        assert _keys(list(ct.dump())) == _keys(left), kw
        assert len(conntrack_l(ns)) == len(left)


@pytest.mark.integration
def test_get_by_reply_tuple(ns):
    ct_ns(ns, v6=False)
    ns.run("ip", "addr", "add", "10.98.0.1/24", "dev", "lo")
    ns.iptables("-t", "nat", "-A", "OUTPUT", "-p", "udp", "-d", "10.98.0.1", "--dport", "53",
                "-j", "DNAT", "--to-destination", "10.98.0.1:5353")
    keep: List[socket.socket] = []
    try:
        srv = ns.socket()
        srv.bind(("10.98.0.1", 5353))
        cl = ns.socket()
        keep += [srv, cl]
        cl.sendto(b"q", ("10.98.0.1", 53))
        assert srv.recv(10) == b"q"
        with Conntrack(netns=ns.name) as ct:
            (f,) = ct.dump(proto="udp", dport=53)
            assert f.reply is not None and f.reply.sport == 5353   # translated
            by_reply = ct.get(f.reply, reply=True)
            assert by_reply.id == f.id and by_reply.orig == f.orig
            assert ct.get(f, reply=True).id == f.id    # a Flow gives its reply tuple
            # the kernel looks a tuple up in both directions' hash entries:
            # without a directional zone either flag finds the flow
            assert ct.get(f.reply).id == f.id
            # with one (--zone-reply) the direction decides
            zoned = Flow(Tuple("192.0.2.1", "192.0.2.2", "udp", 1, 2),
                         Tuple("192.0.2.2", "192.0.2.1", "udp", 2, 1, zone=6), timeout=60)
            ct.create(zoned)
            assert zoned.reply is not None
            assert ct.get(zoned.reply, reply=True).orig == zoned.orig
            with pytest.raises(NotFound):
                ct.get(zoned.reply)
            # conntrack-tools 1.4.7's -G refuses a reply tuple before asking the
            # kernel ("invalid parameters"); its list filter on it agrees
            rows = conntrack_l(ns, "-p", "udp", "-r", "10.98.0.1", "--reply-port-src", "5353")
            assert [row_key(r) for r in rows] == [flow_key(by_reply)]
            assert int(rows[0]["id"]) == by_reply.id
            with pytest.raises(TypeError, match="reply"):
                ct.get(f, reply=1)   # type: ignore[arg-type]
            with pytest.raises(ValueError, match="no reply tuple"):
                ct.get(Flow(f.orig), reply=True)
    finally:
        for s in keep:
            s.close()


def test_dump_filters_are_documented_in_the_signature():
    import inspect

    params = inspect.signature(Conntrack.dump).parameters
    for name in ("src", "dst", "proto", "sport", "dport", "reply_src", "reply_dst",
                 "reply_sport", "reply_dport", "zone", "zero_counters"):
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    fl = inspect.signature(Conntrack.flush).parameters
    assert {"src", "dst", "proto", "sport", "dport", "reply_src", "zone"} <= set(fl)
