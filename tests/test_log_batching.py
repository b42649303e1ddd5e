# SPDX-License-Identifier: GPL-2.0-or-later
"""How the kernel batches log messages: a rule's ``--nflog-threshold``, the
group's ``qthresh`` and flush ``timeout``, and ``nlbufsiz`` bounding a
batch; checked against the group's queue length in
/proc/net/netfilter/nfnetlink_log."""
from __future__ import annotations

import select
import time
from typing import List

import pytest

from nfbind import LogPacket, NfLog

from helpers.nflog import collect, drain_all, log_proc, nflog, send, udp_data

pytestmark = pytest.mark.integration


# -- --nflog-threshold, qthresh, timeout: batching --------------------------------------


def test_nflog_threshold_batches_and_timeout_flushes(ns):
    nflog(ns, "INPUT", 5200, 5, "--nflog-threshold", "4", "--nflog-prefix", "thr")
    got: List[LogPacket] = []
    # the kernel takes the smaller of the group's qthresh and the rule's
    # --nflog-threshold: a rule can only lower the group's threshold
    with NfLog(5, netns=ns.name, qthresh=50, timeout=1.0) as log:
        assert log_proc(ns)[5]["flushtimeout"] == 100  # hundredths of a second
        send(ns, [b"a%d" % i for i in range(3)], ("127.0.0.1", 5200))
        # three wait in the kernel for the fourth (or the timeout)
        assert not select.select([log.fileno()], [], [], 0.3)[0]
        assert log_proc(ns)[5]["qlen"] == 3
        assert log.drain(got.append) == 0
        send(ns, [b"a3"], ("127.0.0.1", 5200))
        assert select.select([log.fileno()], [], [], 1.0)[0]
        # the four came as one batch: one receive brings all of them
        assert log.drain(got.append, max_batches=1) == 4
        assert log_proc(ns)[5]["qlen"] == 0
        # two more: below the threshold, flushed by the 1 s timeout
        t0 = time.monotonic()
        send(ns, [b"b0", b"b1"], ("127.0.0.1", 5200))
        assert not select.select([log.fileno()], [], [], 0.4)[0]
        got += collect(log, 2, timeout=3)
        waited = time.monotonic() - t0
    assert [udp_data(p) for p in got] == [b"a0", b"a1", b"a2", b"a3", b"b0", b"b1"]
    assert all(p.prefix == "thr" for p in got)
    assert 0.8 <= waited <= 2.5, waited

    # the default qthresh=1 is below the rule's 4: each packet comes at once
    with NfLog(5, netns=ns.name, timeout=1.0) as log:
        send(ns, [b"c0"], ("127.0.0.1", 5200))
        assert select.select([log.fileno()], [], [], 0.5)[0]
        (p,) = collect(log, 1, timeout=0.5)
        assert udp_data(p) == b"c0"


def test_qthresh_of_the_log_batches(ns):
    nflog(ns, "INPUT", 5210, 5)  # no --nflog-threshold: the NfLog's qthresh rules
    got: List[LogPacket] = []
    with NfLog(5, netns=ns.name, qthresh=3, timeout=5.0, nlbufsiz=65536) as log:
        send(ns, [b"q0", b"q1"], ("127.0.0.1", 5210))
        assert not select.select([log.fileno()], [], [], 0.3)[0]
        assert log_proc(ns)[5]["qlen"] == 2
        send(ns, [b"q2"], ("127.0.0.1", 5210))
        assert select.select([log.fileno()], [], [], 1.0)[0]
        assert log.drain(got.append, max_batches=1) == 3
    assert [udp_data(p) for p in got] == [b"q0", b"q1", b"q2"]

    # nlbufsiz bounds a batch: a full buffer is sent before qthresh is reached
    got.clear()
    with NfLog(5, netns=ns.name, qthresh=50, timeout=5.0, nlbufsiz=4096) as log:
        send(ns, [b"%03d" % i + b"n" * 997 for i in range(10)], ("127.0.0.1", 5210))
        drain_all(log, got.append, idle=0.3, limit=2)
        # only a few ~1.1 kB messages fit in 4096 bytes (two here: the kernel
        # reserves room for the largest attributes): full batches went out,
        # the rest waits for the timeout
        n = len(got)
        assert 2 <= n < 10
        assert log_proc(ns)[5]["qlen"] == 10 - n
    assert [udp_data(p)[:3] for p in got] == [b"%03d" % i for i in range(n)]
