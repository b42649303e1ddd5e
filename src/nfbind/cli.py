# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``nfbind`` command: watch NFLOG groups, run an NFQUEUE firewall hook,
and read or change the conntrack table.

::

    nfbind log 5                          # packets a `-j NFLOG --nflog-group 5` rule logged
    nfbind log 5,6 --json                 # one JSON object per packet
    nfbind log 5 --pcap out.pcap          # a capture file tcpdump/Wireshark open
    nfbind queue 3 --verdict drop         # drop what `-j NFQUEUE --queue-num 3` queues
    nfbind queue 3 --hook fw.py:decide    # your function decides each packet
    nfbind queue 0:3 --workers 4          # `--queue-balance 0:3`, one process per queue
    nfbind ct list -p tcp --dport 22      # flows, as an aligned table (--json for scripts)
    nfbind ct update -s 10.0.0.2 --set-mark 7
    nfbind ct events                      # live NEW/UPDATE/DESTROY events
    nfbind demo                           # everything, in a throw-away namespace

Every command takes ``--netns NAME`` to work in another network namespace.
Errors print one line, ``nfbind: error: ...``, and exit with a non-zero code
(2 for bad arguments).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["main"]

PROG = "nfbind"
_U32_MAX = 0xFFFFFFFF
_HOOK_NAMES = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}


