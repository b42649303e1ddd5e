# SPDX-License-Identifier: GPL-2.0-or-later
"""The wake-up pipe every blocking loop of nfbind waits on.

A loop that blocks in ``poll()`` must return when another thread, or a
signal handler, asks it to: a flag alone is not enough, since Python retries
an interrupted ``poll()`` after running the handler (PEP 475).  So the loop
also waits on the read end of a pipe, and whoever wants it back writes one
byte to it.  The flag that says *why* stays with the caller; this module only
wakes, and forgets the wake-up once a wait has seen it.

:class:`WakePipe` is the pipe, :meth:`WakePipe.waiter` a wait on some
descriptors plus the pipe.  ``NfQueue``/``NfLog``/``EventStream`` loops,
:func:`nfbind.serve` (the supervisor and each worker) and the NetfilterQueue
shim all use them.
"""
from __future__ import annotations

import os
import select
from typing import Iterable, List, Optional

__all__ = ["WakePipe", "Waiter"]


class WakePipe:
    """A non-blocking, close-on-exec self-pipe.

    ``wake()`` is safe from any thread and from a signal handler, and does
    nothing once the pipe is closed.  Use ``r`` (the read end) where an
    event loop wants a descriptor, e.g. ``loop.add_reader(pipe.r, ...)``.
    """

    __slots__ = ("r", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Make the current (or next) wait return."""
        try:
            os.write(self.w, b"x")
        except OSError:  # closed, or full (a wake-up is already pending)
            pass

    def clear(self) -> None:
        """Forget the wake-ups written so far."""
        try:
            while os.read(self.r, 4096):
                pass
        except OSError:  # empty (EAGAIN), or closed
            pass

    def waiter(self, fds: Iterable[int] = ()) -> "Waiter":
        """A :class:`Waiter` on ``fds`` and this pipe."""
        return Waiter(self, fds)

    def close(self) -> None:
        """Close both ends; safe to call twice."""
        r, w, self.r, self.w = self.r, self.w, -1, -1
        for fd in (r, w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


class Waiter:
    """Block until one of some descriptors is ready or the pipe is woken.

    The ``poll()`` set is built once, so a loop keeps one Waiter for as long
    as its descriptors stay the same.
    """

    __slots__ = ("_poll", "_wake_fd", "_pipe")

    def __init__(self, pipe: WakePipe, fds: Iterable[int] = ()) -> None:
        self._pipe = pipe
        self._wake_fd = pipe.r
        self._poll = select.poll()
        self._poll.register(pipe.r, select.POLLIN)
        for fd in fds:
            self._poll.register(fd, select.POLLIN)

    def wait(self, timeout: Optional[float] = None) -> List[int]:
        """Wait up to ``timeout`` seconds (None: without limit).

        Returns the descriptors among ``fds`` that are readable or have hung
        up, in the kernel's order; an empty list when the pipe was woken or
        the time ran out.  A wake-up is consumed by the wait it ends: the
        pipe is emptied before this returns.  The GIL is released while
        waiting.
        """
        events = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000)))
        ready = []
        for fd, _ in events:
            if fd == self._wake_fd:
                self._pipe.clear()
            else:
                ready.append(fd)
        return ready
