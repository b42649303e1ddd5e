# SPDX-License-Identifier: GPL-2.0-or-later
"""The typing stubs of the compiled modules (src/nfbind/_nfcore.pyi,
_nfqueue.pyi, _nflog.pyi, _conntrack.pyi) agree with cdef/*.h.

Three checks, each able to fail on its own:

* the stubs are what tools/stubgen.py writes from the cdefs today (a cdef
  edited without rerunning it fails here, with the command to run);
* read with a plain scan of each header, every ``#define``, enum member and
  function is declared in its stub's ``lib``, and nothing else is (so a bug
  in the generator's parser cannot hide a name);
* every name and struct field a stub declares exists in the compiled module
  (``lib`` and ``ffi.typeof``), so the stubs describe what runs.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "nfbind"
HEADERS = {
    "_nfcore": "core.h",
    "_nfqueue": "nfqueue.h",
    "_nflog": "nflog.h",
    "_conntrack": "conntrack.h",
}
FIX = "run `python tools/stubgen.py` after changing cdef/*.h"


def _stubgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nfbind_stubgen", ROOT / "tools" / "stubgen.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def header_names(text: str) -> Set[str]:
    """The names a cdef header gives ``lib``: #defines, enum members and
    functions (a scan independent of tools/stubgen.py's parser)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    names = set(re.findall(r"^\s*#\s*define\s+(\w+)", text, flags=re.M))
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    for body in re.findall(r"\benum\s+\w*\s*\{([^}]*)\}", text):
        names |= {m.split("=")[0].strip() for m in body.split(",")} - {"", "..."}
    # functions: a name and a parenthesized list at the top level, ended by ';'
    top = re.sub(r"\{[^{}]*\}", "{}", re.sub(r"\{[^{}]*\}", "{}", text))
    names |= set(re.findall(r"(\w+)\s*\([^()]*\)\s*;", top))
    return names


def stub_classes(module: str) -> Dict[str, ast.ClassDef]:
    tree = ast.parse((PKG / (module + ".pyi")).read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def class_names(cls: ast.ClassDef) -> Set[str]:
    out: Set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.FunctionDef):
            out.add(node.name)
    return out


def test_stubs_are_what_stubgen_writes() -> None:
    stale: List[str] = []
    for path, text in _stubgen().stubs().items():
        have = path.read_text(encoding="utf-8") if path.exists() else ""
        if have != text:
            stale.append(str(path.relative_to(ROOT)))
    assert not stale, "stale stubs %s: %s" % (", ".join(stale), FIX)


@pytest.mark.parametrize("module", sorted(HEADERS))
def test_stub_lib_names_are_the_headers(module: str) -> None:
    want = header_names((ROOT / "cdef" / HEADERS[module]).read_text(encoding="utf-8"))
    have = class_names(stub_classes(module)["_Lib"])
    assert want, "nothing read from cdef/%s" % HEADERS[module]
    assert not want - have, "cdef/%s declares %s, missing from src/nfbind/%s.pyi: %s" % (
        HEADERS[module], sorted(want - have), module, FIX)
    assert not have - want, "src/nfbind/%s.pyi declares %s, not in cdef/%s: %s" % (
        module, sorted(have - want), HEADERS[module], FIX)


def test_header_scan_reads_every_kind() -> None:
    """The scan above finds defines, enum members and functions, including
    multi-line prototypes, and skips struct fields and comments."""
    text = """
    /* #define COMMENTED ... */
    #define ONE ...
    enum e { A, B = 2, ... };
    struct s { int field; char *ptr; ...; };
    struct s *make(int fd,
                   uint32_t n);   // trailing
    void drop(struct s *p);
    """
    assert header_names(text) == {"ONE", "A", "B", "make", "drop"}


@pytest.mark.parametrize("module", sorted(HEADERS))
def test_stub_matches_the_compiled_module(module: str) -> None:
    compiled = importlib.import_module("nfbind." + module)
    classes = stub_classes(module)
    lib_names = class_names(classes["_Lib"])
    absent = sorted(n for n in lib_names if not hasattr(compiled.lib, n))
    assert not absent, "nfbind.%s.lib has no %s" % (module, absent)
    for name, cls in classes.items():
        if not name.startswith("struct_"):
            continue
        fields = class_names(cls)
        if not fields:  # opaque
            continue
        ctype = compiled.ffi.typeof("struct " + name[len("struct_"):])
        real = {f for f, _ in ctype.fields}
        assert fields == real, "struct %s: stub %s, compiled %s" % (
            name[len("struct_"):], sorted(fields), sorted(real))
