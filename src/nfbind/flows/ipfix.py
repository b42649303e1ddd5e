# SPDX-License-Identifier: GPL-2.0-or-later
"""Flow records as IPFIX (RFC 7011) over UDP: :class:`IpfixEncoder` builds the
messages, :class:`IpfixExporter` sends them to a collector (nfdump's
``nfcapd``, GoFlow2, ElastiFlow, ...).

Each record is one Data Record of a template chosen by what the flow has:

================================  ====  =====  =========================================
Information Element               id    bytes  value
================================  ====  =====  =========================================
sourceIPv4Address / IPv6          8/27  4/16   the original direction's source
destinationIPv4Address / IPv6     12/28 4/16   the original direction's destination
protocolIdentifier                4     1      tcp 6, udp 17, ...
sourceTransportPort               7     2      protocols with ports (and GRE keys)
destinationTransportPort          11    2
icmpTypeCodeIPv4 / IPv6           32/139 2     ICMP: type * 256 + code
biflowDirection                   239   1      1: the source is the flow's initiator
packetDeltaCount                  2     8      packets in the original direction
octetDeltaCount                   1     8      bytes in the original direction
reversePacketDeltaCount           2 *   8      packets of the answers (RFC 5103)
reverseOctetDeltaCount            1 *   8      bytes of the answers (RFC 5103)
flowStartMilliseconds             152   8      the kernel's start timestamp
flowEndMilliseconds               153   8      the kernel's stop timestamp
================================  ====  =====  =========================================

(*) with the enterprise bit and Private Enterprise Number 29305, the
reverse Information Elements of RFC 5103.  The counts are left out of the
template of a flow without them (``nf_conntrack_acct=0``), the times of a
flow without them (``nf_conntrack_timestamp=0``).  The conntrack zone, the
mark and the reply tuple (NAT) have no standard Information Element and are
not exported; JSON lines and SQLite carry them.

Over UDP a collector that starts (or restarts) after the exporter knows no
template: every template is sent at start, with the first record that needs
it, and again every ``template_refresh`` seconds.  The header's sequence
number counts the Data Records sent before the message, as RFC 7011 asks.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import netns as _netns
from .._netlink import check_int
from .outputs import FlowOutput
from .record import FlowRecord

__all__ = ["IpfixEncoder", "IpfixExporter", "IPFIX_PORT", "REVERSE_PEN", "parse_hostport"]

#: the IANA port of IPFIX over UDP
IPFIX_PORT = 4739
#: RFC 5103: reverse Information Elements carry this Private Enterprise Number
REVERSE_PEN = 29305

VERSION = 10
TEMPLATE_SET = 2
FIRST_TEMPLATE_ID = 256
HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")

_ICMP = (1, 58)          # ICMP and ICMPv6: type/code instead of ports
_U64 = 0xFFFFFFFFFFFFFFFF

# (element id, length, enterprise number or 0)
Field = Tuple[int, int, int]

# what decides a record's template: IP version, ports / icmp / neither,
# whether it has counts, whether it has times
Layout = Tuple[int, str, bool, bool]


def _fields(layout: Layout) -> List[Field]:
    v, l4, counts, times = layout
    f: List[Field] = [(8, 4, 0), (12, 4, 0)] if v == 4 else [(27, 16, 0), (28, 16, 0)]
    f.append((4, 1, 0))
    if l4 == "ports":
        f += [(7, 2, 0), (11, 2, 0)]
    elif l4 == "icmp":
        f.append((32 if v == 4 else 139, 2, 0))
    f.append((239, 1, 0))
    if counts:
        f += [(2, 8, 0), (1, 8, 0), (2, 8, REVERSE_PEN), (1, 8, REVERSE_PEN)]
    if times:
        f += [(152, 8, 0), (153, 8, 0)]
    return f


def _packer(layout: Layout) -> struct.Struct:
    fmt = {1: "B", 2: "H", 4: "4s", 8: "Q", 16: "16s"}
    return struct.Struct("!" + "".join(fmt[length] for _, length, _ in _fields(layout)))


def _layout(r: FlowRecord) -> Layout:
    o = r.orig
    l4 = "ports" if o.sport is not None else "icmp" if int(o.proto) in _ICMP else "none"
    return (o.src.version, l4, r.orig_packets is not None,
            r.start_ns is not None and r.end_ns is not None)


def template_record(tid: int, fields: Sequence[Field]) -> bytes:
    """A Template Record: id, field count, then the Field Specifiers."""
    out = [struct.pack("!HH", tid, len(fields))]
    for ie, length, pen in fields:
        if pen:
            out.append(struct.pack("!HHI", ie | 0x8000, length, pen))
        else:
            out.append(struct.pack("!HH", ie, length))
    return b"".join(out)


class IpfixEncoder:
    """IPFIX messages from flow records; no socket (see :class:`IpfixExporter`).

    ``domain_id`` is the header's Observation Domain ID; ``max_message``
    the largest message in bytes (a UDP payload: keep it under the path MTU);
    ``template_refresh`` seconds between two sendings of every template.
    """

    def __init__(self, *, domain_id: int = 0, max_message: int = 1400,
                 template_refresh: float = 60.0) -> None:
        self.domain_id = check_int("domain_id", domain_id, 0, 0xFFFFFFFF)
        self.max_message = check_int("max_message", max_message, 256, 65535)
        if isinstance(template_refresh, bool) or not isinstance(template_refresh, (int, float)) \
                or not 0 < template_refresh <= 86400:
            raise ValueError("template_refresh must be seconds in (0, 86400], got %r"
                             % (template_refresh,))
        self.template_refresh = float(template_refresh)
        #: Data Records sent so far (the next message's sequence number, mod 2**32)
        self.sequence = 0
        self._tids: Dict[Layout, int] = {}
        self._packers: Dict[Layout, struct.Struct] = {}
        self._templates: Dict[int, bytes] = {}
        self._unsent: List[int] = []
        self._refresh_at = 0.0
        # the templates of complete records (counts and times) of both IP
        # versions and every kind of layer-4 header are sent at start
        for v in (4, 6):
            for l4 in ("ports", "icmp", "none"):
                self._tid((v, l4, True, True))

    def _tid(self, layout: Layout) -> int:
        tid = self._tids.get(layout)
        if tid is None:
            tid = FIRST_TEMPLATE_ID + len(self._tids)
            self._tids[layout] = tid
            self._packers[layout] = _packer(layout)
            self._templates[tid] = template_record(tid, _fields(layout))
            self._unsent.append(tid)
        return tid

    def templates(self) -> Dict[int, List[Field]]:
        """Every template defined so far: id -> its fields (element, length, PEN)."""
        return {tid: _fields(lay) for lay, tid in self._tids.items()}

    def due(self, now: float) -> bool:
        """Whether every template must be sent again (``now``: time.monotonic())."""
        return now >= self._refresh_at

    def _header(self, length: int, export_time: int) -> bytes:
        return HEADER.pack(VERSION, length, export_time, self.sequence & 0xFFFFFFFF,
                           self.domain_id)

    def template_messages(self, now: Optional[float] = None,
                          export_time: Optional[int] = None) -> List[bytes]:
        """Messages holding every template (for the refresh), and the refresh
        clock restarted."""
        now = time.monotonic() if now is None else now
        et = int(time.time()) if export_time is None else export_time
        self._unsent.clear()
        self._refresh_at = now + self.template_refresh
        out: List[bytes] = []
        body: List[bytes] = []
        size = HEADER.size + SET_HEADER.size
        for tid in sorted(self._templates):
            t = self._templates[tid]
            if body and size + len(t) > self.max_message:
                out.append(self._template_message(body, size, et))
                body, size = [], HEADER.size + SET_HEADER.size
            body.append(t)
            size += len(t)
        if body:
            out.append(self._template_message(body, size, et))
        return out

    def _template_message(self, body: List[bytes], size: int, et: int) -> bytes:
        return b"".join([self._header(size, et),
                         SET_HEADER.pack(TEMPLATE_SET, size - HEADER.size)] + body)

    def encode(self, records: Iterable[FlowRecord], now: Optional[float] = None,
               export_time: Optional[int] = None) -> List[bytes]:
        """The messages that carry ``records``, templates first when due
        (at start, when a record needs a new template, every refresh)."""
        now = time.monotonic() if now is None else now
        et = int(time.time()) if export_time is None else export_time
        out: List[bytes] = []
        if self.due(now):
            out += self.template_messages(now, et)
        # one message: [(set id, [record bytes])]; templates go in a set of their own
        sets: List[Tuple[int, List[bytes]]] = []
        size = HEADER.size
        nrec = 0
        for r in records:
            lay = _layout(r)
            tid = self._tids.get(lay)
            if tid is None:
                tid = self._tid(lay)
            data = self._pack(lay, r)
            tmpl = self._templates[tid] if tid in self._unsent else b""
            same = bool(sets) and sets[-1][0] == tid
            need = len(data) + (0 if same else SET_HEADER.size)
            if tmpl:
                need += SET_HEADER.size + len(tmpl)
            if sets and size + need > self.max_message:
                out.append(self._data_message(sets, size, nrec, et))
                sets, size, nrec, same = [], HEADER.size, 0, False
            if tmpl:
                self._unsent.remove(tid)
                sets.append((TEMPLATE_SET, [tmpl]))
                size += SET_HEADER.size + len(tmpl)
            if not same:
                sets.append((tid, []))
                size += SET_HEADER.size
            sets[-1][1].append(data)
            size += len(data)
            nrec += 1
        if sets:
            out.append(self._data_message(sets, size, nrec, et))
        return out

    def _data_message(self, sets: List[Tuple[int, List[bytes]]], size: int, nrec: int,
                      et: int) -> bytes:
        parts = [self._header(size, et)]
        for sid, recs in sets:
            parts.append(SET_HEADER.pack(sid, SET_HEADER.size + sum(map(len, recs))))
            parts += recs
        # the sequence number counts Data Records only
        self.sequence = (self.sequence + nrec) & 0xFFFFFFFF
        return b"".join(parts)

    def _pack(self, lay: Layout, r: FlowRecord) -> bytes:
        o = r.orig
        v = [o.src.packed, o.dst.packed, int(o.proto)]
        l4 = lay[1]
        if l4 == "ports":
            v += [o.sport or 0, o.dport or 0]
        elif l4 == "icmp":
            v.append(((o.icmp_type or 0) << 8) | (o.icmp_code or 0))
        v.append(1)
        if lay[2]:
            v += [r.orig_packets & _U64, (r.orig_bytes or 0) & _U64,  # type: ignore[operator]
                  (r.reply_packets or 0) & _U64, (r.reply_bytes or 0) & _U64]
        if lay[3]:
            v += [r.start_ns // 1_000_000, r.end_ns // 1_000_000]  # type: ignore[operator]
        return self._packers[lay].pack(*v)


def parse_hostport(text: str, default_port: int = IPFIX_PORT) -> Tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``HOST`` (the default port) ->
    (host, port).  Raises ValueError naming the form."""
    if not isinstance(text, str) or not text:
        raise ValueError("collector must be HOST:PORT, e.g. 127.0.0.1:4739 or [::1]:4739")
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("collector %r: an IPv6 address goes in brackets: [::1]:4739"
                             % text)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("collector %r: expected [IPV6]:PORT" % text)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError("collector %r has no host: use HOST:PORT, e.g. 127.0.0.1:4739" % text)
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 1 <= p <= 65535:
        raise ValueError("collector %r: the port must be 1..65535" % text)
    return host, p


