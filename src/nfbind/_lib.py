# SPDX-License-Identifier: GPL-2.0-or-later
"""The compiled module that provides the constants all three share.

Every compiled module carries the declarations of ``cdef/common.h``; this picks
the first one that imports, so the shared code works on a machine that lacks
one of the C libraries at run time.
"""
from __future__ import annotations

import importlib
from typing import Any


def _first() -> Any:
    error = None
    for name in ("_nfqueue", "_nflog", "_conntrack"):
        try:
            return importlib.import_module("nfbind." + name)
        except ImportError as e:
            error = e
    raise ImportError(
        "nfbind's compiled modules are missing: reinstall nfbind on a machine "
        "with libnetfilter-queue-dev, libnetfilter-log-dev, "
        "libnetfilter-conntrack-dev and libmnl-dev"
    ) from error


_mod = _first()
ffi: Any = _mod.ffi
lib: Any = _mod.lib

__all__ = ["ffi", "lib"]
