"""A fine-tuned model as a standard Hugging Face directory, written atomically:

    config.json, model.safetensors   the model (a LoRA adapter merged into the backbone), with
                                     ``id2label``/``label2id`` and its ``problem_type``
    tokenizer.json, ...              its tokenizer (``model_max_length``: the trained length)
    onnx/model.onnx                  the same model for ONNX Runtime (logits), checked against
                                     torch before anything is renamed into place
    README.md                        the model card: labels and counts, metrics and their
                                     split, backbone, method, data fingerprint, backend version
    finetune.json                    the same record, for programs

so that ``AutoModelForSequenceClassification.from_pretrained(DIR)`` and
``pipeline("text-classification", model=DIR)`` load it offline, without peft or ls-backend.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.core.files import write_dir_atomic
from ls_backend.core.finetune import Finetuned, FinetuneError

ONNX_FILE = Path("onnx") / "model.onnx"
RECORD_FILE = "finetune.json"
#: Largest difference between ONNX Runtime's and torch's logits that passes the check.
ONNX_TOLERANCE = 1e-3
#: Texts the ONNX graph is traced with and checked on (two lengths: the axes are dynamic).
_SAMPLE = ["a sentence to trace the graph with, somewhat longer than the other", "short"]
#: An export writes the weights about twice (safetensors and ONNX); this much more is asked
#: to be free before it starts.
_SPACE_FACTOR = 2.2


def check_target(out: Path, weights_bytes: int | None) -> None:
    """Fail before training when ``out`` cannot be written: it exists and is not empty, or its
    disk has clearly too little room for the export."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FinetuneError(f"{out} exists: choose another --out, or delete it first")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise FinetuneError(f"{parent} is not writable: choose another --out")
    if weights_bytes is not None:
        needed, free = int(weights_bytes * _SPACE_FACTOR), shutil.disk_usage(parent).free
        if free < needed:
            raise FinetuneError(
                f"{parent} has {free / 1e6:.0f} MB free; the export needs about "
                f"{needed / 1e6:.0f} MB: free some space or choose another --out"
            )


