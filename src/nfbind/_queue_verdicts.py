# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's verdicts: checking what comes with one, buffering it with its
batch or sending it at once, the kernel's batch verdict, and connection marks
set over ctnetlink where the kernel cannot set them itself.

:class:`QueueVerdicts` is a base class of :class:`nfbind.NfQueue`; it works
on the state NfQueue sets up and its receive loop keeps: the packets waiting
for a verdict (``_pending``), and while a batch is dispatched, that batch and
its verdict buffer (``_cur_batch``, ``_cur_vbuf``: one int64 per packet, a
verdict or V_DEFERRED/V_DONE).
"""
from __future__ import annotations

import errno
import threading
from array import array
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, Protocol, Tuple, Union

from ._channel import Channel, P
from ._netlink import check_int
from ._core import lib as core
from ._nfqueue import ffi, lib
from .conntrack.labels import LABEL_HINT, MAX_LABEL, label_bits, labels_bytes
from .enums import Verdict
from .errors import VerdictError, error_from_errno
from .packet import NF, Batch

if TYPE_CHECKING:  # pragma: no cover
    from ._nfqueue import struct_nfb_q
    from .conntrack._lookup import CtLookup
    from .packet import PacketSource

#: the largest payload a verdict can carry (an NFQA_PAYLOAD attribute's limit)
MAX_PAYLOAD: int = lib.NFB_MAX_PAYLOAD

_U32_MAX = 0xFFFFFFFF
#: verdict buffer slots: the packet already has its verdict (sent or
#: buffered), or has none yet (the user gives it later)
V_DONE = lib.NFB_V_DONE
V_DEFERRED = lib.NFB_V_DEFERRED
_VF_MARK = lib.NFB_VF_MARK
_VF_CONNMARK = lib.NFB_VF_CONNMARK
_VF_PAYLOAD = lib.NFB_VF_PAYLOAD
_VF_LABELS = lib.NFB_VF_LABELS
#: the mask of the labels a verdict sets: all of them are replaced
_ALL_LABELS = labels_bytes(range(MAX_LABEL + 1))
F_ID = core.NFB_F_ID
_VERDICT_MASK = lib.NF_VERDICT_MASK
#: the verdicts a handler may return (or give with pkt.verdict())
PLAIN = frozenset(int(v) for v in (Verdict.ACCEPT, Verdict.DROP, Verdict.REPEAT, Verdict.STOP))

#: Packet._state: waiting for its verdict, verdict given, settled by close()
OPEN, DONE, CLOSED = 0, 1, 2


def _check_mark(name: str, value: Any) -> int:
    return check_int(name, value, 0, _U32_MAX)


def _payload_bytes(payload: Any) -> bytes:
    """bytes-like: as given; a scapy packet: rebuilt with lengths and checksums
    recomputed."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif hasattr(payload, "fields_desc") and hasattr(payload, "build"):
        pkt = payload.copy()
        layer = pkt
        while layer is not None and hasattr(layer, "fields_desc"):
            for f in layer.fields_desc:
                if f.name in ("len", "chksum", "plen", "cksum"):
                    setattr(layer, f.name, None)
            nxt = layer.payload  # scapy's NoPayload is its own payload: stop there
            layer = nxt if nxt is not layer and hasattr(nxt, "fields_desc") else None
        data = bytes(pkt)
    else:
        raise TypeError(
            "payload must be bytes, bytearray, memoryview or a scapy packet, not %s"
            % type(payload).__name__
        )
    if len(data) > MAX_PAYLOAD:
        raise ValueError(
            "payload is %d bytes; a verdict carries at most %d (the netlink "
            "attribute limit)" % (len(data), MAX_PAYLOAD)
        )
    return data


class QueuedPacket(Protocol):
    """What the verdict machinery uses of a :class:`nfbind.Packet`."""

    id: int
    _state: int
    _o: int

    @property
    def _b(self) -> Batch[PacketSource]: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def payload_len(self) -> int: ...

    @property
    def csum_notready(self) -> bool: ...


