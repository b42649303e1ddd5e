# SPDX-License-Identifier: GPL-2.0-or-later
"""The core compiled module, ``nfbind._nfcore``: what the channels share.

It is linked to libmnl only and every install has it: the constants from the
kernel's headers (netlink, netfilter hooks and verdicts, conntrack's CTA_*,
IPS_*, TCP/SCTP states, the NFQUEUE/NFLOG values the enums need,
capabilities), the packet record layout of NFQUEUE and NFLOG, the CTA_*
parser behind ``pkt.ct``, conntrack lookups by packet, the L4 checksum, and
capget/capset/prctl.  Each channel module (``_nfqueue``, ``_nflog``,
``_conntrack``) includes it: the C types are the same in all four, so a
record made by one is accepted by another.

Python code reads shared constants and functions from here and
channel-specific ones from the channel's own module.
"""
from __future__ import annotations

try:
    from . import _nfcore
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "nfbind's core module nfbind._nfcore is missing or broken (%s): nfbind was not "
        "built on this machine; install libmnl-dev (Debian/Ubuntu) or libmnl-devel "
        "(Fedora) with pkg-config and a C compiler, then install nfbind again" % e
    ) from e

#: the cffi FFI of nfbind._nfcore (types: ``ffi.new("struct nfb_ct_rec *")``);
#: its static type, and lib's, are in _nfcore.pyi (generated from cdef/core.h)
ffi = _nfcore.ffi
#: its compiled library: constants and the core's C functions
lib = _nfcore.lib

__all__ = ["ffi", "lib"]
