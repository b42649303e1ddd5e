# SPDX-License-Identifier: GPL-2.0-or-later
"""Flow records without the kernel: FlowRecord from a Flow, JSON lines,
SQLite rows, the IPFIX encoder (read back by a decoder written from RFC 7011,
apart from nfbind's), collector parsing, and the CLI's option checks."""
from __future__ import annotations

import io
import ipaddress
import json
import sqlite3

import pytest

from nfbind.cli import main
from nfbind.conntrack import Counters, Flow, Timestamps, Tuple
from nfbind.flows import COLUMNS, FlowRecord, IpfixEncoder, JsonLines, SQLite
from nfbind.flows.ipfix import REVERSE_PEN, parse_hostport
from nfbind.flows.outputs import rows_as_dicts

from helpers.nfcapd import decode, element

T0 = 1_700_000_000_123_456_789


def udp_flow(**kw) -> Flow:
    d = dict(orig=Tuple("10.0.0.1", "10.0.0.2", "udp", 40000, 53),
             reply=Tuple("10.0.0.2", "192.0.2.9", "udp", 53, 41000),
             zone=3, mark=7, id=99,
             counters=Counters(3, 96, 2, 76),
             timestamps=Timestamps(T0, T0 + 2_500_000_000))
    d.update(kw)
    return Flow(**d)


def test_record_fields():
    r = FlowRecord.from_flow(udp_flow())
    assert (str(r.orig.src), str(r.orig.dst), r.orig.sport, r.orig.dport) == (
        "10.0.0.1", "10.0.0.2", 40000, 53)
    assert str(r.reply.dst) == "192.0.2.9" and r.reply.dport == 41000
    assert (r.zone, r.mark, r.ct_id) == (3, 7, 99)
    assert (r.orig_packets, r.orig_bytes, r.reply_packets, r.reply_bytes) == (3, 96, 2, 76)
    assert r.start == pytest.approx(T0 / 1e9) and r.end == pytest.approx(T0 / 1e9 + 2.5)
    assert r.duration == pytest.approx(2.5)
    assert int(r.proto) == 17 and int(r.family) == 2
    assert "3 pkts 96 B" in str(r) and "zone=3" in str(r)


def test_record_without_accounting():
    r = FlowRecord.from_flow(udp_flow(counters=None, timestamps=None))
    assert r.orig_packets is r.orig_bytes is r.reply_packets is r.reply_bytes is None
    assert r.start is r.end is r.duration is None
    d = r.as_dict()
    assert d["orig_packets"] is None and d["duration"] is None
    assert "? pkts" in str(r)


def test_json_lines(tmp_path):
    recs = [FlowRecord.from_flow(udp_flow()),
            FlowRecord.from_flow(udp_flow(orig=Tuple("2001:db8::1", "2001:db8::2", "icmpv6",
                                                     icmp_type=128, icmp_id=5),
                                          reply=None))]
    buf = io.StringIO()
    out = JsonLines(buf)
    out.write(recs)
    out.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    a, b = (json.loads(l) for l in lines)
    assert a["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp",
                         "sport": 40000, "dport": 53}
    assert a["reply"]["dst"] == "192.0.2.9"
    assert (a["orig_packets"], a["orig_bytes"], a["reply_packets"], a["reply_bytes"]) == (
        3, 96, 2, 76)
    assert (a["zone"], a["mark"], a["ct_id"], a["family"], a["proto"]) == (3, 7, 99, "ipv4", "udp")
    assert a["duration"] == pytest.approx(2.5)
    assert b["family"] == "ipv6" and b["proto"] == "icmpv6" and b["reply"] is None
    assert b["orig"]["icmp_type"] == 128
    # a path: appended to
    p = tmp_path / "f.jsonl"
    for _ in range(2):
        with JsonLines(str(p)) as out:
            out.write(recs[:1])
    assert len(p.read_text().splitlines()) == 2
    with pytest.raises(TypeError, match="path or a text file"):
        JsonLines(3)  # type: ignore[arg-type]


