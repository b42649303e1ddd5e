# SPDX-License-Identifier: GPL-2.0-or-later
"""The flow lines conntrack-tools prints, byte for byte, from public Flow fields.

``nfbind ct list -o extended`` prints what ``conntrack -L -o extended`` prints,
``nfbind ct events -o extended`` what ``conntrack -E -o extended`` prints.
The line is libnetfilter_conntrack's default text format (the one
conntrack-tools 1.4.x uses); this module writes it from a :class:`Flow`::

    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=A dst=B sport=P dport=Q [UNREPLIED]
          src=B dst=A sport=Q dport=P mark=0 zone=3 use=1 id=123

in this order, each part only when the flow has it:

* the event type, right-aligned in 9 columns (``    [NEW]``, `` [UPDATE]``,
  ``[DESTROY]``) for events;
* with ``extended``: the family name left-aligned in 8 columns and its number;
* the protocol name (``unknown`` for protocols conntrack has no name for)
  left-aligned in 8 columns and its number; the timeout; the TCP, SCTP or
  DCCP state;
* the original tuple: addresses, then ports (TCP, UDP, UDP-Lite, SCTP,
  DCCP), ``srckey=0x.. dstkey=0x..`` (GRE) or ``type= code= id=`` (ICMP,
  ICMPv6); its directional zone (``zone-orig=``); its counters;
  ``[UNREPLIED]`` until a reply was seen;
* the reply tuple the same way (``zone-reply=``), then the first of
  ``[HW_OFFLOAD]``, ``[OFFLOAD]``, ``[ASSURED]``;
* ``mark=``, ``secmark=``, ``secctx=``, ``zone=``; ``delta-time=`` (seconds
  since the flow started, or its lifetime once it stopped) when the kernel
  stamps flows; with ``ktimestamp`` ``[start=...]`` and ``[stop=...]`` in
  ``ctime()`` form (local time); ``helper=``; ``use=``; with ``id`` the id;
  with ``labels`` the names connlabel.conf gives the flow's label bits.

What the kernel sends decides what a line has, and a Flow keeps that: a
field the kernel left out is None (timeout, state, counters, timestamps,
use, id, helper, secctx) or empty (labels).  Two fields read as 0 when
absent: ``zone`` (the kernel sends it only when it is not 0, as conntrack
prints it) and ``mark``, which a dump always carries but an event only when
it is not 0 or just changed: so a dump line always has ``mark=``, an event
line only when the mark is not 0 (an event for a mark just changed to 0 is
the one case where ``conntrack -E`` shows ``mark=0`` and this module does
not).
"""
from __future__ import annotations

import dataclasses
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, FrozenSet, List, Optional, Tuple

from ..enums import CtStatus, Family, IPProto, SctpState, TcpState

if TYPE_CHECKING:
    from ..conntrack import Flow
    from ..conntrack import Tuple as CtTuple

__all__ = ["CtFormat", "OUTPUT_WORDS", "parse_output", "flow_line", "event_name",
           "receive_stamp", "shown"]


@dataclasses.dataclass(frozen=True)
class CtFormat:
    """What ``-o`` asked for, as conntrack-tools reads its ``-o`` words."""

    #: the family name and number in front of each line
    extended: bool = False
    #: ``[start=...] [stop=...]`` from the kernel's timestamps
    ktimestamp: bool = False
    #: the flow's id
    id: bool = False
    #: the names of the flow's labels (connlabel.conf)
    labels: bool = False
    #: events: the time nfbind received each one, in front of its line
    timestamp: bool = False


#: conntrack-tools' ``-o`` words, in the order it tries them against an
#: abbreviation (``-o e`` is ``extended``, ``-o t`` ``timestamp``); ``userspace``
#: changes nothing, as in conntrack-tools; ``conntrack`` is nfbind's own word for
#: conntrack-tools' line without any of the others.  ``xml`` and ``save`` are
#: conntrack-tools' too, refused with a message (see parse_output).
OUTPUT_WORDS: Tuple[str, ...] = ("xml", "extended", "timestamp", "id", "ktimestamp", "labels",
                                 "userspace", "save", "conntrack")

_UNSUPPORTED = {
    "xml": "nfbind prints no XML: --json gives one JSON object per flow",
    "save": "nfbind prints no conntrack command lines: --json gives one JSON object per flow",
}


