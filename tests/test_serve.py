# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind.serve(): one handler over several queues in worker processes, and
``nfbind queue FIRST:LAST --workers N``, against real traffic in throw-away
namespaces.

The kernel's ``--queue-balance`` picks a queue from a hash of the source and
destination addresses (not the ports), so the senders here use many source
addresses of 127.0.0.0/8.  serve() runs in a thread of the test with a
``stop_event``; every child it forks must be gone when it returns.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

import nfbind
from nfbind import QueueBusy, Verdict
from nfbind.serve import ServeResult, WorkerError

from helpers.packets import recv_all
from helpers.procs import child_env, children

pytestmark = pytest.mark.integration

PORT = 7300
#: how long a receiver waits for the next datagram before it gives up on the
#: rest: long, since a test that knows how many to expect stops at the last
QUIET = 5.0


def gone(pid: int) -> bool:
    return not os.path.exists("/proc/%d" % pid)


def balance_rule(ns, queues: str = "0:1") -> None:
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-balance", queues)


def receiver(ns) -> socket.socket:
    r = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r.bind(("127.0.0.1", PORT))
    return r


def send_flows(ns, payloads: List[bytes], sources: int = 32) -> None:
    """Send ``payloads`` to 127.0.0.1:PORT, dealt over ``sources`` source
    addresses 127.0.1.1, 127.0.1.2 ..."""
    socks = []
    try:
        for i in range(sources):
            s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.1.%d" % (i + 1), 0))
        for k, p in enumerate(payloads):
            socks[k % sources].sendto(p, ("127.0.0.1", PORT))
    finally:
        for s in socks:
            s.close()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class Running:
    """serve() in a thread, stopped with its stop_event."""

    def __init__(self, handler: Callable[[Any], Any], **kw: Any) -> None:
        self.stop = threading.Event()
        self.bound = threading.Event()
        self.pids: Dict[int, tuple] = {}
        self.result: Optional[ServeResult] = None
        self.error: Optional[BaseException] = None

        def ready(pids: Dict[int, tuple]) -> None:
            self.pids = pids
            self.bound.set()

        def target() -> None:
            try:
                self.result = nfbind.serve(handler, stop_event=self.stop, ready=ready, **kw)
            except BaseException as e:  # handed to the test
                self.error = e
            finally:
                self.bound.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        assert self.bound.wait(15), "serve() did not get ready"
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float = 15.0) -> ServeResult:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve() did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        for pid in self.pids:
            assert gone(pid), "worker %d still exists" % pid
        return self.result


def accept(pkt: Any) -> Verdict:
    return Verdict.ACCEPT


def test_two_workers_share_the_traffic(ns):
    balance_rule(ns, "0:3")
    r = receiver(ns)
    run = Running(accept, queues=range(4), workers=2, netns=ns.name)
    try:
        assert sorted(run.pids.values()) == [(0, 2), (1, 3)]
        assert os.getpid() not in run.pids and len(set(run.pids)) == 2
        wait_for(lambda: set(ns.queue_proc()) == {0, 1, 2, 3}, "the queues to be bound")
        payloads = [b"p%04d" % i for i in range(400)]
        send_flows(ns, payloads, sources=64)
        got = recv_all(r, QUIET, limit=len(payloads))
    finally:
        result = run.finish()
        r.close()
    assert sorted(got) == sorted(payloads)
    assert result.packets == 400 and result.handler_errors == 0 and result.restarts == 0
    assert [w.queues for w in result] == [(0, 2), (1, 3)]
    # both workers (and more than one queue) really handled traffic
    assert all(w.packets > 0 for w in result), [w.packets for w in result]
    per_queue = {q: n for w in result for q, n in w.per_queue.items()}
    assert sum(per_queue.values()) == 400 and sum(1 for n in per_queue.values() if n) >= 2
    assert all(w.exitcode == 0 and w.pid in run.pids for w in result)
    assert result.pps is not None and result.pps > 0
    assert not ns.queue_proc(), "queues still bound after serve() returned"


def test_drop_verdicts_and_closures(ns):
    balance_rule(ns)
    r = receiver(ns)
    dropped = b"drop"

    def decide(pkt: Any) -> Verdict:  # a closure: workers are forked
        return Verdict.DROP if pkt.payload[28:].startswith(dropped) else Verdict.ACCEPT

    run = Running(decide, queues=[0, 1], netns=ns.name, copy_range=64)
    try:
        keep = [b"keep%03d" % i for i in range(60)]
        drop = [b"drop%03d" % i for i in range(40)]
        send_flows(ns, keep + drop)
        got = recv_all(r, QUIET, limit=len(keep))
    finally:
        result = run.finish()
    got += recv_all(r, 0.2)  # every verdict is given by now: nothing more may come
    r.close()
    assert sorted(got) == sorted(keep)
    assert result.packets == 100


def test_busy_queue_raises_in_the_caller(ns):
    balance_rule(ns)
    before = children()
    with nfbind.NfQueue(1, netns=ns.name):
        with pytest.raises(QueueBusy) as ei:
            nfbind.serve(accept, queues=range(2), workers=2, netns=ns.name, bind_timeout=10)
        text = str(ei.value)
        assert "worker 1" in text and "queue 1" in text, text
        # the worker that did bind queue 0 was stopped and reaped
        assert children() == before
        assert set(ns.queue_proc()) == {1}