class CliError(Exception):
    """A failure the command reports as one line (exit code ``code``)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


# -- argument types -----------------------------------------------------------------------


def _int_type(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError("%s must be an integer, got %r" % (what, text))
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError("%s must be %d..%d, got %d" % (what, lo, hi, v))
        return v

    conv.__name__ = what
    return conv


_u32 = _int_type(0, _U32_MAX, "mark")
_u16 = _int_type(0, 0xFFFF, "value")
_port = _int_type(0, 0xFFFF, "port")
_zone = _int_type(0, 0xFFFF, "zone")
_queue_num = _int_type(0, 0xFFFF, "queue number")
_u8 = _int_type(0, 255, "value")


def _queue_spec(text: str) -> List[int]:
    """``NUM`` or ``FIRST:LAST`` (both included), as for ``--queue-balance``."""
    first, sep, last = text.partition(":")
    lo = _queue_num(first)
    hi = _queue_num(last) if sep else lo
    if hi < lo:
        raise argparse.ArgumentTypeError("queue range must be FIRST:LAST with FIRST <= LAST, "
                                         "got %r" % text)
    return list(range(lo, hi + 1))
_count = _int_type(1, 1 << 62, "count")


def _groups(text: str) -> List[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                "groups must be numbers 0..65535 separated by commas, got %r" % text)
        if not 0 <= v <= 0xFFFF:
            raise argparse.ArgumentTypeError("group must be 0..65535, got %d" % v)
        if v not in out:
            out.append(v)
    return out


def _mark_mask(text: str) -> tuple:
    value, _, mask = text.partition("/")
    try:
        v = int(value, 0)
        m = int(mask, 0) if mask else _U32_MAX
    except ValueError:
        raise argparse.ArgumentTypeError("mark must be MARK or MARK/MASK (numbers), got %r" % text)
    if not (0 <= v <= _U32_MAX and 0 <= m <= _U32_MAX):
        raise argparse.ArgumentTypeError("mark and mask must be 0..0xffffffff, got %r" % text)
    return v, m


def _network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address or network: %r" % text)


_FAMILIES = {"ipv4": socket.AF_INET, "inet": socket.AF_INET, "4": socket.AF_INET,
             "ipv6": socket.AF_INET6, "inet6": socket.AF_INET6, "6": socket.AF_INET6}


def _family(text: str) -> int:
    try:
        return _FAMILIES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("family must be ipv4 or ipv6, got %r" % text)


def _proto(text: str) -> int:
    from .conntrack import _proto as conv

    try:
        return int(conv("proto", int(text) if text.isdigit() else text.lower()))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e))


def _labels(text: str) -> List[Any]:
    out: List[Any] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        out.append(int(part) if part.isdigit() else part)
    return out


# -- output helpers -----------------------------------------------------------------------


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
        self.samples: List[tuple] = []

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


_SCAPY: Optional[bool] = None


def _have_scapy() -> bool:
    global _SCAPY
    if _SCAPY is None:
        try:
            import scapy.layers.inet  # noqa: F401
            import scapy.layers.inet6  # noqa: F401

            _SCAPY = True
        except Exception:
            _SCAPY = False
    return _SCAPY


# Protocol numbers from the system headers (Python's socket module, and the
# conntrack module for the ones socket lacks), never typed in.
_IPPROTO_NAMES = {
    getattr(socket, "IPPROTO_" + n.upper()): n
    for n in ("icmp", "tcp", "udp", "icmpv6", "sctp", "gre", "udplite", "esp", "ah")
    if hasattr(socket, "IPPROTO_" + n.upper())
}
try:
    from .enums import IPProto as _IPProto

    _IPPROTO_NAMES.update({int(p): p.name.lower() for p in _IPProto})
except ImportError:  # pragma: no cover - no libnetfilter_conntrack
    pass
#: protocols whose first four bytes are source and destination port
_PORT_PROTOS = frozenset(p for p, n in _IPPROTO_NAMES.items()
                         if n in ("tcp", "udp", "sctp", "dccp", "udplite"))
_ICMP_PROTOS = frozenset((socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6))


def _short_summary(data: bytes) -> str:
    """A one-line summary of an IP packet without scapy."""
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
    if proto in _PORT_PROTOS and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        fmt = "[%s]:%d" if ver == 6 else "%s:%d"
        return "IPv%d %s %s > %s len %d" % (ver, name, fmt % (src, sport), fmt % (dst, dport),
                                             len(data))
    if proto in _ICMP_PROTOS and len(l4) >= 2:
        return "IPv%d %s %s > %s type %d code %d len %d" % (ver, name, src, dst, l4[0], l4[1],
                                                            len(data))
    return "IPv%d %s %s > %s len %d" % (ver, name, src, dst, len(data))


def _summary(pkt: Any) -> str:
    data = pkt.payload
    if not data:
        return "(no payload)"
    if _have_scapy():
        try:
            return pkt.scapy().summary()
        except Exception:
            pass
    return _short_summary(data)


def _clock(ts: float) -> str:
    t = time.localtime(ts)
    return "%s.%06d" % (time.strftime("%H:%M:%S", t), int((ts % 1) * 1e6))


def _dev(name: Optional[str], index: Optional[int]) -> str:
    if name:
        return name
    return "-" if index is None else str(index)


def _pkt_meta(pkt: Any, ts: float) -> Dict[str, Any]:
    return {
        "time": round(ts, 6),
        "family": _family_name(pkt.family),
        "hook": _HOOK_NAMES.get(pkt.hook, pkt.hook),
        "hw_protocol": pkt.hw_protocol,
        "indev": pkt.indev_name or pkt.indev,
        "outdev": pkt.outdev_name or pkt.outdev,
        "mark": pkt.mark,
        "uid": pkt.uid,
        "gid": pkt.gid,
        "len": pkt.cap_len,
    }


def _family_name(fam: int) -> Any:
    return {2: "ipv4", 10: "ipv6", 7: "bridge", 3: "arp"}.get(int(fam), int(fam))


class Pcap:
    """A pcap file (LINKTYPE_RAW: each record is an IPv4 or IPv6 packet)."""

    LINKTYPE_RAW = 101

    def __init__(self, path: str) -> None:
        try:
            self.f = open(path, "wb")
        except OSError as e:
            raise CliError("cannot write %s: %s" % (path, e.strerror or e))
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
        self.f.close()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


# -- nfbind log ---------------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    from .enums import CopyMode
    from .log import NfLog

    if args.prefix_only and args.pcap:
        raise CliError("--prefix-only copies no packet data: it cannot be used with --pcap", 2)
    if not args.prefix_only:
        _have_scapy()  # import now, not while the first packet waits
    pcap = Pcap(args.pcap) if args.pcap else None
    out = Output(live=True)
    counts = {"n": 0}
    groups = args.groups
    gname = ",".join(map(str, groups))

    log = NfLog(groups, copy_mode=CopyMode.META if args.prefix_only else CopyMode.PACKET,
                netns=args.netns)
    with log, Interrupt() as intr:
        intr.arm(log.stop)

        def handle(pkt: Any) -> None:
            if args.count is not None and counts["n"] >= args.count:
                return
            counts["n"] += 1
            ts = pkt.timestamp or time.time()
            if pcap is not None:
                pcap.write(ts, pkt.payload, pkt.cap_len)
            if args.json:
                d = _pkt_meta(pkt, ts)
                d["group"] = pkt.group
                d["prefix"] = pkt.prefix
                if not args.prefix_only:
                    d["summary"] = _summary(pkt)
                    d["payload"] = pkt.payload.hex()
                out.line(_dumps(d))
            elif pcap is None or args.verbose:
                parts = [_clock(ts), "group %d" % pkt.group, repr(pkt.prefix or ""),
                         "in=%s out=%s" % (_dev(pkt.indev_name, pkt.indev),
                                           _dev(pkt.outdev_name, pkt.outdev))]
                if not args.prefix_only:
                    parts.append(_summary(pkt))
                out.line(" ".join(parts))
            if args.count is not None and counts["n"] >= args.count:
                log.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            n = log.stats.packets
            return "nfbind log %s: %d packet%s, %.0f/s, %d overruns%s" % (
                gname, n, "" if n == 1 else "s", rate(n, dt), log.stats.overruns,
                ", %d written to %s" % (pcap.count, args.pcap) if pcap else "")

        with Live(out, status) as live:
            try:
                log.run(handle)
            finally:
                if pcap is not None:
                    pcap.close()
        n = counts["n"]
        if intr.hit or out.live or pcap is not None:
            print("nfbind: log group %s: %d packet%s in %.1f s, %d overrun%s%s" % (
                gname, n, "" if n == 1 else "s", live.elapsed(), log.stats.overruns,
                "" if log.stats.overruns == 1 else "s",
                ", %d written to %s" % (pcap.count, args.pcap) if pcap else ""),
                file=sys.stderr)
    return 0


# -- nfbind queue -------------------------------------------------------------------------


def load_hook(spec: str) -> Callable[[Any], Any]:
    """``module:function``, ``path/to/file.py:function``, or just the module
    or file (function ``hook``)."""
    target, sep, fname = spec.rpartition(":")
    if not sep:
        target, fname = spec, "hook"
    if not target or not fname:
        raise CliError("--hook must be MODULE:FUNCTION or FILE.py:FUNCTION, got %r" % spec, 2)
    try:
        if target.endswith(".py") or os.sep in target:
            path = os.path.abspath(target)
            if not os.path.isfile(path):
                raise CliError("hook file %s not found" % target, 2)
            name = "nfbind_hook_" + os.path.splitext(os.path.basename(path))[0]
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:
                raise CliError("cannot load %s as a Python module" % target, 2)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            sys.path.insert(0, os.path.dirname(path))
            mspec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except CliError:
        raise
    except Exception as e:
        raise CliError("cannot load hook %r: %s: %s" % (spec, type(e).__name__, e))
    fn = getattr(module, fname, None)
    if fn is None:
        raise CliError("hook module %s has no function %r" % (target, fname), 2)
    if not callable(fn):
        raise CliError("hook %r is not callable" % spec, 2)
    return fn


_VERDICT_WORDS = {"accept": "ACCEPT", "drop": "DROP", "repeat": "REPEAT", "stop": "STOP"}


def _hook_result(r: Any, default: Any, default_mark: Optional[int]) -> tuple:
    """(verdict, mark, payload) from what a hook returned."""
    from .enums import Verdict

    mark, payload = default_mark, None
    if isinstance(r, tuple) and len(r) == 2:
        r, mark = r
    if r is None:
        return default, mark, None
    if isinstance(r, bool):
        return (Verdict.ACCEPT if r else Verdict.DROP), mark, None
    if isinstance(r, str):
        try:
            return Verdict[_VERDICT_WORDS[r.lower()]], mark, None
        except KeyError:
            raise ValueError("hook returned %r: use accept, drop or repeat" % r)
    if isinstance(r, int):
        return Verdict(r), mark, None
    if isinstance(r, (bytes, bytearray, memoryview)) or hasattr(r, "build"):
        return Verdict.ACCEPT, mark, r
    raise TypeError("hook returned %s: return a Verdict, 'accept'/'drop', True/False, "
                    "(verdict, mark), new payload bytes/a scapy packet, or None"
                    % type(r).__name__)


def _queue_proc(netns: Any, num: int) -> Optional[tuple]:
    """(queue_dropped, user_dropped) from /proc/net/netfilter/nfnetlink_queue."""
    from . import netns as _netns

    def read() -> Optional[tuple]:
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                p = line.split()
                if len(p) >= 7 and int(p[0]) == num:
                    return int(p[5]), int(p[6])
        return None

    try:
        return _netns.call_in(netns, read)
    except Exception:
        return None


_VERDICT_DONE = {"ACCEPT": "accepted", "DROP": "dropped", "REPEAT": "repeated",
                 "STOP": "stopped", "BY-HOOK": "decided by the hook"}


class _Decider:
    """What ``nfbind queue`` does with each packet: ask the hook (if any), give
    the verdict, and format the packet's output line."""

    def __init__(self, args: argparse.Namespace, hook: Optional[Callable[[Any], Any]],
                 default: Any, hook_error: Callable[[str], None]) -> None:
        self.args = args
        self.hook = hook
        self.default = default
        self.hook_error = hook_error

    def __call__(self, pkt: Any) -> tuple:
        """Give ``pkt`` its verdict; returns ``(name, line, hook_failed)``: the
        verdict's name and the packet's output line (without newline)."""
        from .enums import Verdict

        args, default = self.args, self.default
        ts = pkt.timestamp or time.time()
        note = ""
        verdict, mark, payload = default, args.mark, None
        failed = False
        if self.hook is not None:
            try:
                r = self.hook(pkt)
                if not pkt.has_verdict:
                    verdict, mark, payload = _hook_result(r, default, args.mark)
            except Exception as e:
                failed = True
                verdict, mark, payload = default, args.mark, None
                note = " (hook raised %s: %s)" % (type(e).__name__, e)
                self.hook_error("nfbind: hook raised %s: %s; packet %d gets %s" % (
                    type(e).__name__, e, pkt.id, default.name))
        if pkt.has_verdict:
            name = "BY-HOOK"
        else:
            if verdict == Verdict.ACCEPT:
                pkt.accept(mark=mark, payload=payload)
            elif verdict == Verdict.REPEAT:
                pkt.repeat(mark=mark)
            elif verdict == Verdict.DROP:
                pkt.drop()
                mark = None
            else:
                pkt.verdict(verdict, mark=mark)
            name = Verdict(verdict).name
        if args.json:
            d = _pkt_meta(pkt, ts)
            d["id"] = pkt.id
            if len(args.queues) > 1:
                d["queue"] = pkt.queue_num
            d["summary"] = _summary(pkt)
            d["verdict"] = name
            d["set_mark"] = mark if name != "BY-HOOK" else None
            d["rewritten"] = payload is not None
            if note:
                d["hook_error"] = note.strip(" ()")
            line = _dumps(d)
        else:
            decision = name
            if mark is not None and name != "BY-HOOK":
                decision += " mark=%#x" % mark
            if payload is not None:
                decision += " (rewritten)"
            line = "%s %sid=%d %s in=%s out=%s %s -> %s%s" % (
                _clock(ts), "q=%d " % pkt.queue_num if len(args.queues) > 1 else "", pkt.id,
                _HOOK_NAMES.get(pkt.hook, pkt.hook),
                _dev(pkt.indev_name, pkt.indev), _dev(pkt.outdev_name, pkt.outdev),
                _summary(pkt), decision, note)
        return name, line, failed