class QueueVerdicts(Channel[P]):
    """The verdict machinery of :class:`nfbind.NfQueue`."""

    queue_num: int
    default_verdict: Verdict
    _c: Optional[struct_nfb_q]
    _ct_glue: bool
    _pending: Dict[int, QueuedPacket]
    _floor: int
    _max_id: int
    _cur_batch: Optional[Batch[PacketSource]]
    _cur_vbuf: Optional[array[int]]
    _cur_older: int
    _dispatch_thread: Optional[int]
    _send_lock: Any
    #: connection marks and labels to set over ctnetlink once the verdicts
    #: are sent: (packet id, payload, connmark or None, labels or None)
    _connmarks: List[Tuple[int, bytes, Optional[int], Optional[FrozenSet[int]]]]
    _ctnl: "CtLookup"
    #: verdicts counted here, by verdict number (the batch path counts in C)
    _vc_handler: List[int]
    _vc_sent: List[int]

    @staticmethod
    def _check_plain(name: str, v: Any) -> Verdict:
        v = check_int(name, v, 0, _U32_MAX)
        if v not in PLAIN:
            raise ValueError("%s must be Verdict.ACCEPT, DROP, REPEAT or STOP, got %r" % (name, v))
        return Verdict(v)

    def _verdict(self, p: QueuedPacket, v: int, mark: Optional[int], connmark: Optional[int],
                 payload: Any, labels: Any = None) -> None:
        vflags = 0
        m = cm = 0
        data = None
        lb: Optional[FrozenSet[int]] = None
        lraw: Any = ffi.NULL
        if mark is not None:
            m = _check_mark("mark", mark)
            vflags |= _VF_MARK
        if connmark is not None:
            cm = _check_mark("connmark", connmark)
            vflags |= _VF_CONNMARK
        if labels is not None:
            lb = label_bits("labels", labels)
            lraw = labels_bytes(lb) + _ALL_LABELS
            vflags |= _VF_LABELS
        if (connmark is not None or lb is not None) and not self._ct_glue and not p.payload_len:
            raise ValueError(
                "%s needs the packet's headers: use copy_mode=CopyMode.PACKET with "
                "copy_range >= 60" % ("connmark" if connmark is not None else "labels"))
        ct_later = (connmark is not None or lb is not None) and not self._ct_glue
        if payload is not None:
            data = _payload_bytes(payload)
            vflags |= _VF_PAYLOAD
            if p.csum_notready:
                # the kernel takes a new payload's checksums as final
                # (CHECKSUM_NONE), but this packet's were left to the device
                buf = bytearray(data)
                if core.nfb_l4_csum_fill(ffi.from_buffer(buf), len(buf)):
                    data = bytes(buf)
        # the C calls below take these as they are: no Python call may stand
        # between marking the packet settled and queueing its verdict, since a
        # KeyboardInterrupt (raised only at calls and loops) falling there
        # would leave the packet with no verdict at all
        dptr = data if data is not None else ffi.NULL
        dlen = len(data) if data is not None else 0
        if p._state != OPEN:
            if p._state == CLOSED:
                raise VerdictError(
                    "packet %d: its queue was closed and it got the default verdict "
                    "(%s)" % (p.id, Verdict(self.default_verdict).name))
            raise VerdictError("packet %d already has its verdict; each packet gets "
                               "exactly one" % p.id)
        if self._closed:
            raise VerdictError("queue %d is closed" % self.queue_num)
        if (self._dispatch_thread == threading.get_ident() and p._b is self._cur_batch
                and self._cur_vbuf is not None):
            # inside the handler: travels with the batch
            i = p._o // NF
            p._state = DONE
            self._pending.pop(p.id, None)
            if not vflags:
                self._cur_vbuf[i] = v
                return
            self._flush_before(i)  # keep the kernel's reinjection in call order
            self._cur_vbuf[i] = V_DONE
            assert self._c is not None  # a batch is being dispatched: open
            rc = lib.nfb_q_put_verdict_ct(self._c, p.id, v, vflags, m, cm, lraw, dptr, dlen)
            if rc >= 0:
                self._vc_handler[v & _VERDICT_MASK] += 1
            if rc >= 0 and ct_later:
                self._connmarks.append((p.id, p.payload, connmark, lb))
        else:
            with self._send_lock:
                if self._closed:
                    raise VerdictError("queue %d is closed" % self.queue_num)
                if p._state != OPEN:
                    raise VerdictError("packet %d already has its verdict" % p.id)
                p._state = DONE
                rc = lib.nfb_q_send_verdict_ct(self._fd, self.queue_num, p.id, v, vflags, m,
                                               cm, lraw, dptr, dlen)
                self._pending.pop(p.id, None)
                if rc >= 0:
                    self._vc_sent[v & _VERDICT_MASK] += 1
            if rc >= 0 and ct_later:
                self._connmarks.append((p.id, p.payload, connmark, lb))
                self._apply_connmarks()
        if rc < 0:
            raise error_from_errno(-rc, "sending the verdict of packet %d" % p.id)

    def _flush_before(self, i: int) -> None:
        """Buffer the plain verdicts already given to packets 0..i-1 of the
        current batch, so that a verdict with a mark or payload does not
        overtake them."""
        vbuf = self._cur_vbuf
        assert vbuf is not None
        if i == 0:
            return
        assert self._c is not None  # a batch is being dispatched: open
        rc = lib.nfb_q_put_verdicts(self._c, ffi.from_buffer("int64_t[]", vbuf), i,
                                    self._cur_older)
        if rc < 0:
            raise error_from_errno(-rc, "sending verdicts to queue %d" % self.queue_num)
        for k in range(i):
            if vbuf[k] >= 0:
                vbuf[k] = V_DONE

    def verdict_batch(self, up_to_id: int, verdict: Union[Verdict, int] = Verdict.ACCEPT,
                      mark: Optional[int] = None) -> int:
        """Give ``verdict`` to every waiting packet with id <= ``up_to_id``.

        One message (the kernel's NFQNL_MSG_VERDICT_BATCH) covers them all.
        Packets not received yet are left to the handler, whatever their id.
        Returns how many received packets it settled.
        """
        self._check_open()
        up_to_id = check_int("up_to_id", up_to_id, 0, _U32_MAX)
        v = self._check_plain("verdict", verdict)
        vflags = lib.NFB_VF_BATCH
        m = 0
        if mark is not None:
            m = _check_mark("mark", mark)
            vflags |= _VF_MARK
        settled = 0
        with self._lock, self._send_lock:
            # the kernel settles the ids up to up_to_id it holds, comparing
            # them modulo 2**32: an id beyond the last one received would leave
            # later packets to the kernel's batch (or, 2**31 ahead, settle
            # none) while they are taken as settled here, so stop at that one
            top = self._max_id
            if self._cur_batch is not None and self._cur_vbuf is not None:
                top = max(top, self._cur_batch.recs[(len(self._cur_vbuf) - 1) * NF + F_ID])
            up_to_id = min(up_to_id, top)
            for pid in [pid for pid in self._pending if pid <= up_to_id]:
                self._pending.pop(pid)._state = DONE
                settled += 1
            marked = 0
            if self._cur_vbuf is not None and self._cur_batch is not None:
                recs = self._cur_batch.recs
                for i in range(len(self._cur_vbuf)):
                    if self._cur_vbuf[i] == V_DEFERRED and recs[i * NF + F_ID] <= up_to_id:
                        self._cur_vbuf[i] = V_DONE
                        marked += 1
            self._floor = max(self._floor, up_to_id)
            assert self._c is not None
            rc = lib.nfb_q_flush(self._c)
            # with no waiting packet up to the id the kernel holds none either:
            # it would answer ENOENT (a refused verdict)
            if rc >= 0 and (settled or marked):
                rc = lib.nfb_q_send_verdict(self._fd, self.queue_num, up_to_id, v, vflags,
                                            m, 0, ffi.NULL, 0)
                if rc >= 0:
                    self._vc_sent[int(v)] += settled + marked
        if rc < 0:
            raise error_from_errno(-rc, "sending a batch verdict to queue %d" % self.queue_num)
        return settled

    def _apply_connmarks(self) -> None:
        """Set the connection marks and labels asked for with
        accept(connmark=..., labels=...) once their verdicts were sent (the
        connection is confirmed by then)."""
        todo, self._connmarks = self._connmarks, []
        first: Optional[BaseException] = None
        for pid, payload, mark, labels in todo:
            rc = self._ctnl.set(payload, mark=mark, labels=labels)
            if rc < 0 and first is None:
                what = " and ".join(w for w, x in (("mark", mark), ("labels", labels))
                                    if x is not None)
                hint = None
                if rc == -errno.ENOENT:
                    hint = ("the packet's connection is not tracked: add a rule that uses "
                            "conntrack in this namespace (e.g. -m conntrack --ctstate "
                            "NEW,ESTABLISHED)")
                elif rc == -errno.ENOSPC and labels is not None:
                    what = "labels"     # the kernel sets a mark before it refuses labels
                    bit = min(labels) if labels else 0
                    hint = LABEL_HINT % (bit, bit)
                first = error_from_errno(
                    -rc, "setting the connection %s of packet %d (its verdict was given)"
                    % (what, pid), hint=hint)
        if first is not None:
            raise first
