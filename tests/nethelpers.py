# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers the integration tests share: raw frames, veth pairs, file
descriptor counts and the environment of child processes."""
from __future__ import annotations

import gc
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Optional

#: the package sources, for the PYTHONPATH of child processes
SRC = str(Path(__file__).resolve().parents[1] / "src")


def child_env() -> dict:
    """The environment for a child Python process that imports nfbind."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def open_fds() -> int:
    """How many file descriptors this process has open."""
    gc.collect()  # so that earlier tests' garbage does not move the count
    return len(os.listdir("/proc/self/fd"))


def veth(a, b, name_a: str, name_b: str) -> None:
    """A veth pair between the namespaces ``a`` and ``b``."""
    subprocess.run(["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
                    "peer", "name", name_b, "netns", b.name], check=True, capture_output=True)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def csum16(data: bytes) -> int:
    """The Internet checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """An IPv4/UDP packet with correct checksums (for raw frames)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(data)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + data
    c = csum16(s + d + struct.pack("!BBH", 0, 17, ulen) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0x4000, 64, 17, 0, s, d)
    return hdr[:10] + struct.pack("!H", csum16(hdr)) + hdr[12:] + udp


def ether(dst: str, src: str, l3: bytes, vlan_tci: Optional[int] = None) -> bytes:
    """An Ethernet frame carrying the IPv4 packet ``l3``, 802.1Q-tagged with
    ``vlan_tci`` if given."""
    hdr = mac(dst) + mac(src)
    if vlan_tci is not None:
        hdr += struct.pack("!HH", 0x8100, vlan_tci)
    return hdr + struct.pack("!H", 0x0800) + l3
