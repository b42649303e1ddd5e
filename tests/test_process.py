# SPDX-License-Identifier: GPL-2.0-or-later
"""pkt.process(): the local process whose socket sent or will receive a
queued (or logged) packet.

Senders and receivers are separate processes started by the test in its own
namespace (the receiver as ``nobody``); the queue runs in this process with
``netns=``.  The rules queue the packets to the receiver's port at OUTPUT
(the sender's socket) and at INPUT (the receiver's: for TCP the listener for
the SYN and the handshake's last ACK, the accepted socket for data sent after
the listener was closed).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import pytest

import nfbind
from nfbind import Hook, NfLog, NfQueue, Process, Verdict
from nfbind import process as proc_mod
from helpers.netns import NetNS, veth
from helpers.procs import child_env

QN = 23
NOBODY = 65534
EXE = os.path.realpath(sys.executable)

#: one child: "recv" binds and receives, "send" sends; each holds its socket
#: until a line arrives on stdin; "send-exit" sends one datagram and exits
CHILD = r"""
import os, socket, sys
role, fam, proto, addr, port, sport, uid = sys.argv[1:8]
port, sport, uid = int(port), int(sport), int(uid)
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(af, kind)
s.settimeout(10)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if role == "recv":
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
        print("READY", flush=True)
        c, _ = s.accept()
        s.close()                      # later segments: the accepted socket only
        c.settimeout(10)
        c.sendall(b"go")
        print("GOT", c.recv(100).decode(), flush=True)
    else:
        print("READY", flush=True)
        print("GOT", s.recvfrom(100)[0].decode(), flush=True)
else:
    s.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", sport))
    if kind == socket.SOCK_STREAM:
        s.connect((addr, port))
        assert s.recv(2) == b"go"
        s.sendall(b"data")
    else:
        s.sendto(b"data", (addr, port))
    if role == "send-exit":
        os._exit(0)
    print("SENT", flush=True)
