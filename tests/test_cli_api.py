# SPDX-License-Identifier: GPL-2.0-or-later
"""The public API the ``nfbind`` command prints through: ``Flow.as_dict()``
(what ``--json`` prints) and ``parse_proto()``.  No privileges needed."""
from __future__ import annotations

import ipaddress
import json

import pytest

# -- the public API the CLI prints through ----------------------------------------------------

conntrack = pytest.importorskip("nfbind.conntrack", reason="libnetfilter_conntrack not built")


def _flows() -> list:
    C = conntrack
    from nfbind.enums import CtStatus, TcpState

    a, b = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")
    return [
        C.Flow(C.Tuple(a, b, "tcp", 1000, 80), C.Tuple(b, a, "tcp", 80, 1000), timeout=120,
               state=TcpState.ESTABLISHED, status=CtStatus.ASSURED | CtStatus.SEEN_REPLY,
               mark=7, zone=2, labels={100, 3}, id=42, use=1, secmark=9, helper="ftp",
               counters=C.Counters(3, 180, 2, 120), timestamps=C.Timestamps(1_700_000_000 * 10**9),
               nat=C.Nat(snat=C.Endpoint(ipaddress.ip_address("192.0.2.1"), 4000))),
        C.Flow(C.Tuple("::1", "::2", "icmpv6", icmp_type=128, icmp_id=5),
               timestamps=C.Timestamps(10**18, 10**18 + 2 * 10**9)),
        C.Flow(C.Tuple("::1", "::2", "dccp", 5, 6), state=3),
        C.Flow(C.Tuple(a, b, 50)),
    ]


def test_flow_as_dict():
    d = _flows()[0].as_dict()
    assert d == {
        "family": "ipv4", "proto": "tcp",
        "orig": {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "tcp", "sport": 1000, "dport": 80},
        "reply": {"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "tcp", "sport": 80, "dport": 1000},
        "state": "ESTABLISHED", "status": ["SEEN_REPLY", "ASSURED"], "timeout": 120, "mark": 7,
        "zone": 2, "labels": [3, 100], "id": 42, "use": 1, "secmark": 9, "helper": "ftp",
        "counters": {"orig_packets": 3, "orig_bytes": 180, "reply_packets": 2, "reply_bytes": 120},
        "timestamps": {"start": 1_700_000_000.0, "stop": None},
        "nat": {"snat": "192.0.2.1:4000", "dnat": None},
    }
    assert list(d) == ["family", "proto", "orig", "reply", "state", "status", "timeout", "mark",
                       "zone", "labels", "id", "use", "secmark", "helper", "counters",
                       "timestamps", "nat"]


def test_small_flows_as_dict():
    icmp, dccp, other = (f.as_dict() for f in _flows()[1:])
    assert icmp["family"] == "ipv6" and icmp["reply"] is None and icmp["state"] is None
    assert icmp["orig"] == {"src": "::1", "dst": "::2", "proto": "icmpv6", "icmp_type": 128,
                            "icmp_code": 0, "icmp_id": 5}
    assert icmp["timestamps"] == {"start": 1e9, "stop": 1e9 + 2}
    assert "counters" not in icmp and "nat" not in icmp
    assert dccp["state"] == 3 and dccp["orig"]["dport"] == 6  # DCCP states have no names
    assert other["proto"] == "50" and other["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2",
                                                        "proto": "50"}
    assert other["status"] == [] and other["labels"] == []


@pytest.mark.parametrize("i", range(4))
def test_flow_as_dict_round_trips_through_json(i: int):
    d = _flows()[i].as_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON values: no default= needed


def test_parse_proto():
    from nfbind.enums import IPProto

    assert conntrack.parse_proto("TCP") is IPProto.TCP
    assert conntrack.parse_proto("ipv6-icmp") is IPProto.ICMPV6
    assert conntrack.parse_proto(17) is IPProto.UDP
    esp = conntrack.parse_proto("esp")  # /etc/protocols: a number IPProto does not name
    assert esp == 50 and not isinstance(esp, IPProto)
    with pytest.raises(ValueError, match="proto: unknown protocol name 'nosuch'"):
        conntrack.parse_proto("nosuch")
    with pytest.raises(ValueError, match="proto"):
        conntrack.parse_proto(256)
    with pytest.raises(TypeError, match="proto"):
        conntrack.parse_proto(1.5)
