# SPDX-License-Identifier: GPL-2.0-or-later
"""The flow fields beyond conntrack -L's: directional zones (``Tuple.zone``),
TCP window scales and flags (``Flow.tcp``), sequence adjustments
(``Flow.seq_adj``) and SYNPROXY state (``Flow.synproxy``).

Real flows in throw-away namespaces: zones from ``-j CT --zone-orig`` /
``--zone-reply`` (cross-checked with ``conntrack -L -o extended``, and sent
back to the kernel by get/create/update/delete), window scales against what
the sockets themselves negotiated (``ss -tni``), a PORT command rewritten by
nf_nat_ftp (SEQ_ADJUST), and connections answered by the SYNPROXY target.
The C parser is also fed the kernel's attribute layout by hand.
"""
from __future__ import annotations

import re
import socket
import time
from typing import List

import pytest

from nfbind._core import lib
from nfbind.conntrack import (
    Conntrack,
    Flow,
    NotFound,
    SeqAdj,
    Synproxy,
    TcpInfo,
    Tuple,
    flow_from_ct_attrs,
)
from nfbind.enums import CtEvent, CtStatus, IPProto, TcpFlag, TcpState

from helpers.conntrack import conntrack_l, ct_ns
from helpers.ctlab import (
    CLIENT_NAT,
    SERVER,
    be32,
    ftp_rules,
    ftp_session,
    link,
    nest,
    nla,
    port_command,
    synproxy,
    tuple_attrs,
)


# -- the values themselves -----------------------------------------------------------------


def test_tuple_zone_is_checked_and_shown():
    t = Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2, zone=5)
    assert t.zone == 5 and t != Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    assert str(t).endswith(" zone=5")
    assert t.as_dict()["zone"] == 5
    assert "zone" not in Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2).as_dict()
    with pytest.raises(ValueError, match="zone"):
        Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2, zone=70000)
    with pytest.raises(TypeError, match="zone"):
        Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2, zone="5")


def test_a_flow_has_one_zone():
    o = Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2, zone=5)
    r = Tuple("10.0.0.2", "10.0.0.1", "udp", 2, 1, zone=6)
    with pytest.raises(ValueError, match="one zone"):
        Flow(o, zone=3)
    with pytest.raises(ValueError, match="one zone"):
        Flow(o, r)
    assert Flow(o).orig.zone == 5


def test_tcp_info_seq_adj_synproxy_values():
    t = TcpInfo(3, 7, 0, 0x23, 1)
    assert t.state is TcpState.ESTABLISHED
    assert t.flags_orig == TcpFlag.WINDOW_SCALE | TcpFlag.SACK_PERM | TcpFlag.MAXACK_SET
    assert t.as_dict() == {"state": "ESTABLISHED", "wscale_orig": 7, "wscale_reply": 0,
                           "flags_orig": ["WINDOW_SCALE", "SACK_PERM", "MAXACK_SET"],
                           "flags_reply": ["WINDOW_SCALE"]}
    assert TcpInfo(TcpState.CLOSE).as_dict()["flags_orig"] is None
    with pytest.raises(ValueError, match="wscale_orig"):
        TcpInfo(3, 300)
    s = SeqAdj(orig_correction_pos=10, orig_offset_after=2)
    assert s.as_dict()["orig_offset_after"] == 2 and s.reply_offset_after == 0
    with pytest.raises(ValueError, match="reply_offset_before"):
        SeqAdj(reply_offset_before=-1)
    assert Synproxy(1, 2, 3).as_dict() == {"isn": 1, "its": 2, "tsoff": 3}
    f = Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 1, 2), tcp=t, seq_adj=s,
             synproxy=Synproxy(1, 2, 3))
    d = f.as_dict()
    assert list(d)[-3:] == ["tcp", "seq_adj", "synproxy"]
    with pytest.raises(TypeError, match="tcp"):
        Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 1, 2), tcp=(3, 7))


