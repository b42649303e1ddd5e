# SPDX-License-Identifier: GPL-2.0-or-later
"""``make test-matrix``: nfbind from its sdist on every supported Python here.

The supported versions are the ``Programming Language :: Python :: 3.N``
classifiers of pyproject.toml.  For every interpreter of those versions that
this machine has (pyenv's under ``$PYENV_ROOT/versions`` and the system's in
/usr/bin and /usr/local/bin; or the ones named with ``--python``), in
parallel:

1. a fresh venv in ``WORKDIR/<name>/venv``;
2. ``pip install dist/nfbind-*.tar.gz[test,scapy]``: the sdist built once,
   compiled by that interpreter, never an editable install;
3. ``import nfbind`` and its four compiled modules from outside the checkout,
   and a check that they came from the venv;
4. the unit tests (marker ``unit``: no privileges, no checkout needed) and one
   integration test per channel, from a copy of tests/ in ``WORKDIR/<name>``,
   where the checkout's src/ is not importable;
5. ``python -m nfbind demo``.

It prints a line per interpreter as it finishes, then a table naming each
interpreter and the result of each step (and the end of a failed step's
output; all of it is in ``WORKDIR/<name>/log.txt``).  It exits non-zero when any step fails on any interpreter, or when a
supported version has no interpreter here.  Every step has a time limit.
The integration tests and the demo need root, as ``make test`` does.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]

#: one integration test per channel: fast, and each through a different API
#: path (async iteration with verdicts; a blocking NfLog; a conntrack dump
#: decoded field by field and checked against conntrack -L)
INTEGRATION = (
    "tests/test_queue_verdicts.py::test_async_iteration_with_user_verdicts",
    "tests/test_log_attrs.py::test_iptables_prefix_and_attributes_on_loopback",
    "tests/test_conntrack.py::test_dump_matches_conntrack_l_every_field",
)

#: seconds each step may take (a compile on a loaded 2-core machine included)
LIMITS = {"venv": 120, "install": 420, "import": 60, "unit": 300, "integration": 300,
          "demo": 120}

STEPS = ("venv", "install", "import", "unit", "integration", "demo")

#: what a venv's interpreter must not inherit from the caller
DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV",
            "PYTHONNOUSERSITE", "PIP_REQUIRE_VIRTUALENV", "PYENV_VERSION")

_print_lock = threading.Lock()


def say(text: str) -> None:
    """Print one line at once (several interpreters run side by side)."""
    with _print_lock:
        print(text, flush=True)


# -- which Pythons -----------------------------------------------------------------------------


def supported_versions(pyproject: Path) -> List[Tuple[int, int]]:
    """The ``Programming Language :: Python :: 3.N`` classifiers, in order."""
    text = pyproject.read_text(encoding="utf-8")
    found = {(int(a), int(b)) for a, b in re.findall(
        r'"Programming Language :: Python :: (\d+)\.(\d+)"', text)}
    if not found:
        raise SystemExit("test-matrix: pyproject.toml lists no "
                         "'Programming Language :: Python :: 3.N' classifier")
    return sorted(found)


@dataclass
class Interp:
    """One interpreter of this machine."""

    path: str               #: as found (a pyenv install's python3, /usr/bin/python3.11 ...)
    version: str            #: e.g. "3.9.18"
    where: str              #: "pyenv" | "system" | "given"
    name: str = ""          #: directory name under the work directory, e.g. "3.9.18-pyenv"
    results: Dict[str, str] = field(default_factory=dict)   #: step -> "ok" / what it said
    failed: Optional[str] = None     #: the first step that failed
    tail: str = ""                   #: the end of that step's output
    seconds: float = 0.0

    @property
    def minor(self) -> Tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)


def probe(path: str, where: str) -> Optional[Interp]:
    """The CPython at ``path`` and its version; None if it is not one."""
    code = ("import sys, platform; "
            "print(platform.python_implementation(), platform.python_version())")
    try:
        out = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=30,
                             env=clean_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 2 or words[0] != "CPython":
        return None
    return Interp(path=path, version=words[1], where=where)


def discover() -> List[Interp]:
    """pyenv's CPython installs and the system's python3.N, each once."""
    found: List[Interp] = []
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates: List[Tuple[str, str]] = []
    for d in sorted(glob.glob(os.path.join(pyenv_root, "versions", "*"))):
        # CPython releases only: "3.12.1", not "pypy3.10-7.3", "3.13t" or a virtualenv
        if re.fullmatch(r"\d+\.\d+\.\d+", os.path.basename(d)):
            candidates.append((os.path.join(d, "bin", "python3"), "pyenv"))
    for d in ("/usr/bin", "/usr/local/bin"):
        for p in sorted(glob.glob(os.path.join(d, "python3.*"))):
            if re.fullmatch(r"python3\.\d+", os.path.basename(p)):
                candidates.append((p, "system"))
    seen = set()
    for path, where in candidates:
        if not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        interp = probe(path, where)
        if interp is not None:
            found.append(interp)
    return found


# -- running the steps ---------------------------------------------------------------------------


def clean_env(venv: Optional[Path] = None) -> Dict[str, str]:
    """The caller's environment without what would make the checkout importable
    or choose another interpreter; with ``venv``, that venv's bin/ first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    return env


