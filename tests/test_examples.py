# SPDX-License-Identifier: GPL-2.0-or-later
"""Each script of examples/ run for real: in its own namespace, with the rule
from its header installed, real traffic sent, and the far side checked.

Every example runs as ``ip netns exec NS python examples/X.py --count N
--timeout T``; the process is ended by PID at teardown if it is still there.
"""
from __future__ import annotations

import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

from helpers.packets import csum16

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SRC = ROOT / "src"


class Example:
    """An example script running in a namespace; its stdout is read by a thread."""

    def __init__(self, ns, name: str, *args: str) -> None:
        # the examples flush their lines; unbuffered, every write reaches the
        # pipe as it is made, as on a terminal: a line written in two parts shows
        env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
        self.name = name
        self.proc = ns.popen(sys.executable, str(EXAMPLES / name), *args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.out: List[str] = []
        self.err: List[str] = []
        self._t = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                   threading.Thread(target=self._read, args=(self.proc.stderr, None), daemon=True)]
        for t in self._t:
            t.start()

    def _read(self, f, q) -> None:
        for line in f:
            line = line.rstrip("\n")
            if q is None:
                self.err.append(line)
            else:
                self.out.append(line)
                q.put(line)

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        """The first (next) stdout line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError("%s: no line matching %r; rc=%s\nstdout:\n%s\nstderr:\n%s" % (
            self.name, pattern, self.proc.poll(), "\n".join(self.out), "\n".join(self.err)))

    def finish(self, timeout: float = 15) -> List[str]:
        """Wait for the script to exit by itself (--count/--timeout); its stdout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("%s did not exit\nstdout:\n%s\nstderr:\n%s" % (
                self.name, "\n".join(self.out), "\n".join(self.err)))
        for t in self._t:
            t.join(5)
        assert rc == 0, "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            self.name, rc, "\n".join(self.out), "\n".join(self.err))
        return self.out


