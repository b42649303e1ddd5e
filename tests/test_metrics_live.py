# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind.metrics.Collector against the real kernel: objects in throw-away
namespaces, their metrics served over HTTP by prometheus_client's own server
and read back by its own parser, and every value checked against what was
sent, against /proc/net/netfilter/nfnetlink_queue and nfnetlink_log, and
against ``conntrack -L``, ``conntrack -C`` and ``conntrack -S``."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any, Callable, List

import pytest

pytest.importorskip("prometheus_client",
                    reason="nfbind[metrics] is not installed (make venv installs it)")

from nfbind import NfLog, NfQueue, Verdict  # noqa: E402
from nfbind.conntrack import Conntrack, EventFilter, Flow, Tuple  # noqa: E402
from nfbind.enums import CtEvent, TcpState  # noqa: E402
from nfbind.metrics import Collector, kernel_log_stats, kernel_queue_stats  # noqa: E402

from helpers.conntrack import conntrack_l, ct_ns  # noqa: E402
from helpers.packets import csum16  # noqa: E402
from helpers.scrape import scrape, serving, wait_value  # noqa: E402

pytestmark = pytest.mark.integration

VERDICTS = ("accept", "drop", "queue", "repeat", "stop")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def send_udp(ns, port: int, payloads: List[bytes]) -> None:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
    finally:
        s.close()


def received(sock: socket.socket, quiet: float = 0.3) -> List[bytes]:
    sock.settimeout(quiet)
    got = []
    try:
        for _ in range(10000):
            got.append(sock.recv(2000))
    except socket.timeout:
        pass
    return got


class Loop:
    """``q.run(handler)`` in a thread of its own, as an application runs it;
    a handler's exception ends one run() and the loop goes on."""

    def __init__(self, q: Any, handler: Callable[[Any], Any]) -> None:
        self.q = q
        self.done = False
        self.errors: List[BaseException] = []

        def body() -> None:
            deadline = time.monotonic() + 30
            while not self.done and time.monotonic() < deadline:
                try:
                    q.run(handler, timeout=0.2)
                except ValueError as e:
                    self.errors.append(e)

        self.t = threading.Thread(target=body, daemon=True)
        self.t.start()

    def stop(self) -> None:
        self.done = True
        self.q.stop()
        self.t.join(10)
        assert not self.t.is_alive()


# -- NFQUEUE ----------------------------------------------------------------------------------


@pytest.fixture
def qns(ns):
    # queued in mangle; an accepted packet reaches the receiving socket
    for q, port in ((5, 7000), (6, 7001)):
        ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", str(port),
                    "-j", "NFQUEUE", "--queue-num", str(q))
    return ns


def test_queue_verdicts_match_what_was_sent_and_proc(qns):
    """10 packets queued, 7 accepted and 3 dropped; scraped while the loop
    runs in another thread."""
    ns = qns
    rx = ns.socket()
    rx.bind(("127.0.0.1", 7000))
    seen: List[bytes] = []

    def decide(pkt: Any) -> Verdict:
        seen.append(pkt.payload[-2:])
        return Verdict.DROP if pkt.payload.endswith(b"d") else Verdict.ACCEPT

    with NfQueue(5, netns=ns.name) as q, serving(Collector(q)) as url:
        first = scrape(url)
        assert first.value("nfbind_queue_packets_total", queue="5") == 0
        assert first.value("nfbind_queue_waiting", queue="5") == 0
        loop = Loop(q, decide)
        try:
            send_udp(ns, 7000, [b"%da" % i for i in range(7)] + [b"%dd" % i for i in range(3)])
            s = wait_value(url, "nfbind_queue_packets_total", 10, queue="5")
            s = wait_value(url, "nfbind_queue_verdicts_total", 3, queue="5", verdict="drop")
        finally:
            loop.stop()
        row = ns.queue_proc()[5]
        assert kernel_queue_stats(ns.name)[5]._asdict() == dict(row, queue=5)
        assert s.value("nfbind_queue_verdicts_total", queue="5", verdict="accept") == 7
        for v in ("queue", "repeat", "stop"):
            assert s.value("nfbind_queue_verdicts_total", queue="5", verdict=v) == 0
        assert s.value("nfbind_queue_pending", queue="5") == 0
        assert s.value("nfbind_queue_handler_errors_total", queue="5") == 0
        assert s.value("nfbind_queue_overruns_total", queue="5") == 0
        assert s.value("nfbind_queue_waiting", queue="5") == row["waiting"] == 0
        assert s.value("nfbind_queue_kernel_dropped_total", queue="5",
                       reason="queue_full") == row["queue_dropped"] == 0
        assert s.value("nfbind_queue_kernel_dropped_total", queue="5",
                       reason="socket") == row["user_dropped"] == 0
        assert s.value("nfbind_queue_timeouts_total", queue="5") == 0
    assert sorted(received(rx)) == sorted(b"%da" % i for i in range(7))
    rx.close()


