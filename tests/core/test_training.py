import json

import numpy as np
import pytest

from ls_backend.core.classification import CLASSIFICATION
from ls_backend.core.configs import RoundConfig
from ls_backend.core.evaluation import holdout_split, strata_of
from ls_backend.core.labels import LabelSpace
from ls_backend.core.model import ModelVersion
from ls_backend.core.registry import Registry
from ls_backend.core.tasks import LabeledData, NotEnoughLabels, TaskKind
from ls_backend.core.training import run_round, save_prototype

SPACE = LabelSpace(("a", "b", "c"))


def data(n: int, noise: float = 0.05, seed: int = 0) -> LabeledData:
    """Three well-separated classes in 8 dimensions."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 3
    x = np.eye(8)[targets] + noise * rng.standard_normal((n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return LabeledData(
        keys=list(range(n)),
        strata_keys=list(range(1000, 1000 + n)),
        texts=[f"t{i}" for i in range(n)],
        targets=targets.astype(np.int64),
        embeddings=x.astype(np.float32),
    )


def loader(registry: Registry):
    def load():
        version = registry.current()
        return ModelVersion.load(registry.path(version), version) if version else None

    return load


def bad_prototypes() -> ModelVersion:
    # Prototypes pointing at the wrong classes: zero-shot is wrong on everything.
    return CLASSIFICATION.prototype(SPACE, np.roll(np.eye(8, dtype=np.float32)[:3], 1, axis=0))


def test_few_labels_kfold_head_beats_bad_zero_shot_and_is_promoted(tmp_path):
    registry = Registry(tmp_path)
    save_prototype(registry, bad_prototypes(), "test", TaskKind.CLASSIFICATION)
    result = run_round(
        CLASSIFICATION,
        "head",
        registry,
        SPACE,
        data(12),
        loader(registry),
        RoundConfig(eval_min_labels=30),
    )
    assert result.promoted and result.kind == "head"
    assert registry.current() == result.version
    info = registry.info(result.version)
    assert info["evaluation"] == "k-fold" and info["metrics"]["accuracy"] == 1.0
    assert info["baseline"]["accuracy"] == 0.0 and info["labels"] == 12


def test_held_out_regime_keeps_the_serving_model_when_the_candidate_is_clearly_worse(tmp_path):
    registry = Registry(tmp_path)
    config = RoundConfig(eval_min_labels=30)
    good = run_round(CLASSIFICATION, "head", registry, SPACE, data(90), loader(registry), config)
    assert good.promoted and registry.info(good.version)["evaluation"] == "held-out"
    # Every label outside the held-out part is wrong: clearly worse on the same held-out
    # labels, so saved but not served.
    poisoned = data(90)
    train, _ = holdout_split(
        poisoned.strata_keys, strata_of(SPACE, poisoned.targets), config.eval_fraction
    )
    poisoned.targets[train] = (poisoned.targets[train] + 1) % 3
    worse = run_round(CLASSIFICATION, "head", registry, SPACE, poisoned, loader(registry), config)
    assert not worse.promoted and worse.reason.startswith("worse than the serving model")
    assert registry.current() == good.version
    assert worse.version in registry.versions()


def test_the_served_head_is_fitted_on_every_label_the_evaluated_one_without_the_held_out(
    tmp_path,
):
    from ls_backend.core.heads import LinearHead

    registry = Registry(tmp_path)
    labeled = data(90, noise=0.8)
    result = run_round(
        CLASSIFICATION, "head", registry, SPACE, labeled, loader(registry), RoundConfig()
    )
    folder = registry.path(result.version)
    seen = json.loads((folder / "annotations.json").read_text())
    assert sorted(seen["trained_on"]) == labeled.keys and seen["held_out"]
    assert not set(seen["held_out"]) & set(seen["evaluated_fit_trained_on"])
    served = ModelVersion.load(folder, result.version)
    evaluated = ModelVersion.load(folder / "evaluated", result.version)
    x = labeled.embeddings
    everything = LinearHead.fit(SPACE, x, labeled.targets).predict_proba(x)
    assert np.allclose(served.head.predict_proba(x), everything, atol=1e-5)
    assert not np.allclose(evaluated.head.predict_proba(x), everything, atol=1e-3)
    fits = registry.info(result.version)["fits"]
    assert fits["served"]["labels"] == 90 and fits["evaluated"]["held_out"] == len(seen["held_out"])


def test_the_serving_version_is_compared_by_its_fit_that_never_saw_the_held_out_labels(tmp_path):
    # Noisy classes and a weak penalty: a fit on every label memorises the held-out ones.
    registry = Registry(tmp_path)
    config = RoundConfig(head_c=1e4)
    labeled = data(90, noise=1.5)
    first = run_round(CLASSIFICATION, "head", registry, SPACE, labeled, loader(registry), config)
    again = run_round(CLASSIFICATION, "head", registry, SPACE, labeled, loader(registry), config)
    # The same labels again: the same evaluated fit, so the same figures, and it may serve;
    # judged against the served fit (which trained on the held-out labels) it could not.
    assert first.metrics["accuracy"] < 1.0
    assert again.baseline == again.metrics and again.promoted


def test_one_class_is_not_enough(tmp_path):
    one_class = data(6)
    one_class.targets[:] = 0
    with pytest.raises(NotEnoughLabels):
        run_round(
            CLASSIFICATION,
            "head",
            Registry(tmp_path),
            SPACE,
            one_class,
            lambda: None,
            RoundConfig(),
        )


def test_label_space_change_promotes_without_comparison(tmp_path):
    registry = Registry(tmp_path)
    old = CLASSIFICATION.prototype(LabelSpace(("x", "y")), np.eye(8, dtype=np.float32)[:2])
    save_prototype(registry, old, "old", TaskKind.CLASSIFICATION)
    result = run_round(
        CLASSIFICATION, "head", registry, SPACE, data(12), loader(registry), RoundConfig()
    )
    assert result.promoted and result.baseline is None


def test_a_lora_round_saves_adapter_and_head_and_serves_when_better(tmp_path):
    """The background lane end to end on a tiny random BERT (seconds, not minutes)."""
    from test_lora import save_tiny_bert, tiny_config

    backbone = save_tiny_bert(tmp_path / "tiny")
    registry = Registry(tmp_path / "models")
    save_prototype(registry, bad_prototypes(), "test", TaskKind.CLASSIFICATION)
    labeled = data(60)
    words = ["alpha", "bravo", "charlie"]
    labeled.texts = [f"{words[t]} item {i}" for i, t in enumerate(labeled.targets)]
    config = RoundConfig(eval_min_labels=30, lora=tiny_config(backbone, epochs=4, mc_samples=3))
    result = run_round(CLASSIFICATION, "lora", registry, SPACE, labeled, loader(registry), config)
    assert result.kind == "lora"
    folder = registry.path(result.version)
    assert (folder / "lora" / "adapter_config.json").is_file() and (folder / "head").is_dir()
    assert registry.info(result.version)["settings"]["lora"]["backbone"] == backbone
    assert result.promoted  # zero-shot here is wrong on every item
    served = ModelVersion.load(folder, result.version)
    assert served.kind == "lora" and served.lora_round == 1
    assert (folder / "evaluated" / "lora" / "adapter_config.json").is_file()
    assert registry.info(result.version)["fits"]["served"]["labels"] == 60
    prediction = served.predict(labeled.texts[:5], labeled.embeddings[:5])
    assert prediction.probs.shape == (5, 3, 3)  # MC dropout samples
    assert prediction.base_probs.shape == (5, 3, 1)  # the head, for STAR's base uncertainty


def test_lora_needs_a_held_out_set(tmp_path):
    with pytest.raises(NotEnoughLabels):
        run_round(
            CLASSIFICATION,
            "lora",
            Registry(tmp_path),
            SPACE,
            data(12),
            lambda: None,
            RoundConfig(eval_min_labels=30),
        )


def test_head_prior_fits_toward_the_label_names_and_records_its_strength(tmp_path):
    registry = Registry(tmp_path)
    names = np.eye(8, dtype=np.float32)[:3]
    save_prototype(
        registry, CLASSIFICATION.prototype(SPACE, names), "test", TaskKind.CLASSIFICATION
    )
    config = RoundConfig(head_prior=True)
    labels = data(40, noise=0.3)
    result = run_round(
        CLASSIFICATION, "head", registry, SPACE, labels, loader(registry), config, None, names
    )
    info = registry.info(result.version)
    assert info["settings"]["head_prior"] is True
    assert info["head_prior_strength"] > 0  # names that fit the labels are trusted
    wrong = np.roll(names, 1, axis=0)
    result = run_round(
        CLASSIFICATION, "head", registry, SPACE, labels, loader(registry), config, None, wrong
    )
    assert registry.info(result.version)["head_prior_strength"] == 0.0


def test_a_rollback_pins_the_serving_version_until_the_pin_is_lifted(tmp_path):
    """A rollback is not undone by the next label: rounds still train, are compared and saved,
    but the pointer stays on the version rolled back to until the pin is lifted."""
    registry = Registry(tmp_path)
    config = RoundConfig(eval_min_labels=30)
    first = run_round(CLASSIFICATION, "head", registry, SPACE, data(60), loader(registry), config)
    second = run_round(CLASSIFICATION, "head", registry, SPACE, data(70), loader(registry), config)
    assert second.promoted and registry.current() == second.version
    with registry.lock():
        assert registry.rollback(first.version) == first.version
    assert registry.pinned() == first.version

    later = run_round(CLASSIFICATION, "head", registry, SPACE, data(80), loader(registry), config)
    assert later.version in registry.versions() and not later.promoted
    assert later.reason.startswith(f"{first.version} is pinned by a rollback")
    assert registry.info(later.version)["pinned"] == first.version
    assert registry.current() == first.version

    with registry.lock():
        assert registry.unpin() == first.version
    assert registry.pinned() is None and registry.current() == first.version  # until a round
    after = run_round(CLASSIFICATION, "head", registry, SPACE, data(90), loader(registry), config)
    assert after.promoted and registry.current() == after.version


def test_a_new_label_config_lifts_the_pin(tmp_path):
    registry = Registry(tmp_path)
    old = save_prototype(registry, bad_prototypes(), "first label config", TaskKind.CLASSIFICATION)
    with registry.lock():
        registry.rollback(old)
    assert registry.pinned() == old
    new = save_prototype(registry, bad_prototypes(), "new label config", TaskKind.CLASSIFICATION)
    assert registry.current() == new and registry.pinned() is None
    assert registry.info(new)["reason"] == f"new label config; lifts the pin on {old}"
