# SPDX-License-Identifier: GPL-2.0-or-later
"""Flow records from the real kernel, in throw-away namespaces: each field
of the records against the traffic sent (3 UDP packets of 4 bytes are 3
packets and 96 bytes), the JSON lines and SQLite rows read back, and the
IPFIX stream received by nfdump's ``nfcapd`` and read back with ``nfdump
-r``; the accounting sysctls' warning and ``enable_accounting``."""
from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
import time
import warnings
from typing import Dict, List, Sequence

import pytest

from nfbind.conntrack import Conntrack, EventFilter, Flow, Tuple
from nfbind.flows import (
    AccountingWarning, FlowOutput, FlowRecord, FlowRecorder, IpfixExporter, JsonLines, SQLite,
    accounting, enable_accounting,
)
from nfbind.flows.outputs import rows_as_dicts

from helpers.conntrack import ct_ns
from helpers.nfcapd import Nfcapd

pytestmark = pytest.mark.integration


class Collect(FlowOutput):
    """Records kept in a list (and the batches they came in)."""

    def __init__(self) -> None:
        self.records: List[FlowRecord] = []
        self.batches = 0
        self.closed = False

    def write(self, records: Sequence[FlowRecord]) -> None:
        self.records += records
        self.batches += 1

    def close(self) -> None:
        self.closed = True


def udp_exchange(ns, dst: str, port: int, out: int = 3, back: int = 2,
                 out_len: int = 4, back_len: int = 10) -> int:
    """``out`` datagrams of ``out_len`` bytes to ``dst:port`` inside ``ns``
    and ``back`` answers of ``back_len`` bytes; returns the client's port."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    srv = ns.socket(fam)
    cli = ns.socket(fam)
    try:
        srv.bind((dst, port))
        srv.settimeout(5)
        for _ in range(out):
            cli.sendto(b"x" * out_len, (dst, port))
        peer = None
        for _ in range(out):
            _, peer = srv.recvfrom(100)
        cli.settimeout(5)
        for _ in range(back):
            srv.sendto(b"y" * back_len, peer)
            cli.recv(100)
        return cli.getsockname()[1]
    finally:
        srv.close()
        cli.close()


def tcp_exchange(ns, dst: str, port: int, data: bytes) -> int:
    """A TCP connection that sends ``data`` and is closed; the client's port."""
    srv = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.bind((dst, port))
        srv.listen(1)
        cli.settimeout(5)
        cli.connect((dst, port))
        conn, _ = srv.accept()
        cli.sendall(data)
        got = b""
        conn.settimeout(5)
        while len(got) < len(data):
            got += conn.recv(65536)
        cli.close()
        conn.recv(10)  # the FIN
        conn.close()
        return 0
    finally:
        srv.close()


def end_flows(ns, ports: Sequence[int]) -> List[Flow]:
    """Delete the flows to ``ports`` (their DESTROY events carry the final
    counters); returns them as the last dump saw them."""
    with Conntrack(netns=ns.name) as ct:
        flows = [f for f in ct.dump() if f.orig.dport in ports]
        for f in flows:
            ct.delete(f)
    return flows


