# SPDX-License-Identifier: GPL-2.0-or-later
"""``pkt.ct`` of logged packets: the connection's Flow looked up over
ctnetlink (this kernel has no CONFIG_NETFILTER_NETLINK_GLUE_CT), compared
with ``conntrack -L``; none without ``conntrack=True``; no socket opened
for it once the NfLog is closed."""
from __future__ import annotations

import ipaddress
import re
import socket

import pytest

import nfbind
from nfbind import ClosedError, CtStatus, NfLog, TcpState

from helpers.nflog import collect, nflog, send, sock
from helpers.procs import open_fds

pytestmark = pytest.mark.integration


# -- conntrack --------------------------------------------------------------------------


def _conntrack_entry(ns, port: int) -> dict:
    out = ns.run("conntrack", "-L", "-p", "tcp", "--dport", str(port), "-o", "id")
    lines = [ln for ln in out.splitlines() if "dport=%d" % port in ln]
    assert len(lines) == 1, out
    ln = lines[0]
    return {"state": ln.split()[3],
            "id": int(re.search(r"\bid=(\d+)", ln).group(1)),
            "mark": int(re.search(r"\bmark=(\d+)", ln).group(1))}


def test_conntrack_info(ns):
    port = 5800
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--dport", str(port),
                "-j", "CONNMARK", "--set-mark", "0x2a")
    nflog(ns, "INPUT", port, 5, "--nflog-prefix", "ct", proto="tcp")
    # a rule that uses conntrack: the namespace starts tracking
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    srv = sock(ns, type=socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    cl = sock(ns, type=socket.SOCK_STREAM)
    cl.settimeout(5)
    cl.connect(("127.0.0.1", port))
    conn, _ = srv.accept()

    def data_pkt(log, data: bytes):
        seen = []

        def on(p):
            if p.payload.endswith(data):
                seen.append((p.ct, p.ct_info, p.mark))

        cl.send(data)
        collect(log, 1, keep=lambda p: p.payload.endswith(data), on_packet=on)
        assert len(seen) == 1
        return seen[0]

    with NfLog(5, netns=ns.name, conntrack=True) as log:
        # no CONFIG_NETFILTER_NETLINK_GLUE_CT: the kernel refuses the flag,
        # nfbind looks the flow up over ctnetlink instead
        assert log.ct_glue is False
        ct, info, mark = data_pkt(log, b"one")
        entry = _conntrack_entry(ns, port)
        assert ct is not None
        assert ct.id == entry["id"]
        # the full conntrack Flow, with the connection's own tuple
        assert isinstance(ct, nfbind.Flow)
        assert ct.orig.src == ipaddress.ip_address("127.0.0.1") and ct.orig.dport == port
        assert ct.reply.sport == port
        assert ct.mark == entry["mark"] == 0x2A
        assert ct.proto == socket.IPPROTO_TCP
        assert entry["state"] == "ESTABLISHED" and ct.state == TcpState.ESTABLISHED
        assert CtStatus.CONFIRMED in ct.status and CtStatus.ASSURED in ct.status
        assert ct.zone == 0
        assert info is None  # NFULA_CT_INFO needs the glue too
        assert mark is None  # the packet's own mark is not the connection's
    with NfLog(5, netns=ns.name) as log:
        assert log.ct_glue is False
        ct, info, _ = data_pkt(log, b"two")
        assert ct is None and info is None
    conn.settimeout(2)
    got = b""
    while len(got) < 6:
        got += conn.recv(100)
    assert got == b"onetwo"
    conn.close()
    cl.close()
    srv.close()


def test_ct_after_close_opens_no_socket(ns):
    nflog(ns, "INPUT", 5810, 5)
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    with NfLog(5, netns=ns.name, conntrack=True) as log:
        send(ns, [b"c"], ("127.0.0.1", 5810))
        (p,) = collect(log, 1)
    fds = open_fds()
    try:
        p.ct
    except ClosedError:
        pass
    assert open_fds() <= fds, "reading pkt.ct after close() left a socket open"
