"""The first minute of a connected project: a ranking from a small sample within seconds,
then bigger ones, pushed as the ranked sample grows (a Label Studio stand-in)."""

from __future__ import annotations

import time

import numpy as np
from fakes import HashEncoder

from ls_backend.jobs.sync import sync_target
from ls_backend.labelstudio import sync
from ls_backend.labelstudio.client import ProjectCounts
from ls_backend.labelstudio.queue import QueueState
from ls_backend.projects import Projects
from ls_backend.settings import Settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""
TASKS = 2_000
PER_TEXT_S = 0.004  # 8 s for the whole import: far longer than the first ranking may take


class SlowEncoder(HashEncoder):
    """A model that takes its time: what a few thousand news articles cost on 2 cores."""

    def encode(self, texts, progress=False, background=False):
        time.sleep(PER_TEXT_S * len(texts))
        return super().encode(texts, progress, background)


class QueueClient:
    """Label Studio as the sync sees it once its mirror is filled: counters and pushes."""

    def __init__(self) -> None:
        self.pushed: list[list[int]] = []

    def counts(self, project_id):
        return ProjectCounts(TASKS, 0, 0)

    def import_predictions(self, project_id, items):
        self.pushed.append([item["task"] for item in items])
        return len(items)

    def set_queue(self, project_id, version):
        pass

    def iter_tasks(self, project_id, task_ids, include_predictions):  # to forget old fronts
        return [{"id": task, "predictions": []} for task in task_ids]


def test_a_first_ranking_comes_from_a_sample_within_seconds_and_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(sync, "EMBED_PER_RUN", 300)  # runs of ~0.6 s here
    settings = Settings(model_dir=tmp_path, lora_enabled=False, sync_min_interval_s=0)
    project = Projects(settings, encoder=SlowEncoder()).project(1)
    project.setup(CONFIG)
    tasks = [{"id": i, "data": {"text": f"article {i}"}} for i in range(1, TASKS + 1)]
    project.store.apply({"action": "TASKS_CREATED", "tasks": tasks, "project": {"id": 1}})
    baseline = {"ls_tasks": TASKS, "ls_labeled": 0, "tasks": TASKS, "labeled": 0}
    QueueState(baseline=baseline).save(project.store)  # the mirror is filled
    client = QueueClient()
    syncer = sync.Syncer(client, settings)

    began = time.monotonic()
    first = syncer(sync_target(project), force=True)
    assert time.monotonic() - began < sync.FIRST_EMBED_S + 3.0  # ranking, pushing: a busy CPU
    ranked = first["tasks"]
    assert settings.sync_top_k <= ranked < TASKS and first["pushed"] == settings.sync_top_k
    assert first["waiting_to_embed"] == TASKS - ranked
    front = np.asarray(client.pushed[0])
    assert front.min() < TASKS / 4 and front.max() > 3 * TASKS / 4  # a uniform sample

    runs = [first]
    while runs[-1]["waiting_to_embed"]:
        runs.append(syncer(sync_target(project)))
    # Pushed when the ranked sample had grown GROWTH_PUSH-fold since the last push, and once
    # it was whole; the runs between re-rank without a push.
    at_push = ranked
    for run in runs[1:]:
        grew = run["tasks"] >= sync.GROWTH_PUSH * at_push or run["waiting_to_embed"] == 0
        assert ("ranking_version" in run) == grew, (run, at_push)
        if grew:
            assert run["reason"] == "more tasks ranked"
            at_push = run["tasks"]
    assert runs[-1]["tasks"] == TASKS and len(client.pushed) < len(runs)


def test_a_large_project_is_ranked_from_its_first_tasks_then_read_whole(tmp_path):
    """10,000 tasks take Label Studio 10-20 s to page through: the first ranking does not wait
    for them; the run after it reads every task, and the next ranked sample comes from all."""
    from fake_label_studio import TOKEN, FakeLabelStudio

    from ls_backend.labelstudio.client import LabelStudioClient, RetryPolicy

    retry = RetryPolicy(attempts=2, backoff_s=0.001, max_backoff_s=0.01)
    settings = Settings(model_dir=tmp_path, lora_enabled=False, sync_min_interval_s=0)
    project = Projects(settings, encoder=HashEncoder()).project(1)
    project.setup(CONFIG)
    with FakeLabelStudio() as ls:
        ids = [t["id"] for t in ls.add_project(1, CONFIG, [f"a{i}" for i in range(2500)]).tasks]
        syncer = sync.Syncer(LabelStudioClient(ls.url, TOKEN, retry=retry), settings)
        wanted = project.store.lane_wanted(sync.SYNC)
        first = syncer(sync_target(project))
        pages = [p for m, p in ls.requests if m == "GET" and p == "/api/tasks"]
        assert len(pages) == 1  # one page: the first 1,000 tasks and one more
        assert project.store.mirror_counts()[0] == sync.FIRST_READ + 1
        assert first["pushed"]
        ranked = QueueState.load(project.store).serving
        assert ranked is not None and set(ranked.tasks) <= set(ids[: sync.FIRST_READ + 1])
        assert project.store.lane_wanted(sync.SYNC) > wanted  # the rest is read next
        syncer(sync_target(project))
        assert project.store.mirror_counts()[0] == len(ids)
        assert QueueState.load(project.store).baseline is not None


def test_a_run_embeds_a_slice_and_the_task_pools_stay_bounded(tmp_path, monkeypatch):
    """A sync run of a large import embeds for RUN_SLICE_S and asks for another run (which
    waits its turn behind other projects) instead of embedding it all; the pools of the
    projects synced longest ago leave memory past POOL_TASKS."""
    monkeypatch.setattr(sync, "RUN_SLICE_S", 0.5)
    settings = Settings(model_dir=tmp_path, lora_enabled=False, sync_min_interval_s=0)
    projects = Projects(settings, encoder=SlowEncoder())
    client = QueueClient()
    syncer = sync.Syncer(client, settings)
    syncer.pools.tasks = 300
    tasks = [{"id": i, "data": {"text": f"article {i}"}} for i in range(1, TASKS + 1)]
    baseline = {"ls_tasks": TASKS, "ls_labeled": 0, "tasks": TASKS, "labeled": 0}
    for key in (1, 2):
        project = projects.project(key)
        project.setup(CONFIG)
        project.store.apply({"action": "TASKS_CREATED", "tasks": tasks, "project": {"id": key}})
        QueueState(baseline=baseline).save(project.store)

    first = syncer(sync_target(projects.project(1)), force=True)
    wanted = projects.project(1).store.lane_wanted(sync.SYNC)
    began = time.monotonic()
    second = syncer(sync_target(projects.project(1)))
    assert time.monotonic() - began < sync.RUN_SLICE_S + 3.0  # one slice, not the import
    assert 0 < second["waiting_to_embed"] < first["waiting_to_embed"]
    assert projects.project(1).store.lane_wanted(sync.SYNC) > wanted  # the rest: a later run
    assert "1" in syncer.pools

    syncer(sync_target(projects.project(2)), force=True)
    assert "2" in syncer.pools and "1" not in syncer.pools  # over 300 tasks: the older goes
    again = syncer(sync_target(projects.project(1)))  # rebuilt from the mirror
    assert again["tasks"] > 0 and "1" in syncer.pools and "2" not in syncer.pools
