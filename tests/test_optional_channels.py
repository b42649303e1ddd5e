# SPDX-License-Identifier: GPL-2.0-or-later
"""Each channel is optional: ``import nfbind`` works with any subset of the
compiled modules ``_nfqueue``, ``_nflog`` and ``_conntrack``, the remaining
channels work for real, and touching a missing one raises ImportError naming
the packages to install.

* A subprocess imports nfbind with one channel module, then with each pair,
  blocked by an import hook (a meta path finder raising ImportError), and
  uses the others in a throw-away network namespace: a packet through
  NFQUEUE (its ``pkt.ct`` decoded by the core when conntrack is missing), a
  packet through NFLOG, a conntrack dump.
* A real build with libnetfilter_log's headers really missing (a private
  mount namespace hides them and its pkg-config file) installs the sdist
  into a fresh venv, says so in one line, and gives an nfbind whose NFQUEUE
  works and whose NfLog raises the ImportError; ``NFBIND_REQUIRE=all`` makes
  that same build fail with the message.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120   # seconds for one subprocess using the channels
BUILD_TIMEOUT = 600

QUEUE, GROUP = 3, 4
PORT_Q, PORT_L, PORT_CT = 7001, 7002, 7003

#: channel -> (its module, names that need it, the packages its message names)
CHANNELS: Dict[str, tuple] = {
    "nfqueue": ("nfbind._nfqueue", ["NfQueue", "Packet", "serve"],
                ["libnetfilter-queue-dev", "libnetfilter_queue-devel"]),
    "nflog": ("nfbind._nflog", ["NfLog", "LogPacket"],
              ["libnetfilter-log-dev", "libnetfilter_log-devel"]),
    "conntrack": ("nfbind._conntrack", ["Conntrack", "EventStream", "CtEvent"],
                  ["libnetfilter-conntrack-dev", "libnetfilter_conntrack-devel"]),
}

# Run as: python - NETNS BLOCKED MISSING  (module lists, comma-separated).
# Prints one JSON object with what it saw.
SCRIPT = r'''
import json, select, socket, sys, time

ns, blocked, missing = sys.argv[1], sys.argv[2], sys.argv[3]
BLOCKED = {m for m in blocked.split(",") if m}


class Blocker:
    """Makes the blocked compiled modules unimportable."""

    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ImportError("%s is blocked by the test" % name)
        return None


sys.meta_path.insert(0, Blocker())

import nfbind
import nfbind.lowlevel
from nfbind import netns

out = {"all": sorted(nfbind.__all__), "errors": {}, "imports": {}}
# what every install has
assert nfbind.CopyMode.PACKET == 2 and nfbind.IPProto.GRE == 47
assert callable(nfbind.drop_privileges) and nfbind.lowlevel.core is not None
out["lowlevel"] = {k: getattr(nfbind.lowlevel, k) is not None
                   for k in ("nfqueue", "nflog", "conntrack")}

for name in sys.argv[4].split(","):
    if not name:
        continue
    try:
        getattr(nfbind, name)
    except ImportError as e:
        out["errors"][name] = str(e)
    else:
        out["errors"][name] = None
for mod in ("nfbind.queue", "nfbind.log", "nfbind.conntrack.table"):
    try:
        __import__(mod)
    except ImportError as e:
        out["imports"][mod] = str(e)
    else:
        out["imports"][mod] = None
# the conntrack value types need only the core
from nfbind.conntrack import Flow, Tuple
out["flow_type"] = type(Flow(Tuple("10.0.0.1", "10.0.0.2", "udp", 1, 2))).__name__
try:
    from nfbind.conntrack import Conntrack
except ImportError as e:
    out["imports"]["nfbind.conntrack.Conntrack"] = str(e)
else:
    out["imports"]["nfbind.conntrack.Conntrack"] = None


def wait(obj, handler, until, limit=5.0):
    deadline = time.monotonic() + limit
    while not until() and time.monotonic() < deadline:
        select.select([obj.fileno()], [], [], 0.2)
        obj.drain(handler)


tx = netns.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)   # one flow per port


def send(port, data):
    tx.sendto(data, ("127.0.0.1", port))


if "nfqueue" not in missing:
    rx = netns.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", %(port_q)d))
    rx.settimeout(5)
    seen = []

    def decide(pkt):
        ct = pkt.ct
        seen.append({"payload": pkt.payload[28:].decode(), "ct_type": type(ct).__name__,
                     "ct_proto": None if ct is None else int(ct.proto)})
        pkt.accept()

    with nfbind.NfQueue(%(queue)d, netns=ns, conntrack=True) as q:
        # the first packet of a flow is seen before conntrack confirms it: the second
        send(%(port_q)d, b"queued-1")
        wait(q, decide, lambda: len(seen) >= 1)
        send(%(port_q)d, b"queued-2")
        wait(q, decide, lambda: len(seen) >= 2)
    out["nfqueue"] = {"seen": seen, "arrived": [rx.recv(100).decode() for _ in seen]}
    rx.close()

if "nflog" not in missing:
    logged = []
    with nfbind.NfLog(%(group)d, netns=ns) as log:
        send(%(port_l)d, b"logged")
        wait(log, lambda pkt: logged.append(pkt.payload[28:].decode()), lambda: logged)
    out["nflog"] = logged

if "conntrack" not in missing:
    send(%(port_ct)d, b"tracked")
    with nfbind.Conntrack(netns=ns) as ct:
        out["conntrack"] = sorted(f.orig.dport for f in ct.dump() if f.proto == 17)

print(json.dumps(out))
'''
for _k, _v in dict(queue=QUEUE, group=GROUP, port_q=PORT_Q, port_l=PORT_L,
                   port_ct=PORT_CT).items():
    SCRIPT = SCRIPT.replace("%(" + _k + ")d", str(_v))


def _rules(ns) -> None:
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT_L), "-j", "NFLOG",
                "--nflog-group", str(GROUP))
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT_Q), "-j", "NFQUEUE",
                "--queue-num", str(QUEUE))
    ns.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")


def _clean_env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"):
        env.pop(var, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("NFBIND_REQUIRE", None)
    return env


def _use(python: str, ns_name: str, blocked: Sequence[str], missing: Sequence[str],
         cwd: Path) -> dict:
    names = [n for ch in missing for n in CHANNELS[ch][1]]
    p = subprocess.run(
        [python, "-", ns_name, ",".join(CHANNELS[ch][0] for ch in blocked),
         ",".join(missing), ",".join(names)],
        input=SCRIPT, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
        env=_clean_env())
    assert p.returncode == 0, "the script failed:\n%s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])
    return json.loads(p.stdout.splitlines()[-1])


def _check(out: dict, missing: Sequence[str]) -> None:
    present = [ch for ch in CHANNELS if ch not in missing]
    for ch in CHANNELS:
        _, names, pkgs = CHANNELS[ch]
        assert out["lowlevel"][ch] is (ch in present), ch
        if ch in present:
            assert set(names) - {"CtEvent"} <= set(out["all"]), ch
            continue
        assert not set(names) & set(out["all"]), "%s names in __all__" % ch
        for name in names:
            msg = out["errors"][name]
            assert msg is not None, "nfbind.%s did not raise ImportError" % name
            assert "nfbind." + name in msg and all(pkg in msg for pkg in pkgs), msg
        mods = {"nfqueue": ["nfbind.queue"], "nflog": ["nfbind.log"],
                "conntrack": ["nfbind.conntrack.table", "nfbind.conntrack.Conntrack"]}[ch]
        for mod in mods:
            assert out["imports"][mod] is not None and pkgs[0] in out["imports"][mod], mod
    assert out["flow_type"] == "Flow"
    if "nfqueue" in present:
        q = out["nfqueue"]
        assert [s["payload"] for s in q["seen"]] == ["queued-1", "queued-2"]
        assert q["arrived"] == ["queued-1", "queued-2"]
        # the second packet's connection, looked up over ctnetlink and decoded
        # by the core: a Flow, with or without the conntrack channel
        second = q["seen"][1]
        assert second["ct_proto"] == 17
        assert second["ct_type"] == "Flow"
    if "nflog" in present:
        assert out["nflog"] == ["logged"]
    if "conntrack" in present:
        assert PORT_CT in out["conntrack"]


BLOCKINGS = [(c,) for c in CHANNELS] + [
    ("nfqueue", "nflog"), ("nfqueue", "conntrack"), ("nflog", "conntrack")]


@pytest.mark.parametrize("blocked", BLOCKINGS, ids=["+".join(b) for b in BLOCKINGS])
def test_channels_blocked(ns, tmp_path, blocked):
    _rules(ns)
    out = _use(sys.executable, ns.name, blocked, blocked, tmp_path)
    _check(out, blocked)


# -- a real build without libnetfilter_log's headers ----------------------------------------


def _hidden_log_headers() -> List[str]:
    """A command prefix running its command in a private mount namespace in
    which libnetfilter_log's headers and pkg-config file are gone."""
    include = Path("/usr/include/libnetfilter_log")
    pcdir = subprocess.run(["pkg-config", "--variable", "pcfiledir", "libnetfilter_log"],
                           capture_output=True, text=True).stdout.strip()
    pc = Path(pcdir) / "libnetfilter_log.pc"
    assert include.is_dir() and pc.is_file(), "libnetfilter_log is not installed here"
    script = ('set -e; mount -t tmpfs nfbind-test "%s"; mount --bind /dev/null "%s"; '
              'test ! -e "%s/libnetfilter_log.h"; ! pkg-config --exists libnetfilter_log; '
              'exec "$@"' % (include, pc, include))
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "hide"]


