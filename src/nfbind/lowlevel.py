# SPDX-License-Identifier: GPL-2.0-or-later
"""Hazardous materials: the compiled cffi modules themselves.

.. warning::
   Everything here calls C directly.  A wrong pointer, length or lifetime
   crashes the interpreter instead of raising an exception, and nothing here
   is covered by nfbind's compatibility promise.  Use :class:`nfbind.NfQueue`
   unless you need a C call it does not make.

``nfqueue``, ``nflog`` and ``conntrack`` are ``(ffi, lib)`` pairs, or None
when that C library is not installed on this machine.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

__all__ = ["nfqueue", "nflog", "conntrack"]


def _load(name: str) -> Optional[Tuple[Any, Any]]:
    import importlib

    try:
        mod = importlib.import_module("nfbind." + name)
    except ImportError:
        return None
    return mod.ffi, mod.lib


nfqueue = _load("_nfqueue")
nflog = _load("_nflog")
conntrack = _load("_conntrack")
