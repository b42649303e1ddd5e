# SPDX-License-Identifier: GPL-2.0-or-later
"""NfQueue(on_error=callable): a handler's exception goes to
``on_error(pkt, exc)``, whose verdict the packet gets (None: the packet
keeps the deferred semantics of a handler that returned None); then nothing
leaves run().  An exception of the callable itself gives the packet
``default_verdict`` and comes out of run().  Real packets in a throw-away
namespace."""
from __future__ import annotations

import threading
from typing import List

import pytest

from nfbind import NfQueue, Verdict, VerdictError

from helpers.packets import recv_all

pytestmark = pytest.mark.integration

PORT = 5631
QNUM = 31


@pytest.fixture
def udp(ns):
    ns.iptables("-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE",
                "--queue-num", str(QNUM))
    r = ns.socket()
    r.bind(("127.0.0.1", PORT))
    s = ns.socket()
    s.bind(("127.0.0.1", 0))
    yield r, s
    r.close()
    s.close()


def _send(s, n: int) -> List[bytes]:
    out = [b"p%d" % i for i in range(n)]
    for p in out:
        s.sendto(p, ("127.0.0.1", PORT))
    return out


def _data(pkt) -> bytes:
    return pkt.payload[28:]


def _handler(pkt):
    """Raises on odd packets, accepts even ones."""
    if int(_data(pkt)[1:]) % 2:
        raise KeyError(_data(pkt))
    return Verdict.ACCEPT


def test_callable_decides_and_nothing_leaves_run(ns, udp):
    r, s = udp
    calls = []

    def on_error(pkt, exc):
        calls.append((_data(pkt), type(exc), pkt.has_verdict))
        return Verdict.DROP if _data(pkt) == b"p1" else Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name, on_error=on_error) as q:
        assert q.on_error is on_error
        _send(s, 6)
        q.run(_handler, timeout=0.3)          # does not raise
        assert calls == [(b"p1", KeyError, False), (b"p3", KeyError, False),
                         (b"p5", KeyError, False)]
        assert q.stats.handler_errors == 3 and q.stats.pending == 0
        assert q.stats.verdicts[Verdict.DROP] == 1
    assert sorted(recv_all(r, 0.3)) == [b"p0", b"p2", b"p3", b"p4", b"p5"]


def test_callable_for_a_bad_handler_result(ns, udp):
    r, s = udp
    seen = []

    def on_error(pkt, exc):
        seen.append(exc)
        return Verdict.DROP

    with NfQueue(QNUM, netns=ns.name, on_error=on_error) as q:
        _send(s, 2)
        q.run(lambda pkt: "accept" if _data(pkt) == b"p0" else Verdict.ACCEPT, timeout=0.3)
    assert len(seen) == 1 and isinstance(seen[0], TypeError)
    assert "'accept'" in str(seen[0]) and "the verdict of on_error" in str(seen[0])
    assert recv_all(r, 0.3) == [b"p1"]


def test_callable_returning_none_defers_or_keeps_its_own_verdict(ns, udp):
    """None: a verdict the callable gave itself stands; a packet without one
    waits, as after a handler that returned None (here a thread accepts it
    later)."""
    r, s = udp
    later = []

    def on_error(pkt, exc):
        if _data(pkt) == b"p1":
            pkt.drop()
        else:
            later.append(pkt)
        return None

    with NfQueue(QNUM, netns=ns.name, on_error=on_error) as q:
        _send(s, 4)
        q.run(_handler, timeout=0.3)
        assert [_data(p) for p in later] == [b"p3"]
        assert q.stats.pending == 1
        t = threading.Thread(target=later[0].accept)
        t.start()
        t.join(5)
        assert q.stats.pending == 0
        with pytest.raises(VerdictError):
            later[0].drop()
    assert sorted(recv_all(r, 0.3)) == [b"p0", b"p2", b"p3"]


def test_callable_that_raises_gives_default_verdict_and_leaves_run(ns, udp):
    r, s = udp

    def on_error(pkt, exc):
        if _data(pkt) == b"p3":
            raise RuntimeError("on_error broke on p3")
        return Verdict.ACCEPT

    with NfQueue(QNUM, netns=ns.name, on_error=on_error,
                 default_verdict=Verdict.DROP) as q:
        _send(s, 6)
        with pytest.raises(RuntimeError, match="on_error broke on p3") as ei:
            q.run(_handler, timeout=0.3)
        # the handler's exception is the context of the callable's
        assert isinstance(ei.value.__context__, KeyError)
        # the rest of the batch was handled as usual
        assert q.stats.pending == 0 and q.stats.handler_errors == 3
    assert sorted(recv_all(r, 0.3)) == [b"p0", b"p1", b"p2", b"p4", b"p5"]


def test_callable_returning_a_bad_value(ns, udp):
    r, s = udp
    with NfQueue(QNUM, netns=ns.name, on_error=lambda pkt, exc: "drop",
                 default_verdict=Verdict.DROP) as q:
        _send(s, 2)
        with pytest.raises(ValueError, match="on_error returned 'drop'"):
            q.run(_handler, timeout=0.3)
        assert q.stats.pending == 0
    assert recv_all(r, 0.3) == [b"p0"]


@pytest.mark.parametrize("bad,exc", [("drop", TypeError), (Verdict.QUEUE, ValueError),
                                     (None, TypeError)])
def test_on_error_is_checked(ns, bad, exc):
    with pytest.raises(exc, match="on_error"):
        NfQueue(QNUM, netns=ns.name, on_error=bad)
