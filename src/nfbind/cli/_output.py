# SPDX-License-Identifier: GPL-2.0-or-later
"""What the ``nfbind`` commands and ``nfbind demo`` print, and how.

* :class:`Output`, :class:`Live`, :class:`Rate`: lines on stdout and a live
  status line on stderr; :class:`Interrupt` turns SIGINT/SIGTERM into a
  channel's ``stop()``.
* :func:`have_scapy`: the one probe for the optional scapy.
* :func:`summary`, :func:`short_summary`: a packet in one line (scapy's
  summary, or nfbind's own when scapy is missing or fails).
* :func:`packet_meta`, :func:`clock`, :func:`dev`, :func:`dumps`: the parts of
  the per-packet lines and JSON objects.
* :class:`Pcap`: a capture file.
* :func:`table`, :func:`flow_table`: aligned columns; the conntrack table.
"""
from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import threading
import time
from typing import (TYPE_CHECKING, Any, BinaryIO, Callable, Collection, Dict, List, NamedTuple,
                    Optional)
from typing import Sequence, Tuple

from ..enums import CtStatus, Family, Hook

if TYPE_CHECKING:
    from ..conntrack import Flow

__all__ = [
    "CliError", "Output", "Live", "Rate", "Interrupt", "have_scapy", "short_summary", "summary",
    "clock", "dev", "packet_meta", "family_name", "HOOK_NAMES", "PORT_PROTOS", "ICMP_PROTOS",
    "Pcap", "dumps", "table", "Column", "FLOW_COLUMNS", "flow_table", "proto_name", "flow_state",
    "endpoint",
]


