# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue's configuration: the queue flags, ``configure()`` and the
properties it changes, the receive slots the copy range sizes, and whether
the kernel attaches conntrack information itself (its NFQUEUE conntrack glue).

:class:`QueueConfig` is a base class of :class:`nfbind.NfQueue`; the
constructor checks its arguments with the helpers here and binds through
``_configure``.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Tuple, Union

from ._channel import Channel, P, config_error
from ._netlink import check_int, check_int_list
from ._core import lib as core
from ._nfqueue import ffi, lib
from ._queue_verdicts import MAX_PAYLOAD
from .enums import CopyMode, QueueFlag
from .errors import NetlinkError, check_neg

if TYPE_CHECKING:  # pragma: no cover
    from ._nfqueue import struct_nfb_q

#: every flag nfbind sets on a queue
ALL_FLAGS = int(
    QueueFlag.FAIL_OPEN | QueueFlag.CONNTRACK | QueueFlag.GSO | QueueFlag.UID_GID | QueueFlag.SECCTX
)

#: whether this kernel has the NFQUEUE conntrack glue; learnt by the first
#: NfQueue (CONFIG_NETFILTER_NETLINK_GLUE_CT; a module loaded later is picked up
#: by nothing but a new process, and the ctnetlink fallback serves meanwhile)
_CT_GLUE: Optional[bool] = None

_STEP = {core.NFB_STEP_BIND: "binding", core.NFB_STEP_PARAMS: "setting the copy mode of",
         core.NFB_STEP_QMAXLEN: "setting max_len of", core.NFB_STEP_FLAGS: "setting the flags of"}

_FLAG_BITS = (("fail_open", QueueFlag.FAIL_OPEN), ("conntrack", QueueFlag.CONNTRACK),
              ("gso", QueueFlag.GSO), ("uid_gid", QueueFlag.UID_GID),
              ("secctx", QueueFlag.SECCTX))


def queue_list(value: Union[int, Iterable[int]]) -> Tuple[Union[int, Tuple[int, ...]],
                                                          Tuple[int, ...]]:
    """``NfQueue``'s first argument: ``(queue_num, queues)``, where
    ``queue_num`` is the int given or the tuple of the iterable given, and
    ``queues`` always the tuple."""
    out = check_int_list("queue_num", "queue_num", "queue number", value, 0, 0xFFFF,
                         kinds="a queue number or an iterable of them",
                         empty="name at least one queue", dups="has duplicate queue numbers")
    if isinstance(value, int) and not isinstance(value, bool):
        return out[0], out
    return out, out


def gso_safe(copy_mode: int, copy_range: int) -> bool:
    """Whether GSO super-packets reach the handler whole with this copy mode."""
    return copy_mode != CopyMode.PACKET or copy_range >= MAX_PAYLOAD


def flag_bits(optional: bool, **values: Optional[bool]) -> Tuple[int, int]:
    """``(mask, flags)`` for the queue flags given as keywords; with
    ``optional`` a None leaves its flag out of the mask (unchanged)."""
    mask = flags = 0
    for name, bit in _FLAG_BITS:
        value = values[name]
        if value is None and optional:
            continue
        if not isinstance(value, bool):
            raise TypeError("%s must be %s, not %r"
                            % (name, "True, False or None" if optional else "True or False",
                               value))
        mask |= int(bit)
        if value:
            flags |= int(bit)
    return mask, flags


