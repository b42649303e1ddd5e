#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Flow records per second: nfbind.flows.FlowRecorder writing JSON lines,
SQLite or IPFIX, beside the same recorder with no output.

Run as root:

    python benchmarks/bench_flows.py --output json|sqlite|ipfix [--flows 100000]
                                     [--rounds 5] [--json]

Each round, for each consumer (interleaved: "nfbind" with the output,
"c" the reference column, the recorder with no output: the cost of reading
DESTROY events and making records):

1. a throw-away namespace's conntrack table is filled with N UDP entries
   by ``bin/ct_fill`` (ctnetlink creates, with accounting and timestamps
   on);
2. the consumer starts in the namespace (``--consume``), subscribes and
   prints READY; the driver flushes the table (``conntrack -F``): a churn
   of N ended flows, N DESTROY events;
3. the consumer times from the first event readable to the N-th record
   written, and reports records, seconds and the kernel's overruns (the
   receive buffer holds the whole burst, so none is expected).  IPFIX goes
   to a UDP sink in the namespace that counts the datagrams.

The rate is records / seconds; a run that did not write all N fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    Namespace, RunError, add_common_options, build, check_common, emit_json,
    find_nfbind_python, install_sigterm, interleaved_rounds, rate_summary, round_line,
)

OUTPUTS = ("json", "sqlite", "ipfix")
PROBE = "import nfbind.flows; nfbind.flows.FlowRecorder; import nfbind; print(nfbind.__file__)"
SINK_PORT = 4739
SYSCTL = "/proc/sys/net/netfilter/"


# --------------------------------------------------------------------------
# the consumer (runs inside the namespace)


