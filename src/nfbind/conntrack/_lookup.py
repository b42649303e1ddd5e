# SPDX-License-Identifier: GPL-2.0-or-later
"""``pkt.ct`` over ctnetlink, for kernels that cannot attach it.

A kernel built without CONFIG_NETFILTER_NETLINK_GLUE_CT neither attaches
conntrack information to queued or logged packets nor applies a verdict's
NFQA_CT (a connmark, labels).  NfQueue and NfLog then own a
:class:`CtLookup`: the connection of a packet is looked up, and its mark and
labels set, with a ctnetlink request built from the packet's own headers
(the core's ``nfb_ct_by_packet`` and ``nfb_ct_set_by_packet``).  The socket
is opened on first use and closed with the channel.

Depends on the core module only, like the decoder it hands the answer to,
so this works without libnetfilter_conntrack.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import FrozenSet, Optional, Tuple as _Pair

from .._core import ffi, lib
from .._netlink import open_netfilter_socket
from .. import netns as _netns
from ..errors import ClosedError, error_from_errno
from ._records import ct_flow
from .labels import MAX_LABEL, labels_bytes
from .model import Flow

#: the mask of a labels change that replaces them all
_ALL_LABELS = labels_bytes(range(MAX_LABEL + 1))

__all__ = ["CtLookup"]

#: room for one flow's attributes in a lookup's answer
_ANSWER = 4096
#: the lookup's answers that mean "no such connection" (not yet confirmed,
#: a later fragment, a packet conntrack cannot key)
_NONE = (-errno.ENOENT, -errno.EPROTONOSUPPORT, -errno.EINVAL)


class CtLookup:
    """Connections of L3 packets over ctnetlink, in one network namespace.

    ``owner`` names the channel in errors ("NfQueue is closed").  Safe to
    use from several threads; :meth:`close` twice is fine.
    """

    def __init__(self, netns: _netns.NetNS, owner: str) -> None:
        self._netns = netns
        self._owner = owner
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._closed = False

    def _request(self, payload: bytes, set_mark: bool, mark: int) -> _Pair[int, bytes]:
        """One request: ``(rc, attrs)`` with rc 0 or -errno, and the CTA_*
        attributes of the answer (lookups only)."""
        with self._lock:
            if self._closed:
                raise ClosedError("%s is closed; create a new one" % self._owner)
            if self._sock is None:
                self._sock = open_netfilter_socket(self._netns)
            out = ffi.NULL if set_mark else ffi.new("char[]", _ANSWER)
            out_len = ffi.new("uint32_t *")
            rc = lib.nfb_ct_by_packet(self._sock.fileno(), payload, len(payload), 0,
                                      1 if set_mark else 0, mark, out,
                                      0 if set_mark else _ANSWER, out_len)
            data = ffi.buffer(out, out_len[0])[:] if not set_mark and rc >= 0 else b""
        return int(rc), data

    def flow(self, payload: bytes) -> Optional[Flow]:
        """The connection of the L3 packet ``payload``, or None when the
        kernel tracks none (yet).

        Raises ClosedError after :meth:`close`, NetlinkError when the kernel
        refuses the request (PermissionDenied without CAP_NET_ADMIN)."""
        rc, data = self._request(payload, False, 0)
        if rc < 0:
            if rc in _NONE:
                return None
            raise error_from_errno(-rc, "looking up the connection of a packet")
        family = lib.NFPROTO_IPV6 if payload[0] >> 4 == 6 else lib.NFPROTO_IPV4
        return ct_flow(data, 0, len(data), family)

    def set_mark(self, payload: bytes, mark: int) -> int:
        """Set the mark of the L3 packet's connection; 0, or -errno from the
        kernel (-ENOENT: it tracks no such connection).

        Raises ClosedError after :meth:`close`, OSError when the socket
        cannot be opened."""
        return self.set(payload, mark=mark)

    def set(self, payload: bytes, *, mark: Optional[int] = None,
            labels: Optional[FrozenSet[int]] = None) -> int:
        """Set the mark and/or replace the labels (checked bits) of the L3
        packet's connection, in one request; 0, or -errno from the kernel
        (-ENOENT: it tracks no such connection; -ENOSPC: labels without the
        connlabel extension).

        Raises ClosedError after :meth:`close`, OSError when the socket
        cannot be opened."""
        what = (lib.NFB_CTSET_MARK if mark is not None else 0) | (
            lib.NFB_CTSET_LABELS if labels is not None else 0)
        raw = labels_bytes(labels) + _ALL_LABELS if labels is not None else ffi.NULL
        with self._lock:
            if self._closed:
                raise ClosedError("%s is closed; create a new one" % self._owner)
            if self._sock is None:
                self._sock = open_netfilter_socket(self._netns)
            return int(lib.nfb_ct_set_by_packet(self._sock.fileno(), payload, len(payload), 0,
                                                what, mark or 0, raw))

    def close(self) -> None:
        """Close the socket; later requests raise ClosedError."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None
