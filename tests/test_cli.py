# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``nfbind`` command, run as a subprocess (``python -m nfbind``) against
real traffic in throw-away network namespaces.

Every process has a timeout; processes left running are killed by PID at
teardown (the ``ns`` fixture).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

pytestmark = pytest.mark.integration

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           PYTHONUNBUFFERED="1")
NFB = [sys.executable, "-m", "nfbind"]


def nfb(*args: str, timeout: float = 20, prefix: Optional[List[str]] = None,
        ) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), *NFB, *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def popen(ns, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([*NFB, *args, "--netns", ns.name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    ns.procs.append(p)
    return p


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def wait_bound(ns, proc: subprocess.Popen, path: str, num: int) -> None:
    """Until /proc/net/netfilter/<path> of the namespace lists queue/group ``num``."""
    def bound() -> bool:
        if proc.poll() is not None:
            raise AssertionError("nfbind exited early (%s): %s" % (proc.returncode,
                                                                  proc.stderr.read()))
        out = ns.run("cat", "/proc/net/netfilter/" + path)
        return any(line.split() and int(line.split()[0]) == num for line in out.splitlines())
    wait_for(bound, "%s %d to be bound" % (path, num), 15)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def send_udp(ns, port: int, payloads: List[bytes], sport: int = 0) -> None:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sport:
            s.bind(("127.0.0.1", sport))
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            time.sleep(0.01)
    finally:
        s.close()


def finish(p: subprocess.Popen, timeout: float = 15) -> tuple:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


# -- log --------------------------------------------------------------------------------------


@pytest.fixture
def log_ns(ns):
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "5555", "-j", "NFLOG",
                "--nflog-group", "7", "--nflog-prefix", "clitest")
    return ns


def test_log_lines_and_sigint_summary(log_ns):
    ns = log_ns
    p = popen(ns, "log", "7")
    wait_bound(ns, p, "nfnetlink_log", 7)
    send_udp(ns, 5555, [b"one", b"two", b"three"])
    lines = [p.stdout.readline() for _ in range(3)]
    for line in lines:
        assert "group 7" in line and "'clitest'" in line and "in=lo" in line, lines
        assert "127.0.0.1" in line and "UDP" in line.upper(), lines
    p.send_signal(signal.SIGINT)
    rc, out, err = finish(p)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "3 packets" in err and err.strip().count("\n") == 0, err


def test_log_json_and_pcap(log_ns, tmp_path):
    ns = log_ns
    pcap = tmp_path / "out.pcap"
    p = popen(ns, "log", "7", "--json", "--pcap", str(pcap), "--count", "4")
    wait_bound(ns, p, "nfnetlink_log", 7)
    send_udp(ns, 5555, [b"pkt%d" % i for i in range(4)])
    rc, out, err = finish(p)
    assert rc == 0, err
    objs = [json.loads(l) for l in out.splitlines()]
    assert len(objs) == 4
    assert {o["prefix"] for o in objs} == {"clitest"}
    assert {o["group"] for o in objs} == {7}
    assert [bytes.fromhex(o["payload"])[-4:] for o in objs] == [b"pkt%d" % i for i in range(4)]
    data = pcap.read_bytes()
    magic, vmaj, vmin, _, _, snap, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, vmaj, vmin, linktype) == (0xA1B2C3D4, 2, 4, 101)
    off, n = 24, 0
    while off < len(data):
        _, _, incl, orig = struct.unpack_from("<IIII", data, off)
        assert data[off + 16] >> 4 == 4  # an IPv4 header
        off += 16 + incl
        n += 1
    assert off == len(data) and n == 4
    if shutil.which("tcpdump"):
        r = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("> 127.0.0.1.5555:") == 4, r.stdout


# -- queue ------------------------------------------------------------------------------------


@pytest.fixture
def queue_ns(ns):
    # queued in mangle, counted afterwards in filter (an ACCEPT verdict leaves the table)
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "6000", "-j", "NFQUEUE",
                "--queue-num", "3")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "6000", "-m", "mark", "--mark", "7",
                "-m", "comment", "--comment", "marked")
    return ns


def run_queue(ns, args: List[str], payloads: List[bytes]) -> tuple:
    rx = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 6000))
    try:
        p = popen(ns, "queue", "3", "--count", str(len(payloads)), *args)
        wait_bound(ns, p, "nfnetlink_queue", 3)
        send_udp(ns, 6000, payloads)
        rc, out, err = finish(p)
        rx.settimeout(0.3)
        got = []
        try:
            while True:
                got.append(rx.recv(2000))
        except socket.timeout:
            pass
    finally:
        rx.close()
    return rc, out, err, got


