# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind ct VERB``: list, get, create, update, delete and flush flows, stream
the table's events, and print its size and statistics.

``--json`` prints :meth:`nfbind.conntrack.Flow.as_dict` (an event adds its
``time`` and ``event``); the table is :func:`._output.flow_table`; ``-o`` (list,
get, events) prints conntrack-tools' lines (:mod:`._ctfmt`).
"""
from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from ..enums import TcpState
from ._ctfmt import CtFormat, LabelNames, flow_line, parse_output, receive_stamp, shown
from ._metrics import cmd_exporter, endpoint
from ._output import ICMP_PROTOS, PORT_PROTOS, CliError, Interrupt, Live, Output, Rate, clock
from ._output import dumps, flow_table, table
from ._flows import ct_flows, flow_options_used

if TYPE_CHECKING:
    from ..conntrack import Conntrack, Event, Flow, Tuple

__all__ = ["cmd_ct", "add_output_option"]

_ALL_BITS = 0xFFFFFFFF  # the mark mask of a filter without one


def _matches(f: "Flow", a: argparse.Namespace) -> bool:
    o = f.orig
    if a.proto is not None and int(o.proto) != a.proto:
        return False
    if a.src is not None and (o.src.version != a.src.version or o.src not in a.src):
        return False
    if a.dst is not None and (o.dst.version != a.dst.version or o.dst not in a.dst):
        return False
    if a.sport is not None and o.sport != a.sport:
        return False
    if a.dport is not None and o.dport != a.dport:
        return False
    return True


def _shown(net: Any) -> str:
    """An address option's value as given: ``10.0.0.1``, ``fe80::/64``."""
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _check_families(a: argparse.Namespace) -> None:
    """Refuse filters of two address families: no flow could match them."""
    given = [(opt, net) for opt, net in (("-s", getattr(a, "src", None)),
                                         ("-d", getattr(a, "dst", None))) if net is not None]
    fam = getattr(a, "family", None)
    if fam is not None:
        want = 4 if fam == socket.AF_INET else 6
        for opt, net in given:
            if net.version != want:
                raise CliError("address family mismatch: %s %s is IPv%d but --family is "
                               "ipv%d; no flow can match both" % (
                                   opt, _shown(net), net.version, want), 2)
    if len(given) == 2 and given[0][1].version != given[1][1].version:
        (o1, n1), (o2, n2) = given
        raise CliError("address family mismatch: %s %s is IPv%d but %s %s is IPv%d; no flow "
                       "has addresses of two families" % (
                           o1, _shown(n1), n1.version, o2, _shown(n2), n2.version), 2)


def _select(ct: "Conntrack", a: argparse.Namespace) -> List["Flow"]:
    mark, mask = a.mark if a.mark is not None else (None, _ALL_BITS)
    fam = a.family
    if fam is None and (a.src is not None or a.dst is not None):
        net = a.src if a.src is not None else a.dst
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    # the kernel filters what it can (CTA_FILTER); _matches checks the CLI's meaning again
    return [f for f in ct.dump(fam, mark=mark, mark_mask=mask, zone=a.zone, src=a.src,
                               dst=a.dst, proto=a.proto, sport=a.sport, dport=a.dport)
            if _matches(f, a)]


def _full_tuple(a: argparse.Namespace) -> Optional["Tuple"]:
    """The Tuple the options name exactly, or None."""
    from ..conntrack import Tuple

    def single(net: Any) -> Any:
        return net.network_address if net is not None and net.num_addresses == 1 else None

    src, dst = single(a.src), single(a.dst)
    icmp = a.proto in ICMP_PROTOS
    complete = (a.proto is not None and src is not None and dst is not None and (
        (a.sport is not None and a.dport is not None) if a.proto in PORT_PROTOS
        else (a.icmp_type is not None and a.icmp_id is not None) if icmp else True))
    if not complete:
        return None
    try:
        if icmp:
            return Tuple(src, dst, a.proto, icmp_type=a.icmp_type,
                         icmp_code=a.icmp_code or 0, icmp_id=a.icmp_id)
        return Tuple(src, dst, a.proto, a.sport, a.dport)
    except (ValueError, TypeError) as e:
        raise CliError(str(e), 2)


