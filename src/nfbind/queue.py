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

This module holds the packets and the receive loop; NfQueue's configuration
is in ``_queue_config.py``, its verdict machinery in ``_queue_verdicts.py``.
"""
from __future__ import annotations

import errno
import os
import threading
from array import array
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Union

from ._channel import Channel, ChannelStats, c_counter
from ._channels import missing
from ._core import lib as core

try:
    from ._nfqueue import ffi, lib
except ImportError as e:  # the NFQUEUE channel was not built on this machine
    raise missing("nfqueue", "nfbind.queue") from e
from . import netns as _netns
from ._queue_config import ALL_FLAGS, QueueConfig, flag_bits, gso_safe
from ._queue_verdicts import (CLOSED, DONE, F_ID, MAX_PAYLOAD, OPEN, PLAIN, V_DEFERRED, V_DONE,
                              QueueVerdicts)
from .enums import CopyMode, QueueFlag, Verdict
from .errors import NetlinkError, VerdictError, error_from_errno
from ._netlink import check_int
from .conntrack._lookup import CtLookup
from .packet import NF, Batch, PacketBase, blob, field

if TYPE_CHECKING:  # pragma: no cover
    from ._nfqueue import struct_nfb_q

__all__ = ["NfQueue", "Packet", "QueueStats", "MAX_PAYLOAD"]

_U32_MAX = 0xFFFFFFFF
_MAX_VERDICT = lib.NF_MAX_VERDICT
_VERDICT_MASK = lib.NF_VERDICT_MASK


class QueueStats(ChannelStats):
    """Counters of one NfQueue (read live)."""

    __slots__ = ()
    _ch: NfQueue
    _NAMES = ("packets", "overruns", "verdict_errors", "handler_errors",
              "batch_verdicts", "recv_calls", "send_calls", "pending")

    verdict_errors = c_counter(
        "async_errors", "Verdicts the kernel refused (e.g. for an id it no longer holds).",
        key="verdict_errors")
    batch_verdicts = c_counter(
        "batch_verdicts", "Kernel batch verdicts sent for runs of equal verdicts.", rx=False)
    send_calls = c_counter("send_calls", "Send syscalls made for verdicts and configuration.")

    @property
    def pending(self) -> int:
        """Packets received that still wait for their verdict."""
        return len(self._ch._pending)

    @property
    def verdicts(self) -> Dict[Verdict, int]:
        """Verdicts given so far, by verdict (every :class:`Verdict`, zeros
        included; ``QUEUE`` whatever the target queue): returned by the
        handler, given by the packet's methods, by :meth:`NfQueue.verdict_batch`
        and by ``close()``.  A packet the handler failed on counts under
        ``on_error``'s verdict."""
        ch = self._ch
        c = ch._c
        out = {}
        for v in Verdict:
            i = int(v)
            n = ch._final.get("by_verdict_%d" % i, 0) if c is None else int(c.by_verdict[i])
            out[v] = n + ch._vc_handler[i] + ch._vc_sent[i]
        return out


class Packet(PacketBase):
    """A packet held by the kernel until it gets its verdict.

    Give exactly one verdict: return it from the handler, or call one of
    :meth:`accept`, :meth:`drop`, :meth:`repeat`, :meth:`queue` — inside the
    handler, or later from any thread while the queue is open.  A second
    verdict raises :class:`VerdictError`.
    """

    __slots__ = ("id", "_state")

    id: int
    _state: int
    _b: Batch[NfQueue]

    def __init__(self, b: Batch[NfQueue], o: int, pid: int) -> None:
        self._b = b
        self._o = o
        self.id = pid
        self._state = OPEN

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
        return self._state != OPEN

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
            self.id, self._repr_fields(), "" if self._state == OPEN else " (verdict given)")


