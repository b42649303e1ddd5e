# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``nfbind`` command: watch NFLOG groups, run an NFQUEUE firewall hook,
and read or change the conntrack table.

::

    nfbind log 5                          # packets a `-j NFLOG --nflog-group 5` rule logged
    nfbind log 5,6 --json                 # one JSON object per packet
    nfbind log 5 --pcap out.pcap          # a capture file tcpdump/Wireshark open
    nfbind queue 3 --verdict drop         # drop what `-j NFQUEUE --queue-num 3` queues
    nfbind queue 3 --hook fw.py:decide    # your function decides each packet
    nfbind queue 0:3 --workers 4          # `--queue-balance 0:3`, one process per queue
    nfbind ct list -p tcp --dport 22      # flows, as an aligned table (--json for scripts)
    nfbind ct list -o extended            # what `conntrack -L -o extended` prints
    nfbind ct update -s 10.0.0.2 --set-mark 7
    nfbind ct events                      # live NEW/UPDATE/DESTROY events
    nfbind ct events --flows --sqlite f.db  # a record per ended flow (also --json, --ipfix)
    nfbind ct exporter                    # Prometheus metrics of the table on 127.0.0.1:9101
    nfbind demo                           # everything, in a throw-away namespace

Every command takes ``--netns NAME`` to work in another network namespace.
Errors print one line, ``nfbind: error: ...``, and exit with a non-zero code
(2 for bad arguments).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from ..errors import NfbindError
from ._flows import add_flow_options
from ._output import CliError
from ._metrics import add_exporter_parser, add_metrics_option
from .ct import add_output_option, cmd_ct
from .log import cmd_log
from .queue import cmd_queue

__all__ = ["main", "build_parser"]

PROG = "nfbind"
_U32_MAX = 0xFFFFFFFF


# -- argument types -----------------------------------------------------------------------


def _int_type(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError("%s must be an integer, got %r" % (what, text))
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError("%s must be %d..%d, got %d" % (what, lo, hi, v))
        return v

    conv.__name__ = what
    return conv


_u32 = _int_type(0, _U32_MAX, "mark")
_u16 = _int_type(0, 0xFFFF, "value")
_port = _int_type(0, 0xFFFF, "port")
_zone = _int_type(0, 0xFFFF, "zone")
_queue_num = _int_type(0, 0xFFFF, "queue number")
_u8 = _int_type(0, 255, "value")
_count = _int_type(1, 1 << 62, "count")


def _queue_spec(text: str) -> List[int]:
    """``NUM`` or ``FIRST:LAST`` (both included), as for ``--queue-balance``."""
    first, sep, last = text.partition(":")
    lo = _queue_num(first)
    hi = _queue_num(last) if sep else lo
    if hi < lo:
        raise argparse.ArgumentTypeError("queue range must be FIRST:LAST with FIRST <= LAST, "
                                         "got %r" % text)
    return list(range(lo, hi + 1))


def _groups(text: str) -> List[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                "groups must be numbers 0..65535 separated by commas, got %r" % text)
        if not 0 <= v <= 0xFFFF:
            raise argparse.ArgumentTypeError("group must be 0..65535, got %d" % v)
        if v not in out:
            out.append(v)
    return out


def _mark_mask(text: str) -> Tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        v = int(value, 0)
        m = int(mask, 0) if mask else _U32_MAX
    except ValueError:
        raise argparse.ArgumentTypeError("mark must be MARK or MARK/MASK (numbers), got %r" % text)
    if not (0 <= v <= _U32_MAX and 0 <= m <= _U32_MAX):
        raise argparse.ArgumentTypeError("mark and mask must be 0..0xffffffff, got %r" % text)
    return v, m


def _network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address or network: %r" % text)


_FAMILIES = {"ipv4": socket.AF_INET, "inet": socket.AF_INET, "4": socket.AF_INET,
             "ipv6": socket.AF_INET6, "inet6": socket.AF_INET6, "6": socket.AF_INET6}


def _family(text: str) -> int:
    try:
        return _FAMILIES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError("family must be ipv4 or ipv6, got %r" % text)


def _proto(text: str) -> int:
    from ..conntrack import parse_proto

    try:
        return int(parse_proto(int(text) if text.isdigit() else text.lower()))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e))


_NUMBER = re.compile(r"[+-]?(0[xX][0-9a-fA-F]*|0[oO][0-7]*|0[bB][01]*|[0-9]+)$")


