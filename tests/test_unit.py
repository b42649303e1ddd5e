# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests: no privileges, no sockets bound to queues.

The exception tree and its errno mapping, the argument checkers, netns
resolution, attribute parsing on crafted bytes, verdict payload conversion,
and the public API surface.
"""
from __future__ import annotations

import errno
import os
import pickle
import struct
from pathlib import Path

import pytest

import nfbind
from nfbind import errors, netns
from nfbind._netlink import check_choice, check_int, iter_attrs
from nfbind._core import ffi
from nfbind._nfqueue import lib
from nfbind.enums import CtStatus, TcpState, Verdict
from nfbind.errors import (
    ClosedError,
    NetlinkError,
    NfbindError,
    Overrun,
    PermissionDenied,
    QueueBusy,
    VerdictError,
    check,
    check_neg,
    error_from_errno,
)
from nfbind.conntrack import Flow
from nfbind.conntrack._records import ct_flow
from nfbind.packet import CtSummary, Vlan
from nfbind._queue_verdicts import _payload_bytes
from nfbind.queue import MAX_PAYLOAD

pytestmark = pytest.mark.unit


# -- the exception tree ----------------------------------------------------------

@pytest.mark.parametrize(
    "cls, bases",
    [
        (NfbindError, (Exception,)),
        (NetlinkError, (NfbindError, OSError)),
        (PermissionDenied, (NetlinkError, NfbindError, OSError, PermissionError)),
        (QueueBusy, (NetlinkError, NfbindError, OSError)),
        (Overrun, (NetlinkError, NfbindError, OSError)),
        (VerdictError, (NfbindError,)),
        (ClosedError, (NfbindError,)),
    ],
)
def test_exception_tree(cls, bases):
    for base in bases:
        assert issubclass(cls, base), "%s should derive from %s" % (cls.__name__, base.__name__)


def test_exception_tree_is_not_wider_than_designed():
    # verdict and closed errors are no OSErrors; busy is not a permission problem
    assert not issubclass(VerdictError, OSError)
    assert not issubclass(ClosedError, OSError)
    assert not issubclass(QueueBusy, PermissionDenied)
    assert not issubclass(Overrun, PermissionDenied)
    for name in ("NfbindError", "NetlinkError", "PermissionDenied", "QueueBusy", "Overrun",
                 "VerdictError", "ClosedError"):
        assert getattr(nfbind, name) is getattr(errors, name)


def test_netlink_error_fields_and_message():
    e = NetlinkError(errno.EINVAL, "binding queue 3")
    assert e.errno == errno.EINVAL
    assert e.op == "binding queue 3"
    assert e.hint is None
    assert str(e) == "binding queue 3 failed: EINVAL (%s)" % os.strerror(errno.EINVAL)
    e = NetlinkError(errno.ENOENT, "deleting a flow", "it is gone already")
    assert str(e).startswith("deleting a flow failed: ENOENT")
    assert str(e).endswith("it is gone already")
    assert e.hint == "it is gone already"


def test_permission_denied_carries_the_capability_hint():
    e = PermissionDenied(errno.EPERM, "binding queue 3")
    assert isinstance(e, PermissionError)
    assert e.errno == errno.EPERM
    assert "CAP_NET_ADMIN" in str(e)
    assert "binding queue 3" in str(e)
    # an explicit hint replaces the default one
    e = PermissionDenied(errno.EPERM, "entering network namespace 'x'", "needs CAP_SYS_ADMIN")
    assert "CAP_SYS_ADMIN" in str(e) and "CAP_NET_ADMIN" not in str(e)


def test_overrun_counts_and_advises():
    e = Overrun(count=3, op="receiving from NfQueue(1)")
    assert e.errno == errno.ENOBUFS
    assert e.count == 3
    assert "3 overrun(s)" in str(e)
    assert "rcvbuf" in str(e)
    assert "receiving from NfQueue(1)" in str(e)


@pytest.mark.parametrize(
    "exc",
    [
        NetlinkError(errno.EINVAL, "op"),
        PermissionDenied(errno.EPERM, "binding queue 1"),
        QueueBusy(errno.EPERM, "binding queue 1", "another process owns it"),
        Overrun(count=2),
    ],
)
def test_exceptions_pickle(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.errno == exc.errno
    assert str(back) == str(exc)


@pytest.mark.parametrize("cap", [True, False])
def test_error_from_errno_eperm_busy_or_permission(monkeypatch, cap):
    monkeypatch.setattr(errors, "has_cap_net_admin", lambda: cap)
    e = error_from_errno(errno.EPERM, "binding queue 7", busy_hint="queue 7 is owned by pid 1")
    if cap:
        assert type(e) is QueueBusy
        assert "owned by pid 1" in str(e)
        assert "CAP_NET_ADMIN" not in str(e)
    else:
        assert type(e) is PermissionDenied
        assert isinstance(e, PermissionError)
        assert "CAP_NET_ADMIN" in str(e)
    assert e.errno == errno.EPERM
    assert e.op == "binding queue 7"


def test_error_from_errno_eperm_without_busy_hint_is_permission(monkeypatch):
    monkeypatch.setattr(errors, "has_cap_net_admin", lambda: True)
    e = error_from_errno(errno.EPERM, "dumping flows")
    assert type(e) is PermissionDenied
    assert type(error_from_errno(errno.EACCES, "x")) is PermissionDenied


@pytest.mark.parametrize(
    "err, cls",
    [(errno.ENOBUFS, Overrun), (errno.EINVAL, NetlinkError), (errno.ENOENT, NetlinkError),
     (errno.EOPNOTSUPP, NetlinkError), (errno.ENOSPC, NetlinkError)],
)
def test_error_from_errno_mapping(err, cls):
    e = error_from_errno(err, "doing it", hint="try this")
    assert type(e) is cls
    assert e.errno == err
    assert isinstance(e, OSError)
    assert "doing it" in str(e) and "try this" in str(e)
    assert errno.errorcode[err] in str(e)


def test_has_cap_net_admin_matches_proc():
    with open("/proc/thread-self/status") as f:
        capeff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    assert errors.has_cap_net_admin() is bool(capeff >> lib.CAP_NET_ADMIN & 1)


def test_check_passes_non_negative_through():
    assert check(0, "op") == 0
    assert check(17, "op") == 17
    assert check_neg(0, "op") == 0
    assert check_neg(5, "op") == 5


def test_check_raises_from_errno():
    ffi.errno = errno.EINVAL
    with pytest.raises(NetlinkError) as ei:
        check(-1, "configuring queue 2")
    assert ei.value.errno == errno.EINVAL
    assert "configuring queue 2" in str(ei.value)
    ffi.errno = errno.ENOBUFS
    with pytest.raises(Overrun):
        check(-1, "receiving")
    ffi.errno = 0  # the C library failed without setting errno: EIO, never errno 0
    with pytest.raises(NetlinkError) as ei:
        check(-1, "x")
    assert ei.value.errno == errno.EIO


def test_check_neg(monkeypatch):
    with pytest.raises(NetlinkError) as ei:
        check_neg(-errno.EMSGSIZE, "sending verdicts")
    assert ei.value.errno == errno.EMSGSIZE and type(ei.value) is NetlinkError
    with pytest.raises(Overrun):
        check_neg(-errno.ENOBUFS, "receiving")
    monkeypatch.setattr(errors, "has_cap_net_admin", lambda: True)
    with pytest.raises(QueueBusy):
        check_neg(-errno.EPERM, "binding", busy_hint="busy")
    monkeypatch.setattr(errors, "has_cap_net_admin", lambda: False)
    with pytest.raises(PermissionDenied):
        check_neg(-errno.EPERM, "binding", busy_hint="busy")


# -- argument checks ----------------------------------------------------------------

@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (256, ValueError), ("1", TypeError),
                                      (1.0, TypeError), (True, TypeError), (None, TypeError)])
def test_check_int_rejects(bad, exc):
    with pytest.raises(exc, match="widget"):
        check_int("widget", bad, 0, 255)


def test_check_int_accepts_index_types():
    import numbers

    class Idx:
        def __index__(self):
            return 7

    assert check_int("x", Idx(), 0, 10) == 7
    assert type(check_int("x", Verdict.ACCEPT, 0, 10)) is int
    assert check_int("x", 0, 0, 0) == 0
    assert isinstance(check_int("x", 10, 0, 10), numbers.Integral)


def test_check_choice():
    assert check_choice("on_overrun", "raise", ("count", "raise")) == "raise"
    with pytest.raises(ValueError, match="on_overrun"):
        check_choice("on_overrun", "x", ("count", "raise"))


# -- enums: test_enums.py --------------------------------------------------------------


# -- netns.resolve --------------------------------------------------------------------

def test_resolve_none_and_paths():
    assert netns.resolve(None) is None
    assert netns.resolve("/proc/self/ns/net") == "/proc/self/ns/net"
    assert netns.resolve(Path("/proc/self/ns/net")) == "/proc/self/ns/net"


def test_resolve_name_under_run_netns(monkeypatch, tmp_path):
    (tmp_path / "blue").touch()
    monkeypatch.setattr(netns, "NETNS_RUN_DIR", str(tmp_path))
    assert netns.resolve("blue") == str(tmp_path / "blue")
    with pytest.raises(FileNotFoundError):
        netns.resolve("red")


def test_resolve_fd():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert netns.resolve(fd) == fd
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="not open"):
        netns.resolve(fd)  # closed now
    with pytest.raises(ValueError, match=">= 0"):
        netns.resolve(-1)


def test_resolve_missing_name_says_how_to_create_it():
    name = "nfbind-unit-no-such-ns-%d" % os.getpid()
    with pytest.raises(FileNotFoundError) as ei:
        netns.resolve(name)
    assert ei.value.errno == errno.ENOENT
    assert "ip netns add %s" % name in str(ei.value)


@pytest.mark.parametrize("missing", ["/nonexistent/nfbind/ns", ".", ".."])
def test_resolve_missing_path(missing):
    with pytest.raises(FileNotFoundError):
        netns.resolve(missing)


def test_call_in_none_is_a_plain_call():
    import threading

    assert netns.call_in(None, threading.get_ident) == threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        netns.call_in(None, lambda: 1 / 0)


def test_call_in_rejects_a_file_that_is_no_namespace(tmp_path):
    f = tmp_path / "plain"
    f.write_text("not a namespace")
    with pytest.raises(NetlinkError) as ei:
        netns.call_in(str(f), lambda: None)
    assert ei.value.errno in (errno.EINVAL, errno.EPERM)
    assert str(f) in str(ei.value)


# -- packet helpers -----------------------------------------------------------------------

def test_vlan_id_and_pcp():
    v = Vlan(0x8100, (5 << 13) | (1 << 12) | 100)  # PCP 5, DEI set, VID 100
    assert v.id == 100
    assert v.pcp == 5
    assert v.proto == 0x8100
    w = Vlan(0x88A8, 0xFFFF)
    assert (w.id, w.pcp) == (4095, 7)
    assert Vlan(0x8100, 0).id == 0 and Vlan(0x8100, 0).pcp == 0
    assert w == (0x88A8, 0xFFFF)  # still a tuple


def _nla(t: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), t) + payload
    return raw + b"\0" * (-len(raw) & 3)


def test_iter_attrs_walks_aligned_attributes():
    data = b"HDR!" + _nla(1, b"\x00\x00\x00\x05") + _nla(2, b"a") + _nla(3, b"") + _nla(
        0x8000 | 4, _nla(1, b"xy"))
    got = list(iter_attrs(data, 4, len(data)))
    assert got == [(1, 8, 4), (2, 16, 1), (3, 24, 0), (4, 28, 8)]
    assert data[16:17] == b"a"
    # nested: NLA_F_NESTED masked off, inner walked the same way
    t, o, n = got[3]
    assert list(iter_attrs(data, o, o + n)) == [(1, o + 4, 2)]
    # NLA_F_NET_BYTEORDER is masked off too
    assert list(iter_attrs(_nla(0x4000 | 9, b"zzzz"), 0, 8)) == [(9, 4, 4)]


def test_iter_attrs_respects_the_window():
    data = _nla(1, b"aaaa") + _nla(2, b"bbbb") + _nla(3, b"cccc")
    assert [t for t, _, _ in iter_attrs(data, 8, 16)] == [2]
    assert list(iter_attrs(data, 0, 0)) == []


@pytest.mark.parametrize(
    "data",
    [
        _nla(1, b"okay") + struct.pack("=HH", 100, 2) + b"short",     # length past the end
        _nla(1, b"okay") + struct.pack("=HH", 0, 2) + b"\0" * 12,      # zero length
        _nla(1, b"okay") + struct.pack("=HH", 3, 2) + b"\0" * 12,      # shorter than a header
        _nla(1, b"okay") + b"\x08\x00",                               # header cut off
    ],
)
def test_iter_attrs_stops_at_malformed_input(data):
    got = list(iter_attrs(data, 0, len(data)))
    assert got == [(1, 4, 4)]


def test_iter_attrs_never_loops_on_garbage():
    import random

    rnd = random.Random(1234)
    for _ in range(300):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64)))
        out = list(iter_attrs(data, 0, len(data)))
        assert len(out) <= len(data) // 4
        for _, o, n in out:
            assert 0 <= o and o + n <= len(data)


def test_packet_ct_decodes_crafted_attributes_to_a_flow():
    """NFQA_CT/NFULA_CT attributes decode to a Flow with the core alone (the
    decoder behind pkt.ct), at an odd offset inside the batch's bytes."""
    be32 = lambda v: struct.pack(">I", v)  # noqa: E731
    proto = _nla(0x8000 | lib.CTA_TUPLE_PROTO, _nla(lib.CTA_PROTO_NUM, b"\x06"))
    tcp = _nla(0x8000 | lib.CTA_PROTOINFO_TCP,
               _nla(lib.CTA_PROTOINFO_TCP_STATE, bytes([lib.TCP_CONNTRACK_ESTABLISHED])))
    status = lib.IPS_CONFIRMED | lib.IPS_ASSURED | lib.IPS_SEEN_REPLY
    data = (_nla(lib.CTA_ID, be32(0xDEADBEEF)) + _nla(lib.CTA_MARK, be32(0x2A))
            + _nla(lib.CTA_STATUS, be32(status)) + _nla(lib.CTA_TIMEOUT, be32(431999))
            + _nla(lib.CTA_USE, be32(1)) + _nla(lib.CTA_ZONE, struct.pack(">H", 7))
            + _nla(0x8000 | lib.CTA_TUPLE_ORIG, proto) + _nla(0x8000 | lib.CTA_PROTOINFO, tcp))
    ct = ct_flow(b"pad" + data, 3, len(data), lib.NFPROTO_IPV4)
    assert type(ct) is Flow
    assert (ct.id, ct.mark, ct.status, ct.state, ct.zone, ct.timeout, ct.use, ct.proto) == (
        0xDEADBEEF, 0x2A, CtStatus(status), TcpState.ESTABLISHED, 7, 431999, 1, 6)
    assert CtStatus.ASSURED in ct.status


