# SPDX-License-Identifier: GPL-2.0-or-later
"""Which local process owns a packet's socket: ``pkt.process()``.

Two steps, both without privileges beyond reading other processes' /proc
entries (root, or the same user):

1. **The socket.**  A NETLINK_SOCK_DIAG request (``SOCK_DIAG_BY_FAMILY``
   with an ``inet_diag_req_v2`` carrying the packet's addresses and ports)
   asks the kernel for the TCP or UDP socket the packet belongs to, the way
   the kernel itself would pick it: an established TCP socket, else a
   listener; a connected UDP socket, else one bound to the address (or the
   wildcard) and port.  The answer carries the socket's inode.  A TCP
   connection still in its handshake (the kernel answers with a request
   socket, which no process holds) is looked up again as its listener.  The
   request runs in the packet's channel's network namespace (``netns=``).
2. **The owner.**  ``/proc/PID/fd/N`` of the process holding the socket
   reads ``socket:[INODE]``.  An inode -> (pid, fd) map is kept and filled
   by scanning ``/proc`` when a lookup misses; a hit is checked with one
   ``readlink`` of that fd, so a pid reused by another process, or a
   socket closed meanwhile, is never reported.  Process details are cached
   under (pid, start time), the 22nd field of ``/proc/PID/stat``, and
   re-read when the process has executed another program.

What it cannot see: processes of another PID namespace (``/proc`` is the
caller's view; their sockets give None); a socket held by several
processes (inherited over fork, passed over a UNIX socket) gives the first
holder found; threads are reported as their process.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import threading
import time
import weakref
from typing import Any, Dict, Optional, Tuple

from . import netns as _netns
from ._core import ffi, lib
from .errors import ClosedError, error_from_errno

__all__ = ["Process", "SocketLookup", "endpoints", "owner", "process_of"]

_AF_INET = lib.AF_INET
_AF_INET6 = lib.AF_INET6
_TCP = lib.IPPROTO_TCP
_UDP = lib.IPPROTO_UDP
_PRE = lib.NF_INET_PRE_ROUTING
_IN = lib.NF_INET_LOCAL_IN
_OUT = lib.NF_INET_LOCAL_OUT
_POST = lib.NF_INET_POST_ROUTING
_V4 = lib.NFPROTO_IPV4
_V6 = lib.NFPROTO_IPV6
#: IPv6 extension headers that may stand between the header and TCP/UDP
_EXT_OPTS = frozenset((lib.IPPROTO_HOPOPTS, lib.IPPROTO_ROUTING, lib.IPPROTO_DSTOPTS))
_FRAGMENT = lib.IPPROTO_FRAGMENT
_AH = lib.IPPROTO_AH

# -- the sock_diag request and answer, laid out by the compiler ------------------------

_HDR = ffi.sizeof("struct nlmsghdr")
_REQ_LEN = _HDR + ffi.sizeof("struct inet_diag_req_v2")
_ID = _HDR + ffi.offsetof("struct inet_diag_req_v2", "id")
_SPORT = _ID + ffi.offsetof("struct inet_diag_sockid", "idiag_sport")
_DPORT = _ID + ffi.offsetof("struct inet_diag_sockid", "idiag_dport")
_SRC = _ID + ffi.offsetof("struct inet_diag_sockid", "idiag_src")
_DST = _ID + ffi.offsetof("struct inet_diag_sockid", "idiag_dst")
_IF = _ID + ffi.offsetof("struct inet_diag_sockid", "idiag_if")
_SEQ = ffi.offsetof("struct nlmsghdr", "nlmsg_seq")
_MSG = _HDR  # the inet_diag_msg follows the header
_M_STATE = _MSG + ffi.offsetof("struct inet_diag_msg", "idiag_state")
_M_SPORT = _MSG + ffi.offsetof("struct inet_diag_msg", "id") + ffi.offsetof(
    "struct inet_diag_sockid", "idiag_sport")
_M_UID = _MSG + ffi.offsetof("struct inet_diag_msg", "idiag_uid")
_M_INODE = _MSG + ffi.offsetof("struct inet_diag_msg", "idiag_inode")
_M_LEN = _MSG + ffi.sizeof("struct inet_diag_msg")
_ERR = _HDR + ffi.offsetof("struct nlmsgerr", "error")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_NLHDR = struct.Struct("=IHH")  # nlmsg_len, nlmsg_type, nlmsg_flags


def _template(family: int, proto: int) -> bytes:
    """A request for one socket of ``family``/``proto`` with a zero tuple."""
    nlh = ffi.new("struct nlmsghdr *")
    nlh.nlmsg_len = _REQ_LEN
    nlh.nlmsg_type = lib.SOCK_DIAG_BY_FAMILY
    nlh.nlmsg_flags = lib.NLM_F_REQUEST
    req = ffi.new("struct inet_diag_req_v2 *")
    req.sdiag_family = family
    req.sdiag_protocol = proto
    req.idiag_states = 0xFFFFFFFF  # every state: the exact lookup ignores it
    req.id.idiag_cookie[0] = req.id.idiag_cookie[1] = lib.INET_DIAG_NOCOOKIE
    return ffi.buffer(nlh)[:] + ffi.buffer(req)[:]


_TEMPLATES = {(f, p): _template(f, p) for f in (_AF_INET, _AF_INET6) for p in (_TCP, _UDP)}


@dataclasses.dataclass(frozen=True)
class Process:
    """A local process: what :meth:`Packet.process() <nfbind.Packet.process>`
    returns.

    Attributes:
        pid: its process id (the thread group's, as ``/proc`` shows it to
            the caller).
        uid: its effective user id (``/proc/PID/status``).
        exe: the path of its executable, or None when it cannot be read
            (kernel threads); ``" (deleted)"`` ends it when the file is gone.
        cmdline: its arguments, ``argv[0]`` first (empty for a zombie).
    """

    __slots__ = ("pid", "uid", "exe", "cmdline")

    pid: int
    uid: int
    exe: Optional[str]
    cmdline: Tuple[str, ...]


# -- the packet's endpoints -------------------------------------------------------------


def endpoints(payload: bytes, family: int
              ) -> Optional[Tuple[int, int, bytes, int, bytes, int]]:
    """``(af, proto, src, sport, dst, dport)`` of an IPv4/IPv6 TCP or UDP
    packet, or None for another protocol or a later fragment.

    Raises ValueError when ``payload`` stops before the ports (the packet's
    headers were not copied)."""
    n = len(payload)
    if family == _V4:
        if n < 20:
            raise _short(n)
        off = (payload[0] & 0x0F) * 4
        if _BE16.unpack_from(payload, 6)[0] & 0x1FFF:
            return None  # a later fragment: no ports
        proto = payload[9]
        af, src, dst = _AF_INET, payload[12:16], payload[16:20]
    else:
        if n < 40:
            raise _short(n)
        proto = payload[6]
        off = 40
        for _ in range(8):
            if proto in _EXT_OPTS or proto == _AH:
                if off + 2 > n:
                    raise _short(n)
                nxt = payload[off]
                off += (payload[off + 1] + 2) * 4 if proto == _AH else (payload[off + 1] + 1) * 8
                proto = nxt
            elif proto == _FRAGMENT:
                if off + 8 > n:
                    raise _short(n)
                if _BE16.unpack_from(payload, off + 2)[0] & 0xFFF8:
                    return None  # a later fragment
                proto = payload[off]
                off += 8
            else:
                break
        af, src, dst = _AF_INET6, payload[8:24], payload[24:40]
    if proto != _TCP and proto != _UDP:
        return None
    if off + 4 > n:
        raise _short(n)
    sport, dport = struct.unpack_from("!HH", payload, off)
    return af, proto, src, sport, dst, dport


def _short(n: int) -> ValueError:
    return ValueError(
        "pkt.process() needs the packet's IP and TCP/UDP headers, but only %d bytes of "
        "the packet were copied: use copy_mode=CopyMode.PACKET (not META) and a "
        "copy_range of at least 128 bytes" % n)


# -- sock_diag ----------------------------------------------------------------------------


class _Diag:
    """A NETLINK_SOCK_DIAG socket and the exact lookups made over it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    def ask(self, af: int, proto: int, src: bytes, sport: int, dst: bytes, dport: int,
            ifindex: int) -> Optional[Tuple[int, int, int, int]]:
        """One exact lookup: ``(state, local port, uid, inode)`` of the socket
        the kernel finds for this id, or None (ENOENT)."""
        req = bytearray(_TEMPLATES[(af, proto)])
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        _U32.pack_into(req, _SEQ, seq)
        _BE16.pack_into(req, _SPORT, sport)
        _BE16.pack_into(req, _DPORT, dport)
        req[_SRC:_SRC + len(src)] = src
        req[_DST:_DST + len(dst)] = dst
        _U32.pack_into(req, _IF, ifindex)
        self.sock.send(req)
        for _ in range(16):  # skip answers to earlier requests (a timed-out one)
            data = self.sock.recv(8192)
            if len(data) < _HDR or _U32.unpack_from(data, _SEQ)[0] != seq:
                continue
            _, mtype, _ = _NLHDR.unpack_from(data, 0)
            if mtype == lib.NLMSG_ERROR:
                err = -_I32.unpack_from(data, _ERR)[0] if len(data) >= _ERR + 4 else errno.EIO
                if err == errno.ENOENT:
                    return None
                raise error_from_errno(err, "looking up a packet's socket (sock_diag)")
            if len(data) < _M_LEN:
                return None
            return (data[_M_STATE], _BE16.unpack_from(data, _M_SPORT)[0],
                    _U32.unpack_from(data, _M_UID)[0], _U32.unpack_from(data, _M_INODE)[0])
        return None


