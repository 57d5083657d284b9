"""LoRA token classification on a tiny random BERT: learns, saves only the adapter, MC dropout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from ls_backend.core.embeddings import resolve_model_path
from ls_backend.core.lora import LoraTrainConfig
from ls_backend.core.spans.lora import LoraSpanTagger, first_tokens
from ls_backend.core.spans.metrics import evaluate_spans
from ls_backend.core.spans.types import Span, SpanLabelSpace

SPACE = SpanLabelSpace(("PER", "LOC"))
NAMES = [("anna", "PER"), ("bob", "PER"), ("paris", "LOC"), ("rome", "LOC")]


def sentence(i: int) -> tuple[str, list[Span]]:
    name, label = NAMES[i % 4]
    before = ["we", "saw", "the", "old"][: 1 + i % 3]
    prefix = " ".join(before) + " "
    text = f"{prefix}{name} today"
    return text, [Span(len(prefix), len(prefix) + len(name), label)]


TEXTS, SPANS = zip(*(sentence(i) for i in range(24)), strict=True)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded"))
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return str(path)


def config(backbone: str, **overrides: object) -> LoraTrainConfig:
    base = {
        "backbone": backbone,
        "max_length": 16,
        "epochs": 30,
        "min_steps": 0,
        "batch_size": 8,
        "lr": 1e-2,
        "r": 8,
        "b_decay": 0.0,
    }
    return LoraTrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tiny_backbone: str) -> LoraSpanTagger:
    return LoraSpanTagger.train(SPACE, list(TEXTS), list(SPANS), config(tiny_backbone))


def test_it_learns_to_tag_the_names(trained: LoraSpanTagger) -> None:
    assert trained.fit_result is not None
    history = trained.fit_result.history
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert evaluate_spans(trained.predict_spans(list(TEXTS)), list(SPANS)).f1 > 0.9


def test_units_are_read_at_their_first_token_and_offsets_stay_exact(
    trained: LoraSpanTagger,
) -> None:
    texts = ["we saw  Zürich 🙂 today", ""]
    probs, units = trained.predict_proba(texts, mc_samples=1)
    tokens = trained.tokenizer.tokenize(texts)
    assert probs.lengths.tolist() == [tokens[0].n_units, 0]
    assert first_tokens(tokens[0]).size == tokens[0].n_units
    assert [texts[0][a:b] for a, b in units[0].tolist()] == ["we", "saw", "Zürich", "🙂", "today"]
    np.testing.assert_allclose(probs.probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_text_longer_than_the_window_is_tagged_whole(trained: LoraSpanTagger) -> None:
    text = " ".join(TEXTS[:6])  # well over 16 tokens
    probs, units = trained.predict_proba([text], mc_samples=1)
    assert probs.probs.shape[0] == units[0].shape[0] == len(text.split())
    spans = trained.predict_spans([text])[0]
    assert {text[s.start : s.end] for s in spans} <= {"anna", "bob", "paris", "rome"}
    (tokens,) = trained.tokenizer.tokenize([text])
    second_window = int(tokens.offsets[trained.tokenizer.window, 0])
    assert min(s.start for s in spans) < second_window < max(s.start for s in spans)


def test_mc_dropout_samples_vary_and_one_sample_is_deterministic(trained: LoraSpanTagger) -> None:
    probs, _ = trained.predict_proba(list(TEXTS[:4]), mc_samples=5)
    assert probs.probs.shape[1:] == (SPACE.size, 5)
    assert probs.probs.std(axis=2).max() > 1e-4
    assert not any(m.training for m in trained.model.modules())
    once, _ = trained.predict_proba(list(TEXTS[:4]), mc_samples=1)
    again, _ = trained.predict_proba(list(TEXTS[:4]), mc_samples=1)
    np.testing.assert_array_equal(once.probs, again.probs)


def test_save_keeps_only_adapter_and_head_and_load_predicts_the_same(
    trained: LoraSpanTagger, tmp_path: Path
) -> None:
    trained.save(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "span_labels.json"} <= files
    size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    backbone_size = sum(
        p.stat().st_size for p in Path(trained.config.backbone).glob("*.safetensors")
    )
    assert size < backbone_size / 5
    loaded = LoraSpanTagger.load(tmp_path / "adapter")
    assert loaded.space == SPACE
    a, _ = trained.predict_proba(list(TEXTS[:6]), mc_samples=1)
    b, _ = loaded.predict_proba(list(TEXTS[:6]), mc_samples=1)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_eval_data_picks_the_best_epoch_and_a_failure_restores_the_weights(
    tiny_backbone: str,
) -> None:
    tagger = LoraSpanTagger.create(SPACE, config(tiny_backbone, epochs=4))
    result = tagger.fit(list(TEXTS[:16]), list(SPANS[:16]), list(TEXTS[16:]), list(SPANS[16:]))
    assert all("eval_f1" in h for h in result.history)
    assert result.best["eval_f1"] == max(h["eval_f1"] for h in result.history)
    before = {n: p.detach().clone() for n, p in tagger.model.named_parameters() if p.requires_grad}

    def cancel(epoch: int, total: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tagger.fit(list(TEXTS), list(SPANS), progress=cancel)
    for name, param in tagger.model.named_parameters():
        if name in before:
            assert torch.equal(param, before[name])
