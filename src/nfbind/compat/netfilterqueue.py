# SPDX-License-Identifier: GPL-2.0-or-later
"""A drop-in for NetfilterQueue 1.1, built on :class:`nfbind.NfQueue`.

Users of NetfilterQueue switch by changing only their import::

    from nfbind.compat.netfilterqueue import NetfilterQueue

    def print_and_accept(pkt):
        print(pkt)
        pkt.accept()

    nfqueue = NetfilterQueue()
    nfqueue.bind(1, print_and_accept)
    try:
        nfqueue.run()
    except KeyboardInterrupt:
        print('')
    nfqueue.unbind()

What behaves as in NetfilterQueue 1.1:

* ``bind()`` twice raises ``RuntimeError("A queue is already bound; use
  unbind() first")``; a queue another socket holds raises ``OSError("Failed
  to create queue N.")``; a copy mode other than COPY_NONE/META/PACKET raises
  ``OSError("Failed to set packet copy mode.")``; ``unbind()`` when nothing is
  bound does nothing; ``sock_len`` sizes the receive buffer and a size the
  kernel did not grant warns ``RuntimeWarning("Socket rcvbuf limit is now
  ...")``.
* A second verdict raises ``RuntimeError("Verdict already given for this
  packet")``; a verdict after ``unbind()`` raises ``RuntimeError("Parent queue
  has already been unbound")``.
* ``set_payload(bytes)`` and ``set_mark(int)`` are remembered and travel with
  the verdict; ``get_payload()``/``get_mark()`` return them once set.
* A callback that returns without a verdict leaves its packet queued; give
  the verdict later (e.g. after a later packet's, to reorder).  ``unbind()``
  drops every packet still without a verdict, as the kernel does when
  NetfilterQueue unbinds.
* An exception raised by the callback (KeyboardInterrupt included) comes out
  of ``run()``/``run_socket()``; its packet stays queued without a verdict
  (the caller may still give one), and the packets received after it wait
  for the next ``run()``.  Ctrl-C while ``run()`` waits raises
  KeyboardInterrupt, as in NetfilterQueue.

Differences, all deliberate:

* No 4016-byte cap: payloads of up to 65531 bytes are copied and rewritten
  whole (``range`` defaults to 65535; the kernel clamps it to 65531).
* Packets keep their data: ``get_payload()`` works after the callback
  returned even without ``retain()`` (which is accepted and does nothing
  else).
* The netlink socket is opened by ``bind()`` (in the network namespace the
  constructor ran in), so ``get_fd()`` before ``bind()`` / after ``unbind()``
  raises RuntimeError instead of returning a socket no queue uses.
* ``run()`` and ``run_socket()`` return when the queue is unbound (by the
  callback or another thread) instead of blocking forever; ``run()`` before
  ``bind()`` raises RuntimeError.
* ``sockfd=`` (a netlink socket opened in another network namespace): the
  shim opens its own socket in that socket's namespace (SIOCGSKNS) instead of
  taking the descriptor over; ``af`` is accepted and ignored (binding a
  protocol family is a no-op since Linux 3.8).
* Out-of-range queue numbers raise OSError instead of wrapping around.
* Errors the kernel reports for a verdict raise ``nfbind.NetlinkError`` (an
  OSError) instead of being ignored.

nfbind extension: ``NetfilterQueue(netns=...)`` takes a network namespace
(a name, a path or an fd, see :mod:`nfbind.netns`) to bind the queue in.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
import warnings
from typing import Any, Callable, List, Optional

from .._core import lib as core
from .._wake import WakePipe
from ..enums import Verdict
from ..errors import ClosedError, NetlinkError
from ..queue import NfQueue, Packet as _NfPacket

__all__ = ["NetfilterQueue", "Packet", "COPY_NONE", "COPY_META", "COPY_PACKET", "PROTOCOLS"]

COPY_NONE = 0
COPY_META = 1
COPY_PACKET = 2

#: NetfilterQueue's default queue length and receive buffer size
_DEFAULT_MAX_QUEUELEN = 1024
_SOCK_RCV_SIZE = _DEFAULT_MAX_QUEUELEN * (4096 - 80 + 760 + 20) // 2
_MAX_PACKET_SIZE = 0xFFFF
_SIOCGSKNS = 0x894C

#: IP protocol names used by ``str(packet)`` (as in NetfilterQueue; others
#: print as "Unknown protocol")
PROTOCOLS = {
    0: "HOPOPT", 1: "ICMP", 2: "IGMP", 4: "IP", 6: "TCP", 17: "UDP", 33: "DCCP",
    41: "IPv6", 43: "IPv6-Route", 44: "IPv6-Frag", 46: "RSVP", 47: "GRE", 50: "ESP",
    51: "AH", 58: "IPv6-ICMP", 59: "IPv6-NoNxt", 60: "IPv6-Opts", 89: "OSPFIGP",
    103: "PIM", 112: "VRRP", 115: "L2TP", 132: "SCTP", 136: "UDPLite", 255: "Reserved",
}


def _c_uint(value: Any, bits: int, ctype: str) -> int:
    """Convert like a Cython ``unsigned`` argument: TypeError for a non-integer,
    OverflowError out of range."""
    if not isinstance(value, int):
        try:
            import operator

            value = operator.index(value)
        except TypeError:
            raise TypeError("an integer is required") from None
    if value < 0:
        raise OverflowError("can't convert negative value to %s" % ctype)
    if value >> bits:
        raise OverflowError("value too large to convert to %s" % ctype)
    return int(value)


def _c_int(value: Any) -> int:
    if not isinstance(value, int):
        try:
            import operator

            value = operator.index(value)
        except TypeError:
            raise TypeError("an integer is required") from None
    if not -(1 << 31) <= value < (1 << 31):
        raise OverflowError("value too large to convert to int")
    return int(value)


def _copy_socket(q: NfQueue) -> Optional[socket.socket]:
    """A socket object on a copy of ``q``'s descriptor (None if it cannot be
    made): it outlives ``q.close()``, for :func:`_wake_receivers`."""
    try:
        return socket.socket(fileno=os.dup(q.fileno()))
    except (OSError, ClosedError):  # closed already: nothing to wake
        return None


def _wake_receivers(sock: socket.socket) -> None:
    """Make a closed queue's socket readable once more, and close ``sock``.

    ``run_socket(s)`` waits in ``s.recv()`` on a descriptor of its own (a
    ``socket.fromfd`` copy), which closing the queue's descriptor does not
    wake.  A request asking the kernel for an acknowledgement (a bare
    NLMSG_DONE with NLM_F_ACK, which the kernel only acknowledges, with or
    without CAP_NET_ADMIN) puts one message in the socket, so that recv()
    returns and the loop sees the queue is gone."""
    try:
        hdr = struct.pack("=IHHII", 16, core.NLMSG_DONE, core.NLM_F_REQUEST | core.NLM_F_ACK, 0, 0)
        sock.sendto(hdr, (0, 0))
    except OSError:  # nothing more can be done: a blocked recv() stays blocked
        pass
    finally:
        sock.close()


def _thread_netns() -> Optional[int]:
    """An fd of the calling thread's network namespace when it differs from
    the process's (e.g. inside ``nfbind.netns.call_in``), else None."""
    try:
        mine = os.stat("/proc/thread-self/ns/net")
        proc = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    if (mine.st_dev, mine.st_ino) == (proc.st_dev, proc.st_ino):
        return None
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class Packet:
    """A packet received from NetfilterQueue (the nfbind shim).

    Attributes (ints, 0 when the kernel sent none): ``id``, ``hook``,
    ``hw_protocol``, ``mark`` (the mark the packet arrived with), ``indev``,
    ``outdev``, ``physindev``, ``physoutdev`` (interface indexes).
    """

    __slots__ = ("_nfq", "_q", "_pkt", "_verdict_is_set", "_mark_is_set", "_given_mark",
                 "_given_payload", "_retained", "id", "hook", "hw_protocol", "mark",
                 "indev", "outdev", "physindev", "physoutdev")

    _nfq: "NetfilterQueue"
    _q: NfQueue
    _pkt: _NfPacket
    _verdict_is_set: bool
    _mark_is_set: bool
    _given_mark: int
    _given_payload: Optional[bytes]
    _retained: bool
    id: int
    hook: int
    hw_protocol: int
    mark: int
    indev: int
    outdev: int
    physindev: int
    physoutdev: int

    def __init__(self) -> None:
        raise TypeError("Packet objects are made by NetfilterQueue, not directly")

    @classmethod
    def _wrap(cls, nfq: "NetfilterQueue", q: NfQueue, p: _NfPacket) -> "Packet":
        self = object.__new__(cls)
        self._nfq = nfq
        self._q = q
        self._pkt = p
        self._verdict_is_set = False
        self._mark_is_set = False
        self._given_mark = 0
        self._given_payload = None
        self._retained = False
        self.id = p.id
        self.hook = int(p.hook)
        self.hw_protocol = int(p.hw_protocol)
        self.mark = p.mark or 0
        self.indev = p.indev or 0
        self.outdev = p.outdev or 0
        self.physindev = p.physindev or 0
        self.physoutdev = p.physoutdev or 0
        return self

    def __str__(self) -> str:
        data = self._pkt.payload
        if not data:
            return "%d byte packet, contents unretained" % (len(data),)
        proto = data[9] if data[0] >> 4 == 4 and len(data) > 9 else (
            data[6] if data[0] >> 4 == 6 and len(data) > 6 else -1)
        return "%s packet, %s bytes" % (PROTOCOLS.get(proto, "Unknown protocol"), len(data))

    def __repr__(self) -> str:
        return "<nfbind.compat.netfilterqueue.Packet id=%d%s>" % (
            self.id, " (verdict given)" if self._verdict_is_set else "")

    # -- data ---------------------------------------------------------------

    def get_hw(self) -> Optional[bytes]:
        """The source MAC address as 8 bytes (zero-padded, as the kernel's
        ``nfqnl_msg_packet_hw.hw_addr``), or None when the kernel sent none
        (OUTPUT, POSTROUTING, loopback)."""
        hw = self._pkt.hwaddr
        if hw is None:
            return None
        return bytes(hw[:8]).ljust(8, b"\0")

    def get_payload(self) -> bytes:
        """The packet (from its network header), or the payload given to
        ``set_payload()``."""
        if self._given_payload:
            return self._given_payload
        data = self._pkt.payload
        if not data:
            raise RuntimeError("Packet has no payload -- perhaps you're using COPY_META mode?")
        return data

    def get_payload_len(self) -> int:
        """The length of the payload as received."""
        return self._pkt.payload_len

    def get_timestamp(self) -> float:
        """Arrival time (seconds since the epoch), 0.0 when the kernel sent
        none (it stamps packets only on input hooks)."""
        ts = self._pkt.timestamp
        return 0.0 if ts is None else float(ts)

    def set_payload(self, payload: bytes) -> None:
        """Replace the packet with ``payload`` (bytes) when its verdict is given."""
        if payload is not None and type(payload) is not bytes:
            raise TypeError("Argument 'payload' has incorrect type (expected bytes, got %s)"
                            % type(payload).__name__)
        self._given_payload = payload

    def set_mark(self, mark: int) -> None:
        """Give the packet the 32-bit ``mark`` with its verdict."""
        self._given_mark = _c_uint(mark, 32, "u_int32_t")
        self._mark_is_set = True

    def get_mark(self) -> int:
        """The mark given with ``set_mark()``, else the packet's own."""
        if self._mark_is_set:
            return self._given_mark
        return self.mark

    def retain(self) -> None:
        """Keep the payload past the callback.  nfbind packets always keep
        their data, so this only records the request."""
        self._retained = True

    # -- verdicts -----------------------------------------------------------

    def _verdict(self, v: Verdict) -> None:
        if self._verdict_is_set:
            raise RuntimeError("Verdict already given for this packet")
        if self._nfq._q is not self._q or self._q.closed:
            raise RuntimeError("Parent queue has already been unbound")
        self._pkt.verdict(v, mark=self._given_mark if self._mark_is_set else None,
                          payload=self._given_payload or None)
        self._verdict_is_set = True

    def accept(self) -> None:
        """Accept the packet."""
        self._verdict(Verdict.ACCEPT)

    def drop(self) -> None:
        """Drop the packet."""
        self._verdict(Verdict.DROP)

    def repeat(self) -> None:
        """Send the packet through the same hook again."""
        self._verdict(Verdict.REPEAT)


