# SPDX-License-Identifier: GPL-2.0-or-later
"""cffi out-of-line (API mode) builders for nfbind's four compiled modules.

* ``nfbind._nfcore``    libmnl: what the channels share
* ``nfbind._nfqueue``   libnetfilter_queue + libmnl
* ``nfbind._nflog``     libnetfilter_log + libmnl
* ``nfbind._conntrack`` libnetfilter_conntrack + libmnl

Each channel module includes the core (``ffi.include``: the same C types and
constants, and the core's functions reachable through its ``lib``) and links
only its own library.

The C declarations live in ``cdef/*.h`` and the C code in ``cdef/*.c``.
Run ``python build_ffi.py`` to compile all four in place (``src/nfbind``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CDEF = os.path.join(HERE, "cdef")

# module -> (pkg-config names, plain library names, header to check, Debian package)
_LIBS = {
    "_nfcore": (
        ["libmnl"],
        ["mnl"],
        "libmnl/libmnl.h",
        "libmnl-dev",
    ),
    "_nfqueue": (
        ["libnetfilter_queue", "libmnl"],
        ["netfilter_queue", "mnl"],
        "libnetfilter_queue/libnetfilter_queue.h",
        "libnetfilter-queue-dev",
    ),
    "_nflog": (
        ["libnetfilter_log", "libmnl"],
        ["netfilter_log", "mnl"],
        "libnetfilter_log/libnetfilter_log.h",
        "libnetfilter-log-dev",
    ),
    "_conntrack": (
        ["libnetfilter_conntrack", "libmnl"],
        ["netfilter_conntrack", "mnl"],
        "libnetfilter_conntrack/libnetfilter_conntrack.h",
        "libnetfilter-conntrack-dev",
    ),
}

_INCLUDE_DIRS = ["/usr/include", "/usr/local/include"]


class MissingLibraryError(SystemExit):
    """Raised at build time when a C library's headers are not installed."""


def _read(name: str) -> str:
    with open(os.path.join(CDEF, name), encoding="utf-8") as f:
        return f.read()


def _pkgconfig_ok(names: list[str]) -> bool:
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


def _check_headers(header: str, pkgs: list[str], debian: str) -> None:
    missing = [
        h
        for h in (header, "libmnl/libmnl.h")
        if not any(os.path.exists(os.path.join(d, h)) for d in _INCLUDE_DIRS)
    ]
    if missing and not _pkgconfig_ok(pkgs):
        need = [debian] + (["libmnl-dev"] if "libmnl/libmnl.h" in missing else [])
        raise MissingLibraryError(
            "nfbind: cannot build, the header(s) %s are not installed.\n"
            "On Debian/Ubuntu install them with:\n"
            "    apt-get install %s libnfnetlink-dev pkg-config\n"
            "(Fedora: libnetfilter_queue-devel libnetfilter_log-devel "
            "libnetfilter_conntrack-devel libmnl-devel)"
            % (", ".join(missing), " ".join(need))
        )


def _builder(module: str, core: Optional[FFI] = None) -> FFI:
    pkgs, libs, header, debian = _LIBS[module]
    stem = module.lstrip("_")
    _check_headers(header, pkgs, debian)
    ffi = FFI()
    if module == "_nfcore":
        ffi.cdef(_read("core.h"))
        source = '#define NFB_CORE_MODULE\n#include "core.c"\n'
    else:
        ffi.include(core if core is not None else _builder("_nfcore"))
        ffi.cdef(_read(stem + ".h"))
        source = '#include "%s.c"\n' % stem
    kwargs = dict(
        include_dirs=[CDEF],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
        depends=[os.path.join(CDEF, n) for n in sorted(os.listdir(CDEF))],
    )
    name = "nfbind." + module
    if _pkgconfig_ok(pkgs):
        try:
            ffi.set_source_pkgconfig(name, pkgs, source, **kwargs)
            return ffi
        except Exception:  # the pkgconfig Python package is missing or failed
            pass
    ffi.set_source(name, source, libraries=libs, **kwargs)
    return ffi


ffi_nfcore = _builder("_nfcore")
ffi_nfqueue = _builder("_nfqueue", ffi_nfcore)
ffi_nflog = _builder("_nflog", ffi_nfcore)
ffi_conntrack = _builder("_conntrack", ffi_nfcore)


if __name__ == "__main__":
    out = os.path.join(HERE, "src")
    for ffi in (ffi_nfcore, ffi_nfqueue, ffi_nflog, ffi_conntrack):
        ffi.compile(tmpdir=out, verbose=False)
