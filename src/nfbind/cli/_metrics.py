# SPDX-License-Identifier: GPL-2.0-or-later
"""Prometheus endpoints of the ``nfbind`` command.

* ``--metrics [HOST:]PORT`` on ``nfbind log``, ``nfbind queue`` and ``nfbind
  ct events``: ``/metrics`` is served while the command runs
  (:func:`endpoint`, :func:`workers_endpoint` for ``queue --workers``).
* ``nfbind ct exporter``: only that, for the conntrack table
  (:func:`cmd_exporter`).

An address is ``PORT`` (on 127.0.0.1), ``:PORT`` (every address, IPv6 and
IPv4), ``HOST:PORT`` or ``[IPV6]:PORT``; port 0 takes a free one.  The
endpoint listens in the namespace the command runs in, also with
``--netns``, which only says whose objects are read.  The line
``nfbind: metrics on http://HOST:PORT/metrics`` on stderr says where.

prometheus_client (``nfbind[metrics]``) is imported only when an endpoint
is asked for.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ._output import CliError, Interrupt

__all__ = ["listen_address", "add_metrics_option", "add_exporter_parser", "endpoint",
           "workers_endpoint", "cmd_exporter", "EXPORTER_ADDRESS"]

#: ``nfbind ct exporter``'s default address
EXPORTER_ADDRESS = ("127.0.0.1", 9101)
_EXTRA_HINT = "install the extra: pip install 'nfbind[metrics]' (or pip install prometheus-client)"


def listen_address(text: str) -> Tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host "" means every address."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise argparse.ArgumentTypeError("an empty IPv6 address in %r" % text)
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            "write an IPv6 address in brackets, e.g. [::1]:9100, got %r" % text)
    try:
        num = int(port, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("the port must be a number, got %r" % text) from None
    if not 0 <= num <= 0xFFFF:
        raise argparse.ArgumentTypeError("the port must be 0..65535, got %d" % num)
    return host, num


def _metrics_address(text: str) -> Tuple[str, int]:
    """--metrics: the address, once prometheus_client is known to be there."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError(
            "Prometheus metrics need the prometheus_client package: " + _EXTRA_HINT) from None
    return listen_address(text)


def add_metrics_option(p: argparse.ArgumentParser) -> None:
    """``--metrics [HOST:]PORT`` on a long-running command."""
    p.add_argument("--metrics", type=_metrics_address, metavar="[HOST:]PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics while running "
                   "(PORT alone: on 127.0.0.1; :PORT: on every address; needs nfbind[metrics])")


def add_exporter_parser(ctsub: Any, netns_opt: Callable[[argparse.ArgumentParser], None]) -> None:
    """``nfbind ct exporter``."""
    host, port = EXPORTER_ADDRESS
    p = ctsub.add_parser(
        "exporter", help="a Prometheus exporter for the conntrack table",
        description="Serve the conntrack table's metrics for Prometheus until Ctrl-C or "
        "SIGTERM: flows by family, protocol, state and zone (one dump per scrape), the "
        "table's size and limit, and the kernel's per-CPU statistics. Read-only; no rule "
        "is needed. Needs nfbind[metrics].")
    p.add_argument("--listen", type=listen_address, default=EXPORTER_ADDRESS,
                   metavar="[HOST:]PORT",
                   help="where to listen (default %s:%d; :PORT for every address)" % (host, port))
    p.add_argument("--dump-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                   help="longest a scrape's table dump may take; a slower one leaves the "
                   "per-flow breakdown out of that scrape (default 5)")
    p.add_argument("--no-flows", action="store_true",
                   help="no table dump: only size, limit and statistics")
    netns_opt(p)
    p.set_defaults(verb="exporter")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of seconds, got %r" % text) from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError("must be in (0, 3600] seconds, got %r" % text)
    return v


