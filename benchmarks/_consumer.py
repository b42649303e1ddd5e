# SPDX-License-Identifier: GPL-2.0-or-later
"""The command line the nfbind consumers (nfq_nfbind.py, nflog_nfbind.py)
share with the C references (nfq_ref.c and nflog_ref.c parse it in
ref_args.h), and their RSS sampling.  Kept apart from the drivers'
_harness.py, and without argparse, so that a consumer imports no more than
it needs: the memory rows report its resident set size.

    PROG [--idle S] [--rcvbuf B] [--rss-every K] [--timeout T] [OWN OPTIONS]
         NUM N [MAX_QUEUE_LEN]

``--idle S`` stop S seconds after the last packet (what that means is the
consumer's), ``--rcvbuf B`` the receive buffer to force (default 64 MiB),
``--rss-every K`` an RSS sample every K packets, ``--timeout T`` give up T
seconds after READY (default 60).  A bad command line exits 64, as the C
references do.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Any, Dict, Sequence

_PAGE = os.sysconf("SC_PAGE_SIZE")

#: option -> (attribute, type, default, what the usage calls its value)
COMMON: Dict[str, tuple] = {
    "--idle": ("idle", float, None, "S"),
    "--rcvbuf": ("rcvbuf", int, 64 << 20, "B"),
    "--rss-every": ("rss_every", int, 0, "K"),
    "--timeout": ("timeout", int, 60, "T"),
}


def _fail(prog: str, usage: str, why: str) -> None:
    print(f"{prog}: {why}\nusage: {prog} {usage}", file=sys.stderr)
    raise SystemExit(64)


def parse_consumer_args(argv: Sequence[str], prog: str, *, max_len: bool = False,
                        options: Dict[str, tuple] | None = None,
                        flags: Sequence[str] = ()) -> Any:
    """``argv`` (without the program name) as attributes: idle, rcvbuf,
    rss_every, timeout, num, packets, max_len (with ``max_len``), and the
    consumer's own ``options`` (``{"--name": (attribute, type, default,
    metavar)}``)
    and ``flags`` (``--name`` -> attribute ``name``, False unless given)."""
    spec: Dict[str, tuple] = dict(COMMON, **(options or {}))
    positional = ["num", "packets"] + (["max_len"] if max_len else [])
    usage = " ".join([f"[{o} {m}]" for o, (_, _, _, m) in spec.items()]
                     + [f"[{f}]" for f in flags]
                     + ["QUEUE_NUM" if max_len else "GROUP", "N"]
                     + (["MAX_QUEUE_LEN"] if max_len else []))
    out: Dict[str, Any] = {attr: default for attr, _, default, _ in spec.values()}
    out.update({f[2:].replace("-", "_"): False for f in flags})
    args = list(argv)
    values = []
    while args:
        tok = args.pop(0)
        name, eq, inline = tok.partition("=")
        if name in flags and not eq:
            out[name[2:].replace("-", "_")] = True
        elif name in spec:
            if not eq and not args:
                _fail(prog, usage, f"{name} needs a value")
            attr, kind, _, _ = spec[name]
            text = inline if eq else args.pop(0)
            try:
                out[attr] = kind(text)
            except ValueError:
                _fail(prog, usage, f"bad {name}: {text}")
        elif tok.startswith("--"):
            _fail(prog, usage, f"unknown option {tok}")
        else:
            values.append(tok)
    if len(values) != len(positional):
        _fail(prog, usage, "wrong number of arguments")
    for attr, text in zip(positional, values):
        try:
            out[attr] = int(text, 0)
        except ValueError:
            _fail(prog, usage, f"bad {attr}: {text}")
    a = SimpleNamespace(**out)
    if a.packets <= 0:
        _fail(prog, usage, "packet count must be > 0")
    if a.idle is not None and not 0 < a.idle <= 3600:
        _fail(prog, usage, f"bad --idle: {a.idle}")
    if a.rss_every < 0 or not 0 < a.timeout <= 86400:
        _fail(prog, usage, "bad --rss-every or --timeout")
    return a


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE
