# SPDX-License-Identifier: GPL-2.0-or-later
"""Prometheus endpoints read as Prometheus reads them: over HTTP, parsed by
prometheus_client's own text parser, names checked against Prometheus'
rules on every scrape."""
from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
import urllib.request
from typing import Any, Dict, Iterator, Optional

#: https://prometheus.io/docs/concepts/data_model/ (metric and label names)
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_names(families: Any) -> None:
    """Valid names with the ``nfbind_`` prefix, HELP text on each family,
    counters' samples (and only theirs) ending in ``_total``, valid labels."""
    for fam in families:
        assert METRIC_NAME.match(fam.name) and fam.name.startswith("nfbind_"), fam.name
        assert fam.documentation.strip(), "%s has no HELP text" % fam.name
        assert fam.type in ("counter", "gauge"), (fam.name, fam.type)
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name == fam.name + "_total", s.name
            else:
                assert s.name == fam.name and not s.name.endswith("_total"), s.name
            for label in s.labels:
                assert LABEL_NAME.match(label) and not label.startswith("__"), label


class Scrape:
    """One scrape: the parsed families by name (without ``_total``)."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        fams = list(text_string_to_metric_families(text))
        check_names(fams)
        self.families = {f.name: f for f in fams}
        names = [f.name for f in fams]
        assert len(names) == len(set(names)), "a family twice: %s" % names

    def has(self, sample: str) -> bool:
        return any(s.name == sample for f in self.families.values() for s in f.samples)

    def series(self, sample: str) -> Dict[frozenset, float]:
        """Every sample named ``sample``: {frozenset(labels.items()): value}."""
        out = {}
        for f in self.families.values():
            for s in f.samples:
                if s.name == sample:
                    key = frozenset(s.labels.items())
                    assert key not in out, "%s%s twice" % (sample, s.labels)
                    out[key] = s.value
        return out

    def value(self, sample: str, **labels: str) -> float:
        """The value of the one sample with exactly these labels."""
        got = self.series(sample).get(frozenset(labels.items()))
        assert got is not None, "no %s%s in:\n%s" % (sample, labels, self.text)
        return got


def scrape_openmetrics(url: str, timeout: float = 10.0) -> Dict[str, Any]:
    """GET ``url`` as Prometheus does (asking for OpenMetrics first) and parse
    the answer with prometheus_client's OpenMetrics parser: families by name."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    req = urllib.request.Request(url, headers={
        "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                  "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
        ctype = r.headers.get("Content-Type", "")
        assert ctype.startswith("application/openmetrics-text"), ctype
        fams = list(text_string_to_metric_families(r.read().decode("utf-8")))
    check_names(fams)
    return {f.name: f for f in fams}


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    """GET ``url`` and parse it; the answer must be 200 in the text format."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        ctype = r.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain; version="), ctype
        return Scrape(r.read().decode("utf-8"))


@contextlib.contextmanager
def serving(*collectors: Any) -> Iterator[str]:
    """The collectors in a registry of their own, served by prometheus_client's
    own HTTP server on a free loopback port; yields the URL of /metrics."""
    import prometheus_client

    reg = prometheus_client.CollectorRegistry()
    for c in collectors:
        reg.register(c)
    started = prometheus_client.start_http_server(0, "127.0.0.1", registry=reg)
    assert started is not None, "prometheus_client too old to return its server"
    server, thread = started
    try:
        yield "http://127.0.0.1:%d/metrics" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class StderrReader:
    """Lines a child writes on stderr, read without blocking the test."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.fd = proc.stderr.fileno()
        self.text = ""

    def wait_for(self, pattern: str, timeout: float = 20.0) -> "re.Match[str]":
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r on stderr within %.0f s: %r"
                                     % (pattern, timeout, self.text))
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                data = os.read(self.fd, 65536)
                if not data:
                    raise AssertionError("the command ended (%s) without %r: %r"
                                         % (self.proc.wait(5), pattern, self.text))
                self.text += data.decode("utf-8", "replace")

    def rest(self, timeout: float = 15.0) -> str:
        """Everything up to the end of the stream (the child exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                data = os.read(self.fd, 65536)
                if not data:
                    break
                self.text += data.decode("utf-8", "replace")
        return self.text


def metrics_url(reader: StderrReader, timeout: float = 20.0) -> str:
    """The URL a command said it serves metrics on."""
    return reader.wait_for(r"nfbind: metrics on (http://\S+/metrics)", timeout).group(1)


def wait_value(url: str, sample: str, want: float, timeout: float = 10.0,
               **labels: str) -> Scrape:
    """Scrape until ``sample{labels}`` is ``want``; returns that scrape."""
    deadline = time.monotonic() + timeout
    last: Optional[Scrape] = None
    while time.monotonic() < deadline:
        last = scrape(url)
        got = last.series(sample).get(frozenset(labels.items()))
        if got == want:
            return last
        time.sleep(0.05)
    raise AssertionError("%s%s never became %s; last scrape:\n%s"
                         % (sample, labels, want, last.text if last else None))