def _verdict_detail(by_verdict: Dict[str, int]) -> str:
    return ", ".join("%d %s" % (v, _VERDICT_DONE.get(k, k.lower()))
                     for k, v in sorted(by_verdict.items()) if v)


def cmd_queue(args: argparse.Namespace) -> int:
    from .enums import Verdict
    from .queue import NfQueue

    hook = load_hook(args.hook) if args.hook else None
    default = Verdict[args.verdict.upper()]
    _have_scapy()
    if len(args.queues) > 1 or (args.workers or 1) > 1:
        return _queue_serve(args, hook, default)
    args.num = args.queues[0]
    out = Output(live=True)
    tally: Dict[str, int] = {"n": 0, "errors": 0}
    by_verdict: Dict[str, int] = {}

    def hook_error(text: str) -> None:
        tally["errors"] += 1
        out.clear()
        print(text, file=sys.stderr)

    decide = _Decider(args, hook, default, hook_error)
    q = NfQueue(args.num, fail_open=args.fail_open, netns=args.netns)
    with q, Interrupt() as intr:
        intr.arm(q.stop)

        def handle(pkt: Any) -> None:
            name, line, _ = decide(pkt)
            by_verdict[name] = by_verdict.get(name, 0) + 1
            tally["n"] += 1
            if args.count is None or tally["n"] <= args.count:
                out.line(line)
            if args.count is not None and tally["n"] >= args.count:
                q.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            n = q.stats.packets
            text = "nfbind queue %d: %d packet%s, %.0f/s, %d overruns" % (
                args.num, n, "" if n == 1 else "s", rate(n, dt), q.stats.overruns)
            drops = _queue_proc(args.netns, args.num)
            if drops:
                text += ", kernel drops %d (queue full) %d (socket)" % drops
            return text

        with Live(out, status) as live:
            q.run(handle)
        n = tally["n"]
        if intr.hit or out.live:
            detail = _verdict_detail(by_verdict)
            print("nfbind: queue %d: %d packet%s%s in %.1f s, %d overrun%s%s" % (
                args.num, n, "" if n == 1 else "s", " (%s)" % detail if detail else "",
                live.elapsed(), q.stats.overruns, "" if q.stats.overruns == 1 else "s",
                ", %d hook error%s" % (tally["errors"], "" if tally["errors"] == 1 else "s")
                if tally["errors"] else ""), file=sys.stderr)
    return 0


