# SPDX-License-Identifier: GPL-2.0-or-later
"""Enumerations whose values come from the compiled modules (that is, from the
system's C headers); none is typed in here.

All but :class:`CtEvent` come from the core module, which every install has;
CtEvent's values are libnetfilter_conntrack's, so it exists when the conntrack
channel was built (touching it otherwise raises ImportError naming the
package to install).
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from . import _channels
from ._core import lib

__all__ = [
    "Verdict",
    "CopyMode",
    "Hook",
    "ArpHook",
    "Family",
    "CtInfo",
    "CtStatus",
    "TcpState",
    "QueueFlag",
    "IPProto",
    "SctpState",
    "ExpectFlag",
    "TcpFlag",
]


class Verdict(enum.IntEnum):
    """A packet's fate.

    ``ACCEPT`` and ``DROP`` are final.  ``REPEAT`` sends the packet through
    the same hook again, from the start of its rules.  ``STOP`` accepts without
    running later hooks.  ``QUEUE`` needs a queue number: use
    ``pkt.queue(num)`` rather than returning it.
    """

    DROP = lib.NF_DROP
    ACCEPT = lib.NF_ACCEPT
    QUEUE = lib.NF_QUEUE
    REPEAT = lib.NF_REPEAT
    STOP = lib.NF_STOP


class CopyMode(enum.IntEnum):
    """How much of each packet the kernel copies: nothing, metadata only, or
    metadata and up to ``copy_range`` bytes of the packet.
    """

    NONE = lib.NFQNL_COPY_NONE
    META = lib.NFQNL_COPY_META
    PACKET = lib.NFQNL_COPY_PACKET


class Hook(enum.IntEnum):
    """The netfilter hook a packet was seen at (INPUT is LOCAL_IN, OUTPUT is
    LOCAL_OUT).
    """

    PRE_ROUTING = lib.NF_INET_PRE_ROUTING
    LOCAL_IN = lib.NF_INET_LOCAL_IN
    FORWARD = lib.NF_INET_FORWARD
    LOCAL_OUT = lib.NF_INET_LOCAL_OUT
    POST_ROUTING = lib.NF_INET_POST_ROUTING


class ArpHook(enum.IntEnum):
    """The hook of an ARP-family packet (arptables numbers its hooks apart)."""

    IN = lib.NF_ARP_IN
    OUT = lib.NF_ARP_OUT
    FORWARD = lib.NF_ARP_FORWARD


class Family(enum.IntEnum):
    """Netfilter protocol family (NFPROTO_*); IPV4 and IPV6 equal AF_INET and
    AF_INET6.
    """

    UNSPEC = lib.NFPROTO_UNSPEC
    INET = lib.NFPROTO_INET
    IPV4 = lib.NFPROTO_IPV4
    ARP = lib.NFPROTO_ARP
    NETDEV = lib.NFPROTO_NETDEV
    BRIDGE = lib.NFPROTO_BRIDGE
    IPV6 = lib.NFPROTO_IPV6


class CtInfo(enum.IntEnum):
    """How a packet relates to its connection (the kernel's enum ip_conntrack_info)."""

    ESTABLISHED = lib.IP_CT_ESTABLISHED
    RELATED = lib.IP_CT_RELATED
    NEW = lib.IP_CT_NEW
    ESTABLISHED_REPLY = lib.IP_CT_ESTABLISHED_REPLY
    RELATED_REPLY = lib.IP_CT_RELATED_REPLY


class CtStatus(enum.IntFlag):
    """Conntrack status bits: ``CtStatus.ASSURED in flow.status``."""

    EXPECTED = lib.IPS_EXPECTED
    SEEN_REPLY = lib.IPS_SEEN_REPLY
    ASSURED = lib.IPS_ASSURED
    CONFIRMED = lib.IPS_CONFIRMED
    SRC_NAT = lib.IPS_SRC_NAT
    DST_NAT = lib.IPS_DST_NAT
    SEQ_ADJUST = lib.IPS_SEQ_ADJUST
    SRC_NAT_DONE = lib.IPS_SRC_NAT_DONE
    DST_NAT_DONE = lib.IPS_DST_NAT_DONE
    DYING = lib.IPS_DYING
    FIXED_TIMEOUT = lib.IPS_FIXED_TIMEOUT
    TEMPLATE = lib.IPS_TEMPLATE
    UNTRACKED = lib.IPS_UNTRACKED
    HELPER = lib.IPS_HELPER
    OFFLOAD = lib.IPS_OFFLOAD
    HW_OFFLOAD = lib.IPS_HW_OFFLOAD


class TcpState(enum.IntEnum):
    """Conntrack's TCP state machine."""

    NONE = lib.TCP_CONNTRACK_NONE
    SYN_SENT = lib.TCP_CONNTRACK_SYN_SENT
    SYN_RECV = lib.TCP_CONNTRACK_SYN_RECV
    ESTABLISHED = lib.TCP_CONNTRACK_ESTABLISHED
    FIN_WAIT = lib.TCP_CONNTRACK_FIN_WAIT
    CLOSE_WAIT = lib.TCP_CONNTRACK_CLOSE_WAIT
    LAST_ACK = lib.TCP_CONNTRACK_LAST_ACK
    TIME_WAIT = lib.TCP_CONNTRACK_TIME_WAIT
    CLOSE = lib.TCP_CONNTRACK_CLOSE
    SYN_SENT2 = lib.TCP_CONNTRACK_SYN_SENT2


class QueueFlag(enum.IntFlag):
    """NFQUEUE configuration flags (``NfQueue(fail_open=..., gso=...)``)."""

    FAIL_OPEN = lib.NFQA_CFG_F_FAIL_OPEN
    CONNTRACK = lib.NFQA_CFG_F_CONNTRACK
    GSO = lib.NFQA_CFG_F_GSO
    UID_GID = lib.NFQA_CFG_F_UID_GID
    SECCTX = lib.NFQA_CFG_F_SECCTX


class IPProto(enum.IntEnum):
    """Layer-4 protocols conntrack tracks by name (``flow.proto``); other
    protocol numbers stay plain ints.
    """

    ICMP = lib.IPPROTO_ICMP
    TCP = lib.IPPROTO_TCP
    UDP = lib.IPPROTO_UDP
    DCCP = lib.IPPROTO_DCCP
    GRE = lib.IPPROTO_GRE
    ICMPV6 = lib.IPPROTO_ICMPV6
    SCTP = lib.IPPROTO_SCTP
    UDPLITE = lib.IPPROTO_UDPLITE


class SctpState(enum.IntEnum):
    """Conntrack's SCTP state machine (``flow.state`` of SCTP flows)."""

    NONE = lib.SCTP_CONNTRACK_NONE
    CLOSED = lib.SCTP_CONNTRACK_CLOSED
    COOKIE_WAIT = lib.SCTP_CONNTRACK_COOKIE_WAIT
    COOKIE_ECHOED = lib.SCTP_CONNTRACK_COOKIE_ECHOED
    ESTABLISHED = lib.SCTP_CONNTRACK_ESTABLISHED
    SHUTDOWN_SENT = lib.SCTP_CONNTRACK_SHUTDOWN_SENT
    SHUTDOWN_RECD = lib.SCTP_CONNTRACK_SHUTDOWN_RECD
    SHUTDOWN_ACK_SENT = lib.SCTP_CONNTRACK_SHUTDOWN_ACK_SENT
    HEARTBEAT_SENT = lib.SCTP_CONNTRACK_HEARTBEAT_SENT


class ExpectFlag(enum.IntFlag):
    """Flags of a conntrack expectation."""

    PERMANENT = lib.NF_CT_EXPECT_PERMANENT
    INACTIVE = lib.NF_CT_EXPECT_INACTIVE
    USERSPACE = lib.NF_CT_EXPECT_USERSPACE


class TcpFlag(enum.IntFlag):
    """What conntrack learnt about one direction of a TCP connection
    (``flow.tcp.flags_orig``, ``flow.tcp.flags_reply``)."""

    WINDOW_SCALE = lib.IP_CT_TCP_FLAG_WINDOW_SCALE
    SACK_PERM = lib.IP_CT_TCP_FLAG_SACK_PERM
    CLOSE_INIT = lib.IP_CT_TCP_FLAG_CLOSE_INIT
    BE_LIBERAL = lib.IP_CT_TCP_FLAG_BE_LIBERAL
    DATA_UNACKNOWLEDGED = lib.IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
    MAXACK_SET = lib.IP_CT_TCP_FLAG_MAXACK_SET


# -- conntrack events: libnetfilter_conntrack's NFCT_T_* values, from
#    nfbind._conntrack; absent when the conntrack channel was not built ---------

if _channels.available("conntrack"):
    from ._conntrack import lib as _ct

    class CtEvent(enum.IntFlag):
        """Conntrack event types (libnetfilter_conntrack's NFCT_T_*):
        ``ct.events(CtEvent.NEW | CtEvent.DESTROY)``; ``ALL`` is all three.
        """

        NEW = _ct.NFCT_T_NEW
        UPDATE = _ct.NFCT_T_UPDATE
        DESTROY = _ct.NFCT_T_DESTROY
        ALL = _ct.NFCT_T_ALL

    __all__ += ["CtEvent"]


# Hidden from type checkers: for them a module __getattr__ would type every
# misspelt name as its return value instead of reporting it.
if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        if name == "CtEvent":
            raise _channels.missing("conntrack", "nfbind.enums.CtEvent")
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
