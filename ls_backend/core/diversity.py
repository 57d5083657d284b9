"""Diversity selection on L2-normalised embeddings, where cosine similarity is a dot product.

Every function takes and returns row indices of ``embeddings`` (one index space: the pool).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.labels import Embeddings

#: Cap on one similarity block (rows x columns), so a 100k pool never builds a 100k x L matrix.
_BLOCK = 1 << 22


def max_similarity(
    embeddings: Embeddings, rows: NDArray[np.int64], to: NDArray[np.int64]
) -> NDArray[np.float32]:
    """For each of ``rows``, the cosine similarity to its nearest item of ``to`` (-1 if none)."""
    best = np.full(rows.size, -1.0, dtype=np.float32)
    if rows.size == 0 or to.size == 0:
        return best
    x = embeddings[rows]
    step = max(1, _BLOCK // rows.size)
    for start in range(0, to.size, step):
        sims = x @ embeddings[to[start : start + step]].T
        np.maximum(best, sims.max(axis=1), out=best)
    return best


def k_center_greedy(
    embeddings: Embeddings,
    labeled_idx: NDArray[np.int64],
    n: int,
    candidates: NDArray[np.int64] | None = None,
) -> NDArray[np.int64]:
    """Core-set selection (Sener & Savarese 2018): repeatedly pick the candidate farthest from
    everything labeled or picked. Returns up to ``n`` indices of ``embeddings``, in pick order.

    With nothing labeled the first pick is the candidate nearest the centroid, so the
    selection starts in the bulk of the data rather than at an outlier.
    """
    cand = (
        np.setdiff1d(np.arange(embeddings.shape[0]), labeled_idx)
        if candidates is None
        else np.asarray(candidates, dtype=np.int64)
    )
    n = min(n, cand.size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    x = embeddings[cand]
    nearest = max_similarity(embeddings, cand, np.asarray(labeled_idx, dtype=np.int64))
    picks = np.empty(n, dtype=np.int64)
    for i in range(n):
        if i == 0 and labeled_idx.size == 0:
            centre = x.mean(axis=0)
            j = int(np.argmax(x @ centre))
        else:
            j = int(np.argmin(nearest))  # farthest in cosine distance
        picks[i] = j
        np.maximum(nearest, x @ x[j], out=nearest)
        nearest[j] = np.inf  # never again
    return cand[picks]


def spread_in_order(
    embeddings: Embeddings, order: NDArray[np.int64], n: int, max_sim: float
) -> NDArray[np.int64]:
    """Walk ``order`` (best first) and keep an item only if its cosine similarity to every item
    kept so far is below ``max_sim``: a near-duplicate filter that keeps the order's priority.
    Returns up to ``n`` indices of ``embeddings``.
    """
    if order.size == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    x = embeddings[order]
    nearest = np.full(order.size, -1.0, dtype=np.float32)
    open_ = np.ones(order.size, dtype=bool)
    kept: list[int] = []
    while len(kept) < n:
        free = np.flatnonzero(open_ & (nearest < max_sim))
        if free.size == 0:
            break
        j = int(free[0])
        kept.append(j)
        open_[j] = False
        np.maximum(nearest, x @ x[j], out=nearest)
    return order[np.asarray(kept, dtype=np.int64)]


def typical(
    embeddings: Embeddings, candidates: NDArray[np.int64], k: int = 10
) -> NDArray[np.int64]:
    """The denser half of ``candidates``: mean cosine similarity to their ``k`` nearest
    neighbours among ``candidates`` at or above the median. k-center on these explores the
    bulk of the data instead of its outliers. Quadratic in ``candidates``: pass a sample."""
    if candidates.size <= k + 1:
        return candidates
    x = embeddings[candidates]
    sims = x @ x.T
    nearest = np.partition(sims, sims.shape[1] - k - 1, axis=1)[:, -k - 1 :]
    density = (nearest.sum(axis=1) - sims.diagonal()) / k  # the k+1 nearest include itself
    dense: NDArray[np.int64] = candidates[density >= np.median(density)]
    return dense
