# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures: throw-away network namespaces with their own rules.

Integration tests need root (they create namespaces and install rules); on a
machine without it they are skipped with a message saying so.  Every
namespace made here is deleted afterwards, and every process started is
ended by PID.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from typing import Iterator, List

import pytest

from nfbind import netns as nfnetns

IS_ROOT = os.geteuid() == 0


def pytest_addoption(parser):
    parser.addoption(
        "--soak", action="store_true", default=False,
        help="run the fault and load suite (marker 'fault') at full size, as make soak does",
    )


def pytest_configure(config):
    # make soak tries ten times as many property examples (test_properties.py
    # reads this when it is imported, after this hook)
    if config.getoption("--soak"):
        os.environ.setdefault("NFBIND_PROPERTY_SCALE", "10")


class Soak:
    """How big the fault and load scenarios are: bounded in ``make test``,
    full size in ``make soak`` (``pytest --soak``)."""

    def __init__(self, full: bool) -> None:
        self.full = full

    def size(self, bounded, full):
        """``full`` under ``--soak``, otherwise ``bounded``."""
        return full if self.full else bounded


@pytest.fixture(scope="session")
def soak(request) -> Soak:
    return Soak(bool(request.config.getoption("--soak")))


def fault_report(scenario: str, **figures) -> None:
    """Record one fault scenario's figures (packets sent, arrived, dropped,
    overrun, rate ...): printed, and appended as a JSON line to the file named
    by ``NFBIND_FAULT_REPORT`` when that is set."""
    line = json.dumps(dict(scenario=scenario, **figures), sort_keys=True)
    print("fault-report " + line)
    path = os.environ.get("NFBIND_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="integration test: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


class NetNS:
    """A network namespace made for one test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: List[subprocess.Popen] = []

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a command inside the namespace and return its stdout."""
        r = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError("%s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
        return r.stdout

    def iptables(self, *args: str, v6: bool = False) -> str:
        return self.run("ip6tables" if v6 else "iptables", "-w", *args)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        """Start a process inside the namespace; it is ended at teardown."""
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)
        self.procs.append(p)
        return p

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A socket living in the namespace."""
        return nfnetns.socket(self.name, family, type, proto)

    def counter(self, chain: str, comment: str, v6: bool = False) -> int:
        """Packets counted by the rule carrying ``-m comment --comment COMMENT``."""
        out = self.run("ip6tables" if v6 else "iptables", "-w", "-L", chain, "-v", "-n", "-x")
        for line in out.splitlines():
            if "/* %s */" % comment in line:
                return int(line.split()[0])
        raise AssertionError("no rule with comment %r in %s:\n%s" % (comment, chain, out))

    def queue_proc(self) -> dict:
        """/proc/net/netfilter/nfnetlink_queue of the namespace, by queue number."""
        # read by a thread inside the namespace, not by a child process: a test
        # may poll this while serve() forks a worker, and a worker forked while
        # a child process starts would hold that child's exec-status pipe open
        def read() -> str:
            with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
                return f.read()

        rows = {}
        for line in nfnetns.call_in(self.name, read).splitlines():
            f = line.split()
            rows[int(f[0])] = {
                "portid": int(f[1]), "waiting": int(f[2]), "copy_mode": int(f[3]),
                "copy_range": int(f[4]), "queue_dropped": int(f[5]),
                "user_dropped": int(f[6]), "id_sequence": int(f[7]),
            }
        return rows

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def make_netns() -> NetNS:
    name = "nfbt-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = NetNS(name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
    except BaseException:
        ns.close()
        raise
    return ns


@pytest.fixture
def ns() -> Iterator[NetNS]:
    """A fresh network namespace with loopback up; deleted afterwards."""
    n = make_netns()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def more_ns(ns: NetNS):
    """Factory for extra namespaces (beyond ``ns``); all deleted afterwards."""
    made: List[NetNS] = []

    def make() -> NetNS:
        name = "%s-p%d" % (ns.name, len(made))
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        n = NetNS(name)
        made.append(n)
        n.run("ip", "link", "set", "lo", "up")
        return n

    yield make
    for n in made:
        n.close()


def recv_all(sock: socket.socket, timeout: float = 1.0, limit: int = 100000) -> List[bytes]:
    """Everything ``sock`` receives until it has been quiet for ``timeout``."""
    sock.settimeout(timeout)
    out: List[bytes] = []
    deadline = time.monotonic() + 60
    while len(out) < limit and time.monotonic() < deadline:
        try:
            out.append(sock.recv(70000))
        except (socket.timeout, BlockingIOError):
            break
    return out