def test_packet_ct_tolerates_short_and_truncated_attributes():
    orig = _nla(0x8000 | lib.CTA_TUPLE_ORIG,
                _nla(0x8000 | lib.CTA_TUPLE_PROTO, _nla(lib.CTA_PROTO_NUM, b"\x11")))
    data = orig + _nla(lib.CTA_MARK, b"\x01") + _nla(lib.CTA_ID, b"\0\0\0\x09") + struct.pack(
        "=HH", 64, lib.CTA_STATUS)
    ct = ct_flow(data, 0, len(data), lib.NFPROTO_IPV4)
    assert ct.mark == 0          # too short to be a u32: ignored
    assert ct.id == 9
    assert ct.status == CtStatus(0) and ct.state is None and ct.proto == 17
    # without an original tuple (a message cut short) there is no flow
    assert ct_flow(data, len(orig), len(data) - len(orig), lib.NFPROTO_IPV4) is None


def test_ct_summary_stays_importable():
    # no longer produced (pkt.ct is a Flow everywhere), still public
    s = CtSummary(id=1, mark=2, status=CtStatus(0), state=None, zone=0, timeout=None, use=None,
                  proto=17)
    assert nfbind.CtSummary is CtSummary and s.proto == 17


# -- verdict payloads -----------------------------------------------------------------------

