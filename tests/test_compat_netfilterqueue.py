# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind.compat.netfilterqueue: the NetfilterQueue 1.1 drop-in, with real traffic.

Each test gets its own namespace (fixture ``ns``) with ``iptables -j NFQUEUE``
rules on OUTPUT, sends UDP over loopback and checks what the receiver gets.
The shim is bound in the namespace through the nfbind extension ``netns=``,
through ``nfbind.netns.call_in`` (the constructor remembers the calling
thread's namespace), through ``sockfd=``, or in a child started with
``ip netns exec``.
"""
from __future__ import annotations

import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import List, Optional

import pytest

from nfbind import netns as nfnetns
from nfbind.compat.netfilterqueue import (
    COPY_META, COPY_NONE, COPY_PACKET, NetfilterQueue, Packet)

from helpers.packets import udp_data
from helpers.procs import SRC

pytestmark = pytest.mark.integration

PORT = 5555
QNUM = 7

_SOCKETS: List[socket.socket] = []
_QUEUES: List[NetfilterQueue] = []


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    while _QUEUES:
        _QUEUES.pop().unbind()
    while _SOCKETS:
        _SOCKETS.pop().close()


def _nfq(ns, **kw) -> NetfilterQueue:
    q = NetfilterQueue(netns=ns.name, **kw)
    _QUEUES.append(q)
    return q


def _rule(ns, qnum: int = QNUM, port: int = PORT) -> None:
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(port),
                "-j", "NFQUEUE", "--queue-num", str(qnum))


def _receiver(ns, port: int = PORT) -> socket.socket:
    r = ns.socket()
    _SOCKETS.append(r)
    r.bind(("127.0.0.1", port))
    return r


def _sender(ns) -> socket.socket:
    s = ns.socket()
    _SOCKETS.append(s)
    s.bind(("127.0.0.1", 0))
    return s


def _send(s: socket.socket, payloads, port: int = PORT) -> None:
    for p in payloads:
        s.sendto(p, ("127.0.0.1", port))


def _recv(sock: socket.socket, quiet: float = 0.3, limit: float = 5.0,
          expect: Optional[int] = None) -> List[bytes]:
    """What ``sock`` receives until it is quiet for ``quiet`` s (at most
    ``limit`` s), or until ``expect`` datagrams came.  Verdicts given in
    this thread are delivered before they return; a test whose verdicts come
    from another thread gives ``expect`` and a generous ``quiet``."""
    out: List[bytes] = []
    sock.settimeout(quiet)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (expect is None or len(out) < expect):
        try:
            out.append(sock.recv(70000))
        except (socket.timeout, BlockingIOError):
            break
    return out


def _waiting(ns, qnum: int = QNUM) -> int:
    row = ns.queue_proc().get(qnum)
    return 0 if row is None else row["waiting"]


def _ip_csum(hdr: bytes) -> int:
    s = sum(struct.unpack("!%dH" % (len(hdr) // 2), hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _rewrite_udp(ip: bytes, data: bytes) -> bytes:
    ihl = (ip[0] & 0x0F) * 4
    out = bytearray(ip[:ihl + 8] + data)
    struct.pack_into("!H", out, 2, len(out))
    struct.pack_into("!H", out, 10, 0)
    struct.pack_into("!H", out, 10, _ip_csum(bytes(out[:ihl])))
    struct.pack_into("!H", out, ihl + 4, 8 + len(data))
    struct.pack_into("!H", out, ihl + 6, 0)
    return bytes(out)


def _run_until(q: NetfilterQueue, cond, timeout: float = 5.0) -> None:
    """run(block=False) until ``cond()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for packets"
        q.run(block=False)
        time.sleep(0.01)


# -- basics ----------------------------------------------------------------------------


def test_constants_and_packet_not_constructible():
    assert (COPY_NONE, COPY_META, COPY_PACKET) == (0, 1, 2)
    with pytest.raises(TypeError):
        Packet()


def test_accept_drop_and_attributes(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    seen = []

    def cb(pkt):
        seen.append(pkt)
        assert isinstance(pkt.get_payload(), bytes)
        if udp_data(pkt.get_payload()) == b"drop me":
            pkt.drop()
        else:
            pkt.accept()

    q = _nfq(ns)
    q.bind(QNUM, cb)
    assert isinstance(q.get_fd(), int)
    _send(s, [b"one", b"drop me", b"three"])
    _run_until(q, lambda: len(seen) == 3)
    assert _recv(r) == [b"one", b"three"]
    lo = nfnetns.call_in(ns.name, socket.if_nametoindex, "lo")
    p = seen[0]
    assert [x.id for x in seen] == sorted(x.id for x in seen)
    assert p.hook == 3                       # NF_INET_LOCAL_OUT
    assert p.hw_protocol == 0x0800
    assert p.mark == 0 and p.get_mark() == 0
    assert p.outdev == lo and p.indev == 0 and p.physindev == 0 and p.physoutdev == 0
    assert p.get_hw() is None                # none on OUTPUT, as in NetfilterQueue
    assert p.get_timestamp() == 0.0          # the kernel stamps input hooks only
    assert p.get_payload_len() == 28 + 3
    assert str(p) == "UDP packet, 31 bytes"
    p.retain()                               # accepted, a no-op with nfbind
    assert udp_data(p.get_payload()) == b"one"  # data outlives the callback


def test_hw_address_on_input_is_8_bytes(ns):
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    r, s = _receiver(ns), _sender(ns)
    seen = []
    q = _nfq(ns)
    q.bind(QNUM, lambda p: (seen.append(p), p.accept()))
    _send(s, [b"in"])
    _run_until(q, lambda: seen)
    assert seen[0].hook == 1                 # NF_INET_LOCAL_IN
    assert seen[0].get_hw() == b"\0" * 8     # loopback's all-zero MAC, padded to 8
    assert seen[0].indev != 0
    assert isinstance(seen[0].get_timestamp(), float)
    assert _recv(r) == [b"in"]


def test_set_mark_then_accept_sends_the_mark(ns):
    _rule(ns)
    # an accepted packet leaves OUTPUT; a later hook sees its mark
    ns.iptables("-t", "mangle", "-A", "POSTROUTING", "-p", "udp", "--dport", str(PORT),
                "-m", "mark", "--mark", "0x2a", "-m", "comment", "--comment", "marked")
    r, s = _receiver(ns), _sender(ns)
    n = []

    def cb(pkt):
        n.append(1)
        pkt.set_mark(42)
        assert pkt.get_mark() == 42 and pkt.mark == 0
        pkt.accept()

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [b"a", b"b"])
    _run_until(q, lambda: len(n) == 2)
    assert _recv(r) == [b"a", b"b"]
    out = ns.run("iptables", "-w", "-t", "mangle", "-L", "POSTROUTING", "-v", "-n", "-x")
    line = [x for x in out.splitlines() if "/* marked */" in x][0]
    assert int(line.split()[0]) == 2


def test_repeat_with_mark(ns):
    # a rule before the queue accepts marked packets: repeat() re-enters there
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-m", "mark",
                "--mark", "7", "-j", "ACCEPT")
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    n = []

    def cb(pkt):
        n.append(1)
        pkt.set_mark(7)
        pkt.repeat()

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [b"again"])
    _run_until(q, lambda: n)
    assert _recv(r) == [b"again"]
    assert len(n) == 1


