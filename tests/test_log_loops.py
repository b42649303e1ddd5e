# SPDX-License-Identifier: GPL-2.0-or-later
"""The ways to read an NfLog: run() and stop() (from the handler, another
thread, before run), iteration, ``async for``, fileno() + drain(); a loop
left with ``break`` keeps unread packets; a handler that raises still lets
its batch through; SIGINT ends run() in a child process cleanly."""
from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from nfbind import LogPacket, NfLog

from helpers.nflog import collect, log_proc, nflog, send, udp_data
from helpers.procs import child_env

pytestmark = pytest.mark.integration


# -- run/stop, iteration, async for, drain --------------------------------------------------


def test_run_stop_iteration_async_and_drain(ns):
    nflog(ns, "INPUT", 6000, 5)
    dst = ("127.0.0.1", 6000)
    total = 0
    with NfLog(5, netns=ns.name) as log:
        # run(): the handler stops it
        send(ns, [b"r0", b"r1", b"r2"], dst)
        got: List[LogPacket] = []
        log.run(lambda p: (got.append(p), len(got) == 3 and log.stop()), timeout=5)
        assert [udp_data(p) for p in got] == [b"r0", b"r1", b"r2"]
        total += 3

        # run(timeout=): returns once idle that long
        t0 = time.monotonic()
        log.run(lambda p: pytest.fail("no packet was sent"), timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 2

        # a stop() before run() is kept: run() returns at once
        log.stop()
        t0 = time.monotonic()
        log.run(lambda p: None, timeout=5)
        assert time.monotonic() - t0 < 1

        # stop() from another thread
        timer = threading.Timer(0.3, log.stop)
        timer.start()
        t0 = time.monotonic()
        log.run(lambda p: None, timeout=5)
        timer.join(5)
        assert 0.25 <= time.monotonic() - t0 < 2

        # iteration, bounded by a timer that stops it
        send(ns, [b"i0", b"i1"], dst)
        timer = threading.Timer(5, log.stop)
        timer.start()
        seen = []
        try:
            for p in log:
                seen.append(udp_data(p))
                if len(seen) == 2:
                    break
            # iteration can start again (see test_break_keeps_unread_packets
            # for packets already read when the loop breaks)
            send(ns, [b"i2", b"i3"], dst)
            for p in log:
                seen.append(udp_data(p))
                if len(seen) == 4:
                    break
        finally:
            timer.cancel()
        assert seen == [b"i0", b"i1", b"i2", b"i3"]
        total += 4

        # stop() ends an iteration that is waiting
        timer = threading.Timer(0.2, log.stop)
        timer.start()
        t0 = time.monotonic()
        assert list(log) == []
        timer.join(5)
        assert time.monotonic() - t0 < 2

        # async for: one packet waiting, two more sent while the loop waits
        send(ns, [b"a0"], dst)

        async def consume():
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, send, ns, [b"a1"], dst)
            loop.call_later(0.2, send, ns, [b"a2"], dst)
            out = []
            async for p in log:
                out.append(udp_data(p))
                if len(out) == 3:
                    break
            return out

        assert asyncio.run(asyncio.wait_for(consume(), 5)) == [b"a0", b"a1", b"a2"]
        total += 3

        # stop() ends an async for that is waiting
        async def stopped():
            asyncio.get_running_loop().call_later(0.2, log.stop)
            return [p async for p in log]

        assert asyncio.run(asyncio.wait_for(stopped(), 5)) == []

        # fileno() + drain() for users' own loops
        send(ns, [b"d0", b"d1"], dst)
        drained: List[LogPacket] = []
        deadline = time.monotonic() + 3
        while len(drained) < 2 and time.monotonic() < deadline:
            if select.select([log.fileno()], [], [], 0.5)[0]:
                log.drain(drained.append)
        assert [udp_data(p) for p in drained] == [b"d0", b"d1"]
        assert log.drain(drained.append) == 0  # nothing waiting: returns at once
        total += 2
        assert log.stats.packets == total
        assert log.stats.handler_errors == 0


def test_break_keeps_unread_packets(ns):
    nflog(ns, "INPUT", 6005, 5)
    with NfLog(5, netns=ns.name, qthresh=4, timeout=5.0) as log:
        send(ns, [b"b0", b"b1", b"b2", b"b3"], ("127.0.0.1", 6005))  # one batch
        assert select.select([log.fileno()], [], [], 2)[0]
        timer = threading.Timer(3, log.stop)
        timer.start()
        try:
            for p in log:
                first = udp_data(p)
                break
        finally:
            timer.cancel()
        assert first == b"b0"
        rest = collect(log, 3, timeout=0.5)
        assert [udp_data(p) for p in rest] == [b"b1", b"b2", b"b3"]


def test_handler_exception_rest_of_batch_handled(ns):
    nflog(ns, "INPUT", 6010, 5)
    dst = ("127.0.0.1", 6010)
    # qthresh=5: the kernel sends the five packets as one batch
    with NfLog(5, netns=ns.name, qthresh=5, timeout=5.0) as log:
        send(ns, [b"%d" % i for i in range(5)], dst)
        assert select.select([log.fileno()], [], [], 2)[0]
        seen = []

        def handler(p):
            seen.append(udp_data(p))
            if udp_data(p) in (b"1", b"3"):
                raise ValueError("bad packet %s" % udp_data(p).decode())

        with pytest.raises(ValueError, match="bad packet 1"):  # the first error
            log.run(handler, timeout=5)
        assert seen == [b"0", b"1", b"2", b"3", b"4"]  # the whole batch
        assert log.stats.handler_errors == 2 and log.stats.packets == 5

        # the loop goes on
        send(ns, [b"%d" % i for i in range(5, 10)], dst)
        got = collect(log, 5)
        assert [udp_data(p) for p in got] == [b"%d" % i for i in range(5, 10)]

        # Ctrl-C in the handler: run() returns; the rest of the batch waits
        # for the next run()
        send(ns, [b"%d" % i for i in range(10, 15)], dst)
        assert select.select([log.fileno()], [], [], 2)[0]
        seen.clear()

        def interrupted(p):
            seen.append(udp_data(p))
            if udp_data(p) == b"11":
                raise KeyboardInterrupt

        assert log.run(interrupted, timeout=5) is None
        assert seen == [b"10", b"11"]
        rest = collect(log, 3)
        assert [udp_data(p) for p in rest] == [b"12", b"13", b"14"]


CHILD_RUN = r"""
import sys
from nfbind import NfLog
log = NfLog(int(sys.argv[1]))
print("ready", flush=True)
n = [0]
def handler(p):
    n[0] += 1
    print("got", p.payload[28:].decode(), flush=True)
log.run(handler)
print("returned", n[0], flush=True)
log.close()
print("closed", flush=True)
"""


def test_sigint_ends_run_in_a_child_cleanly(ns):
    nflog(ns, "INPUT", 6020, 31)
    # `ip netns exec` execs: the PID is the Python child's
    child = ns.popen(sys.executable, "-c", CHILD_RUN, "31", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, env=child_env())

    def line(timeout=10) -> str:
        assert select.select([child.stdout], [], [], timeout)[0], "child silent"
        return child.stdout.readline().strip()

    assert line() == "ready"
    assert 31 in log_proc(ns)
    send(ns, [b"hello"], ("127.0.0.1", 6020))
    assert line() == "got hello"
    child.send_signal(signal.SIGINT)
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not stop on SIGINT")
    out = child.stdout.read()
    err = child.stderr.read()
    assert child.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out.split() == ["returned", "1", "closed"]
    assert 31 not in log_proc(ns)  # unbound
