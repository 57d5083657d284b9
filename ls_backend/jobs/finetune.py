"""``ls-backend finetune``: the final model from a project's labels (or a dataset file), on the
backbone of the user's choice (``core.finetune``), exported as a Hugging Face directory
(``core.export``) and, with ``register``, saved as a version that serves by the promotion rule.

A project's fine-tune runs as a job on the LoRA queue when REDIS_URL is set (a GPU worker,
``ls-backend worker --queues lora``, takes it; its progress is in the job's meta), and in this
process otherwise. Either way the training runs in a child process at lower priority, as a
LoRA round does, so an out-of-memory kill fails the job, not the worker.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend import __version__
from ls_backend.core.configs import METHODS, Method
from ls_backend.core.export import check_target, record, write_model
from ls_backend.core.finetune import (
    FULL_LR,
    MIN_PER_CLASS,
    FinetuneConfig,
    FinetuneError,
    Labeled,
    check_backbone,
    finetune,
    model_bytes,
    register,
)
from ls_backend.core.labels import LabelSpace
from ls_backend.core.tasks import Progress, TaskKind
from ls_backend.settings import Settings

log = logging.getLogger(__name__)

#: Longest a fine-tune may run on an RQ worker (a full fine-tune of a big backbone on a CPU
#: takes hours).
TIMEOUT_S = 12 * 3600
#: How long RQ keeps a finished fine-tune's result (its folder and figures) to be read.
RESULT_TTL_S = 7 * 24 * 3600


@dataclass
class FinetuneRequest:
    """What ``ls-backend finetune`` was asked for; every ``None`` takes the server's setting."""

    project: str | None = None  # a project's labels ...
    train: str | None = None  # ... or a JSONL file of {text, label}
    test: str | None = None  # scored after training (files only)
    out: str | None = None  # default: MODEL_DIR/<project>/finetuned/<name>, ./finetuned/<name>
    backbone: str | None = None  # default: LORA_BACKBONE
    method: str = "lora"
    register: bool = False
    evaluation: str = "auto"
    epochs: int | None = None
    lr: float | None = None  # default: LORA_LR for lora, FULL_LR for full
    batch_size: int | None = None
    max_length: int | None = None
    seed: int = 0
    min_per_class: int = MIN_PER_CLASS
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if (self.project is None) == (self.train is None):
            raise FinetuneError("give --project, or --train (a dataset file), not both")
        if self.method not in METHODS:
            raise FinetuneError(f"--method must be one of {METHODS}")
        if self.register and self.project is None:
            raise FinetuneError("--register needs --project: a version belongs to a project")
        if self.test and self.project is not None:
            raise FinetuneError("--test goes with --train (a project's labels are evaluated "
                                "by k-fold or its held-out split)")  # fmt: skip


def config_for(settings: Settings, request: FinetuneRequest) -> FinetuneConfig:
    """The fine-tune the request and the server's settings make."""
    train = settings.lora_config()
    given: dict[str, Any] = {
        "backbone": request.backbone,
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "max_length": request.max_length,
    }
    train = replace(train, **{k: v for k, v in given.items() if v is not None})
    lr = request.lr or (train.lr if request.method == "lora" else FULL_LR)
    # STAR's L2 pulls lora_B toward 0; a full fine-tune has none.
    b_decay = train.b_decay if request.method == "lora" else 0.0
    method: Method = "full" if request.method == "full" else "lora"
    train = replace(train, method=method, lr=lr, b_decay=b_decay, seed=request.seed)
    return FinetuneConfig(
        train,
        evaluation=request.evaluation,  # type: ignore[arg-type]  # checked by FinetuneConfig
        eval_fraction=settings.eval_fraction,
        eval_min_labels=settings.eval_min_labels,
        min_per_class=request.min_per_class,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text)[:40]


def out_dir(settings: Settings, request: FinetuneRequest, backbone: str) -> Path:
    if request.out:
        return Path(request.out)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{stamp}-{_slug(backbone)}-{request.method}"
    if request.project is not None:
        from ls_backend.projects import project_key

        return settings.model_dir / project_key(request.project) / "finetuned" / name
    return Path("finetuned") / f"{_slug(Path(request.train or '').parent.name)}-{name}"


def _file_data(
    request: FinetuneRequest,
) -> tuple[LabelSpace, Labeled, Labeled | None, dict[str, Any]]:
    from ls_backend.bench.data import read_jsonl

    assert request.train is not None
    texts, labels = read_jsonl(Path(request.train))
    test_texts, test_labels = read_jsonl(Path(request.test)) if request.test else ([], [])
    try:
        space = LabelSpace(tuple(sorted(set(labels) | set(test_labels))))
    except ValueError as exc:
        raise FinetuneError(f"{request.train}: {exc}") from exc
    data = Labeled(texts, space.encode([[x] for x in labels]), list(range(len(texts))))
    test = None
    if request.test:
        keys = list(range(len(test_texts)))
        test = Labeled(test_texts, space.encode([[x] for x in test_labels]), keys)
    source = {"train": request.train, **({"test": request.test} if request.test else {})}
    return space, data, test, source


