# SPDX-License-Identifier: GPL-2.0-or-later
"""Fault scenarios of the receive buffers: ENOBUFS storms and conntrack churn.

* An NFLOG group flooded past a small fixed receive buffer: every packet the
  rule logged is either received (with a unique, valid sequence number) or
  lost, losses are reported as overruns, and a burst that fits the buffer
  afterwards arrives whole.
* Conntrack events past a small buffer: the overrun sets ``needs_resync``,
  ``resync()`` returns exactly the table (as ``dump()`` and ``conntrack -L``
  show it), and the events after it are exact.
* A churn of flows created and destroyed by another process while an
  EventStream follows: every flow's NEW and DESTROY event is received or its
  loss is reported by an overrun and repaired by ``resync()``, and the
  consumer's view ends equal to the real (empty) table.

Sizes are bounded in ``make test`` and full under ``--soak``; each scenario
reports its figures with ``fault_report()``.
"""
from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from typing import Callable, Dict, List, Set, Tuple as Tup

import pytest

from nfbind import NfLog, OverrunWarning
from nfbind.conntrack import Conntrack, Event, EventStream, Flow, Tuple
from nfbind.enums import CtEvent

from helpers.conntrack import conntrack_l, ct_ns, flow_key, row_key
from helpers.procs import child_env
from helpers.report import fault_report

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def settle(ns, chain: str, comment: str, limit: float = 60.0) -> int:
    """The rule's packet counter once it stopped moving: the same in three
    reads 0.25 s apart (loopback delivery may lag behind the sender under
    load)."""
    deadline = time.monotonic() + limit
    last = ns.counter(chain, comment)
    same = 0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = ns.counter(chain, comment)
        same = same + 1 if now == last else 0
        if same == 2:
            return now
        last = now
    raise AssertionError("the counter of %r kept moving for %.0f s" % (comment, limit))


# -- NFLOG: a storm past a fixed receive buffer, then a burst that fits -----------------------

LOG_GROUP = 41
LOG_PORT = 7100
LOG_COMMENT = "fault-nflog-storm"
LOG_RCVBUF = 64 << 10  # the kernel grants twice this: some 150 small log messages
RECOVERY = 32  # packets of the burst after each storm: well inside the buffer


def _tagged(p) -> Tup[int, bytes]:
    """(sequence number, UDP payload) of a logged IPv4/UDP packet."""
    hl = (p.payload[0] & 0xF) * 4
    return p.seq, bytes(p.payload[hl + 8:])


