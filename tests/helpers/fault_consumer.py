# SPDX-License-Identifier: GPL-2.0-or-later
"""An NFQUEUE consumer run as a child process by test_faults_queue.py (not
collected by pytest): the process that gets SIGINT or SIGKILL mid-stream.

    python fault_consumer.py QUEUE_NUM RECORD_FILE MODE OPTIONS-AS-JSON

It binds ``QUEUE_NUM`` (inside the namespace it was started in), prints
``ready`` and handles the stream of test datagrams (an 8-byte sequence
number, then the tag ``ORIG``): a sequence number with ``seq % drop_mod ==
drop_mod - 1`` is dropped, every other one accepted with ``mark`` and its tag
rewritten to ``IGOR`` (two 16-bit words swapped, so the UDP checksum holds).

Every verdict is recorded in ``RECORD_FILE`` as a native uint32
``seq << 2 | code`` (code 1: accepted, 2: dropped), appended with plain
``os.write`` calls, so what was written survives a SIGKILL:

* ``run`` mode: ``q.run(handler)`` until SIGINT (the KeyboardInterrupt
  run() absorbs); records are written in chunks from the handler, so a
  recorded verdict may still be in the batch being sent.  Then ``close()``
  and one JSON line on stdout: the last records, the packet the interrupt
  hit inside the handler (if any), the queue's stats, the queue's /proc row
  just before close.
* ``drain`` mode: poll() and ``q.drain(handler)``; the records of a drain
  are written after it returned, i.e. after their verdicts were sent, so a
  recorded packet is never one the kernel still held.  Runs until killed.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
from array import array

from nfbind import NfQueue

ACCEPTED, DROPPED = 1, 2
SEQ_OFF, TAG_OFF = 0, 8  # in the UDP data


def proc_row(num: int) -> dict:
    """This queue's row of /proc/net/netfilter/nfnetlink_queue, or {}."""
    names = ("queue", "portid", "waiting", "copy_mode", "copy_range", "queue_dropped",
             "user_dropped", "id_sequence")
    with open("/proc/net/netfilter/nfnetlink_queue") as f:
        for line in f:
            fields = [int(x) for x in line.split()[:len(names)]]
            if fields[0] == num:
                return dict(zip(names, fields))
    return {}


def main() -> int:
    # SIGINT is what the test sends: take it even when this process was
    # started with it ignored (a shell's background job inherits SIG_IGN,
    # and Python then installs no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    num = int(sys.argv[1])
    record_fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    mode = sys.argv[3]
    opts = json.loads(sys.argv[4])
    drop_mod = opts.get("drop_mod", 0)
    mark = opts["mark"]
    chunk = opts.get("chunk", 64)
    records = array("I")
    current = [-1]  # the sequence number being handled, -1 between packets

    def flush() -> None:
        # SIGINT held off meanwhile: its KeyboardInterrupt comes before or
        # after, so no record is lost or written twice
        if records:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                os.write(record_fd, records.tobytes())
                del records[:]
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def handler(pkt):
        p = pkt.payload
        data = ((p[0] & 15) << 2) + 8
        seq = int.from_bytes(p[data:data + 8], "big")
        current[0] = seq
        # the verdict first, then its record: a recorded packet has its verdict
        if drop_mod and seq % drop_mod == drop_mod - 1:
            pkt.drop()
            records.append(seq << 2 | DROPPED)
        else:
            t = data + TAG_OFF
            pkt.accept(mark=mark, payload=p[:t] + p[t + 2:t + 4] + p[t:t + 2] + p[t + 4:])
            records.append(seq << 2 | ACCEPTED)
        if mode == "run" and len(records) >= chunk:
            flush()
        current[0] = -1

    q = NfQueue(num, max_len=opts.get("max_len", 4096), fail_open=opts.get("fail_open", False))
    with q:
        print("ready", flush=True)
        if mode == "drain":
            poller = select.poll()
            poller.register(q.fileno(), select.POLLIN)
            while True:
                poller.poll(1000)
                q.drain(handler)
                flush()
        q.run(handler)  # returns on SIGINT
        interrupted = current[0]
        flush()
        before = dict(q.stats.as_dict(), proc=proc_row(num))
    after = q.stats.as_dict()
    os.close(record_fd)
    print(json.dumps({"interrupted": interrupted, "before_close": before,
                      "after_close": after}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