class QueueConfig(Channel[P]):
    """The configuration of :class:`nfbind.NfQueue`."""

    queues: Tuple[int, ...]
    _c: Optional[struct_nfb_q]
    _copy_mode: CopyMode
    _copy_range: int
    _max_len: int
    _flags: int
    _gso_auto: bool
    _ct_glue: bool
    _ct_fallback: bool

    def _slots(self) -> Tuple[int, int]:
        size = 8192
        if self._copy_mode == CopyMode.PACKET:
            size += min(self._copy_range, MAX_PAYLOAD)
        size = (size + 4095) & ~4095
        # up to 112 slots of the default size in 8 MiB of address space (only
        # the pages the datagrams fill become resident): a receive's fixed
        # cost, about 10 us of system calls and Python per batch, is then
        # shared by up to 112 packets (docs/performance.rst)
        return size, max(8, min(128, (8 << 20) // size))

    def _configure(self, *, cmd: int = 0, copy_mode: Optional[int] = None,
                   copy_range: int = 0, max_len: Optional[int] = None,
                   flags_mask: int = 0, flags: int = 0) -> None:
        cfg = ffi.new("struct nfb_qcfg *")
        cfg.cmd = cmd
        cfg.copy_mode = -1 if copy_mode is None else int(copy_mode)
        cfg.copy_range = copy_range
        cfg.max_len = -1 if max_len is None else max_len
        cfg.flags_mask = flags_mask
        cfg.flags = flags
        step = ffi.new("int *")
        bound: List[int] = []
        rc = num = 0
        with self._lock:
            c = self._c
            assert c is not None  # set before the first configuration
            # one socket, several queues: each is configured in turn
            first = c.queue
            try:
                for num in self.queues:
                    c.queue = num
                    rc = lib.nfb_q_config(c, cfg, 2000, step)
                    if rc < 0:
                        break
                    bound.append(num)
            finally:
                c.queue = first
            if rc < 0 and cmd == lib.NFQNL_CFG_CMD_BIND and bound:
                self._unbind(bound)     # all or nothing
        if rc >= 0:
            return
        raise config_error(
            -rc, "%s queue %d" % (_STEP.get(step[0], "configuring"), num),
            binding=step[0] == core.NFB_STEP_BIND, flags=step[0] == core.NFB_STEP_FLAGS,
            busy_hint="queue %d is already bound by another socket (another process "
            "or another NfQueue); stop that consumer or use another --queue-num" % num)

    def _config_each(self, cfg: Any, timeout_ms: int, queues: Optional[Iterable[int]] = None
                     ) -> None:
        """``cfg`` for each of ``queues`` (default: all), best effort (close()
        and a failed bind)."""
        c = self._c
        assert c is not None
        first = c.queue
        try:
            for num in self.queues if queues is None else queues:
                c.queue = num
                lib.nfb_q_config(c, cfg, timeout_ms, ffi.new("int *"))
        finally:
            c.queue = first

    def _unbind(self, queues: Iterable[int]) -> None:
        """Unbind ``queues``."""
        cfg = ffi.new("struct nfb_qcfg *")
        cfg.cmd = lib.NFQNL_CFG_CMD_UNBIND
        cfg.copy_mode = -1
        cfg.max_len = -1
        self._config_each(cfg, 500, queues)

    def configure(
        self,
        *,
        copy_mode: Optional[Union[CopyMode, int]] = None,
        copy_range: Optional[int] = None,
        max_len: Optional[int] = None,
        fail_open: Optional[bool] = None,
        conntrack: Optional[bool] = None,
        gso: Optional[bool] = None,
        uid_gid: Optional[bool] = None,
        secctx: Optional[bool] = None,
    ) -> None:
        """Change options of the bound queue; ``None`` leaves one as it is.

        Each flag can be set and cleared at any time.  Call it from the thread
        that runs the loop (or while no loop runs).  While ``gso`` was never
        given, it follows the copy mode and range as in the constructor.
        """
        self._check_open()
        params = None
        if copy_mode is not None or copy_range is not None:
            mode = self._copy_mode if copy_mode is None else check_int("copy_mode", copy_mode, 0, 255)
            if mode not in {int(m) for m in CopyMode}:
                raise ValueError("copy_mode must be a CopyMode, got %r" % mode)
            rng = self._copy_range if copy_range is None else check_int("copy_range", copy_range, 0, 0xFFFF)
            params = (CopyMode(mode), rng)
        if max_len is not None:
            max_len = check_int("max_len", max_len, 1, 65536)
        mask, flags = flag_bits(True, fail_open=fail_open, conntrack=conntrack, gso=gso,
                                uid_gid=uid_gid, secctx=secctx)
        if gso is None and self._gso_auto and params is not None:
            gso_bit = int(QueueFlag.GSO)
            mask |= gso_bit
            flags |= gso_bit if gso_safe(*params) else 0
        if params is not None:
            old = self._slots()
            self._copy_mode, self._copy_range = params
            new = self._slots()
            if new != old:
                with self._lock:
                    assert self._c is not None
                    check_neg(lib.nfb_q_resize(self._c, new[0], new[1]), "resizing buffers")
        kmask, kflags = mask, flags
        if conntrack is not None and not self._ct_glue:
            # without CONFIG_NETFILTER_NETLINK_GLUE_CT the kernel refuses the
            # flag (EOPNOTSUPP); nfbind looks connections up over ctnetlink
            ct_bit = int(QueueFlag.CONNTRACK)
            kmask &= ~ct_bit
            kflags &= ~ct_bit
        self._configure(
            copy_mode=None if params is None else params[0],
            copy_range=0 if params is None else params[1],
            max_len=max_len, flags_mask=kmask, flags=kflags,
        )
        if max_len is not None:
            self._max_len = max_len
        if gso is not None:
            self._gso_auto = False
        self._flags = (self._flags & ~mask) | flags
        if conntrack is not None:
            self._ct_fallback = conntrack and not self._ct_glue

    @property
    def copy_mode(self) -> CopyMode:
        return self._copy_mode

    @property
    def copy_range(self) -> int:
        return self._copy_range

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def flags(self) -> QueueFlag:
        """The flags set on the queue (:class:`QueueFlag`)."""
        return QueueFlag(self._flags)

    def _probe_ct_glue(self, want: bool) -> bool:
        """Set the CONNTRACK flag as wanted, and learn whether the kernel can
        attach conntrack information to queued packets at all.

        The answer is the kernel's (a global hook), so it is learnt once per
        process; later queues send the flag only when they want it.
        """
        global _CT_GLUE
        ct = int(QueueFlag.CONNTRACK)
        if _CT_GLUE is not None:
            if _CT_GLUE and want:
                self._configure(flags_mask=ct, flags=ct)
            return _CT_GLUE
        try:
            self._configure(flags_mask=ct, flags=ct)
        except NetlinkError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            _CT_GLUE = False
            return False
        _CT_GLUE = True
        if not want:
            self._configure(flags_mask=ct, flags=0)
        return True

    @property
    def ct_glue(self) -> bool:
        """True when the kernel attaches conntrack information to queued
        packets and applies connmark verdicts itself
        (CONFIG_NETFILTER_NETLINK_GLUE_CT); False when nfbind does both over
        ctnetlink instead."""
        return self._ct_glue
