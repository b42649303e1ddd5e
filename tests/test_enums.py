# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind's enums hold the kernel's values.

The enums are built from the compiled modules' constants; comparing them
with those same constants would prove nothing.  Here every member is
compared with the value read independently: from the installed header text
(helpers.cheaders, no compiler involved) under the C name the member stands
for, and from Python's own socket module where it has the constant.  The
kernel's behaviour is checked by the integration tests (hooks, families,
verdicts, copy modes, TCP states and status bits of real packets and flows).
"""
from __future__ import annotations

import enum
import socket
from typing import Dict, List, Tuple

import pytest

from nfbind import enums

from helpers.cheaders import constants

pytestmark = pytest.mark.unit

#: enum -> (the C prefix of its members' names, the headers defining them)
SOURCES: Dict[str, Tuple[str, List[str]]] = {
    "Verdict": ("NF_", ["linux/netfilter.h"]),
    "Hook": ("NF_INET_", ["linux/netfilter.h"]),
    "Family": ("NFPROTO_", ["linux/netfilter.h"]),
    "ArpHook": ("NF_ARP_", ["linux/netfilter_arp.h"]),
    "CopyMode": ("NFQNL_COPY_", ["linux/netfilter/nfnetlink_queue.h"]),
    "QueueFlag": ("NFQA_CFG_F_", ["linux/netfilter/nfnetlink_queue.h"]),
    "CtInfo": ("IP_CT_", ["linux/netfilter/nf_conntrack_common.h"]),
    "CtStatus": ("IPS_", ["linux/netfilter/nf_conntrack_common.h"]),
    "TcpState": ("TCP_CONNTRACK_", ["linux/netfilter/nf_conntrack_tcp.h"]),
    # the conntrack enums exist when nfbind was built with libnetfilter_conntrack
    "CtEvent": ("NFCT_T_", ["libnetfilter_conntrack/libnetfilter_conntrack.h"]),
    "IPProto": ("IPPROTO_", ["linux/in.h", "linux/in6.h"]),
    "SctpState": ("SCTP_CONNTRACK_", ["linux/netfilter/nf_conntrack_sctp.h"]),
    "ExpectFlag": ("NF_CT_EXPECT_", ["linux/netfilter/nf_conntrack_common.h"]),
    "TcpFlag": ("IP_CT_TCP_FLAG_", ["linux/netfilter/nf_conntrack_tcp.h"]),
}

BUILT = [name for name in SOURCES if hasattr(enums, name)]


def test_every_enum_is_checked():
    defined = {name for name, obj in vars(enums).items()
               if isinstance(obj, type) and issubclass(obj, enum.Enum)
               and obj.__module__ != enum.__name__}
    assert defined <= set(SOURCES), "an enum without a header to check it against"
    assert defined == set(BUILT)
    assert {"Verdict", "Hook", "Family", "CopyMode", "QueueFlag", "CtInfo", "CtStatus",
            "TcpState"} <= defined


@pytest.mark.parametrize("name", BUILT)
def test_members_are_the_header_values(name):
    cls = getattr(enums, name)
    prefix, headers = SOURCES[name]
    text = constants(headers)
    members = cls.__members__  # aliases too
    assert members, name
    for member_name, member in members.items():
        c_name = prefix + member_name
        assert c_name in text, "%s.%s: no %s in %s" % (name, member_name, c_name, headers)
        assert int(member) == text[c_name], (name, member_name, int(member), text[c_name])
    # no two names for one value: the headers give none of these twice
    values = [int(m) for m in members.values()]
    assert len(set(values)) == len(values), (name, values)


def test_flags_are_single_bits_and_all_is_their_union():
    for cls in (enums.CtStatus, enums.QueueFlag, enums.TcpFlag) + (
            (enums.ExpectFlag,) if hasattr(enums, "ExpectFlag") else ()):
        for m in cls.__members__.values():
            assert m and not m & (m - 1), "%s.%s is not a single bit" % (cls.__name__, m.name)
    if hasattr(enums, "CtEvent"):
        ev = enums.CtEvent
        assert ev.ALL == ev.NEW | ev.UPDATE | ev.DESTROY
        for m in (ev.NEW, ev.UPDATE, ev.DESTROY):
            assert not m & (m - 1)


def test_families_and_protocols_are_the_socket_modules():
    assert enums.Family.IPV4 == socket.AF_INET
    assert enums.Family.IPV6 == socket.AF_INET6
    if not hasattr(enums, "IPProto"):
        return
    for m in enums.IPProto.__members__.values():
        const = getattr(socket, "IPPROTO_" + m.name, None)
        if const is not None:  # Python lacks a few (DCCP)
            assert m == const, m
    assert enums.IPProto.TCP == socket.IPPROTO_TCP and enums.IPProto.UDP == socket.IPPROTO_UDP


def test_ctstatus_flag_operations():
    CtStatus = enums.CtStatus
    status = CtStatus(int(CtStatus.ASSURED) | int(CtStatus.SEEN_REPLY) | int(CtStatus.CONFIRMED))
    assert CtStatus.ASSURED in status
    assert CtStatus.SEEN_REPLY in status
    assert CtStatus.DYING not in status
    assert CtStatus.SRC_NAT not in status
    assert status & ~CtStatus.ASSURED == CtStatus.SEEN_REPLY | CtStatus.CONFIRMED


def test_queue_flags_combine():
    QueueFlag = enums.QueueFlag
    f = QueueFlag(int(QueueFlag.FAIL_OPEN) | int(QueueFlag.GSO))
    assert QueueFlag.FAIL_OPEN in f and QueueFlag.GSO in f
    assert QueueFlag.CONNTRACK not in f