def test_stop_gives_waiting_packets_the_default_verdict(ns):
    balance_rule(ns)
    r = receiver(ns)
    # the handler keeps every packet without a verdict: close() settles them
    run = Running(lambda pkt: None, queues=range(2), netns=ns.name,
                  default_verdict=Verdict.ACCEPT)
    payloads = [b"held%03d" % i for i in range(50)]
    try:
        send_flows(ns, payloads)
        wait_for(lambda: sum(q["waiting"] for q in ns.queue_proc().values()) == 50,
                 "50 packets held by the workers")
        assert recv_all(r, 0.2) == []
    finally:
        result = run.finish()
    got = recv_all(r, QUIET, limit=len(payloads))
    r.close()
    assert sorted(got) == sorted(payloads)
    assert result.packets == 50


def test_handler_errors_are_logged_and_counted(ns, tmp_path):
    balance_rule(ns)
    r = receiver(ns)
    logfile = tmp_path / "serve.log"
    handler = logging.FileHandler(logfile)
    logger = logging.getLogger("nfbind.serve")
    logger.addHandler(handler)

    def decide(pkt: Any) -> Verdict:
        if pkt.payload[28:].startswith(b"bad"):
            raise RuntimeError("bad packet")
        return Verdict.ACCEPT

    try:
        run = Running(decide, queues=range(2), netns=ns.name, on_error=Verdict.DROP)
        try:
            bad = [b"bad%02d" % i for i in range(5)]
            good = [b"good%02d" % i for i in range(45)]
            send_flows(ns, bad + good)
            got = recv_all(r, QUIET, limit=len(good))
            more = [b"after%02d" % i for i in range(10)]  # traffic continues
            send_flows(ns, more)
            got += recv_all(r, QUIET, limit=len(more))
        finally:
            result = run.finish()
    finally:
        logger.removeHandler(handler)
        handler.close()
        r.close()
    assert sorted(got) == sorted(good + more)
    assert result.handler_errors == 5 and result.packets == 60
    text = logfile.read_text()
    assert "the handler raised RuntimeError: bad packet" in text, text
    assert "worker" in text and "queue" in text


class Abort(BaseException):
    """An exception class outside Exception, as a handler might raise."""


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt, Abort],
                         ids=lambda c: c.__name__)
def test_a_handler_raising_any_exception_class_keeps_its_worker(ns, tmp_path, exc):
    # SystemExit or KeyboardInterrupt from a handler is that handler's error
    # like any other: the packet gets on_error, the worker logs and counts
    # it and serves on (no restart, so no gap in which the kernel drops)
    balance_rule(ns)
    r = receiver(ns)
    logfile = tmp_path / "serve.log"
    handler = logging.FileHandler(logfile)
    logger = logging.getLogger("nfbind.serve")
    logger.addHandler(handler)

    def decide(pkt: Any) -> Verdict:
        if pkt.payload[28:].startswith(b"bad"):
            raise exc("from the handler")
        return Verdict.ACCEPT

    try:
        run = Running(decide, queues=range(2), workers=2, netns=ns.name,
                      on_error=Verdict.DROP)
        pids = dict(run.pids)
        try:
            bad = [b"bad%02d" % i for i in range(6)]
            good = [b"good%03d" % i for i in range(194)]
            mixed = [p for pair in zip(bad, good) for p in pair] + good[len(bad):]
            send_flows(ns, mixed, sources=48)
            got = recv_all(r, QUIET, limit=len(good))
            more = [b"after%02d" % i for i in range(20)]
            send_flows(ns, more, sources=48)
            got += recv_all(r, QUIET, limit=len(more))
            bound = ns.queue_proc()
        finally:
            result = run.finish()
        got += recv_all(r, 0.2)  # every verdict is given: no bad packet may come late
    finally:
        logger.removeHandler(handler)
        handler.close()
        r.close()
    assert sorted(got) == sorted(good + more)
    assert result.restarts == 0 and [w.pid for w in result] == list(pids), result
    assert set(bound) == {0, 1}
    assert result.handler_errors == 6 and result.packets == 220, result
    assert all(w.lost_stats == 0 for w in result)
    text = logfile.read_text()
    assert "the handler raised %s: from the handler" % exc.__name__ in text, text
    assert "died" not in text and "restart" not in text, text


def test_sigterm_and_sigint_still_stop_serve(ns):
    # a Ctrl-C (SIGINT to the process group) or SIGTERM to the caller still
    # stops serve() cleanly: it returns its result and no worker is left
    balance_rule(ns)
    code = (
        "import sys, nfbind\n"
        "r = nfbind.serve(lambda p: nfbind.Verdict.ACCEPT, queues=range(2), netns=%r,\n"
        "                 ready=lambda pids: print('ready', *sorted(pids), flush=True))\n"
        "print('served', r.packets, r.restarts, flush=True)\n" % ns.name)
    for sig, group in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=child_env(),
                             start_new_session=True)
        ns.procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("ready"), (line, p.stderr.read() if p.poll() is not None else "")
        workers = [int(x) for x in line.split()[1:]]
        if group:
            os.killpg(p.pid, sig)
        else:
            os.kill(p.pid, sig)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        assert out.strip() == "served 0 0", (out, err)
        assert "Traceback" not in err, err
        assert all(gone(w) for w in workers)
        assert not ns.queue_proc()