def run(
    settings: Settings,
    request: FinetuneRequest,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The fine-tune, in this process: check, load the labels, train, write the directory and
    (``register``) the version. Returns what it did (the folder, the figures, the version)."""
    request.check()
    config = config_for(settings, request)
    backbone_path = check_backbone(config.train.backbone)
    out = out_dir(settings, request, config.train.backbone).resolve()
    check_target(out, model_bytes(backbone_path))  # before hours of training, not after
    project = labeled = None
    if request.project is not None:
        from ls_backend.projects import Projects

        project = Projects(settings).connected_project(request.project)
        if project is None:
            raise FinetuneError(f"project {request.project} is unknown under {settings.model_dir}")
        if project.task.kind is not TaskKind.CLASSIFICATION:
            raise FinetuneError(
                f"project {project.key} is a {project.task.kind.value} project: finetune "
                "trains classifiers (<Choices> alone) only"
            )
        space, labeled, skipped = project.labeled_data()
        data = Labeled(labeled.texts, np.asarray(labeled.targets), list(labeled.strata_keys))
        test = None
        source: dict[str, Any] = {"project": project.key, "skipped_annotations": skipped}
        if request.register and config.resolved_evaluation(len(data)) != "held-out":
            raise FinetuneError(
                f"--register needs the held-out evaluation: {len(data)} labels, it starts at "
                f"EVAL_MIN_LABELS={settings.eval_min_labels}"
            )
    else:
        space, data, test, source = _file_data(request)
    done = finetune(space, data, config, progress, show_progress, test)
    rec = record(done, source, __version__)
    write_model(out, done, rec)
    result: dict[str, Any] = {
        "out": str(out),
        "labels": len(data),
        "evaluation": done.split["name"],
        "metrics": done.metrics,
        "test": done.test_metrics,
        "seconds": round(done.seconds, 1),
    }
    if request.register:
        assert project is not None and labeled is not None
        names = project.label_embeddings(space) if settings.head_prior else None

        def serving() -> Any:
            return project.current_model(fresh=True)

        extra = {"finetune": {"out": str(out), "fingerprint": done.fingerprint}}
        saved = register(
            project.task, project.registry, space, labeled, done,
            settings.round_config(lora=True), serving, names, extra,
        )  # fmt: skip
        result.update(version=saved.version, promoted=saved.promoted, reason=saved.reason)
    return result


def run_isolated_request(
    settings: Settings, request: FinetuneRequest, progress: Progress
) -> dict[str, Any]:
    """``run`` in a child process at lower priority (the LoRA lane's isolation)."""
    from ls_backend.jobs.training import run_isolated

    return run_isolated(_child, settings, request, progress)


def _child(settings: Settings, request: FinetuneRequest, progress: Progress) -> dict[str, Any]:
    import os

    from ls_backend.jobs.training import CHILD_NICENESS, follow_parent

    os.nice(CHILD_NICENESS)
    follow_parent()
    return run(settings, request, progress)


# --- the job on the LoRA queue (REDIS_URL) -------------------------------------------------------


@dataclass
class JobProgress:
    """Writes progress into the RQ job's meta (at most every ``every_s``); picklable, so the
    child process reports too (it connects again)."""

    redis_url: str
    job_id: str
    every_s: float = 1.0
    _last: float = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s and fraction < 1.0:
            return
        self._last = now
        from redis import Redis
        from rq.job import Job

        from ls_backend.jobs.rq import SERIALIZER

        redis = Redis.from_url(self.redis_url)
        job = Job.fetch(self.job_id, connection=redis, serializer=SERIALIZER)
        job.meta.update(progress=round(fraction, 3), stage=stage)
        job.save_meta()  # type: ignore[no-untyped-call]


def finetune_job(request: dict[str, Any]) -> dict[str, Any]:
    """What the RQ job runs on a worker: the request, with the worker's settings."""
    from rq import get_current_job

    from ls_backend.settings import get_settings

    settings = get_settings()
    job = get_current_job()
    assert job is not None and settings.redis_url
    progress = JobProgress(settings.redis_url, job.id)
    return run_isolated_request(settings, FinetuneRequest(**request), progress)


def enqueue(settings: Settings, request: FinetuneRequest) -> Any:
    """Put the fine-tune on the LoRA queue; returns the RQ job."""
    from redis import Redis
    from rq import Queue

    from ls_backend.jobs.rq import SERIALIZER, queue_name

    assert settings.redis_url
    request.check()
    redis = Redis.from_url(settings.redis_url)
    queue = Queue(queue_name("lora"), connection=redis, serializer=SERIALIZER)  # as workers read
    return queue.enqueue(
        finetune_job,
        asdict(request),
        job_timeout=TIMEOUT_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
        description=f"finetune, project {request.project}",
    )