def run_once(ns, name: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    return subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def header_rules(name: str) -> str:
    """The comment block an example begins with."""
    text = (EXAMPLES / name).read_text()
    return "\n".join(l for l in text.splitlines() if l.startswith("#"))


def icmp_echo(ns, ident: int, seq: int, data: bytes = b"nfbind-example") -> bytes:
    """One ICMP echo to 127.0.0.1 over a raw socket (no ping needed); returns the reply's data."""
    s = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.settimeout(5)
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
        s.sendto(body[:2] + struct.pack("!H", csum16(body)) + body[4:], ("127.0.0.1", 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pkt = s.recv(2000)
            icmp = pkt[(pkt[0] & 15) * 4:]
            if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                return icmp[8:]
        raise AssertionError("no echo reply")
    finally:
        s.close()


def udp_pair(ns, port: int, src: str = "127.0.0.1", dst: str = "127.0.0.1"):
    """(sender, receiver) UDP sockets in ``ns``; the receiver listens on ``port``."""
    r = ns.socket()
    r.bind((dst, port))
    r.settimeout(2)
    s = ns.socket()
    s.bind((src, 0))
    return s, r


def recv_all(sock: socket.socket, first: float = 5.0, quiet: float = 0.5,
             limit: Optional[int] = None) -> List[bytes]:
    """What ``sock`` receives: waits up to ``first`` s for a packet, then until
    quiet for ``quiet`` s, or until ``limit`` packets came (a test that knows
    how many to expect gives it, and a generous ``quiet``: a slow consumer
    then costs time, never a packet)."""
    sock.settimeout(first)
    out = []
    while limit is None or len(out) < limit:
        try:
            out.append(sock.recv(2000))
        except socket.timeout:
            return out
        sock.settimeout(quiet)
    return out


def track(ns) -> None:
    """The conntrack rule of the conntrack examples' headers."""
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED", "-j", "ACCEPT")


def conntrack_l(ns) -> str:
    return ns.run("conntrack", "-L", check=False)


# -- NFLOG -----------------------------------------------------------------------------------------


def test_nflog_print(ns):
    assert "--nflog-group 5" in header_rules("nflog_print.py")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "NFLOG",
                "--nflog-group", "5", "--nflog-prefix", "udp9999 ")
    ex = Example(ns, "nflog_print.py", "--group", "5", "--count", "3", "--timeout", "15")
    ex.wait_for("listening on NFLOG group 5")
    s, r = udp_pair(ns, 9999)
    with s, r:
        for i in range(3):
            s.sendto(b"log-me-%d" % i, ("127.0.0.1", 9999))
        got = recv_all(r, quiet=5.0, limit=3)
    out = ex.finish()
    # the far side: logging holds nothing back
    assert got == [b"log-me-0", b"log-me-1", b"log-me-2"]
    lines = [l for l in out if l.startswith("group=")]
    assert len(lines) == 3, out
    for l in lines:
        assert "group=5 prefix='udp9999 ' in=lo out=None" in l
        assert re.search(r"IP / UDP 127\.0\.0\.1:\d+ > 127\.0\.0\.1:9999 / Raw", l), l
    assert out[-1] == "3 packets"


# -- NFQUEUE ---------------------------------------------------------------------------------------


def test_nfqueue_print_accept(ns):
    assert "-p icmp -j NFQUEUE --queue-num 100" in header_rules("nfqueue_print_accept.py")
    ns.iptables("-A", "INPUT", "-p", "icmp", "-j", "NFQUEUE", "--queue-num", "100")
    ex = Example(ns, "nfqueue_print_accept.py", "--count", "4", "--timeout", "15")
    ex.wait_for("listening on queue 100")
    # two pings: request and reply both pass INPUT on loopback, four packets
    assert icmp_echo(ns, 0x4242, 1) == b"nfbind-example"
    assert icmp_echo(ns, 0x4242, 2) == b"nfbind-example"
    out = ex.finish()
    rows = [l.split("\t") for l in out if "\t" in l]
    assert len(rows) == 4, out
    ids = [int(i) for i, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == 4
    for _, hexdata in rows:
        data = bytes.fromhex(hexdata)
        assert data[0] >> 4 == 4 and data[9] == 1  # IPv4, ICMP
        assert data.endswith(b"nfbind-example")
    # types in order: echo request, echo reply, twice
    assert [bytes.fromhex(h)[20] for _, h in rows] == [8, 0, 8, 0]
    assert out[-1] == "4 packets"


def test_nfqueue_firewall(ns):
    hdr = header_rules("nfqueue_firewall.py")
    assert "-t mangle -A INPUT -p udp --dport 7000:7002 -j NFQUEUE --queue-num 1" in hdr
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "7000:7002",
                "-j", "NFQUEUE", "--queue-num", "1")
    ns.iptables("-A", "INPUT", "-m", "mark", "--mark", "0x2a", "-m", "comment", "--comment", "marked")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "7000", "-m", "comment", "--comment", "port7000")
    ex = Example(ns, "nfqueue_firewall.py", "--count", "6", "--timeout", "15")
    ex.wait_for("listening on queue 1")
    socks = {p: udp_pair(ns, p) for p in (7000, 7001, 7002)}
    try:
        for i in range(2):
            for p, (s, _) in socks.items():
                s.sendto(b"hello %d to %d" % (i, p), ("127.0.0.1", p))
        # the dropped port last, with a short wait: the others are in by then
        # (the example decides in order: once 7001 and 7002 have theirs, the
        # drops for 7000, sent before them, are decided too)
        got = {p: recv_all(socks[p][1], quiet=5.0, limit=2) for p in (7001, 7002)}
        got[7000] = recv_all(socks[7000][1], first=0.5)
    finally:
        for s, r in socks.values():
            s.close()
            r.close()
    out = ex.finish()
    # the far side: dropped ones never arrive, marked ones arrive and were
    # counted by the -m mark rule, rewritten ones arrive rewritten
    assert got[7000] == []
    assert ns.counter("INPUT", "port7000") == 0
    assert got[7001] == [b"hello 0 to 7001", b"hello 1 to 7001"]
    assert ns.counter("INPUT", "marked") == 2
    assert got[7002] == [b"HELLO 0 TO 7002", b"HELLO 1 TO 7002"]
    verbs = [l.split()[0] for l in out[1:-1]]
    assert sorted(verbs) == ["drop"] * 2 + ["mark"] * 2 + ["rewrite"] * 2, out
    assert any(l.startswith("rewrite b'hello 0 to 7002' -> b'HELLO 0 TO 7002' port=7002")
               for l in out), out
    assert sum(l.startswith("drop    port=7000 IP / UDP") for l in out) == 2, out
    assert any(l.startswith("mark    0x2a port=7001 IP / UDP") for l in out), out
    assert out[-1] == "6 packets"


def test_nfqueue_asyncio(ns):
    assert "--dport 7100 -j NFQUEUE --queue-num 2" in header_rules("nfqueue_asyncio.py")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "7100", "-j", "NFQUEUE", "--queue-num", "2")
    ex = Example(ns, "nfqueue_asyncio.py", "--count", "5", "--timeout", "15")
    ex.wait_for("listening on queue 2")
    s, r = udp_pair(ns, 7100)
    with s, r:
        for i in range(5):
            s.sendto(b"x" * (10 + i), ("127.0.0.1", 7100))
        got = recv_all(r, quiet=5.0, limit=5)
    out = ex.finish()
    assert got == [b"x" * (10 + i) for i in range(5)]
    rows = [l.split() for l in out if re.match(r"\d+ lo \d+ bytes$", l)]
    assert [int(n) for _, _, n, _ in rows] == [28 + 10 + i for i in range(5)], out
    assert out[-1] == "5 packets"


