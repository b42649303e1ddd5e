# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue([a, b, ...]): one socket bound to several queues, fed by
``iptables -j NFQUEUE --queue-balance`` with real flows spread over them.
Each packet knows its queue, its verdict goes to that queue (the kernel
numbers packets per queue, so ids repeat across queues), statistics come
per queue and in total, configure() and close() cover every queue."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import threading
from collections import Counter
from typing import Dict, List

import pytest

from nfbind import NfQueue, QueueBusy, Verdict

from helpers.packets import recv_all
from helpers.procs import SRC

pytestmark = pytest.mark.integration

PORT = 5641
QUEUES = [40, 41, 42, 43]


@pytest.fixture
def flows(ns):
    """The rule, a receiver, and 48 senders from 48 source addresses (the
    balancer hashes an IPv4 packet's addresses: 48 flows it spreads)."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-balance", "%d:%d" % (QUEUES[0], QUEUES[-1]))
    r = ns.socket()
    r.bind(("127.0.0.1", PORT))
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    senders = []
    for i in range(48):
        s = ns.socket()
        s.bind(("127.0.1.%d" % (i + 1), 0))
        senders.append(s)
    yield r, senders
    r.close()
    for s in senders:
        s.close()


def _send(senders, rounds: int = 2) -> List[bytes]:
    out = []
    for k in range(rounds):
        for i, s in enumerate(senders):
            d = b"f%d-%d" % (i, k)
            s.sendto(d, ("127.0.0.1", PORT))
            out.append(d)
    return out


def _data(pkt) -> bytes:
    return pkt.payload[28:]


def test_one_socket_several_queues_verdicts_per_queue(ns, flows):
    r, senders = flows
    with NfQueue(iter(QUEUES), netns=ns.name, default_verdict=Verdict.DROP) as q:
        assert q.queues == tuple(QUEUES)
        assert q.queue_num == tuple(QUEUES)
        rows = ns.queue_proc()
        assert {rows[n]["portid"] for n in QUEUES} == {rows[QUEUES[0]]["portid"]}
        sent = _send(senders)
        seen: Dict[bytes, int] = {}
        ids = Counter()

        def handler(pkt):
            seen[_data(pkt)] = pkt.queue_num
            ids[pkt.id] += 1
            return Verdict.DROP if pkt.queue_num == QUEUES[1] else Verdict.ACCEPT

        q.run(handler, timeout=0.4)
        assert sorted(seen) == sorted(sent)
        by_queue = Counter(seen.values())
        assert set(by_queue) == set(QUEUES), by_queue    # the balancer used them all
        # the same flow always lands in the same queue
        for i in range(len(senders)):
            assert seen[b"f%d-0" % i] == seen[b"f%d-1" % i]
        assert max(ids.values()) > 1                     # ids repeat across queues
        st = q.stats
        assert st.packets == len(sent)
        assert set(st.per_queue) == set(QUEUES)
        for n in QUEUES:
            assert st.per_queue[n].packets == by_queue[n]
            assert st.per_queue[n].pending == 0 and st.per_queue[n].timeouts == 0
        assert st.verdicts[Verdict.ACCEPT] == len(sent) - by_queue[QUEUES[1]]
        assert st.verdicts[Verdict.DROP] == by_queue[QUEUES[1]]
        assert st.verdict_errors == 0 and st.pending == 0
        rows = ns.queue_proc()
        for n in QUEUES:
            assert rows[n]["waiting"] == 0 and rows[n]["id_sequence"] == by_queue[n]
    want = sorted(d for d, n in seen.items() if n != QUEUES[1])
    assert sorted(recv_all(r, 0.3)) == want
    assert not set(QUEUES) & set(ns.queue_proc())      # close() unbound them all


def test_deferred_verdicts_and_close_across_queues(ns, flows):
    r, senders = flows
    held = []
    with NfQueue(QUEUES, netns=ns.name, default_verdict=Verdict.DROP) as q:
        sent = _send(senders, rounds=1)
        q.run(held.append, timeout=0.4)
        assert len(held) == len(sent) and q.stats.pending == len(sent)
        # accept those of two queues from another thread; close() drops the rest
        keep = [p for p in held if p.queue_num in (QUEUES[0], QUEUES[2])]

        def give():
            for p in keep:
                p.accept()

        t = threading.Thread(target=give)
        t.start()
        t.join(5)
        assert q.stats.pending == len(sent) - len(keep)
        assert q.stats.verdict_errors == 0
    assert sorted(recv_all(r, 0.3)) == sorted(_data(p) for p in keep)
    assert q.stats.verdicts[Verdict.DROP] == len(sent) - len(keep)
    rows = ns.queue_proc()
    assert not set(QUEUES) & set(rows)


def test_deadlines_across_queues(ns, flows):
    """on_timeout goes to each packet's own queue; timeouts count per queue."""
    r, senders = flows
    with NfQueue(QUEUES, netns=ns.name, verdict_timeout=0.2, on_timeout=Verdict.ACCEPT,
                 default_verdict=Verdict.DROP) as q:
        sent = _send(senders, rounds=1)
        held = []
        q.run(held.append, timeout=0.6)
        assert len(held) == len(sent)
        assert q.stats.timeouts == len(sent) and q.stats.pending == 0
        per = q.stats.per_queue
        for n in QUEUES:
            assert per[n].timeouts == sum(1 for p in held if p.queue_num == n)
        assert q.stats.verdict_errors == 0
        assert all(ns.queue_proc()[n]["waiting"] == 0 for n in QUEUES)
    assert sorted(recv_all(r, 0.3)) == sorted(sent)


