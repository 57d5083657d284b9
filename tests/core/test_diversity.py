import numpy as np

from ls_backend.core.diversity import k_center_greedy, max_similarity, spread_in_order, typical


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clusters(n_per: int = 20, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k tight, well separated clusters in 16-d; returns (embeddings, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:k] * 10
    x = np.repeat(centres, n_per, axis=0) + rng.normal(size=(k * n_per, 16))
    return unit(x), np.repeat(np.arange(k), n_per)


def test_k_center_covers_every_cluster_before_repeating_one() -> None:
    x, cluster = clusters()
    picks = k_center_greedy(x, np.zeros(0, dtype=np.int64), 4)
    assert sorted(cluster[picks]) == [0, 1, 2, 3]


def test_k_center_goes_where_nothing_is_labeled_yet() -> None:
    x, cluster = clusters()
    labeled = np.flatnonzero(cluster < 3)[::5]
    picks = k_center_greedy(x, labeled, 1)
    assert cluster[picks[0]] == 3
    assert not np.isin(picks, labeled).any()


def test_k_center_picks_only_from_candidates_and_returns_pool_indices() -> None:
    x, _ = clusters()
    candidates = np.array([3, 17, 42, 55, 79])
    picks = k_center_greedy(x, np.array([0]), 10, candidates)
    assert sorted(picks) == sorted(candidates)  # asks for more than there are: all, once


def test_max_similarity_matches_a_brute_force_answer() -> None:
    x, _ = clusters()
    rows, to = np.arange(0, 80, 3), np.arange(1, 80, 7)
    assert np.allclose(max_similarity(x, rows, to), (x[rows] @ x[to].T).max(axis=1), atol=1e-6)


def test_spread_in_order_drops_near_duplicates_and_keeps_the_priority() -> None:
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(5, 32)))
    x = unit(np.vstack([base, base + 0.01 * rng.normal(size=base.shape)]))  # rows i and i + 5 twins
    order = np.array([0, 5, 1, 6, 2, 7, 3, 8, 4, 9])
    kept = spread_in_order(x, order, 10, max_sim=0.95)
    assert list(kept) == [0, 1, 2, 3, 4]


def test_typical_keeps_the_bulk_and_drops_outliers() -> None:
    rng = np.random.default_rng(2)
    bulk = unit(np.eye(16)[0] * 5 + rng.normal(size=(30, 16)))
    outliers = unit(rng.normal(size=(10, 16)))
    x = np.vstack([bulk, outliers])
    kept = typical(x, np.arange(40), k=5)
    assert (kept < 30).all()
    assert kept.size >= 15
