# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind log GROUP[,GROUP...]``: print (or capture) the packets NFLOG rules logged."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._metrics import endpoint
from ._output import CliError, Interrupt, Live, Output, Pcap, Rate, clock, dev, dumps
from ._output import have_scapy, packet_meta, summary

__all__ = ["cmd_log"]


def cmd_log(args: argparse.Namespace) -> int:
    """Read the groups until Ctrl-C (or ``--count`` packets); one line or JSON
    object per packet, or a pcap file."""
    from .. import CopyMode, NfLog

    if args.prefix_only and args.pcap:
        raise CliError("--prefix-only copies no packet data: it cannot be used with --pcap", 2)
    if args.pcap == "-" and (args.json or args.verbose):
        raise CliError("--pcap - writes the capture to stdout, where --json and -v would "
                       "print their lines too: give --pcap a file name to get both", 2)
    if not args.prefix_only:
        have_scapy()  # import now, not while the first packet waits
    pcap = Pcap(args.pcap) if args.pcap else None
    out = Output(live=True)
    counts = {"n": 0}
    groups = args.groups
    gname = ",".join(map(str, groups))

    log = NfLog(groups, copy_mode=CopyMode.META if args.prefix_only else CopyMode.PACKET,
                netns=args.netns)
    with log, Interrupt() as intr, endpoint(args.metrics, log):
        intr.arm(log.stop)

        def handle(pkt: Any) -> None:
            if args.count is not None and counts["n"] >= args.count:
                return
            counts["n"] += 1
            ts = pkt.timestamp or time.time()
            if pcap is not None:
                pcap.write(ts, pkt.payload, pkt.cap_len)
            if args.json:
                d = packet_meta(pkt, ts)
                d["group"] = pkt.group
                d["prefix"] = pkt.prefix
                if not args.prefix_only:
                    d["summary"] = summary(pkt)
                    d["payload"] = pkt.payload.hex()
                out.line(dumps(d))
            elif pcap is None or args.verbose:
                parts = [clock(ts), "group %d" % pkt.group, repr(pkt.prefix or ""),
                         "in=%s out=%s" % (dev(pkt.indev_name, pkt.indev),
                                           dev(pkt.outdev_name, pkt.outdev))]
                if not args.prefix_only:
                    parts.append(summary(pkt))
                out.line(" ".join(parts))
            if args.count is not None and counts["n"] >= args.count:
                log.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            n = log.stats.packets
            return "nfbind log %s: %d packet%s, %.0f/s, %d overruns%s" % (
                gname, n, "" if n == 1 else "s", rate(n, dt), log.stats.overruns,
                ", %d written to %s" % (pcap.count, pcap.name) if pcap else "")

        with Live(out, status) as live:
            try:
                log.run(handle)
            finally:
                if pcap is not None:
                    pcap.close()
        n = counts["n"]
        if intr.hit or out.live or pcap is not None:
            print("nfbind: log group %s: %d packet%s in %.1f s, %d overrun%s%s" % (
                gname, n, "" if n == 1 else "s", live.elapsed(), log.stats.overruns,
                "" if log.stats.overruns == 1 else "s",
                ", %d written to %s" % (pcap.count, pcap.name) if pcap else ""),
                file=sys.stderr)
    return 0
