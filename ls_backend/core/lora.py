"""The LoRA sequence classifier: train with STAR's L2 on lora_B, predict with MC dropout.

Only the adapter (LoRA matrices plus the freshly initialised head) is trained and saved;
the backbone is re-created from its name on load, so every model version costs MBs. With
``method="full"`` (``ls-backend finetune``) every weight trains and the whole model is saved.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ls_backend.core.configs import LoraTrainConfig
from ls_backend.core.embeddings import resolve_model_path
from ls_backend.core.heads import load_space, save_space
from ls_backend.core.labels import LabelSpace, Probs

TRAIN_CONFIG_FILE = "train_config.json"

#: Query/value projection names per model family, tried in order (LoRA's default targets).
QUERY_VALUE_NAMES: tuple[tuple[str, ...], ...] = (
    ("query", "value"),  # BERT, RoBERTa, ELECTRA, ALBERT, XLM-R
    ("query_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q_proj", "v_proj"),  # LLaMA, Mistral, Qwen, OPT, BART
    ("q_lin", "v_lin"),  # DistilBERT
    ("q", "v"),  # MPNet, T5
    ("c_attn",),  # GPT-2 (fused qkv)
    ("query_key_value",),  # GPT-NeoX, Falcon, BLOOM
    ("Wqkv",),  # ModernBERT, MPT
    ("qkv_proj",),  # Phi-3
    ("in_proj",),  # DeBERTa v1 (fused qkv)
)
_ATTENTION_MARKERS = ("attn", "attention")

ProgressCallback = Callable[[int, int, dict[str, float]], None]
"""Called after every epoch with ``(epoch, total_epochs, metrics)``; raise from it to cancel."""


@dataclass
class FitResult:
    """Per-epoch metrics and the epoch whose weights the model holds after ``fit``."""

    history: list[dict[str, float]]
    best_epoch: int

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | Conv1D)


def find_target_modules(model: nn.Module) -> list[str]:
    """LoRA targets: the query/value projections of the attention blocks, found by name.

    Falls back to every linear layer inside attention (full module paths, so that a shared
    leaf name such as ``dense`` does not also pick up the feed-forward layers).
    """
    in_attention = [
        name
        for name, module in model.named_modules()
        if _is_linear(module) and any(m in name.lower() for m in _ATTENTION_MARKERS)
    ]
    leaves = {name.rsplit(".", 1)[-1] for name in in_attention}
    for names in QUERY_VALUE_NAMES:
        if set(names) <= leaves:
            return list(names)
    if not in_attention:
        raise ValueError("no linear layer inside an attention block to put LoRA on")
    return in_attention


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere except the Dropout modules, which keep sampling (MC dropout).

    Normalisation and every other mode-dependent layer stay deterministic; the previous
    mode comes back on exit, even after an error. Attention-probability dropout follows its
    attention module's mode in transformers, so it stays off: hidden, LoRA and head dropout
    do the sampling.
    """
    was_training = model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    try:
        yield model
    finally:
        model.train(was_training)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (CPU autocast is slower than fp32 on most CPUs)."""
    if device.type != "cuda" or mode == "no":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _load_backbone(space: LabelSpace, config: LoraTrainConfig) -> tuple[Any, Any, list[str]]:
    """Backbone with a classification head, its tokenizer, and the modules the checkpoint lacked."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(config.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    problem = "multi_label_classification" if space.multi_label else "single_label_classification"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=space.size,
        problem_type=problem,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        dtype=torch.float32,  # fp32 master weights; autocast does the low precision
    )
    if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with EOS so batches work
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    # Weights initialised here, not read from the checkpoint (the head, sometimes a pooler),
    # must be trained and saved with the adapter, or a reload would draw new random ones.
    keys = [*info["missing_keys"], *(k[0] for k in info["mismatched_keys"])]  # (key, shapes)
    return model, tokenizer, sorted({key.rsplit(".", 1)[0] for key in keys})


