# SPDX-License-Identifier: GPL-2.0-or-later
"""Build script: the compiled modules come from build_ffi.py (cffi, API mode),
and two optional speedups from cext/ (the CPython API, see below).

Only the modules this machine can build are listed: the core always, each
channel when its C library's headers are installed.  A skipped channel gets
one line naming its packages when the extensions are built; a missing libmnl
or a channel NFBIND_REQUIRE asks for stops the build there, with a message.
An sdist needs none of the headers.

The speedups ``nfbind._fastq`` (the packet channels' dispatch loop) and
``nfbind._fastct`` (building conntrack flows) are optional: a machine that
cannot compile them gets nfbind with the same loops in Python, and
``NFBIND_PURE=1`` makes nfbind use those at run time.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_ffi  # noqa: E402

PLAN = build_ffi.plan()


class BuildExt(build_ext):
    """build_ext that first says what it skips, or why it cannot build."""

    def run(self) -> None:
        if PLAN.error:
            raise build_ffi.MissingLibraryError(PLAN.error)
        for line in PLAN.notices:
            print(line, file=sys.stderr)
        super().run()


SPEEDUPS = [
    Extension("nfbind." + name, [os.path.join("cext", name.lstrip("_") + ".c")],
              depends=[os.path.join("cdef", "records.h")], optional=True,
              extra_compile_args=["-O2"])
    for name in build_ffi.SPEEDUPS
]

setup(
    cffi_modules=build_ffi.cffi_modules(PLAN),
    ext_modules=SPEEDUPS,
    cmdclass={"build_ext": BuildExt},
)