def test_queue_accept_with_mark(queue_ns):
    rc, out, err, got = run_queue(queue_ns, ["--mark", "7"], [b"a", b"b", b"c"])
    assert rc == 0, err
    assert got == [b"a", b"b", b"c"]
    assert out.count("-> ACCEPT mark=0x7") == 3, out
    assert queue_ns.counter("INPUT", "marked") == 3


def test_queue_drop_and_busy(queue_ns):
    ns = queue_ns
    rx = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 6000))
    try:
        p = popen(ns, "queue", "3", "--verdict", "drop", "--count", "2", "--json")
        wait_bound(ns, p, "nfnetlink_queue", 3)
        # a second consumer of the same queue: one line naming the problem
        r = nfb("queue", "3", "--netns", ns.name)
        assert r.returncode not in (0, 2)
        line = one_error_line(r)
        assert line.startswith("nfbind: error:") and "queue 3" in line, line
        assert "another" in line.lower() or "busy" in line.lower() or "already" in line.lower()
        send_udp(ns, 6000, [b"x", b"y"])
        rc, out, err = finish(p)
        assert rc == 0, err
        decisions = [json.loads(l) for l in out.splitlines()]
        assert [d["verdict"] for d in decisions] == ["DROP", "DROP"]
        rx.settimeout(0.3)
        with pytest.raises(socket.timeout):
            rx.recv(100)
    finally:
        rx.close()


def test_queue_hook_file(queue_ns, tmp_path):
    hook = tmp_path / "myhook.py"
    hook.write_text(
        "def decide(pkt):\n"
        "    if pkt.payload.endswith(b'bad'):\n"
        "        return 'drop'\n"
        "    if pkt.payload.endswith(b'boom'):\n"
        "        raise RuntimeError('boom')\n"
        "    return 'accept', 7\n")
    rc, out, err, got = run_queue(queue_ns, ["--hook", "%s:decide" % hook],
                                  [b"good", b"bad", b"boom", b"fine"])
    assert rc == 0, err
    assert got == [b"good", b"boom", b"fine"]  # the hook's error: the --verdict (accept)
    assert out.count("-> DROP") == 1 and out.count("-> ACCEPT") == 3, out
    assert "hook raised RuntimeError: boom" in err and "Traceback" not in err
    assert queue_ns.counter("INPUT", "marked") == 2


def test_queue_hook_rewrites_with_scapy(queue_ns, tmp_path):
    pytest.importorskip("scapy")
    (tmp_path / "rewriter.py").write_text(
        "from scapy.packet import Raw\n"
        "def hook(pkt):\n"
        "    p = pkt.scapy()\n"
        "    p[Raw].load = p[Raw].load.upper() + b'!'\n"
        "    return p\n")
    rc, out, err, got = run_queue(queue_ns, ["--hook", str(tmp_path / "rewriter.py")],
                                  [b"abc", b"xyz"])
    assert rc == 0, err
    assert got == [b"ABC!", b"XYZ!"]
    assert out.count("-> ACCEPT (rewritten)") == 2, out


def test_queue_hook_bad_results_get_the_fallback_verdict(queue_ns, tmp_path):
    # results nfbind refuses (a payload over 65,535 bytes, a negative mark, an
    # unknown verdict number) are errors of their packet: the --verdict
    # fallback, a message, and the next packet is served as usual
    hook = tmp_path / "badresults.py"
    hook.write_text(
        "from nfbind import Verdict\n"
        "def hook(pkt):\n"
        "    data = pkt.payload[28:]\n"
        "    if data == b'big':\n"
        "        return b'x' * 70000\n"
        "    if data == b'neg':\n"
        "        return Verdict.ACCEPT, -5\n"
        "    if data == b'huge':\n"
        "        return 'accept', 1 << 40\n"
        "    if data == b'seven':\n"
        "        return 7\n"
        "    return 'accept'\n")
    payloads = [b"good", b"big", b"neg", b"huge", b"seven", b"fine"]
    rc, out, err, got = run_queue(queue_ns, ["--hook", str(hook), "--verdict", "drop"],
                                  payloads)
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert got == [b"good", b"fine"]  # the others got --verdict drop
    assert out.count("-> ACCEPT") == 2 and out.count("-> DROP") == 4, out
    errors = [l for l in err.splitlines() if l.startswith("nfbind: hook")]
    assert len(errors) == 4, err
    assert "payload" in errors[0] and "70000" in errors[0], errors
    assert "mark" in errors[1] and "mark" in errors[2], errors
    assert all(l.endswith("gets DROP") for l in errors), errors