class LoraClassifier:
    """A backbone with a LoRA adapter and a classification head over one label space."""

    def __init__(
        self, space: LabelSpace, config: LoraTrainConfig, model: Any, tokenizer: Any
    ) -> None:
        self.space = space
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.fit_result: FitResult | None = None
        # Forward passes toggle module modes (MC dropout): one at a time per model.
        self._lock = threading.RLock()

    @classmethod
    def create(cls, space: LabelSpace, config: LoraTrainConfig | None = None) -> LoraClassifier:
        """A fresh adapter (lora_B = 0, so it starts as the backbone) with a new head."""
        from peft import LoraConfig, TaskType, get_peft_model

        config = config or LoraTrainConfig()
        torch.manual_seed(config.seed)
        base, tokenizer, fresh = _load_backbone(space, config)
        if config.method == "full":
            return cls(space, config, base, tokenizer)  # every weight trains
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,  # keeps the head in modules_to_save
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=find_target_modules(base),
            modules_to_save=fresh or None,
        )
        return cls(space, config, get_peft_model(base, peft_config), tokenizer)

    @classmethod
    def train(
        cls,
        space: LabelSpace,
        texts: Sequence[str],
        targets: NDArray[np.int64],
        config: LoraTrainConfig | None = None,
        eval_texts: Sequence[str] = (),
        eval_targets: NDArray[np.int64] | None = None,
        progress: ProgressCallback | None = None,
        show_progress: bool = False,
    ) -> LoraClassifier:
        """``create`` then ``fit``; the run's metrics are in ``fit_result``."""
        clf = cls.create(space, config)
        clf.fit(texts, targets, eval_texts, eval_targets, progress, show_progress)
        return clf

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> LoraClassifier:
        """Re-create the backbone named in the saved config and attach the saved adapter (a
        full fine-tune: load the saved model itself)."""
        from peft import PeftModel

        data = json.loads((path / TRAIN_CONFIG_FILE).read_text())
        if device is not None:
            data["device"] = device
        config = LoraTrainConfig.from_dict(data)
        space = load_space(path)
        if config.method == "full":
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
            return cls(space, config, model, AutoTokenizer.from_pretrained(path))
        base, tokenizer, _ = _load_backbone(space, config)
        model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
        return cls(space, config, model, tokenizer)

    def save(self, path: Path) -> None:
        """Adapter weights and config (peft), label space and training config; no backbone
        (a full fine-tune: the whole model and its tokenizer)."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        if self.config.method == "full":
            self.tokenizer.save_pretrained(str(path))
        save_space(self.space, path)
        (path / TRAIN_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    # --- training ---------------------------------------------------------------------------

    def _batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in encoded.items()}

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.space.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        return nn.functional.cross_entropy(logits, targets)

    def _check_targets(self, texts: Sequence[str], targets: NDArray[np.int64]) -> torch.Tensor:
        expected = (len(texts), self.space.size) if self.space.multi_label else (len(texts),)
        if targets.shape != expected:
            raise ValueError(f"targets shaped {targets.shape}, expected {expected}")
        return torch.as_tensor(targets, dtype=torch.long)

    def merged(self) -> Any:
        """A copy of the model as plain transformers (the adapter merged into the backbone's
        weights, the head kept): what loads anywhere without peft. This one is untouched."""
        with self._lock:
            model = copy.deepcopy(self.model).cpu().eval()
        return model.merge_and_unload() if self.config.method == "lora" else model

    def fit(
        self,
        texts: Sequence[str],
        targets: NDArray[np.int64],
        eval_texts: Sequence[str] = (),
        eval_targets: NDArray[np.int64] | None = None,
        progress: ProgressCallback | None = None,
        show_progress: bool = False,
    ) -> FitResult:
        """Train on ``texts``; targets are class indices ``[N]`` or a 0/1 matrix ``[N, C]``.

        With eval data the model ends on the epoch with the best eval accuracy (ties: lower
        eval loss), else on the last one. If anything raises (including ``progress``), the
        trainable weights go back to what they were before the call, in eval mode.
        """
        from tqdm.auto import tqdm

        if not texts:
            raise ValueError("nothing to train on")
        cfg = self.config
        y = self._check_targets(texts, targets)
        held_out = (eval_texts, eval_targets) if eval_targets is not None and eval_texts else None
        before = trainable_state(self.model)
        torch.manual_seed(cfg.seed)
        steps_per_epoch = -(-len(texts) // cfg.batch_size)
        epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
        step = _Stepper(self)
        generator = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best: tuple[float, float] | None = None
        best_epoch, best_state = epochs, before
        bar = tqdm(
            total=steps_per_epoch * epochs, desc="lora", disable=not show_progress, leave=False
        )
        with self._lock:  # predict_proba waits while the weights change
            try:
                for epoch in range(1, epochs + 1):
                    self.model.train()
                    started = time.perf_counter()
                    order = torch.randperm(len(texts), generator=generator)
                    loss_sum = 0.0
                    for start in range(0, len(texts), cfg.batch_size):
                        idx = order[start : start + cfg.batch_size]
                        loss_sum += step([texts[i] for i in idx.tolist()], y[idx]) * len(idx)
                        bar.update(1)
                    train_s = time.perf_counter() - started
                    metrics = {
                        "epoch": float(epoch),
                        "train_loss": loss_sum / len(texts),
                        "train_s": train_s,
                        "samples_per_s": len(texts) / train_s,
                    }
                    if held_out is not None:
                        metrics.update(self.evaluate(*held_out))
                        key = (metrics["eval_accuracy"], -metrics["eval_loss"])
                        if best is None or key > best:
                            best, best_epoch, best_state = key, epoch, trainable_state(self.model)
                    history.append(metrics)
                    bar.set_postfix({k: round(v, 3) for k, v in metrics.items() if k != "epoch"})
                    if progress is not None:
                        progress(epoch, epochs, metrics)
            except BaseException:
                load_state(self.model, before)
                raise
            finally:
                self.model.eval()
                bar.close()
            if held_out is not None:
                load_state(self.model, best_state)
        self.fit_result = FitResult(history, best_epoch)
        return self.fit_result

    def evaluate(self, texts: Sequence[str], targets: NDArray[np.int64]) -> dict[str, float]:
        """Deterministic eval accuracy (exact match for multi-label) and loss."""
        y = self._check_targets(texts, targets)
        probs = torch.from_numpy(self.predict_proba(texts, mc_samples=1)[:, :, 0])
        if self.space.multi_label:
            correct = ((probs >= 0.5).long() == y).all(dim=1)
            loss = nn.functional.binary_cross_entropy(probs.double(), y.double())
        else:
            correct = probs.argmax(dim=1) == y
            loss = nn.functional.nll_loss(probs.double().clamp_min(1e-12).log(), y)
        return {"eval_accuracy": float(correct.float().mean()), "eval_loss": float(loss)}

    # --- inference --------------------------------------------------------------------------

    def predict_proba(
        self, texts: Sequence[str], mc_samples: int | None = None, batch_size: int = 64
    ) -> Probs:
        """Probabilities ``[N, C, T]``: T MC-dropout passes (``mc_samples``, default from the
        config); T = 1 is one deterministic pass in eval mode."""
        samples = self.config.mc_samples if mc_samples is None else mc_samples
        if samples < 1:
            raise ValueError("mc_samples must be at least 1")
        out = np.zeros((len(texts), self.space.size, samples), dtype=np.float32)
        # Similar lengths in a batch means less padding: sort, predict, write back in place.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        amp = autocast_dtype(self.config.mixed_precision, self.device)
        mode = mc_dropout(self.model) if samples > 1 else eval_mode(self.model)
        with self._lock, mode, torch.inference_mode(), autocast(self.device, amp):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self._batch([texts[i] for i in rows])
                passes = [self.model(**batch).logits.float() for _ in range(samples)]
                logits = torch.stack(passes, dim=2)  # [B, C, T]
                if self.space.multi_label:
                    probs = torch.sigmoid(logits)
                else:
                    probs = torch.softmax(logits, dim=1)
                out[rows] = probs.cpu().numpy()
        return out


class _Stepper:
    """One optimisation step: forward under autocast, loss plus STAR's B penalty, AdamW,
    gradient clipping, and a GradScaler when training in fp16."""

    def __init__(self, clf: LoraClassifier) -> None:
        self.clf = clf
        self.params = [p for p in clf.model.parameters() if p.requires_grad]
        # No AdamW weight decay: STAR regularises lora_B only, through the loss.
        self.optimizer = torch.optim.AdamW(self.params, lr=clf.config.lr, weight_decay=0.0)
        self.amp = autocast_dtype(clf.config.mixed_precision, clf.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

    def __call__(self, texts: list[str], targets: torch.Tensor) -> float:
        clf = self.clf
        batch = clf._batch(texts)
        with autocast(clf.device, self.amp):
            logits = clf.model(**batch).logits
        loss = clf._loss(logits, targets.to(clf.device))
        if clf.config.b_decay > 0:
            loss = loss + clf.config.b_decay * b_penalty(clf.model, clf.device)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(loss))
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --- shared by the adapters of every task kind ------------------------------------------------


def b_penalty(model: nn.Module, device: torch.device) -> torch.Tensor:
    """STAR: sum of squared lora_B entries, pulling the update toward the base model (0 for a
    full fine-tune: there is no lora_B)."""
    squares = [p.pow(2).sum() for n, p in model.named_parameters() if "lora_B" in n]
    return torch.stack(squares).sum() if squares else torch.zeros((), device=device)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights being trained (to go back to the best epoch, or to the start)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


def autocast(
    device: torch.device, amp: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision in ``amp`` on ``device`` (None: full precision)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)
