# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's verdicts: checking what comes with one, keeping it with its
batch or sending it at once, the kernel's batch verdict, and connection marks
set over ctnetlink where the kernel cannot set them itself.

Every received batch is a :class:`Flight`: its packet records and one int64
verdict slot per packet (``vbuf``), the one place that says whether a packet
has its verdict.  A slot holds a verdict decided and not yet queued, or
V_DONE (queued or sent), V_DEFERRED (none yet), V_CLOSED (close() gave it
the default verdict) or V_TIMEOUT (on_timeout at its deadline).  Only C calls move a slot to V_DONE, in the same call
that queues or sends its verdict (``nfb_q_settle``, ``nfb_q_put_verdict_at``,
and ``nfb_q_send_verdict_at``, which also tests the slot atomically), so a
KeyboardInterrupt, which Python raises only between bytecodes, can never fall
between a verdict being taken as given and its being on its way: a decided
verdict stays in its slot until the next entry point (the loop, a batch
verdict, close()) sends it, and is never sent twice.

:class:`QueueVerdicts` is a base class of :class:`nfbind.NfQueue`; it works
on the state NfQueue's receive loop keeps: the packets handed out without a
verdict (``_pending``) and the batch being dispatched (``_flight``).
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
from .packet import NF, Batch, C

if TYPE_CHECKING:  # pragma: no cover
    from ._nfqueue import struct_nfb_q
    from .conntrack._lookup import CtLookup
    from .packet import PacketSource

#: the largest payload a verdict can carry (an NFQA_PAYLOAD attribute's limit)
MAX_PAYLOAD: int = lib.NFB_MAX_PAYLOAD

_U32_MAX = 0xFFFFFFFF
#: verdict slots: has its verdict (queued or sent), has none yet, was given
#: the default verdict by close()
V_DONE = lib.NFB_V_DONE
V_DEFERRED = lib.NFB_V_DEFERRED
V_CLOSED = lib.NFB_V_CLOSED
#: ... was given on_timeout at its deadline (verdict_timeout)
V_TIMEOUT = lib.NFB_V_TIMEOUT
_VF_MARK = lib.NFB_VF_MARK
_VF_CONNMARK = lib.NFB_VF_CONNMARK
_VF_PAYLOAD = lib.NFB_VF_PAYLOAD
_VF_LABELS = lib.NFB_VF_LABELS
#: the mask of the labels a verdict sets: all of them are replaced
_ALL_LABELS = labels_bytes(range(MAX_LABEL + 1))
_EALREADY = errno.EALREADY
F_ID = core.NFB_F_ID
F_QUEUE = core.NFB_F_QUEUE
_VERDICT_MASK = lib.NF_VERDICT_MASK
#: the verdicts a handler may return (or give with pkt.verdict())
PLAIN = frozenset(int(v) for v in (Verdict.ACCEPT, Verdict.DROP, Verdict.REPEAT, Verdict.STOP))


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


class Flight(Batch[C]):
    """One received batch of an NfQueue and the verdicts of its packets.

    ``pos`` is the next packet to hand to the handler, ``cur`` the one being
    handed out (-1: none): a packet whose handler an exception such as
    KeyboardInterrupt ended before its verdict (or its deferral) was kept is
    handed out again by the next loop.  ``older``: a packet of an earlier
    batch waited for its verdict when this one arrived, so runs of equal
    verdicts must not become kernel batch verdicts.
    """

    __slots__ = ("n", "vbuf", "vptr", "rptr", "pos", "cur", "older", "last", "t")

    n: int
    vbuf: "array[int]"
    vptr: Any
    rptr: Any
    pos: int
    cur: int
    older: int
    last: int
    #: when it was received (time.monotonic(); only with verdict_timeout)
    t: float

    def __init__(self, data: bytes, recs: bytes, ch: C, n: int,
                 older: int) -> None:
        # C reads the records from the bytes object itself: a memoryview
        # exported to cffi must not end up in a garbage cycle (CPython clears
        # such a view while it is exported, and crashes freeing it later)
        super().__init__(data, memoryview(recs).cast("I"), ch)
        self.n = n
        self.vbuf = array("q", [V_DEFERRED]) * n
        self.vptr = ffi.from_buffer("int64_t[]", self.vbuf)
        self.rptr = ffi.from_buffer("uint32_t[]", recs)
        self.pos = 0
        self.cur = -1
        self.older = older
        self.last = self.recs[(n - 1) * NF + F_ID]
        self.t = 0.0


class QueuedPacket(Protocol):
    """What the verdict machinery uses of a :class:`nfbind.Packet`."""

    id: int
    _o: int

    @property
    def _b(self) -> Flight[Any]: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def payload_len(self) -> int: ...

    @property
    def csum_notready(self) -> bool: ...


