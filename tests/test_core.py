# SPDX-License-Identifier: GPL-2.0-or-later
"""The core module, nfbind._nfcore: what the channels share.

* The CTA_* parser (``nfb_ct_parse_attrs``, behind ``pkt.ct``, dumps and
  events) against libnetfilter_conntrack's own parser,
  ``nfct_payload_parse()``, on the kernel's real answers for TCP, UDP over
  IPv6 in a zone, ICMP and GRE flows: the reference is a small cffi module
  built by this test (in a temporary directory), not part of nfbind.
* Conntrack by packet (``nfb_ct_by_packet``): the kernel finds each flow
  from a packet's headers, GRE included (its keys travel as ports).
* The one "protocol has ports" rule.
* The transaction's stash: packets read while waiting for an answer reach
  the next receive even when the previous batch came from the stash.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from nfbind import netns as nfnetns
from nfbind._core import ffi, lib

REF_CDEF = """
struct ref {
    uint8_t osrc[16], odst[16], rsrc[16], rdst[16];
    uint16_t osport, odport, rsport, rdport;
    uint16_t icmp_id, zone;
    uint8_t icmp_type, icmp_code, l4proto, tcp_state;
    uint32_t mark, id, status, timeout, use;
    uint32_t set;
};
int ref_parse(const char *p, size_t len, uint16_t family, struct ref *r);
"""

REF_SRC = r"""
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

struct ref {
    uint8_t osrc[16], odst[16], rsrc[16], rdst[16];
    uint16_t osport, odport, rsport, rdport;
    uint16_t icmp_id, zone;
    uint8_t icmp_type, icmp_code, l4proto, tcp_state;
    uint32_t mark, id, status, timeout, use;
    uint32_t set;   /* bit i: field i of FIELDS in the test was set */
};

static void addr(struct nf_conntrack *ct, int v6, enum nf_conntrack_attr a4,
                 enum nf_conntrack_attr a6, uint8_t *out)
{
    if (v6)
        memcpy(out, nfct_get_attr(ct, a6), 16);
    else
        memcpy(out, nfct_get_attr(ct, a4), 4);
}

int ref_parse(const char *p, size_t len, uint16_t family, struct ref *r)
{
    struct nf_conntrack *ct = nfct_new();
    int v6 = family == AF_INET6;
    if (!ct)
        return -ENOMEM;
    memset(r, 0, sizeof(*r));
    if (nfct_payload_parse(p, len, family, ct) < 0) {
        nfct_destroy(ct);
        return -EINVAL;
    }
#define SET(bit, attr) (nfct_attr_is_set(ct, attr) > 0 ? (r->set |= 1u << (bit), 1) : 0)
    if (SET(0, v6 ? ATTR_ORIG_IPV6_SRC : ATTR_ORIG_IPV4_SRC)) {
        addr(ct, v6, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC, r->osrc);
        addr(ct, v6, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST, r->odst);
    }
    if (SET(1, v6 ? ATTR_REPL_IPV6_SRC : ATTR_REPL_IPV4_SRC)) {
        addr(ct, v6, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC, r->rsrc);
        addr(ct, v6, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST, r->rdst);
    }
    if (SET(2, ATTR_ORIG_PORT_SRC)) {
        r->osport = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_SRC));
        r->odport = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST));
    }
    if (SET(3, ATTR_REPL_PORT_SRC)) {
        r->rsport = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC));
        r->rdport = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
    }
    if (SET(4, ATTR_ICMP_ID)) {
        r->icmp_id = ntohs(nfct_get_attr_u16(ct, ATTR_ICMP_ID));
        r->icmp_type = nfct_get_attr_u8(ct, ATTR_ICMP_TYPE);
        r->icmp_code = nfct_get_attr_u8(ct, ATTR_ICMP_CODE);
    }
    if (SET(5, ATTR_ORIG_L4PROTO))
        r->l4proto = nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO);
    if (SET(6, ATTR_MARK))
        r->mark = nfct_get_attr_u32(ct, ATTR_MARK);
    if (SET(7, ATTR_ID))
        r->id = nfct_get_attr_u32(ct, ATTR_ID);
    if (SET(8, ATTR_STATUS))
        r->status = nfct_get_attr_u32(ct, ATTR_STATUS);
    if (SET(9, ATTR_TIMEOUT))
        r->timeout = nfct_get_attr_u32(ct, ATTR_TIMEOUT);
    if (SET(10, ATTR_USE))
        r->use = nfct_get_attr_u32(ct, ATTR_USE);
    if (SET(11, ATTR_ZONE))
        r->zone = nfct_get_attr_u16(ct, ATTR_ZONE);
    if (SET(12, ATTR_TCP_STATE))
        r->tcp_state = nfct_get_attr_u8(ct, ATTR_TCP_STATE);
