# SPDX-License-Identifier: GPL-2.0-or-later
"""Whether a namespace's conntrack counts and stamps flows.

Two per-namespace sysctls decide what a DESTROY event can tell:

* ``net.netfilter.nf_conntrack_acct``: packets and bytes each way;
* ``net.netfilter.nf_conntrack_timestamp``: when the flow started and ended.

Both are off by default.  The kernel decides when it creates a flow, so
switching them on affects the flows created afterwards only.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

from .. import netns as _netns

__all__ = ["SYSCTLS", "AccountingWarning", "accounting", "enable_accounting",
           "accounting_problems"]

#: the sysctls flow records need, and what each gives
SYSCTLS = {
    "net.netfilter.nf_conntrack_acct": "packet and byte counts",
    "net.netfilter.nf_conntrack_timestamp": "start and end times",
}


class AccountingWarning(UserWarning):
    """Conntrack accounting or timestamps are off: records lack counts or times."""


def _path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def _read(names: List[str]) -> Dict[str, bool]:
    out = {}
    for name in names:
        try:
            with open(_path(name), encoding="ascii") as f:
                out[name] = f.read().strip() not in ("", "0")
        except FileNotFoundError:
            raise FileNotFoundError(
                2, "%s does not exist: connection tracking is not loaded in this namespace "
                "(a rule that uses conntrack loads it, e.g. iptables -A INPUT -m conntrack "
                "--ctstate NEW,ESTABLISHED -j ACCEPT)" % _path(name)) from None
    return out


def _write(names: List[str]) -> None:
    for name in names:
        try:
            with open(_path(name), "w", encoding="ascii") as f:
                f.write("1\n")
        except PermissionError:
            raise PermissionError(
                13, "cannot set %s=1: needs root (CAP_NET_ADMIN in the namespace)" % name
            ) from None


def accounting(netns: _netns.NetNS = None) -> Dict[str, bool]:
    """Each sysctl of :data:`SYSCTLS` -> whether it is on, in ``netns``
    (default: this namespace).

    Raises FileNotFoundError (conntrack not loaded, or no such namespace).
    """
    return _netns.call_in(netns, _read, list(SYSCTLS))


def enable_accounting(netns: _netns.NetNS = None) -> Dict[str, bool]:
    """Switch both sysctls on in ``netns``; returns :func:`accounting` as it
    was before.  Flows created from now on are counted and stamped.

    Raises PermissionError (needs root), FileNotFoundError.
    """
    before = accounting(netns)
    off = [name for name, on in before.items() if not on]
    if off:
        _netns.call_in(netns, _write, off)
    return before


def accounting_problems(state: Dict[str, bool]) -> List[str]:
    """One sentence per sysctl that is off, naming it and the fix."""
    return ["%s is 0 in this namespace: flow records have no %s; switch it on with "
            "`sysctl -w %s=1` (or enable_accounting(), `--enable-accounting`); it applies "
            "to flows created afterwards" % (name, SYSCTLS[name], name)
            for name, on in state.items() if not on]


def warn_if_off(netns: _netns.NetNS = None, stacklevel: int = 3) -> Dict[str, bool]:
    """:func:`accounting`, with an :class:`AccountingWarning` per sysctl that is off."""
    state = accounting(netns)
    for text in accounting_problems(state):
        warnings.warn(AccountingWarning(text), stacklevel=stacklevel)
    return state
