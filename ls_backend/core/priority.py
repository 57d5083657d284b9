"""A lock that lets live requests cut in front of background work.

One model forward pass runs at a time per process (torch already uses every core).
Background work (embedding an import, scoring a pool for a sync) takes the lock in
small pieces and yields to any live request waiting, so a ``/predict`` that Label
Studio makes while an annotator waits never queues behind a whole sync.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityLock:
    """Mutual exclusion where foreground holders go before background ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._foreground_waiting = 0

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
            self._cond.wait_for(lambda: not self._held and self._foreground_waiting == 0)
            self._held = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()
