# SPDX-License-Identifier: GPL-2.0-or-later
"""The shape of src/nfbind: no import cycle among its modules, no module over
800 lines.

Imports are read with ``ast`` from the source, wherever they stand: at the
top, inside functions, under ``if TYPE_CHECKING``; relative imports are
resolved against the importing module's package.  ``from pkg import name``
is an import of the submodule ``pkg.name`` when there is one, else of
``pkg``; ``from pkg.sub import name`` is an import of ``pkg.sub`` (the file
the names come from, as ``farm-studio look`` draws it).  Compiled modules
(``_nfcore`` ...) and outside packages are not nodes.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "nfbind"
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def compiled() -> Set[str]:
    """The compiled modules, from nfbind/_channels.py (loaded on its own, as
    build_ffi.py does: whether or not they are built here)."""
    spec = importlib.util.spec_from_file_location("_nfbind_channels", PKG / "_channels.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"nfbind." + m.module for m in [mod.CORE, *mod.CHANNELS.values()]}


def imported(name: str, path: Path, known: Set[str]) -> Iterator[str]:
    """What module ``name`` (at ``path``) imports: ``from pkg import x`` is
    ``pkg.x`` when that is in ``known`` (a module), else ``pkg``."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = base + "." + alias.name
                yield sub if sub in known else base


def graph() -> Dict[str, Set[str]]:
    """Module -> the modules it imports (nfbind's own .py modules only)."""
    known = modules()
    every = set(known) | compiled()
    edges: Dict[str, Set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target in imported(name, path, every):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan),
    and modules that import themselves."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read():
    """The reader finds what is known to be there, so an empty graph cannot
    pass the cycle test: relative, function-level and package imports."""
    edges = graph()
    assert "nfbind.conntrack.model" in edges["nfbind.conntrack._records"]
    assert "nfbind._netlink" in edges["nfbind._channel"]
    # packet.py decodes pkt.ct with the conntrack package's decoder
    assert "nfbind.conntrack._records" in edges["nfbind.packet"]
    assert "nfbind.conntrack" in edges["nfbind"]
    # imports inside functions count (cli's parse_proto import is one)
    assert "nfbind.conntrack" in edges["nfbind.cli"]


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    edges = graph()
    found = cycles(edges)
    lines = []
    for comp in found:
        members = set(comp)
        ties = ["%s -> %s" % (a, b) for a in comp for b in sorted(edges[a] & members)]
        lines.append("cycle of %s: %s" % (", ".join(comp), "; ".join(ties)))
    assert not found, "import cycles in src/nfbind:\n" + "\n".join(lines)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_800_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, "%s has %d lines (at most %d): split it by job" % (
        path.relative_to(SRC), n, MAX_LINES)
