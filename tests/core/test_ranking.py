import numpy as np
import pytest

from ls_backend.core.ranking import STRATEGIES, rank_pool, rank_pool_explained


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pool(n: int = 120, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = unit(rng.normal(size=(n, 24)))
    p = rng.dirichlet(np.ones(c), size=n).astype(np.float32)[:, :, None]
    return x, p


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("with_probs", [True, False])
def test_order_is_a_permutation_of_the_unlabeled_indices(strategy: str, with_probs: bool) -> None:
    x, p = pool(n=700)  # more than the default looks at for its head
    labeled = np.array([0, 5, 7, 99])
    order = rank_pool(strategy, p if with_probs else None, x, labeled)
    assert order.dtype == np.int64
    assert sorted(order) == sorted(set(range(700)) - set(labeled))


def test_margin_puts_the_coin_flip_before_the_sure_thing() -> None:
    x, _ = pool(n=3)
    p = np.array([[0.99, 0.01], [0.5, 0.5], [0.7, 0.3]], dtype=np.float32)[:, :, None]
    assert list(rank_pool("margin", p, x, np.zeros(0, dtype=np.int64))) == [1, 2, 0]


def test_default_keeps_near_duplicates_apart_at_the_top() -> None:
    # The 20 most uncertain items are 4 texts repeated 5 times each (spam campaigns do this).
    rng = np.random.default_rng(3)
    x, _ = pool(n=300)
    twins = unit(np.repeat(rng.normal(size=(4, 24)), 5, axis=0) + 1e-3 * rng.normal(size=(20, 24)))
    x[:20] = twins
    p = np.zeros((300, 2, 1), dtype=np.float32)
    p[:, 0, 0] = np.linspace(0.55, 0.99, 300)  # item 0 the most uncertain, 299 the least
    p[:, 1, 0] = 1 - p[:, 0, 0]
    labeled = np.arange(200, 300)  # enough labels that exploration is over
    head = rank_pool("default", p, x, labeled)[:10]
    sims = x[head] @ x[head].T
    assert sims[~np.eye(10, dtype=bool)].max() < 0.9
    assert len({int(i) // 5 for i in head if i < 20}) == 4  # each of the 4 texts still comes once
    plain = rank_pool("margin", p, x, labeled)[:10]
    assert set(plain) < set(range(20))  # what it guards against: margin takes the twins


def test_with_few_labels_the_default_explores_where_nothing_is_labeled() -> None:
    rng = np.random.default_rng(0)
    x = unit(np.repeat(np.eye(24)[:4] * 10, 50, axis=0) + rng.normal(size=(200, 24)))
    p = np.zeros((200, 2, 1), dtype=np.float32)
    p[:, 0, 0] = np.where(np.arange(200) < 50, 0.5, 0.9)  # the model hesitates in cluster 0 only
    p[:, 1, 0] = 1 - p[:, 0, 0]
    labeled = np.array([60, 61, 110, 111])  # clusters 1 and 2
    first = rank_pool("default", p, x, labeled)[:10]
    assert 3 in set(first // 50)  # the unlabeled cluster is visited
    assert 0 in set(first // 50)  # and the uncertain one too
    assert set(rank_pool("margin", p, x, labeled)[:10] // 50) == {0}


def test_without_predictions_the_default_spreads_over_the_pool() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(24)[:4] * 10
    x = unit(np.repeat(centres, 30, axis=0) + rng.normal(size=(120, 24)))
    first = rank_pool("default", None, x, np.zeros(0, dtype=np.int64))[:4]
    assert sorted(first // 30) == [0, 1, 2, 3]


def test_one_seen_class_gives_flat_scores_and_the_default_falls_back_to_diversity() -> None:
    x, _ = pool()
    p = np.zeros((120, 3, 1), dtype=np.float32)
    p[:, 1, 0] = 1.0
    order = rank_pool("default", p, x, np.array([1, 2]))
    assert np.array_equal(order, rank_pool("k_center", None, x, np.array([1, 2])))


def test_multi_label_ranks_by_the_least_certain_labels() -> None:
    x, _ = pool(n=2)
    p = np.array([[0.99, 0.01, 0.5], [0.99, 0.01, 0.99]], dtype=np.float32)[:, :, None]
    assert list(rank_pool("margin", p, x, np.zeros(0, dtype=np.int64), multi_label=True)) == [0, 1]


def test_the_same_rng_seed_gives_the_same_order() -> None:
    x, p = pool()
    runs = [rank_pool("default", p, x, np.array([3]), rng=np.random.default_rng(7)) for _ in "ab"]
    assert np.array_equal(*runs)


def test_bad_input_is_refused() -> None:
    x, p = pool()
    with pytest.raises(ValueError, match="unknown strategy"):
        rank_pool("bogus", p, x, np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="rows"):
        rank_pool("margin", p[:10], x, np.zeros(0, dtype=np.int64))


def test_default_ranks_by_precomputed_scores_when_given() -> None:
    # E.g. STAR's dynamic uncertainty: it overrides the default's own margin.
    x, _ = pool(n=60)
    p = np.full((60, 2, 1), 0.99, dtype=np.float32)
    p[:, 1] = 0.01
    p[0] = 0.5
    labeled = np.arange(20, 60)  # enough labels that exploration is over
    assert rank_pool("default", p, x, labeled)[0] == 0
    scores = np.zeros(60)
    scores[7] = 1.0
    assert rank_pool("default", p, x, labeled, scores=scores)[0] == 7


def test_the_default_says_why_each_task_is_where_it_is() -> None:
    rng = np.random.default_rng(3)
    x, _ = pool(n=300)
    twins = unit(np.repeat(rng.normal(size=(4, 24)), 5, axis=0) + 1e-3 * rng.normal(size=(20, 24)))
    x[:20] = twins
    p = np.zeros((300, 2, 1), dtype=np.float32)
    p[:, 0, 0] = np.linspace(0.55, 0.99, 300)
    p[:, 1, 0] = 1 - p[:, 0, 0]
    few = rank_pool_explained("default", p, x, np.array([250, 299]))
    assert "explore" in set(few.reasons[:10])  # two labels: exploration leads
    late = rank_pool_explained("default", p, x, np.arange(200, 300))
    assert np.array_equal(late.order, rank_pool("default", p, x, np.arange(200, 300)))
    assert set(late.reasons[:10]) == {"uncertain"}
    moved = {int(i) for i, r in zip(late.order, late.reasons, strict=True) if r == "near_duplicate"}
    assert moved and moved < set(range(20))  # the twins of the ones kept
    assert set(rank_pool_explained("default", None, x, np.array([1])).reasons[:5]) == {"diversity"}
    assert set(rank_pool_explained("random", p, x, np.array([1])).reasons) == {"random"}
