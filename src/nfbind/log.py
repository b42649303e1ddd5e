# SPDX-License-Identifier: GPL-2.0-or-later
"""NFLOG: watch the packets a rule logged.

The rule ``iptables -A INPUT -p tcp --syn -j NFLOG --nflog-group 5
--nflog-prefix "syn "`` copies each matching packet to log group 5; an
:class:`NfLog` bound to the group gets each one as a :class:`LogPacket`::

    from nfbind import NfLog

    with NfLog(5) as log:
        for pkt in log:
            print(pkt.prefix, pkt.indev_name, pkt.scapy().summary())

Logging never holds packets: they go on whatever the handler does.  One
``NfLog`` can bind several groups; ``pkt.group`` tells them apart.
"""
from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from ._channel import Channel, ChannelStats, c_counter, config_error
from ._channels import missing
from ._core import lib as core

try:
    from ._nflog import ffi, lib
except ImportError as e:  # the NFLOG channel was not built on this machine
    raise missing("nflog", "nfbind.log") from e
from . import _speedups, netns as _netns

if TYPE_CHECKING:  # pragma: no cover
    from ._nflog import struct_nfb_log
from .enums import CopyMode, Family
from .errors import NetlinkError, error_from_errno
from ._netlink import check_int, check_int_list
from .conntrack._lookup import CtLookup
from .packet import HOT_FIELDS, HOT_READS, HOT_SPAN, NF, Batch, PacketBase, blob, field, \
    hot_struct, hot_variant

__all__ = ["NfLog", "LogPacket", "LogStats"]

_U32_MAX = 0xFFFFFFFF
_FAMILIES = {
    None: -1,
    int(Family.IPV4): core.NFPROTO_IPV4,
    int(Family.IPV6): core.NFPROTO_IPV6,
    int(Family.BRIDGE): core.NFPROTO_BRIDGE,
    int(Family.ARP): core.NFPROTO_ARP,
}
_STEP = {core.NFB_STEP_BIND: "binding", core.NFB_STEP_PARAMS: "setting the copy mode of",
         core.NFB_STEP_NLBUFSIZ: "setting nlbufsiz of", core.NFB_STEP_TIMEOUT: "setting the timeout of",
         core.NFB_STEP_QTHRESH: "setting qthresh of", core.NFB_STEP_FLAGS: "setting the flags of"}
_NLBUFSIZ_MIN, _NLBUFSIZ_MAX = 4096, 131072
_F_ATTRS = core.NFB_F_ATTRS
_F_QUEUE = core.NFB_F_QUEUE
_F_PREFIX_OFF = core.NFB_F_PREFIX_OFF
_F_PREFIX_LEN = core.NFB_F_PREFIX_LEN
_F_SEQ = core.NFB_F_SEQ
_F_SEQ_GLOBAL = core.NFB_F_SEQ_GLOBAL
_F_HWTYPE = core.NFB_F_HWTYPE
_F_HWHDR_OFF = core.NFB_F_HWHDR_OFF
_A_PREFIX = core.NFB_A_PREFIX
_A_SEQ = core.NFB_A_SEQ
_A_SEQ_GLOBAL = core.NFB_A_SEQ_GLOBAL
_A_HWTYPE = core.NFB_A_HWTYPE
_A_HWHDR = core.NFB_A_HWHDR
#: struct nfb_hot (cdef/core.h), what nfb_log_hot() fills for each packet
_HOT = hot_struct(ffi)
_HOT_MARK = core.NFB_HOT_MARK
_HOT_INDEV = core.NFB_HOT_INDEV
_HOT_TIMESTAMP = core.NFB_HOT_TIMESTAMP


def _prefix_text(cache: Dict[bytes, str], raw: bytes) -> str:
    """The prefix ``raw`` decoded, from the channel's cache (a rule set has
    few distinct prefixes)."""
    try:
        return cache[raw]
    except KeyError:
        text = raw.decode("utf-8", "replace")
        if len(cache) < 4096:
            cache[raw] = text
        return text