class NfQueue(QueueConfig[Packet], QueueVerdicts[Packet]):
    """A netlink socket bound to one NFQUEUE queue.

    Args:
        queue_num: 0..65535, the ``--queue-num`` of the rule.
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
        on_error: verdict for a packet whose handler raised.
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
        queue_num: int,
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
        on_error: Union[Verdict, int] = Verdict.ACCEPT,
        default_verdict: Union[Verdict, int] = Verdict.ACCEPT,
        on_overrun: str = "count",
        no_enobufs: bool = False,
    ) -> None:
        self._c: Optional[struct_nfb_q] = None
        self.queue_num = check_int("queue_num", queue_num, 0, 0xFFFF)
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
        self.on_error = self._check_plain("on_error", on_error)
        self.default_verdict = self._check_plain("default_verdict", default_verdict)
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
        self._cur_batch = None
        self._cur_vbuf = None
        self._cur_older = 0
        self._dispatch_thread = None
        self._close_pending = False
        self._send_lock = threading.RLock()
        self._final: Dict[str, int] = {}
        self._ct_glue = False
        self._ct_fallback = False
        self._ctnl = CtLookup(netns, "NfQueue")   # conntrack without the kernel's glue
        self._seen_async = 0
        self._connmarks = []
        # verdicts counted outside the C batch path (where nfb_q_put_verdicts
        # counts them), by verdict number: given in the dispatching thread
        # with a mark or payload, and sent under _send_lock
        self._vc_handler = [0] * (_MAX_VERDICT + 1)
        self._vc_sent = [0] * (_MAX_VERDICT + 1)

        self._init_channel(netns=netns, rcvbuf=rcvbuf, on_overrun=on_overrun,
                           no_enobufs=no_enobufs, rcvbuf_max=rcvbuf_max)
        try:
            slot, nslots = self._slots()
            c = lib.nfb_q_new(self._fd, self.queue_num, slot, nslots)
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
        return "NfQueue(%d)" % self.queue_num

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
                "queue %d: the kernel refused %d verdict message(s), last with %s (%s); "
                "ENOENT means a verdict for a packet the kernel no longer holds. "
                "See .stats.verdict_errors." % (
                    self.queue_num, self._seen_async, errno.errorcode.get(err, err),
                    os.strerror(err)),
                RuntimeWarning, stacklevel=5)

    def _drain_once(self, handler: Callable[[Packet], Any]) -> int:
        with self._lock:
            if self._closed:
                return 0
            if self._backlog:
                return self._run_backlog(handler)
            c = self._c
            assert c is not None  # open: checked above, under the lock
            n = self._recv_batch(lib.nfb_q_recv, c)
            if c.rx.async_errors != self._seen_async:
                self._warn_async(c)
            if n == 0:
                return 0
            b = Batch(ffi.buffer(c.rx.data, c.rx.data_len)[:],
                      memoryview(ffi.buffer(c.rx.recs, n * NF * 4)[:]).cast("I"), self)
            self._npackets += n
            return self._dispatch(handler, b, n)

    def _dispatch(self, handler: Callable[[Packet], Any], b: Batch[NfQueue], n: int) -> int:
        recs = b.recs
        vbuf = array("q", [V_DEFERRED]) * n
        pending = self._pending
        older = 1 if pending else 0
        floor = self._floor
        plain = PLAIN
        new = object.__new__
        error: Optional[BaseException] = None
        self._cur_batch = b
        self._cur_vbuf = vbuf
        self._cur_older = older
        self._dispatch_thread = threading.get_ident()
        i = 0
        try:
            for i in range(n):
                o = i * NF
                pid = recs[o + F_ID]
                if pid <= floor:
                    vbuf[i] = V_DONE
                    continue
                p = new(Packet)
                p._b = b
                p._o = o
                p.id = pid
                p._state = OPEN
                try:
                    v = handler(p)
                except Exception as e:
                    self._handler_errors += 1
                    if error is None:
                        error = e
                    if p._state == OPEN:
                        p._state = DONE
                        vbuf[i] = int(self.on_error)
                    continue
                if v is None:
                    if p._state == OPEN:
                        pending[pid] = p
                elif p._state == OPEN and v in plain:
                    p._state = DONE
                    vbuf[i] = v
                else:
                    self._handler_errors += 1
                    if p._state == OPEN:
                        p._state = DONE
                        vbuf[i] = int(self.on_error)
                        if error is None:
                            error = ValueError(
                                "the handler returned %r for packet %d: return a "
                                "Verdict (ACCEPT, DROP, REPEAT, STOP) or None and "
                                "call pkt.accept()/drop()/queue(n)" % (v, pid))
                    elif error is None:
                        error = VerdictError(
                            "the handler returned %r for packet %d, which already "
                            "has its verdict: return None after calling "
                            "pkt.accept()/drop()" % (v, pid))
        except BaseException as e:
            # KeyboardInterrupt and the like: the packet being handled gets
            # on_error; the rest of the batch waits for the next run().
            error = e
            cur = recs[i * NF + F_ID]
            if vbuf[i] == V_DEFERRED and cur not in pending:
                vbuf[i] = int(self.on_error)
            for j in range(i + 1, n):
                o = j * NF
                pid = recs[o + F_ID]
                if pid > floor:
                    p = Packet(b, o, pid)
                    pending[pid] = p
                    self._backlog.append(p)
        finally:
            self._dispatch_thread = None
            self._cur_batch = None
            self._cur_vbuf = None
            last = recs[(n - 1) * NF + F_ID]
            if last > self._max_id:
                self._max_id = last
            c = self._c
            assert c is not None  # close() waits for the dispatch (_close_pending)
            rc = lib.nfb_q_put_verdicts(c, ffi.from_buffer("int64_t[]", vbuf), n, older)
            if rc >= 0:
                rc = lib.nfb_q_flush(c)
            if self._connmarks:
                try:
                    self._apply_connmarks()
                except NetlinkError as e:
                    if error is None:
                        error = e
            if self._close_pending:
                self._close_pending = False
                self._finish_close()
        if rc < 0 and not isinstance(error, KeyboardInterrupt):
            raise error_from_errno(-rc, "sending verdicts to queue %d" % self.queue_num)
        if error is not None:
            raise error
        return n

    def _run_backlog(self, handler: Callable[[Packet], Any]) -> int:
        todo, self._backlog = self._backlog, []
        error = None
        for k, p in enumerate(todo):
            if p._state != OPEN:
                continue
            try:
                v = handler(p)
                if v is not None:
                    if p._state == OPEN:
                        self._verdict(p, self._check_plain("handler result", v), None, None, None)
                    else:
                        raise VerdictError("packet %d already has its verdict" % p.id)
            except Exception as e:
                self._handler_errors += 1
                if p._state == OPEN:
                    self._verdict(p, int(self.on_error), None, None, None)
                error = error or e
            except BaseException:
                self._backlog = todo[k + 1:] + self._backlog
                if p._state == OPEN:
                    self._verdict(p, int(self.on_error), None, None, None)
                raise
        if error is not None:
            raise error
        return len(todo)

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
        v = int(self.default_verdict)
        try:
            with self._send_lock:
                # stop the kernel queueing more: with max_len 0 a new packet
                # finds the queue full and meets the default verdict there
                # (accepted through fail-open, or dropped and counted), instead
                # of being queued after the last read and dropped unseen by
                # the unbind
                cfg = ffi.new("struct nfb_qcfg *")
                cfg.copy_mode = -1
                cfg.max_len = 0
                if v in (core.NF_ACCEPT, core.NF_STOP):
                    cfg.flags_mask = cfg.flags = int(QueueFlag.FAIL_OPEN)
                lib.nfb_q_config(c, cfg, 500, ffi.new("int *"))
                # read what is already queued to us, so every id is known
                unread = 0
                for _ in range(1024):
                    n = lib.nfb_q_recv(c)
                    if n == -errno.ENOBUFS:
                        continue
                    if n < 0 or (n == 0 and not c.rx.data_len):
                        break
                    if n == 0:  # error replies only: read on
                        continue
                    recs = memoryview(ffi.buffer(c.rx.recs, n * NF * 4)[:]).cast("I")
                    last = recs[(n - 1) * NF + F_ID]
                    self._npackets += n
                    unread += n
                    if last > self._max_id:
                        self._max_id = last
                settled = len(self._pending)
                for p in self._pending.values():
                    p._state = CLOSED
                self._pending.clear()
                self._backlog.clear()
                lib.nfb_q_flush(c)
                if self._max_id > max(self._floor, 0):
                    lib.nfb_q_send_verdict(self._fd, self.queue_num, self._max_id, v,
                                           lib.NFB_VF_BATCH, 0, 0, ffi.NULL, 0)
                    self._vc_sent[v & _VERDICT_MASK] += settled + unread
                self._closed = True
            cfg = ffi.new("struct nfb_qcfg *")
            cfg.cmd = lib.NFQNL_CFG_CMD_UNBIND
            cfg.copy_mode = -1
            cfg.max_len = -1
            lib.nfb_q_config(c, cfg, 500, ffi.new("int *"))
        finally:
            self._ctnl.close()
            self._final = {
                "overruns": int(c.rx.overruns), "verdict_errors": int(c.rx.async_errors),
                "batch_verdicts": int(c.batch_verdicts), "recv_calls": int(c.rx.recv_calls),
                "send_calls": int(c.rx.send_calls),
            }
            for i in range(_MAX_VERDICT + 1):
                self._final["by_verdict_%d" % i] = int(c.by_verdict[i])
            self._c = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return "<nfbind.NfQueue %d %s>" % (self.queue_num, state)
