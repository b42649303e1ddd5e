# SPDX-License-Identifier: GPL-2.0-or-later
"""What a LogPacket carries, against the real kernel: every attribute of
packets logged on loopback (iptables ``-j NFLOG``, ip6tables, nft ``log
group N``), the payload as cut by ``--nflog-size``, ``copy_range`` and
``copy_mode``, several groups on one socket with a family filter, and the
timestamps of every hook.

Each test makes its own namespace(s), installs its own rules, sends real
packets on loopback or on veth pairs between its own namespaces, and asserts
on what the kernel reported.  What this kernel (6.18, iptables-nft, no
CONFIG_NETFILTER_NETLINK_GLUE_CT, no CONFIG_VLAN_8021Q) does is written next
to each assertion.
"""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from nfbind import CopyMode, Family, Hook, LogPacket, NfLog

from helpers.netns import veth
from helpers.nflog import (
    ARPHRD_ETHER, ARPHRD_LOOPBACK, HAVE_SCAPY, LO_HWHDR, collect, log_proc, nflog, nft, quiet,
    send, sock, sysfs, udp_data,
)
from helpers.packets import mac

pytestmark = pytest.mark.integration

SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # asm-generic value


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