def test_queue_hook_errors():
    r = nfb("queue", "3", "--hook", "no_such_module_xyz:fn")
    assert r.returncode == 1
    assert "no_such_module_xyz" in one_error_line(r)


# -- conntrack --------------------------------------------------------------------------------


@pytest.fixture
def ct_ns(ns):
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    for i in range(5):
        send_udp(ns, 7000 + i, [b"hello"], sport=40000 + i)
    return ns


def conntrack_l(ns) -> List[str]:
    return [l for l in ns.run("conntrack", "-L").splitlines() if l.strip()]


@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack-tools")
def test_ct_list_count_update_flush(ct_ns):
    ns = ct_ns
    ref = conntrack_l(ns)
    assert len(ref) == 5
    r = nfb("ct", "list", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["PROTO", "SRC", "SPORT", "DST", "DPORT"]
    assert len(lines) == 1 + len(ref)
    assert all(l.split()[0] == "udp" for l in lines[1:])

    r = nfb("ct", "list", "--json", "-p", "udp", "--dport", "7002", "--netns", ns.name)
    flows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(flows) == 1 and flows[0]["orig"]["sport"] == 40002

    r = nfb("ct", "count", "--netns", ns.name)
    assert r.returncode == 0 and int(r.stdout) == 5

    r = nfb("ct", "stats", "--json", "--netns", ns.name)
    st = json.loads(r.stdout)
    assert st["entries"] == 5 and st["max_entries"] > 0 and st["cpus"]

    # update by filter (where `conntrack -U` fails on this kernel)
    r = nfb("ct", "update", "-p", "udp", "--dport", "7001", "--set-mark", "42",
            "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "updated 1 flow"
    marked = [l for l in conntrack_l(ns) if "mark=42" in l]
    assert len(marked) == 1 and "dport=7001" in marked[0]
    # by the whole tuple, and the -m filter sees it
    r = nfb("ct", "update", "-p", "udp", "-s", "127.0.0.1", "-d", "127.0.0.1", "--sport", "40003",
            "--dport", "7003", "--set-mark", "42", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    r = nfb("ct", "list", "-m", "42", "--json", "--netns", ns.name)
    assert sorted(json.loads(l)["orig"]["dport"] for l in r.stdout.splitlines()) == [7001, 7003]

    r = nfb("ct", "delete", "-m", "42", "--netns", ns.name)
    assert r.returncode == 0 and r.stdout.strip() == "deleted 2 flows", r.stderr
    assert len(conntrack_l(ns)) == 3

    r = nfb("ct", "flush", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    assert conntrack_l(ns) == []


def test_ct_create_get_and_events(ns):
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    tup = ["-p", "udp", "-s", "10.9.9.1", "-d", "10.9.9.2", "--sport", "1111", "--dport", "2222"]
    r = nfb("ct", "create", *tup, "--timeout", "100", "--set-mark", "5", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    r = nfb("ct", "create", *tup, "--timeout", "100", "--netns", ns.name)
    assert r.returncode == 1 and "EEXIST" in one_error_line(r)
    p = popen(ns, "ct", "events", "--json", "-p", "udp", "--count", "2", "-e", "NEW")
    sent = []
    deadline = time.monotonic() + 15
    while p.poll() is None and time.monotonic() < deadline:  # until it has seen 2 new flows
        sent.append(7700 + len(sent))
        send_udp(ns, sent[-1], [b"x"])
        time.sleep(0.2)
    rc, out, err = finish(p)
    assert rc == 0, err
    evs = [json.loads(l) for l in out.splitlines()]
    assert [e["event"] for e in evs] == ["NEW", "NEW"]
    assert {e["orig"]["dport"] for e in evs} <= set(sent)
    r = nfb("ct", "get", *tup, "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    row = r.stdout.splitlines()[1].split()
    assert row[:5] == ["udp", "10.9.9.1", "1111", "10.9.9.2", "2222"] and row[7] == "5"


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_ct_json_is_flow_as_dict(ns):
    """``ct list --json``, ``ct get --json`` and ``ct create --json`` print
    Flow.as_dict(): the objects of the library's own dump, on a table with
    counters, timestamps, labels, marks and NAT."""
    from nfbind.conntrack import Conntrack, Tuple

    ns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    ns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", "7101", "-m", "connlabel", "--label", "9",
                "--set")
    ns.iptables("-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "7102", "-j", "DNAT",
                "--to-destination", "127.0.0.1:7103")
    for port in (7100, 7101, 7102):
        send_udp(ns, port, [b"hello"], sport=port + 30000)
    tup = ["-p", "udp", "-s", "10.9.9.1", "-d", "10.9.9.2", "--sport", "1111", "--dport", "2222"]
    r = nfb("ct", "create", *tup, "--timeout", "100", "--set-mark", "5", "--labels", "2,5",
            "--json", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)["created"]
    assert (created["orig"], created["mark"], created["labels"], created["timeout"]) == (
        {"src": "10.9.9.1", "dst": "10.9.9.2", "proto": "udp", "sport": 1111, "dport": 2222},
        5, [2, 5], 100)
    server = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 7200))
        server.listen(1)
        client.settimeout(5)
        client.connect(("127.0.0.1", 7200))
        conn, _ = server.accept()
        client.sendall(b"data")
        conn.settimeout(5)
        assert conn.recv(10) == b"data"
        with Conntrack(netns=ns.name) as ct:
            # the counters settle once the server's ACK of the data is out (it may
            # be delayed): SYN-ACK and that ACK are the reply direction's 2 packets
            def acked() -> bool:
                tcp = [f for f in ct.dump() if f.orig.dport == 7200]
                return len(tcp) == 1 and tcp[0].counters is not None and \
                    tcp[0].counters.reply_packets >= 2
            wait_for(acked, "the ACK of the data")
            for args, read in ((["list"], lambda: list(ct.dump())),
                               (["get", *tup], lambda: [ct.get(Tuple("10.9.9.1", "10.9.9.2",
                                                                     "udp", 1111, 2222))])):
                # the timeouts count down between the dumps: the printed ones lie between
                before = sorted((f.as_dict() for f in read()), key=lambda d: d["id"])
                r = nfb("ct", *args, "--json", "--netns", ns.name)
                after = sorted((f.as_dict() for f in read()), key=lambda d: d["id"])
                assert r.returncode == 0, r.stderr
                lines = r.stdout.splitlines()
                printed = sorted((json.loads(l) for l in lines), key=lambda d: d["id"])
                assert sorted(lines) == sorted(_compact(d) for d in printed)
                assert len(printed) == len(before) == len(after) == (5 if args == ["list"] else 1)
                for p, b, a in zip(printed, before, after):
                    assert b["timeout"] >= p["timeout"] >= a["timeout"], (b, p, a)
                    assert p == dict(b, timeout=p["timeout"]), (p, b)
                    assert list(p) == list(b)  # the keys in as_dict's order
                if args == ["list"]:
                    assert all("counters" in d and "timestamps" in d for d in printed)
                    assert sorted(d["labels"] for d in printed if d["labels"]) == [[2, 5], [9]]
                    nat = [d for d in printed if "nat" in d]
                    assert len(nat) == 1 and nat[0]["nat"] == {"snat": None,
                                                              "dnat": "127.0.0.1:7103"}
                    tcp = [d for d in printed if d["proto"] == "tcp"]
                    assert len(tcp) == 1 and tcp[0]["state"] == "ESTABLISHED"
                    assert tcp[0]["counters"]["orig_bytes"] > 0
        conn.close()
    finally:
        client.close()
        server.close()


def test_ct_get_missing_and_bad_update(ns):
    r = nfb("ct", "get", "-p", "udp", "-s", "127.0.0.1", "-d", "127.0.0.1", "--sport", "1",
            "--dport", "2", "--netns", ns.name)
    assert r.returncode == 1
    assert "no such flow" in one_error_line(r)
    r = nfb("ct", "update", "-p", "udp", "--netns", ns.name)
    assert r.returncode == 2 and "nothing to change" in one_error_line(r)


def test_log_pcap_to_stdout(log_ns, tmp_path):
    # `--pcap -` writes the capture to stdout (as tcpdump -w - does), not to
    # a file named "-"; the summary goes to stderr
    ns = log_ns
    p = subprocess.Popen([*NFB, "log", "7", "--pcap", "-", "--count", "3", "--netns", ns.name],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         cwd=str(tmp_path))
    ns.procs.append(p)
    wait_bound(ns, p, "nfnetlink_log", 7)
    send_udp(ns, 5555, [b"cap%d" % i for i in range(3)])
    data, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert not (tmp_path / "-").exists()
    magic, vmaj, vmin, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, vmaj, vmin, linktype) == (0xA1B2C3D4, 2, 4, 101)
    off, payloads = 24, []
    while off < len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        payloads.append(data[off + 16 + 28:off + 16 + incl])
        off += 16 + incl
    assert off == len(data) and payloads == [b"cap0", b"cap1", b"cap2"]
    assert b"3 packets" in err and b"stdout" in err, err
    if shutil.which("tcpdump"):
        r = subprocess.run(["tcpdump", "-n", "-r", "-"], input=data, capture_output=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(b"> 127.0.0.1.5555:") == 3, r.stdout
    # lines would corrupt the capture on the same stdout: refused, with the reason
    for extra in (["--json"], ["-v"]):
        r = nfb("log", "7", "--pcap", "-", *extra, "--netns", ns.name)
        assert r.returncode == 2, r.stderr
        assert "stdout" in one_error_line(r)


def test_ct_filters_of_two_address_families_are_refused(ns):
    for args, says in ((["list", "-s", "10.0.0.1", "-d", "::1"], "-s 10.0.0.1 is IPv4"),
                       (["list", "-d", "::1", "-f", "ipv4"], "-d ::1 is IPv6"),
                       (["delete", "-s", "fe80::/64", "-d", "10.0.0.0/8"], "IPv4"),
                       (["update", "-s", "10.0.0.1", "-d", "::1", "--set-mark", "1"], "IPv6"),
                       (["events", "-s", "::1", "-f", "4"], "-s ::1 is IPv6")):
        r = nfb("ct", *args, "--netns", ns.name)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        line = one_error_line(r)
        assert "address famil" in line and says in line, (args, line)
        assert r.stdout == "", r.stdout


def test_ct_events_rejects_an_empty_event_list(ns):
    for ev in ("", ",", "NEW,", " "):
        r = nfb("ct", "events", "-e", ev, "--netns", ns.name, timeout=10)
        assert r.returncode == 2, (ev, r.stderr)
        assert "--event" in one_error_line(r), r.stderr


def test_ct_labels_out_of_range_are_argument_errors(ns):
    # a number is a label bit, never a connlabel.conf name: out of range, it
    # is a bad argument (not a missing connlabel.conf)
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    r = nfb("ct", "create", "-p", "udp", "-s", "10.9.9.1", "-d", "10.9.9.2", "--sport", "1",
            "--dport", "2", "--timeout", "100", "--netns", ns.name)
    assert r.returncode == 0, r.stderr
    for labels, says in (("-1", "-1"), ("128", "128"), ("3,200", "200"), ("0x80", "0x80")):
        r = nfb("ct", "update", "-p", "udp", "-l", labels, "--netns", ns.name)
        assert r.returncode == 2, (labels, r.stderr)
        line = r.stderr.strip().splitlines()[-1]
        assert "-l/--labels" in line and "0..127" in line and says in line, line


# -- errors -----------------------------------------------------------------------------------


def test_bad_arguments():
    for args in (["queue", "70000"], ["log", "x"], ["ct", "list", "-m", "zz"], ["frobnicate"],
                 ["queue", "1", "--verdict", "maybe"]):
        r = nfb(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "usage:" in r.stderr and "error:" in r.stderr and "Traceback" not in r.stderr
    r = nfb("ct", "list", "--netns", "no-such-netns-xyz")
    assert r.returncode == 1 and "ip netns add" in one_error_line(r)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_no_privilege(queue_ns):
    drop = ["ip", "netns", "exec", queue_ns.name, "setpriv", "--inh-caps=-net_admin",
            "--bounding-set=-net_admin"]
    for args in (["queue", "3"], ["log", "7"], ["ct", "list"]):
        r = nfb(*args, prefix=drop)
        assert r.returncode == 1, (args, r.stderr)
        line = one_error_line(r)
        assert line.startswith("nfbind: error:") and "CAP_NET_ADMIN" in line, line


def test_python_m_and_console_help():
    r = nfb("--help")
    assert r.returncode == 0 and "ct" in r.stdout and "queue" in r.stdout
    r = nfb("demo", "--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    r = nfb("ct", "list", "--help")
    assert r.returncode == 0 and "--dport" in r.stdout