def _labels(text: str) -> List[Union[int, str]]:
    """Label bits (numbers, any base int() takes) and connlabel.conf names."""
    from ..conntrack import MAX_LABEL

    out: List[Union[int, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if _NUMBER.match(part):  # a number, never a name: check its range here
            try:
                bit = int(part, 0)
            except ValueError:
                bit = -1
            if not 0 <= bit <= MAX_LABEL:
                raise argparse.ArgumentTypeError(
                    "a label is a bit number 0..%d or a name from connlabel.conf, got %r"
                    % (MAX_LABEL, part))
            out.append(bit)
        else:
            out.append(part)
    return out


# -- the parser ---------------------------------------------------------------------------


def _netns_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NS",
                   help="work in network namespace NS (a name from `ip netns`, or a path)")


def build_parser() -> argparse.ArgumentParser:
    """The ``nfbind`` argument parser; each command's ``func`` runs it."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Linux netfilter from the command line: NFLOG, NFQUEUE and conntrack.",
        epilog="Each command needs CAP_NET_ADMIN (root). `nfbind COMMAND -h` for details.",
    )
    parser.add_argument("--version", action="version", version="nfbind %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # log
    p = sub.add_parser("log", help="print packets NFLOG rules logged",
                       description="Print the packets NFLOG rules send to GROUP(s), e.g. "
                       "`iptables -A INPUT -j NFLOG --nflog-group 5 --nflog-prefix ssh`. "
                       "Ctrl-C ends it with a summary.")
    p.add_argument("groups", type=_groups, metavar="GROUP[,GROUP...]", help="NFLOG group(s)")
    p.add_argument("--prefix-only", action="store_true",
                   help="only time, group, prefix and devices: the kernel copies no packet data")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    p.add_argument("--pcap", metavar="FILE",
                   help="write the packets to a pcap file (tcpdump -r, Wireshark), or to "
                   "stdout with `-` (e.g. `| tcpdump -r -`); lines are printed too with -v")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with --pcap: also print a line per packet")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N packets")
    add_metrics_option(p)
    _netns_opt(p)
    p.set_defaults(func=cmd_log)

    # queue
    p = sub.add_parser("queue", help="decide the fate of packets an NFQUEUE rule queues",
                       description="Bind NFQUEUE queue NUM (`iptables -A INPUT -j NFQUEUE "
                       "--queue-num NUM`), give each packet a verdict and print the decision. "
                       "--hook runs your function: it gets an nfbind.Packet and returns a "
                       "Verdict, 'accept'/'drop', True/False, (verdict, mark), new payload "
                       "(bytes or a scapy packet: accepted rewritten), or None for --verdict; "
                       "it may also call pkt.accept()/pkt.drop() itself. A range FIRST:LAST "
                       "(`--queue-balance FIRST:LAST`) is served by one socket bound to every "
                       "queue of it, or with --workers by that many processes, each running "
                       "the hook; Ctrl-C prints one summary for all of them.")
    p.add_argument("queues", type=_queue_spec, metavar="NUM|FIRST:LAST",
                   help="queue number 0..65535, or a range of queues for `--queue-balance "
                   "FIRST:LAST` (one socket bound to them all, or --workers processes)")
    p.add_argument("--workers", "-w", type=_int_type(1, 4096, "workers"), metavar="N",
                   help="worker processes for a range of queues (default: none, this "
                   "process serves them all with one socket); each runs the hook in its "
                   "own process")
    p.add_argument("--verdict", choices=("accept", "drop"), default="accept",
                   help="the verdict (default accept); with --hook: when it returns None or raises")
    p.add_argument("--mark", type=_u32, metavar="N", help="set this packet mark on accepted packets")
    p.add_argument("--hook", metavar="MODULE:FUNCTION",
                   help="your verdict function: MODULE:FUNCTION or path/FILE.py:FUNCTION "
                   "(FUNCTION defaults to `hook`)")
    p.add_argument("--fail-open", action="store_true",
                   help="the kernel accepts packets instead of dropping them when the queue is full")
    p.add_argument("--json", action="store_true", help="one JSON object per decision")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N packets")
    add_metrics_option(p)
    _netns_opt(p)
    p.set_defaults(func=cmd_queue)

    # ct
    pct = sub.add_parser("ct", help="the conntrack table: list, get, create, update, delete, "
                         "flush, events, stats, count, exporter",
                         description="Read and change the connection tracking table.")
    ctsub = pct.add_subparsers(dest="verb", metavar="VERB")
    pct.set_defaults(func=cmd_ct, ctparser=pct)

    def filters(p: argparse.ArgumentParser, what: str = "filter") -> None:
        g = p.add_argument_group(what)
        g.add_argument("-p", "--proto", type=_proto, metavar="PROTO", help="tcp, udp, icmp ... or a number")
        g.add_argument("-s", "--src", "--orig-src", type=_network, metavar="ADDR[/LEN]",
                       help="original source address or network")
        g.add_argument("-d", "--dst", "--orig-dst", type=_network, metavar="ADDR[/LEN]",
                       help="original destination address or network")
        g.add_argument("--sport", "--orig-port-src", type=_port, metavar="PORT", help="original source port")
        g.add_argument("--dport", "--orig-port-dst", type=_port, metavar="PORT",
                       help="original destination port")
        g.add_argument("-m", "--mark", type=_mark_mask, metavar="MARK[/MASK]", help="connection mark")
        g.add_argument("-w", "--zone", type=_zone, metavar="ZONE", help="conntrack zone")
        g.add_argument("-f", "--family", type=_family, metavar="FAMILY", help="ipv4 or ipv6")
        g.add_argument("--icmp-type", type=_u8, metavar="T", help="ICMP type (get/create/update/delete)")
        g.add_argument("--icmp-code", type=_u8, metavar="C", help="ICMP code")
        g.add_argument("--icmp-id", type=_u16, metavar="ID", help="ICMP id")

    def common(p: argparse.ArgumentParser, json_help: str = "JSON output for scripts") -> None:
        p.add_argument("--json", action="store_true", help=json_help)
        _netns_opt(p)

    def changes(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("changes")
        g.add_argument("--set-mark", type=_u32, metavar="MARK", help="the new connection mark")
        g.add_argument("-t", "--timeout", dest="set_timeout", type=_int_type(0, _U32_MAX, "timeout"),
                       metavar="SECONDS", help="the new timeout")
        g.add_argument("-l", "--labels", type=_labels, metavar="L[,L...]",
                       help="replace the labels (bit numbers 0..127 or connlabel.conf names; '' clears)")

    p = ctsub.add_parser("list", aliases=["ls", "dump"], help="list flows (an aligned table, or --json)")
    filters(p)
    common(p, "one JSON object per flow")
    add_output_option(p)
    p.set_defaults(verb="list")

    p = ctsub.add_parser("get", help="one flow, by its original tuple")
    filters(p, "tuple")
    common(p)
    add_output_option(p)
    p.set_defaults(verb="get")

    p = ctsub.add_parser("create", help="add a flow (needs the tuple and --timeout)")
    filters(p, "tuple")
    changes(p)
    p.add_argument("--state", metavar="STATE", help="TCP state, e.g. ESTABLISHED")
    common(p)
    p.set_defaults(verb="create")

    p = ctsub.add_parser("update", help="change mark, timeout or labels of the flows the "
                         "filters select (sends only what changes)")
    filters(p)
    changes(p)
    common(p)
    p.set_defaults(verb="update")

    p = ctsub.add_parser("delete", help="delete the flows the filters select")
    filters(p)
    common(p)
    p.set_defaults(verb="delete")

    p = ctsub.add_parser("flush", help="delete every flow, or those the filters select")
    filters(p)
    common(p)
    p.set_defaults(verb="flush")

    p = ctsub.add_parser("events", help="print changes to the table as they happen")
    filters(p)
    p.add_argument("-e", "--event", metavar="NEW,UPDATE,DESTROY",
                   help="which events (default all)")
    p.add_argument("--count", "-c", type=_count, metavar="N", help="exit after N events")
    add_metrics_option(p)
    common(p, "one JSON object per event")
    add_flow_options(p)
    add_output_option(p, events=True)
    p.set_defaults(verb="events")

    p = ctsub.add_parser("stats", help="table size, limit and per-CPU counters")
    p.add_argument("--per-cpu", action="store_true", help="a row per CPU")
    common(p)
    p.set_defaults(verb="stats")

    p = ctsub.add_parser("count", help="the number of flows")
    common(p)
    p.set_defaults(verb="count")

    add_exporter_parser(ctsub, _netns_opt)

    sub.add_parser("demo", help="a tour of NFLOG, NFQUEUE and conntrack in a throw-away "
                   "namespace (about 15 s; needs root)", add_help=False)
    return parser


def _error_text(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename is None and e.strerror:
        text = e.strerror
    if isinstance(e, KeyError):
        text = "missing %s" % text
    return " ".join(text.split("\n")[0:1]) if "\n" in text else text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``nfbind`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .. import demo

        return demo.main(argv[1:])
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "ct" and getattr(args, "verb", None) is None:
        args.ctparser.print_help(sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except CliError as e:
        if e.code == 2:
            sub = "%s %s" % (PROG, args.command) + (" " + args.verb if args.command == "ct" else "")
            print("%s: error: %s" % (sub, e), file=sys.stderr)
        else:
            print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return e.code
    except (ValueError, TypeError) as e:  # a value the library refused before any syscall
        print("%s: error: %s" % (PROG, _error_text(e)), file=sys.stderr)
        return 2
    except (NfbindError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        print("%s: error: %s" % (PROG, _error_text(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def _broken_pipe() -> int:
    # stdout's reader went away (`nfbind ct list | head`): quiet, like other tools
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 1
