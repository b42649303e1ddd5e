# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's failure modes against the real kernel, each in its own namespace:
missing capability, a queue owned by someone else, netns forms, receive
buffer overruns, use after close, stopping the loop, and unclosed queues
(bad constructor arguments: test_arguments.py)."""
from __future__ import annotations

import errno
import gc
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

from nfbind import (
    ClosedError,
    NetlinkError,
    NfQueue,
    Overrun,
    OverrunWarning,
    PermissionDenied,
    QueueBusy,
    Verdict,
    VerdictError,
)
from nfbind.queue import MAX_PAYLOAD

from helpers.packets import recv_all
from helpers.procs import child_env, open_fds

pytestmark = pytest.mark.integration

PORT = 9999



def queue_udp(ns, num: int, port: int = PORT) -> None:
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(port), "-j", "NFQUEUE",
                "--queue-num", str(num))


def receiver(ns, port: int = PORT) -> socket.socket:
    r = ns.socket()
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    r.bind(("127.0.0.1", port))
    return r


def send(ns, payloads, port: int = PORT) -> None:
    s = ns.socket()
    try:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
    finally:
        s.close()


def take(q: NfQueue, count: int = 1, timeout: float = 5.0) -> list:
    """Up to ``count`` packets by iteration, without verdicts; bounded in time."""
    got: list = []
    timer = threading.Timer(timeout, q.stop)
    timer.start()
    try:
        it = iter(q)
        for pkt in it:
            got.append(pkt)
            if len(got) >= count:
                break
        it.close()
    finally:
        timer.cancel()
    return got


def drain_all(q: NfQueue, handler, quiet: float = 0.3, limit: float = 20.0) -> int:
    """drain() until the socket stayed empty for ``quiet`` seconds."""
    total = 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        n = q.drain(handler)
        total += n
        if n == 0:
            r, _, _ = select.select([q.fileno()], [], [], quiet)
            if not r:
                break
    return total



# -- no CAP_NET_ADMIN ----------------------------------------------------------------------

CHILD_BIND = r"""
import json, sys
from nfbind import NfQueue, NetlinkError, PermissionDenied
from nfbind.errors import has_cap_net_admin
out = {"cap": has_cap_net_admin()}
try:
    NfQueue(int(sys.argv[1]))
except BaseException as e:
    out.update(type=type(e).__name__, permission_error=isinstance(e, PermissionError),
               netlink_error=isinstance(e, NetlinkError), errno=getattr(e, "errno", None),
               msg=str(e))
else:
    out["type"] = None
