# SPDX-License-Identifier: GPL-2.0-or-later
"""Raw frames with correct checksums, and receiving what a socket gets."""
from __future__ import annotations

import socket
import struct
import time
from typing import List, Optional


def mac(text: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` as 6 bytes."""
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


def udp_data(ip: bytes) -> bytes:
    """The UDP payload of an IPv4 packet, or of an IPv6 one without
    extension headers."""
    if ip[0] >> 4 == 6:
        return ip[40 + 8:]
    return ip[(ip[0] & 0x0F) * 4 + 8:]


def recv_all(sock: socket.socket, timeout: float = 1.0, limit: int = 100000) -> List[bytes]:
    """Everything ``sock`` receives until it has been quiet for ``timeout``
    (at most ``limit`` datagrams, at most 60 s)."""
    sock.settimeout(timeout)
    out: List[bytes] = []
    deadline = time.monotonic() + 60
    while len(out) < limit and time.monotonic() < deadline:
        try:
            out.append(sock.recv(70000))
        except (socket.timeout, BlockingIOError):
            break
    return out