def test_verdict_batch_needs_one_queue(ns):
    with NfQueue(QUEUES, netns=ns.name) as q:
        with pytest.raises(ValueError, match="one queue"):
            q.verdict_batch(10)


def test_configure_applies_to_every_queue(ns):
    with NfQueue(QUEUES, netns=ns.name) as q:
        q.configure(copy_range=128)
        rows = ns.queue_proc()
        assert [rows[n]["copy_range"] for n in QUEUES] == [128] * 4


def test_bad_queue_lists(ns):
    with pytest.raises(ValueError, match="duplicate"):
        NfQueue([1, 2, 1], netns=ns.name)
    with pytest.raises(ValueError, match="at least one"):
        NfQueue([], netns=ns.name)
    with pytest.raises(TypeError, match="queue"):
        NfQueue("12", netns=ns.name)
    with pytest.raises(ValueError, match="queue"):
        NfQueue([1, 70000], netns=ns.name)


def test_busy_queue_in_the_list_unbinds_the_others(ns):
    with NfQueue(QUEUES[2], netns=ns.name):
        with pytest.raises(QueueBusy, match="queue %d" % QUEUES[2]):
            NfQueue(QUEUES, netns=ns.name)
        rows = ns.queue_proc()
        assert set(QUEUES) & set(rows) == {QUEUES[2]}


def test_cli_range_without_workers_is_one_process(ns, flows):
    """``nfbind queue 40:43`` without --workers: one process, one NfQueue
    bound to every queue; each line names the packet's queue."""
    r, senders = flows
    p = subprocess.Popen(
        [sys.executable, "-u", "-m", "nfbind", "queue", "%d:%d" % (QUEUES[0], QUEUES[-1]),
         "--netns", ns.name, "--verdict", "accept", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=SRC))
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = ns.queue_proc()
            if all(n in rows for n in QUEUES):
                break
            time.sleep(0.05)
        rows = ns.queue_proc()
        assert len({rows[n]["portid"] for n in QUEUES}) == 1
        sent = _send(senders, rounds=1)
        got = recv_all(r, 0.5)
        assert sorted(got) == sorted(sent)
    finally:
        p.send_signal(2)
        out, err = p.communicate(timeout=15)
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert len(lines) == len(sent)
    assert {d["queue"] for d in lines} == set(QUEUES)
    assert "queues %d-%d" % (QUEUES[0], QUEUES[-1]) in err
    assert p.returncode == 0
