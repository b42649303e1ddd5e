# SPDX-License-Identifier: GPL-2.0-or-later
"""NFQUEUE: decide each packet's fate in Python.

The rule ``iptables -A INPUT -p icmp -j NFQUEUE --queue-num 100`` hands ICMP
packets to queue 100; an :class:`NfQueue` bound to it gets each one as a
:class:`Packet` and gives it exactly one verdict::

    from nfbind import NfQueue, Verdict

    with NfQueue(100) as q:
        q.run(lambda pkt: Verdict.DROP if pkt.payload_len > 1000 else Verdict.ACCEPT)

How verdicts travel: inside ``run()`` the verdicts of a batch are collected
and sent together in one ``sendmsg``; runs of consecutive packets with the
same plain verdict become one kernel batch verdict.  A verdict given outside
the loop (a deferred verdict, from any thread) is sent at once.

What an interruption (Ctrl-C: KeyboardInterrupt, or any exception that is
not an ``Exception``) does: a verdict the handler decided stays decided and
is sent by the next ``run()``, ``drain()``, iteration, batch verdict or
``close()``; a packet whose handler was interrupted before its verdict was
kept, and the packets after it in its batch, are handed to the handler by
the next loop (``close()`` gives them the default verdict).  A received
batch is kept by the C side until Python has taken it, so an interruption
between the receive and the dispatch loses nothing either.

This module holds the packets and the receive loop; NfQueue's configuration
is in ``_queue_config.py``, its verdict machinery in ``_queue_verdicts.py``.
"""
from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from ._channel import Channel
from ._channels import missing
from ._core import lib as core

try:
    from ._nfqueue import ffi, lib
except ImportError as e:  # the NFQUEUE channel was not built on this machine
    raise missing("nfqueue", "nfbind.queue") from e
from . import _speedups, netns as _netns
from ._queue_config import ALL_FLAGS, QueueConfig, flag_bits, gso_safe, queue_list
from ._queue_deadlines import OnError, OnTimeout, QueueDeadlines
from ._queue_stats import QueueCounters, QueueStats
from ._queue_verdicts import (F_ID, F_QUEUE, MAX_PAYLOAD, PLAIN, V_CLOSED, V_DEFERRED, V_DONE,
                              Flight)
from .enums import CopyMode, QueueFlag, Verdict
from .errors import NetlinkError, VerdictError, error_from_errno
from ._netlink import check_int
from .conntrack._lookup import CtLookup
from .packet import HOT_FIELDS, HOT_READS, HOT_SPAN, NF, PacketBase, blob, field, hot_struct, \
    hot_variant

if TYPE_CHECKING:  # pragma: no cover
    from ._nfqueue import struct_nfb_q

__all__ = ["NfQueue", "Packet", "QueueStats", "QueueCounters", "MAX_PAYLOAD"]

_U32_MAX = 0xFFFFFFFF
_MAX_VERDICT = lib.NF_MAX_VERDICT
_VERDICT_MASK = lib.NF_VERDICT_MASK


