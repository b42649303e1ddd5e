# SPDX-License-Identifier: GPL-2.0-or-later
"""NfLog's failure modes against the real kernel: a group another socket
holds (QueueBusy, in another process or this one), no CAP_NET_ADMIN
(PermissionDenied), ``netns`` as an fd or a path, use after close, ``with``
on error, and an NfLog the garbage collector finds unclosed.  Bad
constructor arguments are test_arguments.py's."""
from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import select
import subprocess
import sys

import pytest

from nfbind import ClosedError, NetlinkError, NfLog, PermissionDenied, QueueBusy

from helpers.nflog import collect, log_proc, nflog, send, udp_data
from helpers.procs import child_env, open_fds

pytestmark = pytest.mark.integration


# -- errors: a group someone else holds, no CAP_NET_ADMIN, netns forms, close ---------------

CHILD_HOLD = r"""
import sys
from nfbind import NfLog
log = NfLog(int(sys.argv[1]))
print("bound", flush=True)
sys.stdin.read()
log.close()
"""


def test_group_bound_by_another_process(ns):
    child = ns.popen(sys.executable, "-c", CHILD_HOLD, "12", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True, env=child_env())
    assert select.select([child.stdout], [], [], 20)[0]
    assert child.stdout.readline().strip() == "bound"
    owner = log_proc(ns)[12]["portid"]
    fds = open_fds()
    with pytest.raises(QueueBusy) as ei:
        NfLog(12, netns=ns.name)
    e = ei.value
    assert isinstance(e, NetlinkError) and isinstance(e, OSError)
    assert not isinstance(e, PermissionDenied)
    assert e.errno == errno.EPERM
    assert "log group 12" in str(e) and "already bound" in str(e)
    assert "CAP_NET_ADMIN" not in str(e)
    assert open_fds() <= fds, "the failed NfLog leaked descriptors"
    # several groups, one of them taken: nothing stays bound
    with pytest.raises(QueueBusy, match="log group 12"):
        NfLog([11, 12, 13], netns=ns.name)
    rows = log_proc(ns)
    assert 11 not in rows and 13 not in rows, rows
    assert rows[12]["portid"] == owner, "the owner lost its group"
    assert open_fds() <= fds
    # once the owner is gone the group is free
    child.stdin.close()
    child.wait(10)
    assert 12 not in log_proc(ns)
    with NfLog(12, netns=ns.name) as log:
        assert log_proc(ns)[12]["portid"] != owner
        assert not log.closed


def test_group_bound_twice_in_one_process(ns):
    nflog(ns, "INPUT", 6200, 13)
    with NfLog(13, netns=ns.name) as first:
        with pytest.raises(QueueBusy, match="log group 13"):
            NfLog(13, netns=ns.name)
        with pytest.raises(QueueBusy, match="log group 13"):
            NfLog([14, 13], netns=ns.name)
        assert 14 not in log_proc(ns)
        # the first binding still works
        send(ns, [b"still mine"], ("127.0.0.1", 6200))
        (p,) = collect(first, 1)
        assert udp_data(p) == b"still mine"


CHILD_BIND = r"""
import json, sys
from nfbind import NfLog, NetlinkError
from nfbind.errors import has_cap_net_admin
out = {"cap": has_cap_net_admin()}
try:
    NfLog(int(sys.argv[1]))
except BaseException as e:
    out.update(type=type(e).__name__, permission_error=isinstance(e, PermissionError),
               netlink_error=isinstance(e, NetlinkError), errno=getattr(e, "errno", None),
               msg=str(e))
else:
    out["type"] = None
print(json.dumps(out))
"""


def test_eperm_without_cap_net_admin(ns):
    drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
            sys.executable, "-c", CHILD_BIND, "41"]
    r = subprocess.run(["ip", "netns", "exec", ns.name, *drop], capture_output=True, text=True,
                       env=child_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cap"] is False, "the child still had CAP_NET_ADMIN"
    assert out["type"] == "PermissionDenied", out
    assert out["permission_error"] and out["netlink_error"]
    assert out["errno"] == errno.EPERM
    assert "CAP_NET_ADMIN" in out["msg"]
    assert "log group 41" in out["msg"]
    assert 41 not in log_proc(ns)  # nothing got bound


def test_netns_fd_and_path(ns):
    path = "/run/netns/" + ns.name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with NfLog(21, netns=fd), NfLog(22, netns=path):
            assert {21, 22} <= set(log_proc(ns))
        assert os.fstat(fd)  # our fd was not closed by nfbind
    finally:
        os.close(fd)
    assert not {21, 22} & set(log_proc(ns))


def test_use_after_close(ns):
    nflog(ns, "INPUT", 6300, 8)
    log = NfLog(8, netns=ns.name)
    send(ns, [b"kept"], ("127.0.0.1", 6300))
    (p,) = collect(log, 1)
    assert 8 in log_proc(ns)
    log.close()
    assert log.closed and 8 not in log_proc(ns)
    log.close()  # twice is fine
    for call in (log.fileno, lambda: log.run(lambda p: None), lambda: next(iter(log)),
                 lambda: log.drain(lambda p: None), lambda: log.rcvbuf,
                 lambda: log.set_rcvbuf(8192), lambda: log.__enter__()):
        with pytest.raises(ClosedError):
            call()

    async def aiter_closed():
        async for _ in log:
            pass

    with pytest.raises(ClosedError):
        asyncio.run(aiter_closed())
    log.stop()  # harmless
    assert "closed" in repr(log)
    assert log.stats.packets == 1 and log.stats.overruns == 0
    # a packet outlives its NfLog: its fields are copied out of the kernel's message
    assert udp_data(p) == b"kept" and p.group == 8 and p.indev_name == "lo"


def test_with_closes_even_on_error(ns):
    with NfLog(9, netns=ns.name) as log:
        assert not log.closed and 9 in log_proc(ns)
    assert log.closed and 9 not in log_proc(ns)
    with pytest.raises(ZeroDivisionError):
        with NfLog(9, netns=ns.name) as log2:
            1 / 0
    assert log2.closed and 9 not in log_proc(ns)


def test_resource_warning_when_collected_unclosed(ns):
    log = NfLog(15, netns=ns.name)
    assert 15 in log_proc(ns)
    fds = open_fds()
    with pytest.warns(ResourceWarning, match="NfLog"):
        del log
        for _ in range(3):
            gc.collect()
    assert 15 not in log_proc(ns), "the collected NfLog is still bound"
    assert open_fds() < fds, "the collected NfLog kept its descriptors"