def test_two_queues_at_once(ns):
    _rule(ns, 7, 5555)
    _rule(ns, 8, 5556)
    r1, r2, s = _receiver(ns, 5555), _receiver(ns, 5556), _sender(ns)
    seen1, seen2 = [], []

    def dropper(seen, victim):
        def cb(pkt):
            seen.append(udp_data(pkt.get_payload()))
            (pkt.drop if seen[-1] == victim else pkt.accept)()
        return cb

    q1, q2 = _nfq(ns), _nfq(ns)
    q1.bind(7, dropper(seen1, b"two"))
    q2.bind(8, dropper(seen2, b"one"))
    _send(s, [b"one", b"two", b"three"], 5555)
    _send(s, [b"one", b"two", b"three"], 5556)
    _run_until(q1, lambda: len(seen1) == 3)
    _run_until(q2, lambda: len(seen2) == 3)
    assert _recv(r1) == [b"one", b"three"]
    assert _recv(r2) == [b"two", b"three"]
    q1.unbind()
    q2.unbind()
    # once unbound (and the rules gone), traffic flows again
    ns.iptables("-F", "OUTPUT")
    _send(s, [b"free"], 5555)
    assert _recv(r1) == [b"free"]


def test_rewrite_with_reorder(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    held = []
    done = []

    def cb(pkt):
        data = udp_data(pkt.get_payload())
        if data == b"one":
            held.append(pkt)                 # no verdict: stays queued
        elif data == b"two":
            pkt.accept()
            one = held.pop()
            one.set_payload(_rewrite_udp(one.get_payload(), b"numero uno"))
            assert udp_data(one.get_payload()) == b"numero uno"
            assert one.get_payload_len() == 28 + 3    # the length as received
            one.accept()
        else:
            pkt.accept()
        done.append(data)

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [b"one", b"two", b"three"])
    _run_until(q, lambda: len(done) == 3)
    assert _recv(r) == [b"two", b"numero uno", b"three"]
    assert _waiting(ns) == 0


