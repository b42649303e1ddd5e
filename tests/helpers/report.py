# SPDX-License-Identifier: GPL-2.0-or-later
"""The fault and load suite's sizes and figures."""
from __future__ import annotations

import json
import os


class Soak:
    """How big the fault and load scenarios are: bounded in ``make test``,
    full size in ``make soak`` (``pytest --soak``)."""

    def __init__(self, full: bool) -> None:
        self.full = full

    def size(self, bounded, full):
        """``full`` under ``--soak``, otherwise ``bounded``."""
        return full if self.full else bounded


def fault_report(scenario: str, **figures) -> None:
    """Record one fault scenario's figures (packets sent, arrived, dropped,
    overrun, rate ...): printed, and appended as a JSON line to the file named
    by ``NFBIND_FAULT_REPORT`` when that is set."""
    line = json.dumps(dict(scenario=scenario, **figures), sort_keys=True)
    print("fault-report " + line)
    path = os.environ.get("NFBIND_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
