# SPDX-License-Identifier: GPL-2.0-or-later
"""``nfbind queue NUM|FIRST:LAST``: give each packet an NFQUEUE rule queues its
verdict (``--verdict``, or the ``--hook`` function's) and print the decision;
a range of queues by one socket bound to them all, or with ``--workers`` by
worker processes through :func:`nfbind.serve`."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from .. import netns
from ..enums import Verdict
from ._metrics import endpoint, workers_endpoint
from ._output import HOOK_NAMES, CliError, Interrupt, Live, Output, Rate, clock, dev, dumps
from ._output import have_scapy, packet_meta, summary

__all__ = ["cmd_queue", "load_hook"]


def load_hook(spec: str) -> Callable[[Any], Any]:
    """``module:function``, ``path/to/file.py:function``, or just the module
    or file (function ``hook``)."""
    target, sep, fname = spec.rpartition(":")
    if not sep:
        target, fname = spec, "hook"
    if not target or not fname:
        raise CliError("--hook must be MODULE:FUNCTION or FILE.py:FUNCTION, got %r" % spec, 2)
    try:
        if target.endswith(".py") or os.sep in target:
            path = os.path.abspath(target)
            if not os.path.isfile(path):
                raise CliError("hook file %s not found" % target, 2)
            name = "nfbind_hook_" + os.path.splitext(os.path.basename(path))[0]
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:
                raise CliError("cannot load %s as a Python module" % target, 2)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            sys.path.insert(0, os.path.dirname(path))
            mspec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except CliError:
        raise
    except Exception as e:
        raise CliError("cannot load hook %r: %s: %s" % (spec, type(e).__name__, e))
    fn = getattr(module, fname, None)
    if fn is None:
        raise CliError("hook module %s has no function %r" % (target, fname), 2)
    if not callable(fn):
        raise CliError("hook %r is not callable" % spec, 2)
    return cast(Callable[[Any], Any], fn)


_VERDICT_WORDS = {"accept": "ACCEPT", "drop": "DROP", "repeat": "REPEAT", "stop": "STOP"}


def _hook_result(r: Any, default: Verdict, default_mark: Optional[int]
                 ) -> Tuple[Verdict, Optional[int], Any]:
    """(verdict, mark, payload) from what a hook returned."""
    mark = default_mark
    if isinstance(r, tuple) and len(r) == 2:
        r, mark = r
    if r is None:
        return default, mark, None
    if isinstance(r, bool):
        return (Verdict.ACCEPT if r else Verdict.DROP), mark, None
    if isinstance(r, str):
        try:
            return Verdict[_VERDICT_WORDS[r.lower()]], mark, None
        except KeyError:
            raise ValueError("hook returned %r: use accept, drop or repeat" % r)
    if isinstance(r, int):
        try:
            return Verdict(r), mark, None
        except ValueError:
            raise ValueError("hook returned %r, which is no verdict: return a Verdict "
                             "(ACCEPT, DROP, REPEAT, STOP) or 'accept'/'drop'" % r) from None
    if isinstance(r, (bytes, bytearray, memoryview)) or hasattr(r, "build"):
        return Verdict.ACCEPT, mark, r
    raise TypeError("hook returned %s: return a Verdict, 'accept'/'drop', True/False, "
                    "(verdict, mark), new payload bytes/a scapy packet, or None"
                    % type(r).__name__)


def _queue_proc(ns: Any, num: int) -> Optional[Tuple[int, int]]:
    """(queue_dropped, user_dropped) from /proc/net/netfilter/nfnetlink_queue."""
    def read() -> Optional[Tuple[int, int]]:
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                p = line.split()
                if len(p) >= 7 and int(p[0]) == num:
                    return int(p[5]), int(p[6])
        return None

    try:
        return netns.call_in(ns, read)
    except Exception:
        return None


def _give(pkt: Any, verdict: Verdict, mark: Optional[int], payload: Any) -> None:
    """Give ``pkt`` the verdict; raises ValueError/TypeError (nothing sent)
    for a mark or payload nfbind refuses."""
    if verdict == Verdict.ACCEPT:
        pkt.accept(mark=mark, payload=payload)
    elif verdict == Verdict.REPEAT:
        pkt.repeat(mark=mark)
    elif verdict == Verdict.DROP:
        pkt.drop()
    else:
        pkt.verdict(verdict, mark=mark)


_VERDICT_DONE = {"ACCEPT": "accepted", "DROP": "dropped", "REPEAT": "repeated",
                 "STOP": "stopped", "BY-HOOK": "decided by the hook"}


class _Decider:
    """What ``nfbind queue`` does with each packet: ask the hook (if any), give
    the verdict, and format the packet's output line."""

    def __init__(self, args: argparse.Namespace, hook: Optional[Callable[[Any], Any]],
                 default: Any, hook_error: Callable[[str], None]) -> None:
        self.args = args
        self.hook = hook
        self.default = default
        self.hook_error = hook_error

    def __call__(self, pkt: Any) -> Tuple[str, str, bool]:
        """Give ``pkt`` its verdict; returns ``(name, line, hook_failed)``: the
        verdict's name and the packet's output line (without newline).

        What goes wrong with the hook is this packet's error: an exception
        it raised, or a result nfbind refuses (a payload over the limit, a
        mark outside 0..0xffffffff, no verdict); the packet then gets the
        ``--verdict`` fallback and the next packet is served as usual."""
        args, default = self.args, self.default
        ts = pkt.timestamp or time.time()
        note = ""
        verdict, mark, payload = default, args.mark, None
        failed = False
        decided = False  # the verdict was given here (not by the hook itself)
        if self.hook is not None:
            step = "raised"
            try:
                r = self.hook(pkt)
                if not pkt.has_verdict:
                    step = "result refused"
                    verdict, mark, payload = _hook_result(r, default, args.mark)
                    _give(pkt, verdict, mark, payload)
                    decided = True
            except Exception as e:
                failed = True
                verdict, mark, payload = default, args.mark, None
                what = ("hook raised %s: %s" % (type(e).__name__, e) if step == "raised"
                        else "hook result refused: %s" % e)
                note = " (%s)" % what
                self.hook_error("nfbind: %s; packet %d gets %s" % (what, pkt.id, default.name))
        if not decided and not pkt.has_verdict:
            _give(pkt, verdict, mark, payload)
            decided = True
        if decided:
            if verdict == Verdict.DROP:
                mark = None
            name = Verdict(verdict).name
        else:
            name = "BY-HOOK"
        if args.json:
            d = packet_meta(pkt, ts)
            d["id"] = pkt.id
            if len(args.queues) > 1:
                d["queue"] = pkt.queue_num
            d["summary"] = summary(pkt)
            d["verdict"] = name
            d["set_mark"] = mark if name != "BY-HOOK" else None
            d["rewritten"] = payload is not None
            if note:
                d["hook_error"] = note.strip(" ()")
            line = dumps(d)
        else:
            decision = name
            if mark is not None and name != "BY-HOOK":
                decision += " mark=%#x" % mark
            if payload is not None:
                decision += " (rewritten)"
            line = "%s %sid=%d %s in=%s out=%s %s -> %s%s" % (
                clock(ts), "q=%d " % pkt.queue_num if len(args.queues) > 1 else "", pkt.id,
                HOOK_NAMES.get(pkt.hook, pkt.hook),
                dev(pkt.indev_name, pkt.indev), dev(pkt.outdev_name, pkt.outdev),
                summary(pkt), decision, note)
        return name, line, failed


