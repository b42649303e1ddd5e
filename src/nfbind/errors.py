# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind's exceptions, and the one helper that turns an errno into them.

The tree::

    NfbindError(Exception)
    ├── NetlinkError(NfbindError, OSError)   the kernel said no; .errno, .op
    │   ├── PermissionDenied(..., PermissionError)
    │   │                                    EPERM without CAP_NET_ADMIN
    │   ├── QueueBusy                        another socket owns the queue/group
    │   └── Overrun                          ENOBUFS: the kernel dropped messages
    ├── VerdictError                         second verdict, or verdict after close
    └── ClosedError                          the object was closed

Every message says what to do about it.  ``check(rc, op)`` is the single place
where a C library's return code becomes an exception (``check_neg`` is its twin
for nfbind's own C helpers, which return ``-errno``); it is called right after
the C call so that errno is still the call's own.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Optional, Tuple

from ._core import ffi, lib

__all__ = [
    "NfbindError",
    "NetlinkError",
    "PermissionDenied",
    "QueueBusy",
    "Overrun",
    "VerdictError",
    "ClosedError",
    "check",
    "check_neg",
    "error_from_errno",
    "has_cap_net_admin",
]

CAP_HINT = (
    "needs CAP_NET_ADMIN (run as root, or grant it with "
    "`setcap cap_net_admin=+ep` on the Python binary)"
)


class NfbindError(Exception):
    """Base class of every exception nfbind raises on its own."""


class NetlinkError(NfbindError, OSError):
    """The kernel refused a netlink request.

    ``errno`` is the kernel's error number and ``op`` names what nfbind was
    doing, e.g. ``"binding queue 3"``.
    """

    def __init__(self, err: int, op: str, hint: Optional[str] = None) -> None:
        self.op = op
        self.hint = hint
        name = _errno.errorcode.get(err, "E?")
        text = "%s failed: %s (%s)" % (op, name, os.strerror(err))
        if hint:
            text += " — " + hint
        OSError.__init__(self, err, text)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> Tuple[type, Tuple[Optional[int], str, Optional[str]]]:  # pragma: no cover
        return (type(self), (self.errno, self.op, self.hint))


class PermissionDenied(NetlinkError, PermissionError):
    """EPERM because the process lacks CAP_NET_ADMIN."""

    def __init__(self, err: int, op: str, hint: Optional[str] = None) -> None:
        NetlinkError.__init__(self, err, op, hint or CAP_HINT)


class QueueBusy(NetlinkError):
    """The queue or group is already bound by another socket (another process)."""


class Overrun(NetlinkError):
    """ENOBUFS: the socket's receive buffer overflowed and the kernel dropped
    messages.  ``count`` is how many overruns the object has seen so far."""

    def __init__(
        self, err: int = _errno.ENOBUFS, op: str = "receiving", hint: Optional[str] = None,
        count: int = 0,
    ) -> None:
        self.count = count
        NetlinkError.__init__(
            self,
            err,
            op,
            hint
            or "the receive buffer overflowed and the kernel dropped messages "
            "(%d overrun(s) so far): raise rcvbuf=, handle packets faster, or "
            "pass on_overrun='count' to keep going" % count,
        )


class VerdictError(NfbindError):
    """A packet was given a second verdict, or a verdict after its queue closed."""


class ClosedError(NfbindError, ValueError):
    """The object was used after ``close()``."""


def has_cap_net_admin() -> bool:
    """True when the calling thread has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/thread-self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> lib.CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def error_from_errno(
    err: int, op: str, *, busy_hint: Optional[str] = None, hint: Optional[str] = None
) -> NetlinkError:
    """The exception for errno ``err`` raised while doing ``op``.

    EPERM is ambiguous in netfilter: the kernel answers it both when the caller
    lacks CAP_NET_ADMIN and when another socket already owns the queue or
    group.  Pass ``busy_hint`` where the second meaning is possible; the
    capability check then decides between PermissionDenied and QueueBusy.
    """
    if err == _errno.EPERM or err == _errno.EACCES:
        if busy_hint is not None and has_cap_net_admin():
            return QueueBusy(err, op, busy_hint)
        return PermissionDenied(err, op, hint)
    if err == _errno.ENOBUFS:
        return Overrun(err, op, hint)
    return NetlinkError(err, op, hint)


def check(rc: int, op: str, **kw: Optional[str]) -> int:
    """Return ``rc`` when it is >= 0; else raise for the errno the C library set.

    For the C libraries' convention (-1 and errno); call it right after the C
    call so that errno is still that call's own.
    """
    if rc >= 0:
        return rc
    raise error_from_errno(ffi.errno or _errno.EIO, op, **kw)


def check_neg(rc: int, op: str, **kw: Optional[str]) -> int:
    """Like :func:`check` for nfbind's C helpers, which return ``-errno``."""
    if rc >= 0:
        return rc
    raise error_from_errno(-rc, op, **kw)