# -- the HTTP server -------------------------------------------------------------------------


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise CliError("Prometheus metrics need the prometheus_client package: " + _EXTRA_HINT)
    return prometheus_client


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics: the registry in the text format; / says where they are."""

    registry: Any = None
    server_version = "nfbind"
    scrapes = 0

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            try:
                # the text format, or OpenMetrics when the scraper asks for it
                encode, ctype = choose_encoder(self.headers.get("Accept", ""))
                body = encode(self.registry)
                status = 200
                type(self).scrapes += 1
            except Exception as e:  # answer, never leave the scraper hanging
                body = ("reading the metrics failed: %s: %s\n" % (type(e).__name__, e)).encode()
                status, ctype = 500, "text/plain; charset=utf-8"
        elif path == "/":
            body = b"nfbind: Prometheus metrics are at /metrics\n"
            status, ctype = 200, "text/plain; charset=utf-8"
        else:
            body, status, ctype = b"not found: try /metrics\n", 404, "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            try:  # "::" takes IPv4 too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()


class MetricsServer:
    """``/metrics`` of ``registry`` on (host, port), served by a thread."""

    def __init__(self, registry: Any, address: Tuple[str, int]) -> None:
        host, port = address
        handler = type("Handler", (_Handler,), {"registry": registry})
        self._handler: Any = handler
        family, host = _resolve(host, port)
        cls = type("Server", (_Server,), {"address_family": family})
        try:
            self.httpd = cls((host, port), handler)
        except OSError as e:
            hint = {errno.EADDRINUSE: ": another program listens there; choose another port",
                    errno.EADDRNOTAVAIL: ": no interface has that address",
                    errno.EACCES: ": ports below 1024 need root"}.get(e.errno or 0, "")
            raise CliError("cannot listen on %s: %s%s" % (
                _url_host(address[0] or host, port), e.strerror or e, hint))
        self.port = self.httpd.server_address[1]
        self.url = "http://%s/metrics" % _url_host(host, self.port)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.25}, name="nfbind-metrics", daemon=True)
        self._thread.start()

    @property
    def scrapes(self) -> int:
        """Requests for /metrics answered so far."""
        return int(self._handler.scrapes)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def _resolve(host: str, port: int) -> Tuple[int, str]:
    """The address family and the address to bind for ``host``."""
    if host == "":  # every address: "::" takes IPv4 too
        return (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family, host
        except OSError:
            pass
    try:  # a name: the first address it resolves to
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CliError("cannot listen on %s:%d: %s" % (host, port, e.strerror or e))
    return info[0], str(info[4][0])


def _url_host(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


@contextlib.contextmanager
def _serving(address: Tuple[str, int], collectors: Sequence[Any]) -> Iterator[MetricsServer]:
    registry = _prometheus().CollectorRegistry(auto_describe=True)
    for c in collectors:
        registry.register(c)
    server = MetricsServer(registry, address)
    print("nfbind: metrics on %s" % server.url, file=sys.stderr, flush=True)
    try:
        yield server
    finally:
        server.close()


class _HookErrors:
    """``nfbind_queue_hook_errors_total``: packets whose --hook raised, by queue."""

    def __init__(self, read: Callable[[], Dict[int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        from ..metrics import METRICS

        fam = CounterMetricFamily("nfbind_queue_hook_errors",
                                  METRICS["nfbind_queue_hook_errors_total"].help,
                                  labels=["queue"])
        for q, n in sorted(self.read().items()):
            fam.add_metric([str(q)], n)
        yield fam


@contextlib.contextmanager
def endpoint(address: Optional[Tuple[str, int]], *objects: Any, flows: bool = False,
             hook_errors: Optional[Callable[[], Dict[int, int]]] = None) -> Iterator[None]:
    """Serve the metrics of ``objects`` (an nfbind.metrics.Collector) at
    ``address`` while the block runs; nothing when ``address`` is None."""
    if address is None:
        yield
        return
    _prometheus()
    from ..metrics import Collector

    collectors: List[Any] = [Collector(*objects, flows=flows)]
    if hook_errors is not None:
        collectors.append(_HookErrors(hook_errors))
    with _serving(address, collectors):
        yield


class _WorkersCollector:
    """``nfbind queue --workers``: the counts the workers share with the
    parent (decisions and hook errors by queue), and the kernel's per-queue
    figures, which the parent reads itself."""

    def __init__(self, netns: Any, queues: Sequence[int], counts: Any, row: Dict[int, int],
                 col: Dict[str, int]) -> None:
        self.netns = netns
        self.queues = list(queues)
        self.counts = counts
        self.row = row
        self.col = col

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from ..metrics import METRICS, kernel_queue_stats

        def family(name: str, cls: Any, labels: List[str]) -> Any:
            base = name[:-6] if name.endswith("_total") else name
            return cls(base, METRICS[name].help, labels=labels)

        packets = family("nfbind_queue_packets_total", CounterMetricFamily, ["queue"])
        verdicts = family("nfbind_queue_verdicts_total", CounterMetricFamily,
                          ["queue", "verdict"])
        waiting = family("nfbind_queue_waiting", GaugeMetricFamily, ["queue"])
        dropped = family("nfbind_queue_kernel_dropped_total", CounterMetricFamily,
                         ["queue", "reason"])
        try:
            kernel = kernel_queue_stats(self.netns)
        except Exception:  # the namespace went away: nfbind's own counts still hold
            kernel = {}
        c = self.counts
        for q in self.queues:
            base = self.row[q]
            total = 0
            for name, j in self.col.items():
                if name == "hook_errors":
                    continue
                n = c[base + j]
                total += n
                verdicts.add_metric([str(q), "hook" if name == "BY-HOOK" else name.lower()], n)
            packets.add_metric([str(q)], total)
            row = kernel.get(q)
            if row is not None:
                waiting.add_metric([str(q)], row.waiting)
                dropped.add_metric([str(q), "queue_full"], row.queue_dropped)
                dropped.add_metric([str(q), "socket"], row.user_dropped)
        yield from (packets, verdicts, waiting, dropped)


@contextlib.contextmanager
def workers_endpoint(address: Optional[Tuple[str, int]], netns: Any, queues: Sequence[int],
                     counts: Any, row: Dict[int, int], col: Dict[str, int]) -> Iterator[None]:
    """:func:`endpoint` for ``nfbind queue --workers``: ``counts[row[queue] +
    col[name]]`` are the decisions (names ACCEPT, DROP, REPEAT, STOP,
    BY-HOOK) and hook errors the workers count."""
    if address is None:
        yield
        return
    _prometheus()
    herr = col["hook_errors"]
    collectors = [_WorkersCollector(netns, queues, counts, row, col),
                  _HookErrors(lambda: {q: counts[row[q] + herr] for q in queues})]
    with _serving(address, collectors):
        yield


# -- nfbind ct exporter ----------------------------------------------------------------------


def cmd_exporter(ct: Any, args: argparse.Namespace) -> int:
    """Serve the table's metrics until SIGINT/SIGTERM."""
    _prometheus()
    from ..metrics import Collector

    ct.stats()  # fail now (permissions, namespace) rather than at every scrape
    collector = Collector(ct, flows=not args.no_flows, dump_timeout=args.dump_timeout)
    start = time.monotonic()
    with Interrupt() as intr, _serving(args.listen, [collector]) as server:
        intr.arm(lambda: None)
        while not intr.hit:
            time.sleep(0.25)
        scrapes = server.scrapes
    print("nfbind: ct exporter: %d scrape%s in %.1f s" % (
        scrapes, "" if scrapes == 1 else "s", time.monotonic() - start), file=sys.stderr)
    return 0