def consume(a: argparse.Namespace) -> int:
    from nfbind.flows import FlowRecorder, IpfixExporter, JsonLines, SQLite

    outputs: list = []
    if a.output == "json":
        outputs.append(JsonLines(os.path.join(a.dir, "flows.jsonl")))
    elif a.output == "sqlite":
        outputs.append(SQLite(os.path.join(a.dir, "flows.db")))
    elif a.output == "ipfix":
        outputs.append(IpfixExporter(("127.0.0.1", SINK_PORT)))
    rec = FlowRecorder(outputs, rcvbuf=1 << 29)
    print("READY", flush=True)
    fd = rec.fileno()
    if not select.select([fd], [], [], 60)[0]:
        print(json.dumps({"ok": False, "error": "no event within 60 s"}), flush=True)
        return 1
    t0 = time.perf_counter()
    t1 = t0
    done = 0
    while done < a.flows:
        n = rec.step()
        if n:
            done += n
            t1 = time.perf_counter()
        elif not select.select([fd], [], [], 2.0)[0]:
            break
    st = rec.stats
    res = {"ok": done == a.flows, "records": done, "seconds": t1 - t0,
           "pps": done / (t1 - t0) if t1 > t0 else None, "overruns": st.overruns,
           "batches": st.batches}
    for o in outputs:
        if hasattr(o, "messages"):
            res.update(messages=o.messages, send_errors=o.send_errors)
    rec.close()
    print(json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------
# the driver


def sink_cmd(py: str) -> list[str]:
    """A UDP sink on 127.0.0.1:SINK_PORT that counts datagrams until quiet."""
    code = (
        "import socket,json\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,33,1<<28)\n"   # SO_RCVBUFFORCE
        f"s.bind(('127.0.0.1',{SINK_PORT}))\n"
        "print('READY',flush=True)\n"
        "n=b=0\n"
        "s.settimeout(120)\n"
        "while True:\n"
        "    try: d=s.recv(65536)\n"
        "    except socket.timeout: break\n"
        "    n+=1; b+=len(d); s.settimeout(3)\n"
        "print(json.dumps({'datagrams':n,'bytes':b}),flush=True)\n")
    return [py, "-c", code]


def one_run(impl: str, a: argparse.Namespace, py: str, env: dict, fill: str) -> dict:
    out = "none" if impl == "c" else a.output
    res: dict = {"ok": False}
    try:
        with Namespace("nfb-flowbench", tag=f"{impl}") as ns, \
                tempfile.TemporaryDirectory(prefix="nfb-flows-") as d:
            # events=1: the flows ct_fill makes before the consumer
            # subscribes must carry the event extension, which the default
            # (2: only while someone listens) leaves off; without it their
            # flush sends no DESTROY event at all
            ns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1",
                   "net.netfilter.nf_conntrack_timestamp=1", "net.netfilter.nf_conntrack_events=1")
            ns.run(fill, str(a.flows), "3600", timeout=300)
            sink = None
            if out == "ipfix":
                sink = ns.start("sink", sink_cmd(py), env=env)
                sink.wait_line(b"READY", 30)
            cons = ns.start(impl, [py, os.path.abspath(__file__), "--consume",
                                   "--output", out, "--flows", str(a.flows), "--dir", d],
                            env=env)
            cons.wait_line(b"READY", 60)
            ns.run("conntrack", "-F", timeout=120)
            if cons.wait_exit(a.timeout) is None:
                raise RunError(f"{impl}: no result within {a.timeout} s")
            res.update(cons.json_line())
            if not res.get("ok"):
                raise RunError(f"{impl}: wrote {res.get('records')} of {a.flows} records"
                               f" (overruns {res.get('overruns')})" + cons.stderr_tail())
            if sink is not None:
                sink.wait_exit(30)
                got = sink.json_line()
                res["sink_datagrams"] = got["datagrams"]
                if got["datagrams"] != res.get("messages"):
                    res["ok"] = False
                    raise RunError(f"sink got {got['datagrams']} of {res.get('messages')} "
                                   "IPFIX messages")
            res["packets"] = res["records"]
    except RunError as e:
        res["ok"] = False
        res["error"] = str(e)
    if a.verbose:
        print(f"  [{impl}] {json.dumps(res)}", file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", choices=OUTPUTS + ("none",), default="json")
    ap.add_argument("--flows", "--packets", type=int, default=100000,
                    help="flows in the churn (default 100000)")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    add_common_options(ap, consumer="recorder", size=False, cpu=False)
    a = ap.parse_args(argv)
    if a.consume:
        return consume(a)
    check_common(a, needs="network namespaces, ctnetlink", tools=("ip", "conntrack"))
    if not 1 <= a.flows <= 1 << 22:
        sys.exit("bench: --flows must be 1..4194304")
    if a.output == "none":
        sys.exit("bench: --output must be json, sqlite or ipfix (none is the reference)")
    install_sigterm()
    py, env, where = find_nfbind_python(a.python, PROBE, "nfbind.flows.FlowRecorder")
    fill = build("ct_fill", "ct_fill.c", ["-lnetfilter_conntrack", "-lmnl"])
    with open(SYSCTL + "nf_conntrack_max", encoding="ascii") as f:
        ct_max = int(f.read())
    restore = None
    if ct_max < a.flows + 4096:
        restore = ct_max
        with open(SYSCTL + "nf_conntrack_max", "w", encoding="ascii") as f:
            f.write(str(a.flows + 4096))
    info = {"benchmark": "flows", "output": a.output, "flows": a.flows, "rounds": a.rounds,
            "kernel": platform.release(), "cpus": os.cpu_count(), "nfbind": where,
            "python": py}
    impls = ["nfbind", "c"]
    try:
        def on_row(row: dict) -> None:
            if row["nfbind"]["ok"] and row["c"]["ok"]:
                row["ratio"] = row["nfbind"]["pps"] / row["c"]["pps"]
            if not a.json:
                print(round_line(row, impls, lambda i, r: (
                    f"{'records, ' + a.output if i == 'nfbind' else 'no output'} "
                    f"{r['pps']:,.0f}/s")), flush=True)

        rounds = interleaved_rounds(a.rounds, impls,
                                    lambda impl, rnd: one_run(impl, a, py, env, fill),
                                    on_row)
    finally:
        if restore is not None:
            with open(SYSCTL + "nf_conntrack_max", "w", encoding="ascii") as f:
                f.write(str(restore))
    summary, ratios = rate_summary(rounds, impls)
    ok = all(row[i]["ok"] for row in rounds for i in impls)
    if a.json:
        emit_json({**info, "packets": a.flows, "rounds_detail": rounds, **summary, "ok": ok})
    else:
        print(f"\nmedian {a.output}: {summary['nfbind_pps_median'] or 0:,.0f} records/s, "
              f"no output: {summary['c_pps_median'] or 0:,.0f} records/s, ratio "
              f"{summary.get('ratio_median') or 0:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
