# SPDX-License-Identifier: GPL-2.0-or-later
"""``--metrics`` on ``nfbind log``, ``nfbind queue`` (one process and
``--workers``), ``nfbind ct events``, and ``nfbind ct exporter``: each
command runs as a subprocess against real traffic in a throw-away
namespace, its endpoint is scraped over HTTP and parsed with
prometheus_client's parser, and the values are checked against what was
sent, /proc/net/netfilter/nfnetlink_queue, ``conntrack -L`` and
``conntrack -C``."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import List

import pytest

pytest.importorskip("prometheus_client",
                    reason="nfbind[metrics] is not installed (make venv installs it)")

from nfbind.conntrack import Conntrack, Flow, Tuple  # noqa: E402
from nfbind.enums import TcpState  # noqa: E402

from helpers.conntrack import conntrack_l, ct_ns  # noqa: E402
from helpers.procs import child_env  # noqa: E402
from helpers.scrape import StderrReader, metrics_url, scrape, scrape_openmetrics  # noqa: E402
from helpers.scrape import wait_value  # noqa: E402

pytestmark = pytest.mark.integration

NFB = [sys.executable, "-m", "nfbind"]
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def start(ns, *args: str) -> "tuple[subprocess.Popen, StderrReader]":
    """``nfbind ARGS --netns NS``, ended by PID at teardown."""
    env = dict(child_env(), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([*NFB, *args, "--netns", ns.name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    ns.procs.append(p)
    return p, StderrReader(p)


def stop(p: subprocess.Popen, reader: StderrReader, sig: int = signal.SIGINT) -> str:
    p.send_signal(sig)
    err = reader.rest()
    assert p.wait(15) == 0, err
    assert "Traceback" not in err, err
    return err


def send_udp(ns, port: int, payloads: List[bytes]) -> None:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            time.sleep(0.005)
    finally:
        s.close()


def received(sock: socket.socket, quiet: float = 0.3) -> List[bytes]:
    sock.settimeout(quiet)
    got = []
    try:
        for _ in range(10000):
            got.append(sock.recv(2000))
    except socket.timeout:
        pass
    return got


# -- nfbind queue -----------------------------------------------------------------------------


HOOK = '''
def decide(pkt):
    if pkt.payload.endswith(b"e"):
        raise RuntimeError("a hook bug")
    return "drop" if pkt.payload.endswith(b"d") else "accept"
'''


def test_queue_metrics_count_the_hooks_verdicts(ns, tmp_path):
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "7100", "-j", "NFQUEUE",
                "--queue-num", "3")
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    rx = ns.socket()
    rx.bind(("127.0.0.1", 7100))
    p, err = start(ns, "queue", "3", "--hook", "%s:decide" % hook, "--metrics", "127.0.0.1:0")
    url = metrics_url(err)
    s = wait_value(url, "nfbind_queue_waiting", 0, queue="3")   # bound: the kernel lists it
    assert s.value("nfbind_queue_packets_total", queue="3") == 0
    # 6 accepted, 3 dropped by the hook, 1 the hook fails on (gets --verdict accept)
    send_udp(ns, 7100, [b"%da" % i for i in range(6)] + [b"%dd" % i for i in range(3)]
             + [b"9e"])
    s = wait_value(url, "nfbind_queue_packets_total", 10, queue="3")
    s = wait_value(url, "nfbind_queue_verdicts_total", 3, queue="3", verdict="drop")
    assert s.value("nfbind_queue_verdicts_total", queue="3", verdict="accept") == 7
    assert s.value("nfbind_queue_hook_errors_total", queue="3") == 1
    assert s.value("nfbind_queue_pending", queue="3") == 0
    row = ns.queue_proc()[3]
    assert s.value("nfbind_queue_waiting", queue="3") == row["waiting"] == 0
    assert s.value("nfbind_queue_kernel_dropped_total", queue="3",
                   reason="queue_full") == row["queue_dropped"]
    assert s.value("nfbind_queue_kernel_dropped_total", queue="3",
                   reason="socket") == row["user_dropped"]
    text = stop(p, err)
    assert "10 packets (7 accepted, 3 dropped)" in text, text
    assert sorted(received(rx)) == sorted([b"%da" % i for i in range(6)] + [b"9e"])
    rx.close()
    # the endpoint is gone with the command
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, timeout=2)


def test_queue_workers_metrics_are_aggregated_in_the_parent(ns):
    """Two workers, queues 0 and 1: the parent serves each queue's counts."""
    for q, port in ((0, 7101), (1, 7102)):
        ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", str(port),
                    "-j", "NFQUEUE", "--queue-num", str(q))
    p, err = start(ns, "queue", "0:1", "--workers", "2", "--verdict", "drop",
                   "--metrics", "127.0.0.1:0")
    url = metrics_url(err)
    err.wait_for(r"queues 0-1: 2 workers")
    send_udp(ns, 7101, [b"a"] * 4)
    send_udp(ns, 7102, [b"b"] * 6)
    s = wait_value(url, "nfbind_queue_packets_total", 6, queue="1")
    s = wait_value(url, "nfbind_queue_packets_total", 4, queue="0")
    assert s.value("nfbind_queue_verdicts_total", queue="0", verdict="drop") == 4
    assert s.value("nfbind_queue_verdicts_total", queue="1", verdict="drop") == 6
    assert s.value("nfbind_queue_verdicts_total", queue="1", verdict="accept") == 0
    assert s.value("nfbind_queue_hook_errors_total", queue="0") == 0
    procs = ns.queue_proc()
    for q in (0, 1):
        assert s.value("nfbind_queue_waiting", queue=str(q)) == procs[q]["waiting"] == 0
        assert s.value("nfbind_queue_kernel_dropped_total", queue=str(q),
                       reason="socket") == procs[q]["user_dropped"]
    text = stop(p, err)
    assert "10 packets (10 dropped)" in text, text