def test_parser_reads_the_kernel_layout():
    """The attributes in the kernel's layout (ctnetlink_fill_info): tuple
    zones inside the tuples, the TCP nest, both SEQ_ADJ nests, SYNPROXY."""
    tcp = nest(lib.CTA_PROTOINFO, nest(
        lib.CTA_PROTOINFO_TCP,
        nla(lib.CTA_PROTOINFO_TCP_STATE, bytes([TcpState.TIME_WAIT])),
        nla(lib.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, bytes([7])),
        nla(lib.CTA_PROTOINFO_TCP_WSCALE_REPLY, bytes([0])),
        nla(lib.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([0x07, 0])),   # struct nf_ct_tcp_flags
        nla(lib.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([0x02, 0]))))

    def seqadj(t: int, pos: int, before: int, after: int) -> bytes:
        return nest(t, nla(lib.CTA_SEQADJ_CORRECTION_POS, be32(pos)),
                    nla(lib.CTA_SEQADJ_OFFSET_BEFORE, be32(before)),
                    nla(lib.CTA_SEQADJ_OFFSET_AFTER, be32(after)))

    attrs = (tuple_attrs(lib, lib.CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 6, 1000, 21, zone=9)
             + tuple_attrs(lib, lib.CTA_TUPLE_REPLY, "10.0.0.2", "10.0.0.9", 6, 21, 1000)
             + nla(lib.CTA_STATUS, be32(int(CtStatus.SEQ_ADJUST | CtStatus.SRC_NAT)))
             + tcp
             + seqadj(lib.CTA_SEQ_ADJ_ORIG, 0xFFFFFFF0, 0, 2)
             + seqadj(lib.CTA_SEQ_ADJ_REPLY, 5, 1, 3)
             + nest(lib.CTA_SYNPROXY, nla(lib.CTA_SYNPROXY_ISN, be32(11)),
                    nla(lib.CTA_SYNPROXY_ITS, be32(12)), nla(lib.CTA_SYNPROXY_TSOFF, be32(13))))
    f = flow_from_ct_attrs(attrs, 0, len(attrs), socket.AF_INET)
    assert f.orig.zone == 9 and f.reply is not None and f.reply.zone is None and f.zone == 0
    assert f.state is TcpState.TIME_WAIT
    assert f.tcp == TcpInfo(TcpState.TIME_WAIT, 7, 0, TcpFlag(7), TcpFlag.SACK_PERM)
    assert f.seq_adj == SeqAdj(0xFFFFFFF0, 0, 2, 5, 1, 3)
    assert f.synproxy == Synproxy(11, 12, 13)
    # what a DESTROY event carries: the state alone
    short = (tuple_attrs(lib, lib.CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 6, 1, 2)
             + nest(lib.CTA_PROTOINFO, nest(lib.CTA_PROTOINFO_TCP,
                                            nla(lib.CTA_PROTOINFO_TCP_STATE, bytes([7])))))
    g = flow_from_ct_attrs(short, 0, len(short), socket.AF_INET)
    assert g.tcp == TcpInfo(TcpState.TIME_WAIT) and g.seq_adj is None and g.synproxy is None
    # a SYNPROXY nest missing a member is not half-read; an empty one (every
    # flow made over ctnetlink has it) is no SYNPROXY state
    part = short + nest(lib.CTA_SYNPROXY, nla(lib.CTA_SYNPROXY_ISN, be32(1)))
    assert flow_from_ct_attrs(part, 0, len(part), socket.AF_INET).synproxy is None
    empty = short + nest(lib.CTA_SYNPROXY, *(nla(t, be32(0)) for t in (
        lib.CTA_SYNPROXY_ISN, lib.CTA_SYNPROXY_ITS, lib.CTA_SYNPROXY_TSOFF)))
    assert flow_from_ct_attrs(empty, 0, len(empty), socket.AF_INET).synproxy is None


# -- against the kernel ----------------------------------------------------------------------

def _udp(ns, port: int, keep: List[socket.socket]) -> int:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    keep.append(s)
    s.bind(("127.0.0.1", 0))
    s.sendto(b"x", ("127.0.0.1", port))
    return s.getsockname()[1]