class CliError(Exception):
    """A failure the command reports as one line (exit code ``code``)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


# -- the terminal -------------------------------------------------------------------------


class Output:
    """Lines to stdout and a live status line on stderr (when it is a terminal)."""

    def __init__(self, live: bool) -> None:
        self.lock = threading.Lock()
        self.live = live and sys.stderr.isatty()
        self._status_shown = False

    def line(self, text: str) -> None:
        with self.lock:
            if self._status_shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self._status_shown = False
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def status(self, text: str) -> None:
        with self.lock:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self._status_shown = True

    def clear(self) -> None:
        with self.lock:
            if self._status_shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self._status_shown = False


class Live:
    """The live status line of a long-running command, refreshed 4 times a second."""

    def __init__(self, out: Output, text: Callable[[float, float], str]) -> None:
        self.out = out
        self.text = text
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Live":
        if self.out.live:
            self._thread = threading.Thread(target=self._loop, name="nfbind-status", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.25):
            now = time.monotonic()
            try:
                self.out.status(self.text(now - self.start, now - last))
            except Exception:  # a status line must never kill the command
                pass
            last = now

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1)
        self.out.clear()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Rate:
    """Packets per second over the last second or so (the status line's rate)."""

    def __init__(self) -> None:
        self.samples: List[Tuple[float, int]] = []

    def __call__(self, n: int, dt: float) -> float:
        now = time.monotonic()
        self.samples.append((now, n))
        while len(self.samples) > 2 and now - self.samples[1][0] >= 1.0:
            self.samples.pop(0)
        t0, n0 = self.samples[0]
        return (n - n0) / (now - t0) if now > t0 else 0.0


class Interrupt:
    """SIGINT/SIGTERM stop a channel's loop (``stop()`` is signal-safe)."""

    def __init__(self) -> None:
        self.hit = False
        self._stop: Optional[Callable[[], None]] = None
        self._old: Dict[int, Any] = {}

    def arm(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True
        if self._stop is not None:
            self._stop()

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# -- packets ------------------------------------------------------------------------------

_SCAPY: Optional[bool] = None


def have_scapy() -> bool:
    """Whether scapy's IPv4 and IPv6 layers import (the answer is kept).

    The first import takes a while: call it before a packet waits for a verdict.
    """
    global _SCAPY
    if _SCAPY is None:
        try:
            import scapy.layers.inet  # noqa: F401
            import scapy.layers.inet6  # noqa: F401

            _SCAPY = True
        except Exception:
            _SCAPY = False
    return _SCAPY


#: the hooks by the names iptables gives their chains
HOOK_NAMES = {int(Hook.PRE_ROUTING): "PREROUTING", int(Hook.LOCAL_IN): "INPUT",
              int(Hook.FORWARD): "FORWARD", int(Hook.LOCAL_OUT): "OUTPUT",
              int(Hook.POST_ROUTING): "POSTROUTING"}
_FAMILY_NAMES = {int(f): f.name.lower() for f in (Family.IPV4, Family.IPV6, Family.BRIDGE,
                                                  Family.ARP)}

# Protocol numbers from the system headers (Python's socket module, and the
# conntrack module for the ones socket lacks), never typed in.
_IPPROTO_NAMES = {
    getattr(socket, "IPPROTO_" + n.upper()): n
    for n in ("icmp", "tcp", "udp", "icmpv6", "sctp", "gre", "udplite", "esp", "ah")
    if hasattr(socket, "IPPROTO_" + n.upper())
}
try:
    from ..enums import IPProto

    _IPPROTO_NAMES.update({int(p): p.name.lower() for p in IPProto})
except ImportError:  # pragma: no cover - no libnetfilter_conntrack
    pass
#: protocols whose first four bytes are source and destination port
PORT_PROTOS = frozenset(p for p, n in _IPPROTO_NAMES.items()
                        if n in ("tcp", "udp", "sctp", "dccp", "udplite"))
ICMP_PROTOS = frozenset((socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6))


def short_summary(data: bytes) -> str:
    """A one-line summary of an IP packet without scapy, e.g.
    ``IPv4 udp 10.0.0.1:5353 > 10.0.0.2:53 len 61``."""
    if not data:
        return "(no payload)"
    ver = data[0] >> 4
    try:
        if ver == 4 and len(data) >= 20:
            ihl = (data[0] & 15) * 4
            proto = data[9]
            src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(
                socket.AF_INET, data[16:20])
            l4 = data[ihl:]
        elif ver == 6 and len(data) >= 40:
            proto = data[6]
            src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(
                socket.AF_INET6, data[24:40])
            l4 = data[40:]
        else:
            return "%d bytes" % len(data)
    except (ValueError, OSError):
        return "%d bytes" % len(data)
    name = _IPPROTO_NAMES.get(proto, "proto %d" % proto)
    if proto in PORT_PROTOS and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        fmt = "[%s]:%d" if ver == 6 else "%s:%d"
        return "IPv%d %s %s > %s len %d" % (ver, name, fmt % (src, sport), fmt % (dst, dport),
                                             len(data))
    if proto in ICMP_PROTOS and len(l4) >= 2:
        return "IPv%d %s %s > %s type %d code %d len %d" % (ver, name, src, dst, l4[0], l4[1],
                                                            len(data))
    return "IPv%d %s %s > %s len %d" % (ver, name, src, dst, len(data))


def summary(pkt: Any) -> str:
    """A queued or logged packet in one line: scapy's summary when scapy is
    installed and decodes it, :func:`short_summary` otherwise."""
    data = pkt.payload
    if not data:
        return "(no payload)"
    if have_scapy():
        try:
            return str(pkt.scapy().summary())
        except Exception:
            pass
    return short_summary(data)


def clock(ts: float) -> str:
    """``HH:MM:SS.micros`` of a time in seconds since the epoch (local time)."""
    t = time.localtime(ts)
    return "%s.%06d" % (time.strftime("%H:%M:%S", t), int((ts % 1) * 1e6))


def dev(name: Optional[str], index: Optional[int]) -> str:
    """An interface by name, else by index, else ``-``."""
    if name:
        return name
    return "-" if index is None else str(index)


def family_name(fam: int) -> Any:
    """``ipv4``, ``ipv6``, ``bridge``, ``arp``, or the number."""
    return _FAMILY_NAMES.get(int(fam), int(fam))


def packet_meta(pkt: Any, ts: float) -> Dict[str, Any]:
    """The metadata queued and logged packets share, for their JSON objects."""
    return {
        "time": round(ts, 6),
        "family": family_name(pkt.family),
        "hook": HOOK_NAMES.get(pkt.hook, pkt.hook),
        "hw_protocol": pkt.hw_protocol,
        "indev": pkt.indev_name or pkt.indev,
        "outdev": pkt.outdev_name or pkt.outdev,
        "mark": pkt.mark,
        "uid": pkt.uid,
        "gid": pkt.gid,
        "len": pkt.cap_len,
    }


class Pcap:
    """A pcap file (LINKTYPE_RAW: each record is an IPv4 or IPv6 packet);
    ``-`` is standard output, as for ``tcpdump -w -``."""

    LINKTYPE_RAW = 101

    def __init__(self, path: str) -> None:
        self.f: BinaryIO
        if path == "-":
            self.f = sys.stdout.buffer
            self.name = "stdout"
            self._own = False
        else:
            try:
                self.f = open(path, "wb")
            except OSError as e:
                raise CliError("cannot write %s: %s" % (path, e.strerror or e))
            self.name = path
            self._own = True
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, self.LINKTYPE_RAW))
        self.f.flush()
        self.count = 0

    def write(self, ts: float, data: bytes, orig_len: int) -> None:
        sec = int(ts)
        usec = int((ts - sec) * 1e6)
        self.f.write(struct.pack("<IIII", sec, usec, len(data), max(orig_len, len(data))))
        self.f.write(data)
        self.f.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file (standard output is flushed, not closed)."""
        if self._own:
            self.f.close()
        else:
            self.f.flush()


def dumps(obj: Any) -> str:
    """One compact JSON line."""
    return json.dumps(obj, separators=(",", ":"), default=str)


# -- tables -------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> List[str]:
    """``rows`` (the first is the header) as lines of aligned columns two
    spaces apart; the columns numbered in ``right`` are right-aligned.
    Trailing blanks are cut."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def proto_name(proto: Any) -> str:
    """``tcp``, ``udp`` ... or the number of a protocol without a name."""
    return getattr(proto, "name", str(proto)).lower()


