"""Sync: rank a project's unlabeled tasks and put the front of the order into Label Studio's queue.

Label Studio serves the next task by *uncertainty sampling* over the predictions of
``project.model_version``, lowest ``score`` first (LABEL_STUDIO.md 5.1). A push writes one
prediction for each of the ``SYNC_TOP_K`` best tasks under a new ranking version (the real
pre-annotation, with ``score`` = queue position) and points the project at it. When the front
is used up Label Studio falls back to random order until the next push.

What annotators feel is Label Studio's database, so a sync touches it as little as it can:
- the task mirror in the project's store (filled by one full read, kept current by webhooks,
  checked against Label Studio's own counters before each push) means a re-rank reads no task
  from Label Studio; embeddings of new tasks are computed in chunks that yield to live predictions;
- a re-rank is pushed only when it changes what annotators get next (``core.requeue``), at most
  once per ``SYNC_MIN_INTERVAL_S``;
- a push is one insert of ``SYNC_TOP_K`` rows; the predictions it replaces are deleted one by
  one (a bulk delete of 1,000 holds SQLite for 5-10 s and fails annotators' saves), except those
  an annotator may still have open: their save names the prediction (``parent_prediction``) and
  fails if it is gone, so those wait for Label Studio's task lock (a day) to run out.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ls_backend.core.embeddings import Encoder
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings
from ls_backend.core.pacing import Pacer
from ls_backend.core.ranking import rank_pool_explained
from ls_backend.core.requeue import push_reason
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import Model, Progress, Scored, Task, joined
from ls_backend.labelstudio import webhooks
from ls_backend.labelstudio.client import (
    LabelStudioClient,
    LabelStudioError,
    PredictionItem,
    ProjectCounts,
)
from ls_backend.labelstudio.config import LabelConfig, TaskError
from ls_backend.labelstudio.predictions import predictions, summary
from ls_backend.labelstudio.queue import QueueState, Ranking, priorities, stale_cap
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS, SKIPPED, AnnotationStore

log = logging.getLogger(__name__)

#: The lane that runs syncs (its requests are kept in the store under this name).
SYNC = "sync"
#: A project's tasks are ranked on a growing uniform sample. The first ranking is pushed
#: after FIRST_EMBED_S of embedding (on 2 cores 50-200 news-length texts, more short
#: ones): an annotator who starts at the connect gets a ranked queue within seconds. Later
#: runs embed up to EMBED_PER_RUN more (for RUN_SLICE_S at most; while people label, for
#: GROWTH_SLICE_S, so the re-rank after new labels never waits long behind it) and push
#: once the ranked sample is GROWTH_PUSH times what it was at the last push, or covers every
#: task: each push costs Label Studio seconds of its database while people save (a
#: 1,000-task import: 2 pushes of its own, 10,000: 4).
FIRST_EMBED_S = 1.0
#: Before the first ranking of a project, only its first FIRST_READ tasks are read (one page:
#: 1-2 s of Label Studio); the next run reads them all.
FIRST_READ = 1000
#: Tasks per page of a full read (Label Studio's largest); while people label, pages of
#: READ_PAGE_LABELING, each a turn (``core.pacing``): a page of 1,000 holds Label Studio
#: 0.5-1.5 s, and a save that comes meanwhile waits for it.
READ_PAGE = 1000
READ_PAGE_LABELING = 200
GROWTH_SLICE_S = 8.0
GROWTH_PUSH = 4
EMBED_PER_RUN = 4096
#: A run embeds for at most RUN_SLICE_S, then ranks, pushes if due and asks for
#: another run, which waits its turn behind the other projects' syncs: a large import does
#: not hold a sync thread until it is all embedded.
RUN_SLICE_S = 30.0
#: Tasks kept in memory in task pools, over every project a process syncs (~1.5 kB of
#: embeddings each, plus the text): past it the pools of the projects synced longest ago go
#: (a pool is rebuilt from the embedding cache at its project's next sync).
POOL_TASKS = 200_000
#: Texts embedded in one turn (0.1-0.6 s of news-length texts on one core): the first
#: ranking's deadline overruns by one at most.
PACE_BLOCK = 16
#: With an adapter serving, only this many of the head's most uncertain tasks go through the
#: adapter (MC dropout over a whole pool is minutes on a CPU).
ADAPTER_CANDIDATES = 1000
#: How often the project's webhook in Label Studio is looked at (its auth header, whether it
#: is there at all); and how long after a new /setup URL it may still be in the making.
WEBHOOK_CHECK_S = 60.0
WEBHOOK_GRACE_S = 5.0
WEBHOOK_POLL_S = 0.5
#: A webhook Label Studio sends as it saves arrives within this; a count mismatch is re-checked.
RECHECK_S = 1.0
#: Time a run spends deleting old predictions (one request each, ~50-90 ms) before it lets the
#: next run re-rank; while annotators label (more than ``stale_cap`` waiting), 1 s:
#: ~8 deletes per label, more than the SYNC_TOP_K / SYNC_EVERY (5) a label's push costs.
FORGET_S = 10.0
FORGET_BUSY_S = 1.0
#: Label Studio's bulk prediction import refreshes the counters of every task in the project
#: (legacy path of 1.23: 0.03 s at 1,000 tasks, 0.33 s at 10,000, 3.3 s at 100,000, holding
#: SQLite; 1-4.5 s at 1,000 on PostgreSQL on 2 cores); past this many tasks, and while people
#: label (paced: ``core.pacing``), a push creates its predictions one request each (~85 ms),
#: each a turn.
BULK_PUSH_MAX_TASKS = 10_000
#: Predictions created before the queue switches to a one-by-one push's ranking.
QUEUE_HEAD = 10
#: Tasks whose predictions are read per request while forgetting.
FORGET_BATCH = 25
#: Pause between two single-row writes (deletes, one-by-one creates): Label Studio's SQLite
#: stays free for annotators' saves between them.
WRITE_PAUSE_S = 0.05


class TaskPool:
    """A project's tasks as ranking sees them, kept in memory between syncs: ids (ascending),
    texts and embeddings. A refresh reads from the mirror and embeds only tasks it lacks."""

    def __len__(self) -> int:
        return len(self.ids)

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.config: LabelConfig | None = None
        self.created: int | None = None  # whose tasks these are (``AnnotationStore.meet``)
        self._clear()

    def _clear(self) -> None:
        self.ids: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.texts: list[str] = []
        self.embeddings: Embeddings = np.zeros((0, self.dim), dtype=np.float32)
        self.unreadable: set[int] = set()

    def refresh(
        self,
        store: AnnotationStore,
        config: LabelConfig,
        encoder: Encoder,
        pacer: Pacer,
        budget: int = EMBED_PER_RUN,
        rng: np.random.Generator | None = None,
        deadline: float | None = None,
        urgent: bool = False,
    ) -> tuple[NDArray[np.bool_], int]:
        """Follow the mirror; returns the labeled mask over ``ids`` and how many readable
        tasks are still waiting to be embedded: more than ``budget`` were new, or embedding
        stopped at ``deadline`` (``time.monotonic()``; after one block at least). ``urgent``
        embedding is not paced (``_embed_paced``)."""
        created = (store.label_studio() or {}).get("created")
        # Another text field, or another Label Studio's project (task ids reused): every text
        # may differ.
        if config != self.config or created != self.created:
            self._clear()
            self.config, self.created = config, created
        all_ids, labeled = store.task_states()
        keep = np.isin(self.ids, all_ids, assume_unique=True)
        if not keep.all():
            self.ids, self.embeddings = self.ids[keep], self.embeddings[keep]
            self.texts = [t for t, k in zip(self.texts, keep, strict=True) if k]
        new = np.setdiff1d(all_ids, self.ids, assume_unique=True)
        new = new[~np.isin(new, list(self.unreadable))] if self.unreadable else new
        waiting = len(new)
        # A uniform sample in random order: a partial pool, whatever stops it, ranks fairly.
        new = (rng or np.random.default_rng()).permutation(new)[:budget]
        data = store.task_data(new.tolist())
        ids, texts = [], []
        for task_id in new.tolist():
            try:
                texts.append(config.text_of({"id": task_id, "data": data.get(task_id, {})}))
            except TaskError:
                self.unreadable.add(task_id)
                waiting -= 1
                continue
            ids.append(task_id)
        if ids:
            vectors = _embed_paced(texts, encoder, store, pacer, deadline, urgent)
            done = len(vectors)
            waiting -= done
            self.ids = np.concatenate([self.ids, np.asarray(ids[:done], dtype=np.int64)])
            self.embeddings = np.concatenate([self.embeddings, vectors])
            self.texts += texts[:done]
            order = np.argsort(self.ids, kind="stable")
            self.ids, self.embeddings = self.ids[order], self.embeddings[order]
            self.texts = [self.texts[i] for i in order]
        return labeled[np.searchsorted(all_ids, self.ids)], waiting


class TaskPools:
    """The task pools of a process, by project, least recently synced first: at most ``tasks``
    tasks in all (the pool in use stays, however big)."""

    def __init__(self, tasks: int = POOL_TASKS) -> None:
        self.tasks = tasks
        self._pools: OrderedDict[str, TaskPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, dim: int) -> TaskPool:
        """``key``'s pool (a new one if it has none, or it was evicted), now the most recent."""
        with self._lock:
            pool = self._pools.pop(key, None) or TaskPool(dim)
            self._pools[key] = pool
        self.fit(key)
        return pool

    def fit(self, key: str) -> None:
        """Evict the least recently synced pools but ``key``'s until the rest fits."""
        with self._lock:
            total = sum(len(pool) for pool in self._pools.values())
            for other in list(self._pools):
                if total <= self.tasks:
                    break
                if other != key:
                    total -= len(self._pools.pop(other))

    def __contains__(self, key: object) -> bool:
        return key in self._pools

    def __len__(self) -> int:
        return len(self._pools)


