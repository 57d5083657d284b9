"""Where a project's state meets the model, per process: one encoder, and per project its
store, label config, serving model, predictions and training data.

Label Studio's side comes in (tasks, label configs) and goes out (predictions in its format)
through the ``labelstudio`` adapters; the core's models and measures run in between. This
module knows nothing of background work: what happens to a project is announced to whoever
subscribed (``Projects.subscribe``: the scheduler), so nothing here calls back up.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from ls_backend.core.embeddings import Encoder
from ls_backend.core.heads import label_prototype_texts
from ls_backend.core.labels import Embeddings
from ls_backend.core.pacing import Pacer
from ls_backend.core.registry import Registry
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import LabeledData, Model, Scored, Task
from ls_backend.core.training import save_prototype
from ls_backend.labelstudio import predictions, webhooks
from ls_backend.labelstudio.config import ConfigError, LabelConfig, TaskError, parse_config
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS, SKIPPED, AnnotationStore
from ls_backend.store.base import StoreMissing, StoreUnavailable
from ls_backend.store.databases import Databases
from ls_backend.store.pointer import StoreAddress, StorePointer, project_registry

log = logging.getLogger(__name__)

# What happens to a project besides Label Studio's webhook actions (``store.annotations``);
# background lanes wake on these.
#: Label Studio called /setup for the project.
CONNECTED = "PROJECT_CONNECTED"
#: The project's label config now has another label set.
LABEL_SPACE_CHANGED = "LABEL_SPACE_CHANGED"
#: ``POST /sync/{project}``: an admin asks for a new ranking now.
SYNC_REQUESTED = "SYNC_REQUESTED"
#: A training lane finished a round (promoted or not).
MODEL_TRAINED = "MODEL_TRAINED"
#: A webhook's event is about to be stored (no lane wakes on it: a scheduler whose requests
#: could be lost with the process between the store and the request takes note).
EVENT_RECEIVED = "EVENT_RECEIVED"

_PROJECT = re.compile(r"^[0-9]+$")
#: Label Studio ids are 32-bit; anything longer is not a project.
MAX_PROJECT_ID = 2**31 - 1
#: Projects kept open per process (a store connection per thread that used it, the model).
OPEN_PROJECTS = 32
#: A serving process looks at most this often which version serves (a promotion elsewhere
#: serves here this much later; one made in this process at once).
POINTER_POLL_S = 0.5
#: After the store failed to answer (each try waits up to 5 s for a PostgreSQL connection),
#: predictions use the config and model they hold this long before they ask it again.
STORE_RETRY_S = 10.0
#: /predict batches larger than this (Retrieve predictions) embed in the background's chunks,
#: so the single task Label Studio asks for while an annotator waits goes first.
BACKGROUND_BATCH = 16

Listener = Callable[["Project", str], None]
T = TypeVar("T")
#: Folders the backend itself keeps in MODEL_DIR beside the projects' (the ONNX exports).
_OURS = {"onnx"}


def project_key(raw: Any) -> str:
    """Label Studio sends ``"<id>.<created_ts>"`` to /setup and /predict, an int in webhooks;
    ``"007.1"`` and ``7`` are one project."""
    text = str(raw).split(".", 1)[0].strip()
    if not (_PROJECT.match(text) and len(text) <= 10 and 0 < int(text) <= MAX_PROJECT_ID):
        raise ValueError(f"project must be a Label Studio project id, got {str(raw)[:40]!r}")
    return str(int(text))


def project_created(raw: Any) -> int | None:
    """When Label Studio created the project (seconds since the epoch): the ``<created_ts>`` of
    ``"<id>.<created_ts>"`` (None for a bare id). With the id it names one Label Studio project:
    a reinstalled Label Studio reuses ids, never the creation time of a project."""
    _, dot, created = str(raw).partition(".")
    created = created.strip()
    return int(created) if dot and created.isdigit() and len(created) <= 12 else None


@dataclass
class PredictionBatch:
    model_version: str
    results: list[predictions.Prediction]


class ProjectView:
    """A project's stored state: its store and model registry. One from ``Projects.view`` only
    reads (no migration, no write, no model load): what /status, /metrics and the schedulers'
    sweeps look at, however many projects there are. A ``Project`` is one too."""

    def __init__(self, key: str, store: AnnotationStore, registry: Registry) -> None:
        self.key, self.store, self.registry = key, store, registry


class Project(ProjectView):
    def __init__(self, projects: Projects, key: str) -> None:
        self.projects = projects
        self.settings = settings = projects.settings
        self.encoder = projects.encoder
        self.dir = settings.model_dir / key
        self.address = StoreAddress(settings.model_dir, settings.database_url_value, key)
        store = AnnotationStore(projects.databases.project(key))
        super().__init__(key, store, project_registry(self.dir, store))
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._loaded: Model | None = None
        self._looked: tuple[float, int] | None = None  # (when, pointer writes seen then)
        self._config: tuple[str, LabelConfig] | None = None  # (xml, parsed)
        self._saved_config: str | None = None  # the label config the store is known to hold
        self._setup_urls: set[str] = set()  # recorded in the store already
        self._told: set[tuple[int, str]] = set()  # (annotation, problem) logged already
        #: What the last read of the labels found wrong inside annotations, by kind.
        self.problems: dict[str, int] = {}

    # --- label config ---------------------------------------------------------------------

    def config(self) -> LabelConfig:
        """The label config, parsed once per change; while the store is unreachable (a
        PostgreSQL restart), the last one read or sent, so predictions keep serving."""
        try:
            xml = self._ask_store(self.store.label_config)
        except StoreUnavailable:
            if self._config is None:
                raise
            return self._config[1]
        if xml is None:
            raise ConfigError(f"project {self.key} has no label config yet: call /setup first")
        self._saved_config = xml
        if self._config is None or self._config[0] != xml:
            parsed = parse_config(xml, self.settings.max_text_chars)
            self._config = (xml, parsed)
        return self._config[1]

    def setup(self, label_config: str | None) -> str:
        """Adopt a label config (parsed first: a bad one changes nothing); returns the version.
        While the store is away, predictions use the config sent, stored once it is back."""
        if label_config is not None:
            parsed = parse_config(label_config, self.settings.max_text_chars)
            if self._saved_config != label_config:
                try:
                    if self._ask_store(self.store.label_config) != label_config:
                        self.store.set_label_config(label_config)
                    self._saved_config = label_config
                except StoreUnavailable:
                    self._config = (label_config, parsed)
        return self.model().version

    def _ask_store(self, read: Callable[[], Any]) -> Any:
        """``read()`` from the store, unless it failed to answer within STORE_RETRY_S: then
        StoreUnavailable at once, so a prediction does not wait for it again."""
        if self.projects.store_away():
            raise StoreUnavailable("the store did not answer a moment ago")
        try:
            return read()
        except StoreUnavailable:
            self.projects.store_failed(self.key)
            raise

    def meet(self, created: int | None, host: str | None, label_config: str | None) -> None:
        """/setup says which Label Studio project calls (``project_created``; the host Label
        Studio names itself is kept beside it). Another one than the store holds, a reinstalled
        Label Studio reusing the id, gets fresh state (``AnnotationStore.meet``) and zero-shot
        serves it: the versions trained on the old one's labels stay saved, but none serves.
        Raises ``OtherLabelStudio`` for a Label Studio project replaced before."""
        if created is None:
            return
        if label_config is not None:
            parse_config(label_config)  # a bad config changes nothing (ConfigError)
        replaced = self.store.meet(created, host)
        if replaced is None:
            return
        log.warning(
            "project %s: another Label Studio project under this id (created at %d, host %s; "
            "the one held was created at %d): its state starts afresh",
            self.key, created, host, replaced,
        )  # fmt: skip
        if label_config is not None:
            self.store.set_label_config(label_config)
        try:
            config = self.config()
        except ConfigError:
            return  # no label config yet: setup makes the first model
        task = task_of(config.kind)
        with self._create_lock:
            model = task.prototype(config.space, self.label_embeddings(config.space))
            reason = f"another Label Studio project (created at {created}): fresh state"
            save_prototype(self.registry, model, reason, task.kind)
        self.current_model(fresh=True)

    def connect(self, reached_by: Sequence[str] = ()) -> None:
        """Label Studio called /setup (by the URLs ``reached_by``): from now on its events and
        syncs for it are welcome, and the webhook of that URL is the backend's own."""
        self.store.mark_connected()
        urls = [webhooks.normalized(url) for url in reached_by]
        if any(url not in self._setup_urls for url in urls):
            self.store.note_setup_urls(urls, keep=webhooks.MAX_URLS)
            self._setup_urls.update(urls)
        self.projects.emit(self, CONNECTED)

    @property
    def task(self) -> Task:
        """The kind of task the label config asks for."""
        return task_of(self.config().kind)

    @property
    def connected(self) -> bool:
        """Label Studio called /setup for it (a prediction, even with a label config, does not
        connect: the backend acts on a connected project with the admin's key)."""
        return self.store.connected_at() is not None

    # --- the serving model ------------------------------------------------------------------

    def current_model(self, fresh: bool = False) -> Model | None:
        """The serving version, loaded when the pointer moved. The pointer is read at most every
        POINTER_POLL_S unless ``fresh``; while the store is unreachable the loaded model serves."""
        with self._lock:
            writes = self.registry.moves
            now = time.monotonic()
            if not fresh and self._looked is not None:
                when, seen = self._looked
                if seen == writes and now - when < POINTER_POLL_S:
                    return self._loaded
            try:
                version = (
                    self.registry.current() if fresh else self._ask_store(self.registry.current)
                )
            except StoreUnavailable:
                if self._looked is not None:
                    return self._loaded
                version = self._on_disk()  # since this process started: what served then
            self._looked = (now, writes)
            if version != (self._loaded.version if self._loaded else None):
                self._loaded = self._load(version) if version else None
            return self._loaded

    def _on_disk(self) -> str:
        """The serving version as last copied to disk (the store is away)."""
        version = cast(StorePointer, self.registry.pointer).last_written()
        try:
            self.registry.path(version or "")
        except KeyError:
            raise StoreUnavailable(
                f"the store of project {self.key} is unreachable and no serving version was "
                "copied to disk"
            ) from None
        return str(version)

    def _load(self, version: str) -> Model:
        kind = self.registry.info(version).get("task", "classification")
        device = self.settings.resolved_device()
        return task_of(kind).load(self.registry.path(version), version, device)

    def model(self) -> Model:
        """The serving model; zero-shot prototypes for a new project or a changed label set."""
        current = self.current_model()
        config = self.config()
        if current is not None and current.space == config.space:
            return current
        with self._create_lock:
            current = self.current_model()
            if current is not None and current.space == config.space:
                return current
            task = task_of(config.kind)
            model = task.prototype(config.space, self.label_embeddings(config.space))
            reason = "new label config" if current else "first label config"
            model.version = save_prototype(self.registry, model, reason, task.kind)
        self.projects.emit(self, LABEL_SPACE_CHANGED)
        return self.current_model() or model

    def label_embeddings(self, space: Any) -> Embeddings:
        return self.encoder.encode(label_prototype_texts(space))

    # --- predictions ----------------------------------------------------------------------

    def score(self, texts: list[str], embeddings: Embeddings, model: Model | None = None) -> Scored:
        """Predict ``texts`` (already embedded) with ``model`` (the serving one by default)."""
        settings = self.settings
        model = model or self.model()
        return task_of(self.config().kind).score(
            model,
            texts,
            embeddings,
            mc_samples=settings.mc_samples,
            star_decay=settings.star_lambda_decay,
        )

    def predict(self, tasks: list[dict[str, Any]]) -> PredictionBatch:
        """One prediction per task, in order. A task without usable text gets an empty one
        (Label Studio drops a whole batch whose length is off); all of them unusable raises."""
        config = self.config()
        texts: dict[int, str] = {}
        problems: list[str] = []
        for row, task in enumerate(tasks):
            try:
                texts[row] = config.text_of(task)
            except TaskError as exc:
                problems.append(str(exc))
        if not texts:
            raise TaskError("; ".join(problems[:5]))
        if problems:
            log.warning(
                "project %s: %d of %d tasks get an empty prediction: %s",
                self.key, len(problems), len(tasks), "; ".join(problems[:5]),
            )  # fmt: skip
        # A big batch (Retrieve predictions) yields the encoder to live single-task requests.
        live = len(texts) <= BACKGROUND_BATCH
        if task_of(config.kind).uses_embeddings:
            embeddings = self.encoder.encode(list(texts.values()), background=not live)
        else:
            embeddings = np.zeros((len(texts), self.encoder.dim), dtype=np.float32)
        scored = self.score(list(texts.values()), embeddings)
        by_row = dict(zip(texts, predictions.predictions(config, scored), strict=True))
        empty = predictions.empty(scored.model.version)
        results = [by_row.get(row, empty) for row in range(len(tasks))]
        return PredictionBatch(scored.model.version, results)

    # --- training data ------------------------------------------------------------------------

    def labeled_data(self) -> tuple[Any, LabeledData, int]:
        """Every usable label in the store, embedded (cached): what a training round sees;
        and how many annotations were skipped (nothing for our tag, malformed, no text, a bad
        span). What is wrong inside an annotation is logged once per process and counted in
        ``problems`` (by kind); the annotation stays stored as it came."""
        config = self.config()
        keys, tasks, texts, chosen = [], [], [], []
        skipped = 0
        problems: Counter[str] = Counter()
        for item in self.store.labeled():
            labels = config.labels_of(item.result)
            if labels is None:
                skipped += 1  # an annotation with nothing for our tag is not a label
                continue
            try:
                text = config.text_of({"id": item.task_id, "data": item.data})
            except TaskError:
                skipped += 1
                continue
            labels, found = config.check(text, labels)
            for line in found:
                problems[line.split(":", 1)[0]] += 1
                if (item.annotation_id, line) not in self._told:
                    self._told.add((item.annotation_id, line))
                    log.warning(
                        "project %s: annotation %s of task %s: %s",
                        self.key, item.annotation_id, item.task_id, line,
                    )  # fmt: skip
            if labels is None:
                skipped += 1
                continue
            keys.append(item.annotation_id)
            tasks.append(item.task_id)
            texts.append(text)
            chosen.append(labels)
        self.problems = dict(problems)
        targets = task_of(config.kind).targets(config.space, chosen)
        embeddings = self.encoder.encode(texts, background=True)  # training: not live
        return config.space, LabeledData(keys, tasks, texts, targets, embeddings), skipped


