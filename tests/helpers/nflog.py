# SPDX-License-Identifier: GPL-2.0-or-later
"""What the NfLog tests (test_log_*.py) share: NFLOG and nft log rules, the
namespace's /proc/net/netfilter/nfnetlink_log, bounded receive loops, and
sockets and datagrams inside a test namespace."""
from __future__ import annotations

import importlib.util
import select
import socket
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from nfbind import Family, LogPacket, NfLog

#: ARPHRD_* link types the kernel reports as NFULA_HWTYPE
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
#: lo's all-zero Ethernet header, IPv4
LO_HWHDR = bytes(12) + b"\x08\x00"

#: whether pkt.scapy() can work (scapy is an optional extra)
HAVE_SCAPY = importlib.util.find_spec("scapy") is not None


def nflog(ns, chain: str, dport, group: int, *extra: str, proto: str = "udp",
          table: str = "filter", v6: bool = False) -> None:
    """``-A CHAIN -p PROTO --dport DPORT -j NFLOG --nflog-group GROUP EXTRA...``."""
    ns.iptables("-t", table, "-A", chain, "-p", proto, "--dport", str(dport),
                "-j", "NFLOG", "--nflog-group", str(group), *extra, v6=v6)


def nft(ns, tmp_path: Path, text: str) -> None:
    """Load the nft ruleset ``text`` into the namespace (``nft -f``)."""
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
    """Send each of ``payloads`` as one datagram to ``dst`` from inside ``ns``."""
    s = ns.socket(family)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for p in payloads:
            s.sendto(p, dst)
    finally:
        s.close()


def sysfs(n, path: str) -> str:
    """A /sys file as the namespace ``n`` sees it."""
    return n.run("cat", path).strip()
