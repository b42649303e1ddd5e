# SPDX-License-Identifier: GPL-2.0-or-later
"""The wake-up pipe under every blocking loop (nfbind._wake): a wake() ends
exactly the wait it meets, from a thread or a signal handler; a wait reports
the descriptors that are ready; close() is final and safe to repeat; close()
ends an ``async for`` (from its event loop or another thread) and leaves no
reader behind on that loop."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from nfbind import NfLog
from nfbind._wake import WakePipe


@pytest.mark.unit
def test_a_wake_ends_the_wait_and_is_consumed_by_it():
    pipe = WakePipe()
    try:
        waiter = pipe.waiter()
        timer = threading.Timer(0.1, pipe.wake)
        timer.start()
        t0 = time.monotonic()
        assert waiter.wait(5.0) == []
        assert time.monotonic() - t0 < 2.0, "the wake-up did not end the wait"
        timer.join()
        # consumed: the next wait runs to its timeout instead of returning at once
        t0 = time.monotonic()
        assert waiter.wait(0.3) == []
        assert time.monotonic() - t0 >= 0.25
    finally:
        pipe.close()


@pytest.mark.unit
def test_a_wake_from_a_signal_handler_ends_the_wait():
    # Python retries a poll() that a signal interrupted (PEP 475): only the
    # pipe gets the loop back
    pipe = WakePipe()
    old = signal.signal(signal.SIGALRM, lambda signum, frame: pipe.wake())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        assert pipe.waiter().wait(5.0) == []
        assert time.monotonic() - t0 < 2.0, "the signal's wake-up did not end the wait"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        pipe.close()


@pytest.mark.unit
def test_wait_reports_ready_and_hung_up_descriptors():
    pipe = WakePipe()
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        waiter = pipe.waiter([r, r2])
        assert waiter.wait(0.05) == []  # nothing ready: the timeout
        os.write(w, b"x")
        assert waiter.wait(1.0) == [r]
        assert os.read(r, 16) == b"x"
        os.close(w2)  # a closed writer: POLLHUP counts as ready
        w2 = -1
        assert waiter.wait(1.0) == [r2]
        # data and a wake-up together: the data is reported, the wake-up consumed
        os.write(w, b"y")
        pipe.wake()
        assert r in waiter.wait(1.0)
        with pytest.raises(BlockingIOError):
            os.read(pipe.r, 16)
    finally:
        for fd in (r, w, r2, w2):
            if fd >= 0:
                os.close(fd)
        pipe.close()


@pytest.mark.unit
def test_close_is_final_and_safe_to_repeat():
    pipe = WakePipe()
    r, w = pipe.r, pipe.w
    pipe.close()
    pipe.close()
    assert (pipe.r, pipe.w) == (-1, -1)
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)  # both ends closed (numbers not reused by this test)
    pipe.wake()  # after close: nothing is written anywhere
    pipe.clear()


@pytest.mark.integration
@pytest.mark.parametrize("closer", ["event loop", "thread"])
def test_async_for_ends_at_close_and_leaves_no_reader(ns, closer):
    log = NfLog(7, netns=ns.name)
    fds = (log.fileno(), log._wake.r)

    async def main():
        loop = asyncio.get_running_loop()
        if closer == "thread":
            timer = threading.Timer(0.2, log.close)
            timer.start()
        else:
            loop.call_later(0.2, log.close)
        got = [p async for p in log]
        if closer == "thread":
            timer.join()
        # the readers were removed by the numbers added, although close()
        # had closed (and forgotten) the descriptors meanwhile
        return got, [loop.remove_reader(fd) for fd in fds]

    try:
        got, still_there = asyncio.run(asyncio.wait_for(main(), 5))
    finally:
        log.close()
    assert got == []
    assert still_there == [False, False]
    assert log.closed