class NetfilterQueue:
    """Handle a single numbered queue (the API of NetfilterQueue 1.1).

    ``af`` is accepted and ignored; ``sockfd`` is a netlink socket opened in
    another network namespace, whose namespace the queue is bound in.
    ``netns`` (nfbind extension) names that namespace directly.
    """

    def __init__(self, *, af: int = socket.AF_INET, sockfd: int = -1,
                 netns: Any = None) -> None:
        self._q: Optional[NfQueue] = None
        self._nsfd: Optional[int] = None
        self._callback: Any = None
        self._stash: List[_NfPacket] = []
        self._lock = threading.RLock()
        _c_uint(af, 16, "u_int16_t")
        sockfd = -1 if sockfd is None else _c_int(sockfd)
        if netns is not None and sockfd >= 0:
            raise ValueError("give sockfd or netns, not both")
        if sockfd >= 0:
            try:
                self._nsfd = fcntl.ioctl(sockfd, _SIOCGSKNS)
            except OSError as e:
                raise OSError(e.errno, "Failed to open nfnetlink handle") from e
            self._netns: Any = self._nsfd
        elif netns is not None:
            self._netns = netns
        else:
            self._nsfd = _thread_netns()
            self._netns = self._nsfd
        self._wake = WakePipe()  # unbind() ends run()'s wait

    def __del__(self) -> None:
        try:
            self.unbind()
        except Exception:
            pass
        wake = getattr(self, "_wake", None)
        if wake is not None:
            wake.close()
        fd = getattr(self, "_nsfd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            self._nsfd = None

    # -- binding ----------------------------------------------------------------

    def bind(self, queue_num: int, user_callback: Callable[[Packet], Any],
             max_len: int = _DEFAULT_MAX_QUEUELEN, mode: int = COPY_PACKET,
             range: int = _MAX_PACKET_SIZE, sock_len: int = _SOCK_RCV_SIZE) -> None:
        """Create and bind to queue ``queue_num``; ``user_callback(packet)``
        is called for each packet by ``run()``."""
        queue_num = _c_int(queue_num)
        max_len = _c_uint(max_len, 32, "u_int32_t")
        mode = _c_uint(mode, 8, "u_int8_t")
        range = _c_uint(range, 32, "u_int32_t")
        sock_len = _c_uint(sock_len, 32, "u_int32_t")
        with self._lock:
            if self._q is not None:
                raise RuntimeError("A queue is already bound; use unbind() first")
            if not 0 <= queue_num <= 0xFFFF:
                raise OSError("Failed to create queue %s." % queue_num)
            if mode not in (COPY_NONE, COPY_META, COPY_PACKET):
                raise OSError("Failed to set packet copy mode.")
            try:
                q = NfQueue(
                    queue_num, copy_mode=mode, copy_range=min(range, _MAX_PACKET_SIZE),
                    max_len=min(max(max_len, 1), 65536),
                    rcvbuf=min(max(sock_len, 4096), 1 << 30), netns=self._netns,
                    on_error=Verdict.DROP, default_verdict=Verdict.DROP, no_enobufs=True,
                    gso=False)
            except NetlinkError as e:
                raise OSError(e.errno, "Failed to create queue %s." % queue_num) from e
            self._q = q
            self._callback = user_callback
            self._stash = []
            granted = q.rcvbuf
        if granted != sock_len * 2:
            try:
                warnings.warn("Socket rcvbuf limit is now %d, requested %d." % (granted, sock_len),
                              category=RuntimeWarning, stacklevel=2)
            except BaseException:
                self.unbind()
                raise

    def unbind(self) -> None:
        """Destroy the queue: packets still without a verdict are dropped.
        Does nothing when no queue is bound."""
        with self._lock:
            q, self._q = self._q, None
            self._callback = None
            self._stash = []
        if q is not None:
            copy = _copy_socket(q)
            try:
                q.close()
            finally:
                self._wake.wake()  # run() waits on this pipe
                if copy is not None:
                    _wake_receivers(copy)  # run_socket() waits in recv() on its own copy

    def get_fd(self) -> int:
        """The descriptor of the queue's netlink socket (for select/poll, or
        ``socket.fromfd`` and ``run_socket``)."""
        q = self._q
        if q is None or q.closed:
            raise RuntimeError("No queue is bound: nfbind opens the socket in bind()")
        return q.fileno()

    # -- receiving ----------------------------------------------------------------

    def _handle_stash(self, q: NfQueue) -> None:
        """Hand the packets read so far to the callback, one by one.

        The callback runs outside nfbind's batch dispatch, so every verdict
        is sent when it is given: the kernel sees verdicts in the order the
        user gave them (as with NetfilterQueue), which reordering relies on.
        An exception from the callback leaves its packet without a verdict and
        the packets after it for the next run()."""
        stash = self._stash
        while stash and self._q is q:
            p = stash.pop(0)
            if p.has_verdict:
                continue
            self._callback(Packet._wrap(self, q, p))

    def _fill(self, q: NfQueue) -> int:
        """Read one batch into the stash (the packets stay queued)."""
        if q.closed or self._q is not q:
            return 0
        try:
            return q.drain(self._stash.append, max_batches=1)
        except ClosedError:  # unbound by another thread meanwhile
            return 0

    def _bound(self, what: str) -> NfQueue:
        q = self._q
        if q is None or q.closed:
            raise RuntimeError("No queue is bound; call bind() before %s()" % what)
        return q

    def run(self, block: bool = True) -> None:
        """Send packets to the callback.  With ``block=False`` handle what
        is waiting now and return; otherwise run until the queue is unbound
        or an exception (from the callback, or KeyboardInterrupt) comes out."""
        q = self._bound("run")
        waiter = self._wake.waiter([q.fileno()])
        while self._q is q and not q.closed:
            self._handle_stash(q)
            if self._fill(q):
                continue
            if not block or self._q is not q:
                return
            waiter.wait()

    def run_socket(self, s: socket.socket) -> None:
        """Like ``run()``, but wait with ``s.recv`` (``s`` wraps ``get_fd()``,
        e.g. ``socket.fromfd(nfq.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)``)
        so that gevent can monkeypatch it.  Returns when ``s`` is non-blocking
        and nothing is waiting, and when the queue is unbound (also by another
        thread while it waits in ``s.recv``)."""
        q = self._bound("run_socket")
        while self._q is q and not q.closed:
            self._handle_stash(q)
            if self._fill(q) or self._q is not q:
                continue
            try:
                s.recv(16, socket.MSG_PEEK)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    continue
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                if self._q is not q or q.closed:
                    return
                raise