sys.stdin.readline()
"""


def start(ns: NetNS, role: str, fam: str, proto: str, addr: str, port: int, sport: int = 0,
          uid: int = 0) -> subprocess.Popen:
    """A child in ``ns`` (``ip netns exec`` execs it: its pid is the child's)."""
    return ns.popen(sys.executable, "-c", CHILD, role, fam, proto, addr, str(port),
                    str(sport), str(uid), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, env=child_env())


def expect_line(p: subprocess.Popen, word: str, timeout: float = 10.0) -> str:
    """The child's next output line, which must start with ``word``."""
    result: List[str] = []
    t = threading.Thread(target=lambda: result.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert result and result[0].startswith(word), (word, result, p.poll())
    return result[0]


def release(*procs: subprocess.Popen) -> None:
    """Tell the children to exit, and wait for them (bounded)."""
    for p in procs:
        try:
            p.stdin.write("\n")
            p.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
    for p in procs:
        p.wait(10)


class Recorder:
    """Runs a queue in a thread; the handler records what ``look(pkt)``
    returned for each packet, then accepts it."""

    def __init__(self, q: NfQueue,
                 look: Callable[[nfbind.Packet], object] = lambda p: p.process()) -> None:
        self.q = q
        self.look = look
        self.seen: List[Tuple[int, bytes, object]] = []
        self.errors: List[BaseException] = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        def handler(pkt: nfbind.Packet) -> Verdict:
            try:
                self.seen.append((int(pkt.hook), pkt.payload, self.look(pkt)))
            except BaseException as e:  # reported by the test
                self.errors.append(e)
            return Verdict.ACCEPT
        try:
            self.q.run(handler)
        except BaseException as e:
            self.errors.append(e)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred() and time.monotonic() < deadline and not self.errors:
            time.sleep(0.01)
        assert not self.errors, self.errors
        assert pred(), self.seen

    def stop(self) -> None:
        self.q.stop()
        self.t.join(10)
        assert not self.t.is_alive()
        assert not self.errors, self.errors


def tcp_info(payload: bytes, v6: bool) -> Tuple[int, int]:
    """(flags, data length) of the TCP segment in an IPv4/IPv6 packet
    without extension headers."""
    off = 40 if v6 else (payload[0] & 0x0F) * 4
    doff = (payload[off + 12] >> 4) * 4
    return payload[off + 13], len(payload) - off - doff


# -- one test per family and protocol -------------------------------------------------

CASES = [("4", "udp", "127.0.0.1"), ("6", "udp", "::1"),
         ("4", "tcp", "127.0.0.1"), ("6", "tcp", "::1")]


@pytest.mark.integration
@pytest.mark.parametrize("fam,proto,addr", CASES, ids=["v4-udp", "v6-udp", "v4-tcp", "v6-tcp"])
def test_sender_and_receiver(ns: NetNS, fam: str, proto: str, addr: str) -> None:
    v6 = fam == "6"
    port, sport = 5301, 5302
    for chain in ("OUTPUT", "INPUT"):
        ns.iptables("-A", chain, "-p", proto, "--dport", str(port), "-j", "NFQUEUE",
                    "--queue-num", str(QN), v6=v6)
    with NfQueue(QN, netns=ns.name) as q:
        rec = Recorder(q)
        recv = start(ns, "recv", fam, proto, addr, port, uid=NOBODY)
        expect_line(recv, "READY")
        send = start(ns, "send", fam, proto, addr, port, sport)
        expect_line(send, "SENT")
        assert expect_line(recv, "GOT").split()[1] == "data"
        if proto == "udp":
            rec.wait_for(lambda: len(rec.seen) >= 2)
        else:  # SYN, ACK, data (and the FIN's segments when they come)
            rec.wait_for(lambda: sum(1 for h, pl, _ in rec.seen
                                     if h == Hook.LOCAL_IN and tcp_info(pl, v6)[1]) >= 1)
        rec.stop()
        release(recv, send)
    out = [(h, pl, p) for h, pl, p in rec.seen if h == Hook.LOCAL_OUT]
    inp = [(h, pl, p) for h, pl, p in rec.seen if h == Hook.LOCAL_IN]
    assert out and inp
    for _, _, p in out:  # the sender, as root
        assert isinstance(p, Process) and p.pid == send.pid and p.uid == 0, (p, send.pid)
        assert p.exe == EXE and p.cmdline[:2] == (sys.executable, "-c")
        assert p.cmdline[3:6] == ("send", fam, proto)
    for _, _, p in inp:  # the receiver, as nobody
        assert isinstance(p, Process) and p.pid == recv.pid and p.uid == NOBODY, (p, recv.pid)
        assert p.exe == EXE and p.cmdline[3:6] == ("recv", fam, proto)
    if proto == "tcp":
        flags = [tcp_info(pl, v6) for _, pl, _ in inp]
        assert flags[0][0] & 0x02  # the SYN: found as the listener
        assert any(n for _, n in flags)  # data after the listener closed: the accepted socket


@pytest.mark.integration
def test_logged_packet(ns: NetNS) -> None:
    """NFLOG: the lookup runs when asked, here while the sender still lives."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", "5311", "-j", "NFLOG",
                "--nflog-group", str(QN))
    with NfLog(QN, netns=ns.name) as log:
        recv = start(ns, "recv", "4", "udp", "127.0.0.1", 5311)
        expect_line(recv, "READY")
        send = start(ns, "send", "4", "udp", "127.0.0.1", 5311, 5312)
        expect_line(send, "SENT")
        got: List[object] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            log.run(lambda pkt: got.append(pkt.process()) or log.stop(), timeout=1.0)
        release(recv, send)
        diag = proc_mod._lookups[log]._diag
        assert diag is not None and diag.sock.fileno() >= 0
    assert got and isinstance(got[0], Process) and got[0].pid == send.pid
    # the lookup's sock_diag socket (it holds the namespace) closed with the log
    assert diag.sock.fileno() == -1 and proc_mod._lookups[log]._closed


@pytest.mark.integration
def test_process_gone(ns: NetNS) -> None:
    """The sender exits while its datagram waits in the queue: None."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", "5321", "-j", "NFQUEUE",
                "--queue-num", str(QN))
    children: Dict[str, subprocess.Popen] = {}

    def look(pkt: nfbind.Packet) -> object:
        children["send"].wait(10)  # gone before the lookup
        return pkt.process()

    with NfQueue(QN, netns=ns.name) as q:
        rec = Recorder(q, look)
        children["send"] = start(ns, "send-exit", "4", "udp", "127.0.0.1", 5321, 5322)
        rec.wait_for(lambda: len(rec.seen) >= 1)
        rec.stop()
    assert children["send"].returncode == 0
    assert rec.seen[0][2] is None


@pytest.mark.integration
def test_forwarded_is_none(ns: NetNS, more_ns: Callable[[], NetNS]) -> None:
    """A packet routed through the namespace has no local process, also where
    a local socket is bound to the wildcard address and both its ports."""
    a, b = more_ns(), more_ns()
    veth(a, ns, "pa0", "pra")
    veth(ns, b, "prb", "pb0")
    a.run("ip", "addr", "add", "10.91.1.2/24", "dev", "pa0")
    a.run("ip", "link", "set", "pa0", "up")
    a.run("ip", "route", "add", "default", "via", "10.91.1.1")
    b.run("ip", "addr", "add", "10.91.2.2/24", "dev", "pb0")
    b.run("ip", "link", "set", "pb0", "up")
    b.run("ip", "route", "add", "default", "via", "10.91.2.1")
    ns.run("ip", "addr", "add", "10.91.1.1/24", "dev", "pra")
    ns.run("ip", "addr", "add", "10.91.2.1/24", "dev", "prb")
    ns.run("ip", "link", "set", "pra", "up")
    ns.run("ip", "link", "set", "prb", "up")
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for table, chain in (("filter", "FORWARD"), ("mangle", "POSTROUTING")):
        ns.iptables("-t", table, "-A", chain, "-p", "udp", "--dport", "5331", "-j", "NFQUEUE",
                    "--queue-num", str(QN))
    # wildcard sockets on the router on both ports: a lookup by ports alone
    # would take the forwarded packet for theirs
    traps = [ns.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    rx = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        traps[0].bind(("0.0.0.0", 5331))
        traps[1].bind(("0.0.0.0", 5332))
        rx.bind(("10.91.2.2", 5331))
        rx.settimeout(5)
        tx.bind(("10.91.1.2", 5332))
        with NfQueue(QN, netns=ns.name) as q:
            rec = Recorder(q)
            tx.sendto(b"through", ("10.91.2.2", 5331))
            assert rx.recvfrom(100)[0] == b"through"
            rec.wait_for(lambda: len(rec.seen) >= 2)
            rec.stop()
    finally:
        for s in traps + [rx, tx]:
            s.close()
    assert sorted(h for h, _, _ in rec.seen) == [Hook.FORWARD, Hook.POST_ROUTING]
    assert [p for _, _, p in rec.seen] == [None, None]


@pytest.mark.integration
def test_pid_reuse_and_cache(ns: NetNS) -> None:
    """A cached entry is used only while its pid's descriptor still holds the
    socket, and process details only for the same (pid, start time)."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", "5341", "-j", "NFQUEUE",
                "--queue-num", str(QN))
    owners = proc_mod._owners
    recv = start(ns, "recv", "4", "udp", "127.0.0.1", 5341)
    expect_line(recv, "READY")
    other = start(ns, "recv", "4", "udp", "127.0.0.1", 5349)  # another live process
    expect_line(other, "READY")
    tampered: Dict[str, object] = {}

    def look(pkt: nfbind.Packet) -> object:
        first = pkt.process()
        assert isinstance(first, Process)
        inode = next(i for i, (pid, _, _) in owners.by_inode.items() if pid == first.pid)
        pid, fd, _ = owners.by_inode[inode]
        # the pid now names another process (here: another live one, whose
        # descriptor fd is not this socket), with a stale record cached
        stale = Process(other.pid, 1234, "/stale", ("stale",))
        owners.by_inode[inode] = (other.pid, fd, stale)
        scans = owners.scans
        second = pkt.process()
        tampered.update(first=first, second=second, rescanned=owners.scans - scans)
        # the same pid with another start time: the details are read again
        owners.procs.clear()
        owners.procs[(pid, -1)] = stale
        owners.by_inode[inode] = (pid, fd, None)
        tampered["third"] = pkt.process()
        return first

    with NfQueue(QN, netns=ns.name) as q:
        rec = Recorder(q, look)
        send = start(ns, "send", "4", "udp", "127.0.0.1", 5341, 5342)
        expect_line(send, "SENT")
        rec.wait_for(lambda: len(rec.seen) >= 1)
        rec.stop()
        other.kill()  # it waits for a datagram that never comes
        other.wait(10)
        release(recv, send)
    first = tampered["first"]
    assert isinstance(first, Process) and first.pid == send.pid
    assert tampered["second"] == first
    assert tampered["rescanned"] == 1
    assert tampered["third"] == first


# -- without a kernel ---------------------------------------------------------------


def test_headers_not_copied() -> None:
    """A META packet (no payload) or one cut before the ports: ValueError
    naming the fix, before any lookup."""
    with pytest.raises(ValueError, match="copy_mode=CopyMode.PACKET"):
        proc_mod.process_of(b"", int(nfbind.Family.IPV4), int(Hook.LOCAL_OUT), None, 1, None)
    hdr = bytes([0x45]) + bytes(8) + bytes([17]) + bytes(10)  # IPv4, UDP, no ports
    with pytest.raises(ValueError, match="only 20 bytes"):
        proc_mod.endpoints(hdr, int(nfbind.Family.IPV4))


def test_endpoints() -> None:
    scapy = pytest.importorskip("scapy.all")
    IP, IPv6, UDP, TCP, ICMP = scapy.IP, scapy.IPv6, scapy.UDP, scapy.TCP, scapy.ICMP
    v4, v6 = int(nfbind.Family.IPV4), int(nfbind.Family.IPV6)
    a4, b4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    assert proc_mod.endpoints(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)),
                              v4) == (socket.AF_INET, 17, a4, 1, b4, 2)
    assert proc_mod.endpoints(bytes(IP() / ICMP()), v4) is None
    later = IP(src="10.0.0.1", dst="10.0.0.2", frag=10) / UDP(sport=1, dport=2)
    assert proc_mod.endpoints(bytes(later), v4) is None
    ext = (IPv6(src="fd00::1", dst="fd00::2") / scapy.IPv6ExtHdrHopByHop()
           / scapy.IPv6ExtHdrDestOpt() / scapy.IPv6ExtHdrFragment(offset=0)
           / TCP(sport=3, dport=4))
    a6, b6 = socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(socket.AF_INET6,
                                                                             "fd00::2")
    assert proc_mod.endpoints(bytes(ext), v6) == (socket.AF_INET6, 6, a6, 3, b6, 4)
    frag = IPv6() / scapy.IPv6ExtHdrFragment(offset=5) / UDP()
    assert proc_mod.endpoints(bytes(frag), v6) is None


def test_forward_hook_is_none_without_lookup() -> None:
    # FORWARD, and POSTROUTING of a packet that came in on an interface:
    # None before the channel (here: none) is even asked
    pl = bytes([0x45]) + bytes(8) + bytes([17]) + bytes(14)
    assert proc_mod.process_of(pl, int(nfbind.Family.IPV4), int(Hook.FORWARD), 2, 3,
                               None) is None
    assert proc_mod.process_of(pl, int(nfbind.Family.IPV4), int(Hook.POST_ROUTING), 2, 3,
                               None) is None


def test_process_record() -> None:
    p = Process(1, 0, "/sbin/init", ("init",))
    with pytest.raises(AttributeError):
        p.pid = 2  # type: ignore[misc]
    assert not hasattr(p, "__dict__")
    assert nfbind.Process is Process and "Process" in nfbind.__all__
