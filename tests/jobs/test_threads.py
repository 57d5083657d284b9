"""The background worker: bursts coalesce, failures never touch what serves."""

import json
import time

import pytest
from fakes import BackendProcess, annotation_event

from ls_backend.jobs.lanes import read_status
from ls_backend.jobs.sync import SyncLane, attach
from ls_backend.projects import SYNC_REQUESTED
from ls_backend.settings import Settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


@pytest.fixture
def backend(tmp_path):
    settings = Settings(model_dir=tmp_path, lora_enabled=False, train_debounce_s=0.2)
    backend = BackendProcess(settings)
    yield backend
    backend.scheduler.stop()


def event(ann_id, task_id, label, action="ANNOTATION_CREATED"):
    return annotation_event(ann_id, task_id, [label], config=CONFIG, action=action)


def send(backend, body):
    project = backend.project(1)
    project.store.apply(body)
    backend.scheduler.notify(project, body["action"])


def label_many(backend, n):
    """Set the project up and send ``n`` alternating A/B annotations; returns the project."""
    project = backend.project(1)
    project.setup(CONFIG)
    for i in range(n):
        send(backend, event(i, 1000 + i, "AB"[i % 2]))
    return project


def test_a_burst_of_events_becomes_one_run(backend):
    project = label_many(backend, 100)
    assert backend.scheduler.wait_idle(60)
    status = read_status(project, "head")
    assert status.state == "done" and status.runs == 1
    info = project.registry.info(project.registry.versions()[-1])
    assert info["labels"] == 100


def test_deleted_annotations_are_not_in_the_next_run(backend):
    project = label_many(backend, 40)
    assert backend.scheduler.wait_idle(60)
    send(
        backend,
        {
            "action": "ANNOTATIONS_DELETED",
            "annotations": [{"id": 3}, {"id": 4}],
            "project": {"id": 1},
        },
    )
    assert backend.scheduler.wait_idle(60)
    latest = project.registry.path(project.registry.versions()[-1])
    seen = json.loads((latest / "annotations.json").read_text())
    everything = set(seen["trained_on"]) | set(seen["held_out"])
    assert everything == set(range(40)) - {3, 4}


def test_a_failing_run_is_marked_failed_and_serving_is_untouched(backend, monkeypatch):
    project = label_many(backend, 6)
    assert backend.scheduler.wait_idle(60)
    serving = project.registry.current()

    def explode(*_args, **_kwargs):
        raise MemoryError("out of memory while training")

    monkeypatch.setattr("ls_backend.jobs.training.run_round", explode)
    send(backend, event(99, 2000, "A"))
    assert backend.scheduler.wait_idle(60)
    status = read_status(project, "head")
    assert status.state == "failed" and "out of memory" in status.last_error
    assert project.registry.current() == serving
    assert project.predict([{"id": 1, "data": {"text": "still serving"}}]).model_version == serving
    monkeypatch.undo()
    send(backend, event(100, 2001, "B"))  # the next event retries, and succeeds
    assert backend.scheduler.wait_idle(60)
    assert read_status(project, "head").state == "done"


def test_a_run_holding_the_lock_elsewhere_defers_and_then_runs(backend):
    """Another process training the same lane: this one waits, then trains what it missed."""
    project = backend.project(1)
    project.setup(CONFIG)
    with project.store.database.lock("head", wait=False) as mine:  # another gunicorn worker
        assert mine
        for i in range(6):
            send(backend, event(i, 1000 + i, "AB"[i % 2]))
        assert not backend.scheduler.wait_idle(1.0)
        assert read_status(project, "head").runs == 0
    assert backend.scheduler.wait_idle(60)
    assert read_status(project, "head").runs == 1


def test_a_sync_broken_by_label_studio_being_away_retries_by_itself(backend, monkeypatch):
    from ls_backend.labelstudio.client import LabelStudioError

    monkeypatch.setattr(SyncLane, "retry_s", 0.01)
    calls = []

    def flaky_sync(project, progress):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise LabelStudioError("import/predictions failed after 5 tries: ConnectError")
        return {"ranked": 1}

    attach(backend.lanes, backend.settings, flaky_sync, lambda project: 0)
    project = backend.project(1)
    project.setup(CONFIG)
    backend.scheduler.notify(project, SYNC_REQUESTED)
    assert backend.scheduler.wait_idle(30)
    assert len(calls) == 3
    status = read_status(project, "sync")
    assert status.state == "done" and status.failures == 0 and status.last_result == {"ranked": 1}


def test_a_sync_refused_for_a_bad_key_is_not_retried(backend, monkeypatch):
    from ls_backend.labelstudio.client import LabelStudioAuthError

    monkeypatch.setattr(SyncLane, "retry_s", 0.01)
    calls = []

    def refused(project, progress):
        calls.append(1)
        raise LabelStudioAuthError("401: check LABEL_STUDIO_API_KEY")

    attach(backend.lanes, backend.settings, refused, lambda project: 0)
    project = backend.project(1)
    project.setup(CONFIG)
    backend.scheduler.notify(project, SYNC_REQUESTED)
    assert backend.scheduler.wait_idle(30)
    assert calls == [1]
    assert read_status(project, "sync").state == "failed"