class LogPacket(PacketBase):
    """A logged packet: the metadata every packet has, plus the log group,
    the rule's prefix, sequence numbers and the hardware header."""

    __slots__ = ()

    _b: Batch[NfLog]

    def __init__(self, b: Batch[NfLog], o: int) -> None:
        self._b = b
        self._o = o

    @property
    def group(self) -> int:
        """The log group (``--nflog-group``) the packet came from."""
        return self._b.recs[self._o + _F_QUEUE]

    @property
    def prefix(self) -> str:
        """The rule's ``--nflog-prefix`` (``""`` when it has none)."""
        b = self._b
        b.reads += 1
        r = b.recs
        o = self._o
        if r[o + _F_ATTRS] & _A_PREFIX:
            start = r[o + _F_PREFIX_OFF]
            return _prefix_text(b.ch._prefixes, b.data[start : start + r[o + _F_PREFIX_LEN]])
        return ""

    seq = field(_F_SEQ, _A_SEQ, "The group's sequence number (with ``seq=True``), or None.")
    seq_global = field(
        _F_SEQ_GLOBAL, _A_SEQ_GLOBAL,
        "The sequence number across all groups (with ``seq_global=True``), or None.")
    hwtype = field(
        _F_HWTYPE, _A_HWTYPE,
        "The link type of the input device (ARPHRD_*, 1 for Ethernet), or None.")
    hwhdr = blob(
        _F_HWHDR_OFF, _A_HWHDR,
        "The link-layer header the packet arrived with (e.g. 14 Ethernet bytes), or None.")

    def __repr__(self) -> str:
        return "<nfbind.LogPacket group=%d prefix=%r %s>" % (
            self.group, self.prefix, self._repr_fields())


#: LogPacket with its hot fields as plain slots, filled when the packet is
#: made (see nfbind.packet)
_HotLogPacket = hot_variant(LogPacket, HOT_FIELDS + ("prefix",))
#: the compiled dispatch loop (nfbind._fastq), None: the Python loops below
_fastq = _speedups.load("_fastq")
_LOOP: Any = None if _fastq is None else _fastq.LogLoop(
    LogPacket, _HotLogPacket, NF)


class LogStats(ChannelStats):
    """Counters of one NfLog (read live)."""

    __slots__ = ()
    _ch: NfLog
    _NAMES = ("packets", "overruns", "handler_errors", "filtered", "recv_calls",
              "truncated_msgs", "malformed")

    filtered = c_counter(
        "filtered", "Packets of another family, skipped by the ``family=`` filter.", rx=False)
    truncated_msgs = c_counter(
        "truncated_msgs", "Messages larger than the receive slot (should stay 0).")
    malformed = c_counter(
        "malformed", "Datagrams with a malformed message, skipped (the rest of their "
        "receive batch is read as usual).")


def _groups(groups: Union[int, Iterable[int]]) -> Tuple[int, ...]:
    return check_int_list("groups", "group", "group", groups, 0, 0xFFFF,
                          kinds="an int or an iterable of ints",
                          empty="name at least one log group", dups="has duplicates")


