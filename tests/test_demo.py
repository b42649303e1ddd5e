# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m nfbind.demo`` run as a user runs it: a subprocess (as root),
bounded by a timeout.  It must exit 0 within about 20 seconds, show every
step with its expected results, and leave no namespace behind; SIGTERM and
SIGINT mid-run must clean up too."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

pytestmark = pytest.mark.integration

SRC = str(Path(__file__).resolve().parent.parent / "src")
TIMEOUT = 60  # seconds: the subprocess is killed after this
EXPECTED_WITHIN = 20.0  # seconds: the demo promises about 15


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=10).stdout


def _namespace(out: str) -> str:
    m = re.search(r"network namespace (nfbind-demo-\d+)", out)
    assert m, "the demo did not name its namespace:\n" + out
    return m.group(1)


@pytest.fixture(scope="module")
def demo():
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nfbind.demo"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=_env(), cwd="/")
    r.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
    print(r.stdout)  # shown when a test fails
    print(r.stderr, file=sys.stderr)
    return r


def test_exit_status_and_time(demo):
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.elapsed < EXPECTED_WITHIN, "took %.1f s" % demo.elapsed
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "FAILED" not in demo.stdout
    assert "every step showed what it should (4 of 4 steps" in demo.stdout


def test_sections_in_order(demo):
    headers = re.findall(r"^== (\d)\. (\S+)", demo.stdout, re.M)
    assert headers == [("1", "NFLOG:"), ("2", "NFQUEUE:"), ("3", "conntrack:"), ("4", "cleanup")]
    # each step ends with its own check
    assert demo.stdout.count("\nok: ") == 6  # NFLOG, NFQUEUE, flows, mark, events, cleanup


def test_nflog_decoded_packets(demo):
    out = demo.stdout
    section = out.split("== 1. NFLOG")[1].split("== 2.")[0]
    rows = [line for line in section.splitlines() if line.startswith("  5 ")]
    assert len(rows) >= 3, section
    assert all("'tcp-8080 '" in row and " lo " in row for row in rows), section
    # the SYN (scapy prints "S", the fallback too) and the data
    assert any(re.search(r"127\.0\.0\.1:\d+ > 127\.0\.0\.1:\S+ S$", row) for row in rows), section
    assert any("b'hello over tcp'" in row for row in rows), section
    assert "ok: %d packets logged with prefix 'tcp-8080 '" % len(rows) in section


def test_nfqueue_verdicts_seen_at_receiver(demo):
    out = demo.stdout
    assert re.search(r"b'drop this one'\s+DROP\s+nothing within", out)
    assert re.search(r"b'drop that one too'\s+DROP\s+nothing within", out)
    assert re.search(r"b'mark this one'\s+ACCEPT, mark=7\s+b'mark this one'\s+mark=7", out)
    assert re.search(r"b'rewrite this one'\s+ACCEPT, rewritten .*b'rewritten by nfbind'", out)
    assert re.search(r"b'hello, plain datagram'\s+ACCEPT\s+b'hello, plain datagram'", out)
    assert "unexpected" not in out
    assert "every datagram got what the handler decided" in out


def test_conntrack_table_mark_and_events(demo):
    out = demo.stdout
    section = out.split("== 3. conntrack")[1].split("== 4.")[0]
    assert re.search(r"^\s+proto\s+source\s+destination\s+state\s+mark\s+timeout$", section, re.M)
    assert re.search(r"^\s+tcp\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:8080\s+\w+\s+0\s+\d+$",
                     section, re.M), section
    assert re.search(r"^\s+udp\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:9999\s", section, re.M), section
    assert re.search(r"before:\s+mark=0\b", section)
    assert re.search(r"after:\s+mark=42\b.*ct\.get", section)
    assert "ok: the flow's mark went from 0 to 42" in section
    events = re.findall(r"^\s+\+\d+\.\d+s\s+(NEW|UPDATE|DESTROY)\s+(\w+) ", section, re.M)
    kinds = [k for k, _ in events]
    assert "NEW" in kinds, section
    assert "DESTROY" in kinds or "UPDATE" in kinds, section
    assert ("DESTROY", "udp") in events, section  # the flow the demo deleted
    assert re.search(r"ok: events: NEW \d+, UPDATE \d+, DESTROY \d+", section)


def test_cleanup(demo):
    name = _namespace(demo.stdout)
    assert "removed network namespace %s" % name in demo.stdout
    assert "ok: no namespace left behind" in demo.stdout
    assert name not in _netns_list()
    assert not os.path.exists("/run/netns/" + name)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cleans_up(sig):
    """Stopped mid-run (once its namespace exists), the demo still deletes it."""
    p = subprocess.Popen([sys.executable, "-u", "-m", "nfbind.demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=_env(), cwd="/")
    try:
        assert p.stdout is not None
        first = p.stdout.readline()  # printed just before the namespace is made
        name = _namespace(first)
        deadline = time.monotonic() + 10
        while not os.path.exists("/run/netns/" + name) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # into the first step
        p.send_signal(sig)
        rest, _ = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    out = first + rest
    assert p.returncode in (0, 130), out  # 0: it had finished anyway
    assert "Traceback" not in out
    assert "removed network namespace %s" % name in out
    assert name not in _netns_list()


def test_help_and_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "nfbind.demo", "--help"], capture_output=True,
                       text=True, timeout=TIMEOUT, env=_env(), cwd="/")
    assert r.returncode == 0 and "NFLOG" in r.stdout and "conntrack" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nfbind.demo", "--bogus"], capture_output=True,
                       text=True, timeout=TIMEOUT, env=_env(), cwd="/")
    assert r.returncode == 2 and "takes no arguments" in r.stderr
    assert "Traceback" not in r.stderr


def test_without_scapy():
    """Without scapy the NFLOG rows are the CLI's own one-line summaries, with
    the TCP flags and data the demo checks; the rewrite is done by hand."""
    code = ("import sys; sys.modules['scapy'] = None\n"  # `import scapy...` raises ImportError
            "from nfbind.demo import main; sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=TIMEOUT, env=_env(), cwd="/")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "Traceback" not in out + r.stderr
    section = out.split("== 1. NFLOG")[1].split("== 2.")[0]
    assert "decoded by nfbind's own summary (scapy is not installed)" in section
    rows = [line for line in section.splitlines() if line.startswith("  5 ")]
    assert any(re.search(r"IPv4 tcp 127\.0\.0\.1:\d+ > 127\.0\.0\.1:8080 len \d+ S$", row)
               for row in rows), section
    assert any(row.endswith(" PA b'hello over tcp'") for row in rows), section
    assert re.search(r"b'rewrite this one'\s+ACCEPT, rewritten \(by hand, no scapy\)\s+"
                     r"b'rewritten by nfbind'", out)
    assert "every step showed what it should (4 of 4 steps" in out
    assert _namespace(out) not in _netns_list()
