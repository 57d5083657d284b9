"""LoRA token classification (peft ``TOKEN_CLS``): the span model of the LoRA lane.

Modelled on ``core.lora.LoraClassifier`` and configured by the same ``LoraTrainConfig``
(``max_length`` is the window: longer texts are cut into overlapping windows and merged as
for token vectors). Each unit's tag is learned and read at its first sub-word token; the
others are ignored by the loss. fp32 on CPU, mixed precision on CUDA, STAR's L2 on lora_B,
MC dropout at inference, and only the adapter and the fresh classifier are saved.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ls_backend.core.configs import LoraTrainConfig
from ls_backend.core.embeddings import resolve_model_path
from ls_backend.core.lora import (
    TRAIN_CONFIG_FILE,
    FitResult,
    ProgressCallback,
    autocast,
    autocast_dtype,
    b_penalty,
    eval_mode,
    find_target_modules,
    load_state,
    mc_dropout,
    resolve_device,
    trainable_state,
)
from ls_backend.core.spans.alignment import TokenizedText, decode_spans, spans_to_tags
from ls_backend.core.spans.metrics import evaluate_spans
from ls_backend.core.spans.tokens import OVERLAP, UnitTokenizer, merge_windows
from ls_backend.core.spans.types import Span, SpanLabelSpace, TagScheme, TokenProbs, offsets_of

SPACE_FILE = "span_labels.json"
#: Sub-word tokens the loss ignores (not a unit's first, special, padding).
IGNORE = -100


def first_tokens(tokens: TokenizedText) -> NDArray[np.int64]:
    """Index of each unit's first token ``[n_units]``."""
    if tokens.ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, tokens.unit_of[1:] != tokens.unit_of[:-1]])
    return starts.astype(np.int64)


def _save_space(space: SpanLabelSpace, path: Path) -> None:
    meta = {"labels": list(space.labels), "scheme": space.scheme}
    (path / SPACE_FILE).write_text(json.dumps(meta))


def _load_space(path: Path) -> SpanLabelSpace:
    meta = json.loads((path / SPACE_FILE).read_text())
    scheme: TagScheme = meta["scheme"]
    return SpanLabelSpace(tuple(meta["labels"]), scheme)


def _load_backbone(space: SpanLabelSpace, config: LoraTrainConfig) -> tuple[Any, list[str]]:
    """The backbone with a token-classification head, and the modules it lacked (fresh)."""
    from transformers import AutoModelForTokenClassification

    model, info = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(config.backbone),
        num_labels=space.size,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        dtype=torch.float32,  # fp32 master weights; autocast does the low precision
    )
    keys = [*info["missing_keys"], *(k[0] for k in info["mismatched_keys"])]
    return model, sorted({key.rsplit(".", 1)[0] for key in keys})


