# SPDX-License-Identifier: GPL-2.0-or-later
"""The device attributes of logged packets on veth pairs and bridges between
the test's own namespaces: input/output devices, hwtype, hwaddr and the
link-layer header, ARP-family packets, bridge ports (physindev,
physoutdev) and what only bridge-family log rules send (l2hdr, vlan).

Each test makes its own namespace(s), installs its own rules, sends real
packets on loopback or on veth pairs between its own namespaces, and asserts
on what the kernel reported.  What this kernel (6.18, iptables-nft, no
CONFIG_NETFILTER_NETLINK_GLUE_CT, no CONFIG_VLAN_8021Q) does is written next
to each assertion.
"""
from __future__ import annotations

import socket

import pytest

from nfbind import Family, Hook, NfLog, Vlan

from helpers.netns import veth
from helpers.nflog import (
    ARPHRD_ETHER, HAVE_SCAPY, collect, nflog, nft, quiet, send, sock, sysfs, udp_data,
)
from helpers.packets import ether, ipv4_udp, mac

pytestmark = pytest.mark.integration


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
