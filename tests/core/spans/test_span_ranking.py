"""The default ranking ranks by span uncertainty scores alone (no class probabilities)."""

from __future__ import annotations

import numpy as np

from ls_backend.core.ranking import rank_pool, rank_pool_explained


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_default_ranks_by_scores_without_probs_once_exploration_is_over() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 16)))
    scores = np.linspace(1.0, 0.0, 300)  # item 0 the least sure
    labeled = np.arange(250, 300)
    order = rank_pool("default", None, x, labeled, scores=scores, classes=1)
    assert sorted(order) == list(range(250))
    assert set(order[:10]) <= set(range(30))  # the top comes from the least sure items
    reasons = rank_pool_explained("default", None, x, labeled, scores=scores, classes=1).reasons
    assert reasons[0] == "uncertain"


def test_with_few_labels_and_many_span_types_the_default_still_explores() -> None:
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(300, 16)))
    scores = np.linspace(1.0, 0.0, 300)
    ranked = rank_pool_explained("default", None, x, np.arange(5), scores=scores, classes=20)
    assert "explore" in set(ranked.reasons[:10])


def test_without_scores_or_probs_the_default_is_pure_diversity() -> None:
    x = unit(np.random.default_rng(2).normal(size=(50, 8)))
    ranked = rank_pool_explained("default", None, x, np.zeros(0, dtype=np.int64))
    assert ranked.reasons[0] == "diversity"


def test_flat_scores_fall_back_to_diversity() -> None:
    x = unit(np.random.default_rng(3).normal(size=(50, 8)))
    order = rank_pool("default", None, x, np.array([1, 2]), scores=np.zeros(50), classes=4)
    assert np.array_equal(order, rank_pool("k_center", None, x, np.array([1, 2])))