# -- nfbind log -------------------------------------------------------------------------------


def test_log_metrics(ns):
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", "7103", "-j", "NFLOG",
                "--nflog-group", "9")
    p, err = start(ns, "log", "9", "--prefix-only", "--metrics", "127.0.0.1:0")
    url = metrics_url(err)
    wait_value(url, "nfbind_log_waiting", 0, group="9")   # bound
    send_udp(ns, 7103, [b"x%d" % i for i in range(5)])
    s = wait_value(url, "nfbind_log_packets_total", 5, group="9")
    assert s.value("nfbind_log_overruns_total", group="9") == 0
    assert s.value("nfbind_log_handler_errors_total", group="9") == 0
    assert stop(p, err).count("5 packets") == 1


# -- nfbind ct events -------------------------------------------------------------------------


def test_ct_events_metrics(ns):
    ct_ns(ns, v6=False)
    p, err = start(ns, "ct", "events", "--metrics", "127.0.0.1:0")
    url = metrics_url(err)
    s = scrape(url)
    assert s.value("nfbind_conntrack_events_total", type="new") == 0
    assert not s.has("nfbind_conntrack_flows")   # no table dump here: the exporter does it
    with Conntrack(netns=ns.name) as ct:
        tuples = [Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53) for sp in (1, 2, 3)]
        for t in tuples:
            ct.create(Flow(t, timeout=60))
        s = wait_value(url, "nfbind_conntrack_events_total", 3, type="new")
        assert s.value("nfbind_conntrack_entries") == int(ns.run("conntrack", "-C")) == 3
        for t in tuples[:2]:
            ct.delete(t)
    s = wait_value(url, "nfbind_conntrack_events_total", 2, type="destroy")
    assert s.value("nfbind_conntrack_events_total", type="update") == 0
    assert s.value("nfbind_conntrack_events_overruns_total") == 0
    assert s.value("nfbind_conntrack_entries") == 1
    stop(p, err)


# -- nfbind ct exporter -----------------------------------------------------------------------


def fill(ns) -> None:
    ct_ns(ns)
    with Conntrack(netns=ns.name) as ct:
        for sp in (1, 2, 3):
            ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53), timeout=300))
        ct.create(Flow(Tuple("10.0.0.1", "10.0.0.2", "tcp", 5, 80), timeout=300,
                       state=TcpState.ESTABLISHED, zone=4))
        ct.create(Flow(Tuple("fd00::1", "fd00::2", "tcp", 5, 80), timeout=300,
                       state=TcpState.SYN_SENT))


