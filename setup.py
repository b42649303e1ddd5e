# SPDX-License-Identifier: GPL-2.0-or-later
"""Build script: the four compiled modules come from build_ffi.py (cffi, API mode)."""
from setuptools import setup

setup(
    cffi_modules=[
        "build_ffi.py:ffi_nfcore",
        "build_ffi.py:ffi_nfqueue",
        "build_ffi.py:ffi_nflog",
        "build_ffi.py:ffi_conntrack",
    ],
)
