# SPDX-License-Identifier: GPL-2.0-or-later
"""Least privilege: :func:`drop_privileges` switches a process that bound its
sockets as root to an unprivileged user, keeping only the capabilities it
names (``CAP_NET_ADMIN`` by default, which NFQUEUE verdicts and conntrack
requests need).

The capability numbers and the ``prctl`` options come from the C headers
(``linux/capability.h``, ``sys/prctl.h``) through the core compiled module
``nfbind._nfcore``; ``capget``/``capset``/``prctl`` are thin C wrappers there.
Users, groups and the uid/gid switch use Python's :mod:`os`, :mod:`pwd` and
:mod:`grp`.  See ``docs/privileges.rst``.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import threading
import time
from typing import Dict, Iterable, List, Optional, Tuple, Union

from ._core import ffi, lib
from .errors import NfbindError, PermissionDenied

__all__ = ["drop_privileges"]


def _kernel_last_cap() -> int:
    """The highest capability number of the running kernel (it may know fewer
    or more than the headers nfbind was built with)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return lib.CAP_LAST_CAP


_LAST = min(lib.CAP_LAST_CAP, _kernel_last_cap())

#: capability name -> number, every capability both the headers and the
#: running kernel know
_CAPS: Dict[str, int] = {
    name: getattr(lib, name)
    for name in dir(lib)
    if name.startswith("CAP_") and name != "CAP_LAST_CAP" and getattr(lib, name) <= _LAST
}
_NAMES: Dict[int, str] = {v: k for k, v in _CAPS.items()}

#: uid_t and gid_t are 32-bit; all ones means "leave unchanged" to setresuid(2)
_ID_UNCHANGED = int(ffi.cast("uint32_t", -1))


def _bit(cap: int) -> int:
    return 1 << cap


def _names(mask: int) -> List[str]:
    return [_NAMES.get(c, "cap_%d" % c) for c in range(mask.bit_length()) if mask >> c & 1]


def _describe(mask: int) -> str:
    return ", ".join(_names(mask)) or "none"


def _keep_mask(keep: Iterable[str]) -> int:
    if isinstance(keep, (str, bytes)):
        raise TypeError(
            "keep must be a sequence of capability names such as (\"CAP_NET_ADMIN\",), "
            "not a single %s" % type(keep).__name__)
    try:
        items = list(keep)
    except TypeError:
        raise TypeError("keep must be a sequence of capability names, not %s"
                        % type(keep).__name__) from None
    mask = 0
    for item in items:
        if not isinstance(item, str):
            raise TypeError("capability names are str, got %r (%s)" % (item, type(item).__name__))
        name = item.strip().upper()
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in _CAPS:
            valid = ", ".join(sorted(_CAPS, key=_CAPS.__getitem__))
            raise ValueError("unknown capability %r; valid names (with or without CAP_, "
                             "any case): %s" % (item, valid))
        mask |= _bit(_CAPS[name])
    return mask


def _check_id(what: str, value: int) -> int:
    if not 0 <= value < _ID_UNCHANGED:
        raise ValueError("%s %d is out of range (0..%d)" % (what, value, _ID_UNCHANGED - 1))
    return value


def _user(user: Union[str, int]) -> Tuple[int, Optional[str], Optional[int]]:
    """(uid, name or None, primary gid or None) of ``user``."""
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        raise TypeError("user must be a user name (str) or a uid (int), not %s"
                        % type(user).__name__)
    if isinstance(user, str):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ValueError("unknown user %r: not in the user database (/etc/passwd "
                             "or NSS); pass an existing user name or a uid" % user) from None
        return pw.pw_uid, pw.pw_name, pw.pw_gid
    uid = _check_id("uid", user)
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return uid, None, None
    return uid, pw.pw_name, pw.pw_gid


def _group(group: Union[str, int, None], primary: Optional[int], user: Union[str, int]) -> int:
    if group is None:
        if primary is None:
            raise ValueError("unknown user %r: uid %r has no entry in the user database, "
                             "so it has no primary group; pass group=" % (user, user))
        return primary
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        raise TypeError("group must be a group name (str), a gid (int) or None, not %s"
                        % type(group).__name__)
    if isinstance(group, str):
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError("unknown group %r: not in the group database" % group) from None
    return _check_id("gid", group)