def _run(cmd: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)


@pytest.mark.slow
def test_build_without_libnetfilter_log(ns, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to hide the headers")
    env = _clean_env()
    dist = tmp_path / "dist"
    p = _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)],
             tmp_path, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (sdist,) = dist.glob("nfbind-*.tar.gz")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env).returncode == 0
    vpy = str(venv / "bin" / "python")

    p = _run(_hidden_log_headers() + [vpy, "-m", "pip", "install", "-v", str(sdist)],
             tmp_path, env)
    output = p.stdout + p.stderr
    assert p.returncode == 0, output[-5000:]
    notices = [line for line in output.splitlines() if "nfbind: building without" in line]
    assert len(notices) == 1, notices
    assert "NFLOG" in notices[0] and "libnetfilter-log-dev" in notices[0]
    assert "libnetfilter_log-devel" in notices[0]
    site = subprocess.run([vpy, "-c", "import nfbind, os; print(os.path.dirname(nfbind.__file__))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    pkg = Path(site.stdout.strip())
    assert venv.resolve() in pkg.resolve().parents, site.stderr
    built = sorted(f.name.split(".")[0] for f in pkg.glob("_*.so"))
    # the speedups need no channel library: they are built either way
    assert built == ["_conntrack", "_fastct", "_fastq", "_nfcore", "_nfqueue"]

    _rules(ns)
    _check(_use(vpy, ns.name, (), ("nflog",), tmp_path), ("nflog",))

    # a packager's build: the missing channel is an error
    env_all = dict(env, NFBIND_REQUIRE="all")
    p = _run(_hidden_log_headers() + [vpy, "-m", "pip", "install", "-v", "--force-reinstall",
                                      "--no-deps", str(sdist)], tmp_path, env_all)
    output = p.stdout + p.stderr
    assert p.returncode != 0
    assert "NFBIND_REQUIRE=all" in output and "libnetfilter-log-dev" in output, output[-5000:]
