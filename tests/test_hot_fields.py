# SPDX-License-Identifier: GPL-2.0-or-later
"""Hot fields: a handler that reads payload_len, mark, indev, hw_protocol,
timestamp (and NFLOG's prefix) of its packets gets later batches filled
eagerly into plain slots (nfbind.packet), on NfLog and NfQueue alike.  The values must be exactly what
the lazy properties give, None when absent included, on packets that have
every attribute and on packets that lack some.

Each test makes its own namespace, installs its own rules and sends real
packets on loopback.
"""
from __future__ import annotations

import socket

import pytest

from nfbind import LogPacket, NfLog, NfQueue, Packet, Verdict
from nfbind import log as log_mod
from nfbind import queue as queue_mod
from nfbind.packet import HOT_FIELDS, HOT_SPAN

from helpers.nflog import drain_all, nflog, send

pytestmark = pytest.mark.integration

LOG_HOT = HOT_FIELDS + ("prefix",)


def test_nflog_hot_fields_equal_the_lazy_ones(ns):
    # port 5000: marked, logged at OUTPUT (no input interface, no timestamp)
    # with a prefix and at INPUT without one; port 5001: unmarked, INPUT only,
    # another prefix (not ASCII)
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "5000",
                "-j", "MARK", "--set-mark", "0x2a")
    nflog(ns, "OUTPUT", 5000, 9, "--nflog-prefix", "out ")
    nflog(ns, "INPUT", 5000, 9)
    nflog(ns, "INPUT", 5001, 9, "--nflog-prefix", "in h\u00e9")
    n = 40 * HOT_SPAN
    seen = []

    def handler(p):
        seen.append((p, tuple(getattr(p, f) for f in LOG_HOT)))

    with NfLog(9, netns=ns.name, rcvbuf=32 << 20) as log:
        # everything is waiting before the first read: full batches
        send(ns, [b"a%05d" % i for i in range(n)])
        send(ns, [b"b%05d" % i for i in range(n)], dst=("127.0.0.1", 5001))
        drain_all(log, handler)
        assert log.stats.overruns == 0

    assert len(seen) == 3 * n
    hot = [p for p, _ in seen if type(p) is log_mod._HotLogPacket]
    # the first batch is read lazily, most later ones eagerly, and every
    # HOT_SPAN-th again lazily
    assert len(hot) > len(seen) // 2
    assert len(hot) < len(seen)
    for p, values in seen:
        assert isinstance(p, LogPacket)
        lazy = LogPacket(p._b, p._o)
        assert values == tuple(getattr(lazy, f) for f in LOG_HOT)
        for f, v in zip(LOG_HOT, values):
            assert type(v) is type(getattr(lazy, f)), f
        assert repr(p) == repr(lazy)
    kinds = {(v[0] > 0, v[1], v[2] is None, v[4] is None, v[5]) for _, v in seen}
    # marked OUTPUT packets with the prefix; marked and unmarked INPUT ones
    assert kinds == {(True, 0x2A, True, True, "out "), (True, 0x2A, False, False, ""),
                     (True, None, False, False, "in h\u00e9")}


def test_nflog_handler_reading_one_field_stays_lazy(ns):
    nflog(ns, "INPUT", 5000, 9)
    n = 10 * HOT_SPAN
    types = set()

    def handler(p):
        types.add(type(p))
        assert p.payload_len == 28 + 6

    with NfLog(9, netns=ns.name, rcvbuf=32 << 20) as log:
        send(ns, [b"a%05d" % i for i in range(n)])
        assert drain_all(log, handler) == n
    assert types == {LogPacket}


def test_nfqueue_hot_fields_equal_the_lazy_ones(ns):
    # port 5000: marked, queued at OUTPUT (no input interface, no timestamp)
    # and at INPUT; port 5001: unmarked, INPUT only
    ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "5000",
                "-j", "MARK", "--set-mark", "0x2a")
    for chain, ports in (("OUTPUT", "5000"), ("INPUT", "5000:5001")):
        ns.iptables("-A", chain, "-p", "udp", "--dport", ports, "-j", "NFQUEUE",
                    "--queue-num", "9")
    n = 10 * HOT_SPAN
    seen = []

    def handler(p):
        seen.append((p, p.id, tuple(getattr(p, f) for f in HOT_FIELDS)))
        if len(seen) == 3 * n:
            q.stop()
        return Verdict.ACCEPT

    # a socket asking for receive timestamps makes the kernel stamp incoming
    # packets, which then carry one at INPUT
    rx = ns.socket()
    rx.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMP", 29), 1)
    rx.bind(("127.0.0.1", 5001))
    with NfQueue(9, netns=ns.name, max_len=4 * n, rcvbuf=32 << 20) as q:
        # everything is waiting before the first read: full batches
        send(ns, [b"a%05d" % i for i in range(n)])
        send(ns, [b"b%05d" % i for i in range(n)], dst=("127.0.0.1", 5001))
        q.run(handler, timeout=10)
        assert q.stats.overruns == 0 and q.stats.pending == 0

    assert len(seen) == 3 * n
    hot = [p for p, _, _ in seen if type(p) is queue_mod._HotPacket]
    assert len(hot) > len(seen) // 2
    assert len(hot) < len(seen)
    assert len({pid for _, pid, _ in seen}) == 3 * n
    for p, pid, values in seen:
        assert isinstance(p, Packet) and p.id == pid and p.has_verdict
        lazy = Packet(p._b, p._o, pid)
        assert values == tuple(getattr(lazy, f) for f in HOT_FIELDS)
        for f, v in zip(HOT_FIELDS, values):
            assert type(v) is type(getattr(lazy, f)), f
    # (payload_len, mark, indev is None, timestamp is None)
    kinds = {(v[0], v[1], v[2] is None, v[4] is None) for _, _, v in seen}
    assert kinds == {(34, 0x2A, True, True), (34, 0x2A, False, False),
                     (34, None, False, False)}


def test_nfqueue_hot_fields_on_a_socket_of_two_queues(ns):
    # port 5000 to queue 9, 5001 to queue 10; both marked, 5001's with another mark
    for port, mark, qnum in ((5000, "0x2a", 9), (5001, "0x2b", 10)):
        ns.iptables("-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", str(port),
                    "-j", "MARK", "--set-mark", mark)
        ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(port), "-j", "NFQUEUE",
                    "--queue-num", str(qnum))
    n = 10 * HOT_SPAN
    seen = []

    def handler(p):
        seen.append((p, p.queue_num, tuple(getattr(p, f) for f in HOT_FIELDS)))
        if len(seen) == 2 * n:
            q.stop()
        return Verdict.ACCEPT

    with NfQueue([9, 10], netns=ns.name, max_len=2 * n, rcvbuf=32 << 20) as q:
        send(ns, [b"a%05d" % i for i in range(n)])
        send(ns, [b"b%05d" % i for i in range(n)], dst=("127.0.0.1", 5001))
        q.run(handler, timeout=10)
        assert q.stats.pending == 0

    assert len(seen) == 2 * n
    assert any(type(p) is queue_mod._HotPacket for p, _, _ in seen)
    for p, qnum, values in seen:
        lazy = Packet(p._b, p._o, p.id)
        assert values == tuple(getattr(lazy, f) for f in HOT_FIELDS)
        assert values[1] == {9: 0x2A, 10: 0x2B}[qnum]
    assert sorted(q for _, q, _ in seen) == [9] * n + [10] * n
