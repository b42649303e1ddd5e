# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind.metrics without privileges: every metric's name, type, labels and
HELP text follow Prometheus' rules, the docs list every one, the collector
checks what it is given, the CLI's listen addresses parse, and without
prometheus_client both the module and the command name the extra to
install."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="nfbind[metrics] is not installed (make venv installs it)")

from nfbind import metrics  # noqa: E402
from nfbind.cli._metrics import listen_address  # noqa: E402
from nfbind.metrics import METRICS, Collector  # noqa: E402

from helpers.procs import child_env  # noqa: E402
from helpers.scrape import LABEL_NAME, METRIC_NAME, check_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_every_metric_follows_the_naming_rules():
    assert len(METRICS) >= 25
    for name, info in METRICS.items():
        assert METRIC_NAME.match(name) and name.startswith("nfbind_"), name
        assert info.type in ("counter", "gauge"), name
        assert name.endswith("_total") == (info.type == "counter"), name
        assert len(info.help) > 20 and "\n" not in info.help, name
        for label in info.labels:
            assert LABEL_NAME.match(label) and not label.startswith("__"), (name, label)
    # units in the name where there is one
    assert METRICS["nfbind_conntrack_dump_seconds"].type == "gauge"


def test_the_text_format_round_trips_through_prometheus_parser():
    """Every family as the collector builds it, written by prometheus_client
    and read back by its own parser: names, types and HELP survive."""
    from prometheus_client.parser import text_string_to_metric_families

    out = metrics._Scrape()
    for name, info in METRICS.items():
        out.add(name, {label: "x" for label in info.labels}, 1)

    class Fixed:
        def collect(self):
            return iter(out.families.values())

    reg = prometheus_client.CollectorRegistry()
    reg.register(Fixed())
    text = prometheus_client.generate_latest(reg).decode()
    fams = list(text_string_to_metric_families(text))
    check_names(fams)
    got = {s.name for f in fams for s in f.samples}
    assert got == set(METRICS)
    for f in fams:
        sample = f.samples[0].name
        assert f.type == METRICS[sample].type
        assert f.documentation == METRICS[sample].help


def test_docs_list_every_metric_with_its_type_and_labels():
    text = (ROOT / "docs" / "monitoring.rst").read_text()
    for name, info in METRICS.items():
        # the row of the table "Every metric": name, type, labels, meaning
        rows = [l for l in text.splitlines() if l.startswith("``%s`` " % name)]
        assert len(rows) == 1, "docs/monitoring.rst lists %s %d times" % (name, len(rows))
        cells = re.split(r"\s{2,}", rows[0])
        assert cells[1] == info.type, (name, rows[0])
        labels = set(cells[2].split(", ")) if cells[2] != "(none)" else set()
        assert labels == set(info.labels), (name, rows[0])
        assert len(cells) == 4 and len(cells[3]) > 20, (name, rows[0])
    listed = {l.split("``")[1] for l in text.splitlines() if l.startswith("``nfbind_")}
    assert listed == set(METRICS), listed ^ set(METRICS)
    index = (ROOT / "docs" / "index.rst").read_text()
    assert "\n   monitoring\n" in index


def test_collector_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="NfQueue, NfLog, EventStream, Conntrack and FlowRecorder"):
        Collector(object())
    with pytest.raises(ValueError, match="dump_timeout"):
        Collector(dump_timeout=0)
    with pytest.raises(ValueError, match="dump_timeout"):
        Collector(dump_timeout=True)
    with pytest.raises(TypeError, match="flows"):
        Collector(flows=1)
    c = Collector()
    assert list(c.collect()) == []
    assert list(c.describe()) == []


def test_extra_labels_are_checked():
    c = Collector()
    ct = pytest.importorskip("nfbind.conntrack").Conntrack()
    try:
        with pytest.raises(ValueError, match="not a valid Prometheus label name"):
            c.add(ct, **{"1bad": "x"})
        with pytest.raises(ValueError, match="not a valid Prometheus label name"):
            c.add(ct, __reserved="x")
        with pytest.raises(ValueError, match="one the metrics set themselves"):
            c.add(ct, zone="x")
        with pytest.raises(TypeError, match="must be a str"):
            c.add(ct, netns=3)
        c.add(ct, netns="a")
        with pytest.raises(ValueError, match="in this Collector already"):
            c.add(ct, netns="b")
        ct2 = type(ct)()
        try:
            with pytest.raises(ValueError, match=r"collector.add\(obj, netns="):
                c.add(ct2, netns="a")
            c.add(ct2, netns="b")
        finally:
            ct2.close()
        names = {f.name for f in c.describe()}
        assert "nfbind_conntrack_flows" in names and "nfbind_conntrack_max" in names
    finally:
        ct.close()


@pytest.mark.parametrize("text, want", [
    ("9100", ("127.0.0.1", 9100)),
    (":9100", ("", 9100)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:80", ("localhost", 80)),
    ("[::1]:9100", ("::1", 9100)),
    ("[::]:1", ("::", 1)),
])
def test_listen_addresses(text, want):
    assert listen_address(text) == want


@pytest.mark.parametrize("text, msg", [
    ("http", "port must be a number"),
    ("1:2:3", "IPv6 address in brackets"),
    ("[]:80", "empty IPv6"),
    ("65536", "0..65535"),
    ("127.0.0.1:-1", "0..65535"),
    ("127.0.0.1:", "port must be a number"),
])
def test_bad_listen_addresses(text, msg):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(msg)):
        listen_address(text)


NO_PROMETHEUS = "import sys; sys.modules['prometheus_client'] = None\n"


def test_without_prometheus_client_the_import_names_the_extra():
    code = NO_PROMETHEUS + (
        "import nfbind\n"
        "try:\n"
        "    import nfbind.metrics\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=child_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ImportError:" in r.stdout and "pip install 'nfbind[metrics]'" in r.stdout, r.stdout


@pytest.mark.parametrize("argv, code", [
    (["ct", "exporter"], 1),
    (["log", "5", "--metrics", "0"], 2),       # --metrics is checked with the arguments
    (["queue", "5", "--metrics", "0"], 2),
    (["ct", "events", "--metrics", "0"], 2),
])
def test_without_prometheus_client_the_command_names_the_extra(argv, code):
    """The check comes before any request to the kernel: no privileges
    needed to see it."""
    src = NO_PROMETHEUS + "from nfbind.cli import main\nraise SystemExit(main(%r))\n" % argv
    r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                       env=child_env(), timeout=60)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "pip install 'nfbind[metrics]'" in r.stderr, r.stderr


def test_the_extra_and_make_venv():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^metrics = \["prometheus-client>=[0-9.]+"\]$', pyproject, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -e '\.\[[a-z,]*\bmetrics\b[a-z,]*\]'", makefile)
