# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack set-ups beyond one namespace, and ctnetlink attributes by hand.

* :func:`ftp_nat`: two namespaces on a veth pair; the client side SNATs its
  TCP to a second address and runs the FTP helper on port 21, so a ``PORT``
  command is rewritten by nf_nat_ftp (the flow gets SEQ_ADJUST and sequence
  adjustments) and the helper expects the data connection (an expectation).
* :func:`synproxy`: the SYNPROXY target in front of port 80 on the server
  side, so the server's flows carry CTA_SYNPROXY.
* :func:`nla`, :func:`nest`, :func:`tuple_attrs`: CTA_* attributes as the
  kernel lays them out, for the parser tests.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import List, NamedTuple, Optional

from helpers.netns import NetNS, veth

#: the client's own address, the one its traffic is SNATed to, the server's
CLIENT = "10.9.0.1"
CLIENT_NAT = "10.9.0.100"
SERVER = "10.9.0.2"


class FtpLab(NamedTuple):
    """The two namespaces and the FTP control connection's sockets."""

    client_ns: NetNS
    server_ns: NetNS
    client: socket.socket    # the FTP client's control socket (in client_ns)
    server: socket.socket    # the server's end of it (in server_ns)


def link(a: NetNS, b: NetNS, tag: str) -> None:
    """A veth pair: ``a`` holds CLIENT and CLIENT_NAT, ``b`` holds SERVER;
    ``a`` accepts what conntrack knows (the rule that makes it track)."""
    va, vb = "va" + tag, "vb" + tag
    veth(a, b, va, vb)
    for addr in (CLIENT, CLIENT_NAT):
        a.run("ip", "addr", "add", addr + "/24", "dev", va)
    a.run("ip", "link", "set", va, "up")
    b.run("ip", "addr", "add", SERVER + "/24", "dev", vb)
    b.run("ip", "link", "set", vb, "up")
    a.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED",
               "-j", "ACCEPT")
    b.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED",
               "-j", "ACCEPT")


def ftp_rules(a: NetNS, tag: str) -> None:
    """The FTP helper on the client's port-21 connections, and SNAT of its TCP."""
    a.iptables("-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--dport", "21", "-j", "CT",
               "--helper", "ftp")
    a.iptables("-t", "nat", "-A", "POSTROUTING", "-o", "va" + tag, "-p", "tcp", "-j", "SNAT",
               "--to-source", CLIENT_NAT)


def _line(src: socket.socket, dst: socket.socket, text: bytes) -> bytes:
    src.sendall(text)
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = dst.recv(200)
        if not chunk:
            break
        got += chunk
    return got


def ftp_session(a: NetNS, b: NetNS, keep: List[socket.socket]) -> FtpLab:
    """An FTP control connection from ``a`` to ``b`` that got as far as the
    greeting and USER: the helper parses commands only after a line it saw."""
    srv = b.socket(socket.AF_INET, socket.SOCK_STREAM)
    keep.append(srv)
    srv.settimeout(5)
    srv.bind((SERVER, 21))
    srv.listen()
    cl = a.socket(socket.AF_INET, socket.SOCK_STREAM)
    keep.append(cl)
    cl.settimeout(5)
    cl.connect((SERVER, 21))
    conn, _ = srv.accept()
    keep.append(conn)
    conn.settimeout(5)
    assert _line(conn, cl, b"220 nfbind test\r\n") == b"220 nfbind test\r\n"
    assert _line(cl, conn, b"USER anonymous\r\n") == b"USER anonymous\r\n"
    assert _line(conn, cl, b"331 ok\r\n") == b"331 ok\r\n"
    return FtpLab(a, b, cl, conn)


def port_command(lab: FtpLab, port: int) -> bytes:
    """Send ``PORT CLIENT,port`` and return what the server received (the
    address rewritten to CLIENT_NAT by nf_nat_ftp)."""
    text = "PORT %s,%d,%d\r\n" % (CLIENT.replace(".", ","), port >> 8, port & 0xFF)
    got = _line(lab.client, lab.server, text.encode())
    assert _line(lab.server, lab.client, b"200 ok\r\n") == b"200 ok\r\n"
    return got


def synproxy(b: NetNS, tag: str, port: int = 80) -> None:
    """SYNPROXY answers the handshakes to ``port`` on the server side."""
    vb = "vb" + tag
    b.run("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0")
    b.iptables("-t", "raw", "-I", "PREROUTING", "-i", vb, "-p", "tcp", "--dport", str(port),
               "--syn", "-j", "CT", "--notrack")
    b.iptables("-I", "INPUT", "-i", vb, "-p", "tcp", "--dport", str(port), "-m", "conntrack",
               "--ctstate", "INVALID,UNTRACKED", "-j", "SYNPROXY", "--sack-perm",
               "--timestamp", "--wscale", "7", "--mss", "1460")
    b.iptables("-I", "INPUT", "2", "-i", vb, "-p", "tcp", "--dport", str(port), "-m",
               "conntrack", "--ctstate", "INVALID", "-j", "DROP")


# -- attributes as the kernel writes them -------------------------------------------------


def nla(t: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * (-n % 4)


def nest(t: int, *children: bytes) -> bytes:
    """A nested attribute (NLA_F_NESTED set, as the kernel sets it)."""
    return nla(t | 0x8000, b"".join(children))


def be16(v: int) -> bytes:
    return struct.pack(">H", v)


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def tuple_attrs(lib, t: int, src: str, dst: str, proto: int, sport: int, dport: int,
                zone: Optional[int] = None) -> bytes:
    """CTA_TUPLE_ORIG/REPLY/MASTER with ports, and CTA_TUPLE_ZONE when given."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = s.version == 6
    ip = nest(lib.CTA_TUPLE_IP,
              nla(lib.CTA_IP_V6_SRC if v6 else lib.CTA_IP_V4_SRC, s.packed),
              nla(lib.CTA_IP_V6_DST if v6 else lib.CTA_IP_V4_DST, d.packed))
    pr = nest(lib.CTA_TUPLE_PROTO, nla(lib.CTA_PROTO_NUM, bytes([proto])),
              nla(lib.CTA_PROTO_SRC_PORT, be16(sport)), nla(lib.CTA_PROTO_DST_PORT, be16(dport)))
    parts = [ip, pr]
    if zone is not None:
        parts.append(nla(lib.CTA_TUPLE_ZONE, be16(zone)))
    return nest(t, *parts)


# -- conntrack-tools with a connlabel.conf of the test's own ----------------------------


def conntrack_with_labels(ns: NetNS, conf: str, *args: str) -> str:
    """``conntrack ARGS`` in ``ns`` reading ``conf`` as connlabel.conf.

    conntrack-tools reads label names from /etc/xtables/connlabel.conf only;
    the command runs in a mount namespace of its own where /etc is an
    overlay holding that file, so the machine's /etc is left alone."""
    import shlex
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        script = (
            "set -e; mount -t tmpfs none {d}; mkdir -p {d}/u/xtables {d}/w; "
            "printf %s {conf} > {d}/u/xtables/connlabel.conf; "
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/u,workdir={d}/w /etc; "
            "exec conntrack {args}").format(
                d=shlex.quote(d), conf=shlex.quote(conf),
                args=" ".join(shlex.quote(a) for a in args))
        return ns.run("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
