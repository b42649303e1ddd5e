# SPDX-License-Identifier: GPL-2.0-or-later
"""Integer constants read from the text of installed C headers.

nfbind takes its constants from its compiled modules; a test that compares
them with these reads the same headers by another way (no compiler, no
cffi), so a member built from the wrong constant shows up.  Understood:
``#define NAME VALUE`` (object-like macros only) and ``enum { A, B = 3, C =
(1 << B), D = A | C, ... }`` with implicit increments; preprocessor lines
inside an enum body are taken as defines and left out of the counting.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional

#: where the headers of the C libraries and the kernel's UAPI are installed
INCLUDE_DIRS = ["/usr/include", "/usr/local/include"]

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)(?!\()[ \t]+([^\n]+)$", re.M)
_PREPROC = re.compile(r"^\s*#[^\n]*$", re.M)
_ENUM = re.compile(r"\benum\s*(?:[A-Za-z_]\w*)?\s*\{([^{}]*)\}", re.S)
#: what a constant expression may contain once the names are known
_SAFE = re.compile(r"^[\s\w()<>|&+\-~*^]*$")
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")


def find(header: str) -> str:
    """The path of ``header`` (e.g. ``linux/netfilter.h``) in INCLUDE_DIRS."""
    for d in INCLUDE_DIRS:
        path = os.path.join(d, header)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("%s is not installed in %s" % (header, ", ".join(INCLUDE_DIRS)))


def _eval(expr: str, names: Dict[str, int]) -> Optional[int]:
    expr = _SUFFIX.sub(r"\1", expr.strip())
    if not expr or not _SAFE.match(expr):
        return None
    for word in re.findall(r"\b[A-Za-z_]\w*", expr):
        if word not in names:
            return None
    try:
        value = eval(expr, {"__builtins__": {}}, dict(names))  # noqa: S307 - checked above
    except Exception:  # noqa: BLE001 - not a constant expression after all
        return None
    return value if isinstance(value, int) else None


def constants(headers: Iterable[str]) -> Dict[str, int]:
    """Every integer constant the headers define, by name."""
    names: Dict[str, int] = {}
    defines: List[tuple] = []
    for header in headers:
        with open(find(header), encoding="utf-8", errors="replace") as f:
            text = _COMMENT.sub(" ", f.read())
        text = text.replace("\\\n", " ")
        defines += _DEFINE.findall(text)
        for body in _ENUM.findall(_PREPROC.sub("", text)):
            nxt = 0
            for item in body.split(","):
                item = item.strip()
                if not item:
                    continue
                name, _, expr = item.partition("=")
                name = name.strip()
                if expr:
                    value = _eval(expr, names)
                    if value is None:
                        break  # an enum we cannot follow: stop counting it
                else:
                    value = nxt
                names[name] = value
                nxt = value + 1
    # defines may refer to each other and to enum members, in any order
    pending = list(defines)
    while pending:
        left = []
        for name, expr in pending:
            value = _eval(expr, names)
            if value is None:
                left.append((name, expr))
            else:
                names.setdefault(name, value)
        if len(left) == len(pending):
            break
        pending = left
    return names
