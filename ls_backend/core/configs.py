"""What shapes a training round: each knob defined once, with its default and help text.

``Settings`` takes its LoRA and round fields from these (default and description), builds
these configs from the environment, and ``ls-backend bench`` makes its flags from them.
Light on purpose (no torch): the settings import it at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

Precision = Literal["auto", "bf16", "fp16", "no"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: How a backbone is fine-tuned: a LoRA adapter (the lanes), or every weight (``finetune``).
Method = Literal["lora", "full"]
METHODS: tuple[str, ...] = get_args(Method)


def help_of(config: type, name: str) -> str:
    """The help text of field ``name`` of a config dataclass."""
    return str(next(f for f in fields(config) if f.name == name).metadata["help"])


def default_of(config: type, name: str) -> Any:
    return next(f for f in fields(config) if f.name == name).default


@dataclass
class LoraTrainConfig:
    """Everything that shapes a LoRA run; saved beside the adapter so a load re-creates it."""

    backbone: str = field(
        default="embedded",
        metadata={"help": "Backbone for LoRA: `embedded`, a local path or a Hugging Face id."},
    )
    max_length: int = field(
        default=128, metadata={"help": "Tokens per text for embeddings and LoRA."}
    )
    epochs: int = field(
        default=10, metadata={"help": "Maximum LoRA epochs (best epoch on held-out)."}
    )
    min_steps: int = field(
        default=100,
        # With few labels, `epochs` alone leaves the adapter underfit (TREC, 100 labels:
        # 0.42 -> 0.84).
        metadata={"help": "Add epochs until this many optimiser steps ran (few labels)."},
    )
    lr: float = field(default=2e-3, metadata={"help": "LoRA learning rate (AdamW)."})
    batch_size: int = field(default=16, metadata={"help": "LoRA training batch size."})
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (also MC dropout)."})
    b_decay: float = field(
        default=0.01,
        metadata={"help": "STAR: L2 penalty on lora_B only, pulling toward the base model."},
    )
    mc_samples: int = field(
        default=1,
        metadata={
            "help": "STAR: MC-dropout forward passes of an adapter at inference; 1 (the "
            "default) is one deterministic pass: on trec it served better and ranked no worse "
            "than 5 at a fifth of the cost (benchmarks/RESULTS.md, STAR measured)."
        },
    )
    device: str = field(
        default="auto",
        metadata={"help": "`auto` (CUDA when available), `cpu` or `cuda[:N]`."},
    )
    mixed_precision: Precision = field(
        default="auto",
        metadata={"help": "`auto` (bf16, else fp16 on CUDA; off on CPU), `bf16`, `fp16`, `no`."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds head/adapter init, shuffling, dropout."})
    method: Method = field(
        default="lora",
        metadata={
            "help": "`lora`: train an adapter on the attention's query/value projections; "
            "`full`: train every weight of the backbone (ls-backend finetune)."
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if min(self.mc_samples, self.epochs, self.batch_size) < 1 or self.min_steps < 0:
            raise ValueError("mc_samples, epochs and batch_size must be >= 1, min_steps >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RoundConfig:
    """A training round's settings (``core.training.run_round``), recorded with the version."""

    head_c: float = field(default=10.0, metadata={"help": "Inverse L2 strength of the light head."})
    head_prior: bool = field(
        default=True,
        metadata={
            "help": "Shrink the light head toward the label names' embeddings (zero-shot as a "
            "prior) as strongly as cross-validation on the labels says: none when the names do "
            "not fit the labels."
        },
    )
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share of annotations held out to evaluate candidates."}
    )
    eval_min_labels: int = field(
        default=30,
        metadata={"help": "Below this many labels, evaluate by k-fold instead of held-out."},
    )
    star_lambda_decay: float = field(
        default=0.5,
        metadata={
            "help": "STAR: weight of the base model's uncertainty is decay**round "
            "(round = LoRA models promoted so far)."
        },
    )
    #: The adapter's training, for LoRA rounds.
    lora: LoraTrainConfig | None = None
    #: Recorded with the version besides these (the embedding model and runtime).
    extra: dict[str, Any] = field(default_factory=dict)
