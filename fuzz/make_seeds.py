# SPDX-License-Identifier: GPL-2.0-or-later
"""Write the seed corpus of nfbind's fuzz targets from the real kernel.

Run as root from the repository: ``.venv/bin/python fuzz/make_seeds.py``.
It creates a throw-away network namespace (``ip netns add``), and inside it
binds an NFQUEUE queue and an NFLOG group with nfbind, listens to conntrack
events on a raw ctnetlink socket, sends a few UDP/TCP packets to
loopback and saves the raw netlink datagrams the kernel handed over:

* ``fuzz/corpus/nfqueue/``   NFQNL_MSG_PACKET datagrams, one batch of them
  end to end, and the NLMSG_ERROR of a refused request;
* ``fuzz/corpus/nflog/``     NFULNL_MSG_PACKET datagrams (IPv4 and IPv6,
  prefix, sequence numbers), one batch, and the NLMSG_ERROR;
* ``fuzz/corpus/conntrack/`` conntrack event datagrams, a dump answer
  (flows, NLMSG_DONE), the NLMSG_ERROR, and one flow's CTA_* attributes.

The namespace is deleted on the way out.  Every wait is bounded.
"""
from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
QNUM = 3
GROUP = 4
DEADLINE = 5.0
NLMSG_HDR = struct.Struct("=IHHII")     # struct nlmsghdr
NFGEN = struct.Struct("=BBH")           # struct nfgenmsg


def save(target: str, name: str, data: bytes) -> None:
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print("seed %-10s %-24s %5d bytes %s" % (target, name, len(data),
                                             hashlib.sha1(data).hexdigest()[:12]))


def read_datagrams(sock: socket.socket, want: int, timeout: float = DEADLINE) -> List[bytes]:
    """Up to ``want`` datagrams from sock, waiting at most ``timeout`` s."""
    got: List[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            break
        got.append(sock.recv(1 << 17))
    return got


def padded(msg: bytes) -> bytes:
    """A datagram followed by its alignment padding (as nfbind batches them)."""
    return msg + b"\0" * (((len(msg) + 3) & ~3) - len(msg))


def message_types(data: bytes) -> List[int]:
    """The nlmsg_type of each message in one datagram."""
    types, off = [], 0
    while off + NLMSG_HDR.size <= len(data):
        ln, typ = NLMSG_HDR.unpack_from(data, off)[:2]
        if ln < NLMSG_HDR.size:
            break
        types.append(typ)
        off += (ln + 3) & ~3
    return types


def send_udp(dst: str, port: int, payloads: List[bytes]) -> None:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, (dst, port))


def netfilter_socket(groups: int = 0) -> socket.socket:
    from nfbind._core import lib as core

    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, core.NETLINK_NETFILTER)
    s.setsockopt(core.SOL_NETLINK, core.NETLINK_EXT_ACK, 1)
    s.bind((0, groups))
    return s


def ct_request(msg: int, flags: int, family: int, seq: int) -> bytes:
    from nfbind._conntrack import ffi, lib
    from nfbind._core import lib as core

    buf = ffi.new("char[]", lib.NFB_CT_BUFSIZE)
    n = lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK, msg, flags, family, 0)
    data = bytearray(ffi.buffer(buf, n))
    struct.pack_into("=I", data, 8, seq)     # nlmsg_seq
    return bytes(data)