def test_killed_worker_is_restarted(ns):
    balance_rule(ns)
    r = receiver(ns)
    run = Running(accept, queues=range(2), workers=2, netns=ns.name)
    try:
        victim = next(pid for pid, qs in run.pids.items() if qs == (1,))
        old = wait_for(lambda: ns.queue_proc().get(1), "queue 1 to be bound")["portid"]
        os.kill(victim, signal.SIGKILL)
        # the new worker binds queue 1 again (another socket: another portid)

        def rebound() -> bool:
            rows = ns.queue_proc()
            return 1 in rows and rows[1]["portid"] != old
        wait_for(rebound, "queue 1 to be bound again")
        payloads = [b"r%03d" % i for i in range(200)]
        send_flows(ns, payloads, sources=48)
        got = recv_all(r, QUIET, limit=len(payloads))
    finally:
        result = run.finish()
        r.close()
    assert sorted(got) == sorted(payloads)
    w1 = result.workers[1]
    assert w1.restarts == 1 and w1.pid != victim and w1.lost_stats == 1
    assert result.workers[0].restarts == 0
    assert result.packets == 200 and all(w.packets for w in result)
    assert gone(w1.pid)


def test_killed_worker_without_restart_stops_everything(ns):
    balance_rule(ns)
    before = children()
    stop = threading.Event()
    state: Dict[str, Any] = {}

    def ready(pids: Dict[int, tuple]) -> None:
        state["pids"] = pids
        os.kill(next(iter(pids)), signal.SIGKILL)

    t0 = time.monotonic()
    with pytest.raises(WorkerError) as ei:
        nfbind.serve(accept, queues=range(2), workers=2, netns=ns.name, restart=False,
                     ready=ready, stop_event=stop, timeout=10)
    assert time.monotonic() - t0 < 5
    e = ei.value
    assert e.status == -signal.SIGKILL and e.pid in state["pids"]
    assert "SIGKILL" in str(e) and "worker %d" % e.index in str(e)
    assert children() == before and all(gone(p) for p in state["pids"])
    assert not ns.queue_proc()


def test_an_exception_in_the_caller_leaves_no_worker(ns):
    balance_rule(ns)
    before = children()
    seen: Dict[int, tuple] = {}

    def ready(pids: Dict[int, tuple]) -> None:
        seen.update(pids)
        raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError, match="the caller failed"):
        nfbind.serve(accept, queues=range(2), netns=ns.name, ready=ready, timeout=10)
    assert len(seen) == 2 and all(gone(p) for p in seen)
    assert children() == before
    assert not ns.queue_proc()


def test_timeout_ends_serve(ns):
    balance_rule(ns)
    t0 = time.monotonic()
    result = nfbind.serve(accept, queues=range(2), netns=ns.name, timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert len(result) == 2 and result.packets == 0 and result.pps is None


def test_cli_range_with_workers(ns):
    balance_rule(ns)
    r = receiver(ns)
    env = child_env()
    env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "nfbind", "queue", "0:1",
         "--workers", "2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)  # its own process group: Ctrl-C reaches every worker
    ns.procs.append(p)
    try:
        def bound() -> bool:
            if p.poll() is not None:
                raise AssertionError("nfbind exited early: %s" % p.stderr.read())
            return set(ns.queue_proc()) == {0, 1}
        wait_for(bound, "both queues to be bound", 15)
        payloads = [b"c%03d" % i for i in range(120)]
        send_flows(ns, payloads)
        got = recv_all(r, QUIET, limit=len(payloads))
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = p.communicate(timeout=15)
    finally:
        r.close()
    assert p.returncode == 0, err
    assert sorted(got) == sorted(payloads)
    assert "Traceback" not in err, err
    lines = out.splitlines()
    assert len(lines) == 120
    recs = [json.loads(line) for line in lines]  # no line mixed with another
    assert {d["queue"] for d in recs} == {0, 1}
    assert all(d["verdict"] == "ACCEPT" for d in recs)
    summary = [line for line in err.splitlines() if " workers (packets per worker" in line]
    assert len(summary) == 1, err
    assert "queues 0-1: 120 packets (120 accepted)" in summary[0], summary[0]
    assert "by 2 workers" in summary[0]
    assert not ns.queue_proc()


def test_cli_range_with_a_busy_queue(ns):
    balance_rule(ns)
    env = child_env()
    with nfbind.NfQueue(1, netns=ns.name):
        r = subprocess.run([sys.executable, "-m", "nfbind", "queue", "0:1", "--workers", "2",
                            "--netns", ns.name],
                           capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nfbind: error: worker 1 (queue 1)") and "already bound" in lines[0]