@pytest.mark.integration
def test_directional_zones_against_conntrack_tools(ns):
    ct_ns(ns, v6=False)
    for port, opt in ((7701, ("--zone-orig", "5")), (7702, ("--zone-reply", "6")),
                      (7703, ("--zone", "7"))):
        ns.iptables("-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", str(port), "-j", "CT",
                    *opt)
    keep: List[socket.socket] = []
    try:
        sport = {p: _udp(ns, p, keep) for p in (7701, 7702, 7703)}
        with Conntrack(netns=ns.name) as ct:
            flows = {f.orig.dport: f for f in ct.dump() if f.orig.dport in sport}
            rows = {int(r["orig"]["dport"]): r for r in conntrack_l(ns)
                    if r["orig"].get("dport") in {str(p) for p in sport}}
            assert set(flows) == set(rows) == set(sport)
            for port, f in flows.items():
                r = rows[port]
                assert f.orig.zone == (int(r["zone-orig"]) if "zone-orig" in r else None)
                assert f.reply is not None
                assert f.reply.zone == (int(r["zone-reply"]) if "zone-reply" in r else None)
                assert f.zone == int(r.get("zone", 0))
            assert (flows[7701].orig.zone, flows[7702].reply.zone, flows[7703].zone) == (5, 6, 7)

            # the zone travels with the tuple: found with it, not without it
            f = flows[7701]
            plain = Tuple(f.orig.src, f.orig.dst, "udp", f.orig.sport, f.orig.dport)
            with pytest.raises(NotFound):
                ct.get(plain)
            assert ct.get(f.orig).id == f.id
            assert ct.get(f).orig.zone == 5
            ct.update(f.orig, mark=0x42)
            assert ct.get(f.orig).mark == 0x42
            ct.delete(f.orig)
            with pytest.raises(NotFound):
                ct.get(f.orig)

            # create() sends them: conntrack -L shows zone-orig / zone-reply
            ct.create(Flow(Tuple("192.0.2.1", "192.0.2.2", "tcp", 1, 2, zone=9), timeout=60))
            ct.create(Flow(Tuple("192.0.2.1", "192.0.2.2", "tcp", 1, 3),
                           Tuple("192.0.2.2", "192.0.2.1", "tcp", 3, 1, zone=10), timeout=60))
            made = {int(r["orig"]["dport"]): r for r in conntrack_l(ns)
                    if r["orig"]["src"] == "192.0.2.1"}
            assert made[2].get("zone-orig") == "9" and "zone-reply" not in made[2]
            assert made[3].get("zone-reply") == "10" and "zone-orig" not in made[3]
            got = ct.get(Tuple("192.0.2.1", "192.0.2.2", "tcp", 1, 2, zone=9))
            assert got.orig.zone == 9 and got.zone == 0
    finally:
        for s in keep:
            s.close()


@pytest.mark.integration
def test_tuple_zones_in_events(ns):
    ct_ns(ns, v6=False)
    ns.iptables("-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "7711", "-j", "CT",
                "--zone-reply", "11")
    keep: List[socket.socket] = []
    try:
        with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW) as ev:
            sport = _udp(ns, 7711, keep)
            seen: List[Flow] = []
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                ev.run(lambda e: seen.append(e.flow) if e.flow.orig.sport == sport else None,
                       timeout=0.2)
            assert len(seen) == 1 and seen[0].reply is not None
            assert seen[0].reply.zone == 11 and seen[0].orig.zone is None
    finally:
        for s in keep:
            s.close()


def _ss_wscale(ns, local_port: int) -> tuple:
    """(snd_wscale, rcv_wscale) of the socket bound to ``local_port``, as ss shows them."""
    out = ns.run("ss", "-tni", "state", "established", "( sport = :%d )" % local_port)
    m = re.search(r"wscale:(\d+),(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.mark.integration
@pytest.mark.parametrize("scaling", [True, False])
def test_tcp_info_is_what_the_sockets_negotiated(ns, scaling):
    ct_ns(ns, v6=False)
    ns.run("sysctl", "-qw", "net.ipv4.tcp_window_scaling=%d" % scaling)
    keep: List[socket.socket] = []
    # subscribed before the flow exists: with nf_conntrack_events=2 (the
    # default) only flows made while someone listens carry events
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.DESTROY) as ev:
        _tcp_info_checks(ns, ct, ev, scaling, keep)


def _tcp_info_checks(ns, ct, ev, scaling: bool, keep: List[socket.socket]) -> None:
    try:
        srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        keep.append(srv)
        # a small receive buffer: the server announces a smaller scale than the client
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        srv.bind(("127.0.0.1", 7720))
        srv.listen()
        cl = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        keep.append(cl)
        cl.connect(("127.0.0.1", 7720))
        conn, _ = srv.accept()
        keep.append(conn)
        cl.sendall(b"x")
        assert conn.recv(1) == b"x"
        cport = cl.getsockname()[1]
        f = ct.get(Tuple("127.0.0.1", "127.0.0.1", "tcp", cport, 7720))
        assert f.tcp is not None and f.tcp.state is f.state is TcpState.ESTABLISHED
        assert f.tcp.flags_orig is not None and f.tcp.flags_reply is not None
        for flags in (f.tcp.flags_orig, f.tcp.flags_reply):
            assert TcpFlag.SACK_PERM in flags
            assert (TcpFlag.WINDOW_SCALE in flags) == scaling
        if scaling:
            snd, rcv = _ss_wscale(ns, cport)   # the client's view
            assert (f.tcp.wscale_orig, f.tcp.wscale_reply) == (rcv, snd)
            assert f.tcp.wscale_orig != f.tcp.wscale_reply
        else:
            assert (f.tcp.wscale_orig, f.tcp.wscale_reply) == (0, 0)
        # the same from a dump, and the state alone in the DESTROY event
        assert [g.tcp for g in ct.dump() if g.id == f.id] == [f.tcp]
        ct.delete(f)
        seen: List[Flow] = []
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            ev.run(lambda e: seen.append(e.flow) if e.flow.id == f.id else None,
                   timeout=0.2)
        assert len(seen) == 1 and seen[0].tcp is not None
        assert seen[0].tcp.state is not None and seen[0].tcp.wscale_orig is None
    finally:
        for s in keep:
            s.close()


