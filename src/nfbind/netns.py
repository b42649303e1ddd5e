# SPDX-License-Identifier: GPL-2.0-or-later
"""Network namespaces: open a socket inside another namespace without moving
the calling process or thread.

A ``netns`` argument is one of:

* ``None``: the caller's own namespace;
* a name, as made by ``ip netns add NAME`` (``/run/netns/NAME``);
* a path to a namespace file (``/proc/PID/ns/net``, ``/run/netns/NAME``);
* an open file descriptor of such a file (an ``int``).

The work is done in a short-lived helper thread that enters the namespace with
``setns(2)``; a socket keeps the namespace it was created in, so the caller
gets a socket of the target namespace and stays where it was.
"""
from __future__ import annotations

import errno
import os
import socket as _socket
import threading
from typing import Any, Callable, List, Optional, TypeVar, Union

from ._core import ffi, lib
from .errors import PermissionDenied, NetlinkError

__all__ = ["NetNS", "resolve", "call_in", "socket", "NETNS_RUN_DIR"]

NETNS_RUN_DIR = "/run/netns"

NetNS = Union[None, str, "os.PathLike[str]", int]
T = TypeVar("T")


def resolve(netns: NetNS) -> Optional[Union[str, int]]:
    """Normalise a ``netns`` argument to ``None``, a path, or an fd.

    Raises TypeError for another type, ValueError for an empty or malformed
    name, and FileNotFoundError when the namespace does not exist.
    """
    if netns is None:
        return None
    if isinstance(netns, bool):
        raise TypeError("netns must be a name, a path or a file descriptor, not bool")
    if isinstance(netns, int):
        if netns < 0:
            raise ValueError("netns file descriptor must be >= 0, got %d" % netns)
        try:
            os.fstat(netns)
        except (OSError, OverflowError) as e:  # OverflowError: beyond a C int
            raise ValueError("netns file descriptor %d is not open" % netns) from e
        return netns
    if isinstance(netns, os.PathLike):
        netns = os.fspath(netns)
    if not isinstance(netns, str):
        raise TypeError(
            "netns must be a name, a path or a file descriptor, not %s" % type(netns).__name__
        )
    if not netns or "\0" in netns:
        raise ValueError("netns name must be a non-empty string without NUL bytes")
    path = netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)
    if netns in (".", "..") or not os.path.exists(path):
        hint = (
            "create it with `ip netns add %s`" % netns if "/" not in netns else "check the path"
        )
        raise FileNotFoundError(2, "network namespace %r not found (%s): %s" % (netns, path, hint))
    return path


def call_in(netns: NetNS, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` inside ``netns`` and return its result.

    With ``netns=None`` it is a plain call.  Otherwise ``fn`` runs in a helper
    thread that entered the namespace; exceptions propagate to the caller.
    """
    target = resolve(netns)
    if target is None:
        return fn(*args)
    result: List[T] = []
    error: List[BaseException] = []

    def runner() -> None:
        try:
            if isinstance(target, int):
                fd, own = target, False
            else:
                fd, own = os.open(target, os.O_RDONLY | os.O_CLOEXEC), True
            try:
                if lib.setns(fd, lib.CLONE_NEWNET) < 0:
                    err = ffi.errno
                    if err in (errno.EPERM, errno.EACCES):
                        raise PermissionDenied(
                            err,
                            "entering network namespace %r" % (netns,),
                            "needs CAP_SYS_ADMIN: run as root",
                        )
                    raise NetlinkError(err, "entering network namespace %r" % (netns,),
                                       "is it a network namespace file?")
            finally:
                if own:
                    os.close(fd)
            result.append(fn(*args))
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=runner, name="nfbind-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def socket(
    netns: NetNS,
    family: int = _socket.AF_INET,
    type: int = _socket.SOCK_DGRAM,
    proto: int = 0,
) -> _socket.socket:
    """A new socket created inside ``netns`` (``None``: the current one).

    Handy for tests and tools: ``netns.socket("blue", AF_INET, SOCK_DGRAM)``
    sends from inside namespace ``blue``.
    """
    return call_in(netns, _socket.socket, family, type, proto)