def _embed_paced(
    texts: list[str],
    encoder: Encoder,
    store: AnnotationStore,
    pacer: Pacer,
    deadline: float | None = None,
    urgent: bool = False,
) -> Embeddings:
    """Embed the first texts in blocks (each cached as it is done, each a turn of ``pacer``)
    until ``deadline``; ``urgent`` blocks are not paced. Returns the embeddings of
    ``texts[:n]``, n >= one block."""
    parts = [np.zeros((0, encoder.dim), dtype=np.float32)]
    for start in tqdm(
        range(0, len(texts), PACE_BLOCK), desc="embedding", disable=len(texts) < 1000
    ):
        if deadline is not None and start and time.monotonic() > deadline:
            break
        with pacer.turn(labeling=store.labeling(), urgent=urgent):
            parts.append(encoder.encode(texts[start : start + PACE_BLOCK], background=True))
    return np.concatenate(parts)


@dataclass
class Front:
    """The new front of the queue: task ids, best first, and their predictions."""

    tasks: list[int]
    results: list[dict[str, Any]]
    model_version: str
    reasons: list[str] = field(default_factory=list)  # why each task is there
    uncertainty: list[float] = field(default_factory=list)  # what it was ranked by
    labels: list[str] = field(default_factory=list)  # each pre-annotation, in a few words

    @property
    def kind(self) -> ModelKind | None:
        return ModelKind.of(self.model_version)