def test_queue_timeouts(qns):
    """Three packets the handler leaves without a verdict meet their
    deadline (on_timeout=DROP): nfbind_queue_timeouts_total counts them;
    the one the handler accepts is not counted."""
    ns = qns
    rx = ns.socket()
    rx.bind(("127.0.0.1", 7000))

    def decide(pkt: Any) -> Any:
        return Verdict.ACCEPT if pkt.payload.endswith(b"a") else None

    with NfQueue(5, netns=ns.name, verdict_timeout=0.2, on_timeout=Verdict.DROP) as q, \
            serving(Collector(q)) as url:
        loop = Loop(q, decide)
        try:
            send_udp(ns, 7000, [b"0a", b"1t", b"2t", b"3t"])
            s = wait_value(url, "nfbind_queue_timeouts_total", 3, queue="5")
        finally:
            loop.stop()
        assert q.stats.timeouts == 3 and q.stats.pending == 0
        assert s.value("nfbind_queue_packets_total", queue="5") == 4
        assert ns.queue_proc()[5]["waiting"] == 0
    assert received(rx) == [b"0a"]
    rx.close()


def test_waiting_packets_deferred_verdicts_and_close(qns):
    """Packets held for their verdict show in nfbind_queue_pending and in the
    kernel's count; verdicts from another thread, verdict_batch() and
    close() are counted once each."""
    ns = qns
    rx = ns.socket()
    rx.bind(("127.0.0.1", 7001))
    held: List[Any] = []
    q = NfQueue(6, netns=ns.name)
    with serving(Collector(q)) as url:
        loop = Loop(q, held.append)   # no verdict: the packets wait
        try:
            send_udp(ns, 7001, [b"p%d" % i for i in range(12)])
            s = wait_value(url, "nfbind_queue_pending", 12, queue="6")
            assert s.value("nfbind_queue_waiting", queue="6") == ns.queue_proc()[6]["waiting"] == 12
            assert sum(s.value("nfbind_queue_verdicts_total", queue="6", verdict=v)
                       for v in VERDICTS) == 0
            for p in held[:4]:
                p.accept(mark=1)      # from this thread while the loop runs in another
            for p in held[4:6]:
                p.drop()
            assert q.verdict_batch(held[9].id, Verdict.ACCEPT) == 4
            s = wait_value(url, "nfbind_queue_pending", 2, queue="6")
            assert s.value("nfbind_queue_waiting", queue="6") == ns.queue_proc()[6]["waiting"] == 2
            assert s.value("nfbind_queue_verdicts_total", queue="6", verdict="accept") == 8
            assert s.value("nfbind_queue_verdicts_total", queue="6", verdict="drop") == 2
        finally:
            loop.stop()
        q.close()   # the last 2 get the default verdict (accept)
        s = scrape(url)
        assert s.value("nfbind_queue_verdicts_total", queue="6", verdict="accept") == 10
        assert s.value("nfbind_queue_verdicts_total", queue="6", verdict="drop") == 2
        assert s.value("nfbind_queue_packets_total", queue="6") == 12
        assert s.value("nfbind_queue_pending", queue="6") == 0
        assert not s.has("nfbind_queue_waiting")   # unbound: the kernel lists it no more
    assert len(received(rx)) == 10
    rx.close()


