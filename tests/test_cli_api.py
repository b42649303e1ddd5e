# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``nfbind`` command and ``nfbind demo`` use nfbind's public API only, and
that API gives them what they print: ``Flow.as_dict()`` (what ``--json``
prints) and ``parse_proto()``.  No privileges needed."""
from __future__ import annotations

import ast
import ipaddress
import json
from pathlib import Path
from typing import List, Optional

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "nfbind"
LIBRARY = "nfbind"
OWN = "nfbind.cli"  # the CLI's own modules: their private names are the CLI's and the demo's


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library_module_is_private(module: str) -> bool:
    if module != LIBRARY and not module.startswith(LIBRARY + "."):
        return False  # not nfbind: the standard library, scapy ...
    if module == OWN or module.startswith(OWN + "."):
        return False
    return any(_is_private(part) for part in module.split("."))


def private_uses(source: str, module: str, is_package: bool = False) -> List[str]:
    """Where ``source`` (the text of nfbind module ``module``) reaches for a
    private name of the library: an import of a private module or name, an
    attribute like ``conntrack._proto`` or ``ct._labels`` (anything but
    ``self._x``/``cls._x``), or ``getattr(x, "_name")``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        where = "line %d" % getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library_module_is_private(alias.name):
                    found.append("%s: import %s" % (where, alias.name))
        elif isinstance(node, ast.ImportFrom):
            base: Optional[str] = node.module
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            assert base is not None
            if _library_module_is_private(base):
                found.append("%s: from %s import ..." % (where, base))
            elif base.split(".")[0] == LIBRARY and not base.startswith(OWN):
                found += ["%s: from %s import %s" % (where, base, a.name)
                          for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append("%s: .%s" % (where, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value)):
            found.append("%s: %s(..., %r)" % (where, node.func.id, node.args[1].value))
    return found


def _cli_files() -> List[Path]:
    files = sorted((PKG / "cli").glob("*.py"))
    if (PKG / "cli.py").exists():  # the command as one module, as it once was
        files.append(PKG / "cli.py")
    return files + [PKG / "demo.py"]


def test_the_cli_and_demo_files_are_found():
    names = {p.relative_to(PKG).as_posix() for p in _cli_files()}
    assert {"cli/__init__.py", "cli/_output.py", "cli/log.py", "cli/queue.py", "cli/ct.py",
            "demo.py"} <= names


@pytest.mark.parametrize("path", _cli_files(), ids=lambda p: p.relative_to(PKG).as_posix())
def test_cli_and_demo_use_public_api_only(path: Path):
    rel = path.relative_to(SRC).with_suffix("")
    is_package = rel.name == "__init__"
    module = ".".join(rel.parent.parts if is_package else rel.parts)
    assert private_uses(path.read_text(), module, is_package) == []


def test_private_uses_finds_each_kind():
    """The check itself: each way of reaching a private name is caught, the
    public and the CLI's own ones are not."""
    bad = {
        "from .conntrack import _proto": "nfbind.cli",
        "from ..conntrack import _proto": "nfbind.cli.ct",
        "from ._lib import lib": "nfbind.demo",
        "from nfbind._lib import lib": "nfbind.demo",
        "import nfbind._lib": "nfbind.demo",
        "from .. import _channel": "nfbind.cli.ct",
        "ct._labels('labels', x)": "nfbind.cli.ct",
        "conntrack._x": "nfbind.demo",
        "getattr(ct, '_labels')": "nfbind.cli.ct",
    }
    for source, module in bad.items():
        assert len(private_uses(source, module)) == 1, source
    good = {
        "from ._output import _opt, CliError": "nfbind.cli.ct",  # the CLI's own module
        "from .cli._output import summary": "nfbind.demo",
        "from ..conntrack import Flow, parse_proto": "nfbind.cli.ct",
        "from .. import netns, lowlevel": "nfbind.cli.queue",
        "import os, socket\nos.environ": "nfbind.demo",
        "self._stop = 1\nCpuStats.__dataclass_fields__": "nfbind.cli.ct",
        "from scapy.layers.inet import _private_thing": "nfbind.demo",
    }
    for source, module in good.items():
        assert private_uses(source, module) == [], source


# -- the public API the CLI prints through ----------------------------------------------------

conntrack = pytest.importorskip("nfbind.conntrack", reason="libnetfilter_conntrack not built")


def _flows() -> list:
    C = conntrack
    from nfbind.enums import CtStatus, TcpState

    a, b = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")
    return [
        C.Flow(C.Tuple(a, b, "tcp", 1000, 80), C.Tuple(b, a, "tcp", 80, 1000), timeout=120,
               state=TcpState.ESTABLISHED, status=CtStatus.ASSURED | CtStatus.SEEN_REPLY,
               mark=7, zone=2, labels={100, 3}, id=42, use=1, secmark=9, helper="ftp",
               counters=C.Counters(3, 180, 2, 120), timestamps=C.Timestamps(1_700_000_000 * 10**9),
               nat=C.Nat(snat=C.Endpoint(ipaddress.ip_address("192.0.2.1"), 4000))),
        C.Flow(C.Tuple("::1", "::2", "icmpv6", icmp_type=128, icmp_id=5),
               timestamps=C.Timestamps(10**18, 10**18 + 2 * 10**9)),
        C.Flow(C.Tuple("::1", "::2", "dccp", 5, 6), state=3),
        C.Flow(C.Tuple(a, b, 50)),
    ]


def test_flow_as_dict():
    d = _flows()[0].as_dict()
    assert d == {
        "family": "ipv4", "proto": "tcp",
        "orig": {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "tcp", "sport": 1000, "dport": 80},
        "reply": {"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "tcp", "sport": 80, "dport": 1000},
        "state": "ESTABLISHED", "status": ["SEEN_REPLY", "ASSURED"], "timeout": 120, "mark": 7,
        "zone": 2, "labels": [3, 100], "id": 42, "use": 1, "secmark": 9, "helper": "ftp",
        "counters": {"orig_packets": 3, "orig_bytes": 180, "reply_packets": 2, "reply_bytes": 120},
        "timestamps": {"start": 1_700_000_000.0, "stop": None},
        "nat": {"snat": "192.0.2.1:4000", "dnat": None},
    }
    assert list(d) == ["family", "proto", "orig", "reply", "state", "status", "timeout", "mark",
                       "zone", "labels", "id", "use", "secmark", "helper", "counters",
                       "timestamps", "nat"]


def test_small_flows_as_dict():
    icmp, dccp, other = (f.as_dict() for f in _flows()[1:])
    assert icmp["family"] == "ipv6" and icmp["reply"] is None and icmp["state"] is None
    assert icmp["orig"] == {"src": "::1", "dst": "::2", "proto": "icmpv6", "icmp_type": 128,
                            "icmp_code": 0, "icmp_id": 5}
    assert icmp["timestamps"] == {"start": 1e9, "stop": 1e9 + 2}
    assert "counters" not in icmp and "nat" not in icmp
    assert dccp["state"] == 3 and dccp["orig"]["dport"] == 6  # DCCP states have no names
    assert other["proto"] == "50" and other["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2",
                                                        "proto": "50"}
    assert other["status"] == [] and other["labels"] == []


@pytest.mark.parametrize("i", range(4))
def test_flow_as_dict_round_trips_through_json(i: int):
    d = _flows()[i].as_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON values: no default= needed


def test_parse_proto():
    from nfbind.enums import IPProto

    assert conntrack.parse_proto("TCP") is IPProto.TCP
    assert conntrack.parse_proto("ipv6-icmp") is IPProto.ICMPV6
    assert conntrack.parse_proto(17) is IPProto.UDP
    esp = conntrack.parse_proto("esp")  # /etc/protocols: a number IPProto does not name
    assert esp == 50 and not isinstance(esp, IPProto)
    with pytest.raises(ValueError, match="proto: unknown protocol name 'nosuch'"):
        conntrack.parse_proto("nosuch")
    with pytest.raises(ValueError, match="proto"):
        conntrack.parse_proto(256)
    with pytest.raises(TypeError, match="proto"):
        conntrack.parse_proto(1.5)