@dataclass
class SyncTarget:
    """What a sync of one project works with, handed in (``jobs.sync`` builds it from the
    project): its store, the encoder, and, read when needed (a full read may adopt a new label
    config; a promotion may land meanwhile), its label config and serving model."""

    key: str
    store: AnnotationStore
    encoder: Encoder
    #: The process's background turns (``core.pacing``).
    pacer: Pacer
    config: Callable[[], LabelConfig]
    model: Callable[[], Model]
    #: Adopt a label config read from Label Studio (the project's /setup).
    adopt_config: Callable[[str], object]

    @property
    def project_id(self) -> int:
        return int(self.key)


def rank_front(
    model: Model,
    config: LabelConfig,
    pool: TaskPool,
    labeled: NDArray[np.bool_],
    settings: Settings,
) -> Front:
    """Score the pool's unlabeled tasks with ``model`` and rank them; predictions are built
    for the front only."""
    unlabeled = np.flatnonzero(~labeled)
    if len(unlabeled) == 0:
        return Front([], [], model.version)
    task = task_of(config.kind)
    candidates = unlabeled
    if model.lora is not None and len(unlabeled) > ADAPTER_CANDIDATES:
        base = _score_in_chunks(task, model.without_adapter(), pool, unlabeled, settings)
        most = np.argsort(-base.uncertainty, kind="stable")[:ADAPTER_CANDIDATES]
        candidates = np.sort(unlabeled[most])
    rows = np.concatenate([candidates, np.flatnonzero(labeled)])
    scored = _score_in_chunks(task, model, pool, candidates, settings)
    probs = None
    if scored.probs is not None and model.kind is not ModelKind.PROTOTYPE:
        probs = np.zeros((len(rows), *scored.probs.shape[1:]), dtype=scored.probs.dtype)
        probs[: len(candidates)] = scored.probs
    scores = np.zeros(len(rows))
    scores[: len(candidates)] = scored.uncertainty
    ranked = rank_pool_explained(
        settings.strategy,
        probs,
        pool.embeddings[rows],
        np.arange(len(candidates), len(rows), dtype=np.int64),
        multi_label=scored.multi_label,
        scores=scores,
    )
    order = ranked.order[: settings.sync_top_k]
    results = predictions(config, scored, order.tolist())
    return Front(
        tasks=pool.ids[rows[order]].tolist(),
        results=results,
        model_version=model.version,
        reasons=ranked.reasons[: settings.sync_top_k].tolist(),
        uncertainty=[round(float(u), 6) for u in scores[order]],
        labels=[summary(config, r) for r in results],
    )


