# SPDX-License-Identifier: GPL-2.0-or-later
"""Prometheus metrics for nfbind objects (the optional extra ``nfbind[metrics]``).

A :class:`Collector` reads the counters of any mix of
:class:`~nfbind.NfQueue`, :class:`~nfbind.NfLog`,
:class:`~nfbind.conntrack.EventStream`, :class:`~nfbind.Conntrack` and
:class:`~nfbind.flows.FlowRecorder` objects, and the kernel's own figures for
them, each time Prometheus scrapes::

    from prometheus_client import REGISTRY, start_http_server
    from nfbind import NfQueue, Verdict
    from nfbind.metrics import Collector

    # iptables -A INPUT -p tcp --dport 80 -j NFQUEUE --queue-num 5
    with NfQueue(5) as q:
        REGISTRY.register(Collector(q))
        start_http_server(9100, "127.0.0.1")
        q.run(lambda pkt: Verdict.ACCEPT)

Nothing is counted at scrape time that the objects did not count already:
the counters are the objects' ``stats`` (read live, safe while a loop runs
in another thread), the kernel's per-queue figures come from
``/proc/net/netfilter/nfnetlink_queue`` (and ``nfnetlink_log``) of the
object's network namespace, and a :class:`~nfbind.Conntrack` is asked for
its size, limit and per-CPU statistics, and dumped once per scrape for the
flows by family, protocol, state and zone (bounded by ``dump_timeout``).

:data:`METRICS` lists every metric: its name, type, labels and meaning.

Without prometheus_client installed, importing this module raises
ImportError naming the extra to install.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

try:
    from prometheus_client.metrics_core import Metric
except ImportError as e:
    raise ImportError(
        "nfbind.metrics needs the prometheus_client package: pip install 'nfbind[metrics]' "
        "(or pip install prometheus-client)", name="prometheus_client") from e

from . import netns as _netns
from .enums import IPProto, SctpState, TcpState
from .errors import ClosedError

__all__ = ["Collector", "METRICS", "MetricInfo", "KernelQueueStats", "KernelLogStats",
           "kernel_queue_stats", "kernel_log_stats"]

_log = logging.getLogger("nfbind.metrics")


class MetricInfo(NamedTuple):
    """What one metric is: ``type`` ("counter" or "gauge"), the ``labels``
    every sample carries (besides those given to :meth:`Collector.add`),
    and ``help``, its HELP text."""

    type: str
    labels: Tuple[str, ...]
    help: str


def _c(labels: Tuple[str, ...], text: str) -> MetricInfo:
    return MetricInfo("counter", labels, text)


def _g(labels: Tuple[str, ...], text: str) -> MetricInfo:
    return MetricInfo("gauge", labels, text)


_Q = ("queue",)
_L = ("group",)

#: Every metric a :class:`Collector` exposes, by the name its samples carry
#: (counters end in ``_total``).
METRICS: Dict[str, MetricInfo] = {
    # NFQUEUE: nfbind's counters
    "nfbind_queue_packets_total": _c(_Q, "Packets nfbind received from the NFQUEUE queue."),
    "nfbind_queue_verdicts_total": _c(
        _Q + ("verdict",), "Verdicts nfbind gave, by verdict (accept, drop, queue, repeat, stop)."),
    "nfbind_queue_handler_errors_total": _c(
        _Q, "Packets whose handler raised or returned no valid verdict (they got on_error)."),
    "nfbind_queue_overruns_total": _c(
        _Q, "Times the kernel reported ENOBUFS on the queue's socket (messages lost)."),
    "nfbind_queue_verdict_errors_total": _c(
        _Q, "Verdicts the kernel refused (e.g. for a packet it no longer held)."),
    "nfbind_queue_timeouts_total": _c(
        _Q, "Packets that got on_timeout because no verdict came within verdict_timeout."),
    "nfbind_queue_pending": _g(_Q, "Packets received by nfbind that still wait for a verdict."),
    # NFQUEUE: the kernel's view (/proc/net/netfilter/nfnetlink_queue)
    "nfbind_queue_waiting": _g(
        _Q, "Packets the kernel holds for the queue until their verdict (queue_total)."),
    "nfbind_queue_kernel_dropped_total": _c(
        _Q + ("reason",), "Packets the kernel dropped (or let through, with fail-open) "
        "without queueing them: reason=queue_full (max_len reached) or socket (the "
        "receive buffer was full)."),
    "nfbind_queue_hook_errors_total": _c(
        _Q, "Packets whose --hook function raised (they got --verdict); nfbind queue only."),
    # NFLOG
    "nfbind_log_packets_total": _c(_L, "Packets nfbind received from the NFLOG group(s)."),
    "nfbind_log_handler_errors_total": _c(_L, "Packets whose handler raised."),
    "nfbind_log_overruns_total": _c(
        _L, "Times the kernel reported ENOBUFS on the group's socket (messages lost)."),
    "nfbind_log_filtered_total": _c(_L, "Packets of another family, skipped by family=."),
    "nfbind_log_waiting": _g(
        _L, "Packets the kernel has batched for the group and not sent yet (qlen; "
        "see qthresh and timeout)."),
    # conntrack events
    "nfbind_conntrack_events_total": _c(
        ("type",), "Conntrack events received from the kernel, by type (new, update, destroy)."),
    "nfbind_conntrack_events_filtered_total": _c(
        (), "Conntrack events the userspace part of the event filter dropped."),
    "nfbind_conntrack_events_handler_errors_total": _c((), "Conntrack events whose handler raised."),
    "nfbind_conntrack_events_overruns_total": _c(
        (), "Times the kernel reported ENOBUFS on the event socket (events lost)."),
    "nfbind_conntrack_events_resyncs_total": _c(
        (), "Table dumps made by resync() after lost events."),
    "nfbind_conntrack_events_needs_resync": _g(
        (), "1 while events were lost and resync() has not been called since, else 0."),
    # flow records (nfbind.flows.FlowRecorder)
    "nfbind_flows_records_total": _c((), "Flow records written to every output of a FlowRecorder."),
    "nfbind_flows_events_total": _c((), "DESTROY events a FlowRecorder received."),
    "nfbind_flows_overruns_total": _c(
        (), "Times the kernel dropped DESTROY events on a FlowRecorder's socket (each stands "
        "for at least one flow without a record)."),
    "nfbind_flows_reliable": _g(
        (), "1 when the kernel was asked to deliver DESTROY events reliably, else 0."),
    # the conntrack table
    "nfbind_conntrack_flows": _g(
        ("family", "proto", "state", "zone"),
        "Flows in the conntrack table by family, protocol, state and zone (one dump per "
        "scrape; left out when the dump did not finish within the time allowed)."),
    "nfbind_conntrack_entries": _g((), "Flows in the conntrack table, as the kernel counts them."),
    "nfbind_conntrack_max": _g((), "The conntrack table's limit (nf_conntrack_max)."),
    "nfbind_conntrack_stat_total": _c(
        ("name",), "The kernel's per-CPU conntrack statistics, summed over CPUs "
        "(conntrack -S): found, invalid, insert, insert_failed, drop, early_drop, error, "
        "search_restart, clash_resolve, chain_toolong."),
    "nfbind_conntrack_dump_complete": _g(
        (), "1 when this scrape's table dump finished within the time allowed, else 0."),
    "nfbind_conntrack_dump_seconds": _g((), "How long this scrape's table dump took."),
    # the collector itself
    "nfbind_scrape_errors_total": _c(
        ("source",), "Errors while reading an object's figures (source=queue, log, events, "
        "conntrack or flows); the message is logged on the nfbind.metrics logger."),
}

#: the labels :meth:`Collector.add` may not set (those the metrics carry)
_RESERVED = frozenset(l for info in METRICS.values() for l in info.labels) | {"le", "quantile"}
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# -- the kernel's figures --------------------------------------------------------------------


class KernelQueueStats(NamedTuple):
    """One row of ``/proc/net/netfilter/nfnetlink_queue``."""

    queue: int
    portid: int
    #: packets waiting for their verdict (the kernel's queue_total)
    waiting: int
    copy_mode: int
    copy_range: int
    #: packets dropped because the queue was full (max_len)
    queue_dropped: int
    #: packets dropped because the socket's receive buffer was full
    user_dropped: int
    id_sequence: int


class KernelLogStats(NamedTuple):
    """One row of ``/proc/net/netfilter/nfnetlink_log``."""

    group: int
    portid: int
    #: packets batched for the group, not yet sent (qlen)
    waiting: int
    copy_mode: int
    copy_range: int
    #: the flush timeout in 1/100 s
    flush_timeout: int


def _read_proc(name: str) -> List[List[int]]:
    try:
        with open("/proc/thread-self/net/netfilter/" + name) as f:
            text = f.read()
    except FileNotFoundError:  # the kernel module is not loaded: nothing is bound
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append([int(v) for v in line.split()])
        except ValueError:
            continue
    return rows


def kernel_queue_stats(netns: _netns.NetNS = None) -> Dict[int, KernelQueueStats]:
    """The bound NFQUEUE queues of ``netns`` (None: the caller's namespace),
    by queue number, from ``/proc/net/netfilter/nfnetlink_queue``.

    Raises FileNotFoundError for a namespace that does not exist,
    PermissionDenied without CAP_SYS_ADMIN to enter it."""
    rows = _netns.call_in(netns, _read_proc, "nfnetlink_queue")
    return {r[0]: KernelQueueStats(*r[:8]) for r in rows if len(r) >= 8}


def kernel_log_stats(netns: _netns.NetNS = None) -> Dict[int, KernelLogStats]:
    """The bound NFLOG groups of ``netns`` (None: the caller's namespace), by
    group, from ``/proc/net/netfilter/nfnetlink_log``.  The kernel keeps no
    drop counters for log groups: a lost message shows as an overrun on the
    socket (``nfbind_log_overruns_total``).

    Raises FileNotFoundError, PermissionDenied as :func:`kernel_queue_stats`."""
    rows = _netns.call_in(netns, _read_proc, "nfnetlink_log")
    return {r[0]: KernelLogStats(*r[:6]) for r in rows if len(r) >= 6}


# -- labels ----------------------------------------------------------------------------------


def _name(value: Any, fallback: Callable[[Any], str] = str) -> str:
    name = getattr(value, "name", None)
    return name.lower() if isinstance(name, str) and name else fallback(value)


def _flow_labels(family: Any, proto: Any, state: Any, zone: int) -> Tuple[str, str, str, str]:
    """The label values of nfbind_conntrack_flows for one flow's keys."""
    if state is None:
        st = "none"
    elif proto == IPProto.TCP:
        st = _name(TcpState(state) if state in TcpState._value2member_map_ else state)
    elif proto == IPProto.SCTP:
        st = _name(SctpState(state) if state in SctpState._value2member_map_ else state)
    else:
        st = str(int(state))
    return (_name(family, lambda v: "unspec" if v is None else str(int(v))), _name(proto),
            st, str(zone))


def _numbers(value: Any) -> str:
    """A queue's or group(s)' label value: "5", or "5,6" for several."""
    if isinstance(value, int):
        return str(value)
    return ",".join(str(v) for v in value)


# -- sources: one per object -----------------------------------------------------------------


class _Scrape:
    """What one collect() gathers: the families, and per-namespace caches of
    the kernel's tables."""

    def __init__(self) -> None:
        self.families: Dict[str, Metric] = {}
        self._procs: Dict[Tuple[str, Any], Any] = {}

    def add(self, name: str, labels: Dict[str, str], value: float) -> None:
        fam = self.families.get(name)
        if fam is None:
            info = METRICS[name]
            base = name[:-6] if info.type == "counter" else name
            fam = self.families[name] = Metric(base, info.help, info.type)
        fam.add_sample(name, labels, value)

    def proc(self, what: str, netns: Any, read: Callable[[Any], Any]) -> Any:
        key = (what, netns)
        try:
            return self._procs[key]
        except (KeyError, TypeError):
            pass
        value = read(netns)
        try:
            self._procs[key] = value
        except TypeError:  # an unhashable netns (a PathLike): no cache
            pass
        return value


class _Source:
    """An object the collector reads, with its identifying and extra labels."""

    kind = ""
    #: the families this kind of source may expose (for describe())
    names: Tuple[str, ...] = ()

    def __init__(self, obj: Any, extra: Dict[str, str]) -> None:
        self.obj = obj
        self.extra = extra
        self.failed = False

    def key(self) -> Tuple[Any, ...]:
        """What two sources must not share (their series would collide)."""
        return (self.kind, tuple(sorted(self.extra.items())))

    def labels(self, **kw: str) -> Dict[str, str]:
        d = dict(kw)
        d.update(self.extra)
        return d

    def collect(self, out: _Scrape) -> None:  # pragma: no cover
        raise NotImplementedError


class _QueueSource(_Source):
    kind = "queue"
    names = ("nfbind_queue_packets_total", "nfbind_queue_verdicts_total",
             "nfbind_queue_handler_errors_total", "nfbind_queue_overruns_total",
             "nfbind_queue_verdict_errors_total", "nfbind_queue_timeouts_total",
             "nfbind_queue_pending", "nfbind_queue_waiting",
             "nfbind_queue_kernel_dropped_total")

    def key(self) -> Tuple[Any, ...]:
        return super().key() + (_numbers(self.obj.queue_num),)

    def collect(self, out: _Scrape) -> None:
        q = self.obj
        st = q.stats
        lb = self.labels(queue=_numbers(q.queue_num))
        out.add("nfbind_queue_packets_total", lb, st.packets)
        for v, n in st.verdicts.items():
            out.add("nfbind_queue_verdicts_total", dict(lb, verdict=_name(v)), n)
        out.add("nfbind_queue_handler_errors_total", lb, st.handler_errors)
        out.add("nfbind_queue_overruns_total", lb, st.overruns)
        out.add("nfbind_queue_verdict_errors_total", lb, st.verdict_errors)
        timeouts = getattr(st, "timeouts", None)
        if timeouts is not None:
            out.add("nfbind_queue_timeouts_total", lb, timeouts)
        out.add("nfbind_queue_pending", lb, st.pending)
        if q.closed:
            return
        rows = out.proc("queue", q._netns, kernel_queue_stats)
        nums = [q.queue_num] if isinstance(q.queue_num, int) else list(q.queue_num)
        for num in nums:
            row = rows.get(num)
            if row is None:
                continue
            kl = self.labels(queue=str(num))
            out.add("nfbind_queue_waiting", kl, row.waiting)
            out.add("nfbind_queue_kernel_dropped_total", dict(kl, reason="queue_full"),
                    row.queue_dropped)
            out.add("nfbind_queue_kernel_dropped_total", dict(kl, reason="socket"),
                    row.user_dropped)


class _LogSource(_Source):
    kind = "log"
    names = ("nfbind_log_packets_total", "nfbind_log_handler_errors_total",
             "nfbind_log_overruns_total", "nfbind_log_filtered_total", "nfbind_log_waiting")

    def key(self) -> Tuple[Any, ...]:
        return super().key() + (_numbers(self.obj.groups),)

    def collect(self, out: _Scrape) -> None:
        log = self.obj
        st = log.stats
        lb = self.labels(group=_numbers(log.groups))
        out.add("nfbind_log_packets_total", lb, st.packets)
        out.add("nfbind_log_handler_errors_total", lb, st.handler_errors)
        out.add("nfbind_log_overruns_total", lb, st.overruns)
        out.add("nfbind_log_filtered_total", lb, st.filtered)
        if log.closed:
            return
        rows = out.proc("log", log._netns, kernel_log_stats)
        for g in log.groups:
            row = rows.get(g)
            if row is not None:
                out.add("nfbind_log_waiting", self.labels(group=str(g)), row.waiting)


class _EventSource(_Source):
    kind = "events"
    names = ("nfbind_conntrack_events_total", "nfbind_conntrack_events_filtered_total",
             "nfbind_conntrack_events_handler_errors_total",
             "nfbind_conntrack_events_overruns_total", "nfbind_conntrack_events_resyncs_total",
             "nfbind_conntrack_events_needs_resync")

    def collect(self, out: _Scrape) -> None:
        s = self.obj
        st = s.stats
        for ev, n in st.by_type.items():
            out.add("nfbind_conntrack_events_total", self.labels(type=_name(ev)), n)
        lb = self.labels()
        out.add("nfbind_conntrack_events_filtered_total", lb, st.filtered)
        out.add("nfbind_conntrack_events_handler_errors_total", lb, st.handler_errors)
        out.add("nfbind_conntrack_events_overruns_total", lb, st.overruns)
        out.add("nfbind_conntrack_events_resyncs_total", lb, st.resyncs)
        out.add("nfbind_conntrack_events_needs_resync", lb, 1 if s.needs_resync else 0)


class _FlowRecorderSource(_Source):
    kind = "flows"
    names = ("nfbind_flows_records_total", "nfbind_flows_events_total",
             "nfbind_flows_overruns_total", "nfbind_flows_reliable")

    def collect(self, out: _Scrape) -> None:
        st = self.obj.stats
        lb = self.labels()
        out.add("nfbind_flows_records_total", lb, st.flows)
        out.add("nfbind_flows_events_total", lb, st.events)
        out.add("nfbind_flows_overruns_total", lb, st.overruns)
        out.add("nfbind_flows_reliable", lb, 1 if st.reliable else 0)


class _ConntrackSource(_Source):
    kind = "conntrack"
    names = ("nfbind_conntrack_flows", "nfbind_conntrack_entries", "nfbind_conntrack_max",
             "nfbind_conntrack_stat_total", "nfbind_conntrack_dump_complete",
             "nfbind_conntrack_dump_seconds")

    def __init__(self, obj: Any, extra: Dict[str, str], flows: bool,
                 dump_timeout: float) -> None:
        super().__init__(obj, extra)
        self.flows = flows
        self.dump_timeout = dump_timeout
        self.warned = False

    def collect(self, out: _Scrape) -> None:
        ct = self.obj
        try:
            st = ct.stats()
        except ClosedError:
            return
        lb = self.labels()
        out.add("nfbind_conntrack_entries", lb, st.entries)
        out.add("nfbind_conntrack_max", lb, st.max_entries)
        if st.cpus:
            names = [n for n in type(st.cpus[0]).__dataclass_fields__ if n != "cpu"]
            for n in names:
                out.add("nfbind_conntrack_stat_total", self.labels(name=n), st.total(n))
        if self.flows:
            self._flows(ct, out)

    def _flows(self, ct: Any, out: _Scrape) -> None:
        """One dump, counted by (family, proto, state, zone); stopped at the
        deadline, and then left out of the scrape."""
        start = time.monotonic()
        deadline = start + self.dump_timeout
        counts: Dict[Tuple[Any, Any, Any, int], int] = {}
        complete = True
        it = ct.dump()
        try:
            n = 0
            for f in it:
                key = (f.family, f.proto, f.state, f.zone)
                counts[key] = counts.get(key, 0) + 1
                n += 1
                if not n & 0x3FF and time.monotonic() > deadline:
                    complete = False
                    break
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        took = time.monotonic() - start
        if took > self.dump_timeout:
            complete = False
        lb = self.labels()
        out.add("nfbind_conntrack_dump_complete", lb, 1 if complete else 0)
        out.add("nfbind_conntrack_dump_seconds", lb, round(took, 6))
        if not complete:
            # said once: a table that large stays large, and scrapes come every few seconds
            (_log.debug if self.warned else _log.warning)(
                "the conntrack table dump took more than %g s: nfbind_conntrack_flows is left "
                "out of the scrapes it does (raise dump_timeout, or pass flows=False)",
                self.dump_timeout)
            self.warned = True
            return
        merged: Dict[Tuple[str, str, str, str], int] = {}
        for (fam, proto, state, zone), n in counts.items():
            k = _flow_labels(fam, proto, state, zone)
            merged[k] = merged.get(k, 0) + n
        for (lfam, lproto, lstate, lzone), n in sorted(merged.items()):
            out.add("nfbind_conntrack_flows",
                    self.labels(family=lfam, proto=lproto, state=lstate, zone=lzone), n)


def _kinds() -> List[Tuple[type, str]]:
    """(class, kind) of each channel this install has."""
    kinds: List[Tuple[type, str]] = []
    try:
        from .queue import NfQueue
        kinds.append((NfQueue, "queue"))
    except ImportError:
        pass
    try:
        from .log import NfLog
        kinds.append((NfLog, "log"))
    except ImportError:
        pass
    try:
        from .conntrack.events import EventStream
        from .conntrack.table import Conntrack
        kinds.append((EventStream, "events"))
        kinds.append((Conntrack, "conntrack"))
        from .flows.recorder import FlowRecorder
        kinds.append((FlowRecorder, "flows"))
    except ImportError:
        pass
    return kinds


# -- the collector ---------------------------------------------------------------------------


class Collector:
    """A prometheus_client collector over nfbind objects.

    Args:
        *objects: any mix of :class:`~nfbind.NfQueue`, :class:`~nfbind.NfLog`,
            :class:`~nfbind.conntrack.EventStream`, :class:`~nfbind.Conntrack`
            and :class:`~nfbind.flows.FlowRecorder`.
        flows: dump each Conntrack once per scrape for
            ``nfbind_conntrack_flows`` (False: only its size, limit and
            statistics, which cost one small request each).
        dump_timeout: seconds a scrape's dump may take.  A table that takes
            longer (millions of flows) is not counted in that scrape:
            ``nfbind_conntrack_flows`` is left out,
            ``nfbind_conntrack_dump_complete`` is 0, and
            ``nfbind_conntrack_entries`` still gives the table's size.

    Register it with ``prometheus_client.REGISTRY.register(collector)`` (or
    a registry of your own).  Scrapes may come from any thread: each reads
    the objects' live counters while their loops run elsewhere; scrapes
    are served one at a time.  A closed object keeps its final counters.

    Each object's samples carry its queue number(s) (``queue``) or group(s)
    (``group``); objects whose samples would carry the same labels (two
    Conntracks, or queues of the same number in two namespaces) need labels
    of their own: :meth:`add` them with e.g. ``netns="blue"``.

    Raises TypeError for an object of another type, ValueError for
    colliding objects or a bad ``dump_timeout``.
    """

    def __init__(self, *objects: Any, flows: bool = True, dump_timeout: float = 5.0) -> None:
        if not isinstance(flows, bool):
            raise TypeError("flows must be True or False, not %r" % (flows,))
        if (isinstance(dump_timeout, bool) or not isinstance(dump_timeout, (int, float))
                or not 0 < dump_timeout <= 3600):
            raise ValueError("dump_timeout must be a number of seconds in (0, 3600], got %r"
                             % (dump_timeout,))
        self.flows = flows
        self.dump_timeout = float(dump_timeout)
        self._sources: List[_Source] = []
        self._errors: Dict[str, int] = {}
        self._lock = threading.Lock()
        for obj in objects:
            self.add(obj)

    def add(self, obj: Any, **labels: str) -> "Collector":
        """Read ``obj`` too; every sample of it gets ``labels`` (names
        matching ``[a-zA-Z_][a-zA-Z0-9_]*``, not one the metrics use
        themselves, values str).  Returns the collector.

        Raises TypeError, ValueError (see the class)."""
        for k, v in labels.items():
            if not _LABEL_RE.match(k) or k.startswith("__"):
                raise ValueError("label name %r is not a valid Prometheus label name" % k)
            if k in _RESERVED:
                raise ValueError("label %r is one the metrics set themselves: choose another "
                                 "name (e.g. netns)" % k)
            if not isinstance(v, str):
                raise TypeError("label %s must be a str, not %s" % (k, type(v).__name__))
        src: Optional[_Source] = None
        extra = dict(labels)
        for cls, kind in _kinds():
            if isinstance(obj, cls):
                if kind == "queue":
                    src = _QueueSource(obj, extra)
                elif kind == "log":
                    src = _LogSource(obj, extra)
                elif kind == "events":
                    src = _EventSource(obj, extra)
                elif kind == "flows":
                    src = _FlowRecorderSource(obj, extra)
                else:
                    src = _ConntrackSource(obj, extra, self.flows, self.dump_timeout)
                break
        if src is None:
            raise TypeError("Collector reads NfQueue, NfLog, EventStream, Conntrack and "
                            "FlowRecorder objects, not %s" % type(obj).__name__)
        with self._lock:
            if any(s.obj is obj for s in self._sources):
                raise ValueError("%r is in this Collector already" % (obj,))
            key = src.key()
            if any(s.key() == key for s in self._sources):
                raise ValueError(
                    "%r would give the same series as an object already in this Collector: "
                    "add it with labels of its own, e.g. collector.add(obj, netns=\"blue\")"
                    % (obj,))
            self._sources.append(src)
            self._errors.setdefault(src.kind, 0)
        return self

    def describe(self) -> Iterator[Metric]:
        """The metric families (without samples), for the registry's check
        of duplicate names; reads nothing."""
        seen = set()
        for src in list(self._sources):
            for name in src.names:
                if name not in seen:
                    seen.add(name)
                    info = METRICS[name]
                    yield Metric(name[:-6] if info.type == "counter" else name,
                                 info.help, info.type)
        if seen:
            yield Metric("nfbind_scrape_errors", METRICS["nfbind_scrape_errors_total"].help,
                         "counter")

    def collect(self) -> Iterator[Metric]:
        """Read every object now; called by prometheus_client at each scrape."""
        with self._lock:
            out = _Scrape()
            for src in self._sources:
                try:
                    src.collect(out)
                except Exception as e:  # one object's failure must not fail the scrape
                    self._errors[src.kind] = self._errors.get(src.kind, 0) + 1
                    # said once per object; nfbind_scrape_errors_total counts the rest
                    (_log.debug if src.failed else _log.warning)(
                        "reading the figures of %r failed: %s: %s", src.obj,
                        type(e).__name__, e)
                    src.failed = True
            for kind, n in sorted(self._errors.items()):
                out.add("nfbind_scrape_errors_total", {"source": kind}, n)
            families = list(out.families.values())
        return iter(families)

    def __repr__(self) -> str:
        return "<nfbind.metrics.Collector of %d object%s>" % (
            len(self._sources), "" if len(self._sources) == 1 else "s")
