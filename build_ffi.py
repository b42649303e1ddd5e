# SPDX-License-Identifier: GPL-2.0-or-later
"""cffi out-of-line (API mode) builders for nfbind's four compiled modules.

* ``nfbind._nfcore``    libmnl: what the channels share (always built)
* ``nfbind._nfqueue``   libnetfilter_queue + libmnl
* ``nfbind._nflog``     libnetfilter_log + libmnl
* ``nfbind._conntrack`` libnetfilter_conntrack + libmnl

Each channel module includes the core (``ffi.include``: the same C types and
constants, and the core's functions reachable through its ``lib``) and links
only its own library.  A channel whose library headers are missing is
skipped with one line naming its packages; ``NFBIND_REQUIRE=all`` (or a
comma list such as ``nflog,conntrack``) makes that an error, for packagers.
Without libmnl nothing builds.

The C declarations live in ``cdef/*.h`` and the C code in ``cdef/*.c``.
Run ``python build_ffi.py`` to compile the buildable modules in place
(``src/nfbind``); ``setup.py`` lists them in ``cffi_modules``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Dict, List, NamedTuple, Optional

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CDEF = os.path.join(HERE, "cdef")
ENV_REQUIRE = "NFBIND_REQUIRE"

_INCLUDE_DIRS = ["/usr/include", "/usr/local/include"]


def _load_channels():
    """src/nfbind/_channels.py (the module table), without importing nfbind."""
    path = os.path.join(HERE, "src", "nfbind", "_channels.py")
    ns: Dict[str, object] = {"__name__": "nfbind_build_channels"}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), ns)
    return ns


_CH = _load_channels()
CORE = _CH["CORE"]
CHANNELS = _CH["CHANNELS"]
install_hint = _CH["install_hint"]


class MissingLibraryError(SystemExit):
    """Raised at build time when a required C library's headers are not installed."""


class Plan(NamedTuple):
    """What this machine can build."""

    #: the modules to build, core first (e.g. ["_nfcore", "_nfqueue", "_conntrack"])
    modules: List[str]
    #: one line per skipped channel, naming its packages
    notices: List[str]
    #: why nothing may be built (core or a required channel missing), or None
    error: Optional[str]


def _read(name: str) -> str:
    with open(os.path.join(CDEF, name), encoding="utf-8") as f:
        return f.read()


def _pkgconfig_names(m) -> List[str]:
    return [m.library] if m is CORE else [m.library, CORE.library]


def _pkgconfig_ok(names: List[str]) -> bool:
    if shutil.which("pkg-config") is None:
        return False
    try:
        return (
            subprocess.run(
                ["pkg-config", "--exists", *names], check=False, capture_output=True
            ).returncode
            == 0
        )
    except OSError:
        return False


def _have(m) -> bool:
    """Whether the headers of module ``m``'s library are installed."""
    if any(os.path.exists(os.path.join(d, m.header)) for d in _INCLUDE_DIRS):
        return True
    return _pkgconfig_ok([m.library])


def required(value: Optional[str] = None) -> List[str]:
    """The channels NFBIND_REQUIRE names ("all", or a comma list)."""
    if value is None:
        value = os.environ.get(ENV_REQUIRE, "")
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if "all" in names:
        return list(CHANNELS)
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        raise MissingLibraryError(
            "nfbind: %s=%s names no channel %s; use 'all' or a comma list of %s"
            % (ENV_REQUIRE, value, ", ".join(map(repr, unknown)), ", ".join(CHANNELS)))
    return names


def _skip_line(name: str) -> str:
    m = CHANNELS[name]
    return ("nfbind: building without %s (nfbind.%s): %s's headers (%s) are missing; "
            "%s to add it" % (m.title, m.cls, m.library, m.header, install_hint(m)))


def plan(require: Optional[str] = None) -> Plan:
    """The modules this machine can build, the notices for skipped channels,
    and the error that stops the build (libmnl missing, or a channel that
    NFBIND_REQUIRE asks for)."""
    want = required(require)
    if not _have(CORE):
        return Plan([CORE.module], [], (
            "nfbind: cannot build: libmnl's headers (%s) are missing; %s, and "
            "pkg-config and a C compiler" % (CORE.header, install_hint(CORE))))
    modules = [CORE.module]
    notices: List[str] = []
    missing: List[str] = []
    for name, m in CHANNELS.items():
        if _have(m):
            modules.append(m.module)
        elif name in want:
            missing.append(name)
        else:
            notices.append(_skip_line(name))
    error = None
    if missing:
        error = "nfbind: %s=%s, but %s" % (
            ENV_REQUIRE, os.environ.get(ENV_REQUIRE, require or ""),
            "; ".join("%s's headers (%s) are missing: %s" % (
                CHANNELS[n].library, CHANNELS[n].header, install_hint(CHANNELS[n]))
                for n in missing))
    return Plan(modules, notices, error)


def _module(name: str):
    if name == CORE.module:
        return CORE
    for m in CHANNELS.values():
        if m.module == name:
            return m
    raise KeyError(name)


def builder(name: str, core: Optional[FFI] = None) -> FFI:
    """The FFI builder of module ``name`` (e.g. "_nflog"); a channel's
    includes ``core`` (a fresh core builder when not given)."""
    m = _module(name)
    stem = name.lstrip("_")
    ffi = FFI()
    if m is CORE:
        ffi.cdef(_read("core.h"))
        source = '#define NFB_CORE_MODULE\n#include "core.c"\n'
    else:
        ffi.include(core if core is not None else builder(CORE.module))
        ffi.cdef(_read(stem + ".h"))
        source = '#include "%s.c"\n' % stem
    kwargs = dict(
        include_dirs=[CDEF],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
        depends=[os.path.join(CDEF, n) for n in sorted(os.listdir(CDEF))],
    )
    full = "nfbind." + name
    pkgs = _pkgconfig_names(m)
    if _pkgconfig_ok(pkgs):
        try:
            ffi.set_source_pkgconfig(full, pkgs, source, **kwargs)
            return ffi
        except Exception:  # the pkgconfig Python package is missing or failed
            pass
    libs = [p[3:] if p.startswith("lib") else p for p in pkgs]
    ffi.set_source(full, source, libraries=libs, **kwargs)
    return ffi


# The names setup.py's cffi_modules point at ("build_ffi.py:ffi_nflog"):
# cffi calls them, so only the modules being built are set up.
def ffi_nfcore() -> FFI:
    return builder("_nfcore")


def ffi_nfqueue() -> FFI:
    return builder("_nfqueue")


def ffi_nflog() -> FFI:
    return builder("_nflog")


def ffi_conntrack() -> FFI:
    return builder("_conntrack")


#: the optional CPython-API speedups setup.py builds from cext/<name without _>.c
SPEEDUPS = ["_fastq", "_fastct"]


def cffi_modules(p: Plan) -> List[str]:
    """setup.py's cffi_modules for a plan."""
    return ["build_ffi.py:ffi" + name for name in p.modules]


if __name__ == "__main__":
    p = plan()
    if p.error:
        raise MissingLibraryError(p.error)
    for line in p.notices:
        print(line, file=sys.stderr)
    out = os.path.join(HERE, "src")
    core_ffi = builder(CORE.module)
    for name in p.modules:
        ffi = core_ffi if name == CORE.module else builder(name, core_ffi)
        ffi.compile(tmpdir=out, verbose=False)
