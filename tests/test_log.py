# SPDX-License-Identifier: GPL-2.0-or-later
"""NfLog and LogPacket against the real kernel.

Each test makes its own namespace(s), installs its own rules (iptables
``-j NFLOG``, ip6tables, or nft ``log group N``), sends real packets on
loopback or on veth pairs between its own namespaces, and asserts on what
the kernel reported.  What this kernel (6.18, iptables-nft, no
CONFIG_NETFILTER_NETLINK_GLUE_CT, no CONFIG_VLAN_8021Q) does is written next
to each assertion.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import json
import ipaddress
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import nfbind

from nfbind import (
    ClosedError,
    CopyMode,
    CtStatus,
    Family,
    Hook,
    LogPacket,
    NetlinkError,
    NfLog,
    Overrun,
    OverrunWarning,
    PermissionDenied,
    QueueBusy,
    TcpState,
    Vlan,
)
from nfbind import _channel
from helpers.netns import veth
from helpers.packets import ether, ipv4_udp, mac
from helpers.procs import child_env, open_fds

pytestmark = pytest.mark.integration

SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # asm-generic value
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
LO_HWHDR = bytes(12) + b"\x08\x00"  # lo's all-zero Ethernet header, IPv4

try:
    import scapy  # noqa: F401

    HAVE_SCAPY = True
except ImportError:
    HAVE_SCAPY = False


# -- helpers -----------------------------------------------------------------



def nflog(ns, chain: str, dport, group: int, *extra: str, proto: str = "udp",
          table: str = "filter", v6: bool = False) -> None:
    """``-A CHAIN -p PROTO --dport DPORT -j NFLOG --nflog-group GROUP EXTRA...``."""
    ns.iptables("-t", table, "-A", chain, "-p", proto, "--dport", str(dport),
                "-j", "NFLOG", "--nflog-group", str(group), *extra, v6=v6)


def nft(ns, tmp_path: Path, text: str) -> None:
    path = tmp_path / ("rules-%d.nft" % time.monotonic_ns())
    path.write_text(text)
    ns.run("nft", "-f", str(path))


def log_proc(ns) -> Dict[int, dict]:
    """/proc/net/netfilter/nfnetlink_log of the namespace, by group."""
    rows = {}
    for line in ns.run("cat", "/proc/net/netfilter/nfnetlink_log").splitlines():
        f = line.split()
        rows[int(f[0])] = {"portid": int(f[1]), "qlen": int(f[2]), "copy_mode": int(f[3]),
                           "copy_range": int(f[4]), "flushtimeout": int(f[5])}
    return rows


def collect(log: NfLog, n: int, *, timeout: float = 3.0,
            keep: Optional[Callable[[LogPacket], bool]] = None,
            on_packet: Optional[Callable[[LogPacket], None]] = None) -> List[LogPacket]:
    """run() until ``n`` packets (those ``keep`` accepts) arrived or
    ``timeout`` passed."""
    got: List[LogPacket] = []
    deadline = time.monotonic() + timeout

    def handler(p):
        if on_packet is not None:
            on_packet(p)
        if keep is None or keep(p):
            got.append(p)
            if len(got) >= n:
                log.stop()

    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        log.run(handler, timeout=min(left, 0.5))
    return got


def quiet(log: NfLog, idle: float = 0.2) -> List[LogPacket]:
    """Whatever still arrives within ``idle`` seconds."""
    got: List[LogPacket] = []
    log.run(got.append, timeout=idle)
    return got


def drain_all(log: NfLog, handler, idle: float = 0.3, limit: float = 20.0) -> int:
    """drain() until the socket stayed empty for ``idle`` seconds."""
    total = 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        n = log.drain(handler)
        total += n
        if n == 0:
            r, _, _ = select.select([log.fileno()], [], [], idle)
            if not r:
                break
    return total


def udp_data(p) -> bytes:
    """The UDP payload of an IPv4 (header from IHL) or IPv6 (40 bytes) packet."""
    hl = 40 if p.family == Family.IPV6 or p.payload[:1] == b"\x60" else (p.payload[0] & 0xF) * 4
    return p.payload[hl + 8:]


def sock(n, *args, **kw) -> socket.socket:
    """A socket in namespace ``n`` whose blocking calls give up after 3 s."""
    s = n.socket(*args, **kw)
    s.settimeout(3)
    return s


def send(ns, payloads, dst=("127.0.0.1", 5000), family: int = socket.AF_INET) -> None:
    s = ns.socket(family)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for p in payloads:
            s.sendto(p, dst)
    finally:
        s.close()


def sysfs(n, path: str) -> str:
    return n.run("cat", path).strip()



# -- loopback: every attribute ---------------------------------------------------


def test_iptables_prefix_and_attributes_on_loopback(ns):
    # mangle OUTPUT marks port 5000 before the filter OUTPUT rule logs it;
    # each packet is logged twice: at OUTPUT and at INPUT
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "5000",
                "-j", "MARK", "--set-mark", "0x1234")
    nflog(ns, "OUTPUT", "5000:5001", 5, "--nflog-prefix", "out: ")
    nflog(ns, "INPUT", "5000:5001", 5, "--nflog-prefix", "in: h\u00e9llo")
    rx = sock(ns)
    rx.bind(("127.0.0.1", 5000))
    tx = sock(ns)
    with NfLog(5, netns=ns.name, seq=True, seq_global=True) as log:
        assert log.groups == (5,) and log.family is None
        assert log.copy_mode == CopyMode.PACKET and log.copy_range == 0xFFFF
        row = log_proc(ns)[5]
        assert row["copy_mode"] == CopyMode.PACKET
        assert row["copy_range"] == 65531  # the kernel clamps 0xFFFF to 0xFFFF - NLA_HDRLEN
        for i in range(3):
            tx.sendto(b"pkt%d" % i, ("127.0.0.1", 5000))
        sport = tx.getsockname()[1]
        # another user's socket: a subprocess with other ids
        ns.run("setpriv", "--reuid", "1234", "--regid", "4321", "--clear-groups",
               "bash", "-c", "printf other > /dev/udp/127.0.0.1/5000")
        tx.sendto(b"unmarked", ("127.0.0.1", 5001))
        pkts = collect(log, 10)
        assert not quiet(log)
        assert log.stats.packets == 10
        assert log.stats.filtered == 0 and log.stats.overruns == 0

    assert len(pkts) == 10
    datas = [udp_data(p) for p in pkts]
    assert datas == [d for d in (b"pkt0", b"pkt1", b"pkt2", b"other", b"unmarked")
                     for _ in (0, 1)]
    # per-group sequence numbers start at 0 for a new binding; the global one
    # counts across all groups of the namespace: both consecutive
    # (the global counter belongs to the network namespace: this one is new)
    assert [p.seq for p in pkts] == list(range(10))
    assert [p.seq_global for p in pkts] == list(range(1, 11))
    for p in pkts:
        assert isinstance(p, LogPacket)
        assert p.group == 5
        assert p.family == Family.IPV4 and isinstance(p.family, Family)
        assert p.hw_protocol == 0x0800
        assert p.payload_len == len(p.payload) == p.cap_len == 28 + len(udp_data(p))
        assert p.truncated is False
        assert p.payload[9] == socket.IPPROTO_UDP
        assert p.physindev is None and p.physoutdev is None
        assert p.physindev_name is None and p.physoutdev_name is None
        # NFULA_L2HDR and NFULA_VLAN are only sent for bridge-family log
        # rules (see test_bridge_...); these are IPv4-family
        assert p.l2hdr is None and p.vlan is None
        assert p.ct is None and p.ct_info is None  # conntrack flag off
        assert p.priority is None and p.secctx is None  # NFLOG has neither
        assert p.mark == (None if udp_data(p) == b"unmarked" else 0x1234)
        if p.hook == Hook.LOCAL_OUT:
            assert p.prefix == "out: "
            assert p.outdev == 1 and p.outdev_name == "lo"
            assert p.indev is None and p.indev_name is None
            # no input device: no NFULA_HWTYPE / HWADDR / HWHEADER
            assert p.hwtype is None and p.hwaddr is None and p.hwhdr is None
            assert p.timestamp is None  # never stamped on output hooks
            # NFLOG sends the owner of a local socket without any flag
            if udp_data(p) == b"other":
                assert (p.uid, p.gid) == (1234, 4321)
            else:
                assert (p.uid, p.gid) == (os.getuid(), os.getgid())
        else:
            assert p.hook == Hook.LOCAL_IN and isinstance(p.hook, Hook)
            assert p.prefix == "in: h\u00e9llo"  # UTF-8 decoded
            assert p.indev == 1 and p.indev_name == "lo"
            assert p.outdev is None and p.outdev_name is None
            assert p.hwtype == ARPHRD_LOOPBACK
            assert p.hwaddr == bytes(6)  # lo's Ethernet header is all zeros
            assert p.hwhdr == LO_HWHDR
            # at INPUT an unconnected UDP packet has no socket yet
            assert p.uid is None and p.gid is None
        if HAVE_SCAPY:
            sc = p.scapy()
            assert type(sc).__name__ == "IP"
            assert sc.src == sc.dst == "127.0.0.1"
            assert sc["UDP"].dport in (5000, 5001)
            if udp_data(p).startswith(b"pkt"):
                assert sc["UDP"].sport == sport
            assert bytes(sc["UDP"].payload) == udp_data(p)
        else:
            with pytest.raises(ImportError, match=r"nfbind\[scapy\]"):
                p.scapy()
    r = repr(pkts[1])
    assert "LogPacket" in r and "group=5" in r and "LOCAL_IN" in r
    assert sorted(rx.recv(100) for _ in range(4)) == sorted(
        [b"pkt0", b"pkt1", b"pkt2", b"other"])  # logging never holds packets

    # without the flags: no sequence numbers; a rule without a prefix: ""
    ns.iptables("-F", "INPUT")
    nflog(ns, "INPUT", 5000, 5)
    with NfLog(5, netns=ns.name) as log:
        tx.sendto(b"plain", ("127.0.0.1", 5000))
        (p,) = collect(log, 1, keep=lambda p: p.hook == Hook.LOCAL_IN)
        assert udp_data(p) == b"plain"
        assert p.prefix == ""
        assert p.seq is None and p.seq_global is None


# -- payload size: --nflog-size, copy_range, copy_mode -----------------------------------


def test_nflog_size_and_copy_range_truncate(ns):
    nflog(ns, "INPUT", 5100, 5, "--nflog-size", "60", "--nflog-prefix", "cut")
    nflog(ns, "INPUT", 5101, 5, "--nflog-prefix", "whole")
    big = os.urandom(9000)
    mid = os.urandom(4000)
    huge = os.urandom(65000)
    with NfLog(5, netns=ns.name) as log:
        send(ns, [big], ("127.0.0.1", 5100))
        send(ns, [mid, huge], ("127.0.0.1", 5101))
        cut, whole, whole2 = collect(log, 3)
    assert cut.prefix == "cut"
    # --nflog-size cuts the copy; the length comes from the IP header
    assert (cut.payload_len, len(cut.payload), cut.cap_len) == (60, 60, 28 + 9000)
    assert cut.truncated is True
    assert cut.payload[28:] == big[:32]
    assert struct.unpack_from("!H", cut.payload, 2)[0] == 28 + 9000
    # lo's MTU is 65536: each is one unfragmented packet, copied whole
    for p, d in ((whole, mid), (whole2, huge)):
        assert p.prefix == "whole"
        assert p.payload_len == p.cap_len == 28 + len(d)
        assert p.truncated is False and udp_data(p) == d

    # copy_range: the smaller of it and the rule's --nflog-size wins
    with NfLog(5, netns=ns.name, copy_range=100) as log:
        assert log.copy_range == 100 and log_proc(ns)[5]["copy_range"] == 100
        send(ns, [mid], ("127.0.0.1", 5101))
        send(ns, [big], ("127.0.0.1", 5100))
        short, cut2 = collect(log, 2)
    assert (short.payload_len, short.cap_len, short.truncated) == (100, 4028, True)
    assert short.payload[28:] == mid[:72]
    assert (cut2.payload_len, cut2.cap_len, cut2.truncated) == (60, 9028, True)

    with NfLog(5, netns=ns.name, copy_range=40) as log:
        send(ns, [big], ("127.0.0.1", 5100))
        (p,) = collect(log, 1)
        assert (p.prefix, p.payload_len, p.cap_len, p.truncated) == ("cut", 40, 9028, True)

    # copy_range=0: the whole packet (the kernel's maximum)
    with NfLog(5, netns=ns.name, copy_range=0) as log:
        assert log_proc(ns)[5]["copy_range"] == 65531
        send(ns, [mid], ("127.0.0.1", 5101))
        (p,) = collect(log, 1)
        assert p.payload_len == 4028 and udp_data(p) == mid


@pytest.mark.parametrize("mode", [CopyMode.META, CopyMode.NONE])
def test_copy_mode_without_payload(ns, mode):
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "5110",
                "-j", "MARK", "--set-mark", "7")
    nflog(ns, "INPUT", 5110, 5, "--nflog-prefix", "meta")
    with NfLog(5, netns=ns.name, copy_mode=mode) as log:
        assert log.copy_mode == mode and log_proc(ns)[5]["copy_mode"] == mode
        send(ns, [b"m" * 500], ("127.0.0.1", 5110))
        (p,) = collect(log, 1)
    # only metadata: no NFULA_PAYLOAD, so nothing tells the length
    assert p.payload == b"" and p.payload_len == 0
    assert p.cap_len == 0 and p.truncated is False
    assert p.prefix == "meta" and p.hook == Hook.LOCAL_IN and p.indev_name == "lo"
    assert p.hw_protocol == 0x0800 and p.family == Family.IPV4 and p.mark == 7
    assert p.hwhdr == LO_HWHDR
    if HAVE_SCAPY:
        assert type(p.scapy()).__name__ == "IP"  # an empty IP packet, no crash


# -- --nflog-threshold, qthresh, timeout: batching --------------------------------------


def test_nflog_threshold_batches_and_timeout_flushes(ns):
    nflog(ns, "INPUT", 5200, 5, "--nflog-threshold", "4", "--nflog-prefix", "thr")
    got: List[LogPacket] = []
    # the kernel takes the smaller of the group's qthresh and the rule's
    # --nflog-threshold: a rule can only lower the group's threshold
    with NfLog(5, netns=ns.name, qthresh=50, timeout=1.0) as log:
        assert log_proc(ns)[5]["flushtimeout"] == 100  # hundredths of a second
        send(ns, [b"a%d" % i for i in range(3)], ("127.0.0.1", 5200))
        # three wait in the kernel for the fourth (or the timeout)
        assert not select.select([log.fileno()], [], [], 0.3)[0]
        assert log_proc(ns)[5]["qlen"] == 3
        assert log.drain(got.append) == 0
        send(ns, [b"a3"], ("127.0.0.1", 5200))
        assert select.select([log.fileno()], [], [], 1.0)[0]
        # the four came as one batch: one receive brings all of them
        assert log.drain(got.append, max_batches=1) == 4
        assert log_proc(ns)[5]["qlen"] == 0
        # two more: below the threshold, flushed by the 1 s timeout
        t0 = time.monotonic()
        send(ns, [b"b0", b"b1"], ("127.0.0.1", 5200))
        assert not select.select([log.fileno()], [], [], 0.4)[0]
        got += collect(log, 2, timeout=3)
        waited = time.monotonic() - t0
    assert [udp_data(p) for p in got] == [b"a0", b"a1", b"a2", b"a3", b"b0", b"b1"]
    assert all(p.prefix == "thr" for p in got)
    assert 0.8 <= waited <= 2.5, waited

    # the default qthresh=1 is below the rule's 4: each packet comes at once
    with NfLog(5, netns=ns.name, timeout=1.0) as log:
        send(ns, [b"c0"], ("127.0.0.1", 5200))
        assert select.select([log.fileno()], [], [], 0.5)[0]
        (p,) = collect(log, 1, timeout=0.5)
        assert udp_data(p) == b"c0"


def test_qthresh_of_the_log_batches(ns):
    nflog(ns, "INPUT", 5210, 5)  # no --nflog-threshold: the NfLog's qthresh rules
    got: List[LogPacket] = []
    with NfLog(5, netns=ns.name, qthresh=3, timeout=5.0, nlbufsiz=65536) as log:
        send(ns, [b"q0", b"q1"], ("127.0.0.1", 5210))
        assert not select.select([log.fileno()], [], [], 0.3)[0]
        assert log_proc(ns)[5]["qlen"] == 2
        send(ns, [b"q2"], ("127.0.0.1", 5210))
        assert select.select([log.fileno()], [], [], 1.0)[0]
        assert log.drain(got.append, max_batches=1) == 3
    assert [udp_data(p) for p in got] == [b"q0", b"q1", b"q2"]

    # nlbufsiz bounds a batch: a full buffer is sent before qthresh is reached
    got.clear()
    with NfLog(5, netns=ns.name, qthresh=50, timeout=5.0, nlbufsiz=4096) as log:
        send(ns, [b"%03d" % i + b"n" * 997 for i in range(10)], ("127.0.0.1", 5210))
        drain_all(log, got.append, idle=0.3, limit=2)
        # only a few ~1.1 kB messages fit in 4096 bytes (two here: the kernel
        # reserves room for the largest attributes): full batches went out,
        # the rest waits for the timeout
        n = len(got)
        assert 2 <= n < 10
        assert log_proc(ns)[5]["qlen"] == 10 - n
    assert [udp_data(p)[:3] for p in got] == [b"%03d" % i for i in range(n)]


# -- nft `log group N prefix` -----------------------------------------------------------


def test_nft_log_group_prefix_ipv4_and_ipv6(ns, tmp_path):
    nft(ns, tmp_path, """
