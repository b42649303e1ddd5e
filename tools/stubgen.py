# SPDX-License-Identifier: GPL-2.0-or-later
"""Write the typing stubs of nfbind's compiled modules from their cdefs.

    python tools/stubgen.py           # rewrite src/nfbind/_nf*.pyi, _conntrack.pyi
    python tools/stubgen.py --check   # exit 1 (and say which) when one is stale

Each compiled module gets a stub (``src/nfbind/_nfcore.pyi`` from
``cdef/core.h``, ``_nfqueue.pyi`` from ``cdef/nfqueue.h`` ...) declaring

* ``lib``: every ``#define``, every enum member (``int``) and every function
  of that header, with the C types mapped onto Python's (see
  ``src/nfbind/_cdata.pyi``), and nothing else: a channel's ``lib`` reaches
  the core's names at run time too (cffi's ``ffi.include``), but nfbind reads
  them from the core's module, and the stubs hold it to that;
* ``ffi``: cffi's FFI, whose ``new()`` returns the struct class (or
  :class:`IntArray`, :class:`CharArray`) for the C types the module knows;
* one ``struct_<tag>`` class per struct of the header, with its fields.

The parser reads the subset of C the cdefs use (cffi's own cdef syntax:
``#define X ...``, enums, structs with ``...;``, function prototypes).
tests/test_stubs.py checks that the committed stubs are what this script
writes, and, independently, that each stub's ``lib`` names are exactly the
header's.
"""
from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
CDEF = ROOT / "cdef"
PKG = ROOT / "src" / "nfbind"

#: compiled module -> its header; the core first (the channels include it)
MODULES: Dict[str, str] = {
    "_nfcore": "core.h",
    "_nfqueue": "nfqueue.h",
    "_nflog": "nflog.h",
    "_conntrack": "conntrack.h",
}
CORE = "_nfcore"

INT_TYPES = (
    "char signed", "char unsigned", "short", "short unsigned", "int", "int unsigned",
    "unsigned", "long", "long unsigned", "long long", "long long unsigned",
    "size_t", "ssize_t",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
)
#: the integer cdecls ffi.new() is typed for (as ``T *`` and ``T[]``)
NEW_INT_TYPES = (
    "int", "unsigned int", "long", "unsigned long", "size_t",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
)
WIDTH = 88


class Decl(NamedTuple):
    """A C declarator: base type words, pointer depth, array or not, name."""

    base: str
    ptrs: int
    array: bool
    name: str


class Func(NamedTuple):
    name: str
    ret: Decl
    params: List[Decl]


class Struct(NamedTuple):
    tag: str
    fields: Optional[List[Decl]]   # None: opaque (``struct x;``)


class Header(NamedTuple):
    constants: List[str]           # #defines and enum members, in order
    structs: List[Struct]
    funcs: List[Func]


# -- parsing ---------------------------------------------------------------------------


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def statements(text: str) -> List[str]:
    """Top-level declarations (split at ``;`` outside braces and parentheses)."""
    out: List[str] = []
    depth = 0
    cur: List[str] = []
    for ch in text:
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        if ch == ";" and depth == 0:
            out.append(" ".join("".join(cur).split()))
            cur = []
        else:
            cur.append(ch)
    rest = " ".join("".join(cur).split())
    if rest:
        raise ValueError("cdef ends inside a declaration: %r" % rest[:80])
    return [s for s in out if s]


def normalize_base(words: str) -> str:
    """Type words without qualifiers; the words of a builtin type sorted
    (``unsigned long`` -> ``long unsigned``), so that spellings compare."""
    ws = [w for w in words.split() if w not in ("const", "volatile")]
    if ws[:1] in (["struct"], ["enum"], ["union"]):
        return " ".join(ws)
    return " ".join(sorted(ws))


