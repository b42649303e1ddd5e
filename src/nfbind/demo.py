# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind demo`` (or ``python -m nfbind.demo``): NFLOG, NFQUEUE and conntrack
on real traffic, in a throw-away network namespace, in a few seconds.

Needs root.  The demo creates the namespace ``nfbind-demo-<pid>`` with these
rules (all traffic stays on its loopback interface)::

    iptables -A INPUT -m conntrack --ctstate INVALID -j DROP
    iptables -A INPUT -p tcp --dport 8080 -j NFLOG --nflog-group 5 --nflog-prefix "tcp-8080 "
    iptables -A INPUT -p udp --dport 9999 -j NFQUEUE --queue-num 7

and shows, each step checking its own result:

1. NFLOG: a TCP connection to port 8080; every logged packet, decoded (by
   scapy when it is installed), with the rule's prefix.
2. NFQUEUE: UDP datagrams to port 9999 decided by a Python handler by their
   first word: ``drop`` is dropped, ``mark`` is accepted with mark 7,
   ``rewrite`` gets a new payload, anything else is accepted as it is; each
   decision is shown next to what the receiving socket actually got.
3. conntrack: the table of flows, a flow's mark updated (read back to check),
   and the NEW/UPDATE/DESTROY events of new traffic as they happen.
4. cleanup: the namespace (and with it every rule) is deleted, also on
   errors, Ctrl-C and SIGTERM.

Exit status: 0 when every step showed what it should, 1 otherwise, 130 when
interrupted.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from . import NfbindError, NfLog, NfQueue, Verdict, lowlevel, netns
from .cli._output import Column, endpoint, flow_state, flow_table, have_scapy, proto_name
from .cli._output import summary, table

if TYPE_CHECKING:
    from . import LogPacket, Packet
    from .conntrack import Conntrack, Event, EventStream, Flow
    from .conntrack import Tuple as CtTuple
    from .enums import CtEvent