def _verdict_detail(by_verdict: Dict[str, int]) -> str:
    return ", ".join("%d %s" % (v, _VERDICT_DONE.get(k, k.lower()))
                     for k, v in sorted(by_verdict.items()) if v)


def cmd_queue(args: argparse.Namespace) -> int:
    """Serve the queue until Ctrl-C (or ``--count`` packets), printing each
    decision.  A range of queues is served by one socket bound to all of
    them; with ``--workers``, by worker processes (:func:`nfbind.serve`)."""
    from .. import NfQueue

    hook = load_hook(args.hook) if args.hook else None
    default = Verdict[args.verdict.upper()]
    have_scapy()
    if args.workers is not None:
        return _queue_serve(args, hook, default)
    # one queue, or a range served by one socket bound to all of them
    nums = list(args.queues)
    qname = _queue_name(nums)
    out = Output(live=True)
    tally: Dict[str, int] = {"n": 0}
    errors: Dict[int, int] = {n: 0 for n in nums}
    by_verdict: Dict[str, int] = {}

    def hook_error(text: str) -> None:
        out.clear()
        print(text, file=sys.stderr)

    decide = _Decider(args, hook, default, hook_error)
    q = NfQueue(nums[0] if len(nums) == 1 else nums, fail_open=args.fail_open,
                netns=args.netns, on_error=default)
    with q, Interrupt() as intr, endpoint(args.metrics, q, hook_errors=lambda: dict(errors)):
        intr.arm(q.stop)

        def handle(pkt: Any) -> None:
            name, line, failed = decide(pkt)
            if failed:
                errors[pkt.queue_num] += 1
            by_verdict[name] = by_verdict.get(name, 0) + 1
            tally["n"] += 1
            if args.count is None or tally["n"] <= args.count:
                out.line(line)
            if args.count is not None and tally["n"] >= args.count:
                q.stop()

        rate = Rate()

        def status(elapsed: float, dt: float) -> str:
            n = q.stats.packets
            text = "nfbind queue %s: %d packet%s, %.0f/s, %d overruns" % (
                qname, n, "" if n == 1 else "s", rate(n, dt), q.stats.overruns)
            drops = [d for d in (_queue_proc(args.netns, num) for num in nums) if d]
            if drops:
                text += ", kernel drops %d (queue full) %d (socket)" % (
                    sum(d[0] for d in drops), sum(d[1] for d in drops))
            return text

        with Live(out, status) as live:
            q.run(handle)
        n = tally["n"]
        nerr = sum(errors.values())
        if intr.hit or out.live:
            detail = _verdict_detail(by_verdict)
            print("nfbind: queue%s %s: %d packet%s%s in %.1f s, %d overrun%s%s" % (
                "s" if len(nums) > 1 else "", qname,
                n, "" if n == 1 else "s", " (%s)" % detail if detail else "",
                live.elapsed(), q.stats.overruns, "" if q.stats.overruns == 1 else "s",
                ", %d hook error%s" % (nerr, "" if nerr == 1 else "s")
                if nerr else ""), file=sys.stderr)
    return 0


