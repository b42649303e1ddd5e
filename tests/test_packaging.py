# SPDX-License-Identifier: GPL-2.0-or-later
"""Packaging: the sdist builds, installs into a clean venv and imports outside the repo;
a machine without the C headers gets a build error that names the package to install."""
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

    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)], tmp_path, env)  # not the repo: a build/ there would shadow the module
    sdists = list(dist.glob("nfbind-*.tar.gz"))
    assert len(sdists) == 1, sdists
    sdist = sdists[0]
    assert sdist.name == "nfbind-%s.tar.gz" % version

    # The sdist must carry everything a build needs: the C declarations and helpers,
    # the build script, the licence, the README (it is the long description) and py.typed.
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in (
        "build_ffi.py", "setup.py", "pyproject.toml", "LICENSE", "README.md",
        "cdef/core.h", "cdef/core.c", "cdef/nfqueue.h", "cdef/nfqueue.c", "cdef/nflog.h",
        "cdef/nflog.c", "cdef/conntrack.h", "cdef/conntrack.c", "src/nfbind/__init__.py",
        "src/nfbind/_core.py", "src/nfbind/py.typed",
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
        "import os, nfbind, nfbind._nfcore, nfbind._nfqueue, nfbind._nflog, nfbind._conntrack; "
        "print(nfbind.__version__); print(os.path.dirname(nfbind.__file__)); "
        "print(nfbind._nfqueue.__file__)"
    )
    out = _run([str(vpy), "-c", code], elsewhere, env).stdout.splitlines()
    assert len(out) == 3, out
    printed_version, pkg_dir, ext_file = out
    assert printed_version == version

    pkg_dir_p = Path(pkg_dir).resolve()
    assert venv.resolve() in pkg_dir_p.parents, "imported %s, not the venv's copy" % pkg_dir
    assert ROOT not in pkg_dir_p.parents
    assert (pkg_dir_p / "py.typed").is_file(), "py.typed not installed in %s" % pkg_dir
    assert Path(ext_file).resolve().parent == pkg_dir_p


def _load_build_ffi():
    spec = importlib.util.spec_from_file_location("nfbind_build_ffi", ROOT / "build_ffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "module, debian",
    [
        ("_nfcore", "libmnl-dev"),
        ("_nfqueue", "libnetfilter-queue-dev"),
        ("_nflog", "libnetfilter-log-dev"),
        ("_conntrack", "libnetfilter-conntrack-dev"),
    ],
)
def test_missing_headers_names_debian_package(
    module: str, debian: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_ffi = _load_build_ffi()
    empty = tmp_path / "include"
    empty.mkdir()
    monkeypatch.setattr(build_ffi, "_INCLUDE_DIRS", [str(empty)])
    monkeypatch.setattr(build_ffi, "_pkgconfig_ok", lambda names: False)

    with pytest.raises(SystemExit) as excinfo:
        build_ffi._builder(module)
    message = str(excinfo.value)
    assert debian in message
    assert "libmnl-dev" in message  # libmnl's header is missing from the empty dir too
    assert "apt-get install" in message
    # The message is for people: it must not be a bare exit status.
    assert not isinstance(excinfo.value.code, int)


def test_headers_present_builds_ffi_object() -> None:
    """The counterpart: with the real headers, every builder returns an FFI object."""
    build_ffi = _load_build_ffi()
    for module in ("_nfcore", "_nfqueue", "_nflog", "_conntrack"):
        ffi = build_ffi._builder(module)
        assert ffi._assigned_source[0] == "nfbind." + module