table inet t {
    chain c {
        type filter hook input priority 0;
        udp dport 5300 log group 9 prefix "nft-in ";
        udp dport 5301 log group 9 snaplen 40 prefix "snap";
    }
}
""")
    with NfLog(9, netns=ns.name) as log:
        send(ns, [b"v4"], ("127.0.0.1", 5300))
        send(ns, [b"v6"], ("::1", 5300), socket.AF_INET6)
        send(ns, [b"x" * 100], ("127.0.0.1", 5301))
        pkts = collect(log, 3)
    v4, v6, snap = pkts
    assert (v4.prefix, v6.prefix, snap.prefix) == ("nft-in ", "nft-in ", "snap")
    for p in pkts:
        assert p.group == 9 and p.hook == Hook.LOCAL_IN and p.indev_name == "lo"
    # the inet table logs each packet with its own family
    assert v4.family == Family.IPV4 and v4.hw_protocol == 0x0800 and udp_data(v4) == b"v4"
    assert v6.family == Family.IPV6 and v6.hw_protocol == 0x86DD and udp_data(v6) == b"v6"
    assert v6.payload_len == 40 + 8 + 2
    assert (snap.payload_len, snap.cap_len, snap.truncated) == (40, 128, True)


# -- IPv6, several groups, family filter -------------------------------------------------


def test_ipv6_several_groups_and_family_filter(ns):
    nflog(ns, "INPUT", 5400, 10, "--nflog-prefix", "v4")
    nflog(ns, "INPUT", 5400, 10, "--nflog-prefix", "v6", v6=True)
    nflog(ns, "INPUT", 5401, 11, "--nflog-prefix", "v6b", v6=True)
    rx = sock(ns, socket.AF_INET6)
    rx.bind(("::1", 5400))
    v4dst, v6dst, v6b = ("127.0.0.1", 5400), ("::1", 5400), ("::1", 5401)

    def traffic():
        send(ns, [b"four-a"], v4dst)
        send(ns, [b"six-a"], v6dst, socket.AF_INET6)
        send(ns, [b"six-b"], v6b, socket.AF_INET6)
        send(ns, [b"four-b"], v4dst)
        send(ns, [b"six-c"], v6dst, socket.AF_INET6)

    with NfLog([10, 11], netns=ns.name, seq=True, seq_global=True) as log:
        assert log.groups == (10, 11)
        rows = log_proc(ns)
        assert {10, 11} <= set(rows) and rows[10]["portid"] == rows[11]["portid"]
        traffic()
        pkts = collect(log, 5)
        assert not quiet(log)
    assert [udp_data(p) for p in pkts] == [b"four-a", b"six-a", b"six-b", b"four-b", b"six-c"]
    assert [p.group for p in pkts] == [10, 10, 11, 10, 10]
    assert [p.prefix for p in pkts] == ["v4", "v6", "v6b", "v4", "v6"]
    assert [p.family for p in pkts] == [Family.IPV4, Family.IPV6, Family.IPV6, Family.IPV4,
                                        Family.IPV6]
    # per-group sequence numbers, one global sequence across the groups
    assert [p.seq for p in pkts] == [0, 1, 0, 2, 3]
    assert [p.seq_global for p in pkts] == [1, 2, 3, 4, 5]
    for p in pkts:
        assert p.hook == Hook.LOCAL_IN and p.indev == 1 and p.hwtype == ARPHRD_LOOPBACK
        if p.family == Family.IPV6:
            assert p.hw_protocol == 0x86DD
            assert p.hwhdr == bytes(12) + b"\x86\xdd"
            assert p.payload[0] >> 4 == 6
            assert p.payload_len == p.cap_len == 40 + 8 + len(udp_data(p))
            if HAVE_SCAPY:
                sc = p.scapy()
                assert type(sc).__name__ == "IPv6"
                assert sc.src == sc.dst == "::1"
                assert bytes(sc["UDP"].payload) == udp_data(p)
        else:
            assert p.hw_protocol == 0x0800 and p.hwhdr == LO_HWHDR
            if HAVE_SCAPY:
                assert type(p.scapy()).__name__ == "IP"

    # family filter: the IPv4 packets of group 10 are dropped in C and counted
    with NfLog([10, 11], netns=ns.name, family=Family.IPV6) as log:
        assert log.family == Family.IPV6
        traffic()
        pkts = collect(log, 3)
        assert not quiet(log)
        assert [udp_data(p) for p in pkts] == [b"six-a", b"six-b", b"six-c"]
        assert all(p.family == Family.IPV6 for p in pkts)
        assert log.stats.filtered == 2
        assert log.stats.packets == 3
        stats = log.stats
    assert stats.filtered == 2 and stats.as_dict()["filtered"] == 2  # kept after close

    # a filter that matches nothing: only IPv4 traffic, none delivered
    with NfLog(10, netns=ns.name, family=Family.IPV6) as log:
        send(ns, [b"v4-only"] * 3, v4dst)
        assert quiet(log, 0.3) == []
        assert log.stats.filtered == 3 and log.stats.packets == 0


# -- timestamps -----------------------------------------------------------------------


def test_timestamps_on_input_hooks_only(ns, more_ns):
    nflog(ns, "OUTPUT", 5500, 5, "--nflog-prefix", "out")
    nflog(ns, "POSTROUTING", 5500, 5, "--nflog-prefix", "post", table="mangle")
    nflog(ns, "PREROUTING", 5500, 5, "--nflog-prefix", "pre", table="raw")
    nflog(ns, "INPUT", 5500, 5, "--nflog-prefix", "in")
    nflog(ns, "FORWARD", 5500, 5, "--nflog-prefix", "fwd")
    rx = sock(ns)
    rx.bind(("127.0.0.1", 5500))
    tx = sock(ns)

    def check(pkts, before, after):
        assert [p.prefix for p in pkts] == ["out", "post", "pre", "in"]
        # never on output hooks: NFULA_TIMESTAMP is only built for
        # PRE_ROUTING, LOCAL_IN and FORWARD
        assert pkts[0].timestamp is None and pkts[1].timestamp is None
        pre, inp = pkts[2].timestamp, pkts[3].timestamp
        assert isinstance(pre, float) and isinstance(inp, float)
        assert before - 0.01 <= pre <= inp <= after + 0.01

    with NfLog(5, netns=ns.name) as log:
        # Unlike NFQUEUE, NFLOG (since Linux 6.5) stamps every packet on an
        # input hook: skb->tstamp when the packet has one, else the time of
        # logging -- with or without any SO_TIMESTAMP socket on the machine.
        before = time.time()
        tx.sendto(b"t", ("127.0.0.1", 5500))
        check(collect(log, 4), before, time.time())
        # a socket asking for timestamps (netstamp_needed): stamped at receive
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        before = time.time()
        tx.sendto(b"t", ("127.0.0.1", 5500))
        check(collect(log, 4), before, time.time())
        assert not quiet(log)
    assert rx.recv(10) == b"t"

    # FORWARD (an input-side hook too): a router namespace between two others
    a, b = more_ns(), more_ns()
    veth(a, ns, "ea", "ra")
    veth(b, ns, "eb", "rb")
    for n, dev, ip in ((a, "ea", "10.99.4.2/24"), (ns, "ra", "10.99.4.1/24"),
                       (b, "eb", "10.99.5.2/24"), (ns, "rb", "10.99.5.1/24")):
        n.run("ip", "addr", "add", ip, "dev", dev)
        n.run("ip", "link", "set", dev, "up")
    a.run("ip", "route", "add", "default", "via", "10.99.4.1")
    b.run("ip", "route", "add", "default", "via", "10.99.5.1")
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    brx = sock(b)
    brx.bind(("10.99.5.2", 5500))
    brx.settimeout(2)
    with NfLog(5, netns=ns.name) as log:
        before = time.time()
        send(a, [b"routed"], ("10.99.5.2", 5500))
        pkts = collect(log, 3)
        after = time.time()
        assert not quiet(log)
    assert [p.prefix for p in pkts] == ["pre", "fwd", "post"]
    assert [p.hook for p in pkts] == [Hook.PRE_ROUTING, Hook.FORWARD, Hook.POST_ROUTING]
    post = pkts.pop()
    # POST_ROUTING is an output hook: no timestamp, though ip_output() hands
    # the hook the device a forwarded packet came in on (and so its MAC header)
    assert post.timestamp is None
    assert (post.indev_name, post.outdev_name) == ("ra", "rb")
    assert post.hwaddr == mac(sysfs(a, "/sys/class/net/ea/address"))
    fwd = pkts[1]
    assert (fwd.indev_name, fwd.outdev_name) == ("ra", "rb")
    assert fwd.hwtype == ARPHRD_ETHER and fwd.hwaddr == mac(sysfs(a, "/sys/class/net/ea/address"))
    assert udp_data(fwd) == b"routed"
    assert fwd.payload[8] == 63  # the TTL after the routing decision
    for p in pkts:
        assert isinstance(p.timestamp, float) and before - 0.01 <= p.timestamp <= after + 0.01
    assert brx.recv(100) == b"routed"


# -- veth: hwtype, hwaddr, hwhdr, devices ------------------------------------------------


def test_veth_hwaddr_hwhdr_and_devices(ns, more_ns):
    peer = more_ns()
    veth(ns, peer, "va", "vb")
    ns.run("ip", "addr", "add", "10.99.1.1/24", "dev", "va")
    ns.run("ip", "link", "set", "va", "up")
    peer.run("ip", "addr", "add", "10.99.1.2/24", "dev", "vb")
    peer.run("ip", "link", "set", "vb", "up")
    va_index = int(sysfs(ns, "/sys/class/net/va/ifindex"))
    va_mac = mac(sysfs(ns, "/sys/class/net/va/address"))
    vb_mac = mac(sysfs(peer, "/sys/class/net/vb/address"))
    nflog(ns, "PREROUTING", 5600, 5, "--nflog-prefix", "pre", table="raw")
    nflog(ns, "INPUT", 5600, 5, "--nflog-prefix", "in")
    nflog(ns, "OUTPUT", 5601, 5, "--nflog-prefix", "out")
    nflog(ns, "POSTROUTING", 5601, 5, "--nflog-prefix", "post", table="mangle")
    rx = sock(ns)
    rx.bind(("10.99.1.1", 5600))
    prx = sock(peer)
    prx.bind(("10.99.1.2", 5601))
    with NfLog(5, netns=ns.name) as log:
        send(peer, [b"from-peer"], ("10.99.1.1", 5600))
        send(ns, [b"to-peer"], ("10.99.1.2", 5601))
        pkts = collect(log, 4)
        assert not quiet(log)
    by = {p.prefix: p for p in pkts}
    assert sorted(by) == ["in", "out", "post", "pre"]
    for k in ("pre", "in"):
        p = by[k]
        assert udp_data(p) == b"from-peer"
        assert p.indev == va_index and p.indev_name == "va"
        assert p.outdev is None
        assert p.hwtype == ARPHRD_ETHER
        assert p.hwaddr == vb_mac  # the sender's MAC
        # the Ethernet header as received: destination, source, EtherType
        assert p.hwhdr == va_mac + vb_mac + b"\x08\x00"
        assert p.physindev is None and p.l2hdr is None and p.vlan is None
    assert by["pre"].hook == Hook.PRE_ROUTING and by["in"].hook == Hook.LOCAL_IN
    for k in ("out", "post"):
        p = by[k]
        assert udp_data(p) == b"to-peer"
        assert p.outdev == va_index and p.outdev_name == "va"
        assert p.indev is None and p.indev_name is None
        assert p.hwtype is None and p.hwaddr is None and p.hwhdr is None
    assert by["out"].hook == Hook.LOCAL_OUT and by["post"].hook == Hook.POST_ROUTING
    assert rx.recv(100) == b"from-peer" and prx.recv(100) == b"to-peer"


def test_arp_family(ns, more_ns, tmp_path):
    peer = more_ns()
    veth(ns, peer, "va", "vb")
    ns.run("ip", "addr", "add", "10.99.6.1/24", "dev", "va")
    ns.run("ip", "link", "set", "va", "up")
    peer.run("ip", "addr", "add", "10.99.6.2/24", "dev", "vb")
    peer.run("ip", "link", "set", "vb", "up")
    va_mac = mac(sysfs(ns, "/sys/class/net/va/address"))
    vb_mac = mac(sysfs(peer, "/sys/class/net/vb/address"))
    nft(ns, tmp_path, """
