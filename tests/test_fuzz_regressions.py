# SPDX-License-Identifier: GPL-2.0-or-later
"""Malformed netlink input through nfbind's C parsers, in process.

What the libFuzzer targets under ``fuzz/`` check, kept in ``make test``: the
receive functions of the compiled modules (``nfb_q_recv``, ``nfb_log_recv``,
``nfb_q_config``'s wait for acknowledgements, ``nfb_ct_recv_events``,
``nfb_ct_recv_answer``, and the core's ``nfb_ct_parse_attrs``) are given a datagram socket
pair instead of a netlink socket, and fed

* the real kernel messages of ``fuzz/corpus`` (written by
  ``fuzz/make_seeds.py``), whole, cut at every byte, with lying
  ``nlmsg_len`` values (too small, too big, unaligned, 2 GiB and more), in
  batches with NLMSG_ERROR and NLMSG_DONE between packets, and cut by a
  receive buffer too small for them (MSG_TRUNC);
* every input of ``fuzz/regressions`` (inputs that once crashed a fuzz
  target), the way the fuzz target feeds it;
* random mutations of the real messages (bounded count, ``--soak`` more).

Each test asserts the exact number of packets, records or errors the parser
reports and that every (offset, length) a record holds lies inside the
message it came from.  No root needed: no netlink socket is opened.
"""
from __future__ import annotations

import errno
import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import pytest

from helpers.packets import udp_data
from helpers.report import fault_report
from nfbind._core import ffi as core_ffi, lib as core_lib
from nfbind._conntrack import ffi as ct_ffi, lib as ct_lib
from nfbind._nflog import ffi as log_ffi, lib as log_lib
from nfbind._nfqueue import ffi as q_ffi, lib as q_lib

pytestmark = pytest.mark.fault

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
NLMSG = struct.Struct("=IHHII")     # struct nlmsghdr: len, type, flags, seq, pid
NFGEN = struct.Struct("=BBH")       # struct nfgenmsg: family, version, res_id
NLA = struct.Struct("=HH")          # struct nlattr: len, type
NLMSGERR = struct.Struct("=i")      # struct nlmsgerr starts with int error
MSG_MIN = NLMSG.size + NFGEN.size   # the shortest packet message the parsers take
BURST = 8                           # datagrams queued at once (max_dgram_qlen is 10)
INT_MIN = -(1 << 31)

# the UDP payloads fuzz/make_seeds.py sends to the queue and to the log
QUEUE_PAYLOADS = [b"", b"fuzz!", bytes(range(256)) + b"x" * 44]
LOG_PAYLOADS = [b"a", b"nflog seed", b"six"]

# (presence bit, offset word) of every byte range a packet record holds
RANGES = [(getattr(q_lib, "NFB_A_" + n), getattr(q_lib, "NFB_F_%s_OFF" % n))
          for n in ("PAYLOAD", "HWADDR", "L2HDR", "SECCTX", "CT", "EXP", "PREFIX", "HWHDR")]


# -- inputs ----------------------------------------------------------------------


def seed(target: str, name: str) -> bytes:
    return (FUZZ / "corpus" / target / name).read_bytes()


def regressions(target: str) -> List[Path]:
    d = FUZZ / "regressions" / target
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix != ".md")


def align(n: int) -> int:
    return (n + 3) & ~3


def messages(data: bytes) -> List[bytes]:
    """The well-formed messages of a buffer, each without its padding."""
    out, off = [], 0
    while off + NLMSG.size <= len(data):
        ln = NLMSG.unpack_from(data, off)[0]
        if ln < NLMSG.size or off + ln > len(data):
            break
        out.append(data[off:off + ln])
        off += align(ln)
    return out


def with_len(msg: bytes, ln: int) -> bytes:
    """msg with its nlmsg_len replaced."""
    return struct.pack("=I", ln & 0xFFFFFFFF) + msg[4:]


def with_seq(msg: bytes, seq: int) -> bytes:
    return msg[:8] + struct.pack("=I", seq) + msg[12:]


def pad(msg: bytes) -> bytes:
    return msg + b"\0" * (align(len(msg)) - len(msg))


def attrs(msg: bytes) -> List[Tuple[int, int, int]]:
    """(type, offset of the payload, payload length) of a packet message's
    attributes, within its nlmsg_len."""
    out, off, end = [], MSG_MIN, NLMSG.unpack_from(msg, 0)[0]
    while off + NLA.size <= end:
        ln, typ = NLA.unpack_from(msg, off)
        if ln < NLA.size or off + ln > end:
            break
        out.append((typ & q_lib.NLA_TYPE_MASK, off + NLA.size, ln - NLA.size))
        off += align(ln)
    return out


def split_like_harness(data: bytes) -> List[bytes]:
    """Datagrams as fuzz/fuzz_common.h's fz_split() cuts an input."""
    out, pos = [], 0
    while pos < len(data):
        left = len(data) - pos
        ln = left
        if left >= 4:
            ln = min(struct.unpack_from("=I", data, pos)[0] or 1, left)
        out.append(data[pos:pos + ln])
        pos += ln
    return out