@pytest.fixture
def lora_backend(tmp_path):
    from core.test_lora import save_tiny_bert

    settings = Settings(
        model_dir=tmp_path / "models",
        train_debounce_s=0.05,
        lora_backbone=save_tiny_bert(tmp_path / "tiny"),
        lora_min_labels=30,
        lora_every=30,
        lora_epochs=1,
        lora_min_steps=0,
        max_length=16,
        mc_samples=2,
        device="cpu",
    )
    backend = BackendProcess(settings)
    yield backend
    backend.scheduler.stop()


def test_lora_trains_in_a_child_process_and_saves_a_version(lora_backend, monkeypatch):
    from ls_backend.jobs import training as lanes

    children = []

    def spy(fn, *args):
        children.append(fn.__name__)
        return run_isolated(fn, *args)

    run_isolated = lanes.run_isolated
    monkeypatch.setattr(lanes, "run_isolated", spy)
    project = label_many(lora_backend, 40)
    assert lora_backend.scheduler.wait_idle(180)
    status = read_status(project, "lora")
    assert status.state == "done", status.last_error
    assert children == ["isolated_round"]  # the training itself ran in a child process
    version = status.last_result["version"]
    assert version.endswith("-lora") and (project.registry.path(version) / "lora").is_dir()


def test_a_killed_lora_run_is_failed_and_serving_is_untouched(lora_backend, monkeypatch):
    from fakes import die

    monkeypatch.setattr("ls_backend.jobs.training.isolated_round", die)
    project = label_many(lora_backend, 40)
    assert lora_backend.scheduler.wait_idle(120)
    status = read_status(project, "lora")
    assert status.state == "failed" and "BrokenProcessPool" in status.last_error
    serving = project.registry.current()
    assert serving.endswith("-head")
    assert project.predict([{"id": 1, "data": {"text": "still here"}}]).model_version == serving


def test_each_sync_request_gets_its_own_retries(backend, monkeypatch):
    from ls_backend.labelstudio.client import LabelStudioError

    monkeypatch.setattr(SyncLane, "retry_s", 0.01)
    calls = []

    def away(project, progress):
        calls.append(1)
        raise LabelStudioError("import/predictions failed after 5 tries: ConnectError")

    attach(backend.lanes, backend.settings, away, lambda project: 0)
    project = backend.project(1)
    project.setup(CONFIG)
    for request in (1, 2):
        backend.scheduler.notify(project, SYNC_REQUESTED)
        assert backend.scheduler.wait_idle(30)
        assert len(calls) == request * (1 + SyncLane.retries)
    assert read_status(project, "sync").state == "failed"


