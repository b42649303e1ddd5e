# SPDX-License-Identifier: GPL-2.0-or-later
"""Verdicts are right at every receive batch size.

The receive path takes up to N packets per recvmmsg and their verdicts leave
in one sendmsg (runs of one plain verdict as a kernel batch verdict).  Here
the batch size is forced to 1, 2, 3, 8 and 64 and each run mixes drops,
marks, rewritten payloads, plain accepts and verdicts deferred to another
thread; what arrives, in which order, and what a later rule counted must be
the same for every size.
"""
from __future__ import annotations

import threading
import time
from typing import List

import pytest

from nfbind import NfQueue, Verdict

pytestmark = pytest.mark.integration

PORT = 5601
QNUM = 11
N = 100
MARK = 0x77


def _kind(i: int) -> str:
    return ("drop", "mark", "rewrite", "defer", "plain")[i % 5]


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 64])
def test_mixed_verdicts_at_every_batch_size(ns, monkeypatch, batch):
    real_slots = NfQueue._slots
    monkeypatch.setattr(NfQueue, "_slots", lambda self: (real_slots(self)[0], batch))
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-m", "mark",
                "--mark", str(MARK), "-m", "comment", "--comment", "marked")
    r = ns.socket()
    r.bind(("127.0.0.1", PORT))
    r.settimeout(0.2)
    s = ns.socket()
    deferred: List = []
    arrived: List[bytes] = []
    try:
        with NfQueue(QNUM, netns=ns.name) as q:
            for i in range(N):
                s.sendto(b"p%03d" % i, ("127.0.0.1", PORT))

            def handler(pkt):
                ip = pkt.payload
                i = int(ip[-3:])
                kind = _kind(i)
                if kind == "drop":
                    return Verdict.DROP
                if kind == "mark":
                    pkt.accept(mark=MARK)
                    return None
                if kind == "rewrite":
                    pkt.accept(payload=ip[:-4] + b"P%03d" % i)
                    return None
                if kind == "defer":
                    deferred.append(pkt)
                    return None
                return Verdict.ACCEPT

            def settle_deferred():
                deadline = time.monotonic() + 10
                done = 0
                while done < N // 5 and time.monotonic() < deadline:
                    while done < len(deferred):
                        deferred[done].accept()
                        done += 1
                    time.sleep(0.01)

            t = threading.Thread(target=settle_deferred)
            t.start()
            deadline = time.monotonic() + 15
            while len(arrived) < N - N // 5 and time.monotonic() < deadline:
                q.run(handler, timeout=0.05)
                try:
                    while True:
                        arrived.append(r.recv(2048))
                except OSError:
                    pass
            t.join(10)
            assert q.stats.pending == 0
            # the forced size took effect: at most `batch` packets per receive
            assert q.stats.recv_calls >= N // batch
            if batch == 1:
                assert q.stats.recv_calls >= N
        want = sorted((b"P%03d" if _kind(i) == "rewrite" else b"p%03d") % i
                      for i in range(N) if _kind(i) != "drop")
        assert sorted(arrived) == want
        # what was decided inside the handler keeps the order it was sent in
        inline = [int(a[1:]) for a in arrived if _kind(int(a[1:])) != "defer"]
        assert inline == sorted(inline)
        assert ns.counter("INPUT", "marked") == N // 5
        assert len(deferred) == N // 5
    finally:
        r.close()
        s.close()