table arp ta {
    chain i { type filter hook input priority 0; log group 7 prefix "arp-in"; }
    chain o { type filter hook output priority 0; log group 7 prefix "arp-out"; }
}
""")
    nflog(ns, "INPUT", 9, 7, "--nflog-prefix", "udp")
    with NfLog(7, netns=ns.name, family=Family.ARP) as log:
        send(peer, [b"x"], ("10.99.6.1", 9))  # an ARP request first, then the UDP packet
        pkts = collect(log, 2)
        assert not quiet(log)
        assert log.stats.filtered == 1  # the IPv4 one
    req, rep = pkts
    assert (req.prefix, rep.prefix) == ("arp-in", "arp-out")
    for p in pkts:
        assert p.family == Family.ARP and p.hw_protocol == 0x0806
        # ARP hook numbers are NF_ARP_IN 0, NF_ARP_OUT 1 (not the inet hooks)
        assert int(p.hook) == (0 if p is req else 1)
        # the kernel stamps hooks numbered <= NF_INET_FORWARD: both ARP hooks
        assert isinstance(p.timestamp, float)
    assert req.indev_name == "va" and req.hwtype == ARPHRD_ETHER and req.hwaddr == vb_mac
    assert req.hwhdr == b"\xff" * 6 + vb_mac + b"\x08\x06"  # broadcast
    # an ARP request for 10.99.6.1 from vb: htype 1, ptype IPv4, op 1
    assert req.payload[:8] == b"\x00\x01\x08\x00\x06\x04\x00\x01"
    assert req.payload[8:14] == vb_mac and req.payload[24:28] == socket.inet_aton("10.99.6.1")
    # on ARP output the skb already holds its Ethernet header: the payload
    # starts with it (14 + 28 bytes)
    assert rep.outdev_name == "va" and rep.hwaddr is None
    assert rep.payload_len == 42
    assert rep.payload[:14] == vb_mac + va_mac + b"\x08\x06"
    assert rep.payload[20:22] == b"\x00\x02"  # ARP reply


# -- bridge: physindev/physoutdev; bridge family: l2hdr and vlan -------------------------


def test_bridge_physdevs_and_bridge_family_vlan_l2hdr(ns, more_ns, tmp_path):
    b, c = more_ns(), more_ns()
    ns.run("ip", "link", "add", "br0", "type", "bridge")
    for peer, port, ip in ((b, "pb", "10.99.2.2"), (c, "pc", "10.99.2.3")):
        veth(ns, peer, port, "eth0")
        ns.run("ip", "link", "set", port, "master", "br0")
        ns.run("ip", "link", "set", port, "up")
        peer.run("ip", "addr", "add", ip + "/24", "dev", "eth0")
        peer.run("ip", "link", "set", "eth0", "up")
    ns.run("ip", "addr", "add", "10.99.2.1/24", "dev", "br0")
    ns.run("ip", "link", "set", "br0", "up")
    br_nf = ns.run("sh", "-c", "cat /proc/sys/net/bridge/bridge-nf-call-iptables "
                   "2>/dev/null || echo none").strip()
    if br_nf == "none":
        pytest.skip("br_netfilter is not available")
    ns.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    ns.run("sysctl", "-qw", "net.bridge.bridge-nf-filter-vlan-tagged=1")
    idx = {n: int(sysfs(ns, "/sys/class/net/%s/ifindex" % n)) for n in ("br0", "pb", "pc")}
    br_mac = mac(sysfs(ns, "/sys/class/net/br0/address"))
    b_mac_s = sysfs(b, "/sys/class/net/eth0/address")
    c_mac_s = sysfs(c, "/sys/class/net/eth0/address")
    b_mac, c_mac = mac(b_mac_s), mac(c_mac_s)
    nflog(ns, "INPUT", 5700, 5, "--nflog-prefix", "in")
    nflog(ns, "FORWARD", 5700, 5, "--nflog-prefix", "fwd")
    # a bridge-family rule: the only kind of log message that carries the
    # link-layer header (NFULA_L2HDR) and the 802.1Q tag (NFULA_VLAN)
    nft(ns, tmp_path, """