def declarator(text: str, anonymous: bool = False) -> Decl:
    """``const struct nfb_q *q`` -> Decl("struct nfb_q", 1, False, "q")."""
    s = re.sub(r"\s*\*\s*", " * ", text).strip()
    array = False
    m = re.search(r"((?:\[[^\]]*\]\s*)+)$", s)
    if m:
        array = True
        s = s[: m.start()].strip()
    toks = s.split()
    ptrs = toks.count("*")
    toks = [t for t in toks if t != "*"]
    name = ""
    if not anonymous:
        if len(toks) < 2:
            raise ValueError("cannot read declaration %r" % text)
        name = toks.pop()
    return Decl(normalize_base(" ".join(toks)), ptrs, array, name)


def parse(text: str) -> Header:
    text = strip_comments(text)
    constants: List[str] = []
    body: List[str] = []
    for line in text.splitlines():
        m = re.match(r"\s*#\s*define\s+(\w+)", line)
        if m:
            constants.append(m.group(1))
        elif not line.lstrip().startswith("#"):
            body.append(line)
    structs: List[Struct] = []
    funcs: List[Func] = []
    for st in statements("\n".join(body)):
        m = re.fullmatch(r"enum\s+\w*\s*\{(.*)\}", st)
        if m:
            for item in m.group(1).split(","):
                item = item.strip()
                if item and item != "...":
                    constants.append(item.split("=")[0].strip())
            continue
        m = re.fullmatch(r"struct\s+(\w+)\s*\{(.*)\}", st)
        if m:
            fields = [declarator(f) for f in (x.strip() for x in m.group(2).split(";"))
                      if f and f != "..."]
            structs.append(Struct(m.group(1), fields))
            continue
        m = re.fullmatch(r"struct\s+(\w+)", st)
        if m:
            structs.append(Struct(m.group(1), None))
            continue
        m = re.fullmatch(r"(.*?)(\w+)\s*\((.*)\)", st)
        if m:
            ret = declarator(m.group(1), anonymous=True)
            raw = m.group(3).strip()
            params = [] if raw in ("", "void") else [
                declarator(p) for p in (x.strip() for x in raw.split(","))]
            funcs.append(Func(m.group(2), ret, params))
            continue
        raise ValueError("cannot read cdef declaration %r" % st[:80])
    return Header(constants, structs, funcs)


# -- C types -> Python types -----------------------------------------------------------


def struct_class(base: str) -> str:
    return "struct_" + base.split()[1]


def pytype(d: Decl, role: str) -> str:
    """The annotation of ``d`` as a ``param``, ``ret`` or ``field``."""
    base = d.base
    indir = d.ptrs + (1 if d.array else 0)
    is_int = base in INT_TYPES or base.startswith("enum ")
    if base.startswith("union "):
        raise ValueError("unions are not mapped: %s" % base)
    if indir == 0:
        if is_int:
            return "int"
        if base == "char":
            return "bytes"
        if base.startswith("struct "):
            return struct_class(base)
        if base == "void" and role == "ret":
            return "None"
        if base in ("float", "double"):
            return "float"
        raise ValueError("no Python type for C type %r" % base)
    if indir == 1:
        if base.startswith("struct "):
            return struct_class(base)
        if base == "char":
            return "CharArg" if role == "param" else "CharArray"
        if is_int:
            return "CData" if role == "param" else "IntArray"
    return "CData"


# -- writing ---------------------------------------------------------------------------