def flow_state(f: "Flow") -> str:
    """A flow's state (TCP, SCTP), its ICMP type, code and id, or ``-``."""
    if f.state is not None:
        return getattr(f.state, "name", str(f.state))
    o = f.orig
    if o.icmp_type is not None:
        return "type=%d code=%d id=%s" % (o.icmp_type, o.icmp_code or 0, o.icmp_id)
    return "-"


def endpoint(addr: object, port: Optional[int]) -> str:
    """``ADDRESS:PORT``, or the address alone for a protocol without ports."""
    return str(addr) if port is None else "%s:%d" % (addr, port)


def _flags(f: "Flow") -> str:
    out = []
    if not f.status & CtStatus.SEEN_REPLY:
        out.append("UNREPLIED")
    if f.status & CtStatus.ASSURED:
        out.append("ASSURED")
    if f.nat is not None:
        if f.nat.snat is not None:
            out.append("SNAT")
        if f.nat.dnat is not None:
            out.append("DNAT")
    return ",".join(out) or "-"


def _opt(v: Optional[int]) -> str:
    return "-" if v is None else str(v)


class Column(NamedTuple):
    """A column of :func:`flow_table`: its header, its cell of a flow, and
    whether it is right-aligned."""

    header: str
    cell: Callable[["Flow"], str]
    right: bool = False


#: the columns of ``nfbind ct list``; LABELS and PACKETS/BYTES follow when a
#: flow has labels or counters
FLOW_COLUMNS: Tuple[Column, ...] = (
    Column("PROTO", lambda f: proto_name(f.proto)),
    Column("SRC", lambda f: str(f.orig.src)),
    Column("SPORT", lambda f: _opt(f.orig.sport)),
    Column("DST", lambda f: str(f.orig.dst)),
    Column("DPORT", lambda f: _opt(f.orig.dport)),
    Column("STATE", flow_state),
    Column("TIMEOUT", lambda f: _opt(f.timeout)),
    Column("MARK", lambda f: str(f.mark)),
    Column("ZONE", lambda f: str(f.zone)),
    Column("FLAGS", _flags),
)
_LABELS = Column("LABELS", lambda f: ",".join(map(str, sorted(f.labels))) or "-")
_COUNTERS = (Column("PACKETS", lambda f: "-" if f.counters is None else str(f.counters.packets)),
             Column("BYTES", lambda f: "-" if f.counters is None else str(f.counters.bytes)))


def flow_table(flows: Sequence["Flow"], columns: Optional[Sequence[Column]] = None) -> List[str]:
    """Flows as an aligned table, a header line first.  Without ``columns``:
    :data:`FLOW_COLUMNS`, then LABELS when a flow has labels and PACKETS and
    BYTES when one has counters."""
    if columns is None:
        columns = list(FLOW_COLUMNS)
        if any(f.labels for f in flows):
            columns.append(_LABELS)
        if any(f.counters is not None for f in flows):
            columns += _COUNTERS
    rows = [[c.header for c in columns]]
    rows += [[c.cell(f) for c in columns] for f in flows]
    return table(rows, {i for i, c in enumerate(columns) if c.right})
