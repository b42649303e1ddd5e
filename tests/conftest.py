# SPDX-License-Identifier: GPL-2.0-or-later
"""pytest hooks and fixtures: throw-away network namespaces with their own rules.

Integration tests need root (they create namespaces and install rules); on a
machine without it they are skipped with a message saying so.  Every
namespace made here is deleted afterwards, and every process started is
ended by PID.  The helpers themselves live in the ``helpers`` package.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List

import pytest

from helpers.netns import NetNS, make_netns
from helpers.report import Soak

IS_ROOT = os.geteuid() == 0


def pytest_addoption(parser):
    parser.addoption(
        "--soak", action="store_true", default=False,
        help="run the fault and load suite (marker 'fault') at full size, as make soak does",
    )


def pytest_configure(config):
    # make soak tries ten times as many property examples (test_properties.py
    # reads this when it is imported, after this hook)
    if config.getoption("--soak"):
        os.environ.setdefault("NFBIND_PROPERTY_SCALE", "10")


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="integration test: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def soak(request) -> Soak:
    """The sizes of the fault scenarios: bounded, or full under ``--soak``."""
    return Soak(bool(request.config.getoption("--soak")))


@pytest.fixture
def ns() -> Iterator[NetNS]:
    """A fresh network namespace with loopback up; deleted afterwards."""
    n = make_netns()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def more_ns(ns: NetNS) -> Iterator[Callable[[], NetNS]]:
    """Factory for extra namespaces (beyond ``ns``); all deleted afterwards."""
    made: List[NetNS] = []

    def make() -> NetNS:
        n = make_netns("%s-p%d" % (ns.name, len(made)))
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()