class Projects:
    """Everything one process holds: the settings, the encoder and the open projects; and
    whoever listens to what happens to them (the scheduler of background work)."""

    def __init__(self, settings: Settings, encoder: Encoder | None = None) -> None:
        self.settings = settings
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        self.databases = Databases(settings.model_dir, settings.database_url_value)
        self.encoder = encoder or Encoder(
            settings.embedding_model,
            cache=self.databases.embedding_cache(),
            max_length=settings.max_length,
            batch_size=settings.embed_batch_size,
            device=settings.resolved_device(),
            runtime=settings.resolved_embedding_backend(),
            export_dir=settings.model_dir / "onnx",
        )
        self._open: OrderedDict[str, Project] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        #: The turns of this process's background work (``core.pacing``).
        self.pacer = Pacer(settings.background_duty)
        self._summaries: dict[str, dict[str, tuple[Any, Any]]] = {}  # name -> key -> (stamp, value)
        self._summaries_lock = threading.Lock()  # one look at a time: the next reuses it
        self._store_away_until = 0.0  # monotonic
        self._strays: set[str] = set()  # folders in MODEL_DIR that are no project, logged once

    def store_away(self) -> bool:
        """The stores failed to answer within the last STORE_RETRY_S."""
        return time.monotonic() < self._store_away_until

    def store_failed(self, key: str) -> None:
        if not self.store_away():
            log.warning(
                "project %s: the store is unreachable; serving what this process holds and "
                "asking it again in %.0f s", key, STORE_RETRY_S,
            )  # fmt: skip
        self._store_away_until = time.monotonic() + STORE_RETRY_S

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(project, event)`` for every event of every project from now on."""
        self._listeners.append(listener)

    def emit(self, project: Project, event: str) -> None:
        """``event`` happened to ``project`` (a webhook action or one of this module's)."""
        if event in LABEL_ACTIONS or event == SKIPPED:
            self.pacer.label_seen()  # an annotator is saving: background work holds off
        for listener in self._listeners:
            listener(project, event)

    def project(self, raw_key: Any) -> Project:
        """The project's state; the OPEN_PROJECTS used last stay open (their databases, the
        loaded model), the others are closed and reopen from disk when needed."""
        key = project_key(raw_key)
        with self._lock:
            if key not in self._open:
                self._open[key] = Project(self, key)
                while len(self._open) > OPEN_PROJECTS:
                    self._open.popitem(last=False)  # its connections close with it
            self._open.move_to_end(key)
            return self._open[key]

    def opened(self, key: str) -> Project | None:
        """The project if this process has it open, without opening it."""
        with self._lock:
            return self._open.get(key)

    def existing_project(self, raw_key: Any) -> Project | None:
        """The project, if this backend has state for it (else None, and nothing is created
        on disk for it)."""
        key = project_key(raw_key)
        if key not in self._open and not (self.settings.model_dir / key).is_dir():
            return None
        return self.project(key)

    def connected_project(self, raw_key: Any) -> Project | None:
        """The project, if Label Studio connected it to this backend (else None, and nothing
        is created on disk for it)."""
        project = self.existing_project(raw_key)
        return project if project is not None and project.connected else None

    def view(self, raw_key: Any) -> ProjectView:
        """The project's stored state, read only: nothing is migrated, written, created or
        loaded, and the open projects stay as they are."""
        key = project_key(raw_key)
        store = AnnotationStore(self.databases.project(key, readonly=True), migrate=False)
        registry = project_registry(self.settings.model_dir / key, store, readonly=True)
        return ProjectView(key, store, registry)

    def summaries(self, name: str, compute: Callable[[ProjectView], T]) -> dict[str, T]:
        """``compute(view)`` for every known project (its reads in one session), by key. A
        store nobody committed to since the last call under ``name`` keeps that call's result
        (SQLite: the files' stamps say so), so a thousand quiet projects cost a few thousand
        file stats. A project folder without a store is left out. Results are shared: do not
        change them."""
        with self._summaries_lock:
            return self._summaries_of(self._summaries.setdefault(name, {}), compute)

    def _summaries_of(
        self, cache: dict[str, tuple[Any, Any]], compute: Callable[[ProjectView], T]
    ) -> dict[str, T]:
        shown: dict[str, T] = {}
        for key in self.known_projects():
            stamp = self.databases.stamp(key)
            held = cache.get(key)
            if stamp is not None and held is not None and held[0] == stamp:
                shown[key] = held[1]
                continue
            view = self.view(key)
            try:
                with view.store.snapshot():
                    value = compute(view)
            except StoreMissing:
                continue
            if stamp is not None and self.databases.stamp(key) == stamp:  # none wrote meanwhile
                cache[key] = (stamp, value)
            shown[key] = value
        for gone in set(cache) - set(shown):
            cache.pop(gone, None)
        return shown

    def known_projects(self) -> list[str]:
        """The projects with a folder under MODEL_DIR. Any other folder (``0``, ``007``, a
        backup someone left there) is no project of ours: ignored, and said so once."""
        found = []
        with os.scandir(self.settings.model_dir) as entries:  # no stat per entry
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name in _OURS or not entry.is_dir():
                    continue
                try:
                    ours = project_key(name) == name
                except ValueError:
                    ours = False
                if ours:
                    found.append(name)
                elif name not in self._strays:
                    self._strays.add(name)
                    log.warning(
                        "MODEL_DIR/%s is not a project folder (those are named by a Label Studio "
                        "project id, like 7): ignored",
                        name[:80],
                    )
        return sorted(found, key=int)