print(json.dumps(out))
"""


@pytest.mark.parametrize("tool", ["setpriv", "capsh"])
def test_eperm_without_cap_net_admin(ns, tool):
    if shutil.which(tool) is None:
        pytest.skip("%s is not installed" % tool)
    if tool == "setpriv":
        drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                sys.executable, "-c", CHILD_BIND, "41"]
    else:
        drop = ["capsh", "--drop=cap_net_admin", "--",
                "-c", 'exec "$NFB_PY" -c "$NFB_CODE" 41']
    env = child_env()
    env.update(NFB_PY=sys.executable, NFB_CODE=CHILD_BIND)
    r = subprocess.run(["ip", "netns", "exec", ns.name, *drop], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cap"] is False, "the child still had CAP_NET_ADMIN"
    assert out["type"] == "PermissionDenied", out
    assert out["permission_error"] and out["netlink_error"]
    assert out["errno"] == errno.EPERM
    assert "CAP_NET_ADMIN" in out["msg"]
    assert "queue 41" in out["msg"]
    assert 41 not in ns.queue_proc()  # nothing got bound


# -- a queue owned by someone else ---------------------------------------------------------

CHILD_HOLD = r"""
import sys
from nfbind import NfQueue
q = NfQueue(int(sys.argv[1]))
print("bound", flush=True)
sys.stdin.read()
q.close()
"""


def test_queue_bound_by_another_process(ns):
    child = ns.popen(sys.executable, "-c", CHILD_HOLD, "12", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True, env=child_env())
    ready, _, _ = select.select([child.stdout], [], [], 20)
    assert ready and child.stdout.readline().strip() == "bound"
    owner = ns.queue_proc()[12]["portid"]
    fds = open_fds()
    with pytest.raises(QueueBusy) as ei:
        NfQueue(12, netns=ns.name)
    e = ei.value
    assert isinstance(e, NetlinkError) and isinstance(e, OSError)
    assert not isinstance(e, PermissionDenied)
    assert e.errno == errno.EPERM
    assert "queue 12" in str(e)
    assert "another process" in str(e) and "already bound" in str(e)
    assert "CAP_NET_ADMIN" not in str(e)
    assert open_fds() <= fds, "the failed NfQueue leaked descriptors"
    assert ns.queue_proc()[12]["portid"] == owner, "the owner lost its queue"
    # once the owner is gone the queue is free
    child.stdin.close()
    child.wait(10)
    assert 12 not in ns.queue_proc()
    with NfQueue(12, netns=ns.name) as q:
        assert ns.queue_proc()[12]["portid"] != owner
        assert not q.closed


def test_queue_bound_twice_in_one_process(ns):
    with NfQueue(13, netns=ns.name) as first:
        with pytest.raises(QueueBusy) as ei:
            NfQueue(13, netns=ns.name)
        assert ei.value.errno == errno.EPERM
        assert "already bound" in str(ei.value)
        assert not first.closed
        assert 13 in ns.queue_proc()
        # the first binding still works
        queue_udp(ns, 13)
        r = receiver(ns)
        send(ns, [b"still mine"])
        assert first.run(lambda p: (first.stop(), Verdict.ACCEPT)[1], timeout=5) is None
        assert first.stats.packets == 1
        assert recv_all(r, 1.0) == [b"still mine"]
        r.close()


# -- netns as an fd or a path -----------------------------------------------------------

def test_netns_fd_and_path_are_accepted(ns):
    path = "/run/netns/" + ns.name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with NfQueue(21, netns=fd) as a, NfQueue(22, netns=path) as b:
            rows = ns.queue_proc()
            assert {21, 22} <= set(rows)
            assert not a.closed and not b.closed
        assert os.fstat(fd)  # our fd was not closed by nfbind
    finally:
        os.close(fd)
    assert not {21, 22} & set(ns.queue_proc())


# -- verdict arguments, on a real packet --------------------------------------------------

def test_bad_verdict_arguments(ns):
    queue_udp(ns, 3)
    r = receiver(ns)
    with NfQueue(3, netns=ns.name) as q:
        send(ns, [b"verdict me"])
        (pkt,) = take(q)
        assert pkt.payload.endswith(b"verdict me")
        for kw, exc in [
            ({"mark": -1}, ValueError), ({"mark": 2 ** 32}, ValueError),
            ({"mark": "x"}, TypeError), ({"mark": 1.0}, TypeError), ({"mark": True}, TypeError),
            ({"connmark": -1}, ValueError), ({"connmark": 2 ** 32}, ValueError),
            ({"connmark": "x"}, TypeError),
            ({"payload": "text"}, TypeError), ({"payload": 12}, TypeError),
            ({"payload": [1, 2]}, TypeError),
        ]:
            name = next(iter(kw))
            with pytest.raises(exc, match=name):
                pkt.accept(**kw)
            assert not pkt.has_verdict, "a rejected %r consumed the verdict" % (kw,)
        for size in (MAX_PAYLOAD + 1, 65535, 70000):
            with pytest.raises(ValueError) as ei:
                pkt.accept(payload=b"\0" * size)
            assert str(MAX_PAYLOAD) in str(ei.value)
        with pytest.raises(ValueError, match="queue"):
            pkt.queue(70000)
        with pytest.raises(ValueError, match="queue"):
            pkt.queue(-1)
        with pytest.raises(TypeError, match="queue"):
            pkt.queue("1")
        with pytest.raises(ValueError, match="verdict"):
            pkt.verdict(99)
        with pytest.raises(ValueError, match="verdict"):
            pkt.verdict(Verdict.QUEUE)  # needs a number: pkt.queue(num)
        with pytest.raises(ValueError, match="mark"):
            pkt.repeat(mark=-5)
        with pytest.raises(ValueError, match="up_to_id"):
            q.verdict_batch(-1)
        with pytest.raises(ValueError, match="verdict"):
            q.verdict_batch(pkt.id, 99)
        assert not pkt.has_verdict
        assert q.stats.pending == 1
        pkt.accept()
        assert pkt.has_verdict
        with pytest.raises(VerdictError):
            pkt.drop()
        assert recv_all(r, 1.0) == [b"verdict me"]
        assert ns.queue_proc()[3]["waiting"] == 0
    r.close()


# -- receive buffer overruns ------------------------------------------------------------

BURST = 2000
SIZE = 1000


def _overrun_setup(ns, num: int, **kw) -> tuple:
    queue_udp(ns, num)
    r = receiver(ns)
    kw.setdefault("rcvbuf_max", 4096)  # a fixed buffer, unless a test lets it grow
    q = NfQueue(num, netns=ns.name, rcvbuf=4096, copy_range=0xFFFF, **kw)
    # SO_RCVBUFFORCE ignores rmem_max; the kernel doubles the request and
    # clamps it to its minimum, so a few 1 kB packets fill it
    assert q.rcvbuf <= 16384
    return q, r


def _accounted(ns, num: int, handled: int, sent: int) -> dict:
    row = ns.queue_proc()[num]
    assert row["waiting"] == 0, "packets left without a verdict: %r" % row
    assert row["id_sequence"] == sent
    # every packet was verdicted by us or dropped by the kernel, none lost
    assert handled + row["user_dropped"] + row["queue_dropped"] == sent, row
    return row


def test_overrun_counted_and_warned_once(ns):
    q, r = _overrun_setup(ns, 5)
    handled = []

    def accept(p):
        handled.append(p.id)
        return Verdict.ACCEPT

    try:
        with pytest.warns(OverrunWarning) as rec:
            send(ns, [b"x" * SIZE] * BURST)
            drain_all(q, accept)
            first = q.stats.overruns
            send(ns, [b"y" * SIZE] * BURST)
            drain_all(q, accept)
        assert first >= 1
        assert q.stats.overruns > first, "the second burst was not counted"
        warned = [w for w in rec if issubclass(w.category, OverrunWarning)]
        assert len(warned) == 1, [str(w.message) for w in warned]
        assert "ENOBUFS" in str(warned[0].message)
        row = _accounted(ns, 5, len(handled), 2 * BURST)
        assert row["user_dropped"] >= 1
        assert 0 < len(handled) < 2 * BURST
        assert len(recv_all(r, 0.5)) == len(handled)
        # the loop keeps working
        send(ns, [b"after"])
        q.run(lambda p: (handled.append(p.id), q.stop(), Verdict.ACCEPT)[2], timeout=5)
        assert recv_all(r, 1.0) == [b"after"]
        assert q.stats.packets == len(handled)
    finally:
        q.close()
        r.close()


def test_overrun_grows_the_receive_buffer_up_to_rcvbuf_max(ns):
    """Each overrun doubles the buffer (as conntrackd and ulogd do) until
    rcvbuf_max; then a burst the first buffer lost is received whole."""
    q, r = _overrun_setup(ns, 8, rcvbuf_max=1 << 20)
    handled = []

    def accept(p):
        handled.append(p.id)
        return Verdict.ACCEPT

    try:
        start = q.rcvbuf
        with pytest.warns(OverrunWarning) as rec:
            sent = 0
            for _ in range(12):                  # bounded: 4 KiB doubles to 1 MiB in 8
                send(ns, [b"x" * SIZE] * BURST)
                sent += BURST
                drain_all(q, accept)
                if q.rcvbuf >= 2 << 20:          # the kernel reports twice the request
                    break
        assert q.rcvbuf == 2 << 20 > start
        assert "doubles at each overrun up to rcvbuf_max=1048576" in str(rec[0].message)
        # 300 packets overflowed the first buffer many times over; now they fit
        before = q.stats.overruns
        handled.clear()
        send(ns, [b"z" * SIZE] * 300)
        drain_all(q, accept)
        assert q.stats.overruns == before, "the grown buffer still overflowed"
        assert len(handled) == 300
        assert len(recv_all(r, 0.5)) >= 300
        # set_rcvbuf() fixes the size: no more growth
        q.set_rcvbuf(8192)
        assert q._rcvbuf_max == 8192
    finally:
        q.close()
        r.close()


def test_overrun_raised_from_run_and_drain(ns):
    q, r = _overrun_setup(ns, 6, on_overrun="raise")
    handled = []

    def accept(p):
        handled.append(p.id)
        return Verdict.ACCEPT

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)  # raise mode never warns
            send(ns, [b"x" * SIZE] * BURST)
            with pytest.raises(Overrun) as ei:
                q.run(accept, timeout=5)
            e = ei.value
            assert isinstance(e, NetlinkError) and e.errno == errno.ENOBUFS
            assert e.count == q.stats.overruns >= 1
            assert "NfQueue(6)" in str(e)
            # the queue survived: what is left in the socket is still delivered
            drain_all(q, accept)
            send(ns, [b"x" * SIZE] * BURST)
            with pytest.raises(Overrun):
                for _ in range(200):  # bounded: the first empty read reports it
                    q.drain(accept)
            drain_all(q, accept)
        assert q.stats.overruns >= 2
        _accounted(ns, 6, len(handled), 2 * BURST)
        assert len(recv_all(r, 0.5)) == len(handled)
        send(ns, [b"after"])
        q.run(lambda p: (q.stop(), Verdict.ACCEPT)[1], timeout=5)
        assert recv_all(r, 1.0) == [b"after"]
    finally:
        q.close()
        r.close()


def test_no_enobufs_silences_the_report(ns):
    q, r = _overrun_setup(ns, 7, on_overrun="raise", no_enobufs=True)
    handled = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverrunWarning)
            send(ns, [b"x" * SIZE] * BURST)
            drain_all(q, lambda p: (handled.append(p.id), Verdict.ACCEPT)[1])
        assert q.stats.overruns == 0
        row = _accounted(ns, 7, len(handled), BURST)
        assert row["user_dropped"] >= 1  # the kernel still dropped, it just did not say
        assert len(recv_all(r, 0.5)) == len(handled)
    finally:
        q.close()
        r.close()


# -- use after close --------------------------------------------------------------------------

def test_use_after_close(ns):
    q = NfQueue(8, netns=ns.name)
    assert 8 in ns.queue_proc()
    q.close()
    assert q.closed
    assert 8 not in ns.queue_proc()
    q.close()  # twice is fine
    with pytest.raises(ClosedError):
        q.fileno()
    with pytest.raises(ClosedError):
        q.run(lambda p: Verdict.ACCEPT)
    with pytest.raises(ClosedError):
        q.configure(max_len=10)
    with pytest.raises(ClosedError):
        q.verdict_batch(1)
    with pytest.raises(ClosedError):
        next(iter(q))
    with pytest.raises(ClosedError):
        q.rcvbuf
    with pytest.raises(ClosedError):
        with q:
            pass
    with pytest.raises(ClosedError):
        q.drain(lambda p: Verdict.ACCEPT)
    q.stop()  # harmless
    assert "closed" in repr(q)
    assert q.stats.packets == 0 and q.stats.pending == 0


def test_with_closes(ns):
    with NfQueue(9, netns=ns.name) as q:
        assert not q.closed and 9 in ns.queue_proc()
    assert q.closed
    assert 9 not in ns.queue_proc()
    with pytest.raises(ZeroDivisionError):
        with NfQueue(9, netns=ns.name) as q2:
            1 / 0
    assert q2.closed and 9 not in ns.queue_proc()


def test_verdict_after_close(ns):
    queue_udp(ns, 10)
    r = receiver(ns)
    q = NfQueue(10, netns=ns.name, default_verdict=Verdict.ACCEPT)
    send(ns, [b"one", b"two"])
    pkts = take(q, 2)
    assert len(pkts) == 2
    pkts[0].drop()
    q.close()
    # the waiting one got the default verdict; the dropped one stays dropped
    assert recv_all(r, 1.0) == [b"two"]
    for p in pkts:
        assert p.has_verdict
    with pytest.raises(VerdictError, match="closed"):
        pkts[1].accept()
    with pytest.raises(VerdictError):
        pkts[1].drop()
    with pytest.raises(VerdictError):
        pkts[0].accept()
    r.close()


# -- stopping the loop ---------------------------------------------------------------------------

def _run_until_stopped(q: NfQueue, stopped: list) -> tuple:
    """run() with a 5 s safety timeout; returns (packets handled, seconds from
    stop() to run() returning, seconds run() took)."""
    calls: list = []
    start = time.monotonic()
    q.run(calls.append, timeout=5)
    end = time.monotonic()
    assert stopped, "stop() was never called (run returned after %.2fs)" % (end - start)
    assert stopped[0] >= start
    return calls, end - stopped[-1], end - start


def test_stop_from_another_thread(ns):
    with NfQueue(11, netns=ns.name) as q:
        for _ in range(2):  # run() can be entered again after a stop
            stopped: list = []

            def fire():
                stopped.append(time.monotonic())
                q.stop()

            t = threading.Timer(0.3, fire)
            t.daemon = True
            t.start()
            calls, lag, total = _run_until_stopped(q, stopped)
            t.join(5)
            assert calls == []
            assert lag < 1.0, "run() took %.2fs to return after stop()" % lag
            assert total >= 0.25
        assert not q.closed


@pytest.mark.parametrize("how", ["setitimer", "kill"])
def test_stop_from_signal_handler(ns, how):
    assert threading.current_thread() is threading.main_thread()
    sig = signal.SIGALRM if how == "setitimer" else signal.SIGUSR1
    with NfQueue(14, netns=ns.name) as q:
        stopped: list = []

        def on_signal(signum, frame):
            stopped.append(time.monotonic())
            q.stop()

        old = signal.signal(sig, on_signal)
        timer = None
        try:
            if how == "setitimer":
                signal.setitimer(signal.ITIMER_REAL, 0.3)
            else:
                timer = threading.Timer(0.3, os.kill, (os.getpid(), sig))
                timer.daemon = True
                timer.start()
            calls, lag, total = _run_until_stopped(q, stopped)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if timer is not None:
                timer.cancel()
            signal.signal(sig, old)
        assert calls == []
        assert lag < 1.0, "run() took %.2fs to return after stop()" % lag
        assert total >= 0.25
        assert not q.closed


# -- an unclosed queue ------------------------------------------------------------------------

def test_resource_warning_when_collected_unclosed(ns):
    q = NfQueue(15, netns=ns.name)
    assert 15 in ns.queue_proc()
    fds = open_fds()
    with pytest.warns(ResourceWarning, match="NfQueue"):
        del q
        for _ in range(3):
            gc.collect()
    assert 15 not in ns.queue_proc(), "the collected queue is still bound"
    assert open_fds() < fds, "the collected queue kept its descriptors"