LOG_GROUP = 5
LOG_PORT = 8080
PREFIX = "tcp-8080 "
QUEUE_NUM = 7
PORT = 9999
MARK = 7
CT_MARK = 42
EVENT_PORT = 7777  # the UDP flow the events step creates and deletes
RULES: List[List[str]] = [
    ["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
    ["-p", "tcp", "--dport", str(LOG_PORT), "-j", "NFLOG", "--nflog-group", str(LOG_GROUP),
     "--nflog-prefix", PREFIX],
    ["-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)],
]
RULE = RULES[2]  # the NFQUEUE rule (kept for callers of the first version)
REWRITTEN = b"rewritten by nfbind"
IO_WAIT = 2.0  # seconds for any one socket operation
DECIDE_WAIT = 3.0  # seconds for the handler to decide one datagram
RECV_WAIT = 2.0  # seconds for an accepted datagram to reach the receiver
DROP_WAIT = 0.3  # seconds to watch for a dropped datagram that arrives anyway
LOG_WAIT = 1.0  # seconds to wait for the logged packets
EVENT_WAIT = 2.0  # seconds to wait for the events of the traffic
DEADLINE = 12.0  # seconds for the whole NFQUEUE exchange

# What is sent and what the receiver should get: (payload, expected payload or None, mark)
DATAGRAMS: List[Tuple[bytes, Optional[bytes], int]] = [
    (b"hello, plain datagram", b"hello, plain datagram", 0),
    (b"drop this one", None, 0),
    (b"mark this one", b"mark this one", MARK),
    (b"rewrite this one", REWRITTEN, 0),
    (b"drop that one too", None, 0),
    (b"goodbye", b"goodbye", 0),
]


def _sockopt(name: str) -> Optional[int]:
    """A SOL_SOCKET option's number from the system headers: Python's socket
    module where it names it, else nfbind's compiled modules
    (:mod:`nfbind.lowlevel`), which carry the headers' value.  None when
    neither knows it."""
    value = getattr(socket, name, None)
    if value is not None:
        return int(value)
    for which in lowlevel.__all__:
        pair = getattr(lowlevel, which)
        if pair is not None and hasattr(pair[1], name):
            return int(getattr(pair[1], name))
    return None


# setsockopt(SOL_SOCKET, SO_RCVMARK) (Linux >= 5.19) delivers the packet's mark with
# each datagram as an SO_MARK control message.  Python's socket module may name neither,
# so the values can come from the system headers through nfbind's compiled modules.
SO_RCVMARK = _sockopt("SO_RCVMARK")
SO_MARK = _sockopt("SO_MARK")

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    """Print a line at once (the event thread prints too)."""
    with _print_lock:
        print(text, flush=True)


def header(title: str) -> None:
    say("\n== %s ==" % title)


def verdict_line(ok: bool, text: str) -> None:
    say("%s: %s" % ("ok" if ok else "FAILED", text))


def _sh(*cmd: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=10)


def _quote(arg: str) -> str:
    return '"%s"' % arg if (" " in arg or not arg) else arg


def _rule_text(rule: List[str]) -> str:
    return "iptables -A INPUT " + " ".join(_quote(a) for a in rule)


# -- packets by hand (for the checks) --------------------------------------------------------

_TCP_FLAGS = "FSRPAUEC"


def _ipv4(payload: bytes) -> Optional[Tuple[int, str, str, bytes]]:
    """(protocol, source, destination, L4 bytes) of an IPv4 packet, or None."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    return (payload[9], socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20]),
            payload[ihl:])


def _tcp_flags(l4: bytes) -> str:
    bits = l4[13] if len(l4) > 13 else 0
    return "".join(f for i, f in enumerate(_TCP_FLAGS) if bits & (1 << i))


def _tcp_data(l4: bytes) -> bytes:
    return l4[(l4[12] >> 4) * 4:] if len(l4) > 12 else b""


def _udp_payload(ip: bytes) -> bytes:
    """The UDP payload of an IPv4 packet (the demo only queues UDP over IPv4)."""
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8 :]


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_exchange(ns: str, data: bytes) -> Tuple[int, bytes]:
    """Connect to 127.0.0.1:LOG_PORT inside ``ns``, send ``data``, close; the
    client's port and what the server received."""
    server = netns.socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    client = netns.socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    conn = None
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", LOG_PORT))
        server.listen(1)
        server.settimeout(IO_WAIT)
        client.settimeout(IO_WAIT)
        client.connect(("127.0.0.1", LOG_PORT))
        port = int(client.getsockname()[1])
        conn, _ = server.accept()
        conn.settimeout(IO_WAIT)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
        conn.close()
        return port, got
    finally:
        for s in (conn, client, server):
            if s is not None:
                s.close()


# -- 1. NFLOG ---------------------------------------------------------------------------------

def step_nflog(ns: str) -> bool:
    header("1. NFLOG: the packets a rule logged, decoded")
    say("rule:    %s" % _rule_text(RULES[1]))
    scapy = have_scapy()
    message = b"hello over tcp"
    rows: List[Tuple[str, str, str, str]] = []
    flags_seen: List[str] = []
    data_seen: List[bytes] = []
    prefixes: List[str] = []

    def handler(pkt: "LogPacket") -> None:
        text = summary(pkt)  # scapy's, or the CLI's own one-line summary without scapy
        ip = _ipv4(pkt.payload)
        if ip is not None and ip[0] == socket.IPPROTO_TCP:
            flags, data = _tcp_flags(ip[3]), _tcp_data(ip[3])
            flags_seen.append(flags)
            data_seen.append(data)
            if not scapy:  # scapy's summary ends with the flags, the short one names none
                text += " " + flags
            if data and (not scapy or "Raw" in text):
                text += " %r" % data[:32]
        prefixes.append(pkt.prefix)
        rows.append((str(pkt.group), repr(pkt.prefix), pkt.indev_name or "-", text))
        if len(rows) >= 50:
            log.stop()

    with NfLog(LOG_GROUP, netns=ns) as log:
        say("traffic: a TCP connection to 127.0.0.1:%d sends %r and closes" % (LOG_PORT, message))
        port, got = _tcp_exchange(ns, message)
        log.run(handler, timeout=LOG_WAIT)  # returns once nothing came for LOG_WAIT s
        if _interrupted.is_set():  # run() absorbs Ctrl-C: the demo must stop all the same
            raise KeyboardInterrupt
    say("decoded by %s:" % ("scapy" if scapy else "nfbind's own summary (scapy is not installed)"))
    for line in table([("group", "prefix", "in", "packet")] + rows):
        say("  " + line)
    ok = (
        got == message
        and len(rows) >= 3
        and all(p == PREFIX for p in prefixes)
        and any("S" in f and "A" not in f for f in flags_seen)
        and message in data_seen
    )
    verdict_line(ok, "%d packets logged with prefix %r: the SYN and the data among them"
                 % (len(rows), PREFIX) if ok else
                 "expected the SYN and %r with prefix %r among the logged packets"
                 % (message, PREFIX))
    return ok


# -- 2. NFQUEUE -------------------------------------------------------------------------------

def _rewrite(pkt: "Packet", new: bytes) -> Tuple[object, str]:
    """A copy of the queued packet with a new UDP payload, and how it was made.

    With scapy: change the payload, delete the length and checksum fields and
    hand the scapy packet to ``accept(payload=...)``; they are recomputed when
    nfbind turns it into bytes.  Without scapy the same is done by hand.
    """
    try:
        from scapy.layers.inet import IP, UDP
    except ImportError:
        data = pkt.payload
        ihl = (data[0] & 0x0F) * 4
        udp_len = 8 + len(new)
        udp = data[ihl : ihl + 4] + struct.pack("!HH", udp_len, 0)  # checksum 0: none
        hdr = bytearray(data[:ihl])
        hdr[2:4] = struct.pack("!H", ihl + udp_len)
        hdr[10:12] = b"\0\0"
        hdr[10:12] = struct.pack("!H", _ipv4_checksum(bytes(hdr)))
        return bytes(hdr) + udp + new, "(by hand, no scapy)"
    packet = pkt.scapy()
    udp = packet[UDP]
    udp.remove_payload()
    udp.add_payload(new)
    del packet[IP].len, packet[IP].chksum, udp.len, udp.chksum
    return packet, "(scapy)"


class QueueDemo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.decisions: Dict[bytes, str] = {}
        self.decided = threading.Condition()
        self.seen = 0
        self.queue_error: Optional[BaseException] = None

    def handler(self, pkt: "Packet") -> Optional[Verdict]:
        self.seen += 1
        data = _udp_payload(pkt.payload)
        word = data.split(b" ", 1)[0].rstrip(b",")
        # The decision is written down before the verdict: the receiver may see the
        # datagram (and the main thread look the decision up) right after it.
        if word == b"drop":
            self._decide(data, "DROP")
            return Verdict.DROP
        if word == b"mark":
            self._decide(data, "ACCEPT, mark=%d" % MARK)
            pkt.accept(mark=MARK)
            return None
        if word == b"rewrite":
            new, how = _rewrite(pkt, REWRITTEN)
            self._decide(data, "ACCEPT, rewritten %s" % how)
            pkt.accept(payload=new)
            return None
        self._decide(data, "ACCEPT")
        return Verdict.ACCEPT

    def _decide(self, data: bytes, decision: str) -> None:
        with self.decided:
            self.decisions[data] = decision
            self.decided.notify_all()

    def _decision(self, data: bytes, until: float) -> Optional[str]:
        """The handler's decision on ``data``, waiting for it a bounded time."""
        timeout = max(0.0, min(DECIDE_WAIT, until - time.monotonic()))
        with self.decided:
            self.decided.wait_for(lambda: data in self.decisions or self.queue_error is not None,
                                  timeout)
            return self.decisions.get(data)

    def _run_queue(self, q: NfQueue) -> None:
        try:
            q.run(self.handler)
        except BaseException as e:  # reported by the main thread
            self.queue_error = e
            with self.decided:
                self.decided.notify_all()

    @staticmethod
    def _receive(
        sock: socket.socket, marks: bool, wait: float
    ) -> Tuple[Optional[bytes], Optional[int]]:
        sock.settimeout(max(0.01, wait))
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(65535, socket.CMSG_SPACE(4))
        except socket.timeout:
            return None, None
        mark = None
        for level, kind, value in ancdata:
            if marks and level == socket.SOL_SOCKET and kind == SO_MARK and len(value) >= 4:
                mark = struct.unpack("=I", value[:4])[0]
        return data, mark

    def run(self) -> bool:
        header("2. NFQUEUE: a Python handler decides each packet")
        say("rule:    %s" % _rule_text(RULES[2]))
        say("handler: 'drop ...' is dropped, 'mark ...' gets mark %d, 'rewrite ...' a new "
            "payload, the rest is accepted" % MARK)
        receiver = netns.socket(self.name, socket.AF_INET, socket.SOCK_DGRAM)
        sender = netns.socket(self.name, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            marks = False  # whether the receiver learns each datagram's mark
            if SO_RCVMARK is not None and SO_MARK is not None:
                try:
                    receiver.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
                    marks = True
                except OSError:
                    pass
            receiver.bind(("127.0.0.1", PORT))
            return self._exchange(receiver, sender, marks)
        finally:
            receiver.close()
            sender.close()

    def _exchange(self, receiver: socket.socket, sender: socket.socket, marks: bool) -> bool:
        until = time.monotonic() + DEADLINE
        ok = True
        q = NfQueue(QUEUE_NUM, netns=self.name)
        thread = threading.Thread(target=self._run_queue, args=(q,), name="nfbind-demo-queue")
        thread.daemon = True
        thread.start()
        try:
            width = max(len(repr(p)) for p, _, _ in DATAGRAMS)
            dw = len("ACCEPT, rewritten (by hand, no scapy)")
            say("  %-*s  %-*s  %s" % (width, "sent", dw, "handler decided", "receiver got"))
            for payload, expected, expected_mark in DATAGRAMS:
                if time.monotonic() >= until or self.queue_error is not None:
                    say("  stopping early: %s" % (self.queue_error or "out of time"))
                    ok = False
                    break
                sender.sendto(payload, ("127.0.0.1", PORT))
                decision = self._decision(payload, until)
                wait = DROP_WAIT if decision == "DROP" else RECV_WAIT
                wait = min(wait, until - time.monotonic())
                got, mark = self._receive(receiver, marks, wait)
                decided = decision
                if decision is None:
                    decision = "(no decision within %.0f s)" % DECIDE_WAIT
                if got is None:
                    result = "nothing within %.1f s" % wait
                else:
                    result = repr(got) + ("" if mark is None else "  mark=%d" % mark)
                good = (
                    decided is not None
                    and got == expected
                    and (mark is None or mark == expected_mark)
                )
                ok = ok and good
                say("  %-*s  %-*s  %s%s" % (width, repr(payload), dw, decision, result,
                                              "" if good else "   <-- unexpected"))
        finally:
            q.stop()
            thread.join(timeout=5)
            if thread.is_alive():
                # A handler that never returns holds the queue; closing it would wait
                # as long.  The kernel unbinds the queue when this process exits.
                say("warning: the queue thread did not stop within 5 s; not closing it")
                ok = False
            else:
                q.close()
        if self.queue_error is not None and not isinstance(self.queue_error, KeyboardInterrupt):
            say("the queue loop failed: %r" % (self.queue_error,))
            ok = False
        if not marks:
            say("(this kernel cannot report marks to the receiver: SO_RCVMARK needs Linux 5.19)")
        counters = _sh("ip", "netns", "exec", self.name,
                       "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x", check=False)
        say("kernel counters (iptables -L INPUT -v -n -x):")
        for line in (counters.stdout or counters.stderr).rstrip().splitlines():
            say("  " + line.rstrip())
        verdict_line(ok, "nfbind handled %d packets on queue %d; every datagram got what the "
                     "handler decided" % (self.seen, QUEUE_NUM) if ok else
                     "some datagrams did not get what the handler decided")
        return ok


# -- 3. conntrack -----------------------------------------------------------------------------

#: the demo's flow table: fewer columns than ``nfbind ct list``, addresses with their ports
FLOW_COLUMNS = (
    Column("proto", lambda f: proto_name(f.orig.proto)),
    Column("source", lambda f: endpoint(f.orig.src, f.orig.sport)),
    Column("destination", lambda f: endpoint(f.orig.dst, f.orig.dport)),
    Column("state", flow_state),
    Column("mark", lambda f: str(f.mark), right=True),
    Column("timeout", lambda f: "-" if f.timeout is None else str(f.timeout), right=True),
)


def _conntrack_L(ns: str, *filters: str) -> Optional[str]:
    """What the `conntrack` tool says about the matching flows, when installed."""
    if shutil.which("conntrack") is None:
        return None
    r = _sh("ip", "netns", "exec", ns, "conntrack", "-L", *filters, check=False)
    return str(r.stdout).strip()


def step_conntrack(ns: str) -> bool:
    header("3. conntrack: the flows, a mark update, live events")
    try:
        from .conntrack import Conntrack
    except ImportError as e:
        say("conntrack support is not built (%s)" % e)
        verdict_line(False, "no conntrack")
        return False
    with Conntrack(netns=ns, timeout=IO_WAIT) as ct:
        ok_list, tcp_flow = _ct_list(ct)
        ok_mark = _ct_mark(ns, ct, tcp_flow)
        ok_events = _ct_events(ns, ct)
    return ok_list and ok_mark and ok_events


def _ct_list(ct: "Conntrack") -> Tuple[bool, Optional["Flow"]]:
    flows = sorted(ct.dump(), key=lambda f: (int(f.orig.proto), f.orig.dport or 0,
                                             f.orig.sport or 0))
    say("flows (ct.dump()), made by the traffic of steps 1 and 2:")
    for line in flow_table(flows, FLOW_COLUMNS):
        say("  " + line)
    tcp = [f for f in flows if f.orig.proto == socket.IPPROTO_TCP and f.orig.dport == LOG_PORT]
    udp = [f for f in flows if f.orig.proto == socket.IPPROTO_UDP and f.orig.dport == PORT]
    ok = bool(tcp and udp)
    verdict_line(ok, "%d flows, the TCP connection of step 1 and the UDP datagrams of step 2 "
                 "among them" % len(flows) if ok else
                 "expected a tcp flow to port %d and a udp flow to port %d" % (LOG_PORT, PORT))
    return ok, (tcp[0] if tcp else None)


def _ct_mark(ns: str, ct: "Conntrack", flow: Optional["Flow"]) -> bool:
    if flow is None:
        say("update mark: no flow to update")
        return False
    say("update mark: ct.update(flow, mark=%d) on %s" % (CT_MARK, flow.orig))
    say("  before:  mark=%d" % flow.mark)
    ct.update(flow, mark=CT_MARK)
    again = ct.get(flow.orig)
    say("  after:   mark=%d  (read back with ct.get())" % again.mark)
    ok = again.mark == CT_MARK
    line = _conntrack_L(ns, "-p", "tcp", "--dport", str(LOG_PORT), "--mark", str(CT_MARK))
    if line is not None:
        say("  conntrack -L -p tcp --dport %d --mark %d:" % (LOG_PORT, CT_MARK))
        for text in line.splitlines() or ["(nothing)"]:
            say("    " + text)
        ok = ok and "mark=%d" % CT_MARK in line
    verdict_line(ok, "the flow's mark went from %d to %d" % (flow.mark, again.mark)
                 if ok else "the mark was not updated as asked")
    return ok


def _ct_events(ns: str, ct: "Conntrack") -> bool:
    from .conntrack import Tuple as CtTuple
    from .enums import CtEvent

    say("events (ct.events() in a thread, printed as they arrive):")
    seen: List[Tuple["CtEvent", "Flow"]] = []
    cond = threading.Condition()
    t0 = time.monotonic()

    def handler(ev: "Event") -> None:
        f = ev.flow
        extra = "" if not f.mark else "  mark=%d" % f.mark
        say("  %+7.3fs  %-7s  %s  %s%s" % (time.monotonic() - t0, ev.type.name, f.orig,
                                          flow_state(f), extra))
        with cond:
            seen.append((ev.type, f))
            cond.notify_all()

    errors: List[BaseException] = []

    def run(stream: "EventStream") -> None:
        try:
            stream.run(handler)
        except BaseException as e:  # reported below
            errors.append(e)
            with cond:
                cond.notify_all()

    stream = ct.events()
    thread = threading.Thread(target=run, args=(stream,), name="nfbind-demo-events", daemon=True)
    thread.start()
    udp_tuple: Optional["CtTuple"] = None
    try:
        say("  traffic: a TCP connection to 127.0.0.1:%d" % LOG_PORT)
        _tcp_exchange(ns, b"events, please")
        sender = netns.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        receiver = netns.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            receiver.bind(("127.0.0.1", EVENT_PORT))
            say("  traffic: a UDP datagram to 127.0.0.1:%d" % EVENT_PORT)
            sender.sendto(b"one datagram", ("127.0.0.1", EVENT_PORT))
            sport = sender.getsockname()[1]
        finally:
            sender.close()
            receiver.close()
        lo = ipaddress.ip_address("127.0.0.1")
        udp_tuple = CtTuple(lo, lo, socket.IPPROTO_UDP, sport, EVENT_PORT)

        def has(kind: "CtEvent", tup: Optional["CtTuple"] = None) -> bool:
            return any(t == kind and (tup is None or f.orig == tup) for t, f in seen)

        with cond:  # the flow must be in the table before it can be deleted
            cond.wait_for(lambda: has(CtEvent.NEW, udp_tuple) or errors, EVENT_WAIT)
        say("  traffic: ct.delete() the UDP flow %s" % udp_tuple)
        try:
            ct.delete(udp_tuple)
        except NfbindError as e:
            say("  ct.delete() failed: %s" % e)
        with cond:
            cond.wait_for(lambda: has(CtEvent.DESTROY, udp_tuple) or errors, EVENT_WAIT)
    finally:
        stream.stop()
        thread.join(timeout=5)
        if not thread.is_alive():
            stream.close()
    counts = {name: sum(1 for t, _ in seen if t.name == name)
              for name in ("NEW", "UPDATE", "DESTROY")}
    if errors:
        say("  the event loop failed: %r" % (errors[0],))
    ok = (not errors and not thread.is_alive() and counts["NEW"] >= 2
          and counts["DESTROY"] + counts["UPDATE"] >= 1
          and any(t.name == "DESTROY" and f.orig == udp_tuple for t, f in seen))
    verdict_line(ok, "events: %s" % ", ".join("%s %d" % kv for kv in counts.items())
                 if ok else "expected NEW events for both flows and the DESTROY of the deleted one"
                 " (got %s)" % ", ".join("%s %d" % kv for kv in counts.items()))
    return ok


# -- setup, cleanup, main ---------------------------------------------------------------------

def _setup(name: str) -> None:
    _sh("ip", "netns", "add", name)
    _sh("ip", "-n", name, "link", "set", "lo", "up")
    for rule in RULES:
        _sh("ip", "netns", "exec", name, "iptables", "-w", "-A", "INPUT", *rule)


def _cleanup(name: str) -> bool:
    """Delete the namespace (and its rules) and say so; True when it is gone."""
    path = os.path.join(netns.NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        return True
    r = _sh("ip", "netns", "delete", name, check=False)
    gone = not os.path.exists(path)
    if gone:
        say("removed network namespace %s (its rules, queue and flows went with it)" % name)
    else:
        say("could not remove network namespace %s: %s" % (name, r.stderr.strip()))
    return gone


_interrupted = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    _interrupted.set()
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` signals twice
    raise KeyboardInterrupt


def _steps(name: str) -> Dict[str, bool]:
    results: Dict[str, bool] = {}
    for label, step in (("NFLOG", step_nflog),
                        ("NFQUEUE", lambda ns: QueueDemo(ns).run()),
                        ("conntrack", step_conntrack)):
        try:
            results[label] = step(name)
        except (NfbindError, OSError) as e:  # one broken step does not hide the others
            say("%s step failed: %s" % (label, e))
            results[label] = False
    return results


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv:
        print("nfbind demo: takes no arguments (got %s); see --help" % " ".join(argv),
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("nfbind demo: needs root (it creates a network namespace and iptables rules;\n"
              "NFQUEUE needs CAP_NET_ADMIN). Run: sudo %s -m nfbind.demo" % sys.executable,
              file=sys.stderr)
        return 1
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            print("nfbind demo: `%s` not found: apt-get install iproute2 iptables" % tool,
                  file=sys.stderr)
            return 1
    # `kill` and `timeout` end the demo like Ctrl-C: through the cleanup below.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        old_int = signal.signal(signal.SIGINT, _terminate)
        old_term = signal.signal(signal.SIGTERM, _terminate)
    _interrupted.clear()
    have_scapy()  # the first import takes a while: not while a packet waits for its verdict
    started = time.monotonic()
    name = "nfbind-demo-%d" % os.getpid()
    say("nfbind demo: network namespace %s, deleted at the end; its rules:" % name)
    for rule in RULES:
        say("  " + _rule_text(rule))
    results: Dict[str, bool] = {}
    status: Optional[int] = None
    try:
        _setup(name)
        results = _steps(name)
    except subprocess.CalledProcessError as e:
        say("nfbind demo: `%s` failed: %s" % (" ".join(e.cmd), (e.stderr or "").strip()))
        status = 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        status = 130
    finally:
        # Nothing may interrupt the cleanup: it is short and bounded by its timeouts.
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            header("4. cleanup")
            results["cleanup"] = _cleanup(name)
            verdict_line(results["cleanup"], "no namespace left behind" if results["cleanup"]
                         else "namespace %s is still there: ip netns delete %s" % (name, name))
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
    if status is not None:
        return status
    good = sum(results.values())
    say("\n%s (%d of %d steps, %.1f s)" % (
        "every step showed what it should" if good == len(results) else
        "FAILED: " + ", ".join(k for k, v in results.items() if not v),
        good, len(results), time.monotonic() - started))
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
