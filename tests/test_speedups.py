# SPDX-License-Identifier: GPL-2.0-or-later
"""The optional compiled speedups: built wherever nfbind is (make test-matrix
runs this on every supported Python), and NFBIND_PURE switches them off."""
from __future__ import annotations

import subprocess
import sys

import pytest

from nfbind import _speedups

pytestmark = pytest.mark.unit

NAMES = ["_fastq", "_fastct"]


@pytest.mark.parametrize("name", NAMES)
def test_built_and_loaded(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_speedups.ENV_PURE, raising=False)
    mod = _speedups.load(name)
    assert mod is not None, "nfbind.%s was not built: is a C compiler installed?" % name
    assert mod.__name__ == "nfbind." + name
    assert mod.__file__ is not None and mod.__file__.endswith(".so")


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_pure_switch(value: str, pure: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_speedups.ENV_PURE, value)
    assert _speedups.pure() is pure
    for name in NAMES:
        assert (_speedups.load(name) is None) is pure


def test_missing_module_is_none() -> None:
    assert _speedups.load("_no_such_speedup") is None


def test_pure_in_a_new_interpreter() -> None:
    """The switch read at import time: a process started with it set sees
    no speedup loaded by nfbind's channels."""
    code = ("import sys, nfbind, nfbind._speedups as s; "
            "print(s.pure(), sorted(m for m in sys.modules if m.startswith('nfbind._fast')))")
    env = {"NFBIND_PURE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split(None, 1)
    assert out[0] == "True"
    assert out[1].strip() == "[]"