@pytest.mark.integration
def test_seq_adj_from_nat_ftp_and_synproxy(ns, more_ns):
    a, b = ns, more_ns()
    link(a, b, "f")
    ftp_rules(a, "f")
    synproxy(b, "f")
    keep: List[socket.socket] = []
    try:
        lab = ftp_session(a, b, keep)
        with Conntrack(netns=a.name) as cta, Conntrack(netns=b.name) as ctb:
            ctl = [f for f in cta.dump() if f.orig.dport == 21]
            assert len(ctl) == 1 and ctl[0].seq_adj is None
            assert CtStatus.SEQ_ADJUST not in ctl[0].status
            # nf_nat_ftp rewrites the client's address: 2 bytes longer
            got = port_command(lab, 10000)
            assert got == b"PORT %s,39,16\r\n" % CLIENT_NAT.replace(".", ",").encode()
            f = cta.get(ctl[0])
            assert CtStatus.SEQ_ADJUST in f.status and f.seq_adj is not None
            assert f.seq_adj.orig_offset_after - f.seq_adj.orig_offset_before == 2
            assert f.seq_adj.reply_offset_after == f.seq_adj.reply_offset_before == 0
            assert f.synproxy is None and f.helper == "ftp"

            # SYNPROXY answered the handshake to port 80 in the server's namespace
            srv = b.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(srv)
            srv.bind((SERVER, 80))
            srv.listen()
            cl = a.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(cl)
            cl.settimeout(5)
            cl.connect((SERVER, 80))
            conn, _ = srv.accept()
            keep.append(conn)
            cl.sendall(b"GET /\r\n")
            assert conn.recv(10) == b"GET /\r\n"
            by_port = {g.orig.dport: g for g in ctb.dump()}
            web, ftp = by_port[80], by_port[21]
            assert web.synproxy is not None and ftp.synproxy is None
            assert web.synproxy.isn != 0 and web.synproxy.its != 0
            # the proxy's sequence numbers differ from the server's: adjusted
            assert web.seq_adj is not None and CtStatus.SEQ_ADJUST in web.status
            assert web.tcp is not None and web.tcp.state is TcpState.ESTABLISHED
            assert ctb.get(web).synproxy == web.synproxy
            assert [g.synproxy for g in cta.dump() if g.orig.dport == 80] == [None]
    finally:
        for s in keep:
            s.close()


@pytest.mark.integration
def test_packet_ct_carries_tcp_info(ns):
    from nfbind import NfQueue

    ct_ns(ns, v6=False)
    ns.iptables("-I", "INPUT", "-p", "tcp", "--dport", "7730", "-m", "conntrack", "--ctstate",
                "ESTABLISHED", "-j", "NFQUEUE", "--queue-num", "7")
    keep: List[socket.socket] = []
    try:
        with NfQueue(7, conntrack=True, netns=ns.name) as q, Conntrack(netns=ns.name) as ct:
            srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(srv)
            srv.bind(("127.0.0.1", 7730))
            srv.listen()
            cl = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.append(cl)
            cl.connect(("127.0.0.1", 7730))
            cl.sendall(b"data")
            seen = []

            def handle(pkt):
                seen.append(pkt.ct)
                pkt.accept()
                q.stop()

            q.run(handle, timeout=5)
            assert seen and seen[0] is not None and seen[0].tcp is not None
            dumped = [f for f in ct.dump() if f.orig.dport == 7730]
            a, b = seen[0].tcp, dumped[0].tcp
            assert b is not None
            assert (a.state, a.wscale_orig, a.wscale_reply) == (b.state, b.wscale_orig,
                                                                b.wscale_reply)
            # looked up while the data waited in the queue: not acknowledged yet
            assert a.flags_orig is not None and TcpFlag.DATA_UNACKNOWLEDGED in a.flags_orig
    finally:
        for s in keep:
            s.close()