def record_until(rec: FlowRecorder, want: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while rec.stats.flows < want and time.monotonic() < deadline:
        rec.run(timeout=0.2)
    assert rec.stats.flows >= want, rec.stats


def by_dport(records: Sequence[FlowRecord]) -> Dict[int, FlowRecord]:
    out = {}
    for r in records:
        if r.orig.dport is not None:
            out[r.orig.dport] = r
    return out


def test_records_field_by_field(ns, tmp_path):
    ct_ns(ns)
    # flows to port 5454 are tracked in zone 5 (both directions)
    for chain, opt in (("OUTPUT", "--dport"), ("OUTPUT", "--sport")):
        ns.iptables("-t", "raw", "-A", chain, "-p", "udp", opt, "5454", "-j", "CT",
                    "--zone", "5")
    col = Collect()
    jpath, dbpath = tmp_path / "f.jsonl", tmp_path / "f.db"
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccountingWarning)  # both sysctls are on
        rec = FlowRecorder([col, JsonLines(str(jpath)), SQLite(str(dbpath))],
                           netns=ns.name, filter=EventFilter(proto="udp"))
    with rec:
        sport = udp_exchange(ns, "127.0.0.1", 5353)
        zport = udp_exchange(ns, "127.0.0.1", 5454, out=4, back=0, out_len=100)
        v6port = udp_exchange(ns, "::1", 5355, out=1, back=1, out_len=4, back_len=4)
        with Conntrack(netns=ns.name) as ct:
            f = next(f for f in ct.dump() if f.orig.dport == 5353)
            ct.update(f, mark=7)
        time.sleep(0.05)
        dumped = {f.orig.dport: f for f in end_flows(ns, (5353, 5454, 5355))}
        t1 = time.time()
        record_until(rec, 3)
        assert rec.stats.overruns == 0 and rec.stats.events == 3
    assert col.closed
    got = by_dport(col.records)
    assert sorted(got) == [5353, 5355, 5454]

    r = got[5353]
    assert r.orig == Tuple("127.0.0.1", "127.0.0.1", "udp", sport, 5353)
    assert r.reply == Tuple("127.0.0.1", "127.0.0.1", "udp", 5353, sport)
    assert (r.orig_packets, r.orig_bytes) == (3, 3 * (20 + 8 + 4)) == (3, 96)
    assert (r.reply_packets, r.reply_bytes) == (2, 2 * (20 + 8 + 10))
    assert (r.zone, r.mark) == (0, 7)
    assert r.ct_id == dumped[5353].id
    assert t0 - 1 <= r.start <= r.end <= t1 + 1
    assert r.duration == pytest.approx(r.end - r.start, abs=1e-6) and r.duration >= 0.05
    assert r.start_ns == dumped[5353].timestamps.start_ns

    z = got[5454]
    assert z.zone == 5 and z.orig.sport == zport
    assert (z.orig_packets, z.orig_bytes, z.reply_packets, z.reply_bytes) == (4, 4 * 128, 0, 0)

    six = got[5355]
    assert six.orig == Tuple("::1", "::1", "udp", v6port, 5355)
    assert (six.orig_packets, six.orig_bytes) == (1, 40 + 8 + 4)
    assert (six.reply_packets, six.reply_bytes) == (1, 52)

    # JSON lines: the same records, field by field
    lines = [json.loads(l) for l in jpath.read_text().splitlines()]
    assert sorted(d["orig"]["dport"] for d in lines) == [5353, 5355, 5454]
    for d in lines:
        assert d == got[d["orig"]["dport"]].as_dict()
    j = next(d for d in lines if d["orig"]["dport"] == 5353)
    assert (j["orig_packets"], j["orig_bytes"], j["mark"]) == (3, 96, 7)

    # SQLite: the rows read back
    con = sqlite3.connect(str(dbpath))
    rows = {row["orig_dport"]: row for row in rows_as_dicts(con)}
    con.close()
    assert sorted(rows) == [5353, 5355, 5454]
    row = rows[5353]
    assert (row["orig_src"], row["orig_dst"], row["orig_sport"], row["orig_dport"],
            row["proto"], row["family"]) == ("127.0.0.1", "127.0.0.1", sport, 5353, "udp",
                                             "ipv4")
    assert (row["orig_packets"], row["orig_bytes"], row["reply_packets"],
            row["reply_bytes"]) == (3, 96, 2, 76)
    assert (row["zone"], row["mark"], row["ct_id"]) == (0, 7, r.ct_id)
    assert row["start"] == pytest.approx(r.start) and row["end"] == pytest.approx(r.end)
    assert rows[5454]["zone"] == 5 and rows[5355]["orig_src"] == "::1"


def test_accounting_off_warns_and_enable_switches_on(ns):
    ct_ns(ns, acct=False, tstamp=False)
    assert accounting(ns.name) == {"net.netfilter.nf_conntrack_acct": False,
                                   "net.netfilter.nf_conntrack_timestamp": False}
    col = Collect()
    with pytest.warns(AccountingWarning) as caught:
        rec = FlowRecorder([col], netns=ns.name)
    texts = sorted(str(w.message) for w in caught)
    assert len(texts) == 2
    assert "net.netfilter.nf_conntrack_acct is 0" in texts[0]
    assert "net.netfilter.nf_conntrack_timestamp is 0" in texts[1]
    assert all("sysctl -w" in t and "enable_accounting" in t for t in texts)
    with rec:
        udp_exchange(ns, "127.0.0.1", 5353)
        end_flows(ns, (5353,))
        record_until(rec, 1)
    r = col.records[0]
    assert r.orig_packets is None and r.start is None and r.duration is None
    # this namespace only: switched on, and flows created afterwards are counted
    before = enable_accounting(ns.name)
    assert not any(before.values())
    assert all(accounting(ns.name).values())
    col2 = Collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccountingWarning)
        rec2 = FlowRecorder([col2], netns=ns.name)
    with rec2:
        udp_exchange(ns, "127.0.0.1", 5353)
        end_flows(ns, (5353,))
        record_until(rec2, 1)
    r2 = col2.records[0]
    assert (r2.orig_packets, r2.orig_bytes) == (3, 96) and r2.duration is not None