def parse_output(text: str) -> CtFormat:
    """The :class:`CtFormat` of a ``-o`` argument: words of :data:`OUTPUT_WORDS`
    separated by commas, in any case, each also as an abbreviation (the first
    word it begins, in that order), as conntrack-tools reads them.

    Raises ValueError naming the bad word and the words there are.
    """
    words = set()
    for part in text.split(","):
        word = _expand(part)
        if word in _UNSUPPORTED:
            raise ValueError("-o %s: %s" % (word, _UNSUPPORTED[word]))
        words.add(word)
    return CtFormat(**{f.name: True for f in dataclasses.fields(CtFormat) if f.name in words})


def _expand(part: str) -> str:
    low = part.strip().lower()
    if low:
        for word in OUTPUT_WORDS:
            if word.startswith(low):
                return word
    raise ValueError("-o takes words separated by commas: %s (e.g. -o extended,id); got %r"
                     % (", ".join(w for w in OUTPUT_WORDS if w not in _UNSUPPORTED), part))


# -- the names conntrack-tools prints ---------------------------------------------------------

# the protocols libnetfilter_conntrack names (others are "unknown")
_PROTO_NAMES = {int(p): p.name.lower() for p in (
    IPProto.TCP, IPProto.UDP, IPProto.UDPLITE, IPProto.ICMP, IPProto.ICMPV6, IPProto.SCTP,
    IPProto.GRE, IPProto.DCCP)}
_FAMILY_NAMES = {int(Family.IPV4): "ipv4", int(Family.IPV6): "ipv6"}
_PORTS = frozenset(int(p) for p in (IPProto.TCP, IPProto.UDP, IPProto.UDPLITE, IPProto.SCTP,
                                    IPProto.DCCP))
_ICMP = frozenset((int(IPProto.ICMP), int(IPProto.ICMPV6)))
_GRE = int(IPProto.GRE)
_SCTP = int(IPProto.SCTP)
_DCCP = int(IPProto.DCCP)

_TCP_STATES = {int(s): s.name for s in TcpState}
_SCTP_STATES = {int(s): s.name for s in SctpState}
# the kernel's SCTP state after HEARTBEAT_SENT, no longer used but still named
_SCTP_STATES.setdefault(int(SctpState.HEARTBEAT_SENT) + 1, "HEARTBEAT_ACKED")
# DCCP's states in the kernel's (and libnetfilter_conntrack's) order; nfbind has
# no enum for them (DCCP tracking left the kernel in 6.16)
_DCCP_STATES = dict(enumerate(("NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ",
                               "CLOSING", "TIMEWAIT", "IGNORE", "INVALID")))

_EVENT_NAMES = {"NEW": "[NEW]", "UPDATE": "[UPDATE]", "DESTROY": "[DESTROY]"}

_SEEN_REPLY = int(CtStatus.SEEN_REPLY)
_FLAGS = ((int(CtStatus.HW_OFFLOAD), "[HW_OFFLOAD]"), (int(CtStatus.OFFLOAD), "[OFFLOAD]"),
          (int(CtStatus.ASSURED), "[ASSURED]"))

_NS = 1_000_000_000
_U64 = 1 << 64


def event_name(kind: Any) -> str:
    """``[NEW]``, ``[UPDATE]`` or ``[DESTROY]`` for a CtEvent ('' for another value)."""
    return _EVENT_NAMES.get(getattr(kind, "name", None) or "", "")


def _state(proto: int, st: int) -> str:
    if proto == _SCTP:
        return _SCTP_STATES.get(st, "NONE")
    if proto == _DCCP:
        return _DCCP_STATES.get(st, "NONE")
    return _TCP_STATES.get(st, "NONE")


def _addr(a: Any) -> str:
    # glibc's inet_ntop, as libnetfilter_conntrack prints IPv6 (ipaddress
    # writes some addresses, e.g. ::ffff:a.b.c.d, differently)
    return socket.inet_ntop(socket.AF_INET6, a.packed) if a.version == 6 else str(a)


def _tuple(t: "CtTuple", out: List[str]) -> None:
    out.append("src=%s" % _addr(t.src))
    out.append("dst=%s" % _addr(t.dst))
    p = int(t.proto)
    if p in _PORTS:
        out.append("sport=%d dport=%d" % (t.sport or 0, t.dport or 0))
    elif p == _GRE:
        out.append("srckey=0x%x dstkey=0x%x" % (t.sport or 0, t.dport or 0))
    elif p in _ICMP:
        out.append("type=%d code=%d id=%d" % (t.icmp_type or 0, t.icmp_code or 0,
                                              t.icmp_id or 0))