def test_every_verdict_path_counts_once(qns):
    """Returned verdicts, verdicts with a mark given in the handler, the
    on_error verdict of a handler that raised, deferred verdicts and close():
    the per-verdict counts add up to the packets."""
    ns = qns
    later: List[Any] = []
    n = {"i": 0}

    def handler(pkt: Any) -> Any:
        i = n["i"]
        n["i"] += 1
        kind = i % 5
        if kind == 0:
            return Verdict.ACCEPT
        if kind == 1:
            pkt.accept(mark=7)
            return None
        if kind == 2:
            raise ValueError("a handler bug")
        later.append(pkt)
        return None

    q = NfQueue(5, netns=ns.name, on_error=Verdict.DROP)
    loop = Loop(q, handler)
    try:
        send_udp(ns, 7000, [b"x%d" % i for i in range(20)])
        wait_for(lambda: len(later) == 8, "8 deferred packets")
    finally:
        loop.stop()
    for p in later[::2]:
        p.drop()
    st = q.stats
    assert st.verdicts[Verdict.ACCEPT] == 8 and st.verdicts[Verdict.DROP] == 8
    assert st.handler_errors == 4 and len(loop.errors) >= 1
    q.close()
    st = q.stats
    assert st.verdicts[Verdict.ACCEPT] == 12 and st.verdicts[Verdict.DROP] == 8
    assert sum(st.verdicts.values()) == st.packets == 20


def test_kernel_drops_of_a_full_queue(qns):
    """max_len 3 and nobody reading: 3 wait, 7 are dropped by the kernel as
    queue_full; the metrics say what /proc says."""
    ns = qns
    with NfQueue(5, netns=ns.name, max_len=3) as q, serving(Collector(q)) as url:
        send_udp(ns, 7000, [b"%d" % i for i in range(10)])
        s = wait_value(url, "nfbind_queue_waiting", 3, queue="5")
        row = ns.queue_proc()[5]
        assert s.value("nfbind_queue_kernel_dropped_total", queue="5",
                       reason="queue_full") == row["queue_dropped"] == 7
        assert s.value("nfbind_queue_kernel_dropped_total", queue="5",
                       reason="socket") == row["user_dropped"] == 0
        assert s.value("nfbind_queue_packets_total", queue="5") == 0
        assert kernel_queue_stats(ns.name)[5].queue_dropped == 7


# -- NFLOG ------------------------------------------------------------------------------------


def test_log_packets_and_the_kernels_batch(ns):
    """qthresh 8: 5 packets wait in the kernel (nfbind_log_waiting, as /proc
    says), the 8th flushes all 8 to nfbind."""
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", "7002", "-j", "NFLOG",
                "--nflog-group", "7")
    got: List[Any] = []
    with NfLog(7, netns=ns.name, qthresh=8, timeout=60.0) as log, \
            serving(Collector(log)) as url:
        send_udp(ns, 7002, [b"a%d" % i for i in range(5)])
        s = wait_value(url, "nfbind_log_waiting", 5, group="7")
        assert kernel_log_stats(ns.name)[7].waiting == 5
        assert log.drain(got.append) == 0
        send_udp(ns, 7002, [b"b%d" % i for i in range(3)])
        deadline = time.monotonic() + 10
        while len(got) < 8 and time.monotonic() < deadline:
            log.run(got.append, timeout=0.2)
        assert len(got) == 8
        s = scrape(url)
        assert s.value("nfbind_log_packets_total", group="7") == 8
        assert s.value("nfbind_log_waiting", group="7") == kernel_log_stats(ns.name)[7].waiting == 0
        for name in ("handler_errors", "overruns", "filtered"):
            assert s.value("nfbind_log_%s_total" % name, group="7") == 0


# -- conntrack events -------------------------------------------------------------------------


