"""The final model on a tiny random BERT: trained on every label, evaluated as the rounds are,
exported as a directory that ``pipeline(...)`` and ONNX Runtime load; bad input fails first."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_lora import save_tiny_bert, tiny_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from ls_backend.core import export
from ls_backend.core.classification import CLASSIFICATION
from ls_backend.core.configs import RoundConfig
from ls_backend.core.export import ONNX_FILE, check_target, record, write_model
from ls_backend.core.finetune import (
    FinetuneConfig,
    FinetuneError,
    Labeled,
    check_backbone,
    finetune,
    fingerprint,
    register,
)
from ls_backend.core.labels import LabelSpace
from ls_backend.core.lora import LoraClassifier
from ls_backend.core.model import ModelVersion
from ls_backend.core.registry import Registry
from ls_backend.core.tasks import LabeledData

SPACE = LabelSpace(("positive", "negative"))
WORDS = ("great", "awful")


def labeled(n: int, space: LabelSpace = SPACE) -> Labeled:
    targets = np.arange(n) % 2
    texts = [f"{WORDS[t]} movie number {i}" for i, t in enumerate(targets)]
    return Labeled(texts, targets.astype(np.int64), list(range(100, 100 + n)))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def config(backbone: str, **train: object) -> FinetuneConfig:
    return FinetuneConfig(tiny_config(backbone, **{"lr": 5e-3, **train}))


def export_of(tmp_path: Path, done, name: str = "model") -> Path:
    out = tmp_path / name
    write_model(out, done, record(done, {"source": "test"}, "9.9.9"))
    return out


def test_lora_export_loads_with_pipeline_and_onnx_and_says_what_it_is(backbone, tmp_path):
    data = labeled(16)  # below eval_min_labels: k-fold, as a round
    stages: list[str] = []
    done = finetune(SPACE, data, config(backbone), lambda _f, stage: stages.append(stage))
    assert done.evaluation == "k-fold" and done.split["folds"] == 5
    assert done.metrics is not None and done.metrics["n"] == 16
    assert any("fold 5/5" in s for s in stages) and stages[-1] == "trained"
    out = export_of(tmp_path, done)

    # Loads offline with transformers alone: no peft, no ls-backend, the adapter merged.
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "positive", 1: "negative"}
    assert model.config.label2id == {"positive": 0, "negative": 1}
    assert not any("lora" in name for name, _ in model.named_parameters())
    clf = pipeline("text-classification", model=str(out), top_k=None, truncation=True)
    expected = done.classifier.predict_proba(data.texts[:4], mc_samples=1)[:, :, 0]
    for row, scores in zip(expected, clf(data.texts[:4]), strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose([by_label["positive"], by_label["negative"]], row, atol=1e-4)

    # The ONNX export gives the same logits, for batches of other sizes and lengths.
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        data.texts[:3] + ["a much longer text " * 3], padding=True, return_tensors="np"
    )
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    logits = session.run(None, feeds)[0]
    with torch.no_grad():
        torch_logits = model(**{k: torch.as_tensor(v) for k, v in feeds.items()}).logits
    np.testing.assert_allclose(logits, torch_logits.numpy(), atol=1e-4)

    card = (out / "README.md").read_text()
    rec = json.loads((out / "finetune.json").read_text())
    for needle in ("| 0 | positive | 8 |", "| 1 | negative | 8 |", "k-fold", backbone,
                   done.fingerprint, "ls-backend 9.9.9", "LoRA (r=8", "merged"):  # fmt: skip
        assert needle in card
    assert "pipeline_tag: text-classification" in card
    assert rec["counts"] == {"positive": 8, "negative": 8} and rec["method"]["name"] == "lora"
    assert rec["evaluation"]["metrics"]["accuracy"] == done.metrics["accuracy"]
    assert tokenizer.model_max_length == 16  # the trained length: truncation=True matches it


def test_held_out_evaluation_then_every_label_for_the_chosen_epochs(backbone):
    data = labeled(40)  # from eval_min_labels (30) on: the server's held-out split
    done = finetune(SPACE, data, config(backbone, epochs=3))
    assert done.evaluation == "held-out" and done.evaluated is not None
    train_idx, held_idx = done.split_index
    assert len(train_idx) + len(held_idx) == 40 and done.metrics["n"] == len(held_idx)
    assert done.epochs == done.evaluated.fit_result.best_epoch
    assert len(done.classifier.fit_result.history) == done.epochs
    assert done.split["trained_on"] == len(train_idx)


def test_full_fine_tune_moves_the_backbone_and_exports(backbone, tmp_path):
    data = labeled(12)
    done = finetune(SPACE, data, config(backbone, method="full", lr=1e-3), test=labeled(6))
    before = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)
    trained = done.classifier.model
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(before.state_dict()[name], trained.state_dict()[name])
    assert done.test_metrics is not None and done.test_metrics["n"] == 6
    out = export_of(tmp_path, done)
    assert "full fine-tune" in (out / "README.md").read_text()
    assert "| test (test file) | 6 |" in (out / "README.md").read_text()
    clf = pipeline("text-classification", model=str(out))
    assert clf("great movie number 99")[0]["label"] in SPACE.labels


def test_multi_label_exports_sigmoid_scores(backbone, tmp_path):
    space = LabelSpace(("funny", "long", "sad"), multi_label=True)
    texts = [f"text {i}" for i in range(12)]
    targets = space.encode([["funny", "long"], ["sad"], ["funny", "sad"]] * 4)
    data = Labeled(texts, targets, list(range(12)))
    done = finetune(space, data, config(backbone, epochs=2))
    out = export_of(tmp_path, done)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.problem_type == "multi_label_classification"
    scores = pipeline("text-classification", model=str(out), top_k=None)(texts[:1])[0]
    expected = done.classifier.predict_proba(texts[:1], mc_samples=1)[0, :, 0]
    by_label = {s["label"]: s["score"] for s in scores}
    np.testing.assert_allclose([by_label[x] for x in space.labels], expected, atol=1e-4)
    assert "Multi-label accuracy is exact match" in (out / "README.md").read_text()


def test_too_few_labels_per_class_fails_before_any_training(backbone, monkeypatch):
    data = Labeled(["a", "b", "c", "d"], np.array([0, 0, 0, 1]), [1, 2, 3, 4])
    monkeypatch.setattr(LoraClassifier, "create", pytest.fail)
    with pytest.raises(FinetuneError, match=r"too few labels per class \('negative': 1\)"):
        finetune(SPACE, data, config(backbone))


def test_unknown_backbone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinetuneError, match="unknown backbone 'nobody/no-such-model'"):
        check_backbone("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneError, match="holds no config.json"):
        check_backbone(str(tmp_path / "empty"))


def test_a_full_disk_leaves_nothing_half_written(backbone, tmp_path, monkeypatch):
    done = finetune(SPACE, labeled(8), config(backbone, epochs=1), test=None)

    def full(*_args: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "model_card", full)  # the last file written
    with pytest.raises(FinetuneError, match="no space left on the device.*nothing was written"):
        export_of(tmp_path, done)
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary copy


def test_an_existing_folder_or_too_little_room_is_refused_up_front(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FinetuneError, match="exists"):
        check_target(tmp_path / "taken", None)
    with pytest.raises(FinetuneError, match="MB free; the export needs about"):
        check_target(tmp_path / "new", 10**15)
    check_target(tmp_path / "new", 10)  # fine


def test_fingerprint_ignores_order_and_sees_a_changed_label():
    data = labeled(6)
    shuffled = data.take(np.array([5, 3, 1, 0, 2, 4]))
    assert fingerprint(SPACE, data) == fingerprint(SPACE, shuffled)
    flipped = Labeled(data.texts, 1 - data.targets, data.keys)
    assert fingerprint(SPACE, data) != fingerprint(SPACE, flipped)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_registered_fine_tune_serves_beside_a_head_by_the_promotion_rule(
    backbone, tmp_path, method
):
    n = 40
    rng = np.random.default_rng(0)
    base = labeled(n)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    data = LabeledData(
        keys=list(range(n)), strata_keys=base.keys, texts=base.texts,
        targets=base.targets, embeddings=x,
    )  # fmt: skip
    lr = 5e-3 if method == "lora" else 1e-3
    done = finetune(SPACE, base, config(backbone, method=method, lr=lr, epochs=2))
    registry = Registry(tmp_path / "models")
    round_config = RoundConfig(eval_min_labels=30, head_prior=False)
    result = register(CLASSIFICATION, registry, SPACE, data, done, round_config, lambda: None)
    assert result.promoted and result.kind == "lora"  # nothing served before it
    folder = registry.path(result.version)
    served = ModelVersion.load(folder, result.version, device="cpu")
    assert served.family == f"{method}:{backbone}" and served.lora_round == 1
    assert (folder / "evaluated" / "lora").is_dir()  # what later rounds are compared with
    prediction = served.predict(base.texts[:3], x[:3])
    np.testing.assert_allclose(
        prediction.probs, done.classifier.predict_proba(base.texts[:3]), atol=1e-5
    )
    assert prediction.base_probs.shape == (3, 2, 1)  # the head beside it: STAR's base
    info = registry.info(result.version)
    assert info["evaluation"] == "held-out"
    assert info["fits"]["evaluated"]["held_out"] == len(done.split_index[1])
    assert info["settings"]["lora"]["method"] == method
    if method == "full":
        assert (folder / "lora" / "model.safetensors").is_file()  # the whole model, saved

    # A model of another family (here the other method) is compared as another kind: it
    # must be clearly better, not just not worse.
    other = "full" if method == "lora" else "lora"
    lr = 5e-3 if other == "lora" else 1e-3
    again = finetune(SPACE, base, config(backbone, method=other, lr=lr, epochs=2))
    load = lambda: ModelVersion.load(folder, result.version, device="cpu")  # noqa: E731
    second = register(CLASSIFICATION, registry, SPACE, data, again, round_config, load)
    assert "another kind" in second.reason


def test_register_needs_the_held_out_evaluation(backbone, tmp_path):
    done = finetune(SPACE, labeled(10), config(backbone, epochs=1))  # k-fold
    with pytest.raises(FinetuneError, match="held-out evaluation"):
        register(CLASSIFICATION, Registry(tmp_path), SPACE, None, done, RoundConfig(), dict)