# -- the receive functions over a datagram socket pair ------------------------------


class Pair:
    """A datagram socket pair: the parser reads ``fd``, the test writes."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.r.setblocking(False)
        self.w.setblocking(False)
        self.fd = self.r.fileno()

    def send(self, dgrams: Iterable[bytes]) -> int:
        n = 0
        for d in dgrams:
            self.w.send(d)
            n += 1
        return n

    def drain(self) -> int:
        """Throw away what the code under test sent (configuration requests)."""
        n = 0
        for _ in range(4096):
            try:
                self.w.recv(65536)
            except BlockingIOError:
                break
            n += 1
        return n

    def close(self) -> None:
        self.r.close()
        self.w.close()


class PacketRx:
    """nfb_q_* or nfb_log_* over a socket pair; recv() returns the batch."""

    def __init__(self, kind: str, slot: int = 8192, nslots: int = BURST,
                 family: int = -1) -> None:
        self.kind = kind
        self.pair = Pair()
        if kind == "queue":
            self.ffi, self.lib = q_ffi, q_lib
            c = q_lib.nfb_q_new(self.pair.fd, 0, slot, nslots)
            self.c = q_ffi.gc(c, q_lib.nfb_q_free)
        else:
            self.ffi, self.lib = log_ffi, log_lib
            c = log_lib.nfb_log_new(self.pair.fd, slot, nslots, family)
            self.c = log_ffi.gc(c, log_lib.nfb_log_free)
        assert c != self.ffi.NULL

    @property
    def rx(self):
        return self.c.rx

    def _recv(self) -> int:
        if self.kind == "queue":
            return self.lib.nfb_q_recv(self.c)
        return self.lib.nfb_log_recv(self.c)

    def recv(self) -> Tuple[int, List[List[int]], bytes]:
        n = self._recv()
        data = bytes(self.ffi.buffer(self.rx.data, self.rx.data_len)) if self.rx.data_len else b""
        words = self.lib.NFB_F_COUNT
        recs = [[self.rx.recs[i * words + k] for k in range(words)] for i in range(max(n, 0))]
        if self.kind == "queue" and n > 0:
            self.lib.nfb_q_take(self.c)     # kept, as NfQueue does: the next receive reads on
        return n, recs, data

    def feed(self, dgrams: List[bytes]) -> Tuple[int, List[List[int]], List[bytes]]:
        """Send the datagrams (BURST at a time) and receive until drained:
        (packets, their records, the batch data each record points into)."""
        total, recs, datas = 0, [], []
        for i in range(0, len(dgrams), BURST):
            self.pair.send(dgrams[i:i + BURST])
            n, r, d = self.drain()
            total += n
            recs += r
            datas += d
        return total, recs, datas

    def drain(self) -> Tuple[int, List[List[int]], List[bytes]]:
        """Receive until nothing is left (bounded)."""
        total, recs, datas = 0, [], []
        for _ in range(64):
            n, r, data = self.recv()
            assert n >= 0, "receive failed: %s" % os.strerror(-n)
            total += n
            recs += r
            datas += [data] * n
            if n == 0 and not self.rx.data_len:
                break
        return total, recs, datas

    def config_then_recv(self, dgrams: List[bytes]) -> Tuple[int, List[List[int]], List[bytes]]:
        """Queue the datagrams, let a configuration request's wait for its
        acknowledgement read them (packets go to the stash), then receive."""
        assert len(dgrams) <= BURST
        self.pair.send(dgrams)
        step = self.ffi.new("int *")
        if self.kind == "queue":
            cfg = q_ffi.new("struct nfb_qcfg *", dict(cmd=q_lib.NFQNL_CFG_CMD_BIND, copy_mode=-1,
                                                        max_len=-1))
            rc = q_lib.nfb_q_config(self.c, cfg, 0, step)
        else:
            cfg = log_ffi.new("struct nfb_logcfg *", dict(cmd=log_lib.NFULNL_CFG_CMD_BIND,
                                                          copy_mode=-1, nlbufsiz=-1, timeout=-1,
                                                          qthresh=-1, flags=-1))
            grp = log_ffi.new("uint16_t[]", [1])
            fg = log_ffi.new("int *")
            rc = log_lib.nfb_log_config(self.c, grp, 1, cfg, 0, fg, step)
        assert rc == -errno.ETIMEDOUT      # nobody acknowledges over the socket pair
        assert self.pair.drain() == 1      # the one request it sent
        return self.drain()

    def close(self) -> None:
        self.pair.close()


def check_ranges(rec: List[int], data: bytes, msg_end: Optional[int] = None) -> None:
    """Every byte range of a record lies in the batch (and in its message)."""
    end = len(data) if msg_end is None else msg_end
    for bit, field in RANGES:
        off, ln = rec[field], rec[field + 1]
        if rec[q_lib.NFB_F_ATTRS] & bit:
            assert off + ln <= end, "range %d+%d past %d" % (off, ln, end)
        else:
            assert (off, ln) == (0, 0)


def payload(rec: List[int], data: bytes) -> Optional[bytes]:
    if not rec[q_lib.NFB_F_ATTRS] & q_lib.NFB_A_PAYLOAD:
        return None
    off = rec[q_lib.NFB_F_PAYLOAD_OFF]
    return data[off:off + rec[q_lib.NFB_F_PAYLOAD_LEN]]


def _rx_factory(kind: str):
    made: List[PacketRx] = []

    def make(**kw) -> PacketRx:
        rx = PacketRx(kind, **kw)
        made.append(rx)
        return rx
    yield make
    for rx in made:
        rx.close()


@pytest.fixture
def queue_rx():
    yield from _rx_factory("queue")


@pytest.fixture
def log_rx():
    yield from _rx_factory("log")


# -- NFQUEUE ----------------------------------------------------------------------------


QUEUE_PACKETS = [seed("nfqueue", "packet-%d" % i) for i in range(3)]
LOG_PACKETS = [seed("nflog", "packet-%d" % i) for i in range(4)]
ERROR_MSG = seed("conntrack", "nlmsg-error")
DONE_MSG = seed("conntrack", "dump-1")


def test_corpus_is_real_kernel_messages():
    """The seeds hold one message each, of the types the parsers look for."""
    qtype = NLMSG.unpack_from(QUEUE_PACKETS[0], 0)[1]
    ltype = NLMSG.unpack_from(LOG_PACKETS[0], 0)[1]
    assert qtype != ltype
    for m in QUEUE_PACKETS:
        assert messages(m) == [m] and NLMSG.unpack_from(m, 0)[1] == qtype
    for m in LOG_PACKETS:
        assert messages(m) == [m] and NLMSG.unpack_from(m, 0)[1] == ltype
    assert NLMSG.unpack_from(ERROR_MSG, 0)[1] == ct_lib.NLMSG_ERROR
    assert NLMSG.unpack_from(DONE_MSG, 0)[1] == ct_lib.NLMSG_DONE
    # the kernel sends an unaligned nlmsg_len when the payload ends unaligned
    assert any(len(m) % 4 for m in QUEUE_PACKETS)


def test_nfqueue_real_packets(queue_rx):
    """Whole messages: one packet each, its payload the UDP datagram sent;
    the three end to end in one datagram give the same three records."""
    rx = queue_rx()
    ids = []
    for m, sent in zip(QUEUE_PACKETS, QUEUE_PAYLOADS):
        n, recs, datas = rx.feed([m])
        assert n == 1
        check_ranges(recs[0], datas[0], len(m))
        assert udp_data(payload(recs[0], datas[0])) == sent
        ids.append(recs[0][q_lib.NFB_F_ID])
    assert len(set(ids)) == 3
    n, recs, datas = rx.feed([seed("nfqueue", "batch-3")])
    assert n == 3 and [r[q_lib.NFB_F_ID] for r in recs] == ids
    for r, d in zip(recs, datas):
        check_ranges(r, d)
    fault_report("fuzz_nfqueue_real", inputs=4, packets=3 + n)


def test_nfqueue_cut_at_every_byte(queue_rx):
    """A message cut at each byte: with its nlmsg_len left as it was (it lies:
    too big) it is rejected, unless the cut is within the alignment padding
    the receive adds after a datagram: those bytes are zeros; with nlmsg_len
    set to the cut it is a packet from MSG_MIN bytes on, whose ranges stay
    inside the cut and whose id is known once NFQA_PACKET_HDR is whole."""
    rx = queue_rx()
    full = QUEUE_PACKETS[2]
    _, (ref,), (ref_data,) = rx.feed([full])
    hdr_end = next(off + ln for typ, off, ln in attrs(full) if typ == q_lib.NFQA_PACKET_HDR)
    assert len(full) % 4 == 0 and payload(ref, ref_data) == full[-len(payload(ref, ref_data)):]
    kept = rejected = 0
    for cut in range(len(full)):
        n, recs, datas = rx.feed([full[:cut]])
        if align(cut) < len(full):
            assert n == 0, cut
            rejected += 1
        else:
            assert n == 1
            zeros = len(full) - cut
            ref_p = payload(ref, ref_data)
            assert payload(recs[0], datas[0]) == ref_p[:-zeros] + b"\0" * zeros
        if cut < NLMSG.size:
            continue
        n, recs, datas = rx.feed([with_len(full[:cut], cut)])
        assert n == (1 if cut >= MSG_MIN else 0), cut
        if n:
            kept += 1
            check_ranges(recs[0], datas[0], cut)
            if cut >= hdr_end:
                assert recs[0][q_lib.NFB_F_ID] == ref[q_lib.NFB_F_ID]
            # an attribute cut by the new end is skipped, never taken in part
            assert payload(recs[0], datas[0]) in (None, payload(ref, ref_data))
    assert kept == len(full) - MSG_MIN
    fault_report("fuzz_nfqueue_cuts", inputs=2 * len(full) - NLMSG.size, packets=kept,
                 rejected=rejected)


@pytest.mark.parametrize("lie", ["zero", "below_header", "past_end", "2GiB", "4GiB-1"])
def test_nfqueue_lying_length_in_a_batch(queue_rx, lie):
    """Three packets in one datagram, the second with a lying nlmsg_len: the
    first is parsed, parsing stops at the liar (even one claiming 2 GiB and
    more, which libmnl's own check lets through)."""
    a, b, c = QUEUE_PACKETS
    rest = len(pad(b)) + len(c)
    ln = {"zero": 0, "below_header": NLMSG.size - 1, "past_end": rest + 1,
          "2GiB": 1 << 31, "4GiB-1": (1 << 32) - 1}[lie]
    buf = pad(a) + pad(with_len(b, ln)) + c
    rx = queue_rx()
    n, recs, datas = rx.feed([buf])
    assert n == 1
    check_ranges(recs[0], datas[0], len(a))
    assert udp_data(payload(recs[0], datas[0])) == QUEUE_PAYLOADS[0]


def test_nfqueue_error_and_done_between_packets(queue_rx):
    """NLMSG_ERROR and NLMSG_DONE among packets: the packets are parsed, the
    error is counted as an asynchronous error with its errno."""
    err = NLMSGERR.unpack_from(ERROR_MSG, NLMSG.size)[0]
    assert err < 0
    a, b, c = QUEUE_PACKETS
    rx = queue_rx()
    n, recs, _ = rx.feed([pad(a) + pad(ERROR_MSG) + pad(DONE_MSG) + pad(b) + c])
    assert n == 3
    assert rx.rx.async_errors == 1 and rx.rx.last_async_error == -err
    # an error message too short to hold its code is not counted
    n, _, _ = rx.feed([pad(a) + with_len(ERROR_MSG[:NLMSG.size], NLMSG.size)])
    assert n == 1 and rx.rx.async_errors == 1


def test_nfqueue_truncated_datagram_keeps_the_id(queue_rx):
    """A receive slot smaller than the message: counted as truncated, and
    the packet still parsed from its first attributes (its id, so it can get
    a verdict); no range reaches past the slot."""
    full = QUEUE_PACKETS[2]
    _, (ref,), _ = queue_rx().feed([full])
    for slot in (64, 128, 256):
        rx = queue_rx(slot=slot, nslots=4)
        n, recs, datas = rx.feed([full, full])
        assert n == 2 and rx.rx.truncated_msgs == 2
        for r, d in zip(recs, datas):
            assert r[q_lib.NFB_F_ID] == ref[q_lib.NFB_F_ID]
            check_ranges(r, d)
            for bit, field in RANGES:
                if r[q_lib.NFB_F_ATTRS] & bit:
                    assert r[field] % slot + r[field + 1] <= slot


def test_nfqueue_stash_and_short_error(queue_rx):
    """Packets read while waiting for a configuration ack are stashed and
    handed out by the next receive.  An NLMSG_ERROR of only a header is not
    read as an error: its code would be whatever an earlier datagram left in
    the receive buffer (here a NLMSG_DONE carrying -EPERM)."""
    done = with_len(DONE_MSG[:NLMSG.size], NLMSG.size + NLMSGERR.size) + NLMSGERR.pack(-errno.EPERM)
    short_err = with_len(ERROR_MSG[:NLMSG.size], NLMSG.size)
    rx = queue_rx()
    n, recs, datas = rx.config_then_recv([QUEUE_PACKETS[0], done, short_err, QUEUE_PACKETS[1]])
    assert n == 2
    assert rx.rx.async_errors == 0
    assert [udp_data(payload(r, d)) for r, d in zip(recs, datas)] == QUEUE_PAYLOADS[:2]
    for r, d in zip(recs, datas):
        check_ranges(r, d)


def test_nfqueue_short_datagrams_read_no_stale_bytes(queue_rx):
    """fuzz/regressions/nfqueue/short-datagrams-stale-padding: datagrams of 1
    and 3 bytes after a receive that left bytes in the buffer.  Their padding
    used to keep those bytes, which made up a message claiming 3 GiB that
    libmnl let through: a read far outside the buffer.  Now: no packet."""
    data = (FUZZ / "regressions" / "nfqueue" / "short-datagrams-stale-padding").read_bytes()
    rx = queue_rx()
    # leave 0xbe bytes in the buffer (datagrams whose nlmsg_len lies)
    assert rx.feed([b"\xbe" * 64] * 4)[0] == 0
    dgrams = split_like_harness(data)
    assert [len(d) for d in dgrams] == [1, 1, 1, 3]
    assert rx.feed(dgrams)[0] == 0
    assert rx.rx.truncated_msgs == 0


def test_nfqueue_error_int_min_in_a_cut_datagram(queue_rx):
    """fuzz/regressions/nfqueue/nlmsgerr-error-int-min: an NLMSG_ERROR whose
    nlmsg_len lies (0x28000010), cut by a 64-byte slot (nlmsg_len clamped),
    with error INT_MIN: counted once; its negation no longer overflows."""
    data = (FUZZ / "regressions" / "nfqueue" / "nlmsgerr-error-int-min").read_bytes()
    assert NLMSG.unpack_from(data, 0)[1] == ct_lib.NLMSG_ERROR
    assert NLMSGERR.unpack_from(data, NLMSG.size)[0] == INT_MIN
    rx = queue_rx(slot=64, nslots=4)
    assert rx.feed([data])[0] == 0
    assert rx.rx.truncated_msgs == 1
    assert rx.rx.async_errors == 1 and rx.rx.last_async_error == INT_MIN
    # whole, the same bytes are no message at all
    rx = queue_rx()
    assert rx.feed([data])[0] == 0 and rx.rx.async_errors == 0


# -- NFLOG --------------------------------------------------------------------------------


def test_nflog_real_packets_and_family_filter(log_rx):
    """Whole messages: one packet each with its prefix; an AF_INET filter
    keeps the IPv4 ones and counts the IPv6 one as filtered."""
    rx = log_rx()
    n, recs, datas = rx.feed(LOG_PACKETS)
    assert n == len(LOG_PACKETS)
    fams = [r[log_lib.NFB_F_FAMILY] for r in recs]
    assert sorted(set(fams)) == sorted({socket.AF_INET, socket.AF_INET6})
    for r, d in zip(recs, datas):
        check_ranges(r, d)
    sent = [udp_data(payload(r, d)) for r, d in zip(recs, datas)
            if payload(r, d) is not None]
    for p in LOG_PAYLOADS:
        assert p in sent
    off, ln = log_lib.NFB_F_PREFIX_OFF, log_lib.NFB_F_PREFIX_LEN
    prefixes = [d[r[off]:r[off] + r[ln]]
                for r, d in zip(recs, datas) if r[log_lib.NFB_F_ATTRS] & log_lib.NFB_A_PREFIX]
    # the UDP rules carry --nflog-prefix seed, the TCP rule none (an empty one)
    assert sorted(prefixes) == [b""] * (n - len(LOG_PAYLOADS)) + [b"seed"] * len(LOG_PAYLOADS)
    v4 = log_rx(family=log_lib.NFPROTO_IPV4)
    n4, recs4, _ = v4.feed([seed("nflog", "batch-%d" % len(LOG_PACKETS))])
    assert n4 == fams.count(socket.AF_INET)
    assert v4.c.filtered == fams.count(socket.AF_INET6)
    assert {r[log_lib.NFB_F_FAMILY] for r in recs4} == {socket.AF_INET}


def test_nflog_cut_at_every_byte(log_rx):
    """As for NFQUEUE: lying nlmsg_len rejected (a cut within the last 3
    bytes is parsed as the message with those bytes zeroed: the receive pads
    a datagram with zeros), consistent cuts parsed with every range inside
    the cut."""
    rx = log_rx()
    full = max(LOG_PACKETS, key=len)
    _, (ref,), _ = rx.feed([full])
    kept = 0
    for cut in range(len(full)):
        n, recs, datas = rx.feed([full[:cut]])
        if align(cut) < len(full):
            assert n == 0, cut
        else:
            # parsed as the whole message with its last bytes zeroed
            _, (zref,), (zdata,) = rx.feed([full[:cut] + b"\0" * (len(full) - cut)])
            assert n == 1 and recs[0][log_lib.NFB_F_ATTRS] == ref[log_lib.NFB_F_ATTRS]
            assert payload(recs[0], datas[0]) == payload(zref, zdata)
        if cut < NLMSG.size:
            continue
        n, recs, datas = rx.feed([with_len(full[:cut], cut)])
        assert n == (1 if cut >= MSG_MIN else 0), cut
        if n:
            kept += 1
            check_ranges(recs[0], datas[0], cut)
    assert kept == len(full) - MSG_MIN
    fault_report("fuzz_nflog_cuts", inputs=2 * len(full) - NLMSG.size, packets=kept)


def test_nflog_attribute_past_an_unaligned_end(log_rx):
    """fuzz/regressions/nflog/unaligned-nlmsg-len-attr-past-end: nlmsg_len 30
    and an attribute of 12 bytes at offset 20.  libmnl walks attributes to
    the aligned end (32), so the attribute used to be taken with 2 bytes
    beyond the message (beyond the input).  Now it is skipped; the same with
    a real message whose nlmsg_len is 2 short of its last attribute."""
    data = (FUZZ / "regressions" / "nflog" / "unaligned-nlmsg-len-attr-past-end").read_bytes()
    ln = NLMSG.unpack_from(data, 0)[0]
    assert ln % 4 and ln < len(data) <= align(ln)
    rx = log_rx()
    n, recs, datas = rx.feed([data])
    assert n == 1
    check_ranges(recs[0], datas[0], ln)
    for full in LOG_PACKETS:
        _, last_off, last_len = attrs(full)[-1]
        end = last_off + last_len - 2      # the last attribute 2 bytes past it
        short = with_len(full[:end], end)
        n, recs, datas = rx.feed([short])
        assert n == 1
        check_ranges(recs[0], datas[0], len(short))
        _, (ref,), _ = rx.feed([full])
        # every attribute but the cut last one, as in the whole message
        lost = ref[log_lib.NFB_F_ATTRS] & ~recs[0][log_lib.NFB_F_ATTRS]
        assert recs[0][log_lib.NFB_F_ATTRS] & ~ref[log_lib.NFB_F_ATTRS] == 0
        if ref[log_lib.NFB_F_PAYLOAD_OFF] == last_off:
            assert lost == log_lib.NFB_A_PAYLOAD    # the payload came last
        else:
            assert bin(lost).count("1") <= 1


def test_nflog_short_datagrams_read_no_stale_bytes(log_rx):
    """fuzz/regressions/nflog/short-datagrams-stale-padding, as for NFQUEUE."""
    data = (FUZZ / "regressions" / "nflog" / "short-datagrams-stale-padding").read_bytes()
    rx = log_rx()
    assert rx.feed([b"\xbe" * 64] * 4)[0] == 0
    assert rx.feed(split_like_harness(data))[0] == 0


def test_nflog_stash(log_rx):
    """Packets read while waiting for a configuration ack reach the next
    receive, errors between them too short to count are not counted."""
    rx = log_rx()
    short_err = with_len(ERROR_MSG[:NLMSG.size], NLMSG.size)
    n, recs, datas = rx.config_then_recv([LOG_PACKETS[0], short_err, LOG_PACKETS[1]])
    assert n == 2 and rx.rx.async_errors == 0
    for r, d in zip(recs, datas):
        check_ranges(r, d)


# -- the regression inputs, every path the fuzz targets take --------------------------


@pytest.mark.parametrize("kind,target", [("queue", "nfqueue"), ("log", "nflog")])
def test_packet_regressions_every_path(kind, target):
    """Every input of fuzz/regressions/<target> as the fuzz target feeds it:
    one datagram, one datagram in 64-byte slots, the harness's datagrams,
    the same read during a configuration wait; ranges stay in the batch."""
    files = regressions(target)
    assert files
    fed = 0
    for path in files:
        data = path.read_bytes()
        dgrams = split_like_harness(data)
        for slot, batches in ((65536, [[data]]), (64, [[data]]),
                              (8192, [dgrams[i:i + BURST] for i in range(0, len(dgrams), BURST)])):
            rx = PacketRx(kind, slot=slot, nslots=BURST)
            try:
                for b in batches:
                    n, recs, datas = rx.feed(b)
                    for r, d in zip(recs, datas):
                        check_ranges(r, d)
                    fed += len(b)
                if slot == 8192:
                    for b in batches:
                        n, recs, datas = rx.config_then_recv(b)
                        for r, d in zip(recs, datas):
                            check_ranges(r, d)
            finally:
                rx.close()
    fault_report("fuzz_%s_regressions" % target, inputs=len(files), datagrams=fed)


# -- conntrack ---------------------------------------------------------------------------


EVENTS = sorted((FUZZ / "corpus" / "conntrack").glob("event-*"))


class CtRx:
    """nfb_ct_* over a socket pair."""

    def __init__(self, nslots: int) -> None:
        self.pair = Pair()
        c = ct_lib.nfb_ct_new(self.pair.fd, nslots)
        assert c != ct_ffi.NULL
        self.c = ct_ffi.gc(c, ct_lib.nfb_ct_free)

    def events(self, dgrams: List[bytes]) -> List:
        out = []
        for i in range(0, len(dgrams), BURST):
            self.pair.send(dgrams[i:i + BURST])
            n = ct_lib.nfb_ct_recv_events(self.c)
            assert n >= 0
            out += [self.record(k) for k in range(n)]
        return out

    def answer(self, dgrams: List[bytes], seq: int, mode: int) -> int:
        assert len(dgrams) <= BURST
        self.pair.send(dgrams)
        self.c.seq = seq
        self.c.done = 0
        self.c.error = 0
        return ct_lib.nfb_ct_recv_answer(self.c, mode, 1 << 20, 0)

    def record(self, k: int) -> dict:
        r = self.c.recs[k]
        data = bytes(ct_ffi.buffer(self.c.data, self.c.data_len)) if self.c.data_len else b""
        if r.attrs & ct_lib.NFB_CT_A_SECCTX:
            assert r.secctx_off + r.secctx_len <= len(data)
        return dict(attrs=r.attrs, proto=r.orig.proto, sport=r.orig.sport, dport=r.orig.dport,
                    event=r.event, id=r.id, family=r.family)

    def close(self) -> None:
        self.pair.close()


@pytest.fixture
def ct_rx():
    made: List[CtRx] = []

    def make(nslots: int = BURST) -> CtRx:
        rx = CtRx(nslots)
        made.append(rx)
        return rx
    yield make
    for rx in made:
        rx.close()


def test_conntrack_real_events(ct_rx):
    """Each real event datagram: one record, a TCP or UDP flow with both
    tuples (the seeds hold a TCP connection's events)."""
    assert EVENTS
    rx = ct_rx()
    recs = rx.events([p.read_bytes() for p in EVENTS])
    assert len(recs) == len(EVENTS)
    for r in recs:
        assert r["attrs"] & ct_lib.NFB_CT_A_ORIG and r["attrs"] & ct_lib.NFB_CT_A_REPLY
        assert r["proto"] in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and r["event"]
    assert socket.IPPROTO_TCP in [r["proto"] for r in recs]


def test_conntrack_event_cut_at_every_byte(ct_rx):
    """An event cut at each byte: with its nlmsg_len lying, no record and
    nothing counted (as for packets, a cut within the last 3 bytes is parsed
    as the message with those bytes zeroed: the receive pads a datagram with
    zeros); with nlmsg_len set to the cut, one record from MSG_MIN bytes on
    (shorter ones are counted as ignored)."""
    full = max((p.read_bytes() for p in EVENTS), key=len)
    rx = ct_rx()
    records = ignored = 0
    for cut in range(len(full)):
        recs = rx.events([full[:cut]])
        if align(cut) < len(full):
            assert recs == [], cut
        else:
            assert len(recs) == 1 and recs[0]["sport"] == rx.events([full])[0]["sport"]
        if cut < NLMSG.size:
            continue
        before = rx.c.rx.ignored
        recs = rx.events([with_len(full[:cut], cut)])
        assert len(recs) == (1 if cut >= MSG_MIN else 0), cut
        records += len(recs)
        ignored += rx.c.rx.ignored - before
    assert records == len(full) - MSG_MIN
    assert ignored == MSG_MIN - NLMSG.size
    fault_report("fuzz_conntrack_event_cuts", inputs=2 * len(full) - NLMSG.size,
                 records=records, ignored=ignored)


@pytest.mark.parametrize("ln", [0, NLMSG.size - 1, 1 << 31, (1 << 32) - 1])
def test_conntrack_lying_length_after_an_event(ct_rx, ln):
    """An event, then a message with a lying nlmsg_len in the same datagram:
    one record; the regression input (nlmsg_len 0x8b8b8b01) gives none."""
    ev = EVENTS[0].read_bytes()
    rx = ct_rx()
    assert len(rx.events([pad(ev) + with_len(ev, ln)])) == 1
    reg = (FUZZ / "regressions" / "conntrack" / "nlmsg-len-over-2gib").read_bytes()
    assert NLMSG.unpack_from(reg, 0)[0] >= 1 << 31
    assert rx.events([reg]) == []
    assert rx.answer([reg], NLMSG.unpack_from(reg, 0)[3], ct_lib.NFB_M_RECORDS) == -errno.ETIMEDOUT
    assert rx.c.nrecs == 0


def test_conntrack_answers(ct_rx):
    """A real dump answer: its flows as records or raw messages, done at
    NLMSG_DONE; the real error answer: its errno; an error of a bare header:
    EBADMSG; an answer to another request: ignored."""
    dump = seed("conntrack", "dump-all")
    flows = [m for m in messages(dump) if NLMSG.unpack_from(m, 0)[1] != ct_lib.NLMSG_DONE]
    seq = NLMSG.unpack_from(dump, 0)[3]
    rx = ct_rx(0)
    assert rx.answer([dump], seq, ct_lib.NFB_M_RECORDS) == len(flows)
    assert rx.c.done == 1 and rx.c.error == 0
    assert rx.answer([dump], seq, ct_lib.NFB_M_RAW) == len(flows)
    raw = bytes(ct_ffi.buffer(rx.c.data, rx.c.data_len))
    assert [raw[rx.c.moffs[i]:rx.c.moffs[i] + len(m)] for i, m in enumerate(flows)] == flows
    before = rx.c.rx.ignored
    assert rx.answer([dump], seq + 1, ct_lib.NFB_M_RECORDS) == -errno.ETIMEDOUT
    assert rx.c.rx.ignored - before == len(messages(dump))
    err = NLMSGERR.unpack_from(ERROR_MSG, NLMSG.size)[0]
    eseq = NLMSG.unpack_from(ERROR_MSG, 0)[3]
    assert rx.answer([ERROR_MSG], eseq, ct_lib.NFB_M_RECORDS) == 0
    assert rx.c.done == 1 and rx.c.error == err
    assert rx.answer([with_len(ERROR_MSG[:NLMSG.size], NLMSG.size)], eseq,
                     ct_lib.NFB_M_RECORDS) == 0
    assert rx.c.done == 1 and rx.c.error == -errno.EBADMSG
    # a truncated dump datagram: the flows before the cut, then the wait ends
    cut = dump[:align(len(flows[0])) + NLMSG.size]
    assert rx.answer([cut], seq, ct_lib.NFB_M_RECORDS) == -errno.ETIMEDOUT
    assert rx.c.nrecs == 1


def test_conntrack_attrs_cut_at_every_byte():
    """nfb_ct_parse_attrs (the NFQA_CT / NFULA_CT path) over one real flow's
    attributes cut at each byte: the tuples are known once they are whole,
    the security context range stays inside the cut."""
    attrs_ = seed("conntrack", "flow-attrs")
    full = core_ffi.new("struct nfb_ct_rec *")
    core_lib.nfb_ct_parse_attrs(attrs_, len(attrs_), socket.AF_INET, full)
    assert full.attrs & ct_lib.NFB_CT_A_ORIG and full.orig.proto == socket.IPPROTO_TCP
    r = core_ffi.new("struct nfb_ct_rec *")
    for cut in range(len(attrs_) + 1):
        buf = core_ffi.new("char[]", attrs_[:cut] or b"\0")
        core_lib.nfb_ct_parse_attrs(buf, cut, socket.AF_INET, r)
        assert r.attrs & ~full.attrs == 0
        if r.attrs & ct_lib.NFB_CT_A_SECCTX:
            assert r.secctx_off + r.secctx_len <= cut
    core_lib.nfb_ct_parse_attrs(attrs_, len(attrs_), socket.AF_INET, r)
    assert r.attrs == full.attrs and r.orig.sport == full.orig.sport


# -- random mutations of the real messages -------------------------------------------------


def mutate(rng: random.Random, msgs: List[bytes]) -> bytes:
    """One mutated buffer: messages end to end, then bit flips, lying lengths,
    cuts and repeats."""
    buf = bytearray(b"".join(pad(rng.choice(msgs)) for _ in range(rng.randint(1, 3))))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and len(buf) >= 4:
            i = rng.randrange(0, len(buf) - 3, 2)
            v = rng.choice([0, 1, 3, 15, 16, 17, 19, 20, 21, 0x7FFFFFFF, 1 << 31, 0xFFFFFFFF,
                            rng.randrange(1 << 16), len(buf) - i, len(buf) - i + 1])
            struct.pack_into("=H" if i % 4 else "=I", buf, i, v & (0xFFFF if i % 4 else 0xFFFFFFFF))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)):]
        elif op == 3 and buf:
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i:i + rng.randint(1, 16)]
        elif op == 4 and len(buf) > 1:
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 8)]
    return bytes(buf)


