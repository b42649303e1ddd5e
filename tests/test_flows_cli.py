# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind ct events --flows`` as a user runs it, inside throw-away
namespaces: every output at once (stdout JSON, a JSON file, SQLite, IPFIX
to a real nfcapd read back with nfdump), ``--enable-accounting``, and the
warning that names the sysctl when accounting is off."""
from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from typing import List

import pytest

from nfbind.conntrack import Conntrack, Flow, Tuple

from helpers.conntrack import ct_ns
from helpers.nfcapd import Nfcapd
from helpers.procs import child_env

pytestmark = pytest.mark.integration

PROBE = Tuple("192.0.2.1", "192.0.2.2", "udp", 9, 9)


def read_lines(p: subprocess.Popen, quiet: float = 0.3, limit: float = 5.0) -> List[str]:
    """Lines on the child's stdout until it stays quiet for ``quiet`` s."""
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], quiet)
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode().splitlines()


def start_cli(ns, *args: str) -> subprocess.Popen:
    """``nfbind ct events --flows ARGS`` in ``ns``, once it records: a probe
    flow (created and deleted by ctnetlink) made its first line appear."""
    p = ns.popen(sys.executable, "-m", "nfbind", "ct", "events", "--flows", *args,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    deadline = time.monotonic() + 15
    with Conntrack(netns=ns.name) as ct:
        while time.monotonic() < deadline:
            ct.create(Flow(PROBE, timeout=5))
            ct.delete(PROBE)
            if read_lines(p, 0.3):
                return p
            assert p.poll() is None, p.stderr.read().decode()
    raise AssertionError("nfbind ct events --flows printed nothing")


def udp_exchange(ns) -> None:
    srv, cli = ns.socket(), ns.socket()
    try:
        srv.bind(("127.0.0.1", 5353))
        srv.settimeout(5)
        for _ in range(3):
            cli.sendto(b"abcd", ("127.0.0.1", 5353))
        for _ in range(3):
            srv.recv(100)
    finally:
        srv.close()
        cli.close()
    with Conntrack(netns=ns.name) as ct:
        for f in ct.dump():
            if f.orig.dport == 5353:
                ct.delete(f)


def test_cli_every_output(ns, tmp_path):
    ct_ns(ns, acct=False, tstamp=False)
    cap = Nfcapd(ns, str(tmp_path), port=4739)
    db, jf = str(tmp_path / "f.db"), str(tmp_path / "f.jsonl")
    p = start_cli(ns, "--json", "--json-file", jf, "--sqlite", db, "--ipfix",
                  "127.0.0.1:4739", "--enable-accounting", "--count", "2")
    udp_exchange(ns)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert b"warning" not in err, err  # switched on before the check
    assert ns.run("sysctl", "-n", "net.netfilter.nf_conntrack_acct").strip() == "1"
    lines = [json.loads(l) for l in out.decode().splitlines()]
    assert len(lines) == 1  # the probe's line was read by start_cli
    d = lines[0]
    assert (d["orig"]["dst"], d["orig"]["dport"], d["proto"]) == ("127.0.0.1", 5353, "udp")
    assert (d["orig_packets"], d["orig_bytes"], d["reply_packets"], d["reply_bytes"]) == (
        3, 96, 0, 0)
    assert d["duration"] is not None and d["duration"] >= 0
    # the file has both records, the database both rows
    filed = [json.loads(l) for l in open(jf).read().splitlines()]
    assert [x["orig"]["dport"] for x in filed] == [9, 5353] and filed[1] == d
    con = sqlite3.connect(db)
    rows = con.execute("SELECT orig_dport, orig_packets, orig_bytes, start, \"end\" "
                       "FROM flows ORDER BY rowid").fetchall()
    con.close()
    assert [r[:3] for r in rows] == [(9, 0, 0), (5353, 3, 96)]
    assert rows[1][3] == pytest.approx(d["start"]) and rows[1][4] == pytest.approx(d["end"])
    # and nfcapd got both
    cap.stop()
    got = {g["dst_port"]: g for g in cap.flows()}
    assert (got[5353]["in_packets"], got[5353]["in_bytes"]) == (3, 96)
    assert got[5353]["src_port"] == d["orig"]["sport"]
    assert 9 in got


def test_cli_warns_when_accounting_is_off(ns):
    ct_ns(ns, acct=False, tstamp=True)
    p = start_cli(ns, "--count", "2")
    udp_exchange(ns)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    text = err.decode()
    assert "net.netfilter.nf_conntrack_acct is 0" in text
    assert "--enable-accounting" in text
    assert "nf_conntrack_timestamp" not in text
    line = out.decode().strip()
    assert "[FLOW] udp 127.0.0.1:" in line and "-> 127.0.0.1:5353" in line
    assert "? pkts" in line
