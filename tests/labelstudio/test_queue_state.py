"""Which predictions of a replaced ranking may go: never one an annotator may still have open."""

import time

from ls_backend.core.pacing import Pacer
from ls_backend.labelstudio.queue import HOLD_S, QueueState, Ranking

TASKS = list(range(1, 21))


def test_tasks_labeled_from_a_ranking_and_its_unserved_tail_go_the_open_ones_stay():
    ranking = Ranking("rank-a", TASKS, pushed=0.0, stale_since=100.0)
    # Tasks 1-5 were labeled, 6 was served and left open; with one annotator, 2 may be open.
    labeled = {1, 2, 3, 4, 5}
    deletable = ranking.deletable(touched=labeled, served=labeled, margin=2, now=200.0)
    assert not {6, 7} & set(deletable)
    assert deletable == [1, 2, 3, 4, 5, *range(8, 21)]


def test_an_untouched_task_before_the_last_labeled_one_is_kept():
    ranking = Ranking("rank-a", TASKS, pushed=0.0, stale_since=100.0)
    # Task 2 was served and never saved (its lock lasts a day); 3 was labeled after it.
    deletable = ranking.deletable(touched={1, 3}, served={1, 3}, margin=1, now=200.0)
    assert 2 not in deletable and 4 not in deletable
    assert {1, 3, 5} <= set(deletable)


def test_after_the_task_lock_runs_out_everything_goes():
    ranking = Ranking("rank-a", TASKS, pushed=0.0, stale_since=100.0, deleted=[1, 2])
    late = 100.0 + HOLD_S + 1
    assert ranking.deletable(touched=set(), served=set(), margin=5, now=late) == TASKS[2:]


def test_tasks_labeled_under_a_later_ranking_do_not_hold_this_ones_predictions():
    ranking = Ranking("rank-a", TASKS, pushed=0.0, stale_since=100.0)
    # 1-3 were labeled from this ranking; the next one served 15 (its front differs).
    deletable = ranking.deletable(touched={1, 2, 3, 15}, served={1, 2, 3}, margin=2, now=200.0)
    assert not {4, 5} & set(deletable)
    assert set(range(6, 21)) <= set(deletable)


