# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m nfbind.demo``: NFQUEUE in a throw-away network namespace.

Needs root.  The demo creates the namespace ``nfbind-demo-<pid>``, queues the
UDP datagrams to port 9999 with::

    iptables -A INPUT -p udp --dport 9999 -j NFQUEUE --queue-num 7

and lets a Python handler decide each one by its first word: ``drop`` is
dropped, ``mark`` is accepted with mark 7, ``rewrite`` gets a new UDP payload,
anything else is accepted as it is.  For every datagram it prints the decision
next to what the receiving socket in the namespace actually got (payload and
the packet's mark), then the kernel's rule counters.  The namespace and its
rules are deleted at the end, also on errors and Ctrl-C.
"""
from __future__ import annotations

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

from . import NfbindError, NfQueue, Verdict
from . import netns as _netns
from ._lib import lib as _lib

if TYPE_CHECKING:
    from .queue import Packet

QUEUE_NUM = 7
PORT = 9999
MARK = 7
RULE = ["-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)]
REWRITTEN = b"rewritten by nfbind"
DECIDE_WAIT = 3.0  # seconds for the handler to decide one datagram
RECV_WAIT = 2.0  # seconds for an accepted datagram to reach the receiver
DROP_WAIT = 0.3  # seconds to watch for a dropped datagram that arrives anyway
DEADLINE = 12.0  # seconds for the whole exchange

# What is sent and what the receiver should get: (payload, expected payload or None, mark)
DATAGRAMS: List[Tuple[bytes, Optional[bytes], int]] = [
    (b"hello, plain datagram", b"hello, plain datagram", 0),
    (b"drop this one", None, 0),
    (b"mark this one", b"mark this one", MARK),
    (b"rewrite this one", REWRITTEN, 0),
    (b"drop that one too", None, 0),
    (b"goodbye", b"goodbye", 0),
]

# setsockopt(SOL_SOCKET, SO_RCVMARK) (Linux >= 5.19) delivers the packet's mark with
# each datagram as an SO_MARK control message.  Python's socket module does not name
# it, so the value comes from the system headers through nfbind's compiled module.
SO_RCVMARK = _lib.SO_RCVMARK
SO_MARK = _lib.SO_MARK


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=10)


def _udp_payload(ip: bytes) -> bytes:
    """The UDP payload of an IPv4 packet (the demo only queues UDP over IPv4)."""
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8 :]


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


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


class Demo:
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

    def run(self) -> int:
        receiver = _netns.socket(self.name, socket.AF_INET, socket.SOCK_DGRAM)
        sender = _netns.socket(self.name, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            try:
                receiver.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
                marks = True
            except OSError:
                marks = False
            receiver.bind(("127.0.0.1", PORT))
            return self._exchange(receiver, sender, marks)
        finally:
            receiver.close()
            sender.close()

    def _exchange(self, receiver: socket.socket, sender: socket.socket, marks: bool) -> int:
        until = time.monotonic() + DEADLINE
        ok = True
        q = NfQueue(QUEUE_NUM, netns=self.name)
        thread = threading.Thread(target=self._run_queue, args=(q,), name="nfbind-demo-queue")
        thread.daemon = True
        thread.start()
        try:
            width = max(len(repr(p)) for p, _, _ in DATAGRAMS)
            print("\n%-*s  %-30s  %s" % (width, "sent", "handler decided", "receiver got"))
            for payload, expected, expected_mark in DATAGRAMS:
                if time.monotonic() >= until or self.queue_error is not None:
                    print("stopping early: %s" % (self.queue_error or "out of time"))
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
                print("%-*s  %-30s  %s%s" % (width, repr(payload), decision, result,
                                              "" if good else "   <-- unexpected"))
        finally:
            q.stop()
            thread.join(timeout=5)
            if thread.is_alive():
                # A handler that never returns holds the queue; closing it would wait
                # as long.  The kernel unbinds the queue when this process exits.
                print("warning: the queue thread did not stop within 5 s; not closing it")
                ok = False
            else:
                q.close()
        if self.queue_error is not None and not isinstance(self.queue_error, KeyboardInterrupt):
            print("the queue loop failed: %r" % (self.queue_error,))
            ok = False
        if not marks:
            print("(this kernel cannot report marks to the receiver: SO_RCVMARK needs Linux 5.19)")
        print("\nnfbind handled %d packets on queue %d" % (self.seen, QUEUE_NUM))
        counters = _sh("ip", "netns", "exec", self.name,
                       "iptables", "-L", "INPUT", "-v", "-n", "-x", check=False)
        print("\nkernel counters (iptables -L INPUT -v -n -x inside %s):" % self.name)
        print((counters.stdout or counters.stderr).rstrip())
        print("\n%s" % ("every datagram got what the handler decided" if ok
                        else "some datagrams did not get what the handler decided"))
        return 0 if ok else 1


def _setup(name: str) -> None:
    _sh("ip", "netns", "add", name)
    _sh("ip", "-n", name, "link", "set", "lo", "up")
    _sh("ip", "netns", "exec", name, "iptables", "-A", "INPUT", *RULE)


def _cleanup(name: str) -> None:
    if os.path.exists(os.path.join(_netns.NETNS_RUN_DIR, name)):
        _sh("ip", "netns", "delete", name, check=False)
        print("removed network namespace %s" % name)


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `timeout` signals twice
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
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
        old_int = signal.getsignal(signal.SIGINT)
        old_term = signal.signal(signal.SIGTERM, _terminate)
    try:  # the first import takes a while: not while a packet waits for its verdict
        import scapy.layers.inet  # noqa: F401
    except ImportError:
        pass
    name = "nfbind-demo-%d" % os.getpid()
    print("network namespace %s, rule: iptables -A INPUT %s" % (name, " ".join(RULE)))
    try:
        _setup(name)
        return Demo(name).run()
    except subprocess.CalledProcessError as e:
        print("nfbind demo: `%s` failed: %s" % (" ".join(e.cmd), (e.stderr or "").strip()),
              file=sys.stderr)
        return 1
    except NfbindError as e:
        print("nfbind demo: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        # Nothing may interrupt the cleanup: it is short and bounded by its timeouts.
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _cleanup(name)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
