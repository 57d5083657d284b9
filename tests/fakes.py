"""Stand-ins for tests that are about plumbing, not about models."""

import zlib

import numpy as np

from ls_backend.core.embeddings import Encoder


class HashEncoder(Encoder):
    """Deterministic pseudo-embeddings from a text's CRC: instant, no model to load."""

    def __init__(self, dim: int = 16) -> None:
        self.model_name = "hash"
        self.dim = dim
        self.cache = None

    def encode(self, texts, progress=False, background=False):
        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts
        ]
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-9)


def annotation_event(
    annotation_id: int,
    task_id: int,
    choices: list[str],
    *,
    text: str | None = None,
    config: str,
    project: int = 1,
    from_name: str = "label",
    action: str = "ANNOTATION_CREATED",
) -> dict:
    """A webhook body shaped like Label Studio 1.23's (LABEL_STUDIO.md 4.4)."""
    result = [
        {
            "from_name": from_name,
            "to_name": "text",
            "type": "choices",
            "value": {"choices": choices},
        }
    ]
    return {
        "action": action,
        "annotation": {
            "id": annotation_id,
            "task": task_id,
            "was_cancelled": False,
            "result": result,
        },
        "task": {"id": task_id, "data": {"text": text if text is not None else f"text {task_id}"}},
        "project": {"id": project, "label_config": config},
    }


def die(*_args: object) -> None:
    """Stands in for a training run that the kernel kills (OOM) in its child process."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def orphan_probe(pid_file: str) -> None:
    """Stands in for a LoRA round in its child process: says where it is, then trains on."""
    import os
    import time
    from pathlib import Path

    from ls_backend.jobs.training import follow_parent

    follow_parent(poll_s=0.1)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


def alive(pid: int) -> bool:
    """A process that has not exited (a zombie waiting for its reaper counts as gone)."""

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:  # reaped
        return False


def wait_for(probe, timeout: float = 120.0, what: str = "condition"):
    """Poll ``probe`` until it returns something truthy; that value is returned."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class BackendProcess:
    """What one serving process holds, for tests that drive it without HTTP: the projects and
    a scheduler of background work listening to them (in-process threads unless given)."""

    def __init__(self, settings, encoder=None, scheduler=None) -> None:
        from ls_backend.jobs import start_scheduler
        from ls_backend.projects import Projects

        self.settings = settings
        self.projects = Projects(settings, encoder=encoder or HashEncoder())
        self.scheduler = scheduler(self.projects) if scheduler else start_scheduler(self.projects)

    @property
    def lanes(self):
        return self.scheduler.lanes

    @property
    def encoder(self):
        return self.projects.encoder

    def project(self, key):
        return self.projects.project(key)


class DictCache:
    """A ``core.embeddings.VectorCache`` in memory: what the core needs of a cache, no store."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, bytes], np.ndarray] = {}

    def get_many(self, model, keys):
        return {k: self.vectors[(model, k)] for k in keys if (model, k) in self.vectors}

    def put_many(self, model, items):
        self.vectors.update(((model, k), v) for k, v in items.items())


def text_classification_config(
    labels: list[str], from_name: str = "label", to_name: str = "text"
) -> str:
    """A Choices-over-Text label config, the kind of project this backend serves."""
    choices = "".join(f'<Choice value="{label}"/>' for label in labels)
    return (
        f'<View><Text name="{to_name}" value="$text"/>'
        f'<Choices name="{from_name}" toName="{to_name}" choice="single">{choices}</Choices></View>'
    )
