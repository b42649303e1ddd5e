# SPDX-License-Identifier: GPL-2.0-or-later
""":class:`Conntrack`: the connection tracking table of a network namespace.

The verbs (dump, get, create, update, delete, flush, count, stats, the
expectation verbs, events, and conntrack-go's update_mark/update_labels)
check their arguments, fill a request (``_wire``), and send it through the
socket pool (``_pool``), which also receives and decodes the answer.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import typing as _t
import warnings
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Union

from .._channels import missing

try:
    from .._conntrack import lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack.table") from e
from .._core import lib as core
from .. import netns as _netns
from ..enums import CtEvent, CtStatus
from ..errors import NetlinkError
from ._pool import Pool
from ._records import build_flows, parse_cpu_stats, parse_expect_stats, parse_global_stats
from ._wire import (
    TABLES,
    DumpFilter,
    TupleOrFlow,
    as_tuple,
    complete,
    create_spec,
    expect_delete_spec,
    expect_spec,
    flow_spec,
    lookup_tuple,
    update_spec,
    zone_of,
)
from .events import EventFilter, EventStream
from .labels import LABEL_HINT, MAX_LABEL, LabelMap, label_bits
from .model import (
    AF_INET,
    AF_INET6,
    U32_MAX,
    CtStats,
    ExpectEvent,
    Expectation,
    ExpectStats,
    Flow,
    NotFound,
    Tuple,
    check_addr,
    check_family,
    check_opt,
    check_proto,
    check_u16,
    check_u32,
)

__all__ = ["Conntrack"]

AddressLike = Union[str, bytes, int, ipaddress.IPv4Address, ipaddress.IPv6Address]
#: an address, or a network for dump() and flush() filters
Address = Union[AddressLike, ipaddress.IPv4Network, ipaddress.IPv6Network]

#: the status bits the kernel refuses in a new flow (EBUSY): it sets them itself
_KERNEL_ONLY_STATUS = (CtStatus.EXPECTED, CtStatus.DYING)


def _refused_status_hint(status: int) -> str:
    """The hint of an EBUSY from create(): which of ``status``'s bits the
    kernel refuses to set."""
    asked = [b.name or str(int(b)) for b in _KERNEL_ONLY_STATUS if status & b]
    if asked:
        return ("the kernel refuses to create a flow with status bit%s %s (it sets %s "
                "itself): leave %s out of status=%#x" % (
                    "s" if len(asked) > 1 else "", " and ".join(asked),
                    "them" if len(asked) > 1 else "it", "them" if len(asked) > 1 else "it",
                    status))
    return ("the kernel refuses this status=%#x for a new flow (it sets EXPECTED and "
            "DYING itself)" % status)


class Conntrack:
    """The connection tracking table of a network namespace.

    Args:
        netns: a namespace name, path or fd (see :mod:`nfbind.netns`); None
            for the caller's.
        timeout: seconds to wait for each answer of the kernel.
        labelmap: path of connlabel.conf for label names (or a
            :class:`LabelMap`); read on first use of a name.

    Every request takes a socket of its own from a small pool, so a dump
    can be iterated while ``update()``/``delete()`` run on its flows, and
    the object can be shared between threads.

    Raises:
        ValueError, TypeError: a bad argument.
        FileNotFoundError: ``netns`` does not exist.
        PermissionDenied: entering ``netns`` needs CAP_SYS_ADMIN.
    """

    _pool: Optional[Pool] = None

    def __init__(self, *, netns: _netns.NetNS = None, timeout: float = 5.0,
                 labelmap: Union[None, str, "os.PathLike[str]", LabelMap] = None) -> None:
        _netns.resolve(netns)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ValueError("timeout must be a number of seconds in (0, 3600], got %r" % (timeout,))
        if labelmap is not None and not isinstance(labelmap, (str, os.PathLike, LabelMap)):
            raise TypeError("labelmap must be a path or a LabelMap, not %s" % type(labelmap).__name__)
        self._netns = netns
        self._labelmap_arg = labelmap
        self._labelmap: Optional[LabelMap] = labelmap if isinstance(labelmap, LabelMap) else None
        self._pool = Pool(netns, int(timeout * 1000))

    # -- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        assert self._pool is not None
        self._pool.check_open()

    @property
    def labelmap(self) -> LabelMap:
        """The :class:`LabelMap` for label names (connlabel.conf), loaded on first use.

        Raises FileNotFoundError when connlabel.conf is missing."""
        if self._labelmap is None:
            arg = self._labelmap_arg
            self._labelmap = LabelMap(arg if not isinstance(arg, LabelMap) else None)
        return self._labelmap

    def _labels(self, name: str, values: Any) -> FrozenSet[int]:
        return label_bits(name, values, lambda: self.labelmap)

    def label_names(self, flow_or_labels: Union[Flow, Iterable[int]]) -> Set[str]:
        """The names (from connlabel.conf) of a flow's labels."""
        bits = flow_or_labels.labels if isinstance(flow_or_labels, Flow) else flow_or_labels
        return self.labelmap.names(bits)

    def label_bits(self, labels: Union[int, str, Iterable[Union[int, str]]]) -> FrozenSet[int]:
        """The bits of ``labels``: bit numbers (0..127) and label names, which
        are looked up in connlabel.conf (:attr:`labelmap`), e.g. for a
        :class:`Flow` to :meth:`create`: ``ct.label_bits(["suspicious", 5])``.

        Raises ValueError/TypeError for a bad bit or value, KeyError for a
        name connlabel.conf does not define, FileNotFoundError when a name is
        given and connlabel.conf is missing.
        """
        return label_bits("labels", labels, lambda: self.labelmap)

    # -- dumps ----------------------------------------------------------------------------

    def dump(
        self,
        family: Union[None, int, str] = None,
        *,
        mark: Optional[int] = None,
        mark_mask: int = U32_MAX,
        zone: Optional[int] = None,
        status: Optional[int] = None,
        status_mask: Optional[int] = None,
        table: str = "conntrack",
        src: Optional[Address] = None,
        dst: Optional[Address] = None,
        proto: Union[None, int, str] = None,
        sport: Optional[int] = None,
        dport: Optional[int] = None,
        reply_src: Optional[Address] = None,
        reply_dst: Optional[Address] = None,
        reply_sport: Optional[int] = None,
        reply_dport: Optional[int] = None,
        zero_counters: bool = False,
    ) -> Iterator[Flow]:
        """Yield the flows of the table that match every condition given.

        Flows are received and built in chunks of up to 65536 (one C call
        per 8192 records), so the first flow comes once its chunk is built.
        On a machine with more than one CPU, a large dump's later batches are
        received on a second thread while the first ones are built.

        Args:
            family: AF_INET/AF_INET6 (or "ipv4"/"ipv6"); None for both.
            mark, mark_mask: only flows with ``flow.mark & mark_mask == mark & mark_mask``.
            zone: only flows of this conntrack zone, in either direction (a
                ``--zone-orig``/``--zone-reply`` zone counts).
            status, status_mask: only flows with ``flow.status & status_mask ==
                status & status_mask``; ``status_mask`` defaults to ``status``
                ("all these bits set").
            src, dst: the original direction's source / destination: an
                address, or a network (``"10.0.0.0/8"``).
            proto: the protocol (a number or a name: "tcp", "udp" ...).
            sport, dport: the original direction's ports.
            reply_src, reply_dst, reply_sport, reply_dport: the same for the
                reply direction (where NAT shows: the address a flow was
                translated to is its reply destination).
            zero_counters: set the flows' packet and byte counters to zero
                as they are read (``conntrack -L -z``); the flows yielded
                carry the values before.  Only the flows yielded are zeroed.
            table: "conntrack" (default), "dying" (flows being destroyed) or
                "unconfirmed" (not yet confirmed; recent kernels keep no such
                list and return nothing).

        Where the kernel can, it filters: family, mark and status always;
        exact addresses, the protocol, TCP and UDP ports and the zone as
        CTA_FILTER (Linux 5.8) and CTA_ZONE (Linux 6.8), detected once per
        process.  Networks, ports of other protocols, and what an older
        kernel lacks are matched in userspace, and every condition is checked
        again there, so the flows are the same on any kernel; only the work
        differs (a dump that selects one flow of 100,000 by its tuple sends
        one).  The dying and unconfirmed tables are filtered in userspace.

        The request is sent at the first ``next()``; breaking out of the loop
        early is fine.

        Raises ValueError/TypeError for bad arguments, PermissionDenied
        without CAP_NET_ADMIN, NetlinkError for other refusals, ClosedError.
        """
        flt = DumpFilter(family, mark=mark, mark_mask=mark_mask, zone=zone, status=status,
                         status_mask=status_mask, src=src, dst=dst, proto=proto, sport=sport,
                         dport=dport, reply_src=reply_src, reply_dst=reply_dst,
                         reply_sport=reply_sport, reply_dport=reply_dport)
        if table not in TABLES:
            raise ValueError("table must be one of %s, got %r" % (", ".join(TABLES), table))
        if not isinstance(zero_counters, bool):
            raise TypeError("zero_counters must be True or False, not %r" % (zero_counters,))
        if zero_counters and table != "conntrack":
            raise ValueError("zero_counters needs table='conntrack'")
        self._check_open()
        assert self._pool is not None
        return self._pool.dump(flt, table, zero_counters)

    def list(self, table: str = "conntrack", **filters: Any) -> _t.List[Any]:
        """All flows (``table="conntrack"``, "dying", "unconfirmed") or all
        expectations (``table="expect"``) as a list: conntrack-go's ConntrackTableList.

        ``filters`` are :meth:`dump`'s (family, mark, mark_mask, zone, status).
        Raises what :meth:`dump` raises."""
        if table == "expect":
            return list(self.dump_expect(**filters))
        return list(self.dump(table=table, **filters))

    # -- single flows ---------------------------------------------------------------------

    def _transact(self, build: Callable[[Any], int], op: str, **kw: Any) -> Any:
        self._check_open()
        assert self._pool is not None
        return self._pool.transact(build, op, **kw)

    def _transact_hinted(self, build: Callable[[Any], int], op: str,
                         hints: Dict[int, Optional[str]], not_found: Optional[str] = None) -> None:
        self._check_open()
        assert self._pool is not None
        self._pool.transact_hinted(build, op, hints, not_found)

    def get(self, flow_or_tuple: TupleOrFlow, *, zone: Optional[int] = None,
            reply: bool = False) -> Flow:
        """The current state of one flow, looked up by its original tuple, or
        with ``reply=True`` by its reply tuple (``conntrack -G -r/-q``: find
        a NATed flow by the addresses the peer sees).  The kernel finds a
        flow by either of its tuples; the direction decides for a tuple with
        a directional zone (one of ``--zone-reply`` is found with
        ``reply=True`` only).

        A Flow gives its ``orig`` (``reply=True``: its ``reply``) tuple.
        ``zone`` defaults to the Flow's zone (0 for a Tuple); a tuple's
        directional zone (``Tuple.zone``) is sent with it.

        Raises NotFound (errno ENOENT) when the table has no such flow,
        ValueError/TypeError for an incomplete or bad tuple,
        PermissionDenied, NetlinkError, ClosedError.
        """
        if not isinstance(reply, bool):
            raise TypeError("reply must be True or False, not %r" % (reply,))
        if reply and isinstance(flow_or_tuple, Flow):
            if flow_or_tuple.reply is None:
                raise ValueError("get(reply=True): the Flow has no reply tuple")
            tup = flow_or_tuple.reply
        else:
            tup = as_tuple(flow_or_tuple, "get()")
        complete(tup, "get()")
        zn = zone_of(flow_or_tuple, zone)
        ctup = lookup_tuple(tup)
        fam = AF_INET if tup.src.version == 4 else AF_INET6
        op = "getting flow %s%s (zone %d)" % ("by reply tuple " if reply else "", tup, zn)
        recs, n, data = self._transact(
            lambda buf: lib.nfb_ct_build_lookup(buf, core.IPCTNL_MSG_CT_GET, core.NLM_F_ACK,
                                                fam, ctup, 1 if reply else 0, zn),
            op, want=True,
            not_found="no such flow in the table (in zone %d): it may have expired or never "
            "existed; dump() lists the flows" % zn,
        )
        flows: List[Flow] = []
        build_flows(recs, n, data, flows)
        if not flows:
            raise NotFound(errno.ENOENT, op, "the kernel answered without a flow")
        return flows[0]

    def create(self, flow: Flow) -> None:
        """Add ``flow`` to the table.

        Needs ``flow.orig`` and ``flow.timeout``; ``reply`` defaults to the
        inverse of ``orig``.  Also sent when set: status, mark, zone, labels
        (needs a connlabel rule), state (TCP/SCTP), helper, nat (the
        ``nat`` table must be in use in the namespace).

        Raises ValueError/TypeError (before any syscall), NetlinkError with
        errno EEXIST when the flow exists, ENOSPC for labels without the
        connlabel extension (the message names the fix), EBUSY for status
        bits the kernel sets only itself (the message names them),
        PermissionDenied, ClosedError.
        """
        if not isinstance(flow, Flow):
            raise TypeError("create() needs a Flow, not %s" % type(flow).__name__)
        s = create_spec(flow)
        op = "creating flow %s" % flow.orig
        hint = {
            errno.EBUSY: _refused_status_hint(int(flow.status or 0)),
            errno.EEXIST: "the flow is in the table already: update() it, or delete() it first",
            errno.ENOSPC: LABEL_HINT % ((min(flow.labels),) * 2) if flow.labels else None,
            errno.EOPNOTSUPP: "the kernel does not support something requested "
                              "(a helper name it does not know, or NAT without the nat table in use)",
            errno.EINVAL: "the kernel rejected an attribute: check both tuples and the timeout",
        }
        self._transact_hinted(
            lambda buf: lib.nfb_ct_build(
                buf, core.IPCTNL_MSG_CT_NEW, core.NLM_F_ACK | core.NLM_F_CREATE | core.NLM_F_EXCL, s),
            op, hint)
        if flow.labels:
            # the kernel creates the flow without its labels (and says nothing)
            # when no rule allocated the label extension: undo and say so
            got = self.get(flow.orig, zone=flow.zone)
            if not flow.labels <= got.labels:
                try:
                    self.delete(got)
                except NotFound:
                    pass
                raise NetlinkError(errno.ENOSPC, op, LABEL_HINT % ((min(flow.labels),) * 2))

    def update(
        self,
        flow_or_tuple: TupleOrFlow,
        *,
        mark: Optional[int] = None,
        labels: Optional[Iterable[Union[int, str]]] = None,
        labels_add: Optional[Iterable[Union[int, str]]] = None,
        labels_remove: Optional[Iterable[Union[int, str]]] = None,
        timeout: Optional[int] = None,
        status: Optional[int] = None,
        zone: Optional[int] = None,
    ) -> None:
        """Change a flow in place, sending only the tuple, the zone and what changes.

        Args:
            mark: the new connection mark (u32).
            labels: replace all labels by these (bits 0..127 or names from
                connlabel.conf); ``labels=()`` clears them.
            labels_add, labels_remove: set / clear just these labels.
            timeout: seconds until the flow expires.
            status: the new status bits (:class:`CtStatus`); the kernel
                ignores bits it manages itself and refuses to clear
                SEEN_REPLY or ASSURED (EBUSY).
            zone: the zone to look the flow up in (default: the Flow's, 0).

        Raises ValueError/TypeError (nothing to change, bad values, labels=
        with labels_add/labels_remove), NotFound (ENOENT), NetlinkError
        (ENOSPC: no connlabel rule — the message names the fix; EBUSY: a
        status change the kernel refuses), PermissionDenied, ClosedError,
        FileNotFoundError for label names without connlabel.conf.
        """
        tup = as_tuple(flow_or_tuple, "update()")
        complete(tup, "update()")
        zn = zone_of(flow_or_tuple, zone)
        mk = check_opt(check_u32, "mark", mark)
        to = check_opt(check_u32, "timeout", timeout)
        st = check_opt(check_u32, "status", status)
        if labels is not None and (labels_add is not None or labels_remove is not None):
            raise ValueError("pass labels= (replace all) or labels_add=/labels_remove=, not both")
        lb = lm = None
        if labels is not None:
            lb = self._labels("labels", labels)
            lm = frozenset(range(MAX_LABEL + 1))
        elif labels_add is not None or labels_remove is not None:
            add = self._labels("labels_add", labels_add if labels_add is not None else ())
            rem = self._labels("labels_remove", labels_remove if labels_remove is not None else ())
            if add & rem:
                raise ValueError("labels %s are both added and removed" % sorted(add & rem))
            lb, lm = add, add | rem
            if not lm:
                lb = lm = None
        if mk is None and to is None and st is None and lm is None:
            raise ValueError(
                "update() needs something to change: mark=, labels=, labels_add=, "
                "labels_remove=, timeout= or status=")
        s = update_spec(tup, zn, mk, to, st, lb, lm)
        op = "updating flow %s (zone %d)" % (tup, zn)
        first = min(lb) if lb else (min(lm) if lm else 0)
        self._transact_hinted(
            lambda buf: lib.nfb_ct_build(buf, core.IPCTNL_MSG_CT_NEW, core.NLM_F_ACK, s),
            op,
            {
                errno.ENOSPC: LABEL_HINT % (first, first),
                errno.EBUSY: "the kernel refuses this status change (clearing SEEN_REPLY "
                             "or ASSURED, or changing NAT bits)",
                errno.EOPNOTSUPP: "the kernel cannot change this on an existing flow",
                errno.EINVAL: "the kernel rejected an attribute of the update",
            },
            not_found="no such flow in the table (update() does not create flows: use create())",
        )

    def delete(self, flow_or_tuple: TupleOrFlow, *, zone: Optional[int] = None) -> None:
        """Remove a flow.  A Flow with an ``id`` deletes only that instance
        (not a newer flow with the same tuple).

        Raises NotFound (ENOENT), ValueError/TypeError, PermissionDenied,
        NetlinkError, ClosedError.
        """
        tup = as_tuple(flow_or_tuple, "delete()")
        complete(tup, "delete()")
        zn = zone_of(flow_or_tuple, zone)
        s = flow_spec(tup, zn)
        if isinstance(flow_or_tuple, Flow) and flow_or_tuple.id is not None:
            s.set |= lib.NFB_S_ID
            s.id = flow_or_tuple.id
        self._transact(
            lambda buf: lib.nfb_ct_build(buf, core.IPCTNL_MSG_CT_DELETE, core.NLM_F_ACK, s),
            "deleting flow %s (zone %d)" % (tup, zn),
            not_found="no such flow in the table (already gone, or a different id)",
        )

    def flush(
        self,
        family: Union[None, int, str] = None,
        *,
        mark: Optional[int] = None,
        mark_mask: int = U32_MAX,
        status: Optional[int] = None,
        status_mask: Optional[int] = None,
        zone: Optional[int] = None,
        src: Optional[Address] = None,
        dst: Optional[Address] = None,
        proto: Union[None, int, str] = None,
        sport: Optional[int] = None,
        dport: Optional[int] = None,
        reply_src: Optional[Address] = None,
        reply_dst: Optional[Address] = None,
        reply_sport: Optional[int] = None,
        reply_dport: Optional[int] = None,
    ) -> None:
        """Delete every flow, or those matching every condition given (the
        conditions of :meth:`dump`).

        Where the kernel applies all of them, one request per family deletes
        the flows in the kernel; otherwise (networks, ports of protocols
        other than TCP and UDP, a zone before Linux 6.8, a kernel without
        CTA_FILTER) the matching flows are dumped and deleted one by one, by
        tuple and id, so a flow the kernel would not have matched is never
        deleted.

        Raises ValueError/TypeError for bad filters, PermissionDenied,
        NetlinkError (EOPNOTSUPP: the kernel cannot flush with that filter),
        ClosedError.
        """
        flt = DumpFilter(family, mark=mark, mark_mask=mark_mask, zone=zone, status=status,
                         status_mask=status_mask, src=src, dst=dst, proto=proto, sport=sport,
                         dport=dport, reply_src=reply_src, reply_dst=reply_dst,
                         reply_sport=reply_sport, reply_dport=reply_dport)
        self._check_open()
        assert self._pool is not None
        self._pool.flush(flt, {
            errno.EOPNOTSUPP: "this kernel cannot flush with that filter: dump() with the "
                              "filter and delete() each flow instead"})

    # -- statistics -----------------------------------------------------------------------

    def _global_stats(self) -> _t.Tuple[int, Optional[int]]:
        msgs = self._transact(
            lambda buf: lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK,
                                                core.IPCTNL_MSG_CT_GET_STATS, core.NLM_F_ACK, 0, 0),
            "reading the conntrack table size", mode=lib.NFB_M_RAW, want=True)
        return parse_global_stats(msgs)

    def count(self) -> int:
        """The number of flows in the table (IPCTNL_MSG_CT_GET_STATS).

        Raises PermissionDenied, NetlinkError, ClosedError."""
        return self._global_stats()[0]

    def stats(self) -> CtStats:
        """Per-CPU counters (IPCTNL_MSG_CT_GET_STATS_CPU), the number of
        entries and the table's maximum (nf_conntrack_max).

        Raises PermissionDenied, NetlinkError, ClosedError."""
        msgs = self._transact(
            lambda buf: lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK,
                                                core.IPCTNL_MSG_CT_GET_STATS_CPU,
                                                core.NLM_F_DUMP, 0, 0),
            "reading per-CPU conntrack statistics", mode=lib.NFB_M_RAW, want=True)
        cpus = parse_cpu_stats(msgs)
        entries, limit = self._global_stats()
        if limit is None:
            limit = _netns.call_in(self._netns, _read_int, "/proc/sys/net/netfilter/nf_conntrack_max")
        return CtStats(entries, limit, cpus)

    # -- expectations ---------------------------------------------------------------------

    def dump_expect(self, family: Union[None, int, str] = None, *,
                    zone: Optional[int] = None) -> Iterator[Expectation]:
        """Yield the expectations (the expect table).

        Raises ValueError/TypeError, PermissionDenied, NetlinkError, ClosedError."""
        fam = check_family("family", family)
        zn = check_opt(check_u16, "zone", zone)
        self._check_open()
        assert self._pool is not None
        return iter([e for e in self._pool.dump_expect(fam) if zn is None or e.zone == zn])

    def expect_stats(self) -> _t.List[ExpectStats]:
        """The expectation counters of each CPU (IPCTNL_MSG_EXP_GET_STATS_CPU,
        ``conntrack -S expect``): :class:`ExpectStats` with ``new``,
        ``create`` and ``delete``, sorted by CPU.

        Raises PermissionDenied, NetlinkError, ClosedError."""
        msgs = self._transact(
            lambda buf: lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK_EXP,
                                                core.IPCTNL_MSG_EXP_GET_STATS_CPU,
                                                core.NLM_F_DUMP, 0, 0),
            "reading per-CPU expectation statistics", mode=lib.NFB_M_RAW, want=True)
        return list(parse_expect_stats(msgs))

    def create_expect(self, exp: Expectation) -> None:
        """Add an expectation.  Its master flow must exist and have a helper
        (e.g. created through ``-j CT --helper ftp``); ``timeout`` is required.

        Raises ValueError/TypeError, NotFound (no such master flow),
        NetlinkError (EEXIST; EOPNOTSUPP: the master has no helper, or the
        helper is unknown), PermissionDenied, ClosedError.
        """
        if not isinstance(exp, Expectation):
            raise TypeError("create_expect() needs an Expectation, not %s" % type(exp).__name__)
        complete(exp.master, "create_expect() master")
        if exp.timeout is None:
            raise ValueError("create_expect() needs Expectation(timeout=SECONDS)")
        s = expect_spec(exp)
        self._transact_hinted(
            lambda buf: lib.nfb_exp_build(buf, core.IPCTNL_MSG_EXP_NEW,
                                          core.NLM_F_ACK | core.NLM_F_CREATE | core.NLM_F_EXCL, s),
            "creating expectation %s (master %s)" % (exp.expected, exp.master),
            {errno.EEXIST: "the expectation exists already",
             errno.EOPNOTSUPP: "the master flow has no helper (give it one, e.g. with "
                               "`-j CT --helper ftp` in the raw table), or the helper is unknown",
             errno.EBUSY: "the helper allows no more expectations for this master"},
            not_found="the master flow is not in the table",
        )

    def delete_expect(self, exp_or_tuple: Union[Expectation, Tuple], *,
                      zone: Optional[int] = None) -> None:
        """Remove the expectation for an expected tuple (or an Expectation).

        Raises NotFound, ValueError/TypeError, PermissionDenied, NetlinkError, ClosedError."""
        if isinstance(exp_or_tuple, Expectation):
            tup, zn = exp_or_tuple.expected, exp_or_tuple.zone
        elif isinstance(exp_or_tuple, Tuple):
            tup, zn = exp_or_tuple, 0
        else:
            raise TypeError("delete_expect() needs an Expectation or a Tuple, not %s"
                            % type(exp_or_tuple).__name__)
        if zone is not None:
            zn = check_u16("zone", zone)
        s = expect_delete_spec(tup, zn)
        self._transact(
            lambda buf: lib.nfb_exp_build(buf, core.IPCTNL_MSG_EXP_DELETE, core.NLM_F_ACK, s),
            "deleting expectation %s" % tup,
            not_found="no such expectation (it may have been used or expired)",
        )

    def flush_expect(self) -> None:
        """Delete every expectation.  Raises PermissionDenied, NetlinkError, ClosedError."""
        self._transact(
            lambda buf: lib.nfb_ct_build_simple(buf, core.NFNL_SUBSYS_CTNETLINK_EXP,
                                                core.IPCTNL_MSG_EXP_DELETE, core.NLM_F_ACK, 0, 0),
            "flushing the expect table")

    # -- events ---------------------------------------------------------------------------

    def events(
        self,
        types: Union[CtEvent, int] = CtEvent.ALL,
        filter: Optional[EventFilter] = None,
        *,
        rcvbuf: int = 4 << 20,
        on_overrun: str = "count",
        no_enobufs: bool = False,
        reliable: bool = False,
    ) -> EventStream:
        """Subscribe to changes of the table: an :class:`EventStream` of
        :class:`Event` (iterate it, ``async for`` it, or ``run(handler)``).

        Args:
            types: :class:`CtEvent` flags: NEW, UPDATE, DESTROY (default all).
            filter: an :class:`EventFilter`; protocol, addresses and mark are
                matched by a BPF program in the kernel, ports in userspace.
            rcvbuf: receive buffer in bytes; bursts beyond it are lost (ENOBUFS).
            on_overrun: "count" (count and warn once) or "raise" (raise
                :class:`~nfbind.Overrun` from the loop).
            no_enobufs: set NETLINK_NO_ENOBUFS: the kernel stops reporting losses.
            reliable: conntrackd's reliable mode: the kernel keeps each
                DESTROY event until the socket has room for it, so none is
                lost however far the consumer falls behind; meanwhile the
                kernel holds the ended flows (memory, and entries counted
                against nf_conntrack_max), and the events it holds come
                about a tenth of a second apart once the consumer reads
                again.  For flow accounting (``nfbind.flows``).

        Close the stream (``with`` block) when done.  Its ``resync()`` dumps
        the table through this object's sockets while it is open.  Flows
        made while nobody listens carry no events at all (with the default
        ``nf_conntrack_events=2``): subscribe first.

        Raises ValueError/TypeError, PermissionDenied (subscribing needs
        CAP_NET_ADMIN), NetlinkError, ClosedError.
        """
        self._check_open()
        stream: EventStream = EventStream(
            netns=self._netns, types=types, filter=filter, rcvbuf=rcvbuf,
            on_overrun=on_overrun, no_enobufs=no_enobufs, reliable=reliable)
        stream._pool = self._pool
        return stream

    def expect_events(
        self,
        types: Union[CtEvent, int] = CtEvent.NEW | CtEvent.DESTROY,
        *,
        rcvbuf: int = 4 << 20,
        on_overrun: str = "count",
        no_enobufs: bool = False,
    ) -> "EventStream[ExpectEvent]":
        """Subscribe to changes of the expectation table (``conntrack -E
        expect``): an :class:`EventStream` of :class:`ExpectEvent`, whose
        ``expectation`` is an :class:`Expectation`; loops, ``stats`` and
        overruns as for :meth:`events`, and ``resync()`` returns the
        expectation table.

        ``types``: CtEvent.NEW (a helper or :meth:`create_expect` made an
        expectation) and/or CtEvent.DESTROY (it was used, expired or was
        deleted); expectations have no UPDATE events.

        Raises ValueError/TypeError, PermissionDenied, NetlinkError, ClosedError.
        """
        self._check_open()
        stream = EventStream._expectations(types, netns=self._netns, rcvbuf=rcvbuf,
                                           on_overrun=on_overrun, no_enobufs=no_enobufs)
        stream._pool = self._pool
        return stream

    # -- conntrack-go verbs -------------------------------------------------------------------

    @staticmethod
    def _tuple_of(src: AddressLike, dst: AddressLike, proto: Union[int, str], sport: int,
                  dport: int) -> Tuple:
        t = Tuple(check_addr("src", src), check_addr("dst", dst), check_proto("proto", proto),
                  sport, dport)
        complete(t, "tuple")
        return t

    def update_mark(self, src: AddressLike, dst: AddressLike, proto: Union[int, str],
                    sport: int, dport: int, mark: int, *, zone: int = 0) -> None:
        """Set the mark of the flow with this original tuple (conntrack-go's
        ConntrackTableUpdateMark).  Raises what :meth:`update` raises."""
        self.update(self._tuple_of(src, dst, proto, sport, dport), mark=mark, zone=zone)

    def update_mark_for_available_flow(self, flows: Iterable[Flow], src: AddressLike,
                                       dst: AddressLike, proto: Union[int, str], sport: int,
                                       dport: int, mark: int) -> int:
        """Set ``mark`` on the flows among ``flows`` (e.g. from :meth:`list`)
        whose original tuple, or reply tuple, is (src, dst, proto, sport,
        dport); returns how many were updated (conntrack-go's
        ConntrackTableUpdateMarkForAvailableFlow).  A flow that vanished
        meanwhile is skipped.  Raises ValueError/TypeError, NetlinkError
        (other than ENOENT), PermissionDenied, ClosedError.
        """
        want = self._tuple_of(src, dst, proto, sport, dport)
        mk = check_u32("mark", mark)
        done = 0
        for f in flows:
            if not isinstance(f, Flow):
                raise TypeError("flows must hold Flow objects, not %s" % type(f).__name__)
            if not (_same(f.orig, want) or (f.reply is not None and _same(f.reply, want))):
                continue
            try:
                self.update(f, mark=mk)
            except NotFound:
                continue
            done += 1
        return done

    def update_labels(self, src: AddressLike, dst: AddressLike, proto: Union[int, str],
                      sport: int, dport: int, labels: Iterable[Union[int, str]], *,
                      zone: int = 0) -> None:
        """Replace the labels of the flow with this original tuple (bits or
        names).  Raises what :meth:`update` raises."""
        self.update(self._tuple_of(src, dst, proto, sport, dport), labels=labels, zone=zone)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran."""
        return self._pool is None or self._pool.closed

    def close(self) -> None:
        """Close every socket.  Safe to call twice."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "Conntrack":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "Conntrack":
        """``async with Conntrack() as ct:``: the same as ``with``; the
        calls themselves stay synchronous (each is one netlink exchange).
        Raises ClosedError on a closed Conntrack."""
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close every socket when the ``async with`` block ends (also on an
        exception or a cancellation, which then propagates)."""
        self.close()

    def __del__(self) -> None:
        if not self.closed:
            try:
                warnings.warn("unclosed Conntrack: call close() or use a with block",
                              ResourceWarning, source=self)
            finally:
                # also when the warning is an error (-W error)
                try:
                    self.close()
                except Exception:
                    pass

    def __repr__(self) -> str:
        return "<nfbind.Conntrack netns=%r%s>" % (self._netns, " closed" if self.closed else "")


def _same(t: Tuple, want: Tuple) -> bool:
    return (t.src == want.src and t.dst == want.dst and t.proto == want.proto
            and t.sport == want.sport and t.dport == want.dport)


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().split()[0])
