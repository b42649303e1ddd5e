# SPDX-License-Identifier: GPL-2.0-or-later
"""Flow accounting: one record per ended flow, from conntrack DESTROY events,
to JSON lines, SQLite and IPFIX collectors.

::

    # the namespace must track connections (a rule that uses conntrack), e.g.
    # iptables -A INPUT -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT
    import sys
    from nfbind.flows import FlowRecorder, IpfixExporter, JsonLines, SQLite

    outputs = [JsonLines(sys.stdout), SQLite("flows.db"),
               IpfixExporter("127.0.0.1:4739")]
    with FlowRecorder(outputs, enable_accounting=True) as rec:
        rec.run()

The same from the command line::

    nfbind ct events --flows --json --sqlite flows.db --ipfix 127.0.0.1:4739

* :class:`FlowRecord` (``record``): orig/reply tuples, zone, mark, start,
  end, duration, orig_packets, orig_bytes, reply_packets, reply_bytes.
* :class:`FlowRecorder` (``recorder``): the loop: events in, batches out.
* :class:`JsonLines`, :class:`SQLite` (``outputs``), :class:`IpfixExporter`
  and :class:`IpfixEncoder` (``ipfix``): the outputs; :class:`FlowOutput`
  is their interface, for outputs of your own.
* :func:`accounting`, :func:`enable_accounting`, :class:`AccountingWarning`
  (``accounting``): the sysctls that give records their counts and times.

:class:`FlowRecorder` needs the conntrack channel (libnetfilter_conntrack);
the records and outputs work without it (e.g. to write flows of your own).
"""
from __future__ import annotations

from typing import Any, List

from .. import _channels
from .accounting import SYSCTLS, AccountingWarning, accounting, enable_accounting
from .ipfix import IPFIX_PORT, IpfixEncoder, IpfixExporter
from .outputs import SQLITE_SCHEMA, FlowOutput, JsonLines, SQLite
from .record import COLUMNS, FlowRecord

if _channels.available("conntrack"):
    from .recorder import FlowRecorder, RecorderStats

    _MISSING: List[str] = []
else:
    _MISSING = ["FlowRecorder", "RecorderStats"]


def __getattr__(name: str) -> Any:
    if name in _MISSING:
        raise _channels.missing("conntrack", "nfbind.flows." + name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


__all__ = [
    "FlowRecord",
    "FlowOutput",
    "JsonLines",
    "SQLite",
    "IpfixExporter",
    "IpfixEncoder",
    "accounting",
    "enable_accounting",
    "AccountingWarning",
    "SYSCTLS",
    "COLUMNS",
    "SQLITE_SCHEMA",
    "IPFIX_PORT",
]
__all__ += [name for name in ("FlowRecorder", "RecorderStats") if name not in _MISSING]