def _need_tuple(a: argparse.Namespace, verb: str) -> "Tuple":
    """The Tuple the options name exactly; an error naming what is missing."""
    t = _full_tuple(a)
    if t is None:
        raise CliError(
            "ct %s needs the whole original tuple: -p PROTO -s SRC -d DST and, for "
            "tcp/udp/sctp, --sport and --dport (icmp: --icmp-type and --icmp-id)" % verb, 2)
    return t


def _output_type(text: str) -> CtFormat:
    try:
        return parse_output(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def add_output_option(p: argparse.ArgumentParser, events: bool = False) -> None:
    """``-o/--output`` of ``ct list``, ``ct get`` and ``ct events``."""
    what = "conntrack -E" if events else "conntrack -L"
    p.add_argument(
        "-o", "--output", type=_output_type, metavar="WORD[,WORD...]",
        help="print the lines `%s -o WORD[,WORD...]` prints, byte for byte: extended "
        "(the family in front), id, labels (connlabel.conf names), ktimestamp (start and "
        "stop time)%s; `-o conntrack` prints `%s`'s own line" % (
            what, ", timestamp (when each event came)" if events else "", what))


def _labels_for(fmt: CtFormat) -> Optional[LabelNames]:
    """Label names for ``-o labels`` (connlabel.conf), or None: without the file
    conntrack-tools prints no labels either, and so does nfbind, saying why."""
    if not fmt.labels:
        return None
    from ..conntrack import LabelMap

    try:
        return LabelMap().name
    except FileNotFoundError as e:
        why = "no %s (label names come from it: one 'BIT NAME' per line)" % e.filename
    except (OSError, ValueError) as e:
        why = str(e)
    print("nfbind: -o labels: %s; the lines show no labels" % why, file=sys.stderr)
    return None


def _check_output(a: argparse.Namespace) -> Optional[CtFormat]:
    fmt: Optional[CtFormat] = getattr(a, "output", None)
    if fmt is not None and a.json:
        raise CliError("-o prints conntrack-tools' lines and --json one object per flow: "
                       "give one of them", 2)
    return fmt


def _print_flows(flows: Sequence["Flow"], a: argparse.Namespace) -> None:
    fmt = _check_output(a)
    if fmt is not None:
        labels = _labels_for(fmt)
        for f in flows:
            print(flow_line(f, fmt, labels=labels))
        sys.stdout.flush()
        print(shown(len(flows), "flow entries"), file=sys.stderr)
        return
    if a.json:
        for f in flows:
            print(dumps(f.as_dict()))
    elif flows:
        print("\n".join(flow_table(flows)))


def _changes(a: argparse.Namespace) -> Dict[str, Any]:
    ch: Dict[str, Any] = {}
    if a.set_mark is not None:
        ch["mark"] = a.set_mark
    if a.set_timeout is not None:
        ch["timeout"] = a.set_timeout
    if a.labels is not None:
        ch["labels"] = a.labels
    return ch


def cmd_ct(args: argparse.Namespace) -> int:
    """Run ``nfbind ct VERB`` on the table of ``--netns`` (default: this one)."""
    from ..conntrack import Conntrack, NotFound

    verb = args.verb
    _check_families(args)
    with Conntrack(netns=args.netns) as ct:
        if verb == "list":
            _check_output(args)
            flows = _select(ct, args)
            _print_flows(flows, args)
            if not args.json and args.output is None:
                print("%d flow%s" % (len(flows), "" if len(flows) == 1 else "s"),
                      file=sys.stderr)
        elif verb == "get":
            _check_output(args)
            _print_flows([ct.get(_need_tuple(args, "get"), zone=args.zone)], args)
        elif verb == "count":
            n = ct.count()
            print(dumps({"count": n}) if args.json else n)
        elif verb == "stats":
            return _ct_stats(ct, args)
        elif verb == "create":
            return _ct_create(ct, args)
        elif verb in ("update", "delete"):
            ch = _changes(args) if verb == "update" else {}
            if verb == "update" and not ch:
                raise CliError("ct update: nothing to change: give --set-mark, --timeout "
                               "or --labels", 2)
            t = _full_tuple(args)
            if t is not None:
                targets: List[Any] = [t]
            else:
                if verb == "delete" and not _has_filter(args):
                    raise CliError("ct delete without a filter would delete every flow: "
                                   "use `nfbind ct flush` for that", 2)
                targets = _select(ct, args)
            done = 0
            for target in targets:
                try:
                    if verb == "update":
                        ct.update(target, zone=args.zone, **ch)
                    else:
                        ct.delete(target, zone=args.zone)
                    done += 1
                except NotFound:
                    if t is not None:
                        raise
                    # expired between the dump and now
            word = "updated" if verb == "update" else "deleted"
            if args.json:
                print(dumps({word: done}))
            else:
                print("%s %d flow%s" % (word, done, "" if done == 1 else "s"))
            if not done and t is None and not targets:
                print("nfbind: no flow matched", file=sys.stderr)
                return 1
        elif verb == "flush":
            if any(getattr(args, k) is not None for k in ("icmp_type", "icmp_code", "icmp_id")):
                raise CliError("ct flush does not filter by ICMP fields: use `nfbind ct "
                               "delete` with the whole tuple", 2)
            mark, mask = args.mark if args.mark is not None else (None, _ALL_BITS)
            ct.flush(args.family, mark=mark, mark_mask=mask, zone=args.zone, src=args.src,
                     dst=args.dst, proto=args.proto, sport=args.sport, dport=args.dport)
            print(dumps({"flushed": True}) if args.json else "flushed the conntrack table"
                  + ("" if not _has_filter(args) else " (matching flows)"))
        elif verb == "events":
            return _ct_events(ct, args)
        elif verb == "exporter":
            return cmd_exporter(ct, args)
    return 0


def _has_filter(a: argparse.Namespace) -> bool:
    return any(getattr(a, k) is not None for k in ("proto", "src", "dst", "sport", "dport",
                                                   "mark", "zone", "family"))


def _ct_stats(ct: "Conntrack", a: argparse.Namespace) -> int:
    from ..conntrack import CpuStats

    st = ct.stats()
    names = [f.name for f in dataclasses.fields(CpuStats) if f.name != "cpu"]
    if a.json:
        d: Dict[str, Any] = {"entries": st.entries, "max_entries": st.max_entries}
        d.update({n: st.total(n) for n in names})
        d["cpus"] = [{"cpu": c.cpu, **{n: getattr(c, n) for n in names}} for c in st.cpus]
        print(dumps(d))
        return 0
    print("%-15s %d" % ("entries", st.entries))
    print("%-15s %d" % ("max_entries", st.max_entries))
    if a.per_cpu:
        rows = [["CPU"] + [n.upper() for n in names]]
        rows += [[str(c.cpu)] + [str(getattr(c, n)) for n in names] for c in st.cpus]
        print("\n".join(table(rows, right=range(len(rows[0])))))
    else:
        for n in names:
            print("%-15s %d" % (n, st.total(n)))
    return 0


def _ct_create(ct: "Conntrack", a: argparse.Namespace) -> int:
    from ..conntrack import Flow

    t = _need_tuple(a, "create")
    if a.set_timeout is None:
        raise CliError("ct create needs --timeout SECONDS", 2)
    kw: Dict[str, Any] = {"timeout": a.set_timeout, "zone": a.zone or 0}
    mark = a.set_mark if a.set_mark is not None else (a.mark[0] if a.mark else None)
    if mark is not None:
        kw["mark"] = mark
    if a.labels:
        kw["labels"] = ct.label_bits(a.labels)
    if a.state is not None:
        try:
            kw["state"] = TcpState[a.state.upper()]
        except KeyError:
            raise CliError("--state must be a TCP state: %s" % ", ".join(TcpState.__members__), 2)
    try:
        flow = Flow(t, **kw)
    except (ValueError, TypeError) as e:
        raise CliError(str(e), 2)
    ct.create(flow)
    print(dumps({"created": flow.as_dict()}) if a.json else "created %s" % flow)
    return 0


def _zone_of(f: "Flow") -> int:
    """The zone a flow lives in, as ``ct.dump(zone=)`` sees it: Flow.zone, else a
    directional zone (CT --zone-orig/--zone-reply), else 0."""
    if f.zone:
        return f.zone
    if f.orig.zone is not None:
        return f.orig.zone
    if f.reply is not None and f.reply.zone is not None:
        return f.reply.zone
    return 0


def _ct_events(ct: "Conntrack", a: argparse.Namespace) -> int:
    from ..conntrack import EventFilter
    from ..enums import CtEvent

    types = CtEvent(0)
    for word in ("NEW,UPDATE,DESTROY" if a.event is None else a.event).split(","):
        try:
            if word.strip().upper() not in ("NEW", "UPDATE", "DESTROY"):
                raise KeyError(word)
            types |= CtEvent[word.strip().upper()]
        except KeyError:
            raise CliError("--event must name NEW, UPDATE and/or DESTROY, separated by "
                           "commas, got %r" % a.event, 2)
    kw: Dict[str, Any] = {}
    if a.proto is not None:
        kw["proto"] = a.proto
    if a.src is not None:
        kw["src"] = [a.src]
    if a.dst is not None:
        kw["dst"] = [a.dst]
    if a.sport is not None:
        kw["sport"] = [a.sport]
    if a.dport is not None:
        kw["dport"] = [a.dport]
    if a.mark is not None:
        kw["mark"], kw["mark_mask"] = a.mark
    flt = EventFilter(**kw) if kw else None
    if a.flows or flow_options_used(a):
        if not a.flows:
            raise CliError("%s: only with --flows" % ", ".join(flow_options_used(a)), 2)
        if a.output is not None:
            raise CliError("-o prints conntrack-tools' event lines and --flows one record per "
                           "ended flow: give one of them", 2)
        return ct_flows(a, flt)
    fmt = _check_output(a)
    labels = _labels_for(fmt) if fmt is not None else None
    # conntrack-tools' lines: stderr keeps quiet until the summary, as conntrack -E's
    out = Output(live=fmt is None)
    n = {"n": 0}
    stream = ct.events(types, filter=flt)
    with stream, Interrupt() as intr, endpoint(a.metrics, stream, ct, flows=False):
        intr.arm(stream.stop)

        def handle(ev: "Event") -> None:
            f = ev.flow
            if a.zone is not None and _zone_of(f) != a.zone:
                return
            if a.family is not None and int(f.orig.family) != a.family:
                return
            if a.count is not None and n["n"] >= a.count:
                return
            n["n"] += 1
            name = ev.type.name or str(int(ev.type))
            if fmt is not None:
                line = flow_line(f, fmt, event=ev.type, labels=labels)
                out.line(receive_stamp() + line if fmt.timestamp else line)
            elif a.json:
                d = {"time": round(time.time(), 6), "event": name, **f.as_dict()}
                out.line(dumps(d))
            else:
                extra = "" if f.timeout is None else " timeout=%d" % f.timeout
                out.line("%s [%s] %s%s" % (clock(time.time()), name, f, extra))
            if a.count is not None and n["n"] >= a.count:
                stream.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            s = stream.stats
            return "nfbind ct events: %d event%s, %.0f/s, %d overruns" % (
                n["n"], "" if n["n"] == 1 else "s", rate(n["n"], dt), s.overruns)

        with Live(out, status) as live:
            stream.run(handle)
        if fmt is not None:
            overruns = stream.stats.overruns
            if overruns:
                print("nfbind: ct events: the kernel dropped events %d time%s (ENOBUFS): "
                      "lines are missing" % (overruns, "" if overruns == 1 else "s"),
                      file=sys.stderr)
            print(shown(n["n"], "flow events"), file=sys.stderr)
        elif intr.hit or out.live:
            print("nfbind: ct events: %d event%s in %.1f s, %d overrun%s" % (
                n["n"], "" if n["n"] == 1 else "s", live.elapsed(), stream.stats.overruns,
                "" if stream.stats.overruns == 1 else "s"), file=sys.stderr)
    return 0