def _queue_name(queues: List[int]) -> str:
    """"5", "0-3" for a range, "1,4,7" otherwise."""
    if len(queues) == 1:
        return str(queues[0])
    if queues == list(range(queues[0], queues[-1] + 1)):
        return "%d-%d" % (queues[0], queues[-1])
    return ",".join(map(str, queues))


def _write_line(fd: int, text: str) -> None:
    """One whole line with as few write(2) calls as the kernel allows (one for
    any line up to PIPE_BUF), so lines of several workers never mix."""
    data = (text + "\n").encode("utf-8", "replace")
    while data:
        data = data[os.write(fd, data):]


def _queue_serve(args: argparse.Namespace, hook: Optional[Callable[[Any], Any]],
                 default: Any) -> int:
    """``nfbind queue FIRST:LAST``: one worker process per queue (or per group
    of queues) through nfbind.serve()."""
    from multiprocessing.sharedctypes import RawArray

    from .. import serve

    queues = args.queues
    if args.count is not None:
        raise CliError("--count does not combine with --workers (the workers do not share "
                       "a packet count): leave out --workers to serve the queues in one "
                       "process", 2)
    workers = args.workers or min(len(queues), os.cpu_count() or 1)
    if workers > len(queues):
        raise CliError("--workers must be 1..%d (one queue per worker at least), got %d"
                       % (len(queues), workers), 2)
    # counters the workers share with this process: one row per queue (a
    # queue has one worker, so rows need no lock)
    names = list(_VERDICT_DONE) + ["hook_errors"]
    counts = RawArray("q", len(queues) * len(names))
    row = {q: i * len(names) for i, q in enumerate(queues)}
    col = {n: j for j, n in enumerate(names)}
    herr = col["hook_errors"]
    stdout, stderr = sys.stdout.fileno(), sys.stderr.fileno()

    decide = _Decider(args, hook, default, lambda text: _write_line(stderr, text))

    def handle(pkt: Any) -> None:
        base = row[pkt.queue_num]
        name, line, hook_failed = decide(pkt)
        counts[base + col[name]] += 1
        if hook_failed:
            counts[base + herr] += 1
        _write_line(stdout, line)

    qname = _queue_name(list(queues))
    start = time.monotonic()

    def ready(pids: Dict[int, Tuple[int, ...]]) -> None:
        print("nfbind: queues %s: %d worker%s (%s)" % (
            qname, len(pids), "" if len(pids) == 1 else "s",
            "; ".join("pid %d: %s" % (pid, ",".join(map(str, qs)))
                      for pid, qs in sorted(pids.items(), key=lambda kv: kv[1]))),
            file=sys.stderr, flush=True)

    with workers_endpoint(args.metrics, args.netns, queues, counts, row, col):
        result = serve(handle, queues, workers, fail_open=args.fail_open, netns=args.netns,
                       on_error=default, ready=ready)
    elapsed = time.monotonic() - start
    by_verdict = {n: sum(counts[row[q] + col[n]] for q in queues) for n in _VERDICT_DONE}
    n = sum(by_verdict.values())
    errors = sum(counts[row[q] + herr] for q in queues)
    detail = _verdict_detail(by_verdict)
    per_worker = ", ".join("%d" % w.packets for w in result.workers)
    print("nfbind: queues %s: %d packet%s%s in %.1f s by %d worker%s (packets per worker: %s), "
          "%d overrun%s%s%s" % (
        qname, n, "" if n == 1 else "s", " (%s)" % detail if detail else "", elapsed,
        len(result.workers), "" if len(result.workers) == 1 else "s", per_worker,
        result.overruns, "" if result.overruns == 1 else "s",
        ", %d hook error%s" % (errors, "" if errors == 1 else "s") if errors else "",
        ", %d restart%s" % (result.restarts, "" if result.restarts == 1 else "s")
        if result.restarts else ""), file=sys.stderr)
    return 0