class IpfixExporter(FlowOutput):
    """Send flow records to an IPFIX collector over UDP.

    ``collector`` is ``"HOST:PORT"`` (``"[::1]:4739"`` for IPv6; the port
    defaults to 4739) or a ``(host, port)`` pair.  The socket is opened in
    ``netns`` (default: the caller's namespace, which need not be the one
    whose flows are recorded).  A send the network refuses (e.g. ICMP port
    unreachable while the collector is down) is counted in
    ``send_errors`` and does not stop the export: UDP has no delivery
    guarantee anyway.  Other keywords: :class:`IpfixEncoder`.

    Raises ValueError (a malformed collector), OSError (the name does not
    resolve, the socket cannot be opened).
    """

    def __init__(self, collector: object, *, domain_id: int = 0, max_message: int = 1400,
                 template_refresh: float = 60.0, netns: _netns.NetNS = None) -> None:
        if isinstance(collector, tuple) and len(collector) == 2:
            host, port = str(collector[0]), check_int("port", collector[1], 1, 65535)
        elif isinstance(collector, str):
            host, port = parse_hostport(collector)
        else:
            raise TypeError("collector must be 'HOST:PORT' or (host, port), not %r"
                            % (collector,))
        self.encoder = IpfixEncoder(domain_id=domain_id, max_message=max_message,
                                    template_refresh=template_refresh)
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        family, _, _, _, addr = infos[0]
        self.collector = (host, port)
        self._sock: Optional[socket.socket] = _netns.socket(netns, family, socket.SOCK_DGRAM)
        try:
            self._sock.connect(addr)
        except BaseException:
            self._sock.close()
            self._sock = None
            raise
        self.messages = 0
        self.records = 0
        self.bytes = 0
        self.send_errors = 0
        self.last_error: Optional[OSError] = None

    def _send(self, msgs: List[bytes]) -> None:
        sock = self._sock
        if sock is None:
            raise ValueError("IpfixExporter(%s:%d) is closed" % self.collector)
        for m in msgs:
            try:
                sock.send(m)
            except (ConnectionRefusedError, OSError) as e:
                # refused: an ICMP error about an earlier datagram; the
                # collector is not listening (yet).  Counted, not fatal.
                self.send_errors += 1
                self.last_error = e
                continue
            self.messages += 1
            self.bytes += len(m)

    def write(self, records: Sequence[FlowRecord]) -> None:
        self._send(self.encoder.encode(records))
        self.records += len(records)

    def tick(self, now: float) -> None:
        if self._sock is not None and self.encoder.due(now):
            self._send(self.encoder.template_messages(now))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        return "IpfixExporter(%s:%d)" % self.collector
