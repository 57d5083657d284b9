import numpy as np
import pytest

from ls_backend.core.labels import LabelSpace
from ls_backend.core.report import (
    cohen_kappa,
    confusions,
    first_stop,
    gain_per_100_labels,
    label_distribution,
    learning_curve,
    out_of_fold_probs,
    stabilizing_predictions,
    suspected_mislabels,
)

SPACE = LabelSpace(("a", "b", "c"))


def clusters(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:3] * 4
    x = np.concatenate([c + rng.normal(size=(n_per, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(3), n_per)


def info(version: str, labels: int, accuracy: float | None, promoted: bool = True) -> dict:
    metrics = None if accuracy is None else {"accuracy": accuracy, "macro_f1": accuracy - 0.1}
    kind = version.split("-")[1]
    evaluation = None if accuracy is None else "held-out"
    return {
        "version": version,
        "kind": kind,
        "labels": labels,
        "metrics": metrics,
        "evaluation": evaluation,
        "promoted": promoted,
        "reason": "r",
    }


def test_the_learning_curve_has_every_version_and_marks_the_serving_one() -> None:
    infos = [
        info("v0001-prototype", 0, None),
        info("v0002-head", 40, 0.6),
        info("v0003-head", 80, 0.7, promoted=False),
        info("v0004-lora", 80, 0.8),
    ]
    points = learning_curve(infos, serving="v0002-head")
    assert [p.version for p in points] == [
        "v0001-prototype",
        "v0002-head",
        "v0003-head",
        "v0004-lora",
    ]
    assert [p.serving for p in points] == [False, True, False, False]
    assert points[0].accuracy is None and points[2].promoted is False
    assert points[3].kind == "lora" and points[3].labels == 80


def test_gain_compares_versions_of_one_kind() -> None:
    infos = [
        info("v0001-head", 100, 0.60),
        info("v0002-lora", 150, 0.9),
        info("v0003-head", 200, 0.70),
    ]
    assert gain_per_100_labels(learning_curve(infos, None)) == pytest.approx(0.1)


def test_no_gain_is_read_from_a_few_labels_of_noise() -> None:
    infos = [info("v0001-head", 95, 0.80), info("v0002-head", 100, 0.70)]
    assert gain_per_100_labels(learning_curve(infos, None)) is None  # not -2 points per label
    infos = [info("v0001-head", 40, 0.60), *infos]
    assert gain_per_100_labels(learning_curve(infos, None)) == pytest.approx(0.1 * 100 / 60)


def test_kappa_is_one_for_identical_and_zero_for_chance_agreement() -> None:
    a = np.array([0, 1, 2, 0, 1, 2])
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(np.zeros(5, np.int64), np.zeros(5, np.int64)) == 1.0
    assert cohen_kappa(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.0)


def test_the_rule_stops_once_the_last_three_kappas_average_099() -> None:
    assert first_stop([0.5, 0.99, 1.0, 0.98, 1.0, 1.0]) == 4
    assert first_stop([0.99, 0.98, 0.99]) is None
    base = np.arange(200) % 3
    changed = base.copy()
    changed[:40] = (changed[:40] + 1) % 3
    preds = [changed, base, base, base, base]
    signal = stabilizing_predictions([f"v{i}" for i in range(5)], [10, 20, 30, 40, 50], preds)
    assert signal.kappas[0] < 0.9 and signal.kappas[1:] == [1.0, 1.0, 1.0]
    assert signal.stop and signal.stop_labels == 50 and signal.mean_recent == 1.0
    assert not stabilizing_predictions(["v1", "v2"], [10, 20], preds[:2]).stop


def test_flipped_labels_top_the_suspects_and_the_confusions() -> None:
    x, y = clusters()
    flipped = np.array([3, 50, 90])
    noisy = y.copy()
    noisy[flipped] = (noisy[flipped] + 1) % 3
    probs = out_of_fold_probs(SPACE, x, noisy, c=10.0)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(axis=1), 1)
    suspects = suspected_mislabels(SPACE, noisy, probs, top=5)
    assert {s.index for s in suspects[:3]} == set(flipped.tolist())
    assert all(s.issue for s in suspects[:3])
    assert suspects[0].predicted == SPACE.labels[y[suspects[0].index]]
    pairs = confusions(SPACE, noisy, probs)
    assert sum(p.count for p in pairs) >= 3 and all(p.given != p.predicted for p in pairs)
    assert label_distribution(SPACE, noisy) == {"a": 40, "b": 40, "c": 40}