def test_exporter_matches_conntrack_l_and_c(ns):
    fill(ns)
    p, err = start(ns, "ct", "exporter", "--listen", "127.0.0.1:0")
    url = metrics_url(err)
    s = scrape(url)
    want = Counter((r["family"], PROTO_NAMES[r["proto"]], r.get("state", "none").lower(),
                    r.get("zone", "0")) for r in conntrack_l(ns))
    got = {tuple(dict(k)[n] for n in ("family", "proto", "state", "zone")): v
           for k, v in s.series("nfbind_conntrack_flows").items()}
    assert got == dict(want) == {("ipv4", "udp", "none", "0"): 3,
                                 ("ipv4", "tcp", "established", "4"): 1,
                                 ("ipv6", "tcp", "syn_sent", "0"): 1}
    assert s.value("nfbind_conntrack_entries") == int(ns.run("conntrack", "-C")) == 5
    assert s.value("nfbind_conntrack_max") == int(
        ns.run("cat", "/proc/sys/net/netfilter/nf_conntrack_max"))
    assert s.value("nfbind_conntrack_dump_complete") == 1
    assert s.value("nfbind_scrape_errors_total", source="conntrack") == 0
    # as Prometheus asks: OpenMetrics, read by prometheus_client's OpenMetrics parser
    om = scrape_openmetrics(url)
    assert om["nfbind_conntrack_entries"].samples[0].value == 5
    assert om["nfbind_conntrack_stat"].type == "counter"
    # read-only: the table is as it was
    assert int(ns.run("conntrack", "-C")) == 5
    # the other paths
    with urllib.request.urlopen(url.replace("/metrics", "/"), timeout=5) as r:
        assert r.status == 200 and b"/metrics" in r.read()
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=5)
    assert ei.value.code == 404
    text = stop(p, err, signal.SIGTERM)
    assert "ct exporter: 2 scrapes in" in text, text


def test_exporter_on_every_address_and_ipv6_without_flows(ns):
    fill(ns)
    p, err = start(ns, "ct", "exporter", "--listen", ":0", "--no-flows")
    url = metrics_url(err)
    assert url.startswith("http://[::]:"), url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for host in ("127.0.0.1", "[::1]"):
        s = scrape("http://%s:%d/metrics" % (host, port))
        assert s.value("nfbind_conntrack_entries") == 5
        assert not s.has("nfbind_conntrack_flows")
    stop(p, err)
    p, err = start(ns, "ct", "exporter", "--listen", "[::1]:0", "--dump-timeout", "2")
    url = metrics_url(err)
    assert url.startswith("http://[::1]:"), url
    assert sum(scrape(url).series("nfbind_conntrack_flows").values()) == 5
    stop(p, err)


def test_exporter_errors_name_the_fix(ns):
    env = child_env()
    r = subprocess.run([*NFB, "ct", "exporter", "--netns", "nfbind-no-such-ns"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "nfbind-no-such-ns" in r.stderr and "ip netns add" in r.stderr, r.stderr
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([*NFB, "ct", "exporter", "--listen", "127.0.0.1:%d" % port,
                            "--netns", ns.name],
                           capture_output=True, text=True, timeout=30, env=env)
    finally:
        taken.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot listen on 127.0.0.1:%d" % port in r.stderr, r.stderr
    assert "choose another port" in r.stderr, r.stderr
    r = subprocess.run([*NFB, "ct", "exporter", "--listen", "nfbind-no-such-host.invalid:1",
                        "--netns", ns.name], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot listen on nfbind-no-such-host.invalid:1" in r.stderr, r.stderr
    r = subprocess.run([*NFB, "queue", "3", "--metrics", "1:2:3"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == 2 and "IPv6 address in brackets" in r.stderr, r.stderr


def test_exporter_help_names_the_defaults():
    r = subprocess.run([*NFB, "ct", "exporter", "-h"], capture_output=True, text=True,
                       timeout=30, env=child_env())
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "default 127.0.0.1:9101" in text and "--dump-timeout" in text, text


def test_ct_events_flows_metrics(ns):
    """``ct events --flows --metrics``: the recorder's counts."""
    ct_ns(ns, v6=False)
    p, err = start(ns, "ct", "events", "--flows", "--json", "--enable-accounting",
                   "--metrics", "127.0.0.1:0")
    url = metrics_url(err)
    assert scrape(url).value("nfbind_flows_records_total") == 0
    with Conntrack(netns=ns.name) as ct:
        tuples = [Tuple("10.0.0.1", "10.0.0.2", "udp", sp, 53) for sp in (1, 2, 3)]
        for t in tuples:
            ct.create(Flow(t, timeout=60))
        for t in tuples:
            ct.delete(t)
    s = wait_value(url, "nfbind_flows_records_total", 3)
    assert s.value("nfbind_flows_events_total") == 3
    assert s.value("nfbind_flows_overruns_total") == 0
    stop(p, err)
    assert p.stdout is not None and len(p.stdout.read().splitlines()) == 3