def _write_line(fd: int, text: str) -> None:
    """One whole line with as few write(2) calls as the kernel allows (one for
    any line up to PIPE_BUF), so lines of several workers never mix."""
    data = (text + "\n").encode("utf-8", "replace")
    while data:
        data = data[os.write(fd, data):]


def _queue_serve(args: argparse.Namespace, hook: Optional[Callable[[Any], Any]],
                 default: Any) -> int:
    """``nfbind queue FIRST:LAST``: one worker process per queue (or per group
    of queues) through nfbind.serve()."""
    from multiprocessing.sharedctypes import RawArray

    from .serve import serve

    queues = args.queues
    if args.count is not None:
        raise CliError("--count needs a single queue and one worker (the workers do not "
                       "share a packet count)", 2)
    workers = args.workers or min(len(queues), os.cpu_count() or 1)
    if workers > len(queues):
        raise CliError("--workers must be 1..%d (one queue per worker at least), got %d"
                       % (len(queues), workers), 2)
    # counters the workers share with this process: one row per queue (a
    # queue has one worker, so rows need no lock)
    names = list(_VERDICT_DONE) + ["hook_errors"]
    counts = RawArray("q", len(queues) * len(names))
    row = {q: i * len(names) for i, q in enumerate(queues)}
    col = {n: j for j, n in enumerate(names)}
    herr = col["hook_errors"]
    stdout, stderr = sys.stdout.fileno(), sys.stderr.fileno()

    decide = _Decider(args, hook, default, lambda text: _write_line(stderr, text))

    def handle(pkt: Any) -> None:
        base = row[pkt.queue_num]
        name, line, hook_failed = decide(pkt)
        counts[base + col[name]] += 1
        if hook_failed:
            counts[base + herr] += 1
        _write_line(stdout, line)

    qname = ("%d-%d" % (queues[0], queues[-1]) if queues == list(range(queues[0], queues[-1] + 1))
             else ",".join(map(str, queues)))
    start = time.monotonic()

    def ready(pids: Dict[int, tuple]) -> None:
        print("nfbind: queues %s: %d worker%s (%s)" % (
            qname, len(pids), "" if len(pids) == 1 else "s",
            "; ".join("pid %d: %s" % (pid, ",".join(map(str, qs)))
                      for pid, qs in sorted(pids.items(), key=lambda kv: kv[1]))),
            file=sys.stderr, flush=True)

    result = serve(handle, queues, workers, fail_open=args.fail_open, netns=args.netns,
                   ready=ready)
    elapsed = time.monotonic() - start
    by_verdict = {n: sum(counts[row[q] + col[n]] for q in queues) for n in _VERDICT_DONE}
    n = sum(by_verdict.values())
    errors = sum(counts[row[q] + herr] for q in queues)
    detail = _verdict_detail(by_verdict)
    per_worker = ", ".join("%d" % w.packets for w in result.workers)
    print("nfbind: queues %s: %d packet%s%s in %.1f s by %d worker%s (packets per worker: %s), "
          "%d overrun%s%s%s" % (
        qname, n, "" if n == 1 else "s", " (%s)" % detail if detail else "", elapsed,
        len(result.workers), "" if len(result.workers) == 1 else "s", per_worker,
        result.overruns, "" if result.overruns == 1 else "s",
        ", %d hook error%s" % (errors, "" if errors == 1 else "s") if errors else "",
        ", %d restart%s" % (result.restarts, "" if result.restarts == 1 else "s")
        if result.restarts else ""), file=sys.stderr)
    return 0


