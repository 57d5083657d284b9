"""Who gets the CPU first: live requests before background work.

One model forward pass runs at a time per process (torch already uses every core).
Background work (embedding an import, scoring a pool for a sync) takes the lock in
small pieces and yields to any live request waiting, so a ``/predict`` that Label
Studio makes while an annotator waits never queues behind a whole sync; background
holders take turns, so a sync embedding an import never starves a training round.

Background threads also run at a lower OS priority (``lower_thread_priority``): on a small
box Label Studio serves annotators' saves from the same cores.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Niceness of background threads (training, syncs): the scheduler gives a nice-0 process
#: (Label Studio, our request threads) about 10x their share of a contended core.
BACKGROUND_NICENESS = 10


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's niceness to ``niceness`` (Linux: per thread; elsewhere the
    whole process, so only where threads have their own). Best effort and one way: an
    unprivileged thread cannot raise its priority again."""
    if not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except OSError as exc:  # a sandbox that forbids it: run at the normal priority
        log.debug("could not lower the priority of thread %d: %s", tid, exc)


class PriorityLock:
    """Mutual exclusion where foreground holders go before background ones, and background
    holders in the order they asked."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._foreground_waiting = 0
        self._tickets = 0
        self._background: deque[int] = deque()  # waiting background holders, first first

    @contextmanager
    def foreground(self) -> Iterator[None]:
        with self._cond:
            self._foreground_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._held)
            finally:
                self._foreground_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self) -> Iterator[None]:
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            self._background.append(ticket)
            try:
                self._cond.wait_for(
                    lambda: (
                        not self._held
                        and self._foreground_waiting == 0
                        and self._background[0] == ticket
                    )
                )
            except BaseException:  # interrupted: the next in line must not wait for us
                self._background.remove(ticket)
                self._cond.notify_all()
                raise
            self._background.popleft()
            self._held = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()