def test_deferred_verdict_after_callback_and_across_runs(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    held = []
    q = _nfq(ns)
    q.bind(QNUM, held.append)                # the callback gives no verdict
    _send(s, [b"a", b"b"])
    _run_until(q, lambda: len(held) == 2)
    assert _waiting(ns) == 2
    assert _recv(r, quiet=0.1) == []
    held[1].set_payload(_rewrite_udp(held[1].get_payload(), b"B!"))
    held[1].accept()
    held[0].accept()
    assert _recv(r) == [b"B!", b"a"]
    assert _waiting(ns) == 0


def test_payloads_beyond_4016_bytes_arrive_whole(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    big = bytes(range(256)) * 35 + b"0123456789" * 4      # 9000 bytes
    bigger = b"z" * 60000
    lens = []

    def cb(pkt):
        data = pkt.get_payload()
        lens.append((len(data), pkt.get_payload_len()))
        if udp_data(data) == big:
            pkt.set_payload(_rewrite_udp(data, big[::-1]))
        pkt.accept()

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [big, bigger])
    _run_until(q, lambda: len(lens) == 2)
    assert lens == [(9028, 9028), (60028, 60028)]
    assert _recv(r) == [big[::-1], bigger]


def test_copy_meta_has_no_payload(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    errs = []

    def cb(pkt):
        with pytest.raises(RuntimeError, match="Packet has no payload -- perhaps you're "
                           "using COPY_META mode"):
            pkt.get_payload()
        errs.append(pkt.get_payload_len())
        pkt.accept()

    q = _nfq(ns)
    q.bind(QNUM, cb, mode=COPY_META)
    _send(s, [b"meta"])
    _run_until(q, lambda: errs)
    assert errs == [0]
    assert _recv(r) == [b"meta"]


# -- errors ------------------------------------------------------------------------------


def test_errors_like_netfilterqueue(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    q = _nfq(ns)
    q.unbind()                                   # nothing bound: a no-op
    with pytest.raises(RuntimeError):
        q.get_fd()                               # nfbind: the socket comes with bind()
    with pytest.raises(RuntimeError):
        q.run()
    with pytest.raises(OSError, match="Failed to set packet copy mode"):
        q.bind(QNUM, lambda p: None, mode=3)
    with pytest.raises(OverflowError):
        q.bind(QNUM, lambda p: None, mode=256)
    with pytest.raises(TypeError):
        q.bind("7", lambda p: None)
    with pytest.raises(OverflowError):
        q.bind(QNUM, lambda p: None, max_len=-1)
    with pytest.raises(OSError, match="Failed to create queue 70000"):
        q.bind(70000, lambda p: None)

    seen = []
    q.bind(QNUM, seen.append)
    with pytest.raises(RuntimeError, match="A queue is already bound; use unbind"):
        q.bind(QNUM + 1, lambda p: None)
    other = _nfq(ns)
    with pytest.raises(OSError, match="Failed to create queue %d" % QNUM):
        other.bind(QNUM, lambda p: None)     # another socket holds it

    _send(s, [b"x", b"y"])
    _run_until(q, lambda: len(seen) == 2)
    p, p2 = seen
    with pytest.raises(TypeError, match="expected bytes, got str"):
        p.set_payload("text")
    with pytest.raises(TypeError, match="expected bytes, got bytearray"):
        p.set_payload(bytearray(b"x"))
    with pytest.raises(OverflowError, match="negative"):
        p.set_mark(-1)
    with pytest.raises(OverflowError, match="too large"):
        p.set_mark(1 << 32)
    with pytest.raises(TypeError):
        p.set_mark("1")
    p.accept()
    with pytest.raises(RuntimeError, match="Verdict already given for this packet"):
        p.drop()
    with pytest.raises(RuntimeError, match="Verdict already given for this packet"):
        p.accept()
    assert _recv(r) == [b"x"]
    q.unbind()                                   # p2 had no verdict: dropped
    q.unbind()
    with pytest.raises(RuntimeError, match="Parent queue has already been unbound"):
        p2.accept()
    with pytest.raises(RuntimeError, match="Verdict already given for this packet"):
        p.accept()
    assert _recv(r, quiet=0.2) == []
    assert _waiting(ns) == 0
    # rebinding after unbind works
    q.bind(QNUM, lambda pkt: pkt.accept())
    _send(s, [b"z"])
    _run_until(q, lambda: _waiting(ns) == 0 and q.run(block=False) is None)
    assert _recv(r) == [b"z"]


def test_sock_len_warning(ns):
    q = _nfq(ns)
    with pytest.warns(RuntimeWarning, match="Socket rcvbuf limit is now"):
        q.bind(QNUM, lambda p: None, sock_len=2 ** 30)
    q.unbind()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.bind(QNUM, lambda p: None)             # the default size is granted
    q.unbind()


def test_callback_exception_leaves_packet_and_rest_for_next_run(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    seen = []

    def cb(pkt):
        seen.append(pkt)
        if udp_data(pkt.get_payload()) == b"boom":
            raise ValueError("test")
        pkt.accept()

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [b"one", b"boom", b"three", b"four"])
    deadline = time.monotonic() + 5
    with pytest.raises(ValueError, match="test"):
        while True:
            assert time.monotonic() < deadline
            q.run(block=False)
            time.sleep(0.01)
    # "one" got its verdict; "boom" is held without one; the rest wait for run()
    assert [udp_data(p.get_payload()) for p in seen] == [b"one", b"boom"]
    assert _recv(r, quiet=0.2) == [b"one"]
    assert _waiting(ns) == 3
    boom = seen[1]
    boom.accept()                                # the caller may still decide
    with pytest.raises(RuntimeError, match="Verdict already given"):
        boom.drop()
    _run_until(q, lambda: len(seen) == 4)
    assert _recv(r) == [b"boom", b"three", b"four"]
    assert _waiting(ns) == 0


def test_callback_exception_from_blocking_run(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)

    def cb(pkt):
        raise KeyError("bad")

    q = _nfq(ns)
    q.bind(QNUM, cb)
    _send(s, [b"k"])
    with pytest.raises(KeyError, match="bad"):
        q.run()                                  # the packet is already waiting
    assert _waiting(ns) == 1
    q.unbind()                                   # it never got a verdict: dropped
    assert _waiting(ns) == 0
    assert _recv(r, quiet=0.2) == []


# -- loops -----------------------------------------------------------------------------


def test_blocking_run_ends_on_unbind_from_callback_and_from_thread(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    q = _nfq(ns)
    n = []

    def cb(pkt):
        n.append(1)
        pkt.accept()
        if len(n) == 2:
            q.unbind()

    q.bind(QNUM, cb)
    _send(s, [b"1", b"2"])
    q.run()                                      # returns once unbound
    assert _recv(r) == [b"1", b"2"]

    q.bind(QNUM, lambda p: p.accept())
    t = threading.Thread(target=q.run, daemon=True)
    t.start()
    _send(s, [b"3"])
    assert _recv(r, quiet=5.0, expect=1) == [b"3"]
    q.unbind()
    t.join(5)
    assert not t.is_alive()


def test_run_socket_nonblocking_and_blocking(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    q = _nfq(ns)
    n = []

    def cb(pkt):
        n.append(udp_data(pkt.get_payload()))
        pkt.accept()
        if len(n) == 4:
            q.unbind()

    q.bind(QNUM, cb)
    sock = socket.fromfd(q.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    _SOCKETS.append(sock)
    sock.setblocking(False)
    q.run_socket(sock)                           # nothing waiting: returns
    _send(s, [b"a", b"b"])
    time.sleep(0.1)
    q.run_socket(sock)
    assert n == [b"a", b"b"]
    assert _recv(r) == [b"a", b"b"]
    sock.setblocking(True)
    sock.settimeout(10)                          # bound the wait
    _send(s, [b"c", b"d"])
    q.run_socket(sock)                           # returns when cb unbinds
    assert n == [b"a", b"b", b"c", b"d"]
    assert _recv(r) == [b"c", b"d"]


def test_run_socket_returns_when_unbound_from_another_thread(ns):
    # a thread blocked in recv(MSG_PEEK) on a descriptor of its own (fromfd
    # dups it) must come back when another thread unbinds: the unbind wakes
    # that recv, whatever the moment it comes (tried 30 times, at moments
    # spread over the loop's wait)
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    for i in range(30):
        q = _nfq(ns)
        q.bind(QNUM, lambda p: p.accept())
        sock = socket.fromfd(q.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
        _SOCKETS.append(sock)
        sock.settimeout(4)                       # a hang shows as a 4 s wait
        errors: List[BaseException] = []
        done = threading.Event()

        def loop() -> None:
            try:
                q.run_socket(sock)
            except BaseException as e:  # handed to the test
                errors.append(e)
            finally:
                done.set()

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        _send(s, [b"n%02d" % i])
        assert _recv(r, quiet=5.0, expect=1) == [b"n%02d" % i]
        time.sleep((i % 6) * 0.005)
        t0 = time.monotonic()
        q.unbind()
        assert done.wait(8), "run %d: run_socket() did not return" % i
        took = time.monotonic() - t0
        assert took < 2.0, "run %d: run_socket() returned %.1f s after unbind()" % (i, took)
        assert errors == [], errors
        t.join(1)


def test_constructed_inside_call_in_and_with_sockfd(ns):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    q = nfnetns.call_in(ns.name, NetfilterQueue)  # remembers the namespace
    _QUEUES.append(q)
    q.bind(QNUM, lambda p: p.accept())
    _send(s, [b"via call_in"])
    _run_until(q, lambda: _waiting(ns) == 0 and q.run(block=False) is None)
    assert _recv(r) == [b"via call_in"]
    q.unbind()

    nl = nfnetns.socket(ns.name, socket.AF_NETLINK, socket.SOCK_RAW, 12)
    _SOCKETS.append(nl)
    q2 = NetfilterQueue(sockfd=nl.fileno())
    _QUEUES.append(q2)
    q2.bind(QNUM, lambda p: p.accept())
    _send(s, [b"via sockfd"])
    _run_until(q2, lambda: _waiting(ns) == 0 and q2.run(block=False) is None)
    assert _recv(r) == [b"via sockfd"]


_CHILD = r"""
import sys
from nfbind.compat.netfilterqueue import NetfilterQueue

held = []

def cb(pkt):
    held.append(pkt)
    if len(held) == int(sys.argv[2]):  # one line per step: the reader is line-buffered
        print("have %d" % len(held), flush=True)

nfq = NetfilterQueue()
nfq.bind(int(sys.argv[1]), cb)
print("ready", flush=True)
try:
    nfq.run()
except KeyboardInterrupt:
    print("interrupted %d" % len(held), flush=True)
nfq.unbind()
print("unbound", flush=True)
"""


def _read_line(p: subprocess.Popen, sel: selectors.BaseSelector, deadline: float) -> str:
    left = deadline - time.monotonic()
    if left <= 0 or not sel.select(left):
        raise AssertionError("child said nothing in time; rc=%r" % p.poll())
    line = p.stdout.readline()
    if not line:
        raise AssertionError("child exited early: rc=%r stderr=%s" % (p.wait(5), p.stderr.read()))
    return line.strip()


def test_sigint_raises_keyboardinterrupt_from_run_like_the_readme(ns, tmp_path):
    _rule(ns)
    r, s = _receiver(ns), _sender(ns)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    p = ns.popen("env", "PYTHONPATH=" + SRC, sys.executable, str(script), str(QNUM), "2",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 15
    try:
        assert _read_line(p, sel, deadline) == "ready"
        _send(s, [b"s1", b"s2"])
        assert _read_line(p, sel, deadline) == "have 2"
        assert _waiting(ns) == 2                 # held without verdicts
        p.send_signal(signal.SIGINT)
        assert _read_line(p, sel, deadline) == "interrupted 2"
        assert _read_line(p, sel, deadline) == "unbound"
        rc = p.wait(10)
        err = p.stderr.read()
    finally:
        sel.close()
        if p.poll() is None:
            p.kill()
            p.wait(5)
        p.stdout.close()
        p.stderr.close()
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert _recv(r, quiet=0.2) == []             # unbind dropped them, as NetfilterQueue
    assert _waiting(ns) == 0