# -- nfbind ct ----------------------------------------------------------------------------


def _pname(proto: Any) -> str:
    return getattr(proto, "name", str(proto)).lower()


def _tuple_json(t: Any) -> Optional[Dict[str, Any]]:
    if t is None:
        return None
    d: Dict[str, Any] = {"src": str(t.src), "dst": str(t.dst), "proto": _pname(t.proto)}
    for k in ("sport", "dport", "icmp_type", "icmp_code", "icmp_id"):
        v = getattr(t, k)
        if v is not None:
            d[k] = v
    return d


def _status_names(st: int) -> List[str]:
    from .enums import CtStatus

    return [m.name for m in CtStatus if m.value & (m.value - 1) == 0 and st & m.value]


def flow_json(f: Any) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "family": _family_name(f.family),
        "proto": _pname(f.proto),
        "orig": _tuple_json(f.orig),
        "reply": _tuple_json(f.reply),
        "state": None if f.state is None else getattr(f.state, "name", f.state),
        "status": _status_names(int(f.status)),
        "timeout": f.timeout,
        "mark": f.mark,
        "zone": f.zone,
        "labels": sorted(f.labels),
        "id": f.id,
        "use": f.use,
        "secmark": f.secmark,
        "helper": f.helper,
    }
    if f.counters is not None:
        c = f.counters
        d["counters"] = {"orig_packets": c.orig_packets, "orig_bytes": c.orig_bytes,
                         "reply_packets": c.reply_packets, "reply_bytes": c.reply_bytes}
    if f.timestamps is not None:
        d["timestamps"] = {"start": f.timestamps.start, "stop": f.timestamps.stop}
    if f.nat is not None:
        d["nat"] = {k: None if v is None else "%s:%s" % (v.addr, v.port)
                    for k, v in (("snat", f.nat.snat), ("dnat", f.nat.dnat))}
    return d


def _ep(t: Any, which: str) -> tuple:
    addr = getattr(t, which)
    port = getattr(t, "sport" if which == "src" else "dport")
    return str(addr), "-" if port is None else str(port)


def _flags(f: Any) -> str:
    from .enums import CtStatus

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


def _state(f: Any) -> str:
    if f.state is not None:
        return getattr(f.state, "name", str(f.state))
    o = f.orig
    if o.icmp_type is not None:
        return "type=%d code=%d id=%s" % (o.icmp_type, o.icmp_code or 0, o.icmp_id)
    return "-"