class Packet(PacketBase):
    """A packet held by the kernel until it gets its verdict.

    Give exactly one verdict: return it from the handler, or call one of
    :meth:`accept`, :meth:`drop`, :meth:`repeat`, :meth:`queue` — inside the
    handler, or later from any thread while the queue is open.  A second
    verdict raises :class:`VerdictError`.
    """

    __slots__ = ("id",)

    id: int
    _b: Flight[NfQueue]

    def __init__(self, b: Flight[NfQueue], o: int, pid: int) -> None:
        self._b = b
        self._o = o
        self.id = pid

    # -- queue-only metadata ----------------------------------------------------

    @property
    def queue_num(self) -> int:
        """The queue this packet came from."""
        return self._b.recs[self._o + core.NFB_F_QUEUE]

    skb_info = field(core.NFB_F_SKBINFO, core.NFB_A_SKBINFO, "The raw NFQA_SKB_INFO flags, or None.")

    @property
    def gso(self) -> bool:
        """True for a GSO super-packet (only with ``gso=True``)."""
        return bool((self.skb_info or 0) & lib.NFQA_SKB_GSO)

    @property
    def csum_notready(self) -> bool:
        """True when the checksum is left to the NIC (CHECKSUM_PARTIAL); the
        payload's L4 checksum is then not yet valid."""
        return bool((self.skb_info or 0) & lib.NFQA_SKB_CSUMNOTREADY)

    @property
    def csum_not_verified(self) -> bool:
        """True when nobody verified the L4 checksum yet."""
        return bool((self.skb_info or 0) & lib.NFQA_SKB_CSUM_NOTVERIFIED)

    exp_raw = blob(core.NFB_F_EXP_OFF, core.NFB_A_EXP,
                   "The raw NFQA_EXP attribute (the related expectation), or None.")

    @property
    def has_verdict(self) -> bool:
        """True once the packet has its verdict."""
        return self._b.vbuf[self._o // NF] != V_DEFERRED

    # -- verdicts -----------------------------------------------------------------

    def accept(self, mark: Optional[int] = None, connmark: Optional[int] = None,
               labels: Optional[Iterable[int]] = None, payload: Any = None) -> None:
        """Let the packet go on.

        ``mark`` sets the packet mark, ``connmark`` its connection's mark,
        ``labels`` its connection's labels (bits 0..127, replacing those it
        had; the packet must be tracked, and labels need a ``-m connlabel``
        rule in the namespace, else ENOSPC), ``payload`` replaces the
        packet: bytes are sent as given; a scapy packet gets its lengths and
        checksums recomputed.  On a packet with :attr:`csum_notready` the
        TCP/UDP checksum is completed either way, since the kernel takes a
        new payload's checksums as final.  Raises VerdictError, ValueError,
        TypeError, NetlinkError.
        """
        self._b.ch._verdict(self, core.NF_ACCEPT, mark, connmark, payload, labels)

    def drop(self) -> None:
        """Drop the packet."""
        self._b.ch._verdict(self, core.NF_DROP, None, None, None)

    def repeat(self, mark: Optional[int] = None) -> None:
        """Send the packet through the same hook again, from its first rule.

        Set a ``mark`` that a rule before the NFQUEUE one matches, or it
        comes straight back."""
        self._b.ch._verdict(self, core.NF_REPEAT, mark, None, None)

    def queue(self, num: int, *, bypass: bool = False) -> None:
        """Hand the packet to queue ``num``.  With ``bypass`` the packet is
        accepted when nobody listens there (instead of dropped)."""
        num = check_int("queue number", num, 0, 0xFFFF)
        if not isinstance(bypass, bool):
            raise TypeError("bypass must be True or False, not %r" % (bypass,))
        v = core.NF_QUEUE | (num << core.NF_VERDICT_QBITS)
        if bypass:
            v |= core.NF_VERDICT_FLAG_QUEUE_BYPASS
        self._b.ch._verdict(self, v, None, None, None)

    def verdict(self, verdict: Union[Verdict, int], mark: Optional[int] = None,
                connmark: Optional[int] = None, payload: Any = None, *,
                labels: Optional[Iterable[int]] = None) -> None:
        """Give ``verdict`` (a :class:`Verdict`) with optional mark, connmark,
        payload and connection labels (as :meth:`accept`)."""
        v = check_int("verdict", verdict, 0, _U32_MAX)
        if v not in PLAIN:
            raise ValueError(
                "verdict must be Verdict.ACCEPT, DROP, REPEAT or STOP (use "
                "pkt.queue(num) to queue), got %r" % (verdict,)
            )
        self._b.ch._verdict(self, v, mark, connmark, payload, labels)

    def __repr__(self) -> str:
        return "<nfbind.Packet id=%d %s%s>" % (
            self.id, self._repr_fields(), " (verdict given)" if self.has_verdict else "")


#: Packet with its hot fields as plain slots, filled when the packet is made
#: (see nfbind.packet)
_HotPacket = hot_variant(Packet, HOT_FIELDS)
#: struct nfb_hot (cdef/core.h), what nfb_q_hot() fills for each packet
_HOT = hot_struct(ffi)
_HOT_MARK = core.NFB_HOT_MARK
_HOT_INDEV = core.NFB_HOT_INDEV
_HOT_TIMESTAMP = core.NFB_HOT_TIMESTAMP
#: the compiled dispatch loop (nfbind._fastq), None: _dispatch's Python loop
_fastq = _speedups.load("_fastq")
_LOOP: Any = None if _fastq is None else _fastq.QueueLoop(
    Packet, _HotPacket, Flight, Verdict, PLAIN, NF, F_ID, F_QUEUE, V_DEFERRED, V_DONE)


class NfQueue(QueueConfig[Packet], QueueDeadlines[Packet]):
    """A netlink socket bound to one NFQUEUE queue, or to several.

    Args:
        queue_num: 0..65535, the ``--queue-num`` of the rule; or an iterable
            of queue numbers (``range(4)`` for ``--queue-balance 0:3``), all
            bound by this one socket (``pkt.queue_num`` tells them apart;
            ``queues`` lists them).
        copy_mode: :class:`CopyMode`; ``PACKET`` (default) copies up to
            ``copy_range`` bytes, ``META`` only metadata.
        copy_range: 0..65535 bytes of each packet to copy (the kernel clamps
            it to 65531).
        max_len: how many packets the kernel holds for this queue (1..65536)
            before it drops (or, with ``fail_open``, accepts) new ones.
        fail_open: accept packets instead of dropping them when the queue is full.
        conntrack: attach conntrack information (``pkt.ct``, ``pkt.ct_info``).
        gso: receive GSO/GRO super-packets unsegmented (``pkt.gso``; their
            checksums may be left to the kernel: ``pkt.csum_notready``).  This
            saves the kernel segmenting them before queueing.  None (default):
            on where safe, i.e. when every packet is copied whole (``copy_mode``
            META or NONE, or ``copy_range`` of at least 65531, the kernel's
            maximum); off with a shorter ``copy_range``, which would cut a
            super-packet where its segments fit.  Rewritten payloads of
            super-packets are accepted by the kernel as usual.
        uid_gid: attach the owner of a local socket (``pkt.uid``, ``pkt.gid``).
        secctx: attach the security context (``pkt.secctx``).
        rcvbuf: receive buffer in bytes (default: sized from max_len).
        rcvbuf_max: after an overrun (ENOBUFS) the receive buffer doubles, up
            to this many bytes (default: the larger of ``rcvbuf`` and the size
            picked from max_len).  Pass ``rcvbuf_max=rcvbuf`` for a fixed size.
        netns: a network namespace name, path or fd (see :mod:`nfbind.netns`).
        on_error: verdict for a packet whose handler raised (or returned
            no verdict), or a callable ``on_error(pkt, exc)`` returning it
            (None: as a handler's None); see "Errors in the handler" in the
            NFQUEUE guide.
        verdict_timeout: seconds a packet may wait for its verdict, counted
            from its receive; then it gets ``on_timeout`` (None: no deadline).
        on_timeout: the verdict at the deadline, or a callable
            ``on_timeout(pkt)`` returning it.
        default_verdict: verdict for packets still waiting at ``close()``.
        on_overrun: ``"count"`` (default: count ENOBUFS and warn once) or
            ``"raise"`` (raise :class:`Overrun` from the loop).
        no_enobufs: set NETLINK_NO_ENOBUFS: the kernel stops reporting overruns.

    Raises:
        ValueError, TypeError: an argument out of range, before any syscall.
        PermissionDenied: no CAP_NET_ADMIN.
        QueueBusy: another process (socket) has bound this queue.
        NetlinkError: any other refusal from the kernel.
        FileNotFoundError: ``netns`` does not exist.
    """

    def __init__(
        self,
        queue_num: Union[int, Iterable[int]],
        *,
        copy_mode: Union[CopyMode, int] = CopyMode.PACKET,
        copy_range: int = 0xFFFF,
        max_len: int = 4096,
        fail_open: bool = False,
        conntrack: bool = False,
        gso: Optional[bool] = None,
        uid_gid: bool = False,
        secctx: bool = False,
        rcvbuf: Optional[int] = None,
        rcvbuf_max: Optional[int] = None,
        netns: _netns.NetNS = None,
        on_error: OnError = Verdict.ACCEPT,
        default_verdict: Union[Verdict, int] = Verdict.ACCEPT,
        on_overrun: str = "count",
        no_enobufs: bool = False,
        verdict_timeout: Optional[float] = None,
        on_timeout: OnTimeout = Verdict.ACCEPT,
    ) -> None:
        self._c: Optional[struct_nfb_q] = None
        #: the queue number given, or the tuple of those given
        self.queue_num: Union[int, Tuple[int, ...]]
        self.queue_num, self.queues = queue_list(queue_num)
        self._q0 = self.queues[0]
        self._multi = len(self.queues) > 1
        # with several queues: packets and the highest id taken, by queue
        self._qpackets: Dict[int, int] = dict.fromkeys(self.queues, 0)
        self._tops: Dict[int, int] = {}
        copy_mode = check_int("copy_mode", copy_mode, 0, 255)
        if copy_mode not in {int(m) for m in CopyMode}:
            raise ValueError("copy_mode must be a CopyMode (NONE, META, PACKET), got %r" % copy_mode)
        self._copy_mode = CopyMode(copy_mode)
        self._copy_range = check_int("copy_range", copy_range, 0, 0xFFFF)
        self._max_len = check_int("max_len", max_len, 1, 65536)
        self._gso_auto = gso is None
        if gso is None:
            gso = gso_safe(self._copy_mode, self._copy_range)
        _, flags = flag_bits(False, fail_open=fail_open, conntrack=conntrack, gso=gso,
                             uid_gid=uid_gid, secctx=secctx)
        self._flags = flags
        self.default_verdict = self._check_plain("default_verdict", default_verdict)
        self._init_policies(on_error, verdict_timeout, on_timeout)
        if not isinstance(no_enobufs, bool):
            raise TypeError("no_enobufs must be True or False, not %r" % (no_enobufs,))
        per_pkt = 2048 if self._copy_mode != CopyMode.PACKET else min(self._copy_range, 1500) + 768
        sized = min(max(self._max_len * per_pkt, 1 << 20), 64 << 20)
        rcvbuf = check_int("rcvbuf", sized if rcvbuf is None else rcvbuf, 4096, 1 << 30)
        rcvbuf_max = check_int("rcvbuf_max", max(rcvbuf, sized) if rcvbuf_max is None
                               else rcvbuf_max, 4096, 1 << 30)
        _netns.resolve(netns)  # validate before any socket exists

        self._pending = {}
        self._backlog: List[Packet] = []
        self._npackets = 0
        self._handler_errors = 0
        self._floor = -1
        self._max_id = 0
        self._flight = None
        self._dispatch_thread = None
        self._close_pending = False
        self._send_lock = threading.RLock()
        self._final: Dict[str, int] = {}
        self._ct_glue = False
        self._ct_fallback = False
        self._ctnl = CtLookup(netns, "NfQueue")   # conntrack without the kernel's glue
        self._seen_async = 0
        self._connmarks = []
        self._hot_left = 0      # batches still to fill eagerly (packet.HOT_SPAN)
        # verdicts sent at once (under _send_lock), by verdict number; C
        # counts those that travel with their batch (by_verdict)
        self._vc_sent = [0] * (_MAX_VERDICT + 1)

        self._init_channel(netns=netns, rcvbuf=rcvbuf, on_overrun=on_overrun,
                           no_enobufs=no_enobufs, rcvbuf_max=rcvbuf_max)
        try:
            slot, nslots = self._slots()
            c = lib.nfb_q_new(self._fd, self._q0, slot, nslots)
            if c == ffi.NULL:
                raise MemoryError("allocating the NFQUEUE buffers")
            self._c = ffi.gc(c, lib.nfb_q_free)
            self._configure(cmd=lib.NFQNL_CFG_CMD_BIND, copy_mode=self._copy_mode,
                            copy_range=self._copy_range, max_len=self._max_len,
                            flags_mask=ALL_FLAGS & ~int(QueueFlag.CONNTRACK),
                            flags=self._flags & ~int(QueueFlag.CONNTRACK))
            self._ct_glue = self._probe_ct_glue(conntrack)
            self._ct_fallback = conntrack and not self._ct_glue
        except BaseException:
            self._c = None
            self._abort_open()
            raise

    def _describe(self) -> str:
        return "NfQueue(%s)" % ",".join(map(str, self.queues))

    @property
    def stats(self) -> QueueStats:
        """Live counters: packets, overruns, verdict_errors, pending ..."""
        return QueueStats(self)

    # -- receive and dispatch ------------------------------------------------------

    def _warn_async(self, c: Any) -> None:
        """The kernel refused verdict messages (it answers asynchronously):
        count them, and say so once."""
        first = self._seen_async == 0
        self._seen_async = int(c.rx.async_errors)
        if first:
            import warnings

            err = int(c.rx.last_async_error)
            warnings.warn(
                "%s: the kernel refused %d verdict message(s), last with %s (%s); "
                "ENOENT means a verdict for a packet the kernel no longer holds. "
                "See .stats.verdict_errors." % (
                    self._describe(), self._seen_async, errno.errorcode.get(err, err),
                    os.strerror(err)),
                RuntimeWarning, stacklevel=5)

    def _drain_once(self, handler: Callable[[Packet], Any]) -> int:
        with self._lock:
            if self._closed:
                return 0
            fl = self._flight
            if fl is not None:  # a batch an interruption left unfinished
                return self._resume(handler, fl)
            if self._backlog:
                return self._run_backlog(handler)
            c = self._c
            assert c is not None  # open: checked above, under the lock
            n = self._recv_batch(lib.nfb_q_recv, c)
            if c.rx.async_errors != self._seen_async:
                self._warn_async(c)
            if n == 0:
                return 0
            hot = None
            if self._hot_left and lib.nfb_q_hot(c) == n:
                self._hot_left -= 1
                hot = ffi.buffer(c.hot, n * _HOT.size)[:]
            fl = self._take(c, n)
            if fl is None:
                return -1
            return self._dispatch(handler, fl, hot)

    def _take(self, c: Any, n: int) -> Optional[Flight[NfQueue]]:
        """Keep the batch ``nfb_q_recv`` handed out as the current flight,
        then tell C it was taken; None when it holds only packets already
        taken (an interruption fell between keeping a batch and telling C,
        which then handed it out again)."""
        raw = ffi.buffer(c.rx.recs, n * NF * 4)[:]
        recs = memoryview(raw).cast("I")
        start = 0
        if self._multi:
            start = self._take_multi(recs, n)
        else:
            top = self._top_id()
            while start < n and recs[start * NF + F_ID] <= top:
                start += 1
        if start == n:
            lib.nfb_q_take(c)
            return None
        fl = Flight(ffi.buffer(c.rx.data, c.rx.data_len)[:], raw, self, n,
                    1 if self._pending else 0)
        for i in range(start):
            fl.vbuf[i] = V_DONE
        fl.pos = start
        if self._verdict_timeout is not None:
            fl.t = time.monotonic()
        self._flight = fl
        lib.nfb_q_take(c)
        return fl

    def _take_multi(self, recs: Any, n: int) -> int:
        """With several queues (each numbers its packets): how many records
        at the start of the batch were taken before; count the others and
        keep each queue's highest id."""
        tops = self._tops
        qs = recs[F_QUEUE::NF].tolist()
        ids = recs[F_ID::NF].tolist()
        start = 0
        while start < n and ids[start] <= tops.get(qs[start], 0):
            start += 1
        counts = self._qpackets
        for q, pid in zip(qs[start:], ids[start:]):
            counts[q] = counts.get(q, 0) + 1
            if pid > tops.get(q, 0):
                tops[q] = pid
        return start

    def _resume(self, handler: Callable[[Packet], Any], fl: Flight[NfQueue]) -> int:
        """Go on with a batch an interruption left: the packet being handed
        out without its verdict (or deferral) kept is handed out again."""
        i = fl.cur
        if i >= 0:
            if (fl.vbuf[i] == V_DEFERRED and self._rkey(fl, i) not in self._pending
                    and fl.pos > i):
                fl.pos = i
            fl.cur = -1
        if fl.pos < fl.n:
            return self._dispatch(handler, fl)
        self._finish(fl)
        return -1

    def _dispatch(self, handler: Callable[[Packet], Any], fl: Flight[NfQueue],
                  hot: Optional[bytes] = None) -> int:
        """Hand the packets of ``fl`` from ``fl.pos`` on to the handler, then
        send their verdicts.  An exception that is not an ``Exception``
        (KeyboardInterrupt ...) leaves the batch to the next loop.

        ``hot``: the batch's ``struct nfb_hot`` (nfb_q_hot), for a handler
        that reads the hot fields: each packet is then made with them filled
        in (see nfbind.packet)."""
        if _LOOP is not None:
            return self._dispatch_fast(_LOOP, handler, fl, hot)
        recs = fl.recs
        vbuf = fl.vbuf
        n = fl.n
        pending = self._pending
        floor = self._floor
        plain = PLAIN
        vcls = Verdict
        new = object.__new__
        cls: Any = Packet
        hots = None
        if hot is not None:
            hots = list(_HOT.iter_unpack(hot))
            cls = _HotPacket
            h_mark = _HOT_MARK
            h_indev = _HOT_INDEV
            h_ts = _HOT_TIMESTAMP
        # speed: the ids in one list, constants in locals
        pids = recs[F_ID::NF].tolist()
        # _pending's keys: the ids, with several queues also the queue
        keys = pids if not self._multi else [
            pid | (q << 32) for pid, q in zip(pids, recs[F_QUEUE::NF].tolist())]
        nf = NF
        deferred = V_DEFERRED
        error: Optional[BaseException] = None
        handed = 0
        self._dispatch_thread = threading.get_ident()
        try:
            i = fl.pos
            while i < n:
                if vbuf[i] != deferred:     # settled by a batch verdict meanwhile
                    i += 1
                    fl.pos = i
                    continue
                pid = pids[i]
                if pid <= floor:            # ... by one before it was read
                    vbuf[i] = V_DONE
                    i += 1
                    fl.pos = i
                    continue
                p = new(cls)
                p._b = fl
                p._o = i * nf
                p.id = pid
                if hots is not None:
                    code, hwp, mark, indev, plen, _, ts = hots[i]
                    p.hw_protocol = hwp
                    p.mark = mark if code & h_mark else None
                    p.indev = indev if code & h_indev else None
                    p.payload_len = plen
                    p.timestamp = ts if code & h_ts else None
                fl.cur = i
                fl.pos = i + 1
                handed += 1
                try:
                    v = handler(p)
                except Exception as e:
                    self._handler_errors += 1
                    e2 = self._handler_failed(p, e)
                    if error is None:
                        error = e2
                    fl.cur = -1
                    i += 1
                    continue
                if v is None:
                    if vbuf[i] == deferred:
                        pending[keys[i]] = p
                elif (v.__class__ is vcls or v.__class__ is int) and v in plain \
                        and vbuf[i] == deferred:
                    vbuf[i] = v
                else:
                    e2 = self._result(p, v)
                    if error is None:
                        error = e2
                fl.cur = -1
                i += 1
        finally:
            self._dispatch_thread = None
        return self._dispatched(fl, hots is not None, handed, error)

    def _dispatch_fast(self, loop: Any, handler: Callable[[Packet], Any], fl: Flight[NfQueue],
                       hot: Optional[bytes]) -> int:
        """_dispatch with the compiled loop, which keeps the results that are
        None or a plain verdict and returns here at a packet whose handler
        raised or returned anything else; that packet is handled as in the
        Python loop, then the compiled loop goes on."""
        pending = self._pending
        floor = self._floor
        multi = self._multi
        error: Optional[BaseException] = None
        handed = 0
        self._dispatch_thread = threading.get_ident()
        try:
            while True:
                k, p, v, exc = loop.run(handler, fl, pending, floor, multi, hot)
                handed += k
                if p is None:
                    break
                if exc is not None:
                    self._handler_errors += 1
                    try:    # handled as where the handler raised it
                        raise exc
                    except Exception as e:
                        e2 = self._handler_failed(p, e)
                else:
                    e2 = self._result(p, v)
                if error is None:
                    error = e2
                fl.cur = -1
        finally:
            self._dispatch_thread = None
        return self._dispatched(fl, hot is not None, handed, error)

    def _dispatched(self, fl: Flight[NfQueue], hot: bool, handed: int,
                    error: Optional[BaseException]) -> int:
        """The end of both dispatch loops: whether the next batches are made
        with the hot fields filled (from the lazy reads of this one), the
        verdicts sent, the first handler error raised; ``drain()``'s count
        (-1: none handed out)."""
        if not hot and handed and fl.reads >= HOT_READS * handed:
            self._hot_left = HOT_SPAN - 1
        self._finish(fl)
        if error is not None:
            raise error
        return handed or -1

    def _result(self, p: Packet, v: Any) -> Optional[BaseException]:
        """What the handler returned for ``p`` (not None), off the fast path:
        any int-like verdict value (not a bool, as for ``pkt.verdict()``)
        is the packet's verdict; anything else is a handler error (counted,
        ``on_error`` for the packet unless it has its verdict).  Returns the
        exception ``run()`` raises for it, or None."""
        try:
            ok = not isinstance(v, bool) and check_int("verdict", v, 0, _U32_MAX) in PLAIN
        except (TypeError, ValueError):
            ok = False
        if ok and not p.has_verdict:
            self._verdict(p, int(v), None, None, None)
            return None
        self._handler_errors += 1
        if ok:
            return VerdictError(
                "the handler returned %r for packet %d, which already has its verdict: "
                "return None after calling pkt.accept()/drop()" % (v, p.id))
        exc = TypeError if isinstance(v, bool) or not isinstance(v, int) else ValueError
        return self._handler_failed(p, exc(
            "the handler returned %r (%s) for packet %d, which is no verdict: return "
            "Verdict.ACCEPT, DROP, REPEAT or STOP (True and False are not verdicts), or "
            "None and give the verdict with pkt.accept()/drop()/queue(n); the packet "
            "got %s" % (v, type(v).__name__, p.id, self._on_error_name())))

    def _finish(self, fl: Flight[NfQueue]) -> None:
        """Send the verdicts of ``fl`` decided and not sent; forget the batch
        once every packet of it was handed out."""
        rc = self._settle(fl)
        if fl.pos >= fl.n and self._flight is fl:
            if fl.last > self._max_id:
                self._max_id = fl.last
            self._flight = None
            if self._verdict_timeout is not None:
                self._watch(fl)
        error: Optional[BaseException] = None
        if self._connmarks:
            try:
                self._apply_connmarks()
            except NetlinkError as e:
                error = e
        if self._close_pending:
            self._close_pending = False
            self._finish_close()
        if rc < 0:
            raise error_from_errno(-rc, "sending verdicts to %s" % self._describe())
        if error is not None:
            raise error

    def _run_backlog(self, handler: Callable[[Packet], Any]) -> int:
        """Hand out the packets an iteration left (they are waiting in
        ``_pending``), one by one: each leaves the backlog once its handler
        returned and its result was kept."""
        bl = self._backlog
        error: Optional[BaseException] = None
        handed = 0
        self._dispatch_thread = threading.get_ident()
        try:
            while bl:
                p = bl[0]
                if p.has_verdict:
                    del bl[0]
                    continue
                handed += 1
                try:
                    v = handler(p)
                    if v is not None:
                        e2 = self._result(p, v)
                        if e2 is not None:
                            error = error or e2
                except Exception as e:
                    self._handler_errors += 1
                    e2 = self._handler_failed(p, e)
                    error = error or e2
                del bl[0]
        finally:
            self._dispatch_thread = None
        if error is not None:
            raise error
        return handed or -1

    def _packet_at(self, fl: Flight[NfQueue], i: int) -> Packet:
        """The Packet of entry ``i`` of ``fl``: the one handed out if it is
        waiting, else a new one."""
        o = i * NF
        pid = fl.recs[o + F_ID]
        p = self._pending.get(self._rkey(fl, i))
        if isinstance(p, Packet) and p._b is fl:
            return p
        p = Packet(fl, o, pid)
        return p

    # -- shutdown -----------------------------------------------------------------------

    def close(self) -> None:
        """Give every packet still waiting the default verdict, unbind, close.

        Packets already in the socket are read and settled too.  First the
        queue stops taking packets (max_len 0), so one that arrives while it
        closes meets the default verdict in the kernel (accepted through
        fail-open, or dropped and counted) and the unbind, which drops what
        the queue still holds, finds nothing.  Safe to call
        twice, from any thread, and from inside the handler (the queue closes
        once the current batch is done).
        """
        if self._closed:
            return
        if self._dispatch_thread == threading.get_ident():
            self._close_pending = True
            self.stop()
            return
        super().close()

    def _finish_close(self) -> None:
        Channel.close(self)

    def _close_channel(self) -> None:
        if self._c is None:
            return
        c = self._c
        try:
            if self._inherited():
                # another process bound the queue (this one was forked from
                # it): its packets and its binding are that process's
                return
            with self._send_lock:
                self._settle_all(c)
            self._unbind(self.queues)
        finally:
            self._ctnl.close()
            self._final = {
                "packets": int(c.packets),
                "overruns": int(c.rx.overruns), "verdict_errors": int(c.rx.async_errors),
                "batch_verdicts": int(c.batch_verdicts), "recv_calls": int(c.rx.recv_calls),
                "send_calls": int(c.rx.send_calls), "malformed": int(c.rx.malformed),
            }
            for i in range(_MAX_VERDICT + 1):
                self._final["by_verdict_%d" % i] = int(c.by_verdict[i])
            self._c = None

    def _settle_all(self, c: Any) -> None:
        """close(): send the verdicts handlers decided, stop the queue taking
        packets, read what it holds, and give every packet still without a
        verdict the default one."""
        v = int(self.default_verdict)
        fl = self._flight
        if fl is not None:
            self._settle(fl)
        # stop the kernel queueing more: with max_len 0 a new packet finds
        # the queue full and meets the default verdict there (accepted through
        # fail-open, or dropped and counted), instead of being queued after
        # the last read and dropped unseen by the unbind
        cfg = ffi.new("struct nfb_qcfg *")
        cfg.copy_mode = -1
        cfg.max_len = 0
        if v in (core.NF_ACCEPT, core.NF_STOP):
            cfg.flags_mask = cfg.flags = int(QueueFlag.FAIL_OPEN)
        self._config_each(cfg, 500)
        # read what is already queued to us, so every id is known (nfb_q_take
        # counts them and keeps the highest id; with several queues, so does
        # _take_multi, queue by queue)
        settled = 0
        for _ in range(1024):
            n = lib.nfb_q_recv(c)
            if n == -errno.ENOBUFS:
                continue
            if n < 0 or (n == 0 and not c.rx.data_len):
                break
            if self._multi and n > 0:
                recs = memoryview(ffi.buffer(c.rx.recs, n * NF * 4)[:]).cast("I")
                settled += n - self._take_multi(recs, n)
                lib.nfb_q_take(c)
            else:
                settled += lib.nfb_q_take(c)
        tops = self._tops if self._multi else {self._q0: self._top_id()}
        for p in self._pending.values():
            vb = p._b.vbuf
            if vb[p._o // NF] == V_DEFERRED:
                vb[p._o // NF] = V_CLOSED
                settled += 1
        if fl is not None:
            vb = fl.vbuf
            for i in range(fl.n):
                if vb[i] == V_DEFERRED:
                    vb[i] = V_CLOSED
                    settled += 1
        lib.nfb_q_flush(c)
        sent = False
        for qn, top in tops.items():
            if top > max(self._floor, 0):
                sent |= lib.nfb_q_send_verdict(self._fd, qn, top, v, lib.NFB_VF_BATCH, 0, 0,
                                               ffi.NULL, 0) >= 0
        if sent:
            self._vc_sent[v & _VERDICT_MASK] += settled
        self._closed = True
        self._pending.clear()
        self._backlog.clear()
        self._flight = None
        self._dl_fifo.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return "<nfbind.NfQueue %s %s>" % (",".join(map(str, self.queues)), state)