def test_ipfix_read_back_by_nfcapd(ns, tmp_path):
    ct_ns(ns)
    cap = Nfcapd(ns, str(tmp_path), port=4739)
    exporter = IpfixExporter("127.0.0.1:4739", netns=ns.name, domain_id=7)
    col = Collect()
    rec = FlowRecorder([col, exporter], netns=ns.name)
    with rec:
        ports = {}
        ports[5353] = udp_exchange(ns, "127.0.0.1", 5353)
        ports[5355] = udp_exchange(ns, "::1", 5355, out=2, back=1, out_len=8, back_len=16)
        tcp_exchange(ns, "127.0.0.1", 8080, b"z" * 1000)
        with Conntrack(netns=ns.name) as ct:  # an ICMP flow, made by ctnetlink
            ct.create(Flow(Tuple("192.0.2.1", "192.0.2.2", "icmp", icmp_type=8,
                                 icmp_code=0, icmp_id=77), timeout=30))
            time.sleep(0.05)
            ct.delete(Tuple("192.0.2.1", "192.0.2.2", "icmp", icmp_type=8, icmp_code=0,
                            icmp_id=77))
        end_flows(ns, (5353, 5355, 8080))
        record_until(rec, 4)
        time.sleep(0.3)  # the datagrams reach nfcapd
    assert exporter.send_errors == 0 and exporter.messages >= 2
    log = cap.stop()
    assert "Sequence Errors: 0" in log, log
    got = cap.flows()
    mine = [r for r in col.records if r.orig.dport in (5353, 5355, 8080)
            or r.orig.icmp_id == 77]
    assert len(mine) == 4
    # every record of ours is in nfcapd's file, with the same fields
    assert len(got) == len(col.records)
    for r in mine:
        v6 = r.orig.src.version == 6
        sa, da = ("src6_addr", "dst6_addr") if v6 else ("src4_addr", "dst4_addr")
        icmp = r.orig.icmp_type is not None
        match = [g for g in got if g["proto"] == int(r.orig.proto) and sa in g
                 and ipaddress.ip_address(g[sa]) == r.orig.src
                 and ipaddress.ip_address(g[da]) == r.orig.dst
                 and (icmp or g["dst_port"] == r.orig.dport)]
        assert len(match) == 1, (r, got)
        g = match[0]
        if icmp:  # nfdump shows icmpTypeCodeIPv4 as type and code
            assert (g["icmp_type"], g["icmp_code"]) == (8, 0)
        else:
            assert g["src_port"] == r.orig.sport
        assert (g["in_packets"], g["in_bytes"]) == (r.orig_packets, r.orig_bytes)
        assert (g["out_packets"], g["out_bytes"]) == (r.reply_packets, r.reply_bytes)
        first = int(r.start_ns // 1_000_000)
        last = int(r.end_ns // 1_000_000)
        assert g["first"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first // 1000)) \
            + ".%03d" % (first % 1000)
        assert g["last"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last // 1000)) \
            + ".%03d" % (last % 1000)
    u = next(g for g in got if g.get("dst_port") == 5353)
    assert (u["in_packets"], u["in_bytes"], u["out_packets"], u["out_bytes"]) == (3, 96, 2, 76)
    t = next(g for g in got if g.get("dst_port") == 8080)
    tr = next(r for r in mine if r.orig.dport == 8080)
    assert t["in_bytes"] >= 1000 and t["in_bytes"] == tr.orig_bytes


def test_ipfix_templates_resent_for_a_late_collector(ns, tmp_path):
    """A collector that starts after the exporter learns the templates at
    the next refresh and decodes what follows."""
    ct_ns(ns)
    exporter = IpfixExporter("127.0.0.1:4739", netns=ns.name, template_refresh=1.0)
    col = Collect()
    with FlowRecorder([col, exporter], netns=ns.name, filter=EventFilter(proto="udp")) as rec:
        udp_exchange(ns, "127.0.0.1", 5353)
        end_flows(ns, (5353,))
        record_until(rec, 1)  # templates and this record go nowhere
        cap = Nfcapd(ns, str(tmp_path), port=4739)
        rec.run(timeout=1.5)  # idle: the refresh is sent meanwhile
        udp_exchange(ns, "127.0.0.1", 5354, out=5, back=0)
        end_flows(ns, (5354,))
        record_until(rec, 2)
        time.sleep(0.3)
    cap.stop()
    got = cap.flows()
    assert [(g["dst_port"], g["in_packets"], g["in_bytes"]) for g in got] == [(5354, 5, 160)]