def test_a_label_studio_that_fails_the_reread_does_not_stop_training(backend):
    rereads = []

    def broken_reread(project):
        rereads.append(1)
        raise ConnectionError("Label Studio is away")

    attach(backend.lanes, backend.settings, lambda project, progress: {}, broken_reread)
    project = label_many(backend, 10)
    send(backend, {"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}})
    assert backend.scheduler.wait_idle(60)
    assert read_status(project, "head").state == "done"
    assert project.registry.info(project.registry.versions()[-1])["labels"] == 10
    label_many(backend, 12)  # later runs do not try the failed re-read again
    assert backend.scheduler.wait_idle(60)
    assert len(rereads) == 1


def test_a_registered_lane_runs_on_its_events_without_the_scheduler_knowing_it(backend):
    """The scheduler asks the lanes; a new lane is one registered object."""
    from ls_backend.jobs.lanes import Lane

    class Echo(Lane):
        name = "echo"

        def wake(self, project, event):
            if event != "ECHO":
                return False
            project.store.want_lane("echo")
            return True

        def marker(self, project):
            return project.store.lane_wanted("echo")

        def run(self, project, progress):
            progress(0.5, "echoing")
            return {"echoed": project.key}

    backend.lanes.add(Echo())
    project = backend.project(1)
    project.setup(CONFIG)
    backend.scheduler.notify(project, "ANNOTATION_CREATED")  # not its event: nothing to do
    assert backend.scheduler.wait_idle(30)
    assert read_status(project, "echo").runs == 0
    backend.scheduler.notify(project, "ECHO")
    assert backend.scheduler.wait_idle(30)
    status = backend.scheduler.status(project, "echo")
    assert status["state"] == "done" and status["last_result"] == {"echoed": "1"}


def test_a_version_promoted_by_another_process_serves_here_within_the_poll(backend, tmp_path):
    """Replicas share only the store and MODEL_DIR: a promotion made by one (here a second
    process on the same MODEL_DIR, and the same database on the PostgreSQL pass) serves on
    the other without a restart, after at most POINTER_POLL_S."""
    from ls_backend.projects import POINTER_POLL_S

    project = label_many(backend, 12)
    assert backend.scheduler.wait_idle(60)
    here = project.predict([{"id": 1, "data": {"text": "a"}}]).model_version
    other = BackendProcess(backend.settings).project(1)
    assert other.model().version == here
    with other.registry.lock():
        earlier = other.registry.rollback()
    assert earlier != here
    time.sleep(POINTER_POLL_S)
    assert project.predict([{"id": 1, "data": {"text": "a"}}]).model_version == earlier


def test_head_rounds_under_a_stream_of_labels_take_at_most_a_quarter_of_the_time(
    backend, monkeypatch
):
    """A round per label took the CPU annotators' saves needed: while labels stream in, the
    next round waits 3x the last one's time after it, and the labels meanwhile go into it."""
    from ls_backend.jobs import training

    rounds: list[tuple[float, float]] = []
    real = training.run_round

    def slow_round(*args, **kwargs):
        began = time.monotonic()
        time.sleep(0.3)  # a round on a busy box
        result = real(*args, **kwargs)
        rounds.append((began, time.monotonic()))
        return result

    monkeypatch.setattr(training, "run_round", slow_round)
    project = backend.project(1)
    project.setup(CONFIG)
    for i in range(12):  # a label every 0.3 s: slower than the debounce (0.2 s) lets pass
        send(backend, event(i, 1000 + i, "AB"[i % 2]))
        time.sleep(0.3)
    assert backend.scheduler.wait_idle(60)
    gaps = [(b[0] - a[1]) / (a[1] - a[0]) for a, b in zip(rounds, rounds[1:], strict=False)]
    assert len(rounds) >= 2 and min(gaps) >= 3 * 0.95, gaps  # the lane's run is the longer span
    assert len(rounds) <= 4, rounds  # back to back: ~7 (0.2 s of quiet, then 0.3 s a round)
    # Every round is a whole round: the last one trained on every label, evaluated as always.
    info = project.registry.info(project.registry.versions()[-1])
    assert info["labels"] == 12 and "reason" in info


def test_a_label_after_a_quiet_spell_trains_at_once():
    from ls_backend.jobs.lanes import JobStatus
    from ls_backend.jobs.training import HEAD_HOLD_MAX_S, head_hold

    never = JobStatus("1", "head")
    assert head_hold(never, now=100.0) == 0.0
    running = JobStatus("1", "head", started=99.0, finished=None)
    assert head_hold(running, now=100.0) == 0.0
    # A 2 s round that ended 1 s ago: the next may start 3 x 2 s after it, 5 s from now.
    last = JobStatus("1", "head", started=97.0, finished=99.0)
    assert head_hold(last, now=100.0) == 5.0
    assert head_hold(last, now=200.0) == 0.0  # a quiet spell since: at once
    slow = JobStatus("1", "head", started=0.0, finished=99.0)
    assert head_hold(slow, now=100.0) == HEAD_HOLD_MAX_S - 1.0


def test_a_long_sync_takes_turns_with_the_other_projects(backend, monkeypatch):
    """A large import is embedded a slice per run: another project's sync runs between its
    slices instead of waiting for all of them (one sync thread here)."""
    monkeypatch.setattr(SyncLane, "threads", 1)
    left = {"1": 6, "2": 1}
    runs: list[str] = []

    def sliced_sync(project, progress):
        time.sleep(0.1)
        runs.append(project.key)
        left[project.key] -= 1
        if left[project.key]:
            project.store.want_lane("sync")  # the rest of the import: another run
        return {"left": left[project.key]}

    attach(backend.lanes, backend.settings, sliced_sync, lambda project: 0)
    big, small = backend.project(1), backend.project(2)
    for project in (big, small):
        project.setup(CONFIG)
    backend.scheduler.notify(big, SYNC_REQUESTED)
    deadline = time.monotonic() + 30
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.scheduler.notify(small, SYNC_REQUESTED)
    assert backend.scheduler.wait_idle(30)
    assert runs.count("1") == 6 and runs.count("2") == 1
    assert runs.index("2") < 6, runs  # not after the whole import (its 6 runs in a row)


def test_a_lora_child_rests_between_forward_passes_only_while_people_label(monkeypatch):
    import torch

    from ls_backend.jobs import training

    clock, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(training.time, "sleep", sleep)
    labeling = [False]
    layer, x = torch.nn.Linear(2, 2), torch.zeros(1, 2)
    assert training.pace_forward_passes(lambda: labeling[0], duty=1.0) is None  # unpaced
    handle = training.pace_forward_passes(lambda: labeling[0], duty=0.25)
    try:
        for _ in range(10):  # nobody labels: a forward pass every 0.2 s, no rest
            layer(x)
            clock[0] += 0.2
        assert slept == []
        labeling[0] = True
        clock[0] += training.CHILD_LOOK_S  # the next pass asks the store again
        for _ in range(10):
            layer(x)
            clock[0] += 0.2
        # Slices of 0.6 s (three passes: the first past CHILD_SLICE_S), each rested 3x (the
        # first slice began at the last pass nobody labeled during).
        assert len(slept) >= 2 and slept[0] >= 3 * 0.6
        assert all(s == pytest.approx(3 * 0.6) for s in slept[1:])
    finally:
        handle.remove()