#undef SET
    nfct_destroy(ct);
    return 0;
}
"""

#: ref.set bits, in the order REF_SRC numbers them
FIELDS = ["orig", "reply", "orig_ports", "reply_ports", "icmp", "proto", "mark", "id",
          "status", "timeout", "use", "zone", "tcp_state"]


@pytest.fixture(scope="session")
def nfct_ref(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """libnetfilter_conntrack's nfct_payload_parse(), through a cffi module
    built here."""
    if shutil.which("pkg-config") is None or subprocess.run(
            ["pkg-config", "--exists", "libnetfilter_conntrack"]).returncode != 0:
        pytest.skip("libnetfilter_conntrack's headers are not installed: no reference parser")
    from cffi import FFI

    out = tmp_path_factory.mktemp("nfct_ref")
    b = FFI()
    b.cdef(REF_CDEF)
    b.set_source("_nfct_ref", REF_SRC, libraries=["netfilter_conntrack"])
    path = b.compile(tmpdir=str(out), verbose=False)
    spec = importlib.util.spec_from_file_location("_nfct_ref", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- packets by hand ------------------------------------------------------------------------


def _ip4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + l4


def _ip6(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + l4


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _icmp_echo(ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"core"
    return body[:2] + struct.pack("!H", _csum(body)) + body[4:]


GRE_V1 = struct.pack("!HHHH", 0x2001, 0x880B, 0, 0x1234)   # PPTP: key bit, version 1, call id
GRE_V0 = struct.pack("!HH", 0, 0x0800) + b"\x45" + b"\0" * 19


def _lookup(ns_name: str, pkt: bytes, zone: int = 0) -> Tuple[int, bytes]:
    """nfb_ct_by_packet over a NETLINK_NETFILTER socket of the namespace."""
    sock = nfnetns.call_in(ns_name, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW,
                           lib.NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        out = ffi.new("char[]", 4096)
        out_len = ffi.new("uint32_t *")
        rc = lib.nfb_ct_by_packet(sock.fileno(), pkt, len(pkt), zone, 0, 0, out, 4096, out_len)
        return rc, ffi.buffer(out, out_len[0])[:]
    finally:
        sock.close()


def _ours(attrs: bytes, family: int) -> Dict[str, Any]:
    """The core parser's view, in the reference's terms."""
    r = ffi.new("struct nfb_ct_rec *")
    lib.nfb_ct_parse_attrs(attrs, len(attrs), family, r)
    n = 16 if family == socket.AF_INET6 else 4
    a = r.attrs
    o, rp = r.orig, r.reply
    got: Dict[str, Any] = {}
    if a & lib.NFB_CT_A_ORIG:
        got["orig"] = (bytes(o.src)[:n], bytes(o.dst)[:n])
        got["proto"] = o.proto
        if o.has & lib.NFB_T_PORTS:
            got["orig_ports"] = (o.sport, o.dport)
        if o.has & lib.NFB_T_ICMP:
            got["icmp"] = (o.icmp_id, o.icmp_type, o.icmp_code)
    if a & lib.NFB_CT_A_REPLY:
        got["reply"] = (bytes(rp.src)[:n], bytes(rp.dst)[:n])
        if rp.has & lib.NFB_T_PORTS:
            got["reply_ports"] = (rp.sport, rp.dport)
    for name, bit, value in (("mark", lib.NFB_CT_A_MARK, r.mark), ("id", lib.NFB_CT_A_ID, r.id),
                             ("status", lib.NFB_CT_A_STATUS, r.status),
                             ("timeout", lib.NFB_CT_A_TIMEOUT, r.timeout),
                             ("use", lib.NFB_CT_A_USE, r.use),
                             ("zone", lib.NFB_CT_A_ZONE, r.zone)):
        if a & bit:
            got[name] = value
    if a & lib.NFB_CT_A_STATE and o.proto == socket.IPPROTO_TCP:
        got["tcp_state"] = r.state
    return got


def _theirs(ref: Any, attrs: bytes, family: int) -> Dict[str, Any]:
    r = ref.ffi.new("struct ref *")
    assert ref.lib.ref_parse(attrs, len(attrs), family, r) == 0
    n = 16 if family == socket.AF_INET6 else 4
    every = {
        "orig": (bytes(r.osrc)[:n], bytes(r.odst)[:n]),
        "reply": (bytes(r.rsrc)[:n], bytes(r.rdst)[:n]),
        "orig_ports": (r.osport, r.odport),
        "reply_ports": (r.rsport, r.rdport),
        "icmp": (r.icmp_id, r.icmp_type, r.icmp_code),
        "proto": r.l4proto, "mark": r.mark, "id": r.id, "status": r.status,
        "timeout": r.timeout, "use": r.use, "zone": r.zone, "tcp_state": r.tcp_state,
    }
    return {k: every[k] for i, k in enumerate(FIELDS) if r.set >> i & 1}


@pytest.mark.integration
def test_parser_agrees_with_libnetfilter_conntrack_on_real_flows(ns, nfct_ref):
    """Real flows (TCP, UDP over IPv6 in zone 7 with a connmark, ICMP echo,
    GRE version 1 and 0), each found by a packet of its original direction
    (nfb_ct_by_packet) and parsed by both parsers: every field
    libnetfilter_conntrack reads is there, with the same value."""
    ns.iptables("-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-j", "CONNMARK",
                "--set-mark", "0x2a", v6=True)
    ns.iptables("-t", "raw", "-A", "OUTPUT", "-p", "udp", "-j", "CT", "--zone", "7", v6=True)
    ns.iptables("-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT", v6=True)

    # TCP over loopback, established
    srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli.settimeout(5)
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    tport = srv.getsockname()[1]
    cport = cli.getsockname()[1]
    # UDP over IPv6 (zone 7, mark 0x2a)
    u6 = ns.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind(("::1", 0))
    u6.sendto(b"core", ("::1", 9))
    uport = u6.getsockname()[1]
    # ICMP echo and GRE through raw sockets
    icmp = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp.sendto(_icmp_echo(0x4242, 1), ("127.0.0.1", 0))
    gre = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
    gre.sendto(GRE_V1, ("127.0.0.1", 0))
    gre.sendto(GRE_V0, ("127.0.0.2", 0))
    try:
        tcp_pkt = _ip4("127.0.0.1", "127.0.0.1", socket.IPPROTO_TCP,
                       struct.pack("!HHIIBBHHH", cport, tport, 0, 0, 0x50, 0x10, 0, 0, 0))
        cases = [
            ("tcp", tcp_pkt, socket.AF_INET, 0),
            ("udp6", _ip6("::1", "::1", socket.IPPROTO_UDP,
                          struct.pack("!HHHH", uport, 9, 12, 0) + b"core"), socket.AF_INET6, 7),
            ("icmp", _ip4("127.0.0.1", "127.0.0.1", socket.IPPROTO_ICMP, _icmp_echo(0x4242, 2)),
             socket.AF_INET, 0),
            ("gre1", _ip4("127.0.0.1", "127.0.0.1", socket.IPPROTO_GRE, GRE_V1),
             socket.AF_INET, 0),
            ("gre0", _ip4("127.0.0.1", "127.0.0.2", socket.IPPROTO_GRE, GRE_V0),
             socket.AF_INET, 0),
        ]
        seen = {}
        for name, pkt, family, zone in cases:
            rc, attrs = _lookup(ns.name, pkt, zone)
            assert rc == 0, "%s: %s" % (name, os.strerror(-rc))
            ours, theirs = _ours(attrs, family), _theirs(nfct_ref, attrs, family)
            assert set(theirs) >= {"orig", "reply", "proto", "id", "status", "timeout"}, name
            for key, value in theirs.items():
                assert ours.get(key) == value, (name, key, ours.get(key), value)
            seen[name] = ours
    finally:
        for s in (conn, cli, srv, u6, icmp, gre):
            s.close()
    assert seen["tcp"]["orig_ports"] == (cport, tport) and seen["tcp"]["tcp_state"] == 3
    assert seen["udp6"]["zone"] == 7 and seen["udp6"]["mark"] == 0x2A
    assert seen["icmp"]["icmp"] == (0x4242, 8, 0) and "orig_ports" not in seen["icmp"]
    # GRE's keys travel as ports: the call id is PPTP's destination key
    assert seen["gre1"]["orig_ports"] == (0, 0x1234) and seen["gre1"]["reply_ports"] == (0x1234, 0)
    assert seen["gre0"]["orig_ports"] == (0, 0)
    # in another zone the same UDP packet finds nothing
    assert _lookup(ns.name, cases[1][1], 0)[0] == -errno.ENOENT


@pytest.mark.unit
def test_protocols_with_ports():
    """TCP, UDP, UDP-Lite, SCTP, DCCP, and GRE (whose keys conntrack keeps in
    the port attributes, as `conntrack -L` shows srckey/dstkey); not ICMP."""
    have = {p for p in range(256) if lib.nfb_proto_has_ports(p)}
    tcp, udp, dccp, gre, sctp, udplite = 6, 17, 33, 47, 132, 136
    assert have == {tcp, udp, dccp, gre, sctp, udplite}


@pytest.mark.unit
def test_by_packet_rejects_what_is_no_packet():
    """Malformed packets are refused before anything is sent (fd -1 would
    fail any send)."""
    for pkt in (b"", b"\x45" + b"\0" * 10, b"\x60" + b"\0" * 20, b"\x10" * 40,
                _ip4("10.0.0.1", "10.0.0.2", socket.IPPROTO_TCP, b"\0\1"),
                _ip4("10.0.0.1", "10.0.0.2", socket.IPPROTO_GRE, struct.pack("!HH", 1, 0x880B))):
        rc = lib.nfb_ct_by_packet(-1, pkt, len(pkt), 0, 0, 0, ffi.NULL, 0, ffi.NULL)
        assert rc in (-errno.EINVAL, -errno.EPROTONOSUPPORT), (pkt, rc)
    # a whole packet gets as far as the send
    pkt = _ip4("10.0.0.1", "10.0.0.2", socket.IPPROTO_UDP, struct.pack("!HHHH", 1, 2, 8, 0))
    assert lib.nfb_ct_by_packet(-1, pkt, len(pkt), 0, 0, 0, ffi.NULL, 0, ffi.NULL) == -errno.EBADF


def test_stash_survives_a_second_configuration_wait():
    """A packet read while a configuration waits for its ack is handed out by
    the next receive, also when the batch before came from the stash."""
    q = pytest.importorskip("nfbind._nfqueue", reason="the NFQUEUE channel is not built")
    seeds = Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "nfqueue"
    pkts = [(seeds / ("packet-%d" % i)).read_bytes() for i in range(2)]
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.setblocking(False)
    c = q.ffi.gc(q.lib.nfb_q_new(r.fileno(), 0, 8192, 4), q.lib.nfb_q_free)
    ids = []
    try:
        for pkt in pkts:
            w.send(pkt)
            cfg = q.ffi.new("struct nfb_qcfg *", dict(cmd=q.lib.NFQNL_CFG_CMD_BIND,
                                                       copy_mode=-1, max_len=-1))
            step = q.ffi.new("int *")
            # nobody answers over the socket pair: the wait times out, the packet is stashed
            assert q.lib.nfb_q_config(c, cfg, 0, step) == -errno.ETIMEDOUT
            assert step[0] == lib.NFB_STEP_BIND
            w.recv(4096)    # the request it sent
            assert q.lib.nfb_q_recv(c) == 1
            ids.append(c.rx.recs[lib.NFB_F_ID])
            q.lib.nfb_q_take(c)     # kept, as NfQueue does: the next receive reads on
        assert q.lib.nfb_q_recv(c) == 0
    finally:
        r.close()
        w.close()
    assert len(set(ids)) == 2