def test_max_payload_is_the_attribute_limit():
    assert MAX_PAYLOAD == 0xFFFF - 4  # a u16 nla_len minus the attribute header


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_payload_bytes_like(kind):
    raw = bytes(range(256)) * 3
    out = _payload_bytes(kind(raw))
    assert type(out) is bytes
    assert out == raw


def test_payload_memoryview_slice_and_limit():
    raw = bytearray(b"x" * 100)
    assert _payload_bytes(memoryview(raw)[10:20]) == b"x" * 10
    assert len(_payload_bytes(b"y" * MAX_PAYLOAD)) == MAX_PAYLOAD
    assert _payload_bytes(b"") == b""


@pytest.mark.parametrize("size", [MAX_PAYLOAD + 1, 65535, 70000])
def test_payload_too_large(size):
    with pytest.raises(ValueError) as ei:
        _payload_bytes(b"\0" * size)
    assert str(MAX_PAYLOAD) in str(ei.value)
    assert str(size) in str(ei.value)


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2], 3.0, {"a": 1}])
def test_payload_wrong_type(bad):
    with pytest.raises(TypeError, match="payload"):
        _payload_bytes(bad)


def _scapy():
    return pytest.importorskip("scapy.all")


def test_scapy_payload_lengths_and_checksums_recomputed():
    s = _scapy()
    bad = (s.IP(src="10.0.0.1", dst="10.0.0.2", id=7, ttl=9, len=999, chksum=0x1234)
           / s.UDP(sport=1000, dport=2000, len=3, chksum=7) / s.Raw(b"hello"))
    fresh = s.IP(src="10.0.0.1", dst="10.0.0.2", id=7, ttl=9) / s.UDP(sport=1000, dport=2000) \
        / s.Raw(b"hello")
    out = _payload_bytes(bad)
    assert out == bytes(fresh)
    parsed = s.IP(out)
    assert parsed.len == len(out) == 20 + 8 + 5
    assert parsed[s.UDP].len == 13
    # the caller's packet is left as it was
    assert bad.len == 999 and bad.chksum == 0x1234 and bad[s.UDP].chksum == 7