def _open_diag() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      lib.NETLINK_SOCK_DIAG)
    try:
        s.bind((0, 0))
        s.settimeout(2.0)
    except BaseException:
        s.close()
        raise
    return s


def _find(d: _Diag, af: int, proto: int, local: bytes, lport: int, remote: bytes,
          rport: int, ifindex: int) -> Optional[Tuple[int, int]]:
    if proto == _TCP:
        # TCP: idiag_src is the local end (an established socket, else the
        # listener); a request socket (handshake) or TIME_WAIT has no inode
        r = d.ask(af, proto, local, lport, remote, rport, ifindex)
        if r is not None and r[3] and r[1] == lport:
            return r[2], r[3]
        if r is None or r[0] == lib.TCP_SYN_RECV:
            zero = bytes(len(remote))
            r = d.ask(af, proto, local, lport, zero, 0, ifindex)
            if r is not None and r[0] == lib.TCP_LISTEN and r[3] and r[1] == lport:
                return r[2], r[3]
        return None
    # UDP: the kernel looks the id up as a packet received from idiag_src,
    # so idiag_dst is the local end; kernels that take it the other way
    # round answer with a socket of another port, and are asked again
    for a, ap, b, bp in ((remote, rport, local, lport), (local, lport, remote, rport)):
        r = d.ask(af, proto, a, ap, b, bp, ifindex)
        if r is not None and r[1] == lport and r[3]:
            return r[2], r[3]
    return None


