# SPDX-License-Identifier: GPL-2.0-or-later
"""The compiled module that provides the constants all three share.

Every compiled module carries the declarations of ``cdef/common.h``; this picks
the first one that imports, so the shared code works on a machine that lacks
one of the C libraries at run time.
"""
from __future__ import annotations

from typing import Any

ffi: Any
lib: Any

try:
    from ._nfqueue import ffi, lib
except ImportError:  # pragma: no cover - depends on the machine
    try:
        from ._nflog import ffi, lib
    except ImportError:
        from ._conntrack import ffi, lib

__all__ = ["ffi", "lib"]