def record(done: Finetuned, source: dict[str, Any], backend_version: str) -> dict[str, Any]:
    """What the model card says, as data (``finetune.json``)."""
    train = done.config.train
    method: dict[str, Any] = {"name": train.method}
    if train.method == "lora":
        method.update(r=train.r, alpha=train.alpha, dropout=train.dropout, merged=True)
    return {
        "labels": list(done.space.labels),
        "multi_label": done.space.multi_label,
        "counts": done.counts,
        "examples": done.examples,
        "evaluation": {"split": done.split, "metrics": done.metrics},
        "test": done.test_metrics,
        "backbone": train.backbone,
        "method": method,
        "training": {
            "epochs": done.epochs,
            "lr": train.lr,
            "batch_size": train.batch_size,
            "max_length": train.max_length,
            "b_decay": train.b_decay if train.method == "lora" else None,
            "seed": train.seed,
            "device": str(done.classifier.device),
            "mixed_precision": train.mixed_precision,
            "seconds": round(done.seconds, 1),
        },
        "data": {"fingerprint": done.fingerprint, **source},
        "ls_backend": backend_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _figures(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "- | - | - | -"
    return (
        f"{metrics['n']} | {metrics['accuracy']:.3f} | {metrics['macro_f1']:.3f} "
        f"| {metrics['ece']:.3f}"
    )


def model_card(rec: dict[str, Any]) -> str:
    """README.md: YAML metadata the Hub reads, then what a user of the model needs to know."""
    method, training, split = rec["method"], rec["training"], rec["evaluation"]["split"]
    how = (
        f"LoRA (r={method['r']}, alpha={method['alpha']}), merged into the backbone's weights"
        if method["name"] == "lora"
        else "full fine-tune (every weight)"
    )
    kind = "multi-label" if rec["multi_label"] else "single-label"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- ls-backend",
        f"- {method['name']}",
        "---",
        "",
        "# Text classifier fine-tuned by ls-backend",
        "",
        f"{kind.capitalize()} text classification over {len(rec['labels'])} labels, fine-tuned "
        f"from `{rec['backbone']}` ({how}) on {rec['examples']} labeled texts.",
        "",
        "## Labels",
        "",
        "| id | label | training labels |",
        "|---|---|---|",
        *(f"| {i} | {label} | {rec['counts'][label]} |" for i, label in enumerate(rec["labels"])),
        "",
        "## Metrics",
        "",
        "| split | items | accuracy | macro-F1 | ECE |",
        "|---|---|---|---|---|",
        f"| {split['name']} | {_figures(rec['evaluation']['metrics'])} |",
    ]
    if rec["test"]:
        lines.append(f"| test ({rec['data'].get('test', 'test file')}) | {_figures(rec['test'])} |")
    lines += [
        "",
        f"{split['name']}: {split['note']}."
        + (" Multi-label accuracy is exact match." if rec["multi_label"] else ""),
        "",
        "## Training",
        "",
        f"- backbone: `{rec['backbone']}`",
        f"- method: {how}",
        f"- epochs {training['epochs']}, learning rate {training['lr']}, batch "
        f"{training['batch_size']}, {training['max_length']} tokens per text, seed "
        f"{training['seed']}, on {training['device']} ({training['seconds']:.0f} s)",
        f"- data fingerprint: `{rec['data']['fingerprint']}`"
        + "".join(f"; {k}: {v}" for k, v in rec["data"].items() if k != "fingerprint"),
        f"- ls-backend {rec['ls_backend']}, {rec['created']}",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        'clf = pipeline("text-classification", model="<this folder>", truncation=True'
        + (", top_k=None)  # each label's probability: keep >= 0.5" if rec["multi_label"] else ")"),
        'clf("some text")',
        "```",
        "",
        f"`truncation=True` cuts texts to the {training['max_length']} tokens it was trained "
        "on. `onnx/model.onnx` is the same model for ONNX Runtime: inputs as the tokenizer "
        "gives them, output `logits`.",
        "",
    ]
    return "\n".join(lines)


def _export_onnx(model: Any, tokenizer: Any, path: Path) -> None:
    """Trace ``model`` to ONNX (dynamic batch and length) and check it against torch."""
    import onnxruntime as ort
    import torch

    sample = tokenizer(_SAMPLE, padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    if hasattr(model, "set_attn_implementation"):
        # Eager attention traces to plain ops; SDPA's fused kernel does not export everywhere.
        with contextlib.suppress(ValueError, NotImplementedError):
            model.set_attn_implementation("eager")

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.model(**dict(zip(names, inputs, strict=True))).logits
            return logits

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            Logits().eval(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        expected = model(**{n: sample[n] for n in names}).logits.float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: sample[n].numpy().astype(np.int64) for n in names})[0]
    worst = float(np.abs(got - expected).max())
    if worst > ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f"the ONNX export's logits differ from torch's by {worst:.2e}")


def write_model(out: Path, done: Finetuned, rec: dict[str, Any]) -> None:
    """Write the directory (see the module's docstring) atomically: it appears whole or not at
    all. A full disk raises a ``FinetuneError`` that says so, and leaves nothing behind."""
    check_target(out, None)

    def write(tmp: Path) -> None:
        model = done.classifier.merged()
        space = done.space
        model.config.id2label = dict(enumerate(space.labels))
        model.config.label2id = {label: i for i, label in enumerate(space.labels)}
        model.config.problem_type = (
            "multi_label_classification" if space.multi_label else "single_label_classification"
        )
        model.save_pretrained(str(tmp))
        tokenizer = copy.deepcopy(done.classifier.tokenizer)
        tokenizer.model_max_length = done.config.train.max_length
        tokenizer.save_pretrained(str(tmp))
        _export_onnx(model, tokenizer, tmp / ONNX_FILE)
        (tmp / RECORD_FILE).write_text(json.dumps(rec, indent=1))
        (tmp / "README.md").write_text(model_card(rec))

    try:
        if out.is_dir():
            out.rmdir()  # empty (check_target): the rename needs it gone
        if not write_dir_atomic(out, write):
            raise FinetuneError(f"{out} appeared while the model was written: nothing written")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FinetuneError(
                f"no space left on the device writing {out}: nothing was written (the "
                f"partial copy was removed); free some space and run again"
            ) from exc
        raise