def test_nfqueue_multi_queue(ns):
    assert "-j NFQUEUE --queue-balance 0:1" in header_rules("nfqueue_multi_queue.py")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "7200:7299", "-j", "NFQUEUE",
                "--queue-balance", "0:1")
    n = 40  # the kernel hashes the addresses: 40 sources land in both queues
    ex = Example(ns, "nfqueue_multi_queue.py", "--queues", "0:1", "--count", str(n), "--timeout", "20")
    ex.wait_for("listening on queues 0, 1")
    r = ns.socket()
    r.bind(("127.0.0.1", 7200))
    senders = []
    try:
        for i in range(n):
            s = ns.socket()
            senders.append(s)
            s.bind(("127.0.0.%d" % (10 + i), 0))
            s.sendto(b"from %d" % i, ("127.0.0.1", 7200))
        got = recv_all(r, quiet=5.0, limit=n)
    finally:
        r.close()
        for s in senders:
            s.close()
    out = ex.finish()
    assert sorted(got) == sorted(b"from %d" % i for i in range(n))
    per_queue = {0: set(), 1: set()}
    for l in out:
        m = re.match(r"queue (\d) pid (\d+): id \d+ IP / UDP (127\.0\.0\.\d+):", l)
        if m:
            per_queue[int(m.group(1))].add((int(m.group(2)), m.group(3)))
    assert all(per_queue.values()), out  # both queues got packets ...
    pids = {q: {pid for pid, _ in v} for q, v in per_queue.items()}
    assert len(pids[0]) == len(pids[1]) == 1 and pids[0] != pids[1]  # ... each in its own process
    srcs = [{a for _, a in v} for v in per_queue.values()]
    assert not (srcs[0] & srcs[1]) and len(srcs[0] | srcs[1]) == n, "\n".join(out)  # one source, one queue
    # every line whole: two workers share stdout, and each line must be one write
    # (with PYTHONUNBUFFERED, print() writes the text and the newline separately)
    shapes = (r"listening on queues 0, 1", r"queue [01] pid \d+: id \d+ IP / UDP .* / Raw",
              r"queue [01]: worker done", r"%d packets" % n)
    mixed = [l for l in out if not any(re.fullmatch(p, l) for p in shapes)]
    assert not mixed, "lines of two writers mixed:\n" + "\n".join(out)
    assert out.count("queue 0: worker done") == out.count("queue 1: worker done") == 1, out
    assert out[-1] == "%d packets" % n
    # the workers closed their queues: nobody is bound any more
    assert ns.queue_proc() == {}