def inside() -> None:
    """Runs in the namespace: make the traffic and collect the datagrams."""
    from nfbind import CopyMode, NfLog, NfQueue
    from nfbind._core import lib as ctlib

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, timeout=30)

    run("ip", "link", "set", "lo", "up")
    run("iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9999",
        "-j", "NFQUEUE", "--queue-num", str(QNUM))
    for ipt in ("iptables", "ip6tables"):
        run(ipt, "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9998",
            "-j", "NFLOG", "--nflog-group", str(GROUP), "--nflog-prefix", "seed")
    run("iptables", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "9997",
        "-j", "NFLOG", "--nflog-group", str(GROUP))
    # a conntrack match makes the namespace track connections
    run("iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED",
        "-j", "ACCEPT")

    groups = 0
    for g in (ctlib.NFNLGRP_CONNTRACK_NEW, ctlib.NFNLGRP_CONNTRACK_UPDATE,
              ctlib.NFNLGRP_CONNTRACK_DESTROY):
        groups |= 1 << (g - 1)
    events = netfilter_socket(groups)

    # -- NFQUEUE: payloads of 0, 5 and 300 bytes (unaligned message lengths) --
    with NfQueue(QNUM, copy_mode=CopyMode.PACKET) as q:
        raw = socket.socket(fileno=os.dup(q.fileno()))
        send_udp("127.0.0.1", 9999, [b"", b"fuzz!", bytes(range(256)) + b"x" * 44])
        pkts = read_datagrams(raw, 3)
        raw.close()
    assert len(pkts) == 3, "NFQUEUE: %d of 3 packets arrived" % len(pkts)
    for i, d in enumerate(pkts):
        save("nfqueue", "packet-%d" % i, d)
    save("nfqueue", "batch-3", b"".join(map(padded, pkts)))

    # -- NFLOG: IPv4 and IPv6 UDP with a prefix, a refused TCP SYN without one --
    with NfLog(GROUP, copy_mode=CopyMode.PACKET, seq=True, seq_global=True) as log:
        raw = socket.socket(fileno=os.dup(log.fileno()))
        send_udp("127.0.0.1", 9998, [b"a", b"nflog seed"])
        send_udp("::1", 9998, [b"six"])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.settimeout(5)
            t.connect_ex(("127.0.0.1", 9997))   # SYN, then the RST refusing it
        logs = read_datagrams(raw, 5)
        raw.close()
    assert len(logs) >= 4, "NFLOG: %d of 5 packets arrived" % len(logs)
    for i, d in enumerate(logs):
        save("nflog", "packet-%d" % i, d)
    save("nflog", "batch-%d" % len(logs), b"".join(map(padded, logs)))

    # -- conntrack: a TCP connection and its events, then a dump ---------------
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname(), timeout=5)
    acc, _ = srv.accept()
    cli.close()
    acc.close()
    srv.close()
    evs = read_datagrams(events, 8, timeout=2.0)
    assert evs, "no conntrack event arrived"
    for i, d in enumerate(evs[:6]):
        save("conntrack", "event-%d" % i, d)
    events.close()

    ct = netfilter_socket()
    ct.send(ct_request(ctlib.IPCTNL_MSG_CT_GET, ctlib.NLM_F_REQUEST | ctlib.NLM_F_DUMP,
                       socket.AF_UNSPEC, 77))
    dump: List[bytes] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and len(dump) < 64:
        got = read_datagrams(ct, 1)
        if not got:
            break
        dump.append(got[0])
        if ctlib.NLMSG_DONE in message_types(got[0]):
            break
    for i, d in enumerate(dump):
        save("conntrack", "dump-%d" % i, d)
    save("conntrack", "dump-all", b"".join(dump))
    # one flow's CTA_* attributes, as NFQA_CT / NFULA_CT would carry them
    first = dump[0]
    ln = NLMSG_HDR.unpack_from(first, 0)[0]
    save("conntrack", "flow-attrs", first[NLMSG_HDR.size + NFGEN.size:ln])

    # an error answer (a get without a tuple; NETLINK_EXT_ACK is asked for)
    ct.send(ct_request(ctlib.IPCTNL_MSG_CT_GET, ctlib.NLM_F_REQUEST | ctlib.NLM_F_ACK,
                       socket.AF_INET, 78))
    err = read_datagrams(ct, 1)
    ct.close()
    assert err and NLMSG_HDR.unpack_from(err[0], 0)[1] == ctlib.NLMSG_ERROR
    for target in ("nfqueue", "nflog", "conntrack"):
        save(target, "nlmsg-error", err[0])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        inside()
        return 0
    if os.geteuid() != 0:
        print("make_seeds.py: needs root (network namespace, iptables)", file=sys.stderr)
        return 1
    name = "nfbind-seeds-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        return subprocess.run(["ip", "netns", "exec", name, sys.executable,
                               os.path.abspath(__file__), "--inside"],
                              timeout=120).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


if __name__ == "__main__":
    sys.exit(main())