class NfLog(Channel[LogPacket]):
    """A netlink socket bound to one or more NFLOG groups.

    Args:
        groups: a group number 0..65535 (``--nflog-group``), or several.
        family: None (default: every family), or only :class:`Family` IPV4,
            IPV6, BRIDGE or ARP packets.  The kernel sends every family to a
            group; nfbind drops the others in C before they cost anything.
        copy_mode: :class:`CopyMode`; ``PACKET`` (default), ``META`` or ``NONE``.
        copy_range: bytes of each packet to copy, 0..65535 (0: the whole
            packet).  A rule's ``--nflog-size`` lowers it (the smaller wins).
        qthresh: the kernel sends a batch once this many packets are waiting
            (a rule's ``--nflog-threshold`` lowers it; the smaller wins).
        timeout: seconds the kernel waits before sending a batch that is not
            full (resolution 0.01 s; 0: no waiting).
        nlbufsiz: the kernel's batch buffer in bytes (4096..131072), or None
            for the kernel's default.
        seq, seq_global: attach per-group / global sequence numbers.
        conntrack: attach conntrack information (``pkt.ct``).
        rcvbuf: receive buffer in bytes (default 4 MiB).
        rcvbuf_max: after an overrun (ENOBUFS) the receive buffer doubles, up
            to this many bytes (default: the larger of ``rcvbuf`` and 4 MiB).
            Pass ``rcvbuf_max=rcvbuf`` for a fixed size.
        netns: a network namespace name, path or fd.
        on_overrun: ``"count"`` (default) or ``"raise"``.
        no_enobufs: set NETLINK_NO_ENOBUFS.

    Raises:
        ValueError, TypeError: an argument out of range, before any syscall.
        PermissionDenied: no CAP_NET_ADMIN.
        QueueBusy: another process (socket) has bound one of the groups.
        NetlinkError: any other refusal from the kernel.
        FileNotFoundError: ``netns`` does not exist.
    """

    def __init__(
        self,
        groups: Union[int, Iterable[int]],
        *,
        family: Optional[Union[Family, int]] = None,
        copy_mode: Union[CopyMode, int] = CopyMode.PACKET,
        copy_range: int = 0xFFFF,
        qthresh: int = 1,
        timeout: float = 0.0,
        nlbufsiz: Optional[int] = None,
        seq: bool = False,
        seq_global: bool = False,
        conntrack: bool = False,
        rcvbuf: Optional[int] = None,
        rcvbuf_max: Optional[int] = None,
        netns: _netns.NetNS = None,
        on_overrun: str = "count",
        no_enobufs: bool = False,
    ) -> None:
        self._c: Optional[struct_nfb_log] = None
        self.groups = _groups(groups)
        if family is not None:
            check_int("family", family, 0, 255)
        if family not in _FAMILIES:
            raise ValueError("family must be None, Family.IPV4, IPV6, BRIDGE or ARP, got %r"
                             % (family,))
        self._family = None if family is None else Family(family)
        copy_mode = check_int("copy_mode", copy_mode, 0, 255)
        if copy_mode not in {int(m) for m in CopyMode}:
            raise ValueError("copy_mode must be a CopyMode (NONE, META, PACKET), got %r" % copy_mode)
        self._copy_mode = CopyMode(copy_mode)
        self._copy_range = check_int("copy_range", copy_range, 0, 0xFFFF)
        self._qthresh = check_int("qthresh", qthresh, 1, _U32_MAX)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds, not %s" % type(timeout).__name__)
        if not 0 <= timeout <= _U32_MAX / 100:
            raise ValueError("timeout must be 0..%d seconds, got %r" % (_U32_MAX // 100, timeout))
        self._timeout = float(timeout)
        if nlbufsiz is not None:
            nlbufsiz = check_int("nlbufsiz", nlbufsiz, _NLBUFSIZ_MIN, _NLBUFSIZ_MAX)
        self._nlbufsiz = nlbufsiz
        flags = 0
        for name, value, bit in (("seq", seq, lib.NFULNL_CFG_F_SEQ),
                                 ("seq_global", seq_global, lib.NFULNL_CFG_F_SEQ_GLOBAL),
                                 ("conntrack", conntrack, lib.NFULNL_CFG_F_CONNTRACK)):
            if not isinstance(value, bool):
                raise TypeError("%s must be True or False, not %r" % (name, value))
            if value:
                flags |= bit
        for name, value in (("no_enobufs", no_enobufs),):
            if not isinstance(value, bool):
                raise TypeError("%s must be True or False, not %r" % (name, value))
        rcvbuf = check_int("rcvbuf", 4 << 20 if rcvbuf is None else rcvbuf, 4096, 1 << 30)
        rcvbuf_max = check_int("rcvbuf_max", max(rcvbuf, 4 << 20) if rcvbuf_max is None
                               else rcvbuf_max, 4096, 1 << 30)
        _netns.resolve(netns)

        self._npackets = 0
        self._handler_errors = 0
        self._prefixes: Dict[bytes, str] = {}
        self._hot_left = 0      # batches still to fill eagerly (packet.HOT_SPAN)
        # prefix number (nfb_log_hot) -> prefix; 0: none
        self._prefix_names: List[str] = [""]
        self._backlog: List[LogPacket] = []
        self._final: Dict[str, int] = {}
        self._ct_glue = False
        self._ct_fallback = False
        self._ctnl = CtLookup(netns, "NfLog")   # conntrack without the kernel's glue
        self._init_channel(netns=netns, rcvbuf=rcvbuf, on_overrun=on_overrun,
                           no_enobufs=no_enobufs, rcvbuf_max=rcvbuf_max)
        try:
            slot, nslots = self._slots()
            c = lib.nfb_log_new(self._fd, slot, nslots, _FAMILIES[family])
            if c == ffi.NULL:
                raise MemoryError("allocating the NFLOG buffers")
            self._c = ffi.gc(c, lib.nfb_log_free)
            ct = lib.NFULNL_CFG_F_CONNTRACK
            self._configure(self.groups, cmd=lib.NFULNL_CFG_CMD_BIND,
                            copy_mode=self._copy_mode, copy_range=self._copy_range,
                            nlbufsiz=nlbufsiz, timeout=round(self._timeout * 100),
                            qthresh=self._qthresh, flags=flags & ~ct)
            if flags & ct:
                try:
                    self._configure(self.groups, flags=flags)
                    self._ct_glue = True
                except NetlinkError as e:
                    if e.errno != errno.EOPNOTSUPP:
                        raise
                    self._ct_fallback = True  # the kernel lacks the conntrack glue
            self._flags = flags
        except BaseException:
            self._c = None
            self._abort_open()
            raise

    # -- configuration ------------------------------------------------------------

    def _slots(self) -> Tuple[int, int]:
        size = max(self._nlbufsiz or 8192, 8192)
        if self._copy_mode == CopyMode.PACKET:
            size = max(size, (self._copy_range or 0xFFFF) + 8192)
        size = (size + 4095) & ~4095
        # up to 112 slots of the default size in 8 MiB of address space (only
        # the pages the datagrams fill become resident): a receive's fixed
        # cost, about 10 us of system calls and Python per batch, is then
        # shared by up to 112 packets (docs/performance.rst)
        return size, max(8, min(128, (8 << 20) // size))

    def _describe(self) -> str:
        return "NfLog(%s)" % ",".join(map(str, self.groups))

    def _configure(self, groups: Tuple[int, ...], *, cmd: int = 0,
                   copy_mode: Optional[int] = None, copy_range: int = 0,
                   nlbufsiz: Optional[int] = None, timeout: Optional[int] = None,
                   qthresh: Optional[int] = None, flags: Optional[int] = None) -> None:
        cfg = ffi.new("struct nfb_logcfg *")
        cfg.cmd = cmd
        cfg.copy_mode = -1 if copy_mode is None else int(copy_mode)
        cfg.copy_range = copy_range
        cfg.nlbufsiz = -1 if nlbufsiz is None else nlbufsiz
        cfg.timeout = -1 if timeout is None else timeout
        cfg.qthresh = -1 if qthresh is None else qthresh
        cfg.flags = -1 if flags is None else flags
        garr = ffi.new("uint16_t[]", list(groups))
        fg = ffi.new("int *")
        step = ffi.new("int *")
        with self._lock:
            assert self._c is not None  # set before the first configuration
            rc = lib.nfb_log_config(self._c, garr, len(groups), cfg, 2000, fg, step)
        if rc >= 0:
            return
        group = fg[0] if fg[0] >= 0 else groups[0]
        raise config_error(
            -rc, "%s log group %d" % (_STEP.get(step[0], "configuring"), group),
            binding=step[0] == core.NFB_STEP_BIND, flags=step[0] == core.NFB_STEP_FLAGS,
            busy_hint="log group %d is already bound by another socket (another process "
            "or another NfLog); stop that reader (ulogd?) or use another --nflog-group"
            % group)

    @property
    def family(self) -> Optional[Family]:
        """The family filter, or None for every family."""
        return self._family

    @property
    def copy_mode(self) -> CopyMode:
        return self._copy_mode

    @property
    def copy_range(self) -> int:
        return self._copy_range

    @property
    def ct_glue(self) -> bool:
        """True when the kernel attaches conntrack information itself; False
        when ``pkt.ct`` is looked up over ctnetlink instead."""
        return self._ct_glue

    @property
    def stats(self) -> LogStats:
        """Live counters: packets, overruns, handler_errors, filtered ..."""
        return LogStats(self)

    # -- receive and dispatch ------------------------------------------------------

    def _drain_once(self, handler: Callable[[LogPacket], Any]) -> int:
        with self._lock:
            if self._closed:
                return 0
            if self._backlog:
                todo, self._backlog = self._backlog, []
                return self._dispatch_list(handler, todo)
            c = self._c
            assert c is not None  # open: checked above, under the lock
            n = self._recv_batch(lib.nfb_log_recv, c)
            if n <= 0:
                return 0
            b = Batch(ffi.buffer(c.rx.data, c.rx.data_len)[:],
                      memoryview(ffi.buffer(c.rx.recs, n * NF * 4)[:]).cast("I"), self)
            self._npackets += n
            if self._hot_left and lib.nfb_log_hot(c) == n:
                self._hot_left -= 1
                return self._dispatch_hot(handler, b, n, ffi.buffer(c.hot, n * _HOT.size)[:])
            done = self._dispatch(handler, b, n)
            if b.reads >= HOT_READS * n:
                self._hot_left = HOT_SPAN - 1
            return done

    def _dispatch(self, handler: Callable[[LogPacket], Any], b: Batch[NfLog], n: int) -> int:
        """Hand each packet of a fresh batch to the handler; the hot loop."""
        if _LOOP is not None:
            return self._dispatch_fast(_LOOP, handler, b, n, None)
        error: Optional[BaseException] = None
        new = object.__new__
        cls = LogPacket
        o = 0
        end = n * NF
        self._dispatch_thread = threading.get_ident()
        try:
            while o < end:
                p = new(cls)
                p._b = b
                p._o = o
                o += NF
                try:
                    handler(p)
                except Exception as e:
                    self._handler_errors += 1
                    if error is None:
                        error = e
        except BaseException:
            # Ctrl-C and the like: the packets not yet handled wait for the
            # next run() or iteration
            self._backlog = [LogPacket(b, k) for k in range(o, end, NF)] + self._backlog
            raise
        finally:
            self._dispatch_thread = None
        if error is not None:
            raise error
        return n

    def _dispatch_hot(self, handler: Callable[[LogPacket], Any], b: Batch[NfLog], n: int,
                      hot: bytes) -> int:
        """:meth:`_dispatch` for a handler that reads the hot fields: each
        packet is made with them filled in, from ``hot``, the batch's
        ``struct nfb_hot`` (see nfbind.packet)."""
        if _LOOP is not None:
            return self._dispatch_fast(_LOOP, handler, b, n, hot)
        error: Optional[BaseException] = None
        new = object.__new__
        cls = _HotLogPacket
        names = self._prefix_names
        h_mark = _HOT_MARK
        h_indev = _HOT_INDEV
        h_ts = _HOT_TIMESTAMP
        o = 0
        end = n * NF
        self._dispatch_thread = threading.get_ident()
        try:
            for (code, hwp, mark, indev, plen, pfx, ts) in _HOT.iter_unpack(hot):
                p = new(cls)
                p._b = b
                p._o = o
                p.hw_protocol = hwp
                p.mark = mark if code & h_mark else None
                p.indev = indev if code & h_indev else None
                p.payload_len = plen
                p.timestamp = ts if code & h_ts else None
                try:
                    p.prefix = names[pfx]
                except IndexError:
                    p.prefix = self._prefix_number(b, o, pfx)
                o += NF
                try:
                    handler(p)
                except Exception as e:
                    self._handler_errors += 1
                    if error is None:
                        error = e
        except BaseException:
            self._backlog = [LogPacket(b, k) for k in range(o, end, NF)] + self._backlog
            raise
        finally:
            self._dispatch_thread = None
        if error is not None:
            raise error
        return n

    def _dispatch_fast(self, loop: Any, handler: Callable[[LogPacket], Any], b: Batch[NfLog],
                       n: int, hot: Optional[bytes]) -> int:
        """_dispatch (``hot`` None) or _dispatch_hot with the compiled loop,
        which hands back where an interruption stopped it."""
        self._dispatch_thread = threading.get_ident()
        try:
            o, errors, error, stop = loop.run(handler, b, n, hot, self._prefix_names,
                                              self._prefix_number)
        finally:
            self._dispatch_thread = None
        self._handler_errors += errors
        if stop is not None:
            # Ctrl-C and the like: the packets not yet handled wait for the
            # next run() or iteration
            self._backlog = [LogPacket(b, k) for k in range(o, n * NF, NF)] + self._backlog
            raise stop
        if error is not None:
            raise error
        return n

    def _prefix_number(self, b: Batch[NfLog], o: int, number: int) -> str:
        """The prefix of the packet at record ``o``, whose number (from
        nfb_log_hot) this channel has not seen yet: learn the new numbers
        from the C table, or read it from the record (not numbered)."""
        c = self._c
        assert c is not None  # called while dispatching, under the lock
        names = self._prefix_names
        if len(names) <= c.nprefixes:
            table = ffi.buffer(c.prefixes)
            width = len(table) // len(c.prefix_len)
            for k in range(len(names), int(c.nprefixes) + 1):
                raw = table[k * width : k * width + c.prefix_len[k]]
                names.append(_prefix_text(self._prefixes, raw))
        if number < len(names):
            return names[number]
        r = b.recs
        start = r[o + _F_PREFIX_OFF]
        return _prefix_text(self._prefixes, b.data[start : start + r[o + _F_PREFIX_LEN]])

    def _dispatch_list(self, handler: Callable[[LogPacket], Any], pkts: List[LogPacket]) -> int:
        error: Optional[BaseException] = None
        k = 0
        self._dispatch_thread = threading.get_ident()
        try:
            for k, p in enumerate(pkts):
                try:
                    handler(p)
                except Exception as e:
                    self._handler_errors += 1
                    if error is None:
                        error = e
        except BaseException:
            self._backlog = pkts[k + 1:] + self._backlog
            raise
        finally:
            self._dispatch_thread = None
        if error is not None:
            raise error
        return len(pkts)

    # -- shutdown -------------------------------------------------------------------

    def _close_channel(self) -> None:
        if self._c is None:
            return
        c = self._c
        try:
            if self._inherited():
                # another process bound the groups (this one was forked
                # from it): the binding is that process's
                return
            cfg = ffi.new("struct nfb_logcfg *")
            cfg.cmd = lib.NFULNL_CFG_CMD_UNBIND
            cfg.copy_mode = -1
            cfg.nlbufsiz = cfg.timeout = cfg.qthresh = -1
            cfg.flags = -1
            lib.nfb_log_config(c, ffi.new("uint16_t[]", list(self.groups)), len(self.groups),
                               cfg, 500, ffi.new("int *"), ffi.new("int *"))
        finally:
            self._ctnl.close()
            self._final = {
                "overruns": int(c.rx.overruns), "filtered": int(c.filtered),
                "recv_calls": int(c.rx.recv_calls), "truncated_msgs": int(c.rx.truncated_msgs), "malformed": int(c.rx.malformed),
            }
            self._backlog.clear()
            self._c = None

    def __repr__(self) -> str:
        return "<nfbind.NfLog %s %s>" % (",".join(map(str, self.groups)),
                                         "closed" if self._closed else "open")
