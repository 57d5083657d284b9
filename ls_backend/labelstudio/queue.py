"""What Label Studio's queue holds, as the project's store remembers it: the rankings pushed
(the last one serves), and which of the replaced ones' predictions may be deleted without
failing an annotator's save (one that names a deleted prediction as its origin is refused).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray

from ls_backend.store.annotations import AnnotationStore

#: Tasks past the last one labeled from a ranking that an annotator may still have open, per
#: person who labeled in the last ACTIVE_S (one open task each, doubled for safety).
OPEN_PER_ANNOTATOR = 2
ACTIVE_S = 3600.0
#: A task served by a ranking may be saved this long after the next one replaced it.
SAVE_GRACE_S = 120.0
#: Label Studio's default task lock (TASK_LOCK_TTL): nobody still has a task open after this.
HOLD_S = 86400.0
#: Old predictions allowed to wait for a quiet spell while people label: STALE_CAP_K x
#: SYNC_TOP_K, or a share of the project's tasks where that is more (a 100,000-task project
#: keeps 1,000: Label Studio's deletes are slower there, and a full backlog holds pushes).
STALE_CAP_K = 4
STALE_CAP_SHARE = 0.01


def stale_cap(top_k: int, tasks: int) -> int:
    """Replaced-ranking predictions that may wait for a quiet spell while people label."""
    return max(STALE_CAP_K * top_k, int(STALE_CAP_SHARE * tasks))


def priorities(n: int) -> NDArray[np.float64]:
    """Queue position -> a score in (0, 1): Label Studio serves the lowest first and
    silently drops scores outside [0, 1]."""
    return (np.arange(n, dtype=np.float64) + 1.0) / (n + 1.0)


@dataclass
class Ranking:
    """A ranking version pushed to Label Studio, kept in the store until its predictions
    are gone from Label Studio (recorded before its import, so a crash mid-push leaks none)."""

    version: str
    tasks: list[int]  # in queue order
    pushed: float
    stale_since: float | None = None  # when another ranking replaced it
    deleted: list[int] = field(default_factory=list)  # tasks whose prediction is gone
    ids: list[int] = field(default_factory=list)  # prediction ids by task, when pushed one by one
    # What the admin's queue panel shows, by task: why it is there (core.ranking.REASONS),
    # the pre-annotation pushed and the uncertainty it was ranked by.
    reasons: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)

    def deletable(self, touched: set[int], served: set[int], margin: int, now: float) -> list[int]:
        """Tasks whose prediction of this ranking no editor can still hold: annotators took
        tasks front to back, so past the last one labeled or skipped while this ranking
        served (``served``) at most ``margin`` are open; untouched ones before it may be open
        too (left unsaved). Tasks labeled under later rankings (``touched``) are not open."""
        gone = set(self.deleted)
        left = [t for t in self.tasks if t not in gone]
        if self.stale_since is not None and now - self.stale_since > HOLD_S:
            return left
        reached = max((i + 1 for i, t in enumerate(self.tasks) if t in served), default=0)
        maybe_open = {t for t in self.tasks[: reached + margin] if t not in touched}
        return [t for t in left if t not in maybe_open]


@dataclass
class QueueState:
    """What Label Studio's queue holds, as the project's store remembers it."""

    rankings: list[Ranking] = field(default_factory=list)  # the last one serves
    label_seq: int = 0  # last label event counted at the last push
    forced_seq: int = 0  # last explicit request served
    pushes: int = 0
    complete: bool = True  # every readable task was ranked at the last push
    ranked: int = 0  # tasks ranked at the last push
    baseline: dict[str, int] | None = None  # mirror and Label Studio counts at the last full read

    @classmethod
    def load(cls, store: AnnotationStore) -> QueueState:
        raw = store.queue_state()
        if raw is None:
            return cls()
        data = json.loads(raw)
        data["rankings"] = [Ranking(**r) for r in data.get("rankings", [])]
        return cls(**data)

    def save(self, store: AnnotationStore) -> None:
        store.set_queue_state(json.dumps(asdict(self)))

    @property
    def serving(self) -> Ranking | None:
        return self.rankings[-1] if self.rankings else None

    def backlog(self, store: AnnotationStore) -> int:
        """Predictions of replaced rankings that may be deleted now (not those an annotator
        may still have open: they wait for Label Studio's task lock, and must not hold up
        pushes meanwhile)."""
        return sum(len(doomed) for _, doomed in self.deletable(store))

    def deletable(self, store: AnnotationStore) -> list[tuple[Ranking, list[int]]]:
        """Each replaced ranking with the tasks whose prediction of it may be deleted now."""
        now = time.time()
        touched = store.touched_tasks()
        margin = OPEN_PER_ANNOTATOR * max(1, store.annotators_since(now - ACTIVE_S))
        work = []
        for ranking in self.rankings[:-1]:
            if ranking.stale_since is None:
                continue
            served = store.touched_between(ranking.pushed, ranking.stale_since + SAVE_GRACE_S)
            work.append((ranking, ranking.deletable(touched, served, margin, now)))
        return work