class StepFailed(Exception):
    """A step exited non-zero, timed out or printed the wrong thing."""

    def __init__(self, step: str, summary: str, output: str) -> None:
        super().__init__(summary)
        self.step = step
        self.summary = summary
        self.output = output


def run(step: str, cmd: Sequence[str], cwd: Path, env: Dict[str, str], log: Path) -> str:
    """Run ``cmd`` for ``step`` within its time limit; its output goes to ``log``."""
    with log.open("a", encoding="utf-8") as f:
        f.write("\n$ %s   (in %s)\n" % (" ".join(cmd), cwd))
    start = time.monotonic()
    try:
        proc = subprocess.run(list(cmd), cwd=str(cwd), env=env, capture_output=True, text=True,
                              timeout=LIMITS[step], stdin=subprocess.DEVNULL)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = _text(e.stdout) + _text(e.stderr)
        _append(log, output + "\n[%s: no result after %d s]" % (step, LIMITS[step]))
        raise StepFailed(step, "no result after %d s" % LIMITS[step], output) from None
    _append(log, output + "\n[%s: exit status %d after %.1f s]" % (
        step, rc, time.monotonic() - start))
    if rc != 0:
        counts = pytest_counts(output)
        raise StepFailed(step, "exit status %d%s" % (rc, " (%s)" % ", ".join(
            "%d %s" % (v, k) for k, v in counts.items()) if counts else ""), output)
    return output


def _text(b: object) -> str:
    if isinstance(b, bytes):
        return b.decode("utf-8", "replace")
    return b if isinstance(b, str) else ""