@pytest.mark.parametrize("target", ["nfqueue", "nflog", "conntrack"])
def test_random_mutations(target, soak):
    """Mutated real messages through every receive path of the target; the
    checks of each record hold and a receive never fails (bounded count,
    more under --soak)."""
    count = soak.size(2000, 100000)
    rng = random.Random(0x6E6662 + len(target))
    msgs = [p.read_bytes() for p in sorted((FUZZ / "corpus" / target).iterdir())]
    t0 = time.monotonic()
    inputs = parsed = 0
    if target == "conntrack":
        ev, ans = CtRx(BURST), CtRx(0)
        try:
            for _ in range(count):
                data = mutate(rng, msgs)
                inputs += 1
                parsed += len(ev.events([data]))
                parsed += len(ev.events(split_like_harness(data)[:BURST]))
                seq = NLMSG.unpack_from(data, 0)[3] if len(data) >= NLMSG.size else 0
                n = ans.answer([data], seq, rng.choice([ct_lib.NFB_M_RECORDS, ct_lib.NFB_M_RAW]))
                assert n >= 0 or n == -errno.ETIMEDOUT
                parsed += max(n, 0)
                r = core_ffi.new("struct nfb_ct_rec *")
                core_lib.nfb_ct_parse_attrs(data, len(data), socket.AF_INET, r)
                if r.attrs & ct_lib.NFB_CT_A_SECCTX:
                    assert r.secctx_off + r.secctx_len <= len(data)
        finally:
            ev.close()
            ans.close()
    else:
        kind = "queue" if target == "nfqueue" else "log"
        rxs = [PacketRx(kind, slot=65536, nslots=4), PacketRx(kind, slot=64, nslots=4),
               PacketRx(kind, slot=8192, nslots=BURST)]
        try:
            for _ in range(count):
                data = mutate(rng, msgs)
                inputs += 1
                for rx, dgrams in ((rxs[0], [data]), (rxs[1], [data]),
                                   (rxs[2], split_like_harness(data)[:BURST])):
                    n, recs, datas = rx.feed(dgrams)
                    parsed += n
                    for r, d in zip(recs, datas):
                        check_ranges(r, d)
        finally:
            for rx in rxs:
                rx.close()
    elapsed = time.monotonic() - t0
    assert inputs == count
    fault_report("fuzz_%s_mutations" % target, inputs=inputs, parsed=parsed,
                 elapsed_s=round(elapsed, 3), rate_inputs_per_s=round(inputs / elapsed))
