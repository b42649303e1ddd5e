# SPDX-License-Identifier: GPL-2.0-or-later
"""Child processes that import nfbind, and this process's descriptors."""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import List

#: the package sources, for the PYTHONPATH of child processes
SRC = str(Path(__file__).resolve().parents[2] / "src")



def child_env() -> dict:
    """The environment for a child Python process that imports nfbind."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def open_fds() -> int:
    """How many file descriptors this process has open."""
    gc.collect()  # so that earlier tests' garbage does not move the count
    return len(os.listdir("/proc/self/fd"))


def children() -> List[int]:
    """The pids of this process's children (of all its threads)."""
    pids: List[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % tid) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def script(name: str) -> str:
    """The path of one of the child scripts kept in this package
    (``fault_consumer.py``, ``fault_memory_child.py``)."""
    path = Path(__file__).resolve().with_name(name)
    if not path.is_file():
        raise FileNotFoundError("no child script %s in %s" % (name, path.parent))
    return str(path)