class SocketLookup:
    """Sockets by their local and remote end, over one NETLINK_SOCK_DIAG
    socket opened (on first use) in ``netns``.

    Safe to use from several threads; :meth:`close` twice is fine.  A forked
    child opens its own socket.
    """

    def __init__(self, netns: _netns.NetNS = None) -> None:
        self._netns = netns
        self._lock = threading.Lock()
        self._diag: Optional[_Diag] = None
        self._pid = 0
        self._closed = False

    def find(self, af: int, proto: int, local: bytes, lport: int, remote: bytes, rport: int,
             ifindex: int = 0) -> Optional[Tuple[int, int]]:
        """``(uid, inode)`` of the local TCP/UDP socket with this local and
        remote end (``af``: AF_INET or AF_INET6; addresses in network byte
        order), or None.  Raises ClosedError after :meth:`close`,
        NetlinkError when the kernel refuses the request."""
        with self._lock:
            if self._closed:
                raise ClosedError("the packet's channel is closed: look its process up "
                                  "while the channel is open")
            if self._diag is None or self._pid != os.getpid():
                if self._diag is not None:  # a forked child's copy of the parent's
                    self._diag.sock.close()
                    self._diag = None
                self._diag = _Diag(_netns.call_in(self._netns, _open_diag))
                self._pid = os.getpid()
            return _find(self._diag, af, proto, local, lport, remote, rport, ifindex)

    def close(self) -> None:
        """Close the socket; later lookups raise ClosedError."""
        with self._lock:
            self._closed = True
            if self._diag is not None:
                self._diag.sock.close()
                self._diag = None