def _drain_idle(log: NfLog, handler: Callable, idle: float = 0.5, limit: float = 60.0) -> None:
    """drain() until the socket stayed empty for ``idle`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if log.drain(handler):
            continue
        r, _, _ = select.select([log.fileno()], [], [], idle)
        if not r:
            return
    raise AssertionError("the NFLOG socket never went quiet")


def _send(s: socket.socket, tag: bytes, count: int) -> int:
    for i in range(count):
        s.sendto(b"%s:%d" % (tag, i), ("127.0.0.1", LOG_PORT))
    return count


def test_nflog_enobufs_storm_then_recovery(ns, soak):
    storms = soak.size(2, 10)
    storm_size = soak.size(3000, 50000)
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(LOG_PORT), "-m", "comment",
                "--comment", LOG_COMMENT, "-j", "NFLOG", "--nflog-group", str(LOG_GROUP))
    # a bound receiver: no ICMP errors, whatever its own buffer drops
    sink = ns.socket()
    sink.bind(("127.0.0.1", LOG_PORT))
    tx = ns.socket()
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    log = NfLog(LOG_GROUP, netns=ns.name, rcvbuf=LOG_RCVBUF, rcvbuf_max=LOG_RCVBUF, seq=True,
                copy_range=64, nlbufsiz=4096)
    granted = log.rcvbuf
    totals = Counter()
    per_storm: List[Tup[int, int]] = []  # (lost, overruns) of each storm
    t0 = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base = 0  # the group's sequence numbers count every packet logged
            for k in range(storms):
                got: List[Tup[int, bytes]] = []
                handler = lambda p: got.append(_tagged(p))  # noqa: E731
                ovr0 = log.stats.overruns
                before = settle(ns, "INPUT", LOG_COMMENT)
                # odd storms meet a reader running alongside, even ones a
                # reader that comes only afterwards (certain to overflow)
                alongside = k % 2 == 1
                stop = threading.Event()
                reader = None
                if alongside:
                    def read() -> None:
                        deadline = time.monotonic() + 300
                        while not stop.is_set() and time.monotonic() < deadline:
                            log.run(handler, timeout=0.2)
                    reader = threading.Thread(target=read, daemon=True)
                    reader.start()
                ts = time.monotonic()
                sent = _send(tx, b"S%d" % k, storm_size)
                totals["send_us"] += round((time.monotonic() - ts) * 1e6)
                logged = settle(ns, "INPUT", LOG_COMMENT) - before
                if reader is not None:
                    stop.set()
                    log.stop()
                    reader.join(60)
                    assert not reader.is_alive()
                _drain_idle(log, handler)
                assert settle(ns, "INPUT", LOG_COMMENT) - before == logged
                overruns = log.stats.overruns - ovr0
                seqs = [s for s, _ in got]
                assert len(set(seqs)) == len(seqs), "a sequence number came twice"
                assert all(base <= s < base + logged for s in seqs), (base, logged)
                assert all(d.startswith(b"S%d:" % k) for _, d in got)
                assert len({d for _, d in got}) == len(got)
                assert 0 < logged <= sent
                lost = logged - len(got)
                assert lost >= 0
                # a loss is always reported, and every report stands for a loss
                assert (lost > 0) == (overruns > 0), (lost, overruns)
                assert overruns <= lost
                if not alongside:
                    assert lost > 0, "the storm fitted the buffer"
                base += logged

                # recovery: a burst that fits the buffer arrives whole
                ovr1 = log.stats.overruns
                rec: List[Tup[int, bytes]] = []
                _send(tx, b"R%d" % k, RECOVERY)
                rlogged = settle(ns, "INPUT", LOG_COMMENT) - before - logged
                _drain_idle(log, lambda p: rec.append(_tagged(p)))
                assert rlogged == RECOVERY
                assert log.stats.overruns == ovr1, "the recovery burst overran"
                assert sorted(d for _, d in rec) == sorted(b"R%d:%d" % (k, i)
                                                           for i in range(RECOVERY))
                assert sorted(s for s, _ in rec) == list(range(base, base + RECOVERY))
                base += RECOVERY
                totals.update(sent=sent, logged=logged, received=len(got), lost=lost,
                              overruns=overruns, recovery_received=len(rec))
                per_storm.append((lost, overruns))
        warned = [w for w in caught if issubclass(w.category, OverrunWarning)]
        assert len(warned) == 1, [str(w.message) for w in warned]
        assert log.rcvbuf == granted  # rcvbuf_max=rcvbuf: the buffer stays as it is
        assert log.stats.overruns == totals["overruns"] > 0
        assert log.stats.packets == totals["received"] + totals["recovery_received"]
    finally:
        log.close()
        tx.close()
        sink.close()
    elapsed = time.monotonic() - t0
    fault_report("nflog_enobufs_storm", storms=storms, storm_size=storm_size,
                 rcvbuf=granted, sent=totals["sent"], logged=totals["logged"],
                 received=totals["received"], lost=totals["lost"],
                 overruns=totals["overruns"], recovery_bursts=storms,
                 recovery_received=totals["recovery_received"],
                 storm_lost=[x for x, _ in per_storm], storm_overruns=[y for _, y in per_storm],
                 elapsed=round(elapsed, 3),
                 send_rate_pps=round(totals["sent"] * 1e6 / max(totals["send_us"], 1)))


# -- conntrack events: an overrun, resync(), and the events after it -----------------------------


def _tuple(i: int, dst: str = "198.18.0.1") -> Tuple:
    """The i-th test flow: a private source address of its own."""
    return Tuple("10.%d.%d.%d" % (i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF), dst, "udp", 5000, 53)


def _key(f: Flow) -> tuple:
    return flow_key(f)


def _tkey(t: Tuple) -> tuple:
    """What ``_key`` gives for a flow with the original tuple ``t``."""
    return (int(t.proto), str(t.src), str(t.dst), t.sport, t.dport, t.icmp_id)


def _drain_events(stream: EventStream, handler: Callable[[Event], None], *,
                  idle: float = 0.5, limit: float = 60.0) -> None:
    """Read events until the socket stayed empty for ``idle`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if stream.drain(handler):
            continue
        r, _, _ = select.select([stream.fileno()], [], [], idle)
        if not r:
            return
    raise AssertionError("the event socket never went quiet")


def test_ct_events_enobufs_then_resync(ns, soak):
    n = soak.size(1000, 20000)
    extra = soak.size(200, 2000)
    chunk = 500
    ct_ns(ns, v6=False)
    t0 = time.monotonic()
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.NEW | CtEvent.DESTROY, rcvbuf=4096) as stream:
        small = stream.rcvbuf
        want: Dict[tuple, int] = {}  # key -> mark
        for i in range(n):
            t = _tuple(i)
            ct.create(Flow(t, timeout=600, mark=i + 1))
            want[_tkey(t)] = i + 1
        got: List[Event] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _drain_events(stream, got.append)
        assert stream.stats.overruns >= 1
        assert any(issubclass(w.category, OverrunWarning) for w in caught)
        assert stream.needs_resync
        keys = [_key(e.flow) for e in got]
        assert all(e.type == CtEvent.NEW for e in got)
        assert len(set(keys)) == len(keys) and set(keys) <= set(want)
        assert len(got) < n
        overruns = stream.stats.overruns

        snapshot = stream.resync()
        assert not stream.needs_resync
        snap = {_key(f): f for f in snapshot}
        assert len(snap) == len(snapshot) == n
        assert {k: f.mark for k, f in snap.items()} == want
        dumped = {_key(f): f for f in ct.dump()}
        assert set(dumped) == set(snap)
        assert all(dumped[k].id == f.id for k, f in snap.items())
        rows = {row_key(r): r for r in conntrack_l(ns)}
        assert set(rows) == set(snap)
        for k, f in snap.items():
            r = rows[k]
            assert int(r["id"]) == f.id and int(r.get("mark", 0)) == f.mark
            assert str(f.reply.src) == r["reply"]["src"] and f.reply.sport == int(r["reply"]["sport"])

        # the events after resync(), with a buffer that holds a chunk of them
        stream.set_rcvbuf(4 << 20)
        after: List[Event] = []
        doomed = [f for i, f in enumerate(snapshot) if i % 2 == 0]
        for start in range(0, len(doomed), chunk):
            for f in doomed[start:start + chunk]:
                ct.delete(f)  # by id: exactly the snapshot's instance
            _drain_events(stream, after.append, idle=0.2)
        fresh = [_tuple(i, "198.18.1.1") for i in range(extra)]
        for start in range(0, extra, chunk):
            for t in fresh[start:start + chunk]:
                ct.create(Flow(t, timeout=600))
            _drain_events(stream, after.append, idle=0.2)
        _drain_events(stream, after.append)
        assert stream.stats.overruns == overruns and not stream.needs_resync
        destroyed = [e for e in after if e.type == CtEvent.DESTROY]
        new = [e for e in after if e.type == CtEvent.NEW]
        assert len(destroyed) + len(new) == len(after)
        assert sorted(_key(e.flow) for e in destroyed) == sorted(_key(f) for f in doomed)
        assert {_key(e.flow): e.flow.id for e in destroyed} == {_key(f): f.id for f in doomed}
        assert sorted(_key(e.flow) for e in new) == sorted(_tkey(t) for t in fresh)
        left = {_key(f) for f in ct.dump()}
        assert left == (set(snap) - {_key(f) for f in doomed}) | {_key(e.flow) for e in new}
        assert {row_key(r) for r in conntrack_l(ns)} == left
        received = len(got)
    fault_report("ct_events_enobufs_resync", flows=n, rcvbuf=small, received=received,
                 lost=n - received, overruns=overruns, resync_flows=len(snapshot),
                 destroyed_after=len(destroyed), created_after=len(new),
                 elapsed=round(time.monotonic() - t0, 3))


# -- a churn of flows followed by an EventStream -----------------------------------------------

_PRODUCER = r"""
import json, sys, time
from nfbind.conntrack import Conntrack, Flow, Tuple

total, batch, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def tup(i):
    return Tuple("10.%d.%d.%d" % (i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF), "198.18.0.1",
                 "udp", 5000, 53)

created = deleted = 0
t0 = time.monotonic()
with Conntrack() as ct:
    prev = []
    while created < total and time.monotonic() - t0 < limit:
        cur = [tup(i) for i in range(created, min(created + batch, total))]
        for t in cur:
            ct.create(Flow(t, timeout=600, mark=1))
        created += len(cur)
        for t in prev:
            ct.delete(t)
        deleted += len(prev)
        prev = cur
    for t in prev:
        ct.delete(t)
    deleted += len(prev)
print(json.dumps({"created": created, "deleted": deleted, "elapsed": time.monotonic() - t0}))
"""


def test_ct_churn_events_follow_with_resync(ns, soak):
    flows = soak.size(5000, 100000)
    batch = 500
    limit = soak.size(120.0, 900.0)  # the producer stops creating after this
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, \
            ct.events(CtEvent.NEW | CtEvent.DESTROY, rcvbuf=64 << 10) as stream:
        view: Set[tuple] = set()
        new_seen: Set[tuple] = set()
        destroy_seen: Set[tuple] = set()
        odd: List[str] = []
        counts = Counter()

        def handler(ev: Event) -> None:
            k = _key(ev.flow)
            counts[ev.type.name] += 1
            if ev.flow.mark != 1 or k[1][:3] != "10.":
                odd.append("a flow not made by the producer: %s" % ev.flow)
            elif ev.type == CtEvent.NEW:
                if k in new_seen or k in destroy_seen:
                    odd.append("NEW twice or after DESTROY: %s" % (k,))
                new_seen.add(k)
                view.add(k)
            elif ev.type == CtEvent.DESTROY:
                if k in destroy_seen:
                    odd.append("DESTROY twice: %s" % (k,))
                destroy_seen.add(k)
                view.discard(k)
            else:
                odd.append("an event not subscribed to: %s" % ev)

        resyncs = 0
        max_view = 0
        t0 = time.monotonic()
        producer = ns.popen(sys.executable, "-c", _PRODUCER, str(flows), str(batch), str(limit),
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
        # start reading only once the table holds many more flows than the
        # buffer holds events: the first overrun is certain
        wait_until = time.monotonic() + limit
        while ct.count() < batch and producer.poll() is None \
                and time.monotonic() < wait_until:
            time.sleep(0.05)
        deadline = time.monotonic() + limit + 120
        quiet_since = None
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            while time.monotonic() < deadline:
                if stream.needs_resync:
                    view = {_key(f) for f in stream.resync()}
                    resyncs += 1
                    max_view = max(max_view, len(view))
                    quiet_since = None
                if stream.drain(handler):
                    quiet_since = None
                    max_view = max(max_view, len(view))
                    continue
                r, _, _ = select.select([stream.fileno()], [], [], 0.2)
                if r or producer.poll() is None:
                    quiet_since = None
                    continue
                # the producer is done: stop after a second of silence
                now = time.monotonic()
                if quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= 1.0 and not stream.needs_resync:
                    break
            else:
                raise AssertionError("the churn did not end in time")
        elapsed = time.monotonic() - t0
        out, err = producer.communicate(timeout=30)
        assert producer.returncode == 0, err
        made = json.loads(out)
        assert made["created"] == made["deleted"] == flows, made

        table = {_key(f) for f in ct.dump()}
        assert not odd, odd[:10]
        assert view == table == set()
        assert [r for r in conntrack_l(ns) if r["orig"].get("src", "").startswith("10.")] == []
        received = counts["NEW"] + counts["DESTROY"]
        assert received == stream.stats.delivered == stream.stats.events
        lost = 2 * flows - received
        overruns = stream.stats.overruns
        # every loss was reported (and repaired by a resync), every report a loss
        assert lost >= 0
        assert (lost > 0) == (overruns > 0)
        assert overruns >= 1 and 1 <= resyncs <= overruns
    fault_report("ct_churn_events", flows=flows, batch=batch, rcvbuf=64 << 10,
                 new_received=counts["NEW"], destroy_received=counts["DESTROY"],
                 events_received=received, lost=lost, overruns=overruns, resyncs=resyncs,
                 max_view=max_view, producer_elapsed=round(made["elapsed"], 3),
                 rate_flows_per_s=round(flows / made["elapsed"]), elapsed=round(elapsed, 3))
