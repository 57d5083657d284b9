"""While people label, the background work of a process takes turns under one duty cycle.

On a small box Label Studio serves the annotators' saves from the cores we embed, read and
train on, and no OS priority keeps a busy core from slowing it: a save -> next task on two
cores took 1.84x as long beside two niced (nice 10) threads multiplying matrices as on an
idle box (``benchmarks/contention.py``). So every piece of background work (a block of
texts to embed for the queue, a page read from Label Studio, a push, a head round) is a
*turn*: one at a time, each followed by a rest sized from what it took, so that together
they take at most ``duty`` of the time; and none starts within ``quiet_s`` of a label seen
by this process (the webhook comes inside the annotator's save: the rest of it and the
next-task request follow). Labeling counts as going on for ``ACTIVE_S`` after the last label
or skip; without it nothing is paced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Labeling goes on for this long after the last label or skip.
ACTIVE_S = 30.0
#: No paced turn starts this soon after a label: the save's end and the next-task request.
QUIET_S = 0.5
#: A turn that waits looks again this often (a label meanwhile pushes the start back).
LOOK_S = 0.1


def labeling_since(last_label: float, now: float | None = None) -> bool:
    """A label or skip at ``last_label`` (a Unix time, 0 for never) means labeling goes on."""
    return (time.time() if now is None else now) - last_label < ACTIVE_S


class Pacer:
    """Turns of background work in one process (``turn``), paced while people label."""

    def __init__(
        self,
        duty: float,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self.duty, self.quiet_s = duty, quiet_s
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._turns = threading.Lock()  # one paced turn at a time
        self._free_at = float("-inf")  # when the next paced turn may start
        self._last_label = float("-inf")
        self._inside = threading.local()  # a turn within a turn is part of it

    def label_seen(self) -> None:
        """A label or skip just arrived: the annotator is in the middle of a save."""
        with self._lock:
            now = self._clock()
            self._last_label = now
            self._free_at = max(self._free_at, now + self.quiet_s)

    def active(self) -> bool:
        """A label reached this process in the last ACTIVE_S."""
        return self._clock() - self._last_label < ACTIVE_S

    def wait_s(self, labeling: bool = False) -> float:
        """Seconds before a turn could start now (0 when unpaced)."""
        if self.duty >= 1 or not (labeling or self.active()):
            return 0.0
        with self._lock:
            return max(0.0, self._free_at - self._clock())

    @contextmanager
    def turn(self, *, labeling: bool = False, urgent: bool = False) -> Iterator[None]:
        """One piece of background work. Paced when people label (``labeling``: seen by the
        caller in the store, say by another process; or a label seen here), unless
        ``urgent`` (the first ranking of a project)."""
        paced = self.duty < 1 and not urgent and (labeling or self.active())
        if getattr(self._inside, "depth", 0) or not paced:
            with self._within():
                yield
            return
        with self._turns:
            while (delay := self.wait_s(labeling=True)) > 0:
                self._sleep(min(delay, LOOK_S))
            began = self._clock()
            try:
                with self._within():
                    yield
            finally:
                with self._lock:
                    ended = self._clock()
                    rest = (ended - began) * (1 / self.duty - 1)
                    self._free_at = max(self._free_at, ended + rest)

    @contextmanager
    def _within(self) -> Iterator[None]:
        self._inside.depth = getattr(self._inside, "depth", 0) + 1
        try:
            yield
        finally:
            self._inside.depth -= 1