table bridge tb {
    chain c {
        type filter hook forward priority 0;
        udp dport 5700 log group 6 prefix "brf";
    }
}
""")
    tx = sock(b)
    raw = sock(b, socket.AF_PACKET, socket.SOCK_RAW, 0)
    raw.bind(("eth0", 0))
    rx_c = sock(c)
    rx_c.bind(("10.99.2.3", 5700))
    with NfLog([5, 6], netns=ns.name) as log:
        tx.sendto(b"to-bridge", ("10.99.2.1", 5700))
        (local,) = collect(log, 1)
        tx.sendto(b"through", ("10.99.2.3", 5700))
        fwd = collect(log, 2)
        # a VLAN-tagged frame B -> C (VID 5, PCP 3), bridged
        # (bridge-nf-filter-vlan-tagged=1 hands it to iptables too)
        raw.send(ether(c_mac_s, b_mac_s,
                       ipv4_udp("10.99.2.2", "10.99.2.3", 4444, 5700, b"tagged"),
                       (3 << 13) | 5))
        tagged = collect(log, 2)
        assert not quiet(log)
    assert local.prefix == "in" and local.hook == Hook.LOCAL_IN
    assert udp_data(local) == b"to-bridge"
    assert (local.indev, local.indev_name) == (idx["br0"], "br0")
    assert (local.physindev, local.physindev_name) == (idx["pb"], "pb")
    assert local.outdev is None and local.physoutdev is None
    assert local.hwaddr == b_mac and local.hwhdr == br_mac + b_mac + b"\x08\x00"
    assert local.l2hdr is None and local.vlan is None

    for pair, data in ((fwd, b"through"), (tagged, b"tagged")):
        by = {p.group: p for p in pair}
        assert sorted(by) == [5, 6]
        ip4, br = by[5], by[6]
        assert (ip4.prefix, br.prefix) == ("fwd", "brf")
        assert ip4.family == Family.IPV4 and br.family == Family.BRIDGE
        for p in pair:
            assert p.hook == Hook.FORWARD and udp_data(p) == data
            assert (p.indev_name, p.outdev_name) == ("br0", "br0")
            assert p.indev == p.outdev == idx["br0"]
            assert (p.physindev, p.physindev_name) == (idx["pb"], "pb")
            assert (p.physoutdev, p.physoutdev_name) == (idx["pc"], "pc")
            assert p.hw_protocol == 0x0800 and p.hwtype == ARPHRD_ETHER
            assert p.hwaddr == b_mac
            # the tag was taken out of the frame on receive (skb->vlan_tci):
            # the header reads as untagged IPv4
            assert p.hwhdr == c_mac + b_mac + b"\x08\x00"
            assert p.payload[:1] == b"\x45" and p.payload_len == 28 + len(data)
        # IPv4-family messages never carry L2HDR / VLAN ...
        assert ip4.l2hdr is None and ip4.vlan is None
        # ... bridge-family ones carry the MAC header
        assert br.l2hdr == c_mac + b_mac + b"\x08\x00"
        if HAVE_SCAPY:
            assert type(br.scapy()).__name__ == "IP"  # by hw_protocol
    assert {p.group: p for p in fwd}[6].vlan is None  # untagged
    vl = {p.group: p for p in tagged}[6].vlan
    assert isinstance(vl, Vlan)
    assert (vl.proto, vl.tci, vl.id, vl.pcp) == (0x8100, (3 << 13) | 5, 5, 3)
    # C has no VLAN device (CONFIG_VLAN_8021Q is off): only the untagged one arrives
    rx_c.settimeout(1)
    assert rx_c.recv(100) == b"through"

    with NfLog([5, 6], netns=ns.name, family=Family.BRIDGE) as log:
        tx.sendto(b"again", ("10.99.2.3", 5700))
        (p,) = collect(log, 1)
        assert not quiet(log)
        assert p.group == 6 and p.family == Family.BRIDGE and udp_data(p) == b"again"
        assert log.stats.filtered == 1  # the IPv4-family FORWARD message


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


# -- cross-check against tcpdump (libpcap's own NFLOG reader) ------------------------------


def read_nflog_pcap(path: Path) -> List[dict]:
    """Parse a pcap file of LINKTYPE_NFLOG (239) records.

    Each record: a 4-byte header (family u8, version u8, resource_id u16
    big-endian), then TLVs whose length (including the 4-byte TLV header)
    and type are in the writer's host byte order, values as the kernel sent
    them (network order), each padded to 4 bytes -- the netlink attributes.
    """
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), hex(magic)  # little-endian file, us or ns
    linktype = struct.unpack_from("<I", data, 20)[0]
    assert linktype == 239, linktype  # LINKTYPE_NFLOG
    out = []
    off = 24
    while off + 16 <= len(data):
        _sec, _frac, incl, orig = struct.unpack_from("<IIII", data, off)
        off += 16
        rec = data[off:off + incl]
        off += incl
        assert incl == orig and len(rec) == incl
        family, version, resid = struct.unpack_from("!BBH", rec, 0)
        tlvs: Dict[int, bytes] = {}
        t = 4
        while t + 4 <= len(rec):
            tlen, ttype = struct.unpack_from("=HH", rec, t)
            assert tlen >= 4 and t + tlen <= len(rec), (t, tlen, len(rec))
            tlvs[ttype & 0x7FFF] = rec[t + 4:t + tlen]
            t += (tlen + 3) & ~3
        out.append({"family": family, "version": version, "group": resid, "tlvs": tlvs})
    return out


NFULA_PACKET_HDR, NFULA_MARK, NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 2, 4, 9, 10


def test_tcpdump_sees_the_same_packets(ns, tmp_path):
    # two groups, same match: group 20 for nfbind, group 21 for tcpdump.
    # NFLOG is non-terminating, so both rules see every packet.
    # --nflog-threshold 1 on tcpdump's rule: libpcap leaves the kernel's
    # default qthresh (100) and 1 s timeout, which would hold packets back.
    prefix = "xcheck"
    for v6 in (False, True):
        ns.iptables("-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5900",
                    "-j", "MARK", "--set-mark", "0xbeef", v6=v6)
        nflog(ns, "INPUT", 5900, 20, "--nflog-prefix", prefix, v6=v6)
        nflog(ns, "INPUT", 5900, 21, "--nflog-prefix", prefix, "--nflog-threshold", "1", v6=v6)
    pcap = tmp_path / "nflog.pcap"
    # -Z root: keep root, so tcpdump can write into pytest's private tmp dir
    td = ns.popen("tcpdump", "-i", "nflog:21", "-w", str(pcap), "-U", "-n", "-Z", "root",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    deadline = time.monotonic() + 10
    while b"listening on" not in err and time.monotonic() < deadline:
        if not select.select([td.stderr], [], [], 0.5)[0]:
            assert td.poll() is None, err
            continue
        chunk = os.read(td.stderr.fileno(), 4096)
        if not chunk:
            break
        err += chunk
    assert b"listening on nflog:21" in err, err
    assert 21 in log_proc(ns)
    K = 24
    payloads = [b"%02d:" % i + os.urandom(7 * i) for i in range(K)]
    with NfLog(20, netns=ns.name) as log:
        for i, p in enumerate(payloads):
            if i % 3 == 2:
                send(ns, [p], ("::1", 5900), socket.AF_INET6)
            else:
                send(ns, [p], ("127.0.0.1", 5900))
        mine = collect(log, K)
        assert not quiet(log)
    assert len(mine) == K
    # wait until tcpdump wrote all K records (-U: flushed per packet), bounded
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pcap.exists() and pcap.stat().st_size > 24 and len(read_nflog_pcap(pcap)) >= K:
            break
        time.sleep(0.05)
    td.send_signal(signal.SIGINT)
    try:
        td.wait(5)
    except subprocess.TimeoutExpired:
        td.kill()
        td.wait(5)
        pytest.fail("tcpdump did not stop on SIGINT")
    err += td.stderr.read()
    assert td.returncode == 0, err
    assert b"%d packets captured" % K in err, err
    theirs = read_nflog_pcap(pcap)

    assert len(theirs) == len(mine) == K
    for m, t in zip(mine, theirs):
        tl = t["tlvs"]
        assert t["group"] == 21 and m.group == 20
        assert t["version"] == 0
        assert t["family"] == m.family
        # the same packet, byte for byte, and the same prefix
        assert tl[NFULA_PAYLOAD] == m.payload
        assert tl[NFULA_PREFIX].rstrip(b"\0").decode() == m.prefix == prefix
        # and the same metadata, decoded independently
        hw_protocol, hook = struct.unpack_from("!HB", tl[NFULA_PACKET_HDR])
        assert (hw_protocol, hook) == (m.hw_protocol, m.hook)
        assert struct.unpack("!I", tl[NFULA_IFINDEX_INDEV])[0] == m.indev == 1
        assert struct.unpack("!I", tl[NFULA_MARK])[0] == m.mark == 0xBEEF
    assert [udp_data(m) for m in mine] == payloads
    assert [m.family for m in mine] == [Family.IPV6 if i % 3 == 2 else Family.IPV4
                                        for i in range(K)]


# -- run/stop, iteration, async for, drain --------------------------------------------------


def test_run_stop_iteration_async_and_drain(ns):
    nflog(ns, "INPUT", 6000, 5)
    dst = ("127.0.0.1", 6000)
    total = 0
    with NfLog(5, netns=ns.name) as log:
        # run(): the handler stops it
        send(ns, [b"r0", b"r1", b"r2"], dst)
        got: List[LogPacket] = []
        log.run(lambda p: (got.append(p), len(got) == 3 and log.stop()), timeout=5)
        assert [udp_data(p) for p in got] == [b"r0", b"r1", b"r2"]
        total += 3

        # run(timeout=): returns once idle that long
        t0 = time.monotonic()
        log.run(lambda p: pytest.fail("no packet was sent"), timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 2

        # a stop() before run() is kept: run() returns at once
        log.stop()
        t0 = time.monotonic()
        log.run(lambda p: None, timeout=5)
        assert time.monotonic() - t0 < 1

        # stop() from another thread
        timer = threading.Timer(0.3, log.stop)
        timer.start()
        t0 = time.monotonic()
        log.run(lambda p: None, timeout=5)
        timer.join(5)
        assert 0.25 <= time.monotonic() - t0 < 2

        # iteration, bounded by a timer that stops it
        send(ns, [b"i0", b"i1"], dst)
        timer = threading.Timer(5, log.stop)
        timer.start()
        seen = []
        try:
            for p in log:
                seen.append(udp_data(p))
                if len(seen) == 2:
                    break
            # iteration can start again (see test_break_keeps_unread_packets
            # for packets already read when the loop breaks)
            send(ns, [b"i2", b"i3"], dst)
            for p in log:
                seen.append(udp_data(p))
                if len(seen) == 4:
                    break
        finally:
            timer.cancel()
        assert seen == [b"i0", b"i1", b"i2", b"i3"]
        total += 4

        # stop() ends an iteration that is waiting
        timer = threading.Timer(0.2, log.stop)
        timer.start()
        t0 = time.monotonic()
        assert list(log) == []
        timer.join(5)
        assert time.monotonic() - t0 < 2

        # async for: one packet waiting, two more sent while the loop waits
        send(ns, [b"a0"], dst)

        async def consume():
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, send, ns, [b"a1"], dst)
            loop.call_later(0.2, send, ns, [b"a2"], dst)
            out = []
            async for p in log:
                out.append(udp_data(p))
                if len(out) == 3:
                    break
            return out

        assert asyncio.run(asyncio.wait_for(consume(), 5)) == [b"a0", b"a1", b"a2"]
        total += 3

        # stop() ends an async for that is waiting
        async def stopped():
            asyncio.get_running_loop().call_later(0.2, log.stop)
            return [p async for p in log]

        assert asyncio.run(asyncio.wait_for(stopped(), 5)) == []

        # fileno() + drain() for users' own loops
        send(ns, [b"d0", b"d1"], dst)
        drained: List[LogPacket] = []
        deadline = time.monotonic() + 3
        while len(drained) < 2 and time.monotonic() < deadline:
            if select.select([log.fileno()], [], [], 0.5)[0]:
                log.drain(drained.append)
        assert [udp_data(p) for p in drained] == [b"d0", b"d1"]
        assert log.drain(drained.append) == 0  # nothing waiting: returns at once
        total += 2
        assert log.stats.packets == total
        assert log.stats.handler_errors == 0


def test_break_keeps_unread_packets(ns):
    nflog(ns, "INPUT", 6005, 5)
    with NfLog(5, netns=ns.name, qthresh=4, timeout=5.0) as log:
        send(ns, [b"b0", b"b1", b"b2", b"b3"], ("127.0.0.1", 6005))  # one batch
        assert select.select([log.fileno()], [], [], 2)[0]
        timer = threading.Timer(3, log.stop)
        timer.start()
        try:
            for p in log:
                first = udp_data(p)
                break
        finally:
            timer.cancel()
        assert first == b"b0"
        rest = collect(log, 3, timeout=0.5)
        assert [udp_data(p) for p in rest] == [b"b1", b"b2", b"b3"]


def test_handler_exception_rest_of_batch_handled(ns):
    nflog(ns, "INPUT", 6010, 5)
    dst = ("127.0.0.1", 6010)
    # qthresh=5: the kernel sends the five packets as one batch
    with NfLog(5, netns=ns.name, qthresh=5, timeout=5.0) as log:
        send(ns, [b"%d" % i for i in range(5)], dst)
        assert select.select([log.fileno()], [], [], 2)[0]
        seen = []

        def handler(p):
            seen.append(udp_data(p))
            if udp_data(p) in (b"1", b"3"):
                raise ValueError("bad packet %s" % udp_data(p).decode())

        with pytest.raises(ValueError, match="bad packet 1"):  # the first error
            log.run(handler, timeout=5)
        assert seen == [b"0", b"1", b"2", b"3", b"4"]  # the whole batch
        assert log.stats.handler_errors == 2 and log.stats.packets == 5

        # the loop goes on
        send(ns, [b"%d" % i for i in range(5, 10)], dst)
        got = collect(log, 5)
        assert [udp_data(p) for p in got] == [b"%d" % i for i in range(5, 10)]

        # Ctrl-C in the handler: run() returns; the rest of the batch waits
        # for the next run()
        send(ns, [b"%d" % i for i in range(10, 15)], dst)
        assert select.select([log.fileno()], [], [], 2)[0]
        seen.clear()

        def interrupted(p):
            seen.append(udp_data(p))
            if udp_data(p) == b"11":
                raise KeyboardInterrupt

        assert log.run(interrupted, timeout=5) is None
        assert seen == [b"10", b"11"]
        rest = collect(log, 3)
        assert [udp_data(p) for p in rest] == [b"12", b"13", b"14"]


CHILD_RUN = r"""
import sys
from nfbind import NfLog
log = NfLog(int(sys.argv[1]))
print("ready", flush=True)
n = [0]
def handler(p):
    n[0] += 1
    print("got", p.payload[28:].decode(), flush=True)
