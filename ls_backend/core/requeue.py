"""When a new ranking is worth pushing to Label Studio's queue.

A push writes the front of the ranking (``SYNC_TOP_K`` tasks) into Label Studio as
predictions and later deletes the ones it replaces: a few hundred small writes on the
database annotators save into. So a re-rank is pushed only when it changes what
annotators get next, or when the queue needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A model of another kind (zero-shot -> head, head <-> adapter) re-orders the queue at once
#: if it moves more than this share of the tasks still waiting out of the new front. A head
#: refitted on a few more labels waits for SYNC_EVERY: on a large pool every refit reshuffles
#: the most uncertain 50 (at 100,000 tasks each one moved 98-100%), and a push per label kept
#: the lane too busy to serve the SYNC_EVERY push on time.
MIN_KEPT = 0.8


def push_reason(
    front: Sequence[int],
    waiting: Sequence[int] | None,
    *,
    top_k: int,
    new_labels: int,
    sync_every: int,
    forced: bool = False,
    pool_grew: bool = False,
    backlog_full: bool = False,
    new_kind: bool = False,
) -> str | None:
    """Why the new ``front`` (task ids, best first) should replace the queue, or None.

    ``waiting``: the pushed tasks that are still unlabeled, in queue order (None before the
    first push); ``new_labels``: labels since the last push; ``pool_grew``: the ranked
    sample of a large import grew enough since the last push to be worth one (the caller
    says how much);
    ``backlog_full``: so many replaced predictions wait to be deleted that only a request or
    a queue running low may add more (labeling faster than they can go keeps them bounded);
    ``new_kind``: the front comes from a model of another kind than the queue's.
    """
    if forced:
        return "requested"
    if waiting is None:
        return "first ranking"
    if len(waiting) < top_k / 2 and len(front) > len(waiting):
        return f"queue running low ({len(waiting)} of {top_k} left)"
    if backlog_full:
        return None
    if new_labels >= sync_every:
        return f"{new_labels} new labels"
    if pool_grew:
        return "more tasks ranked"
    if waiting and new_kind:
        kept = len(set(front[: len(waiting)]) & set(waiting)) / len(waiting)
        if kept < MIN_KEPT:
            return f"the new model moves {1 - kept:.0%} of the queued tasks out of the front"
    return None
