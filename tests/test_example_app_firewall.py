# SPDX-License-Identifier: GPL-2.0-or-later
"""examples/app_firewall.py run for real: the rules from its header in a
throw-away namespace, datagrams from two different programs (Python and
perl), the question for the first answered through the example's stdin, the
second left to time out; then the first program again, which now passes
without a question."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from helpers.packets import recv_all


pytestmark = pytest.mark.integration

PORT = 5651
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "app_firewall.py"
TIMEOUT = 1.0


def _rules(ns) -> None:
    """The iptables rules of the example's header comment."""
    for line in EXAMPLE.read_text().splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("iptables "):
            ns.iptables(*line.split()[1:])


def _python_sender(ns, data: bytes) -> subprocess.Popen:
    code = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.sendto(%r, ('127.0.0.1', %d))\n"
            "time.sleep(2)\n" % (data, PORT))
    return ns.popen(sys.executable, "-c", code)


def _perl_sender(ns, data: bytes) -> subprocess.Popen:
    code = ('use IO::Socket::INET; my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:%d", '
            'Proto => "udp") or die; $s->send("%s"); sleep 2;' % (PORT, data.decode()))
    return ns.popen("perl", "-e", code)


class _Interactive:
    """The example running in the namespace, with a pipe to its stdin (the
    person answering); its stdout is read line by line by a thread."""

    def __init__(self, ns, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
        self.proc = ns.popen(sys.executable, str(EXAMPLE), *args,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        self.stdin = self.proc.stdin
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.out: List[str] = []
        self.err: List[str] = []
        self._t = [threading.Thread(target=self._read, args=(self.proc.stdout, True),
                                    daemon=True),
                   threading.Thread(target=self._read, args=(self.proc.stderr, False),
                                    daemon=True)]
        for t in self._t:
            t.start()

    def _read(self, f, is_out: bool) -> None:
        for line in f:
            line = line.rstrip("\n")
            if is_out:
                self.out.append(line)
                self.lines.put(line)
            else:
                self.err.append(line)

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        """The next stdout line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError("no line matching %r; rc=%s\nstdout:\n%s\nstderr:\n%s" % (
            pattern, self.proc.poll(), "\n".join(self.out), "\n".join(self.err)))

    def finish(self, timeout: float = 15) -> List[str]:
        """Wait for the example to exit by itself (--run-for); its stdout."""
        rc = self.proc.wait(timeout)
        for t in self._t:
            t.join(5)
        assert rc == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (
            rc, "\n".join(self.out), "\n".join(self.err))
        return self.out


@pytest.mark.parametrize("drop", [False, True])
def test_app_firewall_asks_remembers_and_times_out(ns, drop):
    _rules(ns)
    r = ns.socket()
    r.bind(("127.0.0.1", PORT))
    args = ["--timeout", str(TIMEOUT), "--run-for", "2.5"] + (["--drop-on-timeout"] if drop else [])
    ex = _Interactive(ns, *args)
    try:
        ex.wait_for(r"app firewall on queue 0")
        py_exe = os.path.realpath(sys.executable)
        # 1. Python: asked, answered yes through stdin, its datagram passes
        _python_sender(ns, b"from-python")
        ex.wait_for(r"^allow %s\? \[y/N\]$" % py_exe.replace(".", r"\."))
        ex.stdin.write("y\n")
        ex.stdin.flush()
        ex.wait_for(r"^allowing %s$" % py_exe.replace(".", r"\."))
        assert recv_all(r, 1.0) == [b"from-python"]
        # 2. perl: asked, nobody answers; the deadline decides
        t0 = time.monotonic()
        _perl_sender(ns, b"from-perl")
        ex.wait_for(r"^allow /usr/bin/perl\? \[y/N\]$")
        ex.wait_for(r"^no answer for /usr/bin/perl: %s$" % ("dropped" if drop else "accepted"))
        waited = time.monotonic() - t0
        assert TIMEOUT - 0.1 <= waited <= TIMEOUT + 1.5, waited
        assert recv_all(r, 0.5) == ([] if drop else [b"from-perl"])
        # 3. Python again: remembered, no question
        _python_sender(ns, b"python-again")
        ex.wait_for(r"^allowed %s \(pid \d+\)$" % py_exe.replace(".", r"\."))
        assert recv_all(r, 1.0) == [b"python-again"]
        ex.stdin.close()
        out = ex.finish(timeout=20)
        assert sum(l == "allow %s? [y/N]" % py_exe for l in out) == 1, out   # asked once
        assert out[-1] == "3 packets, 1 timed out", out
    finally:
        r.close()