def _append(log: Path, output: str) -> None:
    # pip repeats this for every entry of an extra index that has no such package
    kept = [line for line in output.splitlines() if "is ignored: it is neither" not in line]
    with log.open("a", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")


def pytest_counts(output: str) -> Dict[str, int]:
    """pytest's closing counts, e.g. {'passed': 265, 'deselected': 35}."""
    for line in reversed(output.strip().splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and re.search(r"\d+ (passed|failed|error)", line):
            return {word.rstrip("s") if word in ("errors", "warnings") else word: int(n)
                    for n, word in re.findall(r"(\d+) ([a-z]+)", line)}
    return {}


def check_counts(step: str, output: str, expect: Optional[int] = None) -> str:
    """The counts as a short text; StepFailed unless all passed and none was
    skipped (this runs as root: nothing has a reason to skip)."""
    counts = pytest_counts(output)
    passed = counts.get("passed", 0)
    bad = {k: v for k, v in counts.items() if k in ("failed", "error", "skipped", "xpassed")}
    text = "%d passed" % passed + "".join(", %d %s" % (v, k) for k, v in sorted(bad.items()))
    if not counts or bad or passed == 0 or (expect is not None and passed != expect):
        raise StepFailed(step, text if counts else "no pytest summary", output)
    return text


def unit_files(tests: Path) -> List[str]:
    """The test files that hold unit tests (those naming the ``unit`` marker)."""
    out = []
    for p in sorted(tests.glob("test_*.py")):
        if re.search(r"\bpytest\.mark\.unit\b", p.read_text(encoding="utf-8")):
            out.append("tests/" + p.name)
    return out


def check_one(interp: Interp, sdist: Path, workdir: Path, pyproject: Path) -> None:
    """Every step for one interpreter; the results land in ``interp``."""
    start = time.monotonic()
    home = workdir / interp.name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = home / "log.txt"
    venv = home / "venv"
    vpy = venv / "bin" / "python"
    env = clean_env(venv)
    pytest_cmd = [str(vpy), "-m", "pytest", "-p", "no:cacheprovider", "-q",
                  "-c", str(pyproject), "--rootdir", str(home)]
    step = "venv"
    try:
        run("venv", [interp.path, "-m", "venv", str(venv)], home, clean_env(), log)
        interp.results["venv"] = "ok"

        step = "install"
        run("install", [str(vpy), "-m", "pip", "install", "-q", "%s[test,scapy]" % sdist],
            home, env, log)
        interp.results["install"] = "ok"

        step = "import"
        code = ("import os, nfbind, nfbind._nfcore, nfbind._nfqueue, nfbind._nflog, "
                "nfbind._conntrack; print(nfbind.__version__); "
                "print(os.path.realpath(nfbind.__file__))")
        out = run("import", [str(vpy), "-c", code], home, env, log).split()
        if len(out) != 2 or not out[1].startswith(str(venv.resolve()) + os.sep):
            raise StepFailed("import", "nfbind came from %s, not the venv" % out[-1:],
                             "\n".join(out))
        interp.results["import"] = "ok"

        # the tests run from a copy, so that nothing of the checkout is importable
        shutil.copytree(ROOT / "tests", home / "tests",
                        ignore=shutil.ignore_patterns("__pycache__", "matrix"))
        step = "unit"
        files = unit_files(home / "tests")
        if not files:
            raise StepFailed("unit", "no test file uses the 'unit' marker", "")
        out = run("unit", pytest_cmd + ["-m", "unit"] + files, home, env, log)
        interp.results["unit"] = check_counts("unit", out)

        step = "integration"
        out = run("integration", pytest_cmd + list(INTEGRATION), home, env, log)
        interp.results["integration"] = check_counts("integration", out, len(INTEGRATION))

        step = "demo"
        out = run("demo", [str(vpy), "-m", "nfbind", "demo"], home, env, log)
        missing = [s for s in ("NFLOG", "NFQUEUE", "conntrack") if s not in out]
        if missing:
            raise StepFailed("demo", "no %s step in its output" % "/".join(missing), out)
        interp.results["demo"] = "ok"
    except StepFailed as e:
        interp.failed = e.step
        interp.results[e.step] = "FAILED: " + e.summary
        interp.tail = "\n".join(e.output.strip().splitlines()[-40:])
    except Exception as e:  # a bug here, or the disk: still name the interpreter
        interp.failed = step
        interp.results[step] = "FAILED: %s: %s" % (type(e).__name__, e)
    interp.seconds = time.monotonic() - start
    say("[%s %s] %s (%.0f s)%s" % (
        interp.version, interp.where, "FAILED at %s" % interp.failed if interp.failed else "ok",
        interp.seconds, "" if not interp.failed else "; log: %s" % log))


# -- main ----------------------------------------------------------------------------------------


def build_sdist(workdir: Path) -> Path:
    """``python -m build --sdist`` of the checkout, once, into WORKDIR/dist."""
    dist = workdir / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    env = clean_env()
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist),
                           str(ROOT)], capture_output=True, text=True, env=env,
                          timeout=LIMITS["install"], stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit("test-matrix: the sdist did not build (%s -m build --sdist); "
                         "`make venv` installs the build package" % sys.executable)
    sdists = sorted(dist.glob("nfbind-*.tar.gz"))
    if len(sdists) != 1:
        raise SystemExit("test-matrix: expected one sdist in %s, found %s" % (dist, sdists))
    return sdists[0]