def _score_in_chunks(
    task: Task, model: Model, pool: TaskPool, rows: NDArray[np.int64], settings: Settings
) -> Scored:
    """``model`` over ``rows`` of the pool; an adapter goes in chunks, so a live prediction
    waiting for it gets in between."""
    step = len(rows) if model.lora is None else 64
    return joined(
        [
            task.score(
                model,
                [pool.texts[i] for i in rows[start : start + step]],
                pool.embeddings[rows[start : start + step]],
                mc_samples=settings.mc_samples,
                star_decay=settings.star_lambda_decay,
            )
            for start in range(0, len(rows), step)
        ]
    )


class Syncer:
    """The sync lane's job: one Label Studio client per process, and the task pools of the
    projects it synced last (``TaskPools``)."""

    def __init__(self, client: LabelStudioClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.pools = TaskPools()

    def __call__(
        self, target: SyncTarget, progress: Progress | None = None, *, force: bool = False
    ) -> dict[str, Any]:
        """Re-rank; push when ``force`` or a request asked for it, or ``core.requeue`` says so."""
        report = progress or (lambda _fraction, _stage: None)
        store, settings = target.store, self.settings
        forced_seq = store.lane_forced(SYNC)
        state = QueueState.load(store)
        # An admin's request looks at the webhook too; basic auth needs it before any label.
        look_again = self._check_webhooks(target, force=forced_seq > state.forced_seq)
        serving = state.serving
        if serving is not None:  # rate limit: what arrives meanwhile coalesces into this run
            rest = serving.pushed + settings.sync_min_interval_s - time.time()
            if rest > 0:
                report(0.0, "waiting for the rate limit")
                time.sleep(rest)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str, fraction: float) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round(timings.get(stage, 0.0) + now - clock, 3)
            clock = now
            report(fraction, stage)

        # Read every input before deciding: requests that came in while waiting are served now.
        forced_seq = store.lane_forced(SYNC)
        label_seq = store.last_seq(LABEL_ACTIONS)
        project_id = target.project_id
        just_read = state.baseline is None
        partial = False  # the mirror holds the first tasks only: the next run reads the rest
        if just_read and serving is None:  # the first ranking: from the first tasks, at once
            report(0.0, "reading the first tasks from Label Studio")
            state.baseline = self._full_read(target, FIRST_READ)
            partial = state.baseline is None
            lap("read", 0.3)
        elif just_read:
            report(0.0, "reading every task from Label Studio")
            state.baseline = self._full_read(target)
            lap("read", 0.3)
        pool = self.pools.get(target.key, target.encoder.dim)

        def rank() -> tuple[NDArray[np.bool_], int, Front]:
            config = target.config()
            now, first = time.monotonic(), serving is None
            if first:  # no ranking in the queue yet: one within seconds, on a first sample
                deadline: float | None = now + FIRST_EMBED_S
            else:  # grow the sample in slices, short ones while people label
                deadline = now + (GROWTH_SLICE_S if store.labeling() else RUN_SLICE_S)
            labeled, waiting = pool.refresh(
                store,
                config,
                target.encoder,
                target.pacer,
                EMBED_PER_RUN,
                deadline=deadline,
                urgent=first,
            )
            lap("embed", 0.5)
            # One model for the whole ranking, even if a promotion lands meanwhile.
            return labeled, waiting, rank_front(target.model(), config, pool, labeled, settings)

        labeled, waiting, front = rank()
        self.pools.fit(target.key)
        lap("rank", 0.6)

        # The project's size, not the ranked sample's: what Label Studio's writes cost.
        project_tasks = store.mirror_counts()[0]
        if partial:
            project_tasks = max(project_tasks, self.client.counts(project_id).task_number)
        cap = stale_cap(settings.sync_top_k, project_tasks)
        held_back = state.backlog(store) > cap
        in_queue = serving.tasks if serving else []
        still = set(pool.ids[~labeled].tolist())
        reason = push_reason(
            front.tasks,
            [t for t in in_queue if t in still] if serving else None,
            top_k=settings.sync_top_k,
            new_labels=store.count_events(LABEL_ACTIONS, after=state.label_seq),
            sync_every=settings.sync_every,
            forced=force or forced_seq > state.forced_seq,
            pool_grew=not state.complete
            and (waiting == 0 or len(pool.ids) >= GROWTH_PUSH * state.ranked),
            backlog_full=held_back,
            new_kind=serving is not None and ModelKind.of(serving.version) != front.kind,
        )
        outcome: dict[str, Any] = {}
        if reason is not None:
            # Right after a full read the mirror is Label Studio's: the first push goes at once.
            if not just_read and not self._consistent(project_id, store, state.baseline):
                report(0.6, "healing the task mirror: reading every task from Label Studio")
                state.baseline = self._full_read(target)
                labeled, waiting, front = rank()
                outcome["healed"] = True
                lap("heal", 0.7)
            version = self._push(
                project_id, state, front, store, target.pacer, project_tasks, serving is None
            )
            state.label_seq, state.forced_seq = label_seq, forced_seq
            state.complete, state.ranked = waiting == 0 and not partial, len(pool.ids)
            state.save(store)
            lap("push", 0.8)
            outcome.update(ranking_version=version, pushed=len(front.tasks))
        outcome["deleted"], more = self._forget_stale(
            project_id, state, store, cap, report, target.pacer
        )
        lap("forget", 1.0)
        # The rest of a large import or of the old predictions, or a push the backlog held
        # back that may go now: the next run looks again.
        if (
            partial
            or waiting
            or more
            or (reason is None and held_back and state.backlog(store) <= cap)
        ):
            store.want_lane(SYNC)
        if look_again is not None:  # the first connect: the webhook has had time to appear
            time.sleep(max(0.0, look_again - time.time()))
            self._check_webhooks(target, force=True)
        outcome.update(
            reason=reason or "queue unchanged",
            tasks=len(pool.ids),
            unlabeled=int((~labeled).sum()),
            model_version=front.model_version,
            waiting_to_embed=waiting,
            seconds=timings,
        )
        log.info(
            "project %s: %s -> %s (%s)",
            project_id,
            outcome["reason"],
            outcome.get("ranking_version", "no push"),
            ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
        )
        return outcome

    def _check_webhooks(self, target: SyncTarget, *, force: bool = False) -> float | None:
        """Find the project's webhook for the URL Label Studio connected this backend by: give
        it our auth header where /webhook needs one (that webhook only: the other backends'
        webhooks must not get our credentials), and record, log and show what is wrong with
        it (none at all, switched off). Runs when a URL is new, every WEBHOOK_CHECK_S, or when
        ``force``d. Returns when to look again if Label Studio may still be creating it."""
        store = target.store
        urls = store.setup_urls()
        if not urls or not (force or webhook_check_due(store)):
            return None
        store.set_webhooks_checked(time.time())
        settings = self.settings
        basic = None
        if settings.basic_auth_user and settings.basic_auth_pass:
            basic = (settings.basic_auth_user, settings.basic_auth_pass.get_secret_value())
        token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
        header = webhooks.auth_header(basic, token)
        # Label Studio makes the webhook just after its first /setup: not missing yet.
        settles = max(urls.values()) + WEBHOOK_GRACE_S
        while True:
            try:
                found = webhooks.check(
                    self.client.ml_backends(target.project_id),
                    self.client.webhooks(target.project_id),
                    urls,
                    header,
                )
                for hook_id, headers in found.patches:
                    self.client.set_webhook_headers(hook_id, headers)
            except LabelStudioError as exc:  # ranking goes on; the next check tries again
                log.error("project %s: could not check its webhook: %s", target.key, exc)
                return None
            if found.patches:
                log.info("project %s: auth header given to its webhook", target.key)
            if not found.missing or time.time() >= settles:
                break
            if header is None:  # nothing to give it: look again after the push
                return settles
            time.sleep(WEBHOOK_POLL_S)  # the first labels will need our header on it
        if found.problem != store.webhook_problem():
            if found.problem:
                log.warning("project %s: %s", target.key, found.problem)
            else:
                log.info("project %s: its webhook in Label Studio is in order again", target.key)
            store.set_webhook_problem(found.problem)
        return None

    # --- Label Studio, read --------------------------------------------------------------------

    def _full_read(self, target: SyncTarget, limit: int | None = None) -> dict[str, int] | None:
        """Fill the mirror from every task in Label Studio; returns the counts to compare
        later ones with (each side's own, so a counter that counts differently is no alarm).
        With ``limit``, a project of more tasks gets only its first ``limit`` and one more (None
        returned: the read is not whole), at once. Otherwise each page is a turn of background
        work, of READ_PAGE_LABELING tasks while people label."""
        project_id, store = target.project_id, target.store
        label_config = self.client.get_project(project_id).get("label_config")
        if label_config:
            target.adopt_config(label_config)

        busy = store.labeling()

        def turn() -> AbstractContextManager[None]:
            return target.pacer.turn(labeling=busy, urgent=limit is not None)

        # One page for a first read: ``limit`` tasks, and one more to know whether that is all.
        size = limit + 1 if limit is not None else READ_PAGE_LABELING if busy else READ_PAGE
        tasks = self.client.iter_tasks(project_id, page_size=size, each_page=turn)
        if limit is not None:
            first = list(itertools.islice(tasks, limit + 1))
            if len(first) > limit:
                # Tasks come in id order: a prefix, whole up to its last id.
                store.replace_tasks((t["id"], t["data"], bool(t["annotations"])) for t in first)
                log.info("project %s: read its first %d tasks", project_id, len(first))
                return None
            tasks = iter(first)
        read = store.replace_tasks(
            (task["id"], task["data"], bool(task["annotations"])) for task in tasks
        )
        counts = self.client.counts(project_id)
        log.info("project %s: read %d tasks from Label Studio into the mirror", project_id, read)
        return _baseline(target.store, counts)

    def _consistent(self, project_id: int, store: AnnotationStore, base: dict[str, int]) -> bool:
        """A missed webhook shows as Label Studio's counters moving unlike the mirror's. A
        webhook still in flight looks the same for a moment, so a mismatch is checked twice."""
        for attempt in range(2):
            now = _baseline(store, self.client.counts(project_id))
            there = (now["ls_tasks"] - base["ls_tasks"], now["ls_labeled"] - base["ls_labeled"])
            here = (now["tasks"] - base["tasks"], now["labeled"] - base["labeled"])
            if there == here:
                return True
            if attempt == 0:
                time.sleep(RECHECK_S)
        log.warning(
            "project %s: task mirror out of step with Label Studio (tasks, labeled moved %s "
            "there, %s here): reading every task again",
            project_id,
            there,
            here,
        )
        return False

    # --- Label Studio, write -------------------------------------------------------------------

    def _push(
        self,
        project_id: int,
        state: QueueState,
        front: Front,
        store: AnnotationStore,
        pacer: Pacer,
        project_tasks: int = 0,
        urgent: bool = False,
    ) -> str:
        """Push ``front`` as a new ranking; every request to Label Studio is a turn of
        background work (none paced when ``urgent``: a project's first ranking)."""
        labeling = store.labeling()
        paced = labeling and pacer.duty < 1 and not urgent

        def turn() -> AbstractContextManager[None]:
            return pacer.turn(labeling=labeling, urgent=urgent)

        state.pushes += 1
        stamp = time.strftime("%Y%m%dT%H%M%S")
        version = f"rank-{front.model_version}-{stamp}-{state.pushes}"
        now = time.time()
        for ranking in state.rankings:
            ranking.stale_since = ranking.stale_since or now
        state.rankings.append(
            Ranking(
                version,
                front.tasks,
                now,
                reasons=front.reasons,
                labels=front.labels,
                uncertainty=front.uncertainty,
            )
        )
        state.save(store)  # before the import: a crash after it still knows what to delete
        items: list[PredictionItem] = [
            {
                "task": task,
                "result": result["result"],
                "score": float(priority),
                "model_version": version,
            }
            for task, result, priority in zip(
                front.tasks, front.results, priorities(len(front.tasks)), strict=True
            )
        ]
        if project_tasks <= BULK_PUSH_MAX_TASKS and not paced:
            with turn():
                if items:
                    self.client.import_predictions(project_id, items)
                self.client.set_queue(project_id, version)
            return version
        # One by one: the queue switches once its head is in, the rest follow behind it
        # (positions past the head; an annotator cannot get there in the seconds this takes).
        ranking = state.rankings[-1]
        for position, item in enumerate(items):
            if position == QUEUE_HEAD:
                with turn():
                    self.client.set_queue(project_id, version)
            elif position > QUEUE_HEAD:
                time.sleep(WRITE_PAUSE_S)
            with turn():
                ranking.ids.append(self.client.create_prediction(item))  # deletes need no read
        if len(items) <= QUEUE_HEAD:
            with turn():
                self.client.set_queue(project_id, version)
        return version

    def _forget_stale(
        self,
        project_id: int,
        state: QueueState,
        store: AnnotationStore,
        cap: int,
        report: Progress,
        pacer: Pacer,
    ) -> tuple[int, bool]:
        """Delete replaced rankings' predictions, keeping those an annotator may have open.

        On SQLite any write of ours can fail an annotator's save that meets it ("database is
        locked"), so deletes wait for SYNC_QUIET_S without a label and stop when one comes
        (or when a new ranking is wanted, which must not wait behind them); only
        a backlog over ``stale_cap`` rows is deleted while people label, 1 s a run.
        One request per prediction. Returns how many went and whether more may go now.
        """
        actions = LABEL_ACTIONS | {SKIPPED}
        work = state.deletable(store)
        backlog = sum(len(doomed) for _, doomed in work)
        if not backlog:
            return 0, False
        busy = backlog > cap
        seen, wanted = store.last_seq(actions), store.lane_wanted(SYNC)

        def interrupted() -> bool:
            """A label came (labeling goes on: its runs come back here) or a new ranking is
            wanted (a promotion): the queue goes first."""
            return store.last_seq(actions) != seen or store.lane_wanted(SYNC) != wanted

        quiet_at = store.last_received(actions) + self.settings.sync_quiet_s
        if not busy and time.time() < quiet_at:
            report(0.9, "waiting for a quiet moment to delete old predictions")
            while time.time() < quiet_at:
                time.sleep(0.25)
                if interrupted():
                    return 0, False
        deleted = 0
        deadline = time.monotonic() + (FORGET_BUSY_S if busy else FORGET_S)

        def delete(prediction_id: int) -> tuple[int, bool] | None:
            """One delete; or, when time is up or the queue comes first, what to return."""
            nonlocal deleted
            if time.monotonic() > deadline:
                return deleted, True
            if not busy and interrupted():
                return deleted, False
            with pacer.turn(labeling=busy):
                self.client.delete_prediction(prediction_id)
            deleted += 1
            time.sleep(WRITE_PAUSE_S)
            return None

        try:
            for ranking, doomed in work:
                known = dict(zip(ranking.tasks, ranking.ids, strict=False))
                for task_id in [t for t in doomed if t in known]:
                    if (stop := delete(known[task_id])) is not None:
                        return stop
                    ranking.deleted.append(task_id)
                unknown = [t for t in doomed if t not in known]
                for start in range(0, len(unknown), FORGET_BATCH):
                    batch = unknown[start : start + FORGET_BATCH]
                    tasks = self.client.iter_tasks(
                        project_id, task_ids=batch, include_predictions=True
                    )
                    for task in tasks:
                        for prediction in task.get("predictions", []):
                            if prediction["model_version"] != ranking.version:
                                continue
                            if (stop := delete(prediction["id"])) is not None:
                                return stop
                        ranking.deleted.append(task["id"])
                    gone = set(batch) - set(ranking.deleted)  # tasks deleted in Label Studio
                    ranking.deleted += sorted(gone)
                if len(ranking.deleted) == len(ranking.tasks):
                    state.rankings.remove(ranking)
            return deleted, False
        finally:
            state.save(store)


def webhook_check_due(store: AnnotationStore, periodic: bool = True) -> bool:
    """Whether the project's webhook should be looked at: /setup came by a URL not looked at
    yet, or (``periodic``) the last look is WEBHOOK_CHECK_S old (a reconnect makes a new
    webhook, which needs our auth header)."""
    urls = store.setup_urls()
    if not urls:
        return False
    checked = store.webhooks_checked()
    return max(urls.values()) > checked or (periodic and time.time() - checked > WEBHOOK_CHECK_S)


def _baseline(store: AnnotationStore, counts: ProjectCounts) -> dict[str, int]:
    tasks, labeled = store.mirror_counts()
    return {
        "ls_tasks": counts.task_number,
        "ls_labeled": counts.num_tasks_with_annotations,
        "tasks": tasks,
        "labeled": labeled,
    }