class RecordingClient:
    """Stands in for Label Studio: records the versions the queue is pointed at."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.calls: list[str] = []

    def import_predictions(self, project_id, items):
        self.calls.append(f"import {len(items)}")
        return len(items)

    def create_prediction(self, item):
        self.calls.append(f"create {item['task']}")
        return 1000 + item["task"]

    def delete_prediction(self, prediction_id):
        self.calls.append(f"delete {prediction_id}")

    def iter_tasks(self, project_id, task_ids, include_predictions):
        self.calls.append(f"read {task_ids}")
        return [{"id": t, "predictions": []} for t in task_ids]

    def set_queue(self, project_id, version):
        self.queued.append(version)
        self.calls.append("queue")


def test_two_pushes_of_one_model_in_the_same_second_get_distinct_versions(make_database, tmp_path):
    from ls_backend.labelstudio.sync import Front, QueueState, Syncer
    from ls_backend.settings import Settings
    from ls_backend.store.annotations import AnnotationStore

    client = RecordingClient()
    syncer = Syncer(client, Settings(model_dir=tmp_path))
    store, state = AnnotationStore(make_database("1")), QueueState()
    front = Front([1, 2], [{"result": []}, {"result": []}], "v0002-head")
    first = syncer._push(1, state, front, store, Pacer(1.0))
    second = syncer._push(1, state, front, store, Pacer(1.0))
    assert first != second and client.queued == [first, second]
    # Both are remembered until their predictions are gone (the first is now stale).
    assert [r.version for r in QueueState.load(store).rankings] == [first, second]


def test_predictions_kept_for_open_editors_do_not_count_as_backlog(make_database, tmp_path):
    from fakes import annotation_event

    from ls_backend.labelstudio.queue import QueueState
    from ls_backend.store.annotations import AnnotationStore

    store = AnnotationStore(make_database("1"))
    store.apply(annotation_event(1, 5, ["A"], config="<View/>"))  # task 5 labeled from it
    stale = Ranking("rank-a", TASKS, pushed=0.0, stale_since=time.time())
    state = QueueState(rankings=[stale, Ranking("rank-b", [30, 31], pushed=time.time())])
    # Kept: untouched tasks up to the last labeled one plus 2 (one annotator): 1-4, 6, 7.
    assert state.backlog(store) == len(TASKS) - 6


def test_a_label_that_came_after_a_ranking_was_replaced_is_not_its_frontier(
    make_database, tmp_path
):
    from fakes import annotation_event

    from ls_backend.labelstudio.queue import SAVE_GRACE_S, QueueState
    from ls_backend.store.annotations import AnnotationStore

    store = AnnotationStore(make_database("1"))
    replaced = time.time() - SAVE_GRACE_S - 60
    store.apply(annotation_event(1, 5, ["A"], config="<View/>"))  # labeled under rank-b
    stale = Ranking("rank-a", TASKS, pushed=0.0, stale_since=replaced)
    state = QueueState(rankings=[stale, Ranking("rank-b", [5, 30], pushed=replaced)])
    # Only rank-a's first 2 may be open (one annotator, nothing labeled from it).
    assert state.backlog(store) == len(TASKS) - 2


def test_a_large_project_gets_its_front_one_prediction_at_a_time_queue_after_the_head(
    make_database, tmp_path, monkeypatch
):
    from ls_backend.labelstudio import sync
    from ls_backend.settings import Settings
    from ls_backend.store.annotations import AnnotationStore

    monkeypatch.setattr(sync, "WRITE_PAUSE_S", 0.0)
    client = RecordingClient()
    syncer = sync.Syncer(client, Settings(model_dir=tmp_path))
    store, state = AnnotationStore(make_database("1")), QueueState()
    tasks = list(range(1, 16))
    front = sync.Front(tasks, [{"result": []}] * len(tasks), "v0002-head")
    syncer._push(1, state, front, store, Pacer(1.0), project_tasks=sync.BULK_PUSH_MAX_TASKS + 1)
    head = [f"create {t}" for t in tasks[: sync.QUEUE_HEAD]]
    rest = [f"create {t}" for t in tasks[sync.QUEUE_HEAD :]]
    # No bulk import (it rewrites every task's counters); the queue serves the head at once.
    assert client.calls == [*head, "queue", *rest]

    client.calls.clear()
    syncer._push(1, state, front, store, Pacer(1.0), project_tasks=sync.BULK_PUSH_MAX_TASKS)
    assert client.calls == [f"import {len(tasks)}", "queue"]


def test_while_people_label_a_push_goes_one_prediction_at_a_time_but_the_first_at_once(
    make_database, tmp_path, monkeypatch
):
    from fakes import annotation_event, text_classification_config

    from ls_backend.labelstudio import sync
    from ls_backend.settings import Settings
    from ls_backend.store.annotations import AnnotationStore

    monkeypatch.setattr(sync, "WRITE_PAUSE_S", 0.0)
    client = RecordingClient()
    syncer = sync.Syncer(client, Settings(model_dir=tmp_path))
    store, state = AnnotationStore(make_database("1")), QueueState()
    config = text_classification_config(["a", "b"])
    store.apply(annotation_event(1, 99, ["a"], text="labeled just now", config=config))
    tasks = list(range(1, 16))
    front = sync.Front(tasks, [{"result": []}] * len(tasks), "v0002-head")
    # A bulk import refreshes every task's counters: seconds of Label Studio on PostgreSQL,
    # while someone waits for their save.
    syncer._push(1, state, front, store, Pacer(0.5), project_tasks=1_000)
    head = [f"create {t}" for t in tasks[: sync.QUEUE_HEAD]]
    assert client.calls == [*head, "queue", *[f"create {t}" for t in tasks[sync.QUEUE_HEAD :]]]
    client.calls.clear()
    syncer._push(1, state, front, store, Pacer(0.5), project_tasks=1_000, urgent=True)
    assert client.calls == [f"import {len(tasks)}", "queue"]  # the first ranking: at once
    client.calls.clear()
    syncer._push(1, state, front, store, Pacer(1.0), project_tasks=1_000)
    assert client.calls == [f"import {len(tasks)}", "queue"]  # BACKGROUND_DUTY=1: unpaced


def test_a_large_project_lets_more_old_predictions_wait_for_a_quiet_spell(tmp_path):
    from ls_backend.labelstudio.queue import stale_cap
    from ls_backend.settings import Settings

    settings = Settings(model_dir=tmp_path)
    assert (
        stale_cap(settings.sync_top_k, 1_000)
        == stale_cap(settings.sync_top_k, 10_000)
        == 4 * settings.sync_top_k
    )
    assert stale_cap(settings.sync_top_k, 100_000) == 1_000  # 1%: deletes there are slower


def two_pushes_one_by_one(make_database, tmp_path, monkeypatch):
    """Rankings [1, 2, 3] then [4, 5] pushed one prediction at a time; the first is replaced
    long enough ago that nobody can hold its predictions."""
    from ls_backend.labelstudio import sync
    from ls_backend.settings import Settings
    from ls_backend.store.annotations import AnnotationStore

    monkeypatch.setattr(sync, "WRITE_PAUSE_S", 0.0)
    client = RecordingClient()
    syncer = sync.Syncer(client, Settings(model_dir=tmp_path))
    store, state = AnnotationStore(make_database("1")), QueueState()
    big = sync.BULK_PUSH_MAX_TASKS + 1
    for tasks in ([1, 2, 3], [4, 5]):
        front = sync.Front(tasks, [{"result": []}] * len(tasks), "v0002-head")
        syncer._push(1, state, front, store, Pacer(1.0), project_tasks=big)
    state.rankings[0].stale_since = time.time() - HOLD_S - 1
    return client, syncer, store, state


def test_predictions_pushed_one_by_one_are_deleted_without_reading_them_back(
    make_database, tmp_path, monkeypatch
):

    # nobody can hold them
    client, syncer, store, state = two_pushes_one_by_one(make_database, tmp_path, monkeypatch)
    client.calls.clear()
    deleted, more = syncer._forget_stale(
        1, state, store, cap=200, report=lambda *_: None, pacer=Pacer(1.0)
    )
    assert (deleted, more) == (3, False)
    assert client.calls == ["delete 1001", "delete 1002", "delete 1003"]  # no read
    assert [r.tasks for r in QueueState.load(store).rankings] == [[4, 5]]


def test_deleting_old_predictions_stops_when_a_new_ranking_is_wanted(
    make_database, tmp_path, monkeypatch
):

    client, syncer, store, state = two_pushes_one_by_one(make_database, tmp_path, monkeypatch)
    delete = client.delete_prediction

    def delete_then_promote(prediction_id):  # a head round promotes meanwhile
        delete(prediction_id)
        store.want_lane("sync")

    monkeypatch.setattr(client, "delete_prediction", delete_then_promote)
    assert syncer._forget_stale(
        1, state, store, cap=200, report=lambda *_: None, pacer=Pacer(1.0)
    ) == (1, False)
