# SPDX-License-Identifier: GPL-2.0-or-later
"""Connection labels in NFQUEUE verdicts: ``pkt.accept(labels=...)`` and
``pkt.verdict(..., labels=...)``.

The verdict carries CTA_LABELS and CTA_LABELS_MASK in its NFQA_CT (what a
kernel with the ctnetlink glue applies; the message is checked byte by
byte); a kernel without the glue, as these machines run, gets the same
change over ctnetlink once the verdict is sent.  Against the kernel: real
UDP packets queued in a throw-away namespace, the labels read back with
``ct.get``, with ``conntrack -L -o labels`` and with the kernel's own
``-m connlabel`` match counting the flow's next packet; without a connlabel
rule the kernel answers ENOSPC and the error names the rule to add.
"""
from __future__ import annotations

import errno
import socket
import struct
import threading
from typing import Any, Dict, List

import pytest

from nfbind import NfQueue, Verdict
from nfbind.conntrack import Conntrack, Tuple
from nfbind.errors import NetlinkError

from helpers.cheaders import constants
from helpers.conntrack import ct_ns
from helpers.ctlab import conntrack_with_labels

QNUM = 11
PORT = 7950
CONF = "5 five\n100 hundred\n7 seven\n127 last\n"


def _attrs(data: bytes, off: int, end: int) -> Dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        n, t = struct.unpack_from("=HH", data, off)
        out[t & 0x3FFF] = data[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def test_the_verdict_carries_labels_in_nfqa_ct():
    """The message the kernel's glue would apply: NFQA_CT with CTA_MARK,
    CTA_LABELS and CTA_LABELS_MASK (four host-order u32 words each)."""
    from nfbind._core import lib as core
    from nfbind._nfqueue import lib
    from nfbind.conntrack.labels import labels_bytes

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        labels = labels_bytes({1, 5, 100}) + labels_bytes(range(128))
        rc = lib.nfb_q_send_verdict_ct(a.fileno(), QNUM, 42, core.NF_ACCEPT,
                                       lib.NFB_VF_CONNMARK | lib.NFB_VF_LABELS, 0, 0x77,
                                       labels, b"", 0)
        assert rc == 0
        msg = b.recv(4096)
    finally:
        a.close()
        b.close()
    top = _attrs(msg, 20, len(msg))                 # after nlmsghdr and nfgenmsg
    hdr = constants(["linux/netfilter/nfnetlink_queue.h"])["NFQA_VERDICT_HDR"]
    assert struct.unpack(">II", top[hdr]) == (core.NF_ACCEPT, 42)
    ct = _attrs(top[lib.NFQA_CT], 0, len(top[lib.NFQA_CT]))
    assert struct.unpack(">I", ct[core.CTA_MARK]) == (0x77,)
    words = struct.unpack("=4I", ct[core.CTA_LABELS])
    assert words == (1 << 1 | 1 << 5, 0, 0, 1 << 4)  # bits 1, 5 and 100
    assert ct[core.CTA_LABELS_MASK] == b"\xff" * 16
    # without labels, the plain call sends no CTA_LABELS
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert lib.nfb_q_send_verdict(a.fileno(), QNUM, 43, core.NF_ACCEPT,
                                      lib.NFB_VF_CONNMARK, 0, 1, b"", 0) == 0
        msg = b.recv(4096)
    finally:
        a.close()
        b.close()
    top = _attrs(msg, 20, len(msg))
    assert core.CTA_LABELS not in _attrs(top[lib.NFQA_CT], 0, len(top[lib.NFQA_CT]))


class Lab:
    """A UDP client and server in the namespace; the server's port is queued."""

    def __init__(self, ns) -> None:
        self.ns = ns
        self.srv = ns.socket()
        self.srv.bind(("127.0.0.1", PORT))
        self.srv.settimeout(5)
        self.cl = ns.socket()
        self.cl.bind(("127.0.0.1", 0))

    def send(self, data: bytes = b"x") -> None:
        self.cl.sendto(data, ("127.0.0.1", PORT))

    def received(self) -> bytes:
        return self.srv.recv(100)

    @property
    def tuple(self) -> Tuple:
        return Tuple("127.0.0.1", "127.0.0.1", "udp", self.cl.getsockname()[1], PORT)

    def close(self) -> None:
        self.srv.close()
        self.cl.close()


@pytest.fixture
def lab(ns):
    ct_ns(ns, v6=False)
    ns.iptables("-I", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-num", str(QNUM))
    lb = Lab(ns)
    yield lb
    lb.close()


def _one(q: NfQueue, handler) -> None:
    """Queue one packet to ``handler`` (bounded)."""
    def h(pkt):
        handler(pkt)
        q.stop()
    q.run(h, timeout=5)


@pytest.mark.integration
def test_accept_sets_labels(ns, lab):
    # the rule that gives connections room for labels; it also counts the
    # packets of flows labelled 5 (the kernel's own reading of the label)
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-m", "connlabel",
                "--label", "5", "-m", "comment", "--comment", "lbl5")
    with NfQueue(QNUM, netns=ns.name) as q, Conntrack(netns=ns.name) as ct:
        lab.send()
        seen: List[Any] = []

        def first(pkt):
            # bad labels are refused before anything is sent: the packet waits
            with pytest.raises(ValueError, match="labels bit"):
                pkt.accept(labels={128})
            with pytest.raises(TypeError, match="labels"):
                pkt.accept(labels={"five"})
            pkt.accept(labels={5, 100}, connmark=3)
            seen.append(pkt.id)

        _one(q, first)
        assert seen and lab.received() == b"x"
        f = ct.get(lab.tuple)
        assert f.labels == {5, 100} and f.mark == 3
        out = conntrack_with_labels(ns, CONF, "-L", "-p", "udp", "--dport", str(PORT),
                                    "-o", "labels")
        assert "labels=five,hundred" in out, out
        assert ns.counter("OUTPUT", "lbl5") == 0   # the first packet passed before

        # a later packet: labels replaced, through verdict(); given outside
        # the handler (a deferred verdict, sent at once)
        lab.send(b"y")
        held: List[Any] = []
        _one(q, held.append)
        t = threading.Thread(target=lambda: held[0].verdict(Verdict.ACCEPT, labels={7}))
        t.start()
        t.join(5)
        assert lab.received() == b"y"
        assert ct.get(lab.tuple).labels == {7}
        assert ns.counter("OUTPUT", "lbl5") == 1   # "y" left while labelled 5
        lab.send(b"z")
        _one(q, lambda pkt: pkt.accept(labels=()))
        assert lab.received() == b"z"
        assert ct.get(lab.tuple).labels == frozenset()
        out = conntrack_with_labels(ns, CONF, "-L", "-p", "udp", "--dport", str(PORT),
                                    "-o", "labels")
        assert "labels=" not in out, out


@pytest.mark.integration
def test_labels_without_the_connlabel_rule_name_the_fix(ns, lab):
    with NfQueue(QNUM, netns=ns.name) as q, Conntrack(netns=ns.name) as ct:
        lab.send()
        with pytest.raises(NetlinkError) as ei:
            _one(q, lambda pkt: pkt.accept(labels={9}, connmark=4))
        assert ei.value.errno == errno.ENOSPC
        assert "-m connlabel --label 9 --set" in str(ei.value)
        assert lab.received() == b"x"               # the verdict itself was given
        f = ct.get(lab.tuple)
        assert f.labels == frozenset() and f.mark == 4


@pytest.mark.integration
def test_labels_need_the_packet_headers_without_the_glue(ns, lab):
    from nfbind.enums import CopyMode

    with NfQueue(QNUM, netns=ns.name, copy_mode=CopyMode.META) as q:
        lab.send()
        errors: List[BaseException] = []

        def h(pkt):
            try:
                pkt.accept(labels={1})
            except ValueError as e:
                errors.append(e)
                pkt.accept()

        _one(q, h)
        # without the kernel's glue the labels go over ctnetlink, keyed by
        # the packet's headers, which CopyMode.META leaves out
        if not q._ct_glue:
            assert errors and "labels needs the packet's headers" in str(errors[0])
        else:  # pragma: no cover - the verdict's NFQA_CT needs no headers
            assert not errors
        assert lab.received() == b"x"