def test_sqlite_rows(tmp_path):
    db = str(tmp_path / "f.db")
    recs = [FlowRecord.from_flow(udp_flow(id=i)) for i in range(5)]
    with SQLite(db) as out:
        out.write(recs[:2])
        out.write(recs[2:])
        out.write([])
    with SQLite(db) as out:  # the table exists: used as it is
        out.write(recs[:1])
    con = sqlite3.connect(db)
    rows = rows_as_dicts(con)
    assert len(rows) == 6
    assert [r["ct_id"] for r in rows] == [0, 1, 2, 3, 4, 0]
    r = rows[0]
    assert (r["orig_src"], r["orig_dst"], r["orig_sport"], r["orig_dport"]) == (
        "10.0.0.1", "10.0.0.2", 40000, 53)
    assert (r["reply_src"], r["reply_dst"], r["reply_sport"], r["reply_dport"]) == (
        "10.0.0.2", "192.0.2.9", 53, 41000)
    assert (r["orig_packets"], r["orig_bytes"], r["reply_packets"], r["reply_bytes"]) == (
        3, 96, 2, 76)
    assert (r["zone"], r["mark"], r["proto"], r["family"]) == (3, 7, "udp", "ipv4")
    assert r["end"] - r["start"] == pytest.approx(2.5) and r["duration"] == pytest.approx(2.5)
    assert list(r) == list(COLUMNS)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a table of another shape is refused with the fix
    con.execute("CREATE TABLE other (a INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="has no columns ct_id.*another table name"):
        SQLite(db, table="other")
    with pytest.raises(ValueError, match="SQL identifier"):
        SQLite(db, table="x; DROP TABLE flows")


def _decode_all(msgs):
    templates: dict = {}
    return [decode(m, templates) for m in msgs], templates


def test_ipfix_templates_and_records():
    enc = IpfixEncoder(domain_id=42, max_message=1400, template_refresh=30)
    r4 = FlowRecord.from_flow(udp_flow())
    r6 = FlowRecord.from_flow(udp_flow(
        orig=Tuple("2001:db8::1", "2001:db8::2", "tcp", 1234, 443),
        reply=Tuple("2001:db8::2", "2001:db8::1", "tcp", 443, 1234)))
    icmp = FlowRecord.from_flow(udp_flow(
        orig=Tuple("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_code=0, icmp_id=77),
        reply=Tuple("10.0.0.2", "10.0.0.1", "icmp", icmp_type=0, icmp_code=0, icmp_id=77)))
    bare = FlowRecord.from_flow(udp_flow(counters=None, timestamps=None))
    msgs = enc.encode([r4, r6, icmp, bare], now=100.0, export_time=1234)
    decoded, templates = _decode_all(msgs)
    # the templates come first, at start; every message is within max_message
    assert decoded[0]["templates"] and not decoded[0]["records"]
    assert all(len(m) <= 1400 for m in msgs)
    assert all(d["domain"] == 42 and d["export_time"] == 1234 for d in decoded)
    recs = [r for d in decoded for r in d["records"]]
    assert len(recs) == 4
    a, b, c, d = recs
    assert ipaddress.ip_address(element(a, 8)) == ipaddress.ip_address("10.0.0.1")
    assert ipaddress.ip_address(element(a, 12)) == ipaddress.ip_address("10.0.0.2")
    assert (element(a, 4), element(a, 7), element(a, 11)) == (17, 40000, 53)
    assert (element(a, 2), element(a, 1)) == (3, 96)
    assert (element(a, 2, REVERSE_PEN), element(a, 1, REVERSE_PEN)) == (2, 76)
    assert element(a, 152) == T0 // 1_000_000
    assert element(a, 153) == (T0 + 2_500_000_000) // 1_000_000
    assert element(a, 239) == 1
    assert ipaddress.ip_address(element(b, 27)) == ipaddress.ip_address("2001:db8::1")
    assert (element(b, 4), element(b, 7), element(b, 11)) == (6, 1234, 443)
    assert element(c, 32) == 8 * 256 and element(c, 7) is None
    # no counts, no times: a template without them, not zeros
    assert element(d, 2) is None and element(d, 152) is None and element(d, 7) == 40000
    assert len({r["template"] for r in recs}) == 4
    # the sequence number counts data records sent before each message
    seqs = [dd["sequence"] for dd in decoded]
    counts = [len(dd["records"]) for dd in decoded]
    for i in range(1, len(decoded)):
        assert seqs[i] == seqs[i - 1] + counts[i - 1]
    assert enc.sequence == 4
    # the fields a template announces are the ones a collector must know
    fields = {f for fs in templates.values() for f in fs}
    assert {(8, 4, 0), (12, 4, 0), (27, 16, 0), (28, 16, 0), (4, 1, 0), (7, 2, 0), (11, 2, 0),
            (2, 8, 0), (1, 8, 0), (2, 8, REVERSE_PEN), (1, 8, REVERSE_PEN), (152, 8, 0),
            (153, 8, 0), (32, 2, 0), (139, 2, 0)} <= fields


def test_ipfix_template_refresh_and_splitting():
    enc = IpfixEncoder(max_message=300, template_refresh=10)
    recs = [FlowRecord.from_flow(udp_flow(id=i)) for i in range(50)]
    first = enc.encode(recs, now=0.0)
    decoded, templates = _decode_all(first)
    assert all(len(m) <= 300 for m in first)
    assert sum(len(d["records"]) for d in decoded) == 50
    assert len(decoded) > 10  # split
    # before the refresh: data only
    again = enc.encode(recs[:1], now=5.0)
    assert len(again) == 1 and not decode(again[0], templates)["templates"]
    assert not enc.due(9.9) and enc.due(10.0)
    # at the refresh: every template again, then the data
    later = enc.encode(recs[:1], now=10.0)
    d2 = [decode(m, {}) if i else decode(m, {}) for i, m in enumerate(later[:-1])]
    assert sorted(t for d in d2 for t in d["templates"]) == sorted(templates)
    assert decode(later[-1], templates)["sequence"] == 51
    # a layout seen for the first time brings its template along in the same message
    bare = FlowRecord.from_flow(udp_flow(counters=None))
    new = enc.encode([bare], now=11.0)
    assert len(new) == 1
    d = decode(new[0], dict(templates))
    assert len(d["templates"]) == 1 and len(d["records"]) == 1


def test_ipfix_checks_arguments():
    for kw, match in (({"domain_id": -1}, "domain_id"), ({"max_message": 100}, "max_message"),
                      ({"template_refresh": 0}, "template_refresh")):
        with pytest.raises(ValueError, match=match):
            IpfixEncoder(**kw)
    assert parse_hostport("127.0.0.1:2055") == ("127.0.0.1", 2055)
    assert parse_hostport("[::1]:9995") == ("::1", 9995)
    assert parse_hostport("collector") == ("collector", 4739)
    assert parse_hostport("::1") == ("::1", 4739)
    for bad in ("", "host:0", "host:x", "[::1", "[::1]x", ":4739"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_cli_flow_options_need_flows(capsys):
    assert main(["ct", "events", "--sqlite", "x.db"]) == 2
    assert "--sqlite: only with --flows" in capsys.readouterr().err
    assert main(["ct", "events", "--flows", "--ipfix", "host:99999"]) == 2
    assert "port must be 1..65535" in capsys.readouterr().err
