# SPDX-License-Identifier: GPL-2.0-or-later
"""The documentation's code blocks fit the page: no line of a literal block
in docs/*.rst (``::`` paragraphs, ``code-block``, ``code``, ``sourcecode``)
is wider than 88 columns once the block's indentation is taken off, so none
scrolls sideways in the rendered site."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
WIDTH = 88
_CODE_DIRECTIVE = re.compile(r"^\s*\.\.\s+(code-block|code|sourcecode)::")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def code_blocks(text: str) -> Iterator[List[Tuple[int, str]]]:
    """The (line number, text) of every line of every literal block in reST
    ``text``, the block's indentation taken off."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opens = bool(_CODE_DIRECTIVE.match(line)) or (
            stripped.endswith("::") and not stripped.startswith(".."))
        if not opens:
            i += 1
            continue
        base = _indent(line)
        j = i + 1
        block: List[Tuple[int, str]] = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append((j + 1, lines[j]))
            j += 1
        body = [(n, l) for n, l in block if l.strip()]
        if _CODE_DIRECTIVE.match(line):  # the directive's options are not code
            while body and body[0][1].strip().startswith(":"):
                body.pop(0)
        if body:
            common = min(_indent(l) for _, l in body)
            yield [(n, l[common:]) for n, l in body]
        i = j


def test_the_scanner_finds_blocks():
    text = ("Text::\n\n    short\n\nmore\n\n.. code-block:: sh\n   :caption: x\n\n"
            "   " + "y" * 89 + "\n\n.. toctree::\n\n   " + "z" * 100 + "\n")
    blocks = list(code_blocks(text))
    assert blocks == [[(3, "short")], [(10, "y" * 89)]]


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_code_blocks_fit(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    wide = ["%s:%d: %d columns: %s..." % (page, n, len(l), l[:60])
            for block in code_blocks(text) for n, l in block if len(l) > WIDTH]
    assert not wide, "code lines wider than %d columns:\n%s" % (WIDTH, "\n".join(wide))