# -- conntrack -------------------------------------------------------------------------------------


def test_conntrack_update_mark(ns):
    assert "--ctstate NEW,ESTABLISHED,RELATED" in header_rules("conntrack_update_mark.py")
    track(ns)
    s, r = udp_pair(ns, 7300)
    with s, r:
        s.sendto(b"ping", ("127.0.0.1", 7300))
        assert r.recv(100) == b"ping"
        sport = s.getsockname()[1]
        res = run_once(ns, "conntrack_update_mark.py", "--mark", "0x1234", "--proto", "udp")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines == ["before: udp 127.0.0.1:%d -> 127.0.0.1:7300 mark=0" % sport,
                     "after:  udp 127.0.0.1:%d -> 127.0.0.1:7300 mark=4660" % sport], lines
    # the far side: conntrack-tools sees the new mark
    table = conntrack_l(ns)
    row = [l for l in table.splitlines() if "dport=7300" in l]
    assert len(row) == 1 and "mark=4660" in row[0], table


def test_conntrack_events(ns):
    assert "--ctstate NEW,ESTABLISHED,RELATED" in header_rules("conntrack_events.py")
    track(ns)
    ex = Example(ns, "conntrack_events.py", "--count", "3", "--timeout", "15")
    ex.wait_for("listening for NEW, UPDATE, DESTROY events")
    s, r = udp_pair(ns, 7400)
    with s, r:
        s.sendto(b"ping", ("127.0.0.1", 7400))
        data, peer = r.recvfrom(100)
        r.sendto(b"pong", peer)  # the reply: an UPDATE (SEEN_REPLY)
        assert s.recv(100) == b"pong"
        sport = s.getsockname()[1]
    # DESTROY, by conntrack-tools
    ns.run("conntrack", "-D", "-p", "udp", "--dport", "7400")
    out = ex.finish()
    ev = [l for l in out if re.match(r"(NEW|UPDATE|DESTROY) ", l)]
    assert [l.split()[0] for l in ev] == ["NEW", "UPDATE", "DESTROY"], out
    for l in ev:
        assert "udp 127.0.0.1:%d -> 127.0.0.1:7400" % sport in l, l
    assert out[-1] == "3 events"


def test_conntrack_labels(ns, tmp_path):
    hdr = header_rules("conntrack_labels.py")
    assert "-m connlabel --label 3" in hdr
    track(ns)
    ns.iptables("-A", "OUTPUT", "-m", "connlabel", "--label", "3", "-m", "comment", "--comment", "lbl3")
    conf = tmp_path / "connlabel.conf"
    conf.write_text("3 suspicious\n9 vip\n")
    s, r = udp_pair(ns, 7500)
    with s, r:
        s.sendto(b"ping", ("127.0.0.1", 7500))
        assert r.recv(100) == b"ping"
        assert ns.counter("OUTPUT", "lbl3") == 0
        # by bit, without any connlabel.conf
        res = run_once(ns, "conntrack_labels.py", "--dport", "7500", "--bit", "3",
                       "--labelmap", str(tmp_path / "absent.conf"))
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].startswith("flow:   udp 127.0.0.1:")
        assert lines[1:] == ["before: labels=[]", "after:  labels=[3]"]
        # by name (and bit) with one
        res = run_once(ns, "conntrack_labels.py", "--dport", "7500", "--name", "vip", "--bit", "100",
                       "--labelmap", str(conf))
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[1:] == [
            "before: labels=[3]", "after:  labels=[3, 9, 100]", "names:  ['suspicious', 'vip']"]
        # the far side: the kernel's own connlabel match sees label 3
        s.sendto(b"again", ("127.0.0.1", 7500))
        assert r.recv(100) == b"again"
        assert ns.counter("OUTPUT", "lbl3") == 1
    # a name without connlabel.conf: one clear line, no traceback
    res = run_once(ns, "conntrack_labels.py", "--name", "vip", "--labelmap", str(tmp_path / "absent.conf"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "BIT NAME" in res.stderr