log.run(handler)
print("returned", n[0], flush=True)
log.close()
print("closed", flush=True)
"""


def test_sigint_ends_run_in_a_child_cleanly(ns):
    nflog(ns, "INPUT", 6020, 31)
    # `ip netns exec` execs: the PID is the Python child's
    child = ns.popen(sys.executable, "-c", CHILD_RUN, "31", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, env=child_env())

    def line(timeout=10) -> str:
        assert select.select([child.stdout], [], [], timeout)[0], "child silent"
        return child.stdout.readline().strip()

    assert line() == "ready"
    assert 31 in log_proc(ns)
    send(ns, [b"hello"], ("127.0.0.1", 6020))
    assert line() == "got hello"
    child.send_signal(signal.SIGINT)
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not stop on SIGINT")
    out = child.stdout.read()
    err = child.stderr.read()
    assert child.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out.split() == ["returned", "1", "closed"]
    assert 31 not in log_proc(ns)  # unbound


# -- receive buffer overruns ----------------------------------------------------------------

BURST = 2000
SIZE = 1000
OPORT = 6100


def _overrun_setup(ns, group: int, **kw) -> NfLog:
    nflog(ns, "INPUT", OPORT, group)
    log = NfLog(group, netns=ns.name, rcvbuf=4096, **kw)
    # SO_RCVBUFFORCE ignores rmem_max; the kernel doubles the request: a few
    # 1 kB log messages fill it
    assert log.rcvbuf <= 16384
    return log


def _burst(ns, tag: bytes) -> None:
    send(ns, [tag + b"x" * (SIZE - len(tag))] * BURST, ("127.0.0.1", OPORT))


def _after(ns, log: NfLog) -> List[LogPacket]:
    """A packet sent after the overrun still arrives."""
    send(ns, [b"after"], ("127.0.0.1", OPORT))
    return collect(log, 1, keep=lambda p: udp_data(p) == b"after")


def test_overrun_counted_and_warned_once(ns):
    log = _overrun_setup(ns, 5)
    got: List[LogPacket] = []
    try:
        with pytest.warns(OverrunWarning) as rec:
            _burst(ns, b"A")
            drain_all(log, got.append)
            first = log.stats.overruns
            _burst(ns, b"B")
            drain_all(log, got.append)
        assert first >= 1
        assert log.stats.overruns > first, "the second burst was not counted"
        warned = [w for w in rec if issubclass(w.category, OverrunWarning)]
        assert len(warned) == 1, [str(w.message) for w in warned]
        assert "ENOBUFS" in str(warned[0].message) and "NfLog(5)" in str(warned[0].message)
        assert 0 < len(got) < 2 * BURST  # the kernel dropped the rest
        assert {udp_data(p)[:1] for p in got} == {b"A", b"B"}
        assert all(p.payload_len == 28 + SIZE for p in got)
        assert len(_after(ns, log)) == 1  # the loop keeps going
        assert log.stats.packets == len(got) + 1
    finally:
        log.close()
    assert log.stats.overruns > first  # kept after close


def test_overrun_raised(ns):
    log = _overrun_setup(ns, 6, on_overrun="raise")
    got: List[LogPacket] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)  # raise mode never warns
            _burst(ns, b"A")
            with pytest.raises(Overrun) as ei:
                log.run(got.append, timeout=5)
            e = ei.value
            assert isinstance(e, NetlinkError) and e.errno == errno.ENOBUFS
            assert e.count == log.stats.overruns >= 1
            assert "NfLog(6)" in str(e)
            # what is left in the socket is still delivered
            drain_all(log, got.append)
            _burst(ns, b"B")
            with pytest.raises(Overrun):
                for _ in range(200):  # bounded: the first read reports it
                    log.drain(got.append)
            drain_all(log, got.append)
        assert log.stats.overruns >= 2
        assert 0 < len(got) < 2 * BURST
        assert len(_after(ns, log)) == 1
    finally:
        log.close()


def test_no_enobufs_silences_the_report(ns):
    log = _overrun_setup(ns, 7, on_overrun="raise", no_enobufs=True)
    got: List[LogPacket] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)
            _burst(ns, b"A")
            drain_all(log, got.append)
        assert log.stats.overruns == 0
        assert 0 < len(got) < BURST  # the kernel still dropped, it just did not say
        assert len(_after(ns, log)) == 1
    finally:
        log.close()


# -- errors: a group someone else holds, no CAP_NET_ADMIN, bad arguments, close --------------

CHILD_HOLD = r"""
import sys
from nfbind import NfLog
log = NfLog(int(sys.argv[1]))
print("bound", flush=True)
sys.stdin.read()
log.close()
"""


def test_group_bound_by_another_process(ns):
    child = ns.popen(sys.executable, "-c", CHILD_HOLD, "12", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True, env=child_env())
    assert select.select([child.stdout], [], [], 20)[0]
    assert child.stdout.readline().strip() == "bound"
    owner = log_proc(ns)[12]["portid"]
    fds = open_fds()
    with pytest.raises(QueueBusy) as ei:
        NfLog(12, netns=ns.name)
    e = ei.value
    assert isinstance(e, NetlinkError) and isinstance(e, OSError)
    assert not isinstance(e, PermissionDenied)
    assert e.errno == errno.EPERM
    assert "log group 12" in str(e) and "already bound" in str(e)
    assert "CAP_NET_ADMIN" not in str(e)
    assert open_fds() <= fds, "the failed NfLog leaked descriptors"
    # several groups, one of them taken: nothing stays bound
    with pytest.raises(QueueBusy, match="log group 12"):
        NfLog([11, 12, 13], netns=ns.name)
    rows = log_proc(ns)
    assert 11 not in rows and 13 not in rows, rows
    assert rows[12]["portid"] == owner, "the owner lost its group"
    assert open_fds() <= fds
    # once the owner is gone the group is free
    child.stdin.close()
    child.wait(10)
    assert 12 not in log_proc(ns)
    with NfLog(12, netns=ns.name) as log:
        assert log_proc(ns)[12]["portid"] != owner
        assert not log.closed


def test_group_bound_twice_in_one_process(ns):
    nflog(ns, "INPUT", 6200, 13)
    with NfLog(13, netns=ns.name) as first:
        with pytest.raises(QueueBusy, match="log group 13"):
            NfLog(13, netns=ns.name)
        with pytest.raises(QueueBusy, match="log group 13"):
            NfLog([14, 13], netns=ns.name)
        assert 14 not in log_proc(ns)
        # the first binding still works
        send(ns, [b"still mine"], ("127.0.0.1", 6200))
        (p,) = collect(first, 1)
        assert udp_data(p) == b"still mine"


CHILD_BIND = r"""
import json, sys
from nfbind import NfLog, NetlinkError
from nfbind.errors import has_cap_net_admin
out = {"cap": has_cap_net_admin()}
try:
    NfLog(int(sys.argv[1]))
