import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ls_backend.core.heads import LinearHead, PrototypeHead, choose_prior_strength
from ls_backend.core.labels import LabelSpace


def blobs(n_per_class: int, centers: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [c + 0.1 * rng.standard_normal((n_per_class, centers.shape[1])) for c in centers]
    )
    y = np.repeat(np.arange(len(centers)), n_per_class)
    return x.astype(np.float32), y


def test_head_learns_and_unseen_classes_get_zero():
    space = LabelSpace(("a", "b", "c", "d"))
    centers = np.eye(8)[:3]
    x, y = blobs(10, centers)
    head = LinearHead.fit(space, x, y)
    probs = head.predict_proba(x)
    assert probs.shape == (30, 4, 1)
    assert (probs[:, :, 0].argmax(axis=1) == y).all()
    assert np.allclose(probs[:, 3, 0], 0.0)  # class "d" has no label yet
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_binary_head_matches_logistic_regression():
    space = LabelSpace(("neg", "pos"))
    x, y = blobs(15, np.eye(4)[:2])
    head = LinearHead.fit(space, x, y, c=10.0)
    reference = LogisticRegression(C=10.0, max_iter=200).fit(x, y).predict_proba(x)
    assert np.allclose(head.predict_proba(x)[:, :, 0], reference, atol=1e-4)


def test_head_needs_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        LinearHead.fit(
            LabelSpace(("a", "b")), np.eye(3, dtype=np.float32), np.zeros(3, dtype=np.int64)
        )


def test_multi_label_head_per_label_probabilities(tmp_path):
    space = LabelSpace(("x", "y", "z"), multi_label=True)
    x, cls = blobs(10, np.eye(6)[:2])
    targets = np.zeros((20, 3), dtype=np.int64)
    targets[:, 0] = cls == 0
    targets[:, 1] = 1  # always on: a constant, not a fit
    head = LinearHead.fit(space, x, targets)
    probs = head.predict_proba(x)[:, :, 0]
    assert ((probs[:, 0] > 0.5) == (cls == 0)).all()
    assert (probs[:, 1] > 0.9).all() and (probs[:, 2] < 0.1).all()
    head.save(tmp_path)
    assert np.allclose(LinearHead.load(tmp_path, space).predict_proba(x)[:, :, 0], probs)


def test_prototypes_pick_the_nearest_label():
    space = LabelSpace(("a", "b"))
    head = PrototypeHead(space, np.eye(2, dtype=np.float32))
    probs = head.predict_proba(np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32))
    assert list(probs[:, :, 0].argmax(axis=1)) == [0, 1]


def noisy_blobs(n_per_class: int, classes: int, seed: int = 0):
    """Overlapping classes in 16 dimensions: a few labels leave the plain head unsure."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.eye(16)[y] + 0.6 * rng.standard_normal((y.size, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_prior_head_starts_from_the_label_names_and_scores_unseen_classes():
    space = LabelSpace(("a", "b", "c"))
    names = np.eye(16, dtype=np.float32)[:3]
    x, y = noisy_blobs(4, 2)  # no label of "c" yet
    head = LinearHead.fit(space, x, y, prior=names, strength=20.0)
    probe = np.eye(16, dtype=np.float32)[:3]
    probs = head.predict_proba(probe)[:, :, 0]
    assert (probs.argmax(axis=1) == [0, 1, 2]).all()  # "c" from its name alone
    assert head.prior_strength == 20.0
    plain = LinearHead.fit(space, x, y, prior=names, strength=0.0)
    assert np.allclose(plain.predict_proba(probe)[:, 2, 0], 0.0)  # strength 0: the plain head


def test_cross_validation_trusts_names_that_fit_and_drops_names_that_mislead():
    space = LabelSpace(("a", "b", "c"))
    x, y = noisy_blobs(5, 3)
    right = np.eye(16, dtype=np.float32)[:3]
    wrong = np.roll(right, 1, axis=0)  # every name sits on another class
    assert choose_prior_strength(space, x, y, right) > 0
    assert choose_prior_strength(space, x, y, wrong) == 0.0


def test_prior_strength_is_zero_for_multi_label_and_without_a_usable_fold():
    names = np.eye(16, dtype=np.float32)[:2]
    x, y = noisy_blobs(1, 2)  # one label per class: no fold trains on both
    assert choose_prior_strength(LabelSpace(("a", "b")), x, y, names) == 0.0
    multi = LabelSpace(("a", "b"), multi_label=True)
    assert choose_prior_strength(multi, x, np.eye(2, dtype=np.int64)[y], names) == 0.0
