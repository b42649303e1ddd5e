# SPDX-License-Identifier: GPL-2.0-or-later
"""Throw-away network namespaces for one test, and veth pairs between them.

Every namespace is deleted by :meth:`NetNS.close`, which also ends (by PID)
every process started in it with :meth:`NetNS.popen`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from typing import List, Optional

from nfbind import netns as nfnetns


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

    def udp_errors(self) -> dict:
        """The namespace's UDP receive errors (/proc/net/snmp)."""
        lines = [l.split() for l in self.run("cat", "/proc/net/snmp").splitlines()
                 if l.startswith("Udp:")]
        row = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
        return {k: row[k] for k in ("InErrors", "RcvbufErrors", "NoPorts")}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def make_netns(name: Optional[str] = None) -> NetNS:
    """A new namespace (a unique name unless ``name`` is given) with ``lo`` up."""
    if name is None:
        name = "nfbt-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = NetNS(name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
    except BaseException:
        ns.close()
        raise
    return ns


def veth(a: NetNS, b: NetNS, name_a: str, name_b: str) -> None:
    """A veth pair between the namespaces ``a`` and ``b``."""
    subprocess.run(["ip", "link", "add", name_a, "netns", a.name, "type", "veth",
                    "peer", "name", name_b, "netns", b.name], check=True, capture_output=True)
