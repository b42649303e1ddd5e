# SPDX-License-Identifier: GPL-2.0-or-later
"""Netlink plumbing every part of nfbind shares, and nothing else: opening a
NETLINK_NETFILTER socket in a network namespace, sizing its receive buffer,
walking netlink attributes, and the argument checks that run before a value
reaches C.

A leaf: it imports only the core module, :mod:`nfbind.netns` and the
standard library, so the channels, conntrack and the ctnetlink lookup behind
``pkt.ct`` can all use it without importing each other.
"""
from __future__ import annotations

import operator
import socket
import struct
from typing import Any, Iterator, Tuple, TypeVar

from . import netns as _netns
from ._core import lib

__all__ = ["open_netfilter_socket", "set_rcvbuf", "check_int", "check_choice", "iter_attrs"]

_T = TypeVar("_T")
_NLA = struct.Struct("=HH")
_NLA_TYPE_MASK = lib.NLA_TYPE_MASK


def open_netfilter_socket(netns: _netns.NetNS) -> socket.socket:
    """A NETLINK_NETFILTER socket (close-on-exec) opened and bound in ``netns``.

    Raises FileNotFoundError (no such namespace), PermissionDenied (entering
    it needs CAP_SYS_ADMIN), OSError from socket() or bind().
    """
    def opener() -> socket.socket:
        s = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, lib.NETLINK_NETFILTER
        )
        try:
            s.bind((0, 0))
        except BaseException:
            s.close()
            raise
        return s

    return _netns.call_in(netns, opener)


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Set the receive buffer; above rmem_max this needs CAP_NET_ADMIN.

    Returns the size the kernel granted (it doubles the request internally).
    """
    try:
        sock.setsockopt(lib.SOL_SOCKET, lib.SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(lib.SOL_SOCKET, lib.SO_RCVBUF, size)
    return sock.getsockopt(lib.SOL_SOCKET, lib.SO_RCVBUF)


def check_choice(name: str, value: object, choices: Tuple[_T, ...]) -> _T:
    """The one of ``choices`` that ``value`` equals; else ValueError naming ``name``."""
    if value not in choices:
        raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(map(repr, choices)), value))
    return choices[choices.index(value)]


def check_int_list(name: str, one: str, item: str, value: Any, lo: int, hi: int, *,
                   kinds: str, empty: str, dups: str) -> Tuple[int, ...]:
    """An int, or a non-empty iterable of distinct ints, each in ``lo..hi``,
    as a tuple.  ``name`` is the argument, ``one`` its name in errors when it
    is a single int, ``item`` one element of an iterable;
    ``kinds`` says what it may be and ``empty``/``dups`` the errors (each
    completes "``name`` must be ..." / "``name`` ...").

    Raises TypeError (a str or bytes, neither an int nor an iterable, an
    element not an int) or ValueError (empty, out of range, duplicates).
    """
    if isinstance(value, (str, bytes)):
        raise TypeError("%s must be %s, not %s" % (name, kinds, type(value).__name__))
    if isinstance(value, int) and not isinstance(value, bool):
        return (check_int(one, value, lo, hi),)
    try:
        items = list(value)
    except TypeError:
        raise TypeError("%s must be %s, not %s" % (name, kinds, type(value).__name__)) from None
    if not items:
        raise ValueError("%s must %s" % (name, empty))
    out = tuple(check_int(item, v, lo, hi) for v in items)
    if len(set(out)) != len(out):
        raise ValueError("%s %s: %r" % (name, dups, out))
    return out


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """Validate an integer argument before it reaches C.

    Raises TypeError (not an integer, or a bool) or ValueError (outside
    ``lo..hi``), naming ``name``.
    """
    if isinstance(value, bool):  # operator.index(True) would pass it as 1
        raise TypeError("%s must be an int, not bool" % name)
    if not isinstance(value, int):
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError("%s must be an int, not %s" % (name, type(value).__name__)) from None
    if not lo <= value <= hi:
        raise ValueError("%s must be in %d..%d, got %d" % (name, lo, hi, value))
    return int(value)


def iter_attrs(data: bytes, off: int, end: int) -> Iterator[Tuple[int, int, int]]:
    """Yield ``(type, payload_offset, payload_len)`` for the netlink attributes
    in ``data[off:end]`` (the NLA_F_NESTED and NLA_F_NET_BYTEORDER bits masked
    off); stops at a malformed one."""
    while off + 4 <= end:
        nla_len, nla_type = _NLA.unpack_from(data, off)
        if nla_len < 4 or off + nla_len > end:
            return
        yield nla_type & _NLA_TYPE_MASK, off + 4, nla_len - 4
        off += (nla_len + 3) & ~3
