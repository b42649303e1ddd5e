# SPDX-License-Identifier: GPL-2.0-or-later
"""The optional compiled speedups (``nfbind._fastq``, ``nfbind._fastct``).

Each does what a Python loop of nfbind also does, faster; nfbind uses it
when it was built (``pip install`` builds it wherever it can compile the
cffi modules) unless the environment variable ``NFBIND_PURE`` is set to
something other than ``""`` or ``0``, which makes every channel use its
Python loop (the results are the same).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

ENV_PURE = "NFBIND_PURE"


def pure() -> bool:
    """Whether ``NFBIND_PURE`` asks for the Python loops."""
    return os.environ.get(ENV_PURE, "") not in ("", "0")


def load(name: str) -> Optional[ModuleType]:
    """The speedup module ``nfbind.<name>``, or None when it was not built
    or ``NFBIND_PURE`` is set."""
    if pure():
        return None
    try:
        return importlib.import_module("nfbind." + name)
    except ImportError:
        return None
