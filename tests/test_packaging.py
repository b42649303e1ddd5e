# SPDX-License-Identifier: GPL-2.0-or-later
"""Packaging: ``python -m build`` makes the sdist and a wheel without
deprecation warnings; the sdist installs into a clean venv (not editable), imports
outside the repo and runs ``nfbind demo``.  A machine without a channel's headers
builds the rest and names that channel's packages in one line; without libmnl, or
with NFBIND_REQUIRE naming a missing channel, the build stops with a message naming
the packages.  (tests/test_optional_channels.py builds with headers really missing.)"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300  # seconds for each step; the whole test takes well under a minute here


def _project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        assert m, "no version in pyproject.toml"
        return m.group(1)
    return tomllib.loads(text)["project"]["version"]


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would make the repo's src/ importable."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"):
        env.pop(var, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if proc.returncode != 0:
        pytest.fail(
            "command failed (exit %d): %s\n--- stdout ---\n%s\n--- stderr ---\n%s"
            % (proc.returncode, " ".join(cmd), proc.stdout[-4000:], proc.stderr[-4000:])
        )
    return proc


@pytest.mark.slow
def test_sdist_installs_into_fresh_venv(tmp_path: Path) -> None:
    env = _clean_env()
    version = _project_version()
    dist = tmp_path / "dist"

    # sdist, then a wheel from it; not in the repo: a build/ there would shadow the module
    proc = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], tmp_path, env)
    output = proc.stdout + proc.stderr
    deprecations = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, "the build warns:\n" + "\n".join(deprecations)
    sdists = list(dist.glob("nfbind-*.tar.gz"))
    assert len(sdists) == 1, sdists
    sdist = sdists[0]
    assert sdist.name == "nfbind-%s.tar.gz" % version
    # the cffi modules use only the stable ABI, the speedups the full CPython API:
    # the wheel is for this interpreter's version
    tag = "cp%d%d" % sys.version_info[:2]
    wheels = [w.name for w in dist.glob("*.whl")]
    assert len(wheels) == 1 and re.fullmatch(
        r"nfbind-%s-%s-%s-linux_\w+\.whl" % (re.escape(version), tag, tag), wheels[0]), wheels

    # The sdist must carry everything a build needs: the C declarations and code,
    # the build script and the module table it reads, the licence, the README (it
    # is the long description), py.typed and the compiled modules' stubs.
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in (
        "build_ffi.py", "setup.py", "pyproject.toml", "LICENSE", "README.md",
        "cdef/core.h", "cdef/core.c", "cdef/nfqueue.h", "cdef/nfqueue.c", "cdef/nflog.h",
        "cdef/nflog.c", "cdef/conntrack.h", "cdef/conntrack.c", "cext/fastq.c",
        "cext/fastct.c", "src/nfbind/__init__.py",
        "src/nfbind/_channels.py", "src/nfbind/_core.py", "src/nfbind/py.typed",
        "src/nfbind/_nfcore.pyi", "src/nfbind/_cdata.pyi",
    ):
        assert need in names, "%s missing from %s" % (need, sdist.name)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    vpy = venv / "bin" / "python"
    _run([str(vpy), "-m", "pip", "install", "-q", str(sdist)], tmp_path, env)

    # Import from a directory that is not the repo, so only the installed copy can be found.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import os, nfbind, nfbind._nfcore, nfbind._nfqueue, nfbind._nflog, nfbind._conntrack, "
        "nfbind._fastq, nfbind._fastct; "
        "print(nfbind.__version__); print(os.path.dirname(nfbind.__file__)); "
        "print(nfbind._nfcore.__file__)"
    )
    out = _run([str(vpy), "-c", code], elsewhere, env).stdout.splitlines()
    assert len(out) == 3, out
    printed_version, pkg_dir, ext_file = out
    assert printed_version == version

    pkg_dir_p = Path(pkg_dir).resolve()
    assert venv.resolve() in pkg_dir_p.parents, "imported %s, not the venv's copy" % pkg_dir
    assert ROOT not in pkg_dir_p.parents
    assert (pkg_dir_p / "py.typed").is_file(), "py.typed not installed in %s" % pkg_dir
    for stub in ("_cdata.pyi", "_nfcore.pyi", "_nfqueue.pyi", "_nflog.pyi", "_conntrack.pyi"):
        assert (pkg_dir_p / stub).is_file(), "%s not installed in %s" % (stub, pkg_dir)
    assert Path(ext_file).resolve().parent == pkg_dir_p
    assert Path(ext_file).name == "_nfcore.abi3.so"

    # the installed command runs the demo (root: it makes its own network namespace)
    if os.geteuid() == 0:
        demo = subprocess.run([str(venv / "bin" / "nfbind"), "demo"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        assert str(pkg_dir_p) not in demo.stderr
        for step in ("NFLOG", "NFQUEUE", "conntrack"):
            assert step in demo.stdout, demo.stdout[-4000:]


def _load_build_ffi():
    spec = importlib.util.spec_from_file_location("nfbind_build_ffi", ROOT / "build_ffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *present: str):
    """build_ffi seeing only the libraries ``present`` (pkg-config names)."""
    build_ffi = _load_build_ffi()
    empty = tmp_path / "include"
    empty.mkdir(exist_ok=True)
    monkeypatch.setattr(build_ffi, "_INCLUDE_DIRS", [str(empty)])
    monkeypatch.setattr(build_ffi, "_pkgconfig_ok", lambda names: set(names) <= set(present))
    monkeypatch.delenv("NFBIND_REQUIRE", raising=False)
    return build_ffi


CHANNEL_PACKAGES = [
    ("_nfqueue", "libnetfilter_queue", "libnetfilter-queue-dev", "libnetfilter_queue-devel"),
    ("_nflog", "libnetfilter_log", "libnetfilter-log-dev", "libnetfilter_log-devel"),
    ("_conntrack", "libnetfilter_conntrack", "libnetfilter-conntrack-dev",
     "libnetfilter_conntrack-devel"),
]


@pytest.mark.parametrize("module, library, debian, fedora", CHANNEL_PACKAGES)
def test_missing_channel_is_skipped_with_one_line(
    module: str, library: str, debian: str, fedora: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    others = [lib for _, lib, _, _ in CHANNEL_PACKAGES if lib != library]
    build_ffi = _without(monkeypatch, tmp_path, "libmnl", *others)
    plan = build_ffi.plan()
    assert plan.error is None
    assert plan.modules[0] == "_nfcore" and module not in plan.modules
    assert len(plan.modules) == 3
    assert build_ffi.cffi_modules(plan) == ["build_ffi.py:ffi" + m for m in plan.modules]
    (line,) = plan.notices
    assert "\n" not in line and debian in line and fedora in line and library in line

    # a packager's build: NFBIND_REQUIRE makes the skip an error
    for require in ("all", module.lstrip("_"), "%s, nfqueue" % module.lstrip("_").upper()):
        monkeypatch.setenv("NFBIND_REQUIRE", require)
        plan = build_ffi.plan()
        assert plan.error and debian in plan.error and fedora in plan.error, require
    monkeypatch.setenv("NFBIND_REQUIRE", ",".join(
        n for n in ("nfqueue", "nflog", "conntrack") if n != module.lstrip("_")))
    assert build_ffi.plan().error is None
    monkeypatch.setenv("NFBIND_REQUIRE", "nflog,nfq")
    with pytest.raises(SystemExit, match="nfq"):
        build_ffi.plan()


def test_no_libmnl_no_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libmnl is the core's library: without it nothing builds, and the
    message names its packages (a message for people, not a bare status)."""
    build_ffi = _without(monkeypatch, tmp_path)
    plan = build_ffi.plan()
    assert plan.error and "libmnl-dev" in plan.error and "libmnl-devel" in plan.error
    assert plan.modules == ["_nfcore"]   # listed, so that build_ext stops with the message
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "raise build_ffi.MissingLibraryError(PLAN.error)" in setup
    err = build_ffi.MissingLibraryError(plan.error)
    assert not isinstance(err.code, int)


def test_headers_present_builds_ffi_objects() -> None:
    """The counterpart: with the real headers, every module is planned and
    every builder returns an FFI object; the channels include the core."""
    build_ffi = _load_build_ffi()
    plan = build_ffi.plan("")
    assert plan.error is None and not plan.notices
    assert plan.modules == ["_nfcore", "_nfqueue", "_nflog", "_conntrack"]
    core = build_ffi.ffi_nfcore()
    assert core._assigned_source[0] == "nfbind._nfcore"
    for module in plan.modules[1:]:
        ffi = getattr(build_ffi, "ffi" + module)()
        assert ffi._assigned_source[0] == "nfbind." + module
        assert len(ffi._included_ffis) == 1
        assert ffi._included_ffis[0]._assigned_source[0] == "nfbind._nfcore"
