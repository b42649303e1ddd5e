# SPDX-License-Identifier: GPL-2.0-or-later
"""nfdump's IPFIX collector ``nfcapd`` run inside a test's namespace, and what
``nfdump -r`` reads back from its files; a small IPFIX decoder for the unit
tests (RFC 7011 messages, written apart from nfbind's encoder)."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from typing import Dict, List, Optional, Tuple


class Nfcapd:
    """``nfcapd`` listening on ``host:port`` inside ``ns``, writing to ``flowdir``."""

    def __init__(self, ns, flowdir: str, port: int = 4739, host: str = "127.0.0.1") -> None:
        self.flowdir = flowdir
        self.port = port
        args = ["nfcapd", "-w", flowdir, "-p", str(port), "-b", host, "-t", "3600"]
        if ":" in host:
            args.append("-6")
        self.log = open(os.path.join(flowdir, "nfcapd.log"), "wb")
        self.p = ns.popen(*args, stdout=self.log, stderr=subprocess.STDOUT)
        # listening: ss shows the socket (bounded wait)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = ns.run("ss", "-Hlun", check=False)
            if ":%d " % port in out + " ":
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("nfcapd did not listen on %s:%d: %s" % (host, port, self.text()))

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(os.path.join(self.flowdir, "nfcapd.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> str:
        """SIGTERM (nfcapd then writes its file out), wait, and return its log."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                raise AssertionError("nfcapd ignored SIGTERM: " + self.text())
        self.log.close()
        return self.text()

    def flows(self) -> List[dict]:
        """Every flow in the files nfcapd wrote (``nfdump -r FILE -o json``)."""
        out: List[dict] = []
        files = sorted(f for f in os.listdir(self.flowdir)
                       if f.startswith("nfcapd.") and f != "nfcapd.log"
                       and not f.startswith("nfcapd.current"))
        assert files, "nfcapd wrote no file: %s" % os.listdir(self.flowdir)
        for name in files:
            r = subprocess.run(["nfdump", "-r", os.path.join(self.flowdir, name), "-o", "json"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            text = r.stdout.strip()
            if text:
                out += json.loads(text)
        return out


# -- a decoder, for the unit tests -------------------------------------------------------


def decode(msg: bytes, templates: Dict[int, List[Tuple[int, int, int]]]) -> dict:
    """One IPFIX message: its header fields, the templates it defines (added
    to ``templates``) and its data records as {(element, pen): int or bytes}."""
    version, length, export_time, seq, domain = struct.unpack_from("!HHIII", msg)
    assert version == 10, version
    assert length == len(msg), (length, len(msg))
    out = {"export_time": export_time, "sequence": seq, "domain": domain,
           "templates": [], "records": []}
    off = 16
    while off < length:
        sid, slen = struct.unpack_from("!HH", msg, off)
        assert slen >= 4 and off + slen <= length, (sid, slen, off, length)
        body, end = off + 4, off + slen
        if sid == 2:
            while end - body >= 4:
                tid, count = struct.unpack_from("!HH", msg, body)
                body += 4
                fields = []
                for _ in range(count):
                    ie, flen = struct.unpack_from("!HH", msg, body)
                    body += 4
                    pen = 0
                    if ie & 0x8000:
                        (pen,) = struct.unpack_from("!I", msg, body)
                        body += 4
                        ie &= 0x7FFF
                    fields.append((ie, flen, pen))
                templates[tid] = fields
                out["templates"].append(tid)
        else:
            assert sid >= 256, sid
            fields = templates[sid]
            size = sum(f[1] for f in fields)
            while end - body >= size:
                rec: Dict[Tuple[int, int], object] = {"template": sid}  # type: ignore[dict-item]
                for ie, flen, pen in fields:
                    raw = msg[body:body + flen]
                    body += flen
                    rec[(ie, pen)] = raw if flen in (4, 16) else int.from_bytes(raw, "big")
                out["records"].append(rec)
        off = end
    return out


def element(rec: dict, ie: int, pen: int = 0) -> Optional[object]:
    return rec.get((ie, pen))