class QueueVerdicts(Channel[P]):
    """The verdict machinery of :class:`nfbind.NfQueue`."""

    queues: Tuple[int, ...]
    #: the first (the only, unless _multi) queue number
    _q0: int
    #: bound to several queues: packet ids repeat across them
    _multi: bool
    default_verdict: Verdict
    _c: Optional[struct_nfb_q]
    _ct_glue: bool
    _pending: Dict[int, QueuedPacket]
    _floor: int
    _max_id: int
    _flight: Optional[Flight[Any]]
    _send_lock: Any
    #: connection marks and labels to set over ctnetlink once the verdicts
    #: are sent: (packet id, payload, connmark or None, labels or None)
    _connmarks: List[Tuple[int, bytes, Optional[int], Optional[FrozenSet[int]]]]
    _ctnl: "CtLookup"
    #: verdicts sent at once, by verdict number (C counts the rest)
    _vc_sent: List[int]

    @staticmethod
    def _check_plain(name: str, v: Any) -> Verdict:
        v = check_int(name, v, 0, _U32_MAX)
        if v not in PLAIN:
            raise ValueError("%s must be Verdict.ACCEPT, DROP, REPEAT or STOP, got %r" % (name, v))
        return Verdict(v)

    def _already(self, p: QueuedPacket) -> VerdictError:
        """The error for a verdict on a packet that has one."""
        slot = p._b.vbuf[p._o // NF]
        if slot == V_CLOSED:
            return VerdictError(
                "packet %d: its queue was closed and it got the default verdict "
                "(%s)" % (p.id, Verdict(self.default_verdict).name))
        if slot == V_TIMEOUT:
            return VerdictError(
                "packet %d timed out: it waited verdict_timeout=%g s without a verdict "
                "and got on_timeout; this verdict came too late"
                % (p.id, getattr(self, "_verdict_timeout", None) or 0))
        return VerdictError("packet %d already has its verdict; each packet gets "
                            "exactly one" % p.id)

    def _key(self, p: QueuedPacket) -> int:
        """``p``'s key in ``_pending``: its id, and with several queues also
        its queue (each queue numbers its packets)."""
        if self._multi:
            return p.id | (p._b.recs[p._o + F_QUEUE] << 32)
        return p.id

    def _rkey(self, fl: Flight[Any], i: int) -> int:
        """The ``_pending`` key of entry ``i`` of ``fl`` (as _key())."""
        o = i * NF
        if self._multi:
            return fl.recs[o + F_ID] | (fl.recs[o + F_QUEUE] << 32)
        return fl.recs[o + F_ID]

    def _in_flight(self, fl: Flight[Any]) -> bool:
        """Whether ``fl`` is the batch this thread is dispatching now (its
        plain verdicts then travel with it)."""
        return (fl is self._flight and fl.cur >= 0
                and self._dispatch_thread == threading.get_ident())

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
        dptr = data if data is not None else ffi.NULL
        dlen = len(data) if data is not None else 0
        fl = p._b
        i = p._o // NF
        if fl.vbuf[i] != V_DEFERRED:
            raise self._already(p)
        if self._closed:
            raise VerdictError("%s is closed" % self._describe())
        if self._in_flight(fl):
            # inside the handler: a plain verdict travels with the batch; one
            # with a mark or payload is queued now, after the verdicts decided
            # before it (the kernel reinjects in the order it gets them)
            if not vflags:
                fl.vbuf[i] = v
                return
            assert self._c is not None  # a batch is being dispatched: open
            rc = lib.nfb_q_put_verdict_at(self._c, fl.rptr, fl.vptr, i, fl.older, v, vflags,
                                          m, cm, lraw, dptr, dlen)
            if rc == -_EALREADY:
                raise self._already(p)
            if rc >= 0 and ct_later:
                self._connmarks.append((p.id, p.payload, connmark, lb))
        else:
            with self._send_lock:
                if self._closed:
                    raise VerdictError("%s is closed" % self._describe())
                rc = lib.nfb_q_send_verdict_at(self._fd, fl.recs[p._o + F_QUEUE], fl.vptr + i,
                                               p.id, v, vflags, m, cm, lraw, dptr, dlen)
                if rc == -_EALREADY:
                    raise self._already(p)
                if rc >= 0:
                    self._vc_sent[v & _VERDICT_MASK] += 1
            self._pending.pop(self._key(p), None)
            if rc >= 0 and ct_later:
                self._connmarks.append((p.id, p.payload, connmark, lb))
                self._apply_connmarks()
        if rc < 0:
            raise error_from_errno(-rc, "sending the verdict of packet %d" % p.id)

    def _interrupted(self) -> None:
        """An interruption left the loop: send what the handlers decided
        (a second one meanwhile leaves it to the next entry point)."""
        # no handler of this queue runs on this thread any more, whatever
        # the interruption skipped
        self._dispatch_thread = None
        with self._lock:
            c = self._c
            if self._closed or c is None:
                return
            fl = self._flight
            if fl is not None:
                self._settle(fl)
            else:
                lib.nfb_q_flush(c)

    def _waiting(self) -> int:
        """Packets received and still without a verdict."""
        n = 0
        pending = self._pending
        for pid, p in list(pending.items()):
            if p._b.vbuf[p._o // NF] == V_DEFERRED:
                n += 1
            else:       # settled where its entry could not be dropped
                pending.pop(pid, None)
        fl = self._flight
        if fl is not None:
            vb = fl.vbuf
            n += sum(1 for i in range(fl.pos, fl.n) if vb[i] == V_DEFERRED)
            i = fl.cur
            if 0 <= i < fl.pos and vb[i] == V_DEFERRED and self._rkey(fl, i) not in pending:
                n += 1
        return n

    def _settle(self, fl: Flight[Any]) -> int:
        """Send the verdicts decided in ``fl`` and not sent yet (none twice);
        0 or -errno."""
        assert self._c is not None
        rc: int = lib.nfb_q_settle(self._c, fl.rptr, fl.vptr, fl.n, fl.older)
        return rc

    def _top_id(self) -> int:
        """The highest packet id received (0: none yet)."""
        top = self._max_id
        c = self._c
        if c is not None and c.have_id and c.last_id > top:
            top = int(c.last_id)
        fl = self._flight
        if fl is not None and fl.last > top:
            top = fl.last
        return top

    def verdict_batch(self, up_to_id: int, verdict: Union[Verdict, int] = Verdict.ACCEPT,
                      mark: Optional[int] = None) -> int:
        """Give ``verdict`` to every waiting packet with id <= ``up_to_id``.

        One message (the kernel's NFQNL_MSG_VERDICT_BATCH) covers them all.
        Packets not received yet are left to the handler, whatever their id;
        verdicts already decided (returned by a handler) are sent first and
        keep their value.  Also from inside a handler: the packet being
        handled is settled like any other (``has_verdict`` is then True).
        Returns how many received packets it settled.

        Only on an NfQueue of one queue (ValueError otherwise): the kernel's
        batch verdict covers one queue, whose packet ids mean nothing in the
        others.
        """
        self._check_open()
        if self._multi:
            raise ValueError(
                "verdict_batch() needs an NfQueue bound to one queue (this one has %d): "
                "give each packet its verdict, or use one NfQueue per queue" % len(self.queues))
        up_to_id = check_int("up_to_id", up_to_id, 0, _U32_MAX)
        v = self._check_plain("verdict", verdict)
        vflags = lib.NFB_VF_BATCH
        m = 0
        if mark is not None:
            m = _check_mark("mark", mark)
            vflags |= _VF_MARK
        settled = 0
        with self._lock, self._send_lock:
            self._check_open()
            assert self._c is not None
            fl = self._flight
            # what handlers decided goes first: the kernel's batch verdict
            # would give their packets this verdict instead
            rc = self._settle(fl) if fl is not None else lib.nfb_q_flush(self._c)
            # the kernel settles the ids up to up_to_id it holds, comparing
            # them modulo 2**32: an id beyond the last one received would leave
            # later packets to the kernel's batch (or, 2**31 ahead, settle
            # none) while they are taken as settled here, so stop at that one
            up_to_id = min(up_to_id, self._top_id())
            for pid in [pid for pid in self._pending if pid <= up_to_id]:
                p = self._pending.pop(pid)
                vb = p._b.vbuf
                if vb[p._o // NF] == V_DEFERRED:
                    vb[p._o // NF] = V_DONE
                    settled += 1
            if fl is not None:
                recs, vb = fl.recs, fl.vbuf
                for i in range(fl.n):
                    if vb[i] == V_DEFERRED and recs[i * NF + F_ID] <= up_to_id:
                        vb[i] = V_DONE
                        settled += 1
            # with no waiting packet up to the id the kernel holds none either:
            # it would answer ENOENT (a refused verdict)
            if rc >= 0 and settled:
                rc = lib.nfb_q_send_verdict(self._fd, self._q0, up_to_id, v, vflags,
                                            m, 0, ffi.NULL, 0)
                if rc >= 0:
                    self._vc_sent[int(v)] += settled
            # raised only once it was sent: an interruption before leaves the
            # ids above the floor, which close() then settles
            if up_to_id > self._floor:
                self._floor = up_to_id
        if rc < 0:
            raise error_from_errno(-rc, "sending a batch verdict to queue %d" % self._q0)
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