def _ctime(ns: int) -> str:
    return time.ctime(ns // _NS)


#: labels' names: ``LabelMap.name`` (None for a bit connlabel.conf does not name)
LabelNames = Callable[[int], Optional[str]]


def _labels(bits: FrozenSet[int], names: LabelNames) -> str:
    named = [n for n in (names(b) for b in sorted(bits)) if n]
    # conntrack-tools writes "labels=" and the names each followed by a comma,
    # then replaces the last character with a blank: without names, the "="
    return "labels=" + ",".join(named) if named else "labels"


def flow_line(flow: "Flow", fmt: CtFormat = CtFormat(), *, event: Any = None,
              labels: Optional[LabelNames] = None, now: Optional[float] = None) -> str:
    """One flow as conntrack-tools prints it (no newline).

    ``event`` is the CtEvent of an event (None for a dumped flow: then the
    line always has ``mark=``, as a dump always carries the mark).
    ``labels`` names label bits (``LabelMap(...).name``); the labels part is
    printed when ``fmt.labels`` is set and ``labels`` is given, as
    conntrack-tools prints it only when it could read connlabel.conf.
    ``now`` (seconds since the epoch, default the clock) is what
    ``delta-time`` of a flow still alive counts up to.
    """
    out: List[str] = []
    name = event_name(event) if event is not None else ""
    if name:
        out.append("%9s" % name)
    fam = int(flow.orig.family)
    if fmt.extended:
        out.append("%-8s %d" % (_FAMILY_NAMES.get(fam, "unknown"), fam))
    proto = int(flow.orig.proto)
    out.append("%-8s %d" % (_PROTO_NAMES.get(proto, "unknown"), proto))
    if flow.timeout is not None:
        out.append("%d" % flow.timeout)
    if flow.state is not None:
        out.append(_state(proto, int(flow.state)))
    _tuple(flow.orig, out)
    if flow.orig.zone is not None:  # a directional zone (CT --zone-orig)
        out.append("zone-orig=%d" % flow.orig.zone)
    c = flow.counters
    if c is not None:
        out.append("packets=%d bytes=%d" % (c.orig_packets, c.orig_bytes))
    status = int(flow.status)
    if not status & _SEEN_REPLY:
        out.append("[UNREPLIED]")
    if flow.reply is not None:
        _tuple(flow.reply, out)
        if flow.reply.zone is not None:
            out.append("zone-reply=%d" % flow.reply.zone)
    if c is not None:
        out.append("packets=%d bytes=%d" % (c.reply_packets, c.reply_bytes))
    for bit, text in _FLAGS:
        if status & bit:
            out.append(text)
            break
    if event is None or flow.mark:
        out.append("mark=%d" % flow.mark)
    if flow.secmark:
        out.append("secmark=%d" % flow.secmark)
    if flow.secctx is not None:
        out.append("secctx=%s" % flow.secctx)
    if flow.zone:
        out.append("zone=%d" % flow.zone)
    ts = flow.timestamps
    if ts is not None:
        start = ts.start_ns // _NS
        stop = ts.stop_ns // _NS if ts.stop_ns else int(time.time() if now is None else now)
        out.append("delta-time=%d" % ((stop - start) % _U64))
        if fmt.ktimestamp:
            out.append("[start=%s]" % _ctime(ts.start_ns))
            if ts.stop_ns is not None:
                out.append("[stop=%s]" % _ctime(ts.stop_ns))
    if flow.helper is not None:
        out.append("helper=%s" % flow.helper)
    if flow.use is not None:
        out.append("use=%d" % flow.use)
    if fmt.id and flow.id is not None:
        out.append("id=%d" % flow.id)
    if fmt.labels and labels is not None and flow.labels:
        out.append(_labels(flow.labels, labels))
    return " ".join(out)


def receive_stamp(t_ns: Optional[int] = None) -> str:
    """``-o timestamp``'s prefix of an event line: ``[SECONDS.MICROSECONDS]``
    and a tab, at ``t_ns`` (ns since the epoch; default now)."""
    sec, ns = divmod(time.time_ns() if t_ns is None else t_ns, _NS)
    return "[%.8d.%.6d]\t" % (sec, ns // 1000)


def shown(n: int, what: str) -> str:
    """The summary nfbind prints on stderr after ``-o`` output, in
    conntrack-tools' words: ``nfbind vX.Y.Z: 3 flow entries have been shown.``"""
    from .. import __version__

    return "nfbind v%s: %d %s have been shown." % (__version__, n, what)
