# SPDX-License-Identifier: GPL-2.0-or-later
"""Resource stability of nfbind's kernel-facing objects: the open/close
cycles that test_faults_resources.py runs in its own process, and the child
process it starts inside a test namespace (``ip netns exec``).

Run as ``python fault_memory_child.py MODE ARGS-AS-JSON``; it prints one JSON
line with its figures:

* ``cycles``: open/close cycles of NfQueue, NfLog, Conntrack and EventStream
  with ``netns=None`` (the child already lives in the test namespace), with
  the descriptor table of the process before and after.
* ``memory``: NfQueue and NfLog with traffic (every kind of verdict, rewrites,
  marks, connmarks, deferred verdicts, handler errors, attribute reads) and
  conntrack dumps and gets of a table of a few thousand flows; VmRSS and the
  tracemalloc current size are sampled after a warm-up and at the end.

The module is imported by the test (for the cycles) and is not collected.
"""
from __future__ import annotations

import gc
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import tracemalloc
import warnings
import weakref
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

from nfbind import EventFilter, NetlinkError, NfLog, NfQueue, Verdict
from nfbind.conntrack import Conntrack, Flow, NotFound, Tuple

# -- what both modes share ---------------------------------------------------------------------


def fd_table() -> Dict[int, str]:
    """The entries of /proc/self/fd: descriptor -> what it refers to."""
    gc.collect()
    table = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            table[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return table


def thread_names() -> List[str]:
    return sorted(t.name for t in threading.enumerate())


def rss_kib() -> int:
    """VmRSS of this process in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_readable(fd: int, deadline: float) -> bool:
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    r, _, _ = select.select([fd], [], [], min(left, 1.0))
    return bool(r)


def drain_count(ch: Any, handler: Callable[[Any], Any], want: int, timeout: float = 20.0) -> int:
    """drain() ``ch`` until ``handler`` was called ``want`` times (or
    ``timeout`` passed); returns the number of calls."""
    calls = [0]

    def counted(item: Any) -> Any:
        calls[0] += 1
        return handler(item)

    deadline = time.monotonic() + timeout
    while calls[0] < want and time.monotonic() < deadline:
        if not ch.drain(counted):
            wait_readable(ch.fileno(), deadline)
    return calls[0]


def recv_count(sock: socket.socket, want: int, timeout: float = 20.0) -> List[bytes]:
    """Datagrams from the non-blocking ``sock`` until ``want`` came (or
    ``timeout`` passed)."""
    out: List[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            wait_readable(sock.fileno(), deadline)
    return out


# -- open/close cycles --------------------------------------------------------------------------


class Boom(Exception):
    """Raised inside a ``with`` block on purpose."""


#: how a cycle ends the object's life
LIFECYCLES = ("close", "close_twice", "with", "with_raise", "dropped")

#: a tuple no flow has
MISSING = Tuple("10.0.0.1", "10.0.0.3", "udp", 1, 1)


class CycleEnv:
    """What the cycles need around them.

    ``netns_args``: the ``netns=`` values to take in turn (a name, a path, an
    fd, or None).  ``sender``: a UDP socket of the namespace.  ``qnum`` and
    ``qport``: the queue the rule ``--dport qport -j NFQUEUE`` feeds; ``group``
    and ``lport``: the same for NFLOG.  ``flows``: tuples of the flows in
    the table.  ``ct``: a long-lived Conntrack the event streams come from.
    """

    def __init__(self, *, netns_args: list, sender: socket.socket, qnum: int, qport: int,
                 group: int, lport: int, flows: List[Tuple], ct: Optional[Conntrack]) -> None:
        self.netns_args = netns_args
        self.sender = sender
        self.qnum = qnum
        self.qport = qport
        self.group = group
        self.lport = lport
        self.flows = flows
        self.ct = ct
        self.stats: Counter = Counter()
        self.leftovers: List[Any] = []

    def send(self, port: int) -> None:
        self.sender.sendto(b"cycle", ("127.0.0.1", port))


def _open_queue(netns: Any, env: CycleEnv, i: int) -> NfQueue:
    return NfQueue(env.qnum, netns=netns, max_len=64, rcvbuf=1 << 16)


def _use_queue(q: NfQueue, env: CycleEnv, i: int) -> None:
    st = env.stats
    assert q.fileno() >= 0 and q.rcvbuf > 0 and q.stats.pending == 0
    r = i % 7
    if r == 0:
        # left in the socket: close() reads it and gives the default verdict
        env.send(env.qport)
        st["queue_held_in_socket"] += 1
    elif r == 3:
        # handed out without a verdict: close() gives it the default verdict
        env.send(env.qport)
        got = drain_count(q, lambda p: None, 1)
        assert got == 1 and q.stats.pending == 1, (got, q.stats)
        st["queue_pending_at_close"] += 1
    elif r == 5:
        env.send(env.qport)
        got = drain_count(q, lambda p: Verdict.DROP if p.payload_len else Verdict.ACCEPT, 1)
        assert got == 1, got
        st["queue_dropped_by_verdict"] += 1


def _open_log(netns: Any, env: CycleEnv, i: int) -> NfLog:
    return NfLog(env.group, netns=netns, rcvbuf=1 << 16, seq=bool(i % 2))


def _use_log(log: NfLog, env: CycleEnv, i: int) -> None:
    st = env.stats
    assert log.fileno() >= 0 and log.rcvbuf > 0
    r = i % 7
    if r == 0:
        env.send(env.lport)  # logged, never read
        st["log_unread"] += 1
    elif r == 3:
        env.send(env.lport)
        seen: list = []
        got = drain_count(log, lambda p: seen.append((p.group, p.prefix, p.payload_len)), 1)
        assert got == 1 and seen[0][0] == env.group and seen[0][2] > 0, seen
        st["log_read"] += 1
    st["log_sent"] += r in (0, 3)


def _open_ct(netns: Any, env: CycleEnv, i: int) -> Conntrack:
    return Conntrack(netns=netns, timeout=30)


def _use_ct(ct: Conntrack, env: CycleEnv, i: int) -> None:
    st = env.stats
    n = len(env.flows)
    # a dump costs the kernel a walk of the whole (global) hash table, which
    # takes milliseconds on a large table: 4 dumps per 24 cycles, cheap
    # requests in the others
    r = i % 24
    if r < 21:
        if r % 3 == 0:
            assert ct.count() >= n
        elif r % 3 == 1:
            try:
                ct.get(MISSING)
            except NotFound:
                st["ct_not_found"] += 1
            else:
                raise AssertionError("a flow that does not exist was found")
        else:
            t = env.flows[i % n]
            assert ct.get(t).orig.sport == t.sport
    elif r == 21:
        # an abandoned dump, closed by the caller
        it = ct.dump()
        next(it)
        it.close()
        st["ct_dumps_abandoned"] += 1
    elif r == 22:
        # a dump still suspended when the object's life ends
        it = ct.dump()
        next(it)
        env.leftovers.append(it)
        st["ct_dumps_left_open"] += 1
    else:
        # two dumps at once: the second one opens a socket of its own
        a = ct.dump()
        first = next(a)
        b = list(ct.dump())
        rest = list(a)
        assert len(rest) + 1 == len(b) >= n, (len(rest), len(b), n)
        assert first.orig in {f.orig for f in b}
        st["ct_dumps_interleaved"] += 1
    st["ct_requests"] += 1


def _open_events(netns: Any, env: CycleEnv, i: int) -> Any:
    flt = EventFilter(proto="udp", dst="10.0.0.8") if i % 3 == 1 else None
    if (i // 5) % 3 == 2 or env.ct is None:
        # the owner is closed before the stream
        owner = Conntrack(netns=netns, timeout=30)
        try:
            return owner.events(filter=flt, rcvbuf=1 << 16)
        finally:
            owner.close()
    return env.ct.events(filter=flt, rcvbuf=1 << 16)


def _use_events(s: Any, env: CycleEnv, i: int) -> None:
    st = env.stats
    assert s.fileno() >= 0
    r = i % 4
    if r in (0, 2):
        ct = env.ct
        assert ct is not None
        flow = Flow(Tuple("10.0.0.7", "10.0.0.8", "udp", 1000 + i % 1000, 53), timeout=60)
        ct.create(flow)
        ct.delete(flow)
        if r == 0:
            seen: list = []
            got = drain_count(s, seen.append, 2)
            assert got == 2 and all(e.flow.orig.dport == 53 for e in seen), seen
            st["events_read"] += got
        else:
            st["events_unread"] += 2
    s.stats  # noqa: B018 - read the counters


#: kind -> (open, use)
KINDS: Dict[str, tuple] = {
    "NfQueue": (_open_queue, _use_queue),
    "NfLog": (_open_log, _use_log),
    "Conntrack": (_open_ct, _use_ct),
    "EventStream": (_open_events, _use_events),
}


def run_cycle(kind: str, i: int, env: CycleEnv) -> None:
    """Open one object of ``kind``, use it, and end its life the way cycle
    ``i`` says (close, close twice, with, an exception in the with, or
    dropped without close)."""
    opener, use = KINDS[kind]
    lifecycle = LIFECYCLES[i % len(LIFECYCLES)]
    # each netns= form in turn for 24 cycles (every variant of every kind)
    netns = env.netns_args[(i // 24) % len(env.netns_args)]
    env.stats["cycles"] += 1
    env.stats["lifecycle_" + lifecycle] += 1
    if lifecycle in ("with", "with_raise"):
        try:
            with opener(netns, env, i) as obj:
                use(obj, env, i)
                if lifecycle == "with_raise":
                    raise Boom(i)
        except Boom:
            env.stats["raised_in_with"] += 1
        assert obj.closed
    elif lifecycle == "dropped":
        obj = opener(netns, env, i)
        use(obj, env, i)
        ref = weakref.ref(obj)
        with warnings.catch_warnings():
            if (i // 120) % 2:
                # every other 120 cycles the ResourceWarning is an error (as
                # under -W error): __del__ raises, and must still close
                warnings.simplefilter("error", ResourceWarning)
                env.stats["dropped_warning_as_error"] += 1
            del obj
            env.leftovers.clear()
            if ref() is not None:
                # kept alive by a reference cycle (a queue's pending packet
                # refers to its batch, which refers to the queue)
                gc.collect()
                env.stats["dropped_needed_gc"] += 1
        assert ref() is None, "a dropped %s was never collected" % kind
    else:
        obj = opener(netns, env, i)
        use(obj, env, i)
        obj.close()
        if lifecycle == "close_twice":
            obj.close()
        assert obj.closed
    env.leftovers.clear()


class WarningCounter:
    """Counts the warnings issued while it is installed, and the ones raised
    as errors from ``__del__`` (which Python hands to sys.unraisablehook),
    without keeping them: a recorded warning would keep its source (the
    dropped object) alive."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.unclosed = 0
        self.unclosed_raised = 0
        self.others: List[str] = []

    def _unclosed(self, category: type, message: Any) -> bool:
        return issubclass(category, ResourceWarning) and "unclosed " + self.kind in str(message)

    def __call__(self, message: Any, category: type, *rest: Any) -> None:
        if self._unclosed(category, message):
            self.unclosed += 1
        else:
            self.others.append("%s: %s" % (category.__name__, message))

    def unraisable(self, u: Any) -> None:
        if u.exc_type is not None and self._unclosed(u.exc_type, u.exc_value):
            self.unclosed_raised += 1
        else:
            self.others.append("unraisable %s: %s" % (getattr(u.exc_type, "__name__", None),
                                                      u.exc_value))


def cycles(kind: str, env: CycleEnv, warmup: int, count: int, deadline: float) -> dict:
    """``warmup`` cycles, the descriptor table, ``count`` cycles (fewer if
    ``deadline`` comes first), the table again.  Returns the figures."""
    counter = WarningCounter(kind)
    hook = sys.unraisablehook
    sys.unraisablehook = counter.unraisable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = counter
            for i in range(warmup):
                run_cycle(kind, i, env)
            table0 = fd_table()
            fds0 = len(os.listdir("/proc/self/fd"))
            threads0 = thread_names()
            rss0 = rss_kib()
            t0 = time.monotonic()
            done = 0
            for i in range(warmup, warmup + count):
                if time.monotonic() > deadline:
                    break
                run_cycle(kind, i, env)
                done += 1
            elapsed = time.monotonic() - t0
            gc.collect()
            rss1 = rss_kib()
    finally:
        sys.unraisablehook = hook
    table1 = fd_table()
    return dict(kind=kind, warmup=warmup, cycles=done, cycles_planned=count,
                fds_before=fds0, fds_after=len(os.listdir("/proc/self/fd")),
                fd_table_before=table0, fd_table_after=table1,
                threads_before=threads0, threads_after=thread_names(),
                rss_start_kib=rss0, rss_end_kib=rss1,
                resource_warnings=counter.unclosed,
                resource_warnings_raised=counter.unclosed_raised,
                other_warnings=counter.others[:20], elapsed=round(elapsed, 3),
                cycles_per_s=round(done / elapsed, 1) if elapsed > 0 else None,
                stats=dict(env.stats))


def main_cycles(args: dict) -> dict:
    """The cycles of every kind with ``netns=None``, in this namespace."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ct = Conntrack(timeout=30)
    flows = [Tuple(*t) for t in args["flows"]]
    out = {}
    deadline = time.monotonic() + args["seconds"]
    for kind in args["kinds"]:
        env = CycleEnv(netns_args=[None], sender=sender, qnum=args["qnum"],
                       qport=args["qport"], group=args["group"], lport=args["lport"],
                       flows=flows, ct=ct)
        res = cycles(kind, env, args["warmup"], args["cycles"], deadline)
        res["fd_table_before"] = {str(k): v for k, v in res["fd_table_before"].items()}
        res["fd_table_after"] = {str(k): v for k, v in res["fd_table_after"].items()}
        out[kind] = res
    ct.close()
    sender.close()
    return out


# -- memory under traffic ---------------------------------------------------------------------

#: verdict kinds, chosen by a packet's sequence number modulo their count
K_ACCEPT = (0, 1, 2, 3)
K_DROP, K_DROP_CALL, K_MARK, K_REWRITE, K_REPEAT, K_DEFER, K_QUEUE_BYPASS, K_VERDICT_MARK, \
    K_CONNMARK, K_STOP, K_RAISE, K_CT_READ = range(4, 16)
NKINDS = 16
DROPPING = (K_DROP, K_DROP_CALL)
PAD = b"." * 40


class HandlerError(Exception):
    """Raised by the queue handler on purpose (its packet gets on_error)."""


def main_memory(args: dict) -> dict:
    port = args["port"]
    packets = args["packets"]
    burst = args["burst"]
    warmup = args["warmup"]
    settle = args["settle"]
    # about ten samples over the measured part (each one costs a few hundred
    # traced bytes itself)
    sample_every = max(1, (packets - warmup - settle) // burst // 10)
    repeat_mark = args["repeat_mark"]
    unused_queue = args["unused_queue"]
    t_start = time.monotonic()
    deadline = t_start + args["seconds"]

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", port))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    tx.settimeout(30)
    dst = ("127.0.0.1", port)

    ct = Conntrack(timeout=30)
    flows = [Tuple("10.0.0.1", "10.0.0.2", "udp", p, 53) for p in range(1, args["flows"] + 1)]
    for t in flows:
        ct.create(Flow(t, timeout=args["seconds"] + 600))

    q = NfQueue(args["qnum"], conntrack=True, max_len=4 * burst)
    log = NfLog(args["group"], seq=True)

    st: Counter = Counter()
    deferred: List[Any] = []

    def on_packet(pkt: Any) -> Any:
        st["handled"] += 1
        data = pkt.payload
        # the attributes a handler typically reads
        pkt.id, pkt.payload_len, pkt.cap_len, pkt.mark, pkt.hook, pkt.hw_protocol  # noqa: B018
        pkt.family, pkt.outdev, pkt.indev, pkt.timestamp, pkt.queue_num  # noqa: B018
        pkt.csum_notready, pkt.gso, pkt.has_verdict  # noqa: B018
        off = (data[0] & 0x0F) * 4 + 8
        seq = struct.unpack_from("!I", data, off)[0]
        k = seq % NKINDS
        if k in K_ACCEPT:
            return Verdict.ACCEPT
        if k == K_DROP:
            return Verdict.DROP
        if k == K_DROP_CALL:
            pkt.drop()
            return None
        if k == K_MARK:
            pkt.accept(mark=(seq & 0xFFFF) | 1)
        elif k == K_REWRITE:
            new = bytearray(data)
            new[off + 4] = ord("r")
            pkt.accept(payload=bytes(new))
        elif k == K_REPEAT:
            pkt.repeat(mark=repeat_mark)
        elif k == K_DEFER:
            deferred.append(pkt)
        elif k == K_QUEUE_BYPASS:
            pkt.queue(unused_queue, bypass=True)
        elif k == K_VERDICT_MARK:
            pkt.verdict(Verdict.ACCEPT, mark=7)
        elif k == K_CONNMARK:
            pkt.accept(connmark=0x100 | (seq & 0xFF))
        elif k == K_STOP:
            return Verdict.STOP
        elif k == K_RAISE:
            raise HandlerError(seq)
        else:
            st["ct_found"] += pkt.ct is not None
            repr(pkt)
            return Verdict.ACCEPT
        return None

    log_seq: List[Optional[int]] = [None]

    def on_log(pkt: Any) -> None:
        st["logged"] += 1
        pkt.group, pkt.prefix, pkt.payload_len, pkt.hwtype, pkt.outdev, pkt.mark  # noqa: B018
        pkt.timestamp, pkt.hook  # noqa: B018
        if len(pkt.payload) < 28:
            st["log_short"] += 1
        s = pkt.seq
        if log_seq[0] is not None and s != log_seq[0] + 1:
            st["log_seq_gaps"] += 1
        log_seq[0] = s

    samples: List[dict] = []

    def sample(label: str) -> dict:
        gc.collect()
        tracing = tracemalloc.is_tracing()
        cur, peak = tracemalloc.get_traced_memory() if tracing else (0, 0)
        # tracemalloc's own tables (they grow with the peak number of live
        # blocks, and count in RSS)
        own = tracemalloc.get_tracemalloc_memory() if tracing else 0
        s = dict(label=label, sent=st["sent"], rss_kib=rss_kib(), tm_current=cur, tm_peak=peak,
                 tm_own=own, t=round(time.monotonic() - t_start, 3))
        samples.append(s)
        return s

    def ct_round(r: int) -> None:
        got = [f for f in ct.dump() if str(f.orig.dst) == "10.0.0.2"]
        if sorted(f.orig.sport for f in got) != [t.sport for t in flows]:
            st["ct_dump_mismatch"] += 1
        st["ct_dumps"] += 1
        st["ct_flows_dumped"] += len(got)
        for k in range(4):
            t = flows[(r * 7 + k * 613) % len(flows)]
            if ct.get(t).orig.sport != t.sport:
                st["ct_get_mismatch"] += 1
            st["ct_gets"] += 1
        it = ct.dump()
        next(it)
        it.close()
        st["ct_dumps_abandoned"] += 1
        st["ct_count"] = ct.count()

    base: Optional[dict] = None
    snap0: Any = None
    traced = False
    seq = 0
    rnd = 0
    sample("start")
    while st["sent"] < packets and time.monotonic() < deadline:
        if not traced and st["sent"] >= warmup:
            gc.collect()
            tracemalloc.start()
            traced = True
            sample("traced")
        if traced and base is None and st["sent"] >= warmup + settle:
            base = sample("baseline")
            snap0 = tracemalloc.take_snapshot()
        n = min(burst, packets - st["sent"])
        for _ in range(n):
            k = seq % NKINDS
            tx.sendto(struct.pack("!I", seq) + b"o" + PAD, dst)
            st["sent"] += 1
            st["dropped_by_verdict"] += k in DROPPING
            st["rewritten_sent"] += k == K_REWRITE
            st["raise_sent"] += k == K_RAISE
            seq += 1
        # every packet once through the queue (a repeated one is accepted
        # by the mark rule ahead of the queue the second time)
        stop = time.monotonic() + 60
        while st["handled"] < st["sent"] and time.monotonic() < stop:
            try:
                if not q.drain(on_packet):
                    wait_readable(q.fileno(), stop)
            except HandlerError:
                st["handler_errors_raised"] += 1
            except NetlinkError:  # a connmark the kernel refused
                st["connmark_errors"] += 1
        for p in deferred:
            p.accept()
        st["deferred"] += len(deferred)
        deferred.clear()
        stop = time.monotonic() + 60
        while st["logged"] < st["sent"] and time.monotonic() < stop:
            if not log.drain(on_log):
                wait_readable(log.fileno(), stop)
        want = st["sent"] - st["dropped_by_verdict"] - st["arrived"]
        for d in recv_count(rx, want, 60):
            st["arrived"] += 1
            st["rewritten_arrived"] += d[4:5] == b"r"
        if rnd % args["ct_every"] == 0:
            ct_round(rnd)
        rnd += 1
        if base is not None and rnd % sample_every == 0:
            sample("run")
    # anything late (there should be nothing)
    time.sleep(0.2)
    for _ in recv_count(rx, 1 << 30, 0.5):
        st["arrived_late"] += 1
    ct_round(rnd)
    end = sample("end")
    if base is None:
        base = end
    # where the traced memory grew, by file: nfbind's own modules apart
    # from this script's bookkeeping (its counters and samples)
    by_file: Dict[str, int] = {}
    top: List[str] = []
    if snap0 is not None:
        diff = tracemalloc.take_snapshot().compare_to(snap0, "lineno")
        for d in diff:
            f = d.traceback[0].filename
            key = "nfbind" if "/nfbind/" in f else ("script" if f == __file__ else "other")
            by_file[key] = by_file.get(key, 0) + d.size_diff
        top = [str(d) for d in diff[:8]]
    elapsed = time.monotonic() - t_start
    qs, ls = q.stats, log.stats
    out = dict(
        st,
        rounds=rnd, burst=burst, warmup=warmup, settle=settle, packets_planned=packets,
        measured_packets=end["sent"] - base["sent"],
        queue_packets=qs.packets, queue_overruns=qs.overruns, verdict_errors=qs.verdict_errors,
        queue_handler_errors=qs.handler_errors, queue_pending=qs.pending,
        batch_verdicts=qs.batch_verdicts,
        log_packets=ls.packets, log_overruns=ls.overruns, log_truncated=ls.truncated_msgs,
        rss_start_kib=base["rss_kib"], rss_end_kib=end["rss_kib"],
        tm_start=base["tm_current"], tm_end=end["tm_current"], tm_peak=end["tm_peak"],
        tm_growth_by_file=by_file, tm_growth_top=top,
        rss_max_kib=max(s["rss_kib"] for s in samples if s["sent"] >= base["sent"]),
        samples=samples, elapsed=round(elapsed, 3),
        pps=round(st["sent"] / elapsed, 1) if elapsed > 0 else None,
    )
    tracemalloc.stop()
    q.close()
    log.close()
    ct.close()
    rx.close()
    tx.close()
    return out


def main() -> None:
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode == "cycles":
        out = main_cycles(args)
    elif mode == "memory":
        out = main_memory(args)
    else:
        raise SystemExit("unknown mode %r" % mode)
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
