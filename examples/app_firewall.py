#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# An application firewall: outgoing connections are allowed per program.
# The first packet of each new connection is queued; the program that sent it
# is looked up (pkt.process()); a program on the allow list passes, one on
# the deny list is dropped, and for an unknown one the firewall asks on stdin
#
#   allow /usr/bin/curl? [y/N]
#
# and remembers the answer.  Packets wait while it asks; when nobody answers
# within --timeout seconds they are accepted (or dropped, with
# --drop-on-timeout) and the question is given up (asked again next time).
#
# The rule it needs (the first packet of every new outgoing connection, TCP
# or UDP, to queue 0; later packets of an allowed connection pass unqueued):
#
#   iptables -A OUTPUT -p tcp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 0
#   iptables -A OUTPUT -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 0
#   # (ip6tables likewise for IPv6)
#
# Run as root (or with CAP_NET_ADMIN and read access to /proc/*/fd):
#   python3 app_firewall.py [--allow /usr/bin/curl] [--timeout 10] [--drop-on-timeout]
"""Allow or deny outgoing connections per program, asking on stdin."""
import argparse
import collections
import sys
import threading

from nfbind import NfQueue, Verdict, VerdictError


class AppFirewall:
    """The allow list, the questions and the packets waiting for answers."""

    def __init__(self, allow, deny, on_timeout):
        self.allowed = set(allow)
        self.denied = set(deny)
        self.on_timeout = on_timeout
        self.lock = threading.Lock()
        self.waiting = collections.defaultdict(list)   # program -> packets
        self.questions = collections.deque()           # programs still to ask about
        self.asking = None                             # the question on screen

    def say(self, text):
        print(text, flush=True)

    # -- the queue's loop ------------------------------------------------------------------

    def handle(self, pkt):
        """The handler: a verdict for known programs, None (wait) for others."""
        proc = pkt.process()
        exe = proc.exe if proc is not None else None
        with self.lock:
            if exe is None:
                # forwarded, or its program already gone: nobody to ask about
                self.say("packet %d: no local program; %s" % (pkt.id, self.on_timeout.name))
                return self.on_timeout
            if exe in self.allowed:
                self.say("allowed %s (pid %d)" % (exe, proc.pid))
                return Verdict.ACCEPT
            if exe in self.denied:
                self.say("denied %s (pid %d)" % (exe, proc.pid))
                return Verdict.DROP
            self.waiting[exe].append(pkt)
            if exe != self.asking and exe not in self.questions:
                self.questions.append(exe)
                self._next_question()
        return None     # the answer, or the deadline, gives the verdict

    def timed_out(self, pkt):
        """on_timeout: the packet waited too long for an answer."""
        with self.lock:
            for exe, pkts in self.waiting.items():
                if pkt in pkts:
                    pkts.remove(pkt)
                    if not pkts:
                        del self.waiting[exe]
                        self.say("no answer for %s: %s" % (
                            exe, "accepted" if self.on_timeout == Verdict.ACCEPT else "dropped"))
                        if exe == self.asking:
                            self.asking = None
                            self._next_question()
                        elif exe in self.questions:
                            self.questions.remove(exe)
                    break
        return self.on_timeout

    # -- stdin -----------------------------------------------------------------------------

    def _next_question(self):
        if self.asking is None and self.questions:
            self.asking = self.questions.popleft()
            self.say("allow %s? [y/N]" % self.asking)

    def answer(self, line):
        """One line typed on stdin: the answer to the question on screen."""
        with self.lock:
            exe = self.asking
            if exe is None:
                return
            yes = line.strip().lower() in ("y", "yes")
            (self.allowed if yes else self.denied).add(exe)
            self.asking = None
            pkts = self.waiting.pop(exe, [])
            self.say("%s %s" % ("allowing" if yes else "denying", exe))
            self._next_question()
        for pkt in pkts:
            try:
                pkt.accept() if yes else pkt.drop()
            except VerdictError:    # its deadline came first: it has on_timeout's verdict
                pass

    def read_answers(self, stream):
        for line in stream:
            self.answer(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", type=int, default=0, help="the --queue-num of the rules (default 0)")
    ap.add_argument("--allow", action="append", default=[], metavar="EXE",
                    help="a program to allow without asking (repeatable)")
    ap.add_argument("--deny", action="append", default=[], metavar="EXE",
                    help="a program to deny without asking (repeatable)")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds a packet waits for an answer (default 10)")
    ap.add_argument("--drop-on-timeout", action="store_true",
                    help="drop packets nobody answered for (default: accept them)")
    ap.add_argument("--run-for", type=float, default=None,
                    help="stop after this many seconds without a packet (default: never)")
    args = ap.parse_args(argv)

    fw = AppFirewall(args.allow, args.deny,
                     Verdict.DROP if args.drop_on_timeout else Verdict.ACCEPT)
    threading.Thread(target=fw.read_answers, args=(sys.stdin,), daemon=True).start()
    with NfQueue(args.queue, verdict_timeout=args.timeout, on_timeout=fw.timed_out,
                 copy_range=128) as q:
        fw.say("app firewall on queue %d (timeout %.1f s: %s)" % (
            args.queue, args.timeout, "drop" if args.drop_on_timeout else "accept"))
        q.run(fw.handle, timeout=args.run_for)
        st = q.stats
        fw.say("%d packets, %d timed out" % (st.packets, st.timeouts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