def pyname(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


def literal_overload(cdecls: Sequence[str], result: str) -> List[str]:
    """One ``@overload`` of ``FFI.new`` for the cdecls that make ``result``."""
    items = ['"%s"' % c for c in cdecls]
    one = "    def new(self, cdecl: Literal[%s], init: object = ...) -> %s: ..." % (
        ", ".join(items), result)
    if len(one) <= WIDTH:
        return ["    @overload", one]
    two = "        self, cdecl: Literal[%s], init: object = ..." % ", ".join(items)
    if len(two) <= WIDTH:
        return ["    @overload", "    def new(", two, "    ) -> %s: ..." % result]
    lines = ["    @overload", "    def new(", "        self,", "        cdecl: Literal["]
    cur = "           "
    for item in items:
        if len(cur) + 1 + len(item) + 1 > WIDTH:
            lines.append(cur)
            cur = "           "
        cur += " " + item + ","
    lines += [cur, "        ],", "        init: object = ...,", "    ) -> %s: ..." % result]
    return lines


def func_lines(f: Func) -> List[str]:
    params = ["%s: %s" % (pyname(p.name), pytype(p, "param")) for p in f.params]
    ret = pytype(f.ret, "ret")
    args = ", ".join(["self"] + params + ["/"])
    one = "    def %s(%s) -> %s: ..." % (f.name, args, ret)
    if len(one) <= WIDTH:
        return [one]
    return (["    def %s(" % f.name, "        self,"]
            + ["        %s," % p for p in params]
            + ["        /,", "    ) -> %s: ..." % ret])


def render(module: str, header_name: str, h: Header, core: Optional[Header]) -> str:
    """The stub of ``module`` (``core``: the included core header, for channels)."""
    out: List[str] = [
        "# SPDX-License-Identifier: GPL-2.0-or-later",
        "# Generated by tools/stubgen.py from cdef/%s: do not edit by hand." % header_name,
        "# After changing a cdef, run `python tools/stubgen.py` (tests/test_stubs.py",
        "# checks that this file is current).",
        '"""Types of ``nfbind.%s``: its ``ffi``, its ``lib`` and its C structs' % module,
        "(``struct_*`` classes exist for the type checker only).\"\"\"",
        "from typing import Final, Literal, overload",
        "",
        "from ._cdata import FFI, CData, CharArg, CharArray, CStruct, IntArray",
    ]
    core_structs = [s for s in core.structs if s.fields is not None] if core else []
    if core_structs:
        out.append("from ._nfcore import (")
        out += ["    %s as %s," % (struct_class("struct " + s.tag),
                                     struct_class("struct " + s.tag)) for s in core_structs]
        out.append(")")
    for s in h.structs:
        out += ["", "", "class %s(CStruct):" % struct_class("struct " + s.tag)]
        if s.fields is None:
            out.append('    """``struct %s`` (opaque)."""' % s.tag)
            continue
        out.append('    """``struct %s``."""' % s.tag)
        out.append("")
        out += ["    %s: %s" % (pyname(f.name), pytype(f, "field")) for f in s.fields]
    out += ["", "", "class _FFI(FFI):"]
    known = core_structs + [s for s in h.structs if s.fields is not None]
    for s in known:
        out += literal_overload(["struct %s *" % s.tag], struct_class("struct " + s.tag))
    out += literal_overload([c for t in NEW_INT_TYPES for c in (t + " *", t + "[]")],
                            "IntArray")
    out += literal_overload(["char *", "char[]"], "CharArray")
    out += ["    @overload", "    def new(self, cdecl: str, init: object = ...) -> CData: ..."]
    out += ["", "", "class _Lib:"]
    out += ["    %s: Final[int]" % c for c in h.constants]
    if h.constants and h.funcs:
        out.append("")
    for f in h.funcs:
        out += func_lines(f)
    out += ["", "", "ffi: _FFI", "lib: _Lib", ""]
    return "\n".join(out)


def headers() -> Dict[str, Header]:
    return {m: parse((CDEF / h).read_text(encoding="utf-8")) for m, h in MODULES.items()}


def stubs() -> Dict[Path, str]:
    """Stub path -> the text it should have."""
    hs = headers()
    return {PKG / (m + ".pyi"): render(m, MODULES[m], hs[m], None if m == CORE else hs[CORE])
            for m in MODULES}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 when a stub differs from its cdef")
    args = ap.parse_args(argv)
    stale: List[Tuple[Path, str]] = []
    for path, text in stubs().items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            stale.append((path, text))
    for path, text in stale:
        rel = path.relative_to(ROOT)
        if args.check:
            print("%s is stale: run python tools/stubgen.py" % rel, file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote %s" % rel)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
