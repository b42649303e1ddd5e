# SPDX-License-Identifier: GPL-2.0-or-later
"""The compiled modules: the core every install has, and the three optional
channels, each with the C library it wraps and the system packages that
provide that library's headers.

``build_ffi.py`` reads this table (it loads this file on its own, before
nfbind is built, so nothing here imports nfbind) to name the packages of a
library it skips; at run time :func:`missing` is the ImportError a user gets
when touching a channel whose module was not built.
"""
from __future__ import annotations

import importlib
from typing import Dict, NamedTuple

__all__ = ["Module", "CORE", "CHANNELS", "install_hint", "available", "missing"]


class Module(NamedTuple):
    """One compiled module of nfbind."""

    #: its name inside the nfbind package
    module: str
    #: what it gives the user: the channel's name and its class
    title: str
    cls: str
    #: the C library it links (its pkg-config name)
    library: str
    #: the library's header, relative to the include directory
    header: str
    #: the packages with that header
    debian: str
    fedora: str


CORE = Module("_nfcore", "nfbind's core", "nfbind", "libmnl", "libmnl/libmnl.h",
              "libmnl-dev", "libmnl-devel")

#: channel name -> its module (NFBIND_REQUIRE at build time takes these names)
CHANNELS: Dict[str, Module] = {
    "nfqueue": Module("_nfqueue", "NFQUEUE", "NfQueue", "libnetfilter_queue",
                      "libnetfilter_queue/libnetfilter_queue.h",
                      "libnetfilter-queue-dev", "libnetfilter_queue-devel"),
    "nflog": Module("_nflog", "NFLOG", "NfLog", "libnetfilter_log",
                    "libnetfilter_log/libnetfilter_log.h",
                    "libnetfilter-log-dev", "libnetfilter_log-devel"),
    "conntrack": Module("_conntrack", "conntrack", "Conntrack",
                        "libnetfilter_conntrack",
                        "libnetfilter_conntrack/libnetfilter_conntrack.h",
                        "libnetfilter-conntrack-dev", "libnetfilter_conntrack-devel"),
}


def install_hint(m: Module) -> str:
    """Which packages to install for module ``m``."""
    return "install %s (Debian/Ubuntu) or %s (Fedora)" % (m.debian, m.fedora)


def available(channel: str) -> bool:
    """Whether the compiled module of ``channel`` imports."""
    try:
        importlib.import_module("nfbind." + CHANNELS[channel].module)
    except ImportError:
        return False
    return True


def missing(channel: str, what: str) -> ImportError:
    """The ImportError for ``what`` (a name such as ``nfbind.NfLog``), which
    needs the channel whose compiled module is not installed."""
    m = CHANNELS[channel]
    return ImportError(
        "%s needs the %s channel, whose compiled module nfbind.%s is missing: nfbind "
        "was built without %s's headers. To add it, %s, then build and install nfbind "
        "again" % (what, m.title, m.module, m.library, install_hint(m)),
        name="nfbind." + m.module,
    )