class LoraSpanTagger:
    """A backbone with a LoRA adapter and a token-classification head over a tag space."""

    def __init__(self, space: SpanLabelSpace, config: LoraTrainConfig, model: Any) -> None:
        self.space = space
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = UnitTokenizer(
            resolve_model_path(config.backbone),
            config.max_length,
            min(OVERLAP, config.max_length // 4),
        )
        self.fit_result: FitResult | None = None
        self._lock = threading.RLock()  # forward passes toggle module modes (MC dropout)

    @classmethod
    def create(cls, space: SpanLabelSpace, config: LoraTrainConfig | None = None) -> LoraSpanTagger:
        """A fresh adapter (lora_B = 0: it starts as the backbone) with a new head."""
        from peft import LoraConfig, TaskType, get_peft_model

        config = config or LoraTrainConfig()
        torch.manual_seed(config.seed)
        base, fresh = _load_backbone(space, config)
        peft_config = LoraConfig(
            task_type=TaskType.TOKEN_CLS,  # keeps the classifier in modules_to_save
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=find_target_modules(base),
            modules_to_save=fresh or None,
        )
        return cls(space, config, get_peft_model(base, peft_config))

    @classmethod
    def train(
        cls,
        space: SpanLabelSpace,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        config: LoraTrainConfig | None = None,
        eval_texts: Sequence[str] = (),
        eval_spans: Sequence[Sequence[Span]] | None = None,
        progress: ProgressCallback | None = None,
    ) -> LoraSpanTagger:
        tagger = cls.create(space, config)
        tagger.fit(texts, spans, eval_texts, eval_spans, progress)
        return tagger

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> LoraSpanTagger:
        from peft import PeftModel

        data = json.loads((path / TRAIN_CONFIG_FILE).read_text())
        if device is not None:
            data["device"] = device
        config = LoraTrainConfig.from_dict(data)
        space = _load_space(path)
        base, _ = _load_backbone(space, config)
        return cls(space, config, PeftModel.from_pretrained(base, str(path), is_trainable=True))

    def save(self, path: Path) -> None:
        """Adapter weights and config (peft), tag space and training config; no backbone."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        _save_space(self.space, path)
        (path / TRAIN_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    # --- data -------------------------------------------------------------------------------

    def _examples(
        self, texts: Sequence[str], spans: Sequence[Sequence[Span]]
    ) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
        """One (token ids, token targets) per window of every text."""
        out = []
        for tokens, gold in zip(self.tokenizer.tokenize(texts), spans, strict=True):
            unit_tags, _ = spans_to_tags(tokens.units, gold, self.space)
            targets = np.full(tokens.ids.size, IGNORE, dtype=np.int64)
            firsts = first_tokens(tokens)
            targets[firsts] = unit_tags
            for a, b in self.tokenizer.windows(tokens):
                out.append((tokens.ids[a:b], targets[a:b]))
        return out

    def _tensors(
        self, batch: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids, mask = self.tokenizer.batch([(x, 0, x.size) for x, _ in batch])
        targets = np.full(ids.shape, IGNORE, dtype=np.int64)
        head = len(self.tokenizer.prefix)
        for row, (_, y) in enumerate(batch):
            targets[row, head : head + y.size] = y
        inputs = {
            "input_ids": torch.as_tensor(ids, device=self.device),
            "attention_mask": torch.as_tensor(mask, device=self.device),
        }
        return inputs, torch.as_tensor(targets, device=self.device)

    # --- training ---------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        eval_texts: Sequence[str] = (),
        eval_spans: Sequence[Sequence[Span]] | None = None,
        progress: ProgressCallback | None = None,
    ) -> FitResult:
        """Train on ``texts`` and their gold ``spans``; with eval data, end on the epoch with
        the best eval entity F1. If anything raises, the weights go back to where they were."""
        if not texts:
            raise ValueError("nothing to train on")
        cfg = self.config
        examples = self._examples(texts, spans)
        held_out = eval_spans is not None and bool(eval_texts)
        before = trainable_state(self.model)
        torch.manual_seed(cfg.seed)
        steps_per_epoch = -(-len(examples) // cfg.batch_size)
        epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
        params = [p for p in self.model.parameters() if p.requires_grad]
        # No AdamW weight decay: STAR regularises lora_B only, through the loss.
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        amp = autocast_dtype(cfg.mixed_precision, self.device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        generator = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best: float | None = None
        best_epoch, best_state = epochs, before
        with self._lock:
            try:
                for epoch in range(1, epochs + 1):
                    self.model.train()
                    started = time.perf_counter()
                    order = torch.randperm(len(examples), generator=generator).tolist()
                    loss_sum = 0.0
                    for start in range(0, len(order), cfg.batch_size):
                        batch = [examples[i] for i in order[start : start + cfg.batch_size]]
                        inputs, targets = self._tensors(batch)
                        with autocast(self.device, amp):
                            logits = self.model(**inputs).logits
                        loss = nn.functional.cross_entropy(
                            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE
                        )
                        if cfg.b_decay > 0:
                            loss = loss + cfg.b_decay * b_penalty(self.model, self.device)
                        optimizer.zero_grad(set_to_none=True)
                        torch.autograd.backward(scaler.scale(loss))
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(params, 1.0)
                        scaler.step(optimizer)
                        scaler.update()
                        loss_sum += float(loss.detach()) * len(batch)
                    train_s = time.perf_counter() - started
                    metrics = {
                        "epoch": float(epoch),
                        "train_loss": loss_sum / len(examples),
                        "train_s": train_s,
                        "samples_per_s": len(examples) / train_s,
                    }
                    if held_out:
                        assert eval_spans is not None
                        predicted = self.predict_spans(eval_texts, mc_samples=1)
                        metrics["eval_f1"] = evaluate_spans(predicted, eval_spans).f1
                        if best is None or metrics["eval_f1"] > best:
                            best, best_epoch, best_state = (
                                metrics["eval_f1"],
                                epoch,
                                trainable_state(self.model),
                            )
                    history.append(metrics)
                    if progress is not None:
                        progress(epoch, epochs, metrics)
            except BaseException:
                load_state(self.model, before)
                raise
            finally:
                self.model.eval()
            if held_out:
                load_state(self.model, best_state)
        self.fit_result = FitResult(history, best_epoch)
        return self.fit_result

    # --- inference --------------------------------------------------------------------------

    def predict_proba(
        self, texts: Sequence[str], mc_samples: int | None = None, batch_size: int = 32
    ) -> tuple[TokenProbs, list[NDArray[np.int64]]]:
        """Tag probabilities ``[U, K, T]`` of every unit (read at its first token; T MC-dropout
        passes, default from the config), and each text's unit offsets."""
        samples = self.config.mc_samples if mc_samples is None else mc_samples
        if samples < 1:
            raise ValueError("mc_samples must be at least 1")
        tokenized = self.tokenizer.tokenize(texts)
        cuts = [self.tokenizer.windows(tok) for tok in tokenized]
        pieces = [(t, a, b) for t, spans in enumerate(cuts) for a, b in spans]
        outputs: list[NDArray[np.float32]] = [np.zeros(0, np.float32)] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda p: pieces[p][2] - pieces[p][1])
        head = len(self.tokenizer.prefix)
        amp = autocast_dtype(self.config.mixed_precision, self.device)
        mode = mc_dropout(self.model) if samples > 1 else eval_mode(self.model)
        with self._lock, mode, torch.inference_mode(), autocast(self.device, amp):
            for begin in range(0, len(order), batch_size):
                rows = order[begin : begin + batch_size]
                ids, mask = self.tokenizer.batch(
                    [(tokenized[pieces[p][0]].ids, pieces[p][1], pieces[p][2]) for p in rows]
                )
                inputs = {
                    "input_ids": torch.as_tensor(ids, device=self.device),
                    "attention_mask": torch.as_tensor(mask, device=self.device),
                }
                passes = [self.model(**inputs).logits.float() for _ in range(samples)]
                probs = torch.softmax(torch.stack(passes, dim=3), dim=2).cpu().numpy()
                for j, p in enumerate(rows):
                    _, a, b = pieces[p]
                    outputs[p] = probs[j, head : head + b - a]  # [tokens, K, T]
        per_text = []
        piece = 0
        for tok, spans in zip(tokenized, cuts, strict=True):
            merged = merge_windows(tok.ids.size, spans, outputs[piece : piece + len(spans)])
            piece += len(spans)
            if not spans:
                merged = np.zeros((0, self.space.size, samples), dtype=np.float32)
            per_text.append(merged[first_tokens(tok)])
        lengths = [p.shape[0] for p in per_text]
        flat = (
            np.concatenate(per_text)
            if per_text
            else np.zeros((0, self.space.size, samples), dtype=np.float32)
        )
        return TokenProbs(flat, offsets_of(lengths)), [tok.units for tok in tokenized]

    def predict_spans(
        self, texts: Sequence[str], mc_samples: int | None = None
    ) -> list[list[Span]]:
        probs, units = self.predict_proba(texts, mc_samples)
        return decode_spans(probs, units, self.space).spans