def flow_table(flows: Sequence[Any]) -> List[str]:
    headers = ["PROTO", "SRC", "SPORT", "DST", "DPORT", "STATE", "TIMEOUT", "MARK", "ZONE",
               "FLAGS"]
    labels = any(f.labels for f in flows)
    counters = any(f.counters is not None for f in flows)
    if labels:
        headers.append("LABELS")
    if counters:
        headers += ["PACKETS", "BYTES"]
    rows = [headers]
    for f in flows:
        s, sp = _ep(f.orig, "src")
        d, dp = _ep(f.orig, "dst")
        row = [_pname(f.proto), s, sp, d, dp, _state(f),
               "-" if f.timeout is None else str(f.timeout), str(f.mark), str(f.zone), _flags(f)]
        if labels:
            row.append(",".join(map(str, sorted(f.labels))) or "-")
        if counters:
            c = f.counters
            row += ["-", "-"] if c is None else [str(c.packets), str(c.bytes)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _matches(f: Any, a: argparse.Namespace) -> bool:
    o = f.orig
    if a.proto is not None and int(f.proto) != a.proto:
        return False
    if a.src is not None and (o.src.version != a.src.version or o.src not in a.src):
        return False
    if a.dst is not None and (o.dst.version != a.dst.version or o.dst not in a.dst):
        return False
    if a.sport is not None and o.sport != a.sport:
        return False
    if a.dport is not None and o.dport != a.dport:
        return False
    return True


def _select(ct: Any, a: argparse.Namespace) -> List[Any]:
    mark, mask = a.mark if a.mark is not None else (None, _U32_MAX)
    fam = a.family
    if fam is None and (a.src is not None or a.dst is not None):
        net = a.src if a.src is not None else a.dst
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return [f for f in ct.dump(fam, mark=mark, mark_mask=mask, zone=a.zone) if _matches(f, a)]


def _full_tuple(a: argparse.Namespace, need: bool, verb: str) -> Any:
    """The Tuple the options name exactly, or None (need=True: an error instead)."""
    from .conntrack import Tuple

    def single(net: Any) -> Any:
        return net.network_address if net is not None and net.num_addresses == 1 else None

    src, dst = single(a.src), single(a.dst)
    icmp = a.proto in _ICMP_PROTOS
    complete = (a.proto is not None and src is not None and dst is not None and (
        (a.sport is not None and a.dport is not None) if a.proto in _PORT_PROTOS
        else (a.icmp_type is not None and a.icmp_id is not None) if icmp else True))
    if not complete:
        if need:
            raise CliError(
                "ct %s needs the whole original tuple: -p PROTO -s SRC -d DST and, for "
                "tcp/udp/sctp, --sport and --dport (icmp: --icmp-type and --icmp-id)" % verb, 2)
        return None
    try:
        if icmp:
            return Tuple(src, dst, a.proto, icmp_type=a.icmp_type,
                         icmp_code=a.icmp_code or 0, icmp_id=a.icmp_id)
        return Tuple(src, dst, a.proto, a.sport, a.dport)
    except (ValueError, TypeError) as e:
        raise CliError(str(e), 2)


def _print_flows(flows: Sequence[Any], a: argparse.Namespace) -> None:
    if a.json:
        for f in flows:
            print(_dumps(flow_json(f)))
    elif flows:
        print("\n".join(flow_table(flows)))


def _changes(a: argparse.Namespace) -> Dict[str, Any]:
    ch: Dict[str, Any] = {}
    if a.set_mark is not None:
        ch["mark"] = a.set_mark
    if a.set_timeout is not None:
        ch["timeout"] = a.set_timeout
    if a.labels is not None:
        ch["labels"] = a.labels
    return ch


def cmd_ct(args: argparse.Namespace) -> int:
    from .conntrack import Conntrack, NotFound

    verb = args.verb
    with Conntrack(netns=args.netns) as ct:
        if verb == "list":
            flows = _select(ct, args)
            _print_flows(flows, args)
            if not args.json:
                print("%d flow%s" % (len(flows), "" if len(flows) == 1 else "s"),
                      file=sys.stderr)
        elif verb == "get":
            t = _full_tuple(args, True, "get")
            _print_flows([ct.get(t, zone=args.zone)], args)
        elif verb == "count":
            n = ct.count()
            print(_dumps({"count": n}) if args.json else n)
        elif verb == "stats":
            return _ct_stats(ct, args)
        elif verb == "create":
            return _ct_create(ct, args)
        elif verb in ("update", "delete"):
            ch = _changes(args) if verb == "update" else {}
            if verb == "update" and not ch:
                raise CliError("ct update: nothing to change: give --set-mark, --timeout "
                               "or --labels", 2)
            t = _full_tuple(args, False, verb)
            if t is not None:
                targets: List[Any] = [t]
            else:
                if verb == "delete" and not _has_filter(args):
                    raise CliError("ct delete without a filter would delete every flow: "
                                   "use `nfbind ct flush` for that", 2)
                targets = _select(ct, args)
            done = 0
            for target in targets:
                try:
                    if verb == "update":
                        ct.update(target, zone=args.zone, **ch)
                    else:
                        ct.delete(target, zone=args.zone)
                    done += 1
                except NotFound:
                    if t is not None:
                        raise
                    # expired between the dump and now
            word = "updated" if verb == "update" else "deleted"
            if args.json:
                print(_dumps({word: done}))
            else:
                print("%s %d flow%s" % (word, done, "" if done == 1 else "s"))
            if not done and t is None and not targets:
                print("nfbind: no flow matched", file=sys.stderr)
                return 1
        elif verb == "flush":
            if any(getattr(args, k) is not None for k in ("proto", "src", "dst", "sport",
                                                          "dport", "zone")):
                raise CliError("ct flush filters by --family and --mark only: use "
                               "`nfbind ct delete` with the other filters", 2)
            mark, mask = args.mark if args.mark is not None else (None, _U32_MAX)
            ct.flush(args.family, mark=mark, mark_mask=mask)
            print(_dumps({"flushed": True}) if args.json else "flushed the conntrack table"
                  + ("" if args.family is None and mark is None else " (matching flows)"))
        elif verb == "events":
            return _ct_events(ct, args)
    return 0


def _has_filter(a: argparse.Namespace) -> bool:
    return any(getattr(a, k) is not None for k in ("proto", "src", "dst", "sport", "dport",
                                                   "mark", "zone", "family"))


def _ct_stats(ct: Any, a: argparse.Namespace) -> int:
    from .conntrack import CpuStats

    st = ct.stats()
    names = [n for n in CpuStats.__dataclass_fields__ if n != "cpu"]
    if a.json:
        d: Dict[str, Any] = {"entries": st.entries, "max_entries": st.max_entries}
        d.update({n: st.total(n) for n in names})
        d["cpus"] = [{"cpu": c.cpu, **{n: getattr(c, n) for n in names}} for c in st.cpus]
        print(_dumps(d))
        return 0
    print("%-15s %d" % ("entries", st.entries))
    print("%-15s %d" % ("max_entries", st.max_entries))
    if a.per_cpu:
        rows = [["CPU"] + [n.upper() for n in names]]
        rows += [[str(c.cpu)] + [str(getattr(c, n)) for n in names] for c in st.cpus]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    else:
        for n in names:
            print("%-15s %d" % (n, st.total(n)))
    return 0


def _ct_create(ct: Any, a: argparse.Namespace) -> int:
    from .conntrack import Flow

    t = _full_tuple(a, True, "create")
    if a.set_timeout is None:
        raise CliError("ct create needs --timeout SECONDS", 2)
    kw: Dict[str, Any] = {"timeout": a.set_timeout, "zone": a.zone or 0}
    mark = a.set_mark if a.set_mark is not None else (a.mark[0] if a.mark else None)
    if mark is not None:
        kw["mark"] = mark
    if a.labels:
        kw["labels"] = frozenset(ct._labels("labels", a.labels))
    if a.state is not None:
        from .enums import TcpState

        try:
            kw["state"] = TcpState[a.state.upper()]
        except KeyError:
            raise CliError("--state must be a TCP state: %s" % ", ".join(TcpState.__members__), 2)
    try:
        flow = Flow(t, **kw)
    except (ValueError, TypeError) as e:
        raise CliError(str(e), 2)
    ct.create(flow)
    print(_dumps({"created": flow_json(flow)}) if a.json else "created %s" % flow)
    return 0


def _ct_events(ct: Any, a: argparse.Namespace) -> int:
    from .conntrack import EventFilter
    from .enums import CtEvent

    types = CtEvent(0)
    for word in (a.event or "NEW,UPDATE,DESTROY").split(","):
        try:
            types |= CtEvent[word.strip().upper()]
        except KeyError:
            raise CliError("--event must be NEW, UPDATE and/or DESTROY, got %r" % word, 2)
    kw: Dict[str, Any] = {}
    if a.proto is not None:
        kw["proto"] = a.proto
    if a.src is not None:
        kw["src"] = [a.src]
    if a.dst is not None:
        kw["dst"] = [a.dst]
    if a.sport is not None:
        kw["sport"] = [a.sport]
    if a.dport is not None:
        kw["dport"] = [a.dport]
    if a.mark is not None:
        kw["mark"], kw["mark_mask"] = a.mark
    flt = EventFilter(**kw) if kw else None
    out = Output(live=True)
    n = {"n": 0}
    stream = ct.events(types, filter=flt)
    with stream, Interrupt() as intr:
        intr.arm(stream.stop)

        def handle(ev: Any) -> None:
            f = ev.flow
            if a.zone is not None and f.zone != a.zone:
                return
            if a.family is not None and int(f.family) != a.family:
                return
            if a.count is not None and n["n"] >= a.count:
                return
            n["n"] += 1
            name = ev.type.name or str(int(ev.type))
            if a.json:
                d = flow_json(f)
                d = {"time": round(time.time(), 6), "event": name, **d}
                out.line(_dumps(d))
            else:
                extra = "" if f.timeout is None else " timeout=%d" % f.timeout
                out.line("%s [%s] %s%s" % (_clock(time.time()), name, f, extra))
            if a.count is not None and n["n"] >= a.count:
                stream.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            s = stream.stats
            return "nfbind ct events: %d event%s, %.0f/s, %d overruns" % (
                n["n"], "" if n["n"] == 1 else "s", rate(n["n"], dt), s.overruns)

        with Live(out, status) as live:
            stream.run(handle)
        if intr.hit or out.live:
            print("nfbind: ct events: %d event%s in %.1f s, %d overrun%s" % (
                n["n"], "" if n["n"] == 1 else "s", live.elapsed(), stream.stats.overruns,
                "" if stream.stats.overruns == 1 else "s"), file=sys.stderr)
    return 0


# -- the parser ---------------------------------------------------------------------------


def _netns_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NS",
                   help="work in network namespace NS (a name from `ip netns`, or a path)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linux netfilter from the command line: NFLOG, NFQUEUE and conntrack.",
        epilog="Each command needs CAP_NET_ADMIN (root). `nfbind COMMAND -h` for details.",
    )
    parser.add_argument("--version", action="version", version="nfbind %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # log
    p = sub.add_parser("log", help="print packets NFLOG rules logged",
                       description="Print the packets NFLOG rules send to GROUP(s), e.g. "
                       "`iptables -A INPUT -j NFLOG --nflog-group 5 --nflog-prefix ssh`. "
                       "Ctrl-C ends it with a summary.")
    p.add_argument("groups", type=_groups, metavar="GROUP[,GROUP...]", help="NFLOG group(s)")
    p.add_argument("--prefix-only", action="store_true",
                   help="only time, group, prefix and devices: the kernel copies no packet data")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    p.add_argument("--pcap", metavar="FILE",
                   help="write the packets to a pcap file (tcpdump -r, Wireshark); lines are "
                   "printed too with -v")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with --pcap: also print a line per packet")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N packets")
    _netns_opt(p)
    p.set_defaults(func=cmd_log)

    # queue
    p = sub.add_parser("queue", help="decide the fate of packets an NFQUEUE rule queues",
                       description="Bind NFQUEUE queue NUM (`iptables -A INPUT -j NFQUEUE "
                       "--queue-num NUM`), give each packet a verdict and print the decision. "
                       "--hook runs your function: it gets an nfbind.Packet and returns a "
                       "Verdict, 'accept'/'drop', True/False, (verdict, mark), new payload "
                       "(bytes or a scapy packet: accepted rewritten), or None for --verdict; "
                       "it may also call pkt.accept()/pkt.drop() itself. A range FIRST:LAST "
                       "(`--queue-balance FIRST:LAST`) is served by --workers processes, each "
                       "running the hook; Ctrl-C prints one summary for all of them.")
    p.add_argument("queues", type=_queue_spec, metavar="NUM|FIRST:LAST",
                   help="queue number 0..65535, or a range of queues for `--queue-balance "
                   "FIRST:LAST` (served by --workers processes)")
    p.add_argument("--workers", "-w", type=_int_type(1, 4096, "workers"), metavar="N",
                   help="worker processes for a range of queues (default: one per queue, "
                   "at most one per CPU); each runs the hook in its own process")
    p.add_argument("--verdict", choices=("accept", "drop"), default="accept",
                   help="the verdict (default accept); with --hook: when it returns None or raises")
    p.add_argument("--mark", type=_u32, metavar="N", help="set this packet mark on accepted packets")
    p.add_argument("--hook", metavar="MODULE:FUNCTION",
                   help="your verdict function: MODULE:FUNCTION or path/FILE.py:FUNCTION "
                   "(FUNCTION defaults to `hook`)")
    p.add_argument("--fail-open", action="store_true",
                   help="the kernel accepts packets instead of dropping them when the queue is full")
    p.add_argument("--json", action="store_true", help="one JSON object per decision")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N packets")
    _netns_opt(p)
    p.set_defaults(func=cmd_queue)

    # ct
    pct = sub.add_parser("ct", help="the conntrack table: list, get, create, update, delete, "
                         "flush, events, stats, count",
                         description="Read and change the connection tracking table.")
    ctsub = pct.add_subparsers(dest="verb", metavar="VERB")
    pct.set_defaults(func=cmd_ct, ctparser=pct)

    def filters(p: argparse.ArgumentParser, what: str = "filter") -> None:
        g = p.add_argument_group(what)
        g.add_argument("-p", "--proto", type=_proto, metavar="PROTO", help="tcp, udp, icmp ... or a number")
        g.add_argument("-s", "--src", "--orig-src", type=_network, metavar="ADDR[/LEN]",
                       help="original source address or network")
        g.add_argument("-d", "--dst", "--orig-dst", type=_network, metavar="ADDR[/LEN]",
                       help="original destination address or network")
        g.add_argument("--sport", "--orig-port-src", type=_port, metavar="PORT", help="original source port")
        g.add_argument("--dport", "--orig-port-dst", type=_port, metavar="PORT",
                       help="original destination port")
        g.add_argument("-m", "--mark", type=_mark_mask, metavar="MARK[/MASK]", help="connection mark")
        g.add_argument("-w", "--zone", type=_zone, metavar="ZONE", help="conntrack zone")
        g.add_argument("-f", "--family", type=_family, metavar="FAMILY", help="ipv4 or ipv6")
        g.add_argument("--icmp-type", type=_u8, metavar="T", help="ICMP type (get/create/update/delete)")
        g.add_argument("--icmp-code", type=_u8, metavar="C", help="ICMP code")
        g.add_argument("--icmp-id", type=_u16, metavar="ID", help="ICMP id")

    def common(p: argparse.ArgumentParser, json_help: str = "JSON output for scripts") -> None:
        p.add_argument("--json", action="store_true", help=json_help)
        _netns_opt(p)

    def changes(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("changes")
        g.add_argument("--set-mark", type=_u32, metavar="MARK", help="the new connection mark")
        g.add_argument("-t", "--timeout", dest="set_timeout", type=_int_type(0, _U32_MAX, "timeout"),
                       metavar="SECONDS", help="the new timeout")
        g.add_argument("-l", "--labels", type=_labels, metavar="L[,L...]",
                       help="replace the labels (bit numbers 0..127 or connlabel.conf names; '' clears)")

    p = ctsub.add_parser("list", aliases=["ls", "dump"], help="list flows (an aligned table, or --json)")
    filters(p)
    common(p, "one JSON object per flow")
    p.set_defaults(verb="list")

    p = ctsub.add_parser("get", help="one flow, by its original tuple")
    filters(p, "tuple")
    common(p)
    p.set_defaults(verb="get")

    p = ctsub.add_parser("create", help="add a flow (needs the tuple and --timeout)")
    filters(p, "tuple")
    changes(p)
    p.add_argument("--state", metavar="STATE", help="TCP state, e.g. ESTABLISHED")
    common(p)
    p.set_defaults(verb="create")

    p = ctsub.add_parser("update", help="change mark, timeout or labels of the flows the "
                         "filters select (sends only what changes)")
    filters(p)
    changes(p)
    common(p)
    p.set_defaults(verb="update")

    p = ctsub.add_parser("delete", help="delete the flows the filters select")
    filters(p)
    common(p)
    p.set_defaults(verb="delete")

    p = ctsub.add_parser("flush", help="delete every flow (or those of --family / --mark)")
    filters(p)
    common(p)
    p.set_defaults(verb="flush")

    p = ctsub.add_parser("events", help="print changes to the table as they happen")
    filters(p)
    p.add_argument("-e", "--event", metavar="NEW,UPDATE,DESTROY",
                   help="which events (default all)")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N events")
    common(p, "one JSON object per event")
    p.set_defaults(verb="events")

    p = ctsub.add_parser("stats", help="table size, limit and per-CPU counters")
    p.add_argument("--per-cpu", action="store_true", help="a row per CPU")
    common(p)
    p.set_defaults(verb="stats")

    p = ctsub.add_parser("count", help="the number of flows")
    common(p)
    p.set_defaults(verb="count")

    sub.add_parser("demo", help="a tour of NFLOG, NFQUEUE and conntrack in a throw-away "
                   "namespace (about 15 s; needs root)", add_help=False)
    return parser


def _error_text(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename is None and e.strerror:
        text = e.strerror
    if isinstance(e, KeyError):
        text = "missing %s" % text
    return " ".join(text.split("\n")[0:1]) if "\n" in text else text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``nfbind`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from . import demo

        return demo.main(argv[1:])
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "ct" and getattr(args, "verb", None) is None:
        args.ctparser.print_help(sys.stderr)
        return 2
    from .errors import NfbindError

    try:
        return args.func(args)
    except CliError as e:
        if e.code == 2:
            sub = "%s %s" % (PROG, args.command) + (" " + args.verb if args.command == "ct" else "")
            print("%s: error: %s" % (sub, e), file=sys.stderr)
        else:
            print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return e.code
    except (ValueError, TypeError) as e:  # a value the library refused before any syscall
        print("%s: error: %s" % (PROG, _error_text(e)), file=sys.stderr)
        return 2
    except (NfbindError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        print("%s: error: %s" % (PROG, _error_text(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def _broken_pipe() -> int:
    # stdout's reader went away (`nfbind ct list | head`): quiet, like other tools
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