def test_events_by_type_filtered_overruns_and_resyncs(ns):
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct, \
            ct.events(filter=EventFilter(sport=[1000, 1001])) as ev, \
            serving(Collector(ev)) as url:
        tuples = [Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53) for sp in (1000, 1001, 2000)]
        for t in tuples:
            ct.create(Flow(t, timeout=60))
        ct.update(tuples[0], mark=3)
        for t in tuples:
            ct.delete(t)
        got: List[Any] = []
        deadline = time.monotonic() + 10
        while ev.stats.events < 7 and time.monotonic() < deadline:
            ev.run(got.append, timeout=0.2)
        s = scrape(url)
        assert s.value("nfbind_conntrack_events_total", type="new") == 3
        assert s.value("nfbind_conntrack_events_total", type="update") == 1
        assert s.value("nfbind_conntrack_events_total", type="destroy") == 3
        assert s.value("nfbind_conntrack_events_filtered_total") == 2 == 7 - len(got)
        assert s.value("nfbind_conntrack_events_overruns_total") == 0
        assert s.value("nfbind_conntrack_events_resyncs_total") == 0
        assert s.value("nfbind_conntrack_events_needs_resync") == 0
    # a burst into a tiny buffer: overruns, then one resync
    with Conntrack(netns=ns.name) as ct, ct.events(CtEvent.NEW, rcvbuf=4096) as ev, \
            serving(Collector(ev)) as url:
        for p in range(1, 401):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", p, 7), timeout=60))
        with pytest.warns(RuntimeWarning):
            ev.run(lambda e: None, timeout=0.5)
        s = scrape(url)
        assert s.value("nfbind_conntrack_events_overruns_total") == ev.stats.overruns >= 1
        assert s.value("nfbind_conntrack_events_needs_resync") == 1
        assert 0 < s.value("nfbind_conntrack_events_total", type="new") < 400
        assert len(ev.resync()) == 400
        s = scrape(url)
        assert s.value("nfbind_conntrack_events_resyncs_total") == 1
        assert s.value("nfbind_conntrack_events_needs_resync") == 0


# -- the conntrack table ----------------------------------------------------------------------


PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def conntrack_s(ns) -> Counter:
    """``conntrack -S`` summed over CPUs, by nfbind's counter names."""
    total: Counter = Counter()
    for line in ns.run("conntrack", "-S").splitlines():
        for tok in line.split():
            k, _, v = tok.partition("=")
            if k != "cpu" and v.isdigit():
                total[{"chaintoolong": "chain_toolong"}.get(k, k)] += int(v)
    return total


def invalid_tcp(ns, count: int) -> None:
    """TCP segments with SYN, FIN and RST set: conntrack counts them invalid."""
    s = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        hdr = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x07, 1024, 0, 0)
        pseudo = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!BBH", 0, 6, len(hdr))
        hdr = hdr[:16] + struct.pack("!H", csum16(pseudo + hdr)) + hdr[18:]
        for _ in range(count):
            s.sendto(hdr, ("127.0.0.1", 0))
    finally:
        s.close()


def test_conntrack_table_matches_conntrack_l_c_and_s(ns):
    ct_ns(ns)
    with Conntrack(netns=ns.name) as ct:
        for sp in (1, 2, 3):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53), timeout=300))
        for sp in (1, 2):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", sp, 80), timeout=300,
                           state=TcpState.ESTABLISHED))
        ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 9, 80), timeout=300, zone=7,
                       state=TcpState.TIME_WAIT))
        for sp in (1, 2):
            ct.create(Flow(Tuple("fd00::1", "fd00::2", "udp", sp, 53), timeout=300, zone=7))
        send_udp(ns, 7003, [b"real"])   # one flow of real traffic too
        invalid_tcp(ns, 3)
        before = conntrack_s(ns)
        with serving(Collector(ct)) as url:
            s = scrape(url)
        assert conntrack_s(ns) == before   # nothing moved while scraping
        rows = conntrack_l(ns)
        want = Counter((r["family"], PROTO_NAMES[r["proto"]], r.get("state", "none").lower(),
                        r.get("zone", "0")) for r in rows)
        got = {tuple(dict(k)[n] for n in ("family", "proto", "state", "zone")): v
               for k, v in s.series("nfbind_conntrack_flows").items()}
        assert got == dict(want)
        assert got[("ipv4", "udp", "none", "0")] == 4
        assert got[("ipv4", "tcp", "established", "0")] == 2
        assert got[("ipv4", "tcp", "time_wait", "7")] == 1
        assert got[("ipv6", "udp", "none", "7")] == 2
        assert s.value("nfbind_conntrack_entries") == int(ns.run("conntrack", "-C")) == 9
        assert s.value("nfbind_conntrack_max") == int(
            ns.run("cat", "/proc/sys/net/netfilter/nf_conntrack_max"))
        stats = {dict(k)["name"]: v for k, v in s.series("nfbind_conntrack_stat_total").items()}
        assert stats == dict(before) and stats["invalid"] >= 3
        assert s.value("nfbind_conntrack_dump_complete") == 1
        assert 0 < s.value("nfbind_conntrack_dump_seconds") < 5


