# SPDX-License-Identifier: GPL-2.0-or-later
"""Build script: the compiled modules come from build_ffi.py (cffi, API mode).

Only the modules this machine can build are listed: the core always, each
channel when its C library's headers are installed.  A skipped channel gets
one line naming its packages when the extensions are built; a missing libmnl
or a channel NFBIND_REQUIRE asks for stops the build there, with a message.
An sdist needs none of the headers.
"""
import os
import sys

from setuptools import setup
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


setup(
    cffi_modules=build_ffi.cffi_modules(PLAN),
    cmdclass={"build_ext": BuildExt},
    # the modules use only the stable ABI (cffi builds them with Py_LIMITED_API)
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
