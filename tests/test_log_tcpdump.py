# SPDX-License-Identifier: GPL-2.0-or-later
"""NfLog beside tcpdump (libpcap's own NFLOG reader): two groups log the same
packets, one read by nfbind, one written to a pcap file by ``tcpdump -i
nflog:N``; payload, prefix and metadata must agree byte for byte."""
from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from nfbind import Family, NfLog

from helpers.nflog import collect, log_proc, nflog, quiet, send, udp_data

pytestmark = pytest.mark.integration


# -- cross-check against tcpdump (libpcap's own NFLOG reader) ------------------------------


def read_nflog_pcap(path: Path) -> List[dict]:
    """Parse a pcap file of LINKTYPE_NFLOG (239) records.

    Each record: a 4-byte header (family u8, version u8, resource_id u16
    big-endian), then TLVs whose length (including the 4-byte TLV header)
    and type are in the writer's host byte order, values as the kernel sent
    them (network order), each padded to 4 bytes -- the netlink attributes.
    """
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), hex(magic)  # little-endian file, us or ns
    linktype = struct.unpack_from("<I", data, 20)[0]
    assert linktype == 239, linktype  # LINKTYPE_NFLOG
    out = []
    off = 24
    while off + 16 <= len(data):
        _sec, _frac, incl, orig = struct.unpack_from("<IIII", data, off)
        off += 16
        rec = data[off:off + incl]
        off += incl
        assert incl == orig and len(rec) == incl
        family, version, resid = struct.unpack_from("!BBH", rec, 0)
        tlvs: Dict[int, bytes] = {}
        t = 4
        while t + 4 <= len(rec):
            tlen, ttype = struct.unpack_from("=HH", rec, t)
            assert tlen >= 4 and t + tlen <= len(rec), (t, tlen, len(rec))
            tlvs[ttype & 0x7FFF] = rec[t + 4:t + tlen]
            t += (tlen + 3) & ~3
        out.append({"family": family, "version": version, "group": resid, "tlvs": tlvs})
    return out


NFULA_PACKET_HDR, NFULA_MARK, NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 2, 4, 9, 10


def test_tcpdump_sees_the_same_packets(ns, tmp_path):
    # two groups, same match: group 20 for nfbind, group 21 for tcpdump.
    # NFLOG is non-terminating, so both rules see every packet.
    # --nflog-threshold 1 on tcpdump's rule: libpcap leaves the kernel's
    # default qthresh (100) and 1 s timeout, which would hold packets back.
    prefix = "xcheck"
    for v6 in (False, True):
        ns.iptables("-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5900",
                    "-j", "MARK", "--set-mark", "0xbeef", v6=v6)
        nflog(ns, "INPUT", 5900, 20, "--nflog-prefix", prefix, v6=v6)
        nflog(ns, "INPUT", 5900, 21, "--nflog-prefix", prefix, "--nflog-threshold", "1", v6=v6)
    pcap = tmp_path / "nflog.pcap"
    # -Z root: keep root, so tcpdump can write into pytest's private tmp dir
    td = ns.popen("tcpdump", "-i", "nflog:21", "-w", str(pcap), "-U", "-n", "-Z", "root",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    deadline = time.monotonic() + 10
    while b"listening on" not in err and time.monotonic() < deadline:
        if not select.select([td.stderr], [], [], 0.5)[0]:
            assert td.poll() is None, err
            continue
        chunk = os.read(td.stderr.fileno(), 4096)
        if not chunk:
            break
        err += chunk
    assert b"listening on nflog:21" in err, err
    assert 21 in log_proc(ns)
    K = 24
    payloads = [b"%02d:" % i + os.urandom(7 * i) for i in range(K)]
    with NfLog(20, netns=ns.name) as log:
        for i, p in enumerate(payloads):
            if i % 3 == 2:
                send(ns, [p], ("::1", 5900), socket.AF_INET6)
            else:
                send(ns, [p], ("127.0.0.1", 5900))
        mine = collect(log, K)
        assert not quiet(log)
    assert len(mine) == K
    # wait until tcpdump wrote all K records (-U: flushed per packet), bounded
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pcap.exists() and pcap.stat().st_size > 24 and len(read_nflog_pcap(pcap)) >= K:
            break
        time.sleep(0.05)
    td.send_signal(signal.SIGINT)
    try:
        td.wait(5)
    except subprocess.TimeoutExpired:
        td.kill()
        td.wait(5)
        pytest.fail("tcpdump did not stop on SIGINT")
    err += td.stderr.read()
    assert td.returncode == 0, err
    assert b"%d packets captured" % K in err, err
    theirs = read_nflog_pcap(pcap)

    assert len(theirs) == len(mine) == K
    for m, t in zip(mine, theirs):
        tl = t["tlvs"]
        assert t["group"] == 21 and m.group == 20
        assert t["version"] == 0
        assert t["family"] == m.family
        # the same packet, byte for byte, and the same prefix
        assert tl[NFULA_PAYLOAD] == m.payload
        assert tl[NFULA_PREFIX].rstrip(b"\0").decode() == m.prefix == prefix
        # and the same metadata, decoded independently
        hw_protocol, hook = struct.unpack_from("!HB", tl[NFULA_PACKET_HDR])
        assert (hw_protocol, hook) == (m.hw_protocol, m.hook)
        assert struct.unpack("!I", tl[NFULA_IFINDEX_INDEV])[0] == m.indev == 1
        assert struct.unpack("!I", tl[NFULA_MARK])[0] == m.mark == 0xBEEF
    assert [udp_data(m) for m in mine] == payloads
    assert [m.family for m in mine] == [Family.IPV6 if i % 3 == 2 else Family.IPV4
                                        for i in range(K)]
