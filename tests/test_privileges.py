# SPDX-License-Identifier: GPL-2.0-or-later
"""nfbind.drop_privileges and running without root, against the real kernel.

* A process that bound an NfQueue and dropped to ``nobody`` keeping
  CAP_NET_ADMIN: its accept, drop and mark verdicts all take effect (exact
  accounting of every packet), it is nobody with only CAP_NET_ADMIN in its
  effective, permitted and bounding sets, cannot write a root-owned file nor
  enter another network namespace, and may still bind another queue in its
  own namespace.
* The same with ``keep=()``: binding fails, the kernel refuses the verdicts
  and holds the packets until the socket closes, when it drops them.
* An NfLog after ``drop_privileges("nobody", keep=())`` receives every packet.
* A second call, the current identity, other threads, a process that is not
  root; argument errors.
* ``setcap cap_net_admin=+ep`` on a copied interpreter: a script run as nobody
  binds a queue and gives verdicts; the uncopied interpreter gets
  PermissionDenied naming setcap.

The privileged parts run in child processes, so that the test runner keeps
root.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

import nfbind
from nfbind import privileges
from nfbind._core import lib

from helpers.cheaders import constants
from helpers.packets import recv_all
from helpers.procs import SRC, child_env
from helpers.report import fault_report

pytestmark = pytest.mark.integration

PORT = 9931
QNUM = 31
GROUP = 31
MARK = 0x2A
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_gid
NET_ADMIN = 1 << lib.CAP_NET_ADMIN
KINDS = (b"accept", b"drop", b"mark")

#: run by the child: bind, drop privileges, report what the process may still
#: do, then handle packets and report the counts
CHILD = r'''
import json, os, sys
from nfbind import NfLog, NfQueue, PermissionDenied, drop_privileges

a = json.loads(sys.argv[1])


def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def caps():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[k] = int(v, 16)
    return out


def attempt(fn):
    try:
        fn()
        return "ok"
    except PermissionDenied as e:
        return "PermissionDenied: %s" % e
    except PermissionError as e:
        return "PermissionError: %s" % e


def write_root():
    with open(a["rootfile"], "a") as f:
        f.write("written by nobody\n")


def bind_other_ns():
    NfQueue(a["queue"] + 1, netns=a["other_ns"]).close()


def bind_same_ns():
    NfQueue(a["queue"] + 2).close()


if a["mode"] == "queue":
    ch = NfQueue(a["queue"], copy_range=128)
else:
    ch = NfLog(a["group"])
drop_privileges(a["user"], keep=a["keep"])
with open(a["rootfile"]) as f:
    content = f.read()
say(event="dropped", resuid=os.getresuid(), resgid=os.getresgid(), groups=os.getgroups(),
    uid=os.getuid(), euid=os.geteuid(), caps=caps(), read=content, write=attempt(write_root),
    other_ns=attempt(bind_other_ns), same_ns=attempt(bind_same_ns))

counts = {"accept": 0, "drop": 0, "mark": 0, "other": 0}
n = a["count"]


def on_packet(pkt):
    tag = bytes(pkt.payload)[28:].split(b" ")[0].decode()
    if a["mode"] == "queue":
        if tag == "accept":
            pkt.accept()
        elif tag == "drop":
            pkt.drop()
        elif tag == "mark":
            pkt.accept(mark=a["mark"])
        else:
            pkt.accept()
    counts[tag if tag in counts else "other"] += 1
    if sum(counts.values()) >= n:
        ch.stop()


ch.run(on_packet, timeout=a["idle"])
if a["mode"] == "queue":
    ch.run(on_packet, timeout=a["settle"])  # the kernel's answers to the verdicts
    verdict_errors = ch.stats.verdict_errors
else:
    verdict_errors = 0
say(event="done", counts=counts, packets=ch.stats.packets, overruns=ch.stats.overruns,
    verdict_errors=verdict_errors)
sys.stdin.readline()  # the parent reads the kernel's queue table meanwhile
try:
    ch.close()
    closed = "ok"
except Exception as e:
    closed = "%s: %s" % (type(e).__name__, e)
say(event="closed", closed=closed)
'''


class Child:
    """A child process that speaks JSON lines on stdout; every read is bounded."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""

    def read(self, event: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                assert msg["event"] == event, msg
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r from the child within %ds" % (event, timeout))
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() \
                        is not None else ""
                    raise AssertionError("the child ended (rc %s) before %r:\n%s"
                                         % (self.proc.poll(), event, err))
                self.buf += data

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> str:
        """Wait for the child's end; its stderr."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError("the child did not end within %ds" % timeout)
        return err.decode(errors="replace")


@pytest.fixture
def rootfile():
    """A root-owned file, mode 0644, in a directory anyone may enter."""
    d = tempfile.mkdtemp(prefix="nfbind-priv-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        path = os.path.join(d, "owned-by-root")
        with open(path, "w") as f:
            f.write("root's\n")
        os.chmod(path, 0o644)
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644)
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_child(ns, **args) -> Child:
    args.setdefault("user", "nobody")
    args.setdefault("idle", 60)
    args.setdefault("settle", 3)
    args.setdefault("mark", MARK)
    args.setdefault("queue", QNUM)
    args.setdefault("group", GROUP)
    p = ns.popen(sys.executable, "-c", CHILD, json.dumps(args), env=child_env(),
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return Child(p)


def receiver(ns) -> socket.socket:
    r = ns.socket()
    r.setsockopt(lib.SOL_SOCKET, lib.SO_RCVBUFFORCE, 1 << 23)
    r.bind(("127.0.0.1", PORT))
    r.settimeout(0.5)
    return r


def assert_nobody(msg: dict, caps: int) -> None:
    assert msg["uid"] == msg["euid"] == NOBODY.pw_uid
    assert msg["resuid"] == [NOBODY.pw_uid] * 3
    assert msg["resgid"] == [NOGROUP] * 3
    assert set(msg["groups"]) <= set(os.getgrouplist("nobody", NOGROUP))
    assert msg["caps"] == {"CapEff": caps, "CapPrm": caps, "CapBnd": caps,
                           "CapInh": 0, "CapAmb": 0}, msg["caps"]
    assert msg["read"] == "root's\n"
    assert msg["write"].startswith("PermissionError"), msg["write"]
    assert msg["other_ns"].startswith("PermissionDenied"), msg["other_ns"]
    assert "CAP_SYS_ADMIN" in msg["other_ns"]


# -- NFQUEUE keeping CAP_NET_ADMIN --------------------------------------------------------

def test_queue_verdicts_after_dropping_to_nobody(ns, more_ns, rootfile, soak):
    other = more_ns()
    n = soak.size(600, 6000)
    chunk = 300
    ns.iptables("-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-m", "mark", "--mark",
                str(MARK), "-m", "comment", "--comment", "nfbind-marked")
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-m", "comment", "--comment", "nfbind-passed")
    r = receiver(ns)
    child = start_child(ns, mode="queue", keep=["CAP_NET_ADMIN"], count=n,
                        rootfile=rootfile, other_ns=other.name)
    try:
        msg = child.read("dropped")
        assert_nobody(msg, NET_ADMIN)
        # CAP_NET_ADMIN alone lets nobody bind another queue in its own namespace
        assert msg["same_ns"] == "ok", msg["same_ns"]

        s = ns.socket()
        want, arrived = [], []
        t0 = time.monotonic()
        for start in range(0, n, chunk):
            for i in range(start, min(n, start + chunk)):
                kind = KINDS[i % 3]
                payload = b"%s %d" % (kind, i)
                s.sendto(payload, ("127.0.0.1", PORT))
                if kind != b"drop":
                    want.append(payload)
            # bounded window: the chunk's accepted packets arrive before the next
            deadline = time.monotonic() + 60
            while len(arrived) < len(want) and time.monotonic() < deadline \
                    and child.proc.poll() is None:
                try:
                    arrived.append(r.recv(2048))
                except socket.timeout:
                    pass
        s.close()
        elapsed = time.monotonic() - t0  # every accepted packet arrived
        done = child.read("done")
        arrived += recv_all(r, timeout=1.0)
        table = ns.queue_proc()[QNUM]
        marked = ns.counter("INPUT", "nfbind-marked")
        passed = ns.counter("INPUT", "nfbind-passed")
        child.go()
        closed = child.read("closed")
        err = child.finish()
    finally:
        r.close()
    per_kind = {k.decode(): len(range(j, n, 3)) for j, k in enumerate(KINDS)}
    fault_report("privileges-queue-nobody", sent=n, arrived=len(arrived),
                 dropped_by_verdict=per_kind["drop"], marked=marked,
                 queue_dropped=table["queue_dropped"], user_dropped=table["user_dropped"],
                 overruns=done["overruns"], elapsed_s=round(elapsed, 3),
                 rate_pps=round(n / elapsed, 1))
    assert done["counts"] == dict(per_kind, other=0), err
    assert done["packets"] == n
    assert done["verdict_errors"] == 0 and done["overruns"] == 0, err
    assert sorted(arrived) == sorted(want)  # every accepted packet, once; no dropped one
    assert marked == per_kind["mark"]
    assert passed == per_kind["accept"] + per_kind["mark"]
    assert (table["waiting"], table["queue_dropped"], table["user_dropped"]) == (0, 0, 0)
    assert table["id_sequence"] == n
    assert closed["closed"] == "ok"
    assert child.proc.returncode == 0, err
    with open(rootfile) as f:
        assert f.read() == "root's\n"


# -- NFQUEUE with keep=() -------------------------------------------------------------------

def test_queue_without_net_admin_verdicts_refused(ns, more_ns, rootfile, soak):
    other = more_ns()
    n = soak.size(30, 300)
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    r = receiver(ns)
    child = start_child(ns, mode="queue", keep=[], count=n, rootfile=rootfile,
                        other_ns=other.name)
    try:
        msg = child.read("dropped")
        assert_nobody(msg, 0)
        assert msg["same_ns"].startswith("PermissionDenied"), msg["same_ns"]
        assert "CAP_NET_ADMIN" in msg["same_ns"] and "setcap" in msg["same_ns"]
        s = ns.socket()
        t0 = time.monotonic()
        for i in range(n):
            s.sendto(b"accept %d" % i, ("127.0.0.1", PORT))
        s.close()
        done = child.read("done")
        elapsed = time.monotonic() - t0  # includes the child's 3 s wait for the refusals
        held = ns.queue_proc()[QNUM]
        arrived = recv_all(r, timeout=1.0)
        child.go()
        closed = child.read("closed")
        err = child.finish()
        after = ns.queue_proc()
        arrived += recv_all(r, timeout=1.0)
    finally:
        r.close()
    fault_report("privileges-queue-no-caps", sent=n, arrived=len(arrived),
                 held_by_kernel=held["waiting"], verdict_errors=done["verdict_errors"],
                 queue_dropped=held["queue_dropped"], user_dropped=held["user_dropped"],
                 elapsed_s=round(elapsed, 3))
    # the packets still reach the process, every accept is refused by the kernel
    assert done["counts"] == {"accept": n, "drop": 0, "mark": 0, "other": 0}, err
    assert done["packets"] == n
    assert done["verdict_errors"] >= 1, err
    assert "EPERM" in err or "Operation not permitted" in err
    # ... which holds them until the socket closes, and then drops them
    assert (held["waiting"], held["queue_dropped"], held["user_dropped"]) == (n, 0, 0)
    assert arrived == []
    assert closed["closed"] == "ok", closed
    assert QNUM not in after
    assert child.proc.returncode == 0, err


# -- NFLOG with keep=() ---------------------------------------------------------------------

def test_nflog_receives_after_dropping_everything(ns, more_ns, rootfile, soak):
    other = more_ns()
    n = soak.size(300, 3000)
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFLOG", "--nflog-group", str(GROUP))
    r = receiver(ns)
    child = start_child(ns, mode="log", keep=[], count=n, rootfile=rootfile,
                        other_ns=other.name)
    try:
        msg = child.read("dropped")
        assert_nobody(msg, 0)
        s = ns.socket()
        arrived = []
        t0 = time.monotonic()
        for i in range(n):
            s.sendto(b"log %d" % i, ("127.0.0.1", PORT))
            if i % 100 == 99:  # keep the receiver's buffer small
                arrived += recv_all(r, timeout=0.05)
        s.close()
        done = child.read("done")
        elapsed = time.monotonic() - t0
        arrived += recv_all(r, timeout=1.0)
        child.go()
        child.read("closed")
        err = child.finish()
    finally:
        r.close()
    fault_report("privileges-nflog-no-caps", sent=n, arrived=len(arrived),
                 logged=done["packets"], overruns=done["overruns"],
                 elapsed_s=round(elapsed, 3), rate_pps=round(n / elapsed, 1))
    assert done["counts"] == {"accept": 0, "drop": 0, "mark": 0, "other": n}, err
    assert done["packets"] == n and done["overruns"] == 0
    assert sorted(arrived) == sorted(b"log %d" % i for i in range(n))
    assert child.proc.returncode == 0, err


# -- identities, repeated calls, refusals (child processes) -----------------------------------

def run_py(code: str, ns=None, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns.name] + cmd
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_second_call_and_current_identity():
    code = r'''
import json, os
from nfbind import PermissionDenied, drop_privileges

def caps():
    return {l.split(":")[0]: int(l.split()[1], 16) for l in open("/proc/self/status")
            if l.startswith(("CapEff", "CapPrm", "CapBnd"))}

out = {}
# the current identity (root): nothing switched, the capabilities reduced
drop_privileges(0, "root", keep=("net_admin", "CAP_SETUID", "cap_setgid", "SETPCAP"))
out["root"] = [os.getresuid(), caps()]
drop_privileges("nobody", keep=("NET_ADMIN",))
out["nobody"] = [os.getresuid(), os.getresgid(), caps()]
drop_privileges("nobody")                  # again, the same: passes, changes nothing
out["again"] = caps()
for name, user, kw in (("more", "nobody", {"keep": ("CAP_NET_RAW", "NET_ADMIN")}),
                       ("root", "root", {"keep": ("NET_ADMIN",)}),
                       ("fewer", "nobody", {"keep": ()})):
    try:
        drop_privileges(user, **kw)
        out["second_" + name] = "ok"
    except PermissionDenied as e:
        out["second_" + name] = str(e)
    out["after_" + name] = [os.getresuid(), caps()]
try:
    drop_privileges("nobody")
except PermissionDenied as e:
    out["back"] = str(e)
print(json.dumps(out))
'''
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    want_root = NET_ADMIN | 1 << lib.CAP_SETUID | 1 << lib.CAP_SETGID | 1 << lib.CAP_SETPCAP
    assert out["root"] == [[0, 0, 0], {"CapEff": want_root, "CapPrm": want_root,
                                       "CapBnd": want_root}]
    only = {"CapEff": NET_ADMIN, "CapPrm": NET_ADMIN, "CapBnd": NET_ADMIN}
    u = NOBODY.pw_uid
    assert out["nobody"] == [[u] * 3, [NOGROUP] * 3, only]
    assert out["again"] == only
    # refused calls change nothing
    assert "cannot keep CAP_NET_RAW" in out["second_more"]
    assert out["after_more"] == [[u] * 3, only]
    assert "CAP_SETGID, CAP_SETUID" in out["second_root"]
    assert "started as root" in out["second_root"]
    assert out["after_root"] == [[u] * 3, only]
    # a shorter keep drops more; the bounding set stays as the first call left it
    assert out["second_fewer"] == "ok"
    assert out["after_fewer"] == [[u] * 3, {"CapEff": 0, "CapPrm": 0, "CapBnd": NET_ADMIN}]
    assert "cannot keep CAP_NET_ADMIN" in out["back"]


def test_not_root_permission_denied():
    code = r'''
import os
from nfbind import PermissionDenied, drop_privileges
os.setgroups([])
os.setresgid(%d, %d, %d)
os.setresuid(%d, %d, %d)          # no PR_SET_KEEPCAPS: every capability is gone
for user, keep in (("root", ()), ("nobody", ("CAP_NET_ADMIN",)), ("nobody", ())):
    try:
        drop_privileges(user, keep=keep)
        print("ok", os.getresuid())
    except PermissionDenied as e:
        assert isinstance(e, PermissionError) and e.errno == __import__("errno").EPERM
        print(e)
''' % ((NOGROUP,) * 3 + (NOBODY.pw_uid,) * 3)
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3, p.stdout
    assert "user 'root'" in lines[0] and "CAP_SETGID, CAP_SETUID" in lines[0]
    assert "started as root" in lines[0]
    assert "user 'nobody'" in lines[1] and "cannot keep CAP_NET_ADMIN" in lines[1]
    assert "setcap" in lines[1]
    # nothing to switch, nothing to keep: already done
    assert lines[2] == "ok %s" % str((NOBODY.pw_uid,) * 3)


def test_other_threads_refused():
    code = r'''
import os, threading
from nfbind import drop_privileges
ev = threading.Event()
t = threading.Thread(target=ev.wait, args=(60,))
t.start()
try:
    drop_privileges("nobody")
except RuntimeError as e:
    print(e)
print(os.getresuid())
ev.set()
t.join()
drop_privileges("nobody")           # alone again: fine
print(os.getresuid())
'''
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "1 other thread" in lines[0]
    assert lines[1] == "(0, 0, 0)"
    assert lines[2] == str((NOBODY.pw_uid,) * 3)


# -- argument errors (in this process: every check comes before the first change) -------------

@pytest.fixture
def no_changes(monkeypatch):
    """Make every call that would change the process fail the test."""
    def forbidden(*a, **kw):
        raise AssertionError("drop_privileges went past its checks")

    for name in ("setgroups", "setresgid", "setresuid", "initgroups"):
        monkeypatch.setattr(os, name, forbidden)
    monkeypatch.setattr(privileges, "_prctl", forbidden)


@pytest.mark.parametrize("args, kw, exc, text", [
    ((None,), {}, TypeError, "user must be"),
    ((1.5,), {}, TypeError, "user must be"),
    ((True,), {}, TypeError, "user must be"),
    (("nobody", 2.0), {}, TypeError, "group must be"),
    (("nobody",), {"keep": "CAP_NET_ADMIN"}, TypeError, "not a single str"),
    (("nobody",), {"keep": 12}, TypeError, "sequence of capability names"),
    (("nobody",), {"keep": [lib.CAP_NET_ADMIN]}, TypeError, "capability names are str"),
    (("no-such-user-here",), {}, ValueError, "unknown user 'no-such-user-here'"),
    (("nobody", "no-such-group-here"), {}, ValueError, "unknown group 'no-such-group-here'"),
    ((-1,), {}, ValueError, "out of range"),
    (("nobody",), {"keep": ["CAP_NOT_A_THING"]}, ValueError, "CAP_NET_ADMIN, CAP_NET_RAW"),
    (("nobody",), {"keep": ["net_admin", "bogus"]}, ValueError, "unknown capability 'bogus'"),
])
def test_argument_errors(no_changes, args, kw, exc, text):
    with pytest.raises(exc, match=text):
        nfbind.drop_privileges(*args, **kw)


def test_uid_without_entry_needs_group(no_changes):
    uid = max(pw.pw_uid for pw in pwd.getpwall()) + 1000
    with pytest.raises(ValueError, match="unknown user %d.*pass group=" % uid):
        nfbind.drop_privileges(uid)


def test_capability_names_from_headers():
    # the header text, read apart from the compiled module the table comes from
    header = constants(["linux/capability.h"])
    assert privileges._CAPS["CAP_NET_ADMIN"] == header["CAP_NET_ADMIN"]
    assert {k: header.get(k) for k in privileges._CAPS} == privileges._CAPS
    assert max(privileges._CAPS.values()) <= header["CAP_LAST_CAP"]
    assert set(privileges._CAPS.values()) == set(range(max(privileges._CAPS.values()) + 1))
    assert privileges._keep_mask(["net_admin", "Cap_Net_Admin", " CAP_NET_ADMIN "]) == NET_ADMIN
    assert privileges._keep_mask(()) == 0
    assert nfbind.drop_privileges is privileges.drop_privileges
    assert "drop_privileges" in nfbind.__all__


# -- setcap cap_net_admin=+ep on a copied interpreter ------------------------------------------

SETCAP_SCRIPT = r'''
import json, sys
a = json.loads(sys.argv[1])
sys.path[:0] = a["path"]          # a capability binary runs in secure mode
from nfbind import NfQueue, PermissionDenied, drop_privileges
import os
out = {"resuid": os.getresuid()}
try:
    q = NfQueue(a["queue"], copy_range=128)
except PermissionDenied as e:
    out["error"] = str(e)
    print(json.dumps(out), flush=True)
    sys.exit(0)
drop_privileges("nobody")         # already nobody: keeps CAP_NET_ADMIN alone
out["caps"] = {l.split(":")[0]: int(l.split()[1], 16) for l in open("/proc/self/status")
               if l.startswith(("CapEff", "CapPrm", "CapInh", "CapAmb"))}
print(json.dumps(dict(out, event="bound")), flush=True)
counts = {"accept": 0, "drop": 0}


def handler(pkt):
    tag = bytes(pkt.payload)[28:].split(b" ")[0].decode()
    (pkt.accept if tag == "accept" else pkt.drop)()
    counts["accept" if tag == "accept" else "drop"] += 1
    if sum(counts.values()) >= a["count"]:
        q.stop()


q.run(handler, timeout=60)
q.run(handler, timeout=2)
out.update(counts=counts, verdict_errors=q.stats.verdict_errors)
q.close()
print(json.dumps(out), flush=True)
'''

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


PROBE = "import json, select, sys; print(sys.version, sys.prefix, sys.base_prefix)"


def _probe(cmd: list) -> str:
    try:
        p = subprocess.run(cmd + ["-I", "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def _usable_by_nobody(binary: str) -> bool:
    """Can nobody run ``binary`` as the same Python root gets, with its
    standard library?  (A launcher whose libpython sits in a directory nobody
    cannot read may start another installation's libpython instead.)"""
    mine = _probe([binary])
    return bool(mine) and _probe(AS_NOBODY + [binary]) == mine


def pick_python() -> str:
    """A Python of this version that nobody can run: this interpreter if it
    can, else Debian's /usr/bin/python3.N."""
    version = "%d.%d" % sys.version_info[:2]
    for binary in (os.path.realpath(sys.executable), "/usr/bin/python" + version):
        if os.path.isfile(binary) and _usable_by_nobody(binary):
            return binary
    pytest.fail("no Python %s that the user nobody can run: %s is not readable by it; "
                "install Debian's python3 (apt-get install python3, in the Makefile's "
                "APT_PACKAGES)" % (version, os.path.realpath(sys.executable)))


def test_setcap_copy_runs_queue_as_nobody(ns):
    n = 60
    ns.iptables("-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                "-j", "NFQUEUE", "--queue-num", str(QNUM))
    for tool, package in (("setcap", "libcap2-bin"), ("getcap", "libcap2-bin"),
                          ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            pytest.fail("%s is missing: apt-get install %s" % (tool, package))
    python = pick_python()
    site = sysconfig.get_paths()["purelib"]  # nfbind's dependencies (_cffi_backend)
    for d in (SRC, site):
        mode = os.stat(d).st_mode
        assert mode & 0o005 == 0o005, "%s must be readable by nobody" % d
    assert subprocess.run(["getcap", python], capture_output=True, text=True,
                          check=True).stdout.strip() == ""
    tmp = tempfile.mkdtemp(prefix="nfbind-setcap-", dir="/tmp")
    r = receiver(ns)
    try:
        os.chmod(tmp, 0o755)
        copy = os.path.join(tmp, os.path.basename(python))
        shutil.copy2(python, copy)
        os.chmod(copy, 0o755)
        subprocess.run(["setcap", "cap_net_admin=+ep", copy], check=True, capture_output=True)
        assert "cap_net_admin=ep" in subprocess.run(["getcap", copy], capture_output=True,
                                                    text=True, check=True).stdout
        script = os.path.join(tmp, "queue_as_nobody.py")
        Path(script).write_text(SETCAP_SCRIPT)
        os.chmod(script, 0o644)
        arg = json.dumps({"path": [SRC, site], "queue": QNUM, "count": n})

        # the interpreter without the capability: PermissionDenied naming setcap
        p = subprocess.run(["ip", "netns", "exec", ns.name] + AS_NOBODY + [python, script, arg],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        plain = json.loads(p.stdout)
        assert plain["resuid"] == [NOBODY.pw_uid] * 3
        assert "needs CAP_NET_ADMIN" in plain["error"]
        assert "setcap cap_net_admin=+ep" in plain["error"]

        # the copy with cap_net_admin=+ep binds and gives verdicts to real packets
        proc = ns.popen(*AS_NOBODY, copy, script, arg, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child = Child(proc)
        bound = child.read("bound")
        assert bound["resuid"] == [NOBODY.pw_uid] * 3
        s = ns.socket()
        for i in range(n):
            s.sendto(b"%s %d" % (b"accept" if i % 2 else b"drop", i), ("127.0.0.1", PORT))
        s.close()
        out, err = proc.communicate(timeout=120)
        arrived = recv_all(r, timeout=1.0)
    finally:
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)
    assert not os.path.exists(tmp)
    assert proc.returncode == 0, err.decode(errors="replace")
    done = json.loads(child.buf + out)
    assert done["counts"] == {"accept": n // 2, "drop": n // 2}
    assert done["caps"] == {"CapEff": NET_ADMIN, "CapPrm": NET_ADMIN, "CapInh": 0, "CapAmb": 0}
    assert done["verdict_errors"] == 0
    assert sorted(arrived) == sorted(b"accept %d" % i for i in range(1, n, 2))
    fault_report("privileges-setcap-copy", sent=n, arrived=len(arrived),
                 dropped_by_verdict=n // 2, verdict_errors=done["verdict_errors"],
                 interpreter=python)