def test_scapy_payload_rewritten_after_dissection():
    s = _scapy()
    wire = bytes(s.IP(src="192.0.2.1", dst="192.0.2.2") / s.TCP(sport=1, dport=2, flags="S")
                 / s.Raw(b"abc"))
    pkt = s.IP(wire)  # as pkt.scapy() gives it: every length and checksum filled in
    pkt[s.Raw].load = b"a much longer payload"
    out = _payload_bytes(pkt)
    expect = s.IP(src="192.0.2.1", dst="192.0.2.2") / s.TCP(sport=1, dport=2, flags="S") \
        / s.Raw(b"a much longer payload")
    assert out == bytes(expect)
    assert s.IP(out).len == len(out)


def test_scapy_payload_ipv6_and_icmp():
    s = _scapy()
    bad6 = s.IPv6(src="2001:db8::1", dst="2001:db8::2", plen=1) / s.UDP(sport=5, dport=6,
                                                                       chksum=1) / b"xyz"
    fresh6 = s.IPv6(src="2001:db8::1", dst="2001:db8::2") / s.UDP(sport=5, dport=6) / b"xyz"
    assert _payload_bytes(bad6) == bytes(fresh6)
    bad4 = s.IP(dst="10.1.1.1", chksum=1) / s.ICMP(id=3, seq=4, chksum=0xFFFF) / b"ping"
    fresh4 = s.IP(dst="10.1.1.1") / s.ICMP(id=3, seq=4) / b"ping"
    assert _payload_bytes(bad4) == bytes(fresh4)