#: one SocketLookup per channel (NfQueue, NfLog) that looked a process up,
#: closed with its channel (or when the channel is collected)
_lookups: "weakref.WeakKeyDictionary[Any, SocketLookup]" = weakref.WeakKeyDictionary()
_lookups_lock = threading.Lock()


def _lookup_for(ch: Any) -> SocketLookup:
    with _lookups_lock:
        for other, lk in list(_lookups.items()):
            if other.closed:
                lk.close()
                del _lookups[other]
        if ch.closed:
            raise ClosedError("%s is closed: look a packet's process up while its channel "
                              "is open" % type(ch).__name__)
        found = _lookups.get(ch)
        if found is not None:
            return found
        lk = _lookups[ch] = SocketLookup(ch._netns)
        ch._close_with(lk)
        weakref.finalize(ch, lk.close)
        return lk


# -- the owner, through /proc -------------------------------------------------------------

#: negative answers are kept this long (seconds): a socket no visible
#: process holds would otherwise cost a scan of /proc per packet
MISS_TTL = 1.0
_MAX_ENTRIES = 1 << 16


class _Owners:
    """inode -> (pid, fd, process) from /proc, and process details by
    (pid, start time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_inode: Dict[int, Tuple[int, int, Optional[Process]]] = {}
        self.misses: Dict[int, float] = {}
        self.procs: Dict[Tuple[int, int], Process] = {}
        self.scans = 0

    def find(self, inode: int) -> Optional[Process]:
        link = "socket:[%d]" % inode
        with self.lock:
            hit = self.by_inode.get(inode)
            if hit is not None:
                pid, fd, p = hit
                base = "/proc/%d/" % pid
                try:
                    # the fd still holds the socket: the process is alive (a
                    # pid reused by another process holds other descriptors)
                    if os.readlink("%sfd/%d" % (base, fd)) == link:
                        if p is not None and os.readlink(base + "exe") == p.exe:
                            return p
                        p = self._details(pid)
                        if p is not None:
                            self.by_inode[inode] = (pid, fd, p)
                            return p
                except OSError:
                    pass
                del self.by_inode[inode]
            now = time.monotonic()
            seen = self.misses.get(inode)
            if seen is not None and now - seen < MISS_TTL:
                return None
            found = self._scan(link)
            if found is not None:
                p = self._details(found[0])
                if p is not None:
                    self.by_inode[inode] = (found[0], found[1], p)
                    return p
            if len(self.misses) >= _MAX_ENTRIES:
                self.misses = {k: t for k, t in self.misses.items() if now - t < MISS_TTL}
            self.misses[inode] = now
            return None

    def _details(self, pid: int) -> Optional[Process]:
        """Process ``pid``'s details, cached under (pid, start time); None
        when it is gone."""
        base = "/proc/%d/" % pid
        try:
            with open(base + "stat", "rb") as f:
                stat = f.read()
            try:
                exe: Optional[str] = os.readlink(base + "exe")
            except OSError:
                if not os.path.exists(base):
                    return None
                exe = None  # a kernel thread, or a zombie
            # field 22 (start time) counts from the one after the command's ")"
            key = (pid, int(stat[stat.rindex(b")") + 2:].split()[19]))
            p = self.procs.get(key)
            if p is not None and p.exe == exe:
                return p
            with open(base + "cmdline", "rb") as f:
                raw = f.read()
            with open(base + "status", "rb") as f:
                status = f.read()
        except (OSError, ValueError, IndexError):
            return None
        uid = -1
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                uid = int(line.split()[2])  # real, effective, saved, filesystem
                break
        args = raw.split(b"\0")
        if args and args[-1] == b"":
            args.pop()
        p = Process(pid, uid, exe, tuple(os.fsdecode(a) for a in args))
        if len(self.procs) >= _MAX_ENTRIES:
            self.procs.clear()
        self.procs[key] = p
        return p

    def _scan(self, link: str) -> Optional[Tuple[int, int]]:
        """Read every process's socket descriptors, newest pid first, until
        ``link`` turns up; what was read goes into the map (details are read
        when an entry is first used)."""
        self.scans += 1
        found: Dict[int, Tuple[int, int, Optional[Process]]] = {}
        result = None
        pids = sorted((int(n) for n in os.listdir("/proc") if n.isdigit()), reverse=True)
        for pid in pids:
            fddir = "/proc/%d/fd/" % pid
            try:
                fds = os.listdir(fddir)
            except OSError:
                continue  # gone, or not ours to read
            for name in fds:
                try:
                    target = os.readlink(fddir + name)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    found[int(target[8:-1])] = (pid, int(name), None)
                    if target == link:
                        result = (pid, int(name))
            if result is not None:
                break
        if result is None or len(self.by_inode) + len(found) > _MAX_ENTRIES:
            # a full scan (or an overfull map): what it read is the whole truth
            self.by_inode = found
        else:
            for k, v in found.items():
                if k not in self.by_inode:
                    self.by_inode[k] = v
        return result


_owners = _Owners()


def owner(inode: int) -> Optional[Process]:
    """The process holding socket ``inode`` (cached, see the module's text),
    or None when no process visible in ``/proc`` holds it."""
    return _owners.find(inode)


def process_of(payload: bytes, family: int, hook: int, indev: Optional[int],
               outdev: Optional[int], channel: Any) -> Optional[Process]:
    """The local process that sent (``hook`` LOCAL_OUT, POST_ROUTING) or will
    receive (LOCAL_IN, PRE_ROUTING) the L3 packet ``payload``, looked up in
    ``channel``'s network namespace; None for forwarded packets, other
    protocols than TCP and UDP, later fragments, packets no local socket
    matches, and sockets no visible process holds.

    Raises ValueError when the payload stops before the TCP/UDP ports,
    ClosedError when ``channel`` is closed, NetlinkError when the kernel
    refuses the socket lookup."""
    if family != _V4 and family != _V6:
        return None
    if hook == _OUT or (hook == _POST and indev is None):
        outbound = True
    elif hook == _IN or hook == _PRE:
        outbound = False
    else:
        return None  # FORWARD, or POST_ROUTING of a forwarded packet
    ep = endpoints(payload, family)
    if ep is None:
        return None
    af, proto, src, sport, dst, dport = ep
    lk = _lookup_for(channel)
    if outbound:
        found = lk.find(af, proto, src, sport, dst, dport, outdev or 0)
    else:
        found = lk.find(af, proto, dst, dport, src, sport, indev or 0)
    if found is None:
        return None
    return _owners.find(found[1])