def test_a_dump_past_its_time_is_left_out(ns):
    """A dump that takes longer than dump_timeout: no per-flow breakdown in
    that scrape, dump_complete 0; the size still comes from the kernel."""
    ct_ns(ns, v6=False)
    with Conntrack(netns=ns.name) as ct:
        for i in range(3000):
            ct.create(Flow(Tuple("10.0.%d.%d" % (i >> 8, i & 0xFF), "10.9.0.1", "udp", 1, 53),
                           timeout=300))
        slow = Collector(ct, dump_timeout=1e-6)
        fams = {f.name: f for f in slow.collect()}
        assert "nfbind_conntrack_flows" not in fams
        assert fams["nfbind_conntrack_dump_complete"].samples[0].value == 0
        assert fams["nfbind_conntrack_entries"].samples[0].value == 3000
        quick = {f.name: f for f in Collector(ct).collect()}
        assert quick["nfbind_conntrack_dump_complete"].samples[0].value == 1
        assert sum(x.value for x in quick["nfbind_conntrack_flows"].samples) == 3000
        off = {f.name for f in Collector(ct, flows=False).collect()}
        assert "nfbind_conntrack_flows" not in off and "nfbind_conntrack_dump_complete" not in off
        assert "nfbind_conntrack_entries" in off


def test_objects_of_two_namespaces_with_labels_of_their_own(ns, more_ns):
    other = more_ns()
    for n, count in ((ns, 3), (other, 5)):
        ct_ns(n, v6=False)
    with Conntrack(netns=ns.name) as a, Conntrack(netns=other.name) as b:
        for ct, count in ((a, 3), (b, 5)):
            for sp in range(count):
                ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", 100 + sp, 53), timeout=60))
        c = Collector().add(a, netns="a").add(b, netns="b")
        with pytest.raises(ValueError, match="same series"):
            Collector(a, b)
        with serving(c) as url:
            s = scrape(url)
        assert s.value("nfbind_conntrack_entries", netns="a") == 3
        assert s.value("nfbind_conntrack_entries", netns="b") == 5
        assert s.value("nfbind_conntrack_flows", netns="b", family="ipv4", proto="udp",
                       state="none", zone="0") == 5


def test_a_failing_object_does_not_fail_the_scrape(ns):
    """A closed Conntrack is left out; a broken object counts as a scrape
    error and the rest is still served."""
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "7000",
                "-j", "NFQUEUE", "--queue-num", "5")
    ct = Conntrack(netns=ns.name)
    with NfQueue(5, netns=ns.name) as q:
        c = Collector(q, ct)
        ct.close()
        q._netns = "/nonexistent/netns"   # reading /proc of the namespace fails
        with serving(c) as url:
            s = scrape(url)
        assert s.value("nfbind_scrape_errors_total", source="queue") == 1
        assert s.value("nfbind_scrape_errors_total", source="conntrack") == 0
        assert not s.has("nfbind_conntrack_entries")
        assert s.value("nfbind_queue_packets_total", queue="5") == 0


def test_flow_recorder(ns):
    """A FlowRecorder's records, events and losses, scraped while it runs in
    another thread."""
    from nfbind.flows import FlowRecorder, JsonLines

    ct_ns(ns, v6=False)
    out = open(os.devnull, "w")
    with Conntrack(netns=ns.name) as ct, \
            FlowRecorder([JsonLines(out)], netns=ns.name, enable_accounting=True) as rec, \
            serving(Collector(rec)) as url:
        t = threading.Thread(target=rec.run, daemon=True)
        t.start()
        try:
            tuples = [Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53) for sp in range(1, 5)]
            for tup in tuples:
                ct.create(Flow(tup, timeout=60))
            for tup in tuples:
                ct.delete(tup)
            s = wait_value(url, "nfbind_flows_records_total", 4)
            assert s.value("nfbind_flows_events_total") == 4
            assert s.value("nfbind_flows_overruns_total") == 0
            assert s.value("nfbind_flows_reliable") == (1 if rec.stats.reliable else 0)
        finally:
            rec.stop()
            t.join(10)
    out.close()