def test_scapy_payload_too_large():
    s = _scapy()
    big = s.IP(dst="10.0.0.1") / s.UDP() / s.Raw(b"z" * (65535 - 28))  # 65535 bytes on the wire
    with pytest.raises(ValueError, match=str(MAX_PAYLOAD)):
        _payload_bytes(big)
    ok = s.IP(dst="10.0.0.1") / s.UDP() / s.Raw(b"z" * (MAX_PAYLOAD - 28))
    assert len(_payload_bytes(ok)) == MAX_PAYLOAD


# -- the public API surface -----------------------------------------------------------------

def test_all_names_exist():
    assert len(nfbind.__all__) == len(set(nfbind.__all__)), "duplicates in __all__"
    for name in nfbind.__all__:
        assert hasattr(nfbind, name), "nfbind.__all__ names %r, which is missing" % name
    for name in ("NfQueue", "Packet", "Verdict", "CopyMode", "CtStatus", "NetlinkError",
                 "PermissionDenied", "QueueBusy", "Overrun", "VerdictError", "ClosedError",
                 "OverrunWarning"):
        assert name in nfbind.__all__


@pytest.mark.parametrize("mod", ["errors", "enums", "netns", "packet", "queue", "_channel"])
def test_submodule_all_names_exist(mod):
    import importlib

    m = importlib.import_module("nfbind." + mod)
    for name in m.__all__:
        assert hasattr(m, name), "nfbind.%s.__all__ names %r, which is missing" % (mod, name)


def test_version_and_py_typed():
    assert isinstance(nfbind.__version__, str) and nfbind.__version__[:1].isdigit()
    pkg = Path(nfbind.__file__).resolve().parent
    assert (pkg / "py.typed").is_file()


def test_overrun_warning_is_a_runtime_warning():
    assert issubclass(nfbind.OverrunWarning, RuntimeWarning)