def table(interps: List[Interp]) -> List[str]:
    """The summary rows: one per interpreter."""
    head = ["python", "interpreter", "install", "import", "unit", "integration", "demo", "time"]
    rows = [head]
    for i in interps:
        rows.append([i.version, "%s (%s)" % (i.path, i.where),
                     *(_short(i.results.get(s, "-")) for s in STEPS[1:]),
                     "%.0f s" % i.seconds])
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def _short(result: str) -> str:
    return "FAILED" if result.startswith("FAILED") else result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", default=[], metavar="PATH",
                    help="test this interpreter (repeatable) instead of the ones found")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4),
                    help="interpreters at a time (default: the number of cores, at most 4)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "matrix",
                    help="where the sdist, venvs, test copies and logs go (default: "
                         "build/matrix)")
    args = ap.parse_args(argv)
    started = time.monotonic()

    pyproject = ROOT / "pyproject.toml"
    supported = supported_versions(pyproject)
    if args.python:
        interps = []
        for p in args.python:
            i = probe(p, "given")
            if i is None:
                raise SystemExit("test-matrix: %s is not a CPython interpreter" % p)
            interps.append(i)
    else:
        interps = discover()
    others = sorted({i.version for i in interps if i.minor not in supported},
                    key=lambda v: tuple(int(x) for x in v.split(".")))
    interps = [i for i in interps if i.minor in supported]
    interps.sort(key=lambda i: (i.minor, i.where != "pyenv", i.version))
    for i in interps:
        i.name = "%s-%s" % (i.version, i.where)
    missing = [v for v in supported if v not in {i.minor for i in interps}]
    supported_s = " ".join("%d.%d" % v for v in supported)

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    built = "no sdist built"
    if interps:
        sdist = build_sdist(workdir)
        built = sdist.name
        say("test-matrix: %s on %d interpreter(s), %d at a time; supported: %s" % (
            sdist.name, len(interps), args.jobs, supported_s))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for f in [pool.submit(check_one, i, sdist, workdir, pyproject) for i in interps]:
                f.result()

    failed = [i for i in interps if i.failed]
    for i in failed:
        say("\n--- %s (%s): %s failed: %s; the end of its output (all of it in %s):\n%s" % (
            i.version, i.path, i.failed, i.results[i.failed][len("FAILED: "):],
            workdir / i.name / "log.txt", i.tail))
    say("\ntest-matrix summary (%s, from %s):" % (built, ROOT))
    for line in table(interps):
        say(line)
    if others:
        say("  not a supported version (no classifier), not tested: %s" % ", ".join(others))
    for v in missing:
        if args.python:
            say("  not tested: Python %d.%d (not among the interpreters given)" % v)
        else:
            say("  MISSING: no Python %d.%d on this machine (supported: %s); install it, "
                "e.g. `pyenv install %d.%d`, or name one with --python" % (
                    v + (supported_s,) + v))
    if args.python:
        missing = []   # the caller chose the interpreters
    ok = not failed and not missing
    say("test-matrix: %s: %d interpreter(s) passed, %d failed, %d supported version(s) "
        "missing, in %.0f s" % ("PASSED" if ok else "FAILED", len(interps) - len(failed),
                                len(failed), len(missing), time.monotonic() - started))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
