# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind ct events --flows``: one record per ended flow, to stdout (a line
each, or ``--json``), ``--json-file``, ``--sqlite`` and ``--ipfix``, any
combination (:mod:`nfbind.flows`)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from ._metrics import endpoint
from ._output import CliError, Interrupt, Live, Output, Rate

if TYPE_CHECKING:
    from ..conntrack.events import EventFilter
    from ..flows import FlowOutput, FlowRecord

__all__ = ["add_flow_options", "flow_options_used", "ct_flows"]

_OUTPUT_OPTS = ("json_file", "sqlite", "ipfix")


def _collector(text: str) -> str:
    from ..flows.ipfix import parse_hostport

    try:
        parse_hostport(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return text


def add_flow_options(p: argparse.ArgumentParser) -> None:
    """The ``--flows`` options of ``nfbind ct events``."""
    g = p.add_argument_group("flow records (--flows)")
    g.add_argument("--flows", action="store_true",
                   help="one record per ended flow (DESTROY events): tuples, zone, mark, "
                   "start, end, duration, packets and bytes each way; a line each on "
                   "stdout unless --json or another output is given")
    g.add_argument("--json-file", metavar="FILE",
                   help="append the records to FILE as JSON lines")
    g.add_argument("--sqlite", metavar="FILE",
                   help="insert the records into table `flows` of the SQLite database FILE "
                   "(created if absent; one transaction per batch)")
    g.add_argument("--ipfix", metavar="HOST:PORT", type=_collector,
                   help="send the records to an IPFIX collector over UDP, e.g. nfcapd "
                   "(port 4739 if none is given; [ADDR]:PORT for IPv6)")
    g.add_argument("--enable-accounting", action="store_true",
                   help="switch net.netfilter.nf_conntrack_acct and nf_conntrack_timestamp "
                   "on in the namespace first (for flows created afterwards)")


def flow_options_used(a: argparse.Namespace) -> List[str]:
    """The --flows-only options given (an error without --flows)."""
    names = [o for o in _OUTPUT_OPTS if getattr(a, o, None) is not None]
    if getattr(a, "enable_accounting", False):
        names.append("enable_accounting")
    return ["--" + n.replace("_", "-") for n in names]


class _Lines:
    """Records as text lines on stdout (the default output)."""

    def __init__(self, out: Output, json_lines: bool) -> None:
        self.out = out
        self.json = json_lines

    def write(self, records: Sequence["FlowRecord"]) -> None:
        from ._output import dumps

        for r in records:
            if self.json:
                self.out.line(dumps(r.as_dict()))
            else:
                end = r.end if r.end is not None else time.time()
                self.out.line("%s [FLOW] %s" % (time.strftime("%H:%M:%S", time.localtime(end)),
                                                r))

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


def _outputs(a: argparse.Namespace, out: Output) -> List["FlowOutput"]:
    from ..flows import IpfixExporter, JsonLines, SQLite

    made: List[Any] = []
    try:
        if a.json or not any(getattr(a, o, None) is not None for o in _OUTPUT_OPTS):
            made.append(_Lines(out, a.json))
        if a.json_file is not None:
            made.append(JsonLines(a.json_file))
        if a.sqlite is not None:
            made.append(SQLite(a.sqlite))
        if a.ipfix is not None:
            try:
                made.append(IpfixExporter(a.ipfix))
            except OSError as e:
                raise CliError("--ipfix %s: %s" % (a.ipfix, e.strerror or e))
    except BaseException:
        for o in made:
            o.close()
        raise
    return made


def ct_flows(a: argparse.Namespace, flt: Optional["EventFilter"]) -> int:
    """Run ``nfbind ct events --flows`` until Ctrl-C or ``--count``."""
    from ..flows.accounting import AccountingWarning
    from ..flows.recorder import FlowRecorder

    if a.event is not None and a.event.strip().upper() != "DESTROY":
        raise CliError("--flows records ended flows (DESTROY events): leave out --event", 2)
    if a.zone is not None or a.family is not None:
        raise CliError("--flows filters by -p, -s, -d, --sport, --dport and -m; "
                       "--zone and --family are not supported with it", 2)
    out = Output(live=True)
    outputs = _outputs(a, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AccountingWarning)
        try:
            rec = FlowRecorder(outputs, filter=flt, netns=a.netns,
                               enable_accounting=a.enable_accounting)
        except BaseException:
            for o in outputs:
                o.close()
            raise
    for w in caught:
        print("nfbind: warning: %s" % w.message, file=sys.stderr)
    rate = Rate()

    def status(elapsed: float, dt: float) -> str:
        s = rec.stats
        return "nfbind ct events --flows: %d flow%s, %.0f/s, %d overruns" % (
            s.flows, "" if s.flows == 1 else "s", rate(s.flows, dt), s.overruns)

    with rec, Interrupt() as intr, endpoint(a.metrics, rec):
        intr.arm(rec.stop)
        with Live(out, status) as live:
            rec.run(count=a.count)
        s = rec.stats
        ipfix_errors = sum(getattr(o, "send_errors", 0) for o in rec.outputs)
        if intr.hit or out.live:
            print("nfbind: ct events --flows: %d flow%s in %.1f s, %d overrun%s" % (
                s.flows, "" if s.flows == 1 else "s", live.elapsed(), s.overruns,
                "" if s.overruns == 1 else "s"), file=sys.stderr)
        if s.overruns:
            print("nfbind: warning: the kernel dropped DESTROY events %d time%s (a burst "
                  "beyond the socket buffer): at least as many flows got no record"
                  % (s.overruns, "" if s.overruns == 1 else "s"), file=sys.stderr)
        if ipfix_errors:
            print("nfbind: warning: %d IPFIX message%s could not be sent (is the collector "
                  "listening on %s?)" % (ipfix_errors, "" if ipfix_errors == 1 else "s",
                                         a.ipfix), file=sys.stderr)
    return 0
