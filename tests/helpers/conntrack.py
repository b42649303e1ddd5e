# SPDX-License-Identifier: GPL-2.0-or-later
"""Conntrack-using namespaces, and ``conntrack -L`` read back: the
conntrack-tools view every conntrack test compares nfbind's flows with."""
from __future__ import annotations

import ipaddress
import time
from typing import Dict, List, Optional

from nfbind.conntrack import Flow, Tuple
from nfbind.enums import CtStatus, Family, IPProto


def ct_ns(ns, *, acct: bool = True, tstamp: bool = True, v6: bool = True) -> None:
    """Make ``ns`` track connections (the rule) and count/stamp them."""
    for fam6 in ((False, True) if v6 else (False,)):
        ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED",
                    "-j", "ACCEPT", v6=fam6)
    ns.run("sysctl", "-qw",
           "net.netfilter.nf_conntrack_acct=%d" % acct,
           "net.netfilter.nf_conntrack_timestamp=%d" % tstamp)


_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "srckey", "dstkey",
               "packets", "bytes"}


def parse_line(line: str) -> dict:
    """One line of ``conntrack -L -o extended,id[,labels]`` (or of -E)."""
    toks = line.split()
    if toks and toks[0].startswith("[") and toks[0].endswith("]") and "=" not in toks[0]:
        event = toks.pop(0).strip("[]")
    else:
        event = None
    d: dict = {"event": event, "family": toks[0], "proto": int(toks[3]),
               "timeout": int(toks[4]) if toks[4].isdigit() else None, "flags": set()}
    i = 5 if d["timeout"] is not None else 4
    if i < len(toks) and "=" not in toks[i] and not toks[i].startswith("["):
        d["state"] = toks[i]
        i += 1
    tuples: List[Dict[str, str]] = [{}, {}]
    cur = -1
    for t in toks[i:]:
        if t.startswith("[") and "=" not in t:
            d["flags"].add(t.strip("[]"))
            continue
        k, _, v = t.partition("=")
        if k == "src" and cur < 1:
            cur += 1
        if 0 <= cur <= 1 and k in _TUPLE_KEYS:
            tuples[cur][k] = v
        else:
            cur = 2
            d[k] = v
    d["orig"], d["reply"] = tuples
    return d


def conntrack_l(ns, *extra: str) -> List[dict]:
    """Both families' flows as ``conntrack -L -o extended,id`` shows them."""
    rows = []
    for fam in ("ipv4", "ipv6"):
        out = ns.run("conntrack", "-L", "-f", fam, "-o", "extended,id", *extra, check=False)
        rows += [parse_line(l) for l in out.splitlines() if l.strip()]
    return rows


def _tuple_matches(t: Tuple, row: Dict[str, str]) -> None:
    assert t.src == ipaddress.ip_address(row["src"])
    assert t.dst == ipaddress.ip_address(row["dst"])
    if "sport" in row:
        assert (t.sport, t.dport) == (int(row["sport"]), int(row["dport"]))
    elif "srckey" in row:  # GRE keys
        assert (t.sport, t.dport) == (int(row["srckey"], 16), int(row["dstkey"], 16))
    elif "type" in row:
        assert (t.icmp_type, t.icmp_code, t.icmp_id) == (
            int(row["type"]), int(row["code"]), int(row["id"]))


def flow_key(f: Flow) -> tuple:
    o = f.orig
    return (int(f.proto), str(o.src), str(o.dst), o.sport, o.dport, o.icmp_id)


def row_key(r: dict) -> tuple:
    o = r["orig"]
    ports = (int(o["sport"]), int(o["dport"])) if "sport" in o else (
        (int(o["srckey"], 16), int(o["dstkey"], 16)) if "srckey" in o else (None, None))
    icmp_id = int(o["id"]) if "type" in o else None
    return (r["proto"], str(ipaddress.ip_address(o["src"])), str(ipaddress.ip_address(o["dst"])),
            ports[0], ports[1], icmp_id)


def compare(f: Flow, r: dict, *, now: Optional[float] = None, use: bool = True) -> None:
    """Every field conntrack -L shows, against the Flow.  ``use`` is compared
    for dumped flows only: a get() answer counts the kernel's own reference."""
    assert f.family == (Family.IPV4 if r["family"] == "ipv4" else Family.IPV6)
    assert int(f.proto) == r["proto"]
    if r["timeout"] is not None:
        assert f.timeout is not None and abs(f.timeout - r["timeout"]) <= 2
    if "state" in r:
        assert f.state is not None and f.state.name == r["state"]
    else:
        assert f.state is None or f.proto not in (IPProto.TCP, IPProto.SCTP)
    _tuple_matches(f.orig, r["orig"])
    assert f.reply is not None
    _tuple_matches(f.reply, r["reply"])
    if "packets" in r["orig"]:
        assert f.counters is not None
        assert f.counters.orig_packets == int(r["orig"]["packets"])
        assert f.counters.orig_bytes == int(r["orig"]["bytes"])
        assert f.counters.reply_packets == int(r["reply"]["packets"])
        assert f.counters.reply_bytes == int(r["reply"]["bytes"])
    else:
        assert f.counters is None
    assert ("UNREPLIED" in r["flags"]) == (CtStatus.SEEN_REPLY not in f.status)
    assert ("ASSURED" in r["flags"]) == (CtStatus.ASSURED in f.status)
    assert f.mark == int(r.get("mark", 0))
    assert f.zone == int(r.get("zone", 0))
    if "use" in r:  # events show none
        if use:
            assert f.use == int(r["use"])
        else:
            assert f.use is not None and f.use >= int(r["use"])
    assert f.id == int(r["id"])
    assert f.helper == r.get("helper")
    if "delta-time" in r:
        ts = f.timestamps
        assert ts is not None
        if ts.stop is None:
            now = time.time() if now is None else now
            assert abs((now - ts.start) - int(r["delta-time"])) <= 2
        else:  # a destroyed flow: its lifetime
            assert abs(ts.duration - int(r["delta-time"])) <= 1
    if "secctx" in r:
        assert f.secctx == r["secctx"]


def match_all(flows: List[Flow], rows: List[dict]) -> Dict[tuple, Flow]:
    by_key = {flow_key(f): f for f in flows}
    assert len(by_key) == len(flows), "two flows with one key"
    assert sorted(by_key) == sorted(row_key(r) for r in rows), (flows, rows)
    now = time.time()
    for r in rows:
        compare(by_key[row_key(r)], r, now=now)
    return by_key
