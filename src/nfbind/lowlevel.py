# SPDX-License-Identifier: GPL-2.0-or-later
"""Hazardous materials: the compiled cffi modules themselves.

.. warning::
   Everything here calls C directly.  A wrong pointer, length or lifetime
   crashes the interpreter instead of raising an exception, and nothing here
   is covered by nfbind's compatibility promise.  Use :class:`nfbind.NfQueue`
   unless you need a C call it does not make.

``core`` is the ``(ffi, lib)`` pair of ``nfbind._nfcore``, which every
install has: the constants, types and functions the channels share (the
packet record layout, the CTA_* parser, conntrack by packet, the L4
checksum, capabilities).  ``nfqueue``, ``nflog`` and ``conntrack`` are the
``(ffi, lib)`` pairs of the channel modules, or None when that channel was
not built on this machine.  A channel's ``lib`` also reaches the core's
names, and its ``ffi`` knows the core's types.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Tuple

from . import _core

__all__ = ["core", "nfqueue", "nflog", "conntrack"]

core: Tuple[Any, Any] = (_core.ffi, _core.lib)


def _load(name: str) -> Optional[Tuple[Any, Any]]:
    try:
        mod = importlib.import_module("nfbind." + name)
    except ImportError:
        return None
    return mod.ffi, mod.lib


nfqueue = _load("_nfqueue")
nflog = _load("_nflog")
conntrack = _load("_conntrack")