except BaseException as e:
    out.update(type=type(e).__name__, permission_error=isinstance(e, PermissionError),
               netlink_error=isinstance(e, NetlinkError), errno=getattr(e, "errno", None),
               msg=str(e))
else:
    out["type"] = None
print(json.dumps(out))
"""


def test_eperm_without_cap_net_admin(ns):
    drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
            sys.executable, "-c", CHILD_BIND, "41"]
    r = subprocess.run(["ip", "netns", "exec", ns.name, *drop], capture_output=True, text=True,
                       env=child_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cap"] is False, "the child still had CAP_NET_ADMIN"
    assert out["type"] == "PermissionDenied", out
    assert out["permission_error"] and out["netlink_error"]
    assert out["errno"] == errno.EPERM
    assert "CAP_NET_ADMIN" in out["msg"]
    assert "log group 41" in out["msg"]
    assert 41 not in log_proc(ns)  # nothing got bound


BAD_ARGS = [
    (([],), {}, ValueError, "groups"),
    ((-1,), {}, ValueError, "group"),
    ((65536,), {}, ValueError, "group"),
    (([1, 70000],), {}, ValueError, "group"),
    (([5, 6, 5],), {}, ValueError, "duplicates"),
    (("5",), {}, TypeError, "groups"),
    ((b"5",), {}, TypeError, "groups"),
    ((None,), {}, TypeError, "groups"),
    ((True,), {}, TypeError, "group"),
    (([1, "2"],), {}, TypeError, "group"),
    ((1.5,), {}, TypeError, "groups"),
    ((5,), {"family": 99}, ValueError, "family"),
    ((5,), {"family": "inet"}, TypeError, "family"),
    ((5,), {"copy_mode": 7}, ValueError, "copy_mode"),
    ((5,), {"copy_mode": "PACKET"}, TypeError, "copy_mode"),
    ((5,), {"copy_range": 70000}, ValueError, "copy_range"),
    ((5,), {"copy_range": -1}, ValueError, "copy_range"),
    ((5,), {"qthresh": 0}, ValueError, "qthresh"),
    ((5,), {"qthresh": 2 ** 32}, ValueError, "qthresh"),
    ((5,), {"qthresh": 1.0}, TypeError, "qthresh"),
    ((5,), {"timeout": -1}, ValueError, "timeout"),
    ((5,), {"timeout": "1"}, TypeError, "timeout"),
    ((5,), {"timeout": True}, TypeError, "timeout"),
    ((5,), {"nlbufsiz": 100}, ValueError, "nlbufsiz"),
    ((5,), {"nlbufsiz": 10 ** 6}, ValueError, "nlbufsiz"),
    ((5,), {"seq": 1}, TypeError, "seq"),
    ((5,), {"seq_global": "yes"}, TypeError, "seq_global"),
    ((5,), {"conntrack": None}, TypeError, "conntrack"),
    ((5,), {"no_enobufs": 1}, TypeError, "no_enobufs"),
    ((5,), {"rcvbuf": 0}, ValueError, "rcvbuf"),
    ((5,), {"on_overrun": "x"}, ValueError, "on_overrun"),
    ((5,), {"netns": 3.5}, TypeError, "netns"),
    ((5,), {"netns": ""}, ValueError, "netns"),
]


@pytest.mark.parametrize("args, kw, exc, name", BAD_ARGS,
                         ids=["%s-%r" % (name, (kw or args)) for args, kw, exc, name in BAD_ARGS])
def test_bad_arguments_rejected_before_any_socket(monkeypatch, args, kw, exc, name):
    def no_socket(*a, **k):
        raise AssertionError("a netlink socket was opened before the arguments were checked")

    monkeypatch.setattr(_channel, "_open_netlink", no_socket)
    fds = open_fds()
    with pytest.raises(exc) as ei:
        NfLog(*args, **kw)
    assert name in str(ei.value)
    assert open_fds() <= fds


def test_missing_netns(monkeypatch):
    monkeypatch.setattr(_channel, "_open_netlink",
                        lambda *a, **k: pytest.fail("socket opened for a missing netns"))
    with pytest.raises(FileNotFoundError):
        NfLog(5, netns="nfbt-missing-%d" % os.getpid())


def test_netns_fd_and_path(ns):
    path = "/run/netns/" + ns.name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with NfLog(21, netns=fd), NfLog(22, netns=path):
            assert {21, 22} <= set(log_proc(ns))
        assert os.fstat(fd)  # our fd was not closed by nfbind
    finally:
        os.close(fd)
    assert not {21, 22} & set(log_proc(ns))


def test_use_after_close(ns):
    nflog(ns, "INPUT", 6300, 8)
    log = NfLog(8, netns=ns.name)
    send(ns, [b"kept"], ("127.0.0.1", 6300))
    (p,) = collect(log, 1)
    assert 8 in log_proc(ns)
    log.close()
    assert log.closed and 8 not in log_proc(ns)
    log.close()  # twice is fine
    for call in (log.fileno, lambda: log.run(lambda p: None), lambda: next(iter(log)),
                 lambda: log.rcvbuf, lambda: log.set_rcvbuf(8192), lambda: log.__enter__()):
        with pytest.raises(ClosedError):
            call()

    async def aiter_closed():
        async for _ in log:
            pass

    with pytest.raises(ClosedError):
        asyncio.run(aiter_closed())
    assert log.drain(lambda p: None) == 0
    log.stop()  # harmless
    assert "closed" in repr(log)
    assert log.stats.packets == 1 and log.stats.overruns == 0
    # a packet outlives its NfLog: its fields are copied out of the kernel's message
    assert udp_data(p) == b"kept" and p.group == 8 and p.indev_name == "lo"


def test_with_closes_even_on_error(ns):
    with NfLog(9, netns=ns.name) as log:
        assert not log.closed and 9 in log_proc(ns)
    assert log.closed and 9 not in log_proc(ns)
    with pytest.raises(ZeroDivisionError):
        with NfLog(9, netns=ns.name) as log2:
            1 / 0
    assert log2.closed and 9 not in log_proc(ns)


def test_resource_warning_when_collected_unclosed(ns):
    log = NfLog(15, netns=ns.name)
    assert 15 in log_proc(ns)
    fds = open_fds()
    with pytest.warns(ResourceWarning, match="NfLog"):
        del log
        for _ in range(3):
            gc.collect()
    assert 15 not in log_proc(ns), "the collected NfLog is still bound"
    assert open_fds() < fds, "the collected NfLog kept its descriptors"