def _prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    rc = lib.nfb_prctl(option, a2, a3, a4, a5)
    if rc < 0:
        raise OSError(-rc, "prctl(%d): %s" % (option, os.strerror(-rc)))
    return rc


def _capget() -> Tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread."""
    e, p, i = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
    rc = lib.nfb_capget(e, p, i)
    if rc < 0:
        raise OSError(-rc, "capget: %s" % os.strerror(-rc))
    return e[0], p[0], i[0]


def _bounding() -> int:
    mask = 0
    for cap in range(_LAST + 1):
        if _prctl(lib.PR_CAPBSET_READ, cap):
            mask |= _bit(cap)
    return mask


def _proc_status() -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return out


def _other_threads() -> List[int]:
    """The live threads of this process besides the calling one (a thread that
    was just joined may linger in /proc for a moment as a zombie: wait for it,
    bounded)."""
    me = threading.get_native_id()
    deadline = time.monotonic() + 2.0
    while True:
        others = []
        for tid in os.listdir("/proc/self/task"):
            try:
                with open("/proc/self/task/%s/stat" % tid, encoding="ascii",
                          errors="replace") as f:
                    state = f.read().rpartition(")")[2].split()[0]
            except (OSError, IndexError):  # gone meanwhile
                continue
            if int(tid) != me and state not in ("Z", "X"):
                others.append(int(tid))
        if not others or time.monotonic() > deadline:
            return others
        time.sleep(0.05)


def drop_privileges(
    user: Union[str, int],
    group: Union[str, int, None] = None,
    *,
    keep: Iterable[str] = ("CAP_NET_ADMIN",),
) -> None:
    """Switch to ``user`` and keep only the capabilities in ``keep``.

    Call it after binding: an :class:`~nfbind.NfQueue` that keeps
    ``CAP_NET_ADMIN`` goes on giving verdicts, an :class:`~nfbind.NfLog` goes
    on receiving with ``keep=()``.  In order, it sets ``PR_SET_KEEPCAPS``,
    clears the ambient set, drops every capability but ``keep`` from the
    bounding set, sets the supplementary groups, switches the real, effective
    and saved gid and then uid, reduces the permitted and effective sets to
    exactly ``keep`` and empties the inheritable set, clears
    ``PR_SET_KEEPCAPS`` again, and reads the result back (``capget`` and
    ``/proc/self/status``).

    Args:
        user: a user name, or a uid.
        group: a group name or gid; default: the user's primary group.  The
            supplementary groups become the user's (as ``initgroups`` sets
            them), or none for a uid without an entry in the user database
            (pass ``group=`` then).
        keep: capability names, any case, with or without ``CAP_``
            (``"CAP_NET_ADMIN"``, ``"net_admin"``); ``()`` drops everything.

    Every check happens before the first change, so an error leaves the
    process as it was.  When the process already runs as ``user`` and
    ``group`` (real, effective and saved ids; supplementary groups none or
    some of the user's), nothing is switched and only the capabilities are
    reduced: calling it a second time with the same arguments changes nothing
    and passes, with a shorter ``keep`` it drops more, and a capability the
    process no longer holds cannot come back (PermissionDenied).  Such a
    process that lacks ``CAP_SETPCAP`` (after a first call, or started under
    ``setcap``) keeps its bounding set as it is, as any unprivileged process
    does: the bounding set only limits what a later ``execve`` may gain.
    Capabilities belong to a thread, so it must run while the process has a
    single thread.

    Raises:
        TypeError: ``user``, ``group`` or ``keep`` of the wrong type.
        ValueError: unknown user, group or capability name (the message lists
            the valid names).
        PermissionDenied: switching user needs ``CAP_SETUID``,
            ``CAP_SETGID`` and ``CAP_SETPCAP`` (root has them), and every
            capability in ``keep`` must be held already.
        RuntimeError: the process has other threads.
        NfbindError: the read-back differs from what was asked (the process
            should exit).
        OSError: a system call failed midway (the process should exit).

    Example::

        import nfbind

        q = nfbind.NfQueue(100)              # bind as root
        nfbind.drop_privileges("nobody")     # now nobody, with CAP_NET_ADMIN only
        q.run(lambda pkt: pkt.accept())
    """
    uid, name, primary = _user(user)
    gid = _group(group, primary, user)
    keep_mask = _keep_mask(keep)
    target_groups = sorted(set(os.getgrouplist(name, gid))) if name is not None else []
    who = "dropping privileges to user %r" % (user,)

    others = _other_threads()
    if others:
        raise RuntimeError(
            "%s: the process has %d other thread(s) and capabilities belong to each "
            "thread; call drop_privileges() before starting threads" % (who, len(others)))

    eff, prm, _ = _capget()
    bounding = _bounding()
    switch = not (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
                  and set(os.getgroups()) <= set(target_groups))
    hints = []
    lacking = (_bit(lib.CAP_SETUID) | _bit(lib.CAP_SETGID)) & ~eff
    if switch and lacking:
        hints.append(
            "switching to uid %d, gid %d needs %s (missing %s): call drop_privileges() "
            "in a program started as root, after binding its sockets"
            % (uid, gid, _describe(_bit(lib.CAP_SETUID) | _bit(lib.CAP_SETGID)),
               _describe(lacking)))
    drop_bounding = bounding & ~keep_mask
    if drop_bounding and not eff & _bit(lib.CAP_SETPCAP):
        if switch:
            hints.append(
                "removing %s from the bounding set needs CAP_SETPCAP (missing): call "
                "drop_privileges() in a program started as root" % _describe(drop_bounding))
        else:
            # already the user: the bounding set stays as it is, as for any
            # unprivileged process (it only limits what a later execve gains)
            drop_bounding = 0
    not_held = keep_mask & ~prm
    if not_held:
        hints.append(
            "cannot keep %s: the process does not hold it (start the program as root, "
            "or grant it with `setcap` on the Python binary)" % _describe(not_held))
    if hints:
        raise PermissionDenied(errno.EPERM, who, "; ".join(hints))

    _prctl(lib.PR_SET_KEEPCAPS, 1)
    try:
        try:
            _prctl(lib.PR_CAP_AMBIENT, lib.PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError as e:  # a kernel without ambient capabilities
            if e.errno != errno.EINVAL:
                raise
        for cap in range(_LAST + 1):
            if drop_bounding >> cap & 1:
                _prctl(lib.PR_CAPBSET_DROP, cap)
        if switch:
            os.setgroups(target_groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        rc = lib.nfb_capset(keep_mask, keep_mask, 0)
        if rc < 0:
            raise OSError(-rc, "capset: %s" % os.strerror(-rc))
    finally:
        _prctl(lib.PR_SET_KEEPCAPS, 0)
    _verify(uid, gid, target_groups, keep_mask, bounding & ~drop_bounding, who)


def _verify(uid: int, gid: int, groups: List[int], keep: int, bounding: int, who: str) -> None:
    problems = []
    eff, prm, inh = _capget()
    for what, got, want in (("effective", eff, keep), ("permitted", prm, keep),
                            ("inheritable", inh, 0)):
        if got != want:
            problems.append("capget %s set is %s, not %s" % (what, _describe(got), _describe(want)))
    st = _proc_status()
    for key, want in (("CapEff", keep), ("CapPrm", keep), ("CapInh", 0), ("CapBnd", bounding),
                      ("CapAmb", 0)):
        if key not in st:
            if key == "CapAmb":  # a kernel without ambient capabilities
                continue
            problems.append("/proc/self/status has no %s" % key)
            continue
        got = int(st[key][0], 16)
        if got != want:
            problems.append("%s is %s, not %s" % (key, _describe(got), _describe(want)))
    for key, want in (("Uid", uid), ("Gid", gid)):
        ids = [int(v) for v in st.get(key, [])]
        if ids != [want] * 4:
            problems.append("%s (real, effective, saved, filesystem) is %s, not %d"
                            % (key, ids, want))
    have = {int(v) for v in st.get("Groups", [])}
    if not have <= set(groups):
        problems.append("supplementary groups are %s, not within %s" % (sorted(have), groups))
    if _prctl(lib.PR_GET_KEEPCAPS):
        problems.append("PR_SET_KEEPCAPS is still set")
    if problems:
        raise NfbindError("%s: the result differs from what was asked: %s; the process "
                          "should exit" % (who, "; ".join(problems)))
