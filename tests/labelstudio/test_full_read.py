"""A full read of Label Studio (the first sync, a healing re-read, START_TRAINING's re-read of
the labels) pages through it outside any store transaction: while Label Studio holds a page,
webhooks of that project and of the others are stored at once and none is lost; a read that
ends early (an empty page, a Label Studio that ignores ``page``) removes nothing. Against a
stand-in Label Studio (``fake_label_studio``) that can be made to do all of that, on both of
the store's engines."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from backend_server import BackendServer
from fake_label_studio import TOKEN, FakeLabelStudio, Hold
from fakes import HashEncoder, annotation_event, text_classification_config, wait_for

from ls_backend.core.pacing import Pacer
from ls_backend.labelstudio.client import IncompleteRead, LabelStudioClient, RetryPolicy
from ls_backend.labelstudio.config import parse_config
from ls_backend.labelstudio.sync import Syncer, SyncTarget
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS, AnnotationStore

CONFIG = text_classification_config(["A", "B"])
FAST_RETRY = RetryPolicy(attempts=2, backoff_s=0.001, max_backoff_s=0.01)
#: Label Studio gives a webhook 1 s and /setup 3 s.
WEBHOOK_S, SETUP_S = 1.0, 3.0
#: Longest a test waits for a write that the old code held behind the read.
STUCK_S = 5.0


def project_event(action: str, pid: int = 1, **body: Any) -> dict[str, Any]:
    return {"action": action, "project": {"id": pid}, **body}


def stored_within(store: AnnotationStore, body: dict[str, Any]) -> float:
    """Store ``body`` as /webhook does, from another thread; seconds it took (fails when it is
    still waiting after STUCK_S: held behind a transaction)."""
    took: list[float] = []

    def apply() -> None:
        started = time.monotonic()
        store.apply(body)
        took.append(time.monotonic() - started)

    writer = threading.Thread(target=apply, daemon=True)
    writer.start()
    writer.join(STUCK_S)
    assert took, f"a {body['action']} webhook was still waiting after {STUCK_S} s"
    return took[0]


def syncer_for(ls: FakeLabelStudio, store: AnnotationStore) -> tuple[Syncer, SyncTarget]:
    client = LabelStudioClient(ls.url, TOKEN, retry=FAST_RETRY)
    target = SyncTarget(
        key="1",
        store=store,
        encoder=HashEncoder(),
        pacer=Pacer(1.0),
        config=lambda: parse_config(CONFIG),
        model=lambda: None,  # a read ranks nothing
        adopt_config=lambda xml: None,
    )
    return Syncer(client, Settings()), target


def test_webhooks_are_stored_at_once_while_a_full_read_waits_on_label_studio(make_database):
    with FakeLabelStudio() as ls:
        tasks = ls.add_project(1, CONFIG, [f"text {i}" for i in range(1, 1201)]).tasks
        ids = [t["id"] for t in tasks]  # 10001 ... 11200: two pages of 1,000
        store = AnnotationStore(make_database("1"))
        # What the mirror knew: a task since deleted in Label Studio, and two labeled ones (on
        # page 1 and page 2) whose labels are deleted while the read runs.
        store.apply(project_event("TASKS_CREATED", tasks=[{"id": 9999, "data": {"text": "x"}}]))
        for annotation_id, index in ((50, 19), (51, 1049)):
            labeled = annotation_event(annotation_id, ids[index], ["A"], config=CONFIG)
            tasks[index]["annotations"] = [labeled["annotation"]]
            store.apply(labeled)
        hold = Hold(project=1, page=2)
        ls.holds.append(hold)
        syncer, target = syncer_for(ls, store)
        read: list[dict[str, int]] = []
        reader = threading.Thread(target=lambda: read.append(syncer._full_read(target)))
        reader.start()
        try:
            assert hold.reached.wait(30), "the read never asked for page 2"
            # Label Studio changes while it holds page 2; the pages read before say otherwise.
            took = [
                stored_within(store, body)
                for body in (
                    annotation_event(1, 10005, ["A"], config=CONFIG),  # page 1, written
                    annotation_event(2, 11100, ["B"], config=CONFIG),  # page 2, still to come
                    project_event("ANNOTATIONS_DELETED", annotations=[{"id": 50}, {"id": 51}]),
                    project_event("TASKS_CREATED", tasks=[{"id": 11201, "data": {"text": "n"}}]),
                    project_event("TASKS_DELETED", tasks=[{"id": 11150}]),
                )
            ]
        finally:
            hold.release.set()
            reader.join(60)
    assert read, "the read did not finish"
    assert max(took) < WEBHOOK_S, took
    mirrored, labeled = store.task_states()
    assert mirrored.tolist() == sorted({*ids, 11201} - {11150})
    assert set(mirrored[labeled].tolist()) == {10005, 11100}  # 10020's, 11050's deleted
    assert {item.task_id: item.result[0]["value"]["choices"] for item in store.labeled()} == {
        10005: ["A"],
        11100: ["B"],
    }


@pytest.mark.parametrize("fault", ["ignores page", "empty page"])
def test_a_read_that_ends_early_removes_nothing(make_database, fault):
    with FakeLabelStudio() as ls:
        ls.add_project(1, CONFIG, [f"text {i}" for i in range(1, 1201)])
        store = AnnotationStore(make_database("1"))
        syncer, target = syncer_for(ls, store)
        syncer._full_read(target)
        assert store.mirror_counts() == (1200, 0)
        ls.ignores_page = fault == "ignores page"
        ls.empty_pages = fault == "empty page"
        with pytest.raises(IncompleteRead, match="page"):
            syncer._full_read(target)  # ends, and says why
    assert store.mirror_counts() == (1200, 0)


@pytest.mark.parametrize("fault", ["no labeled task", "empty page", "ignores page"])
def test_a_reread_that_finds_nothing_or_fails_leaves_the_stored_labels_alone(make_database, fault):
    """START_TRAINING re-reads the labels; an empty or failed read must not delete them."""
    with FakeLabelStudio() as ls:
        tasks = ls.add_project(1, CONFIG, [f"text {i}" for i in range(1, 31)]).tasks
        store = AnnotationStore(make_database("1"))
        for n, task in enumerate(tasks[:20], start=1):
            body = annotation_event(n, task["id"], ["AB"[n % 2]], config=CONFIG)
            store.apply(body)
            if fault != "no labeled task":
                task["annotations"] = [body["annotation"]]
        ls.empty_pages = fault == "empty page"
        ls.ignores_page = fault == "ignores page"
        client = LabelStudioClient(ls.url, TOKEN, retry=FAST_RETRY)
        upto = store.last_seq(LABEL_ACTIONS)
        if fault == "no labeled task":
            assert store.replace_labeled(client.labeled_tasks(1), upto) == 0
        else:
            with pytest.raises(IncompleteRead):
                store.replace_labeled(client.labeled_tasks(1, page_size=8), upto)
    assert len(store.labeled()) == 20


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_while_label_studio_holds_a_page_webhooks_and_setup_answer_at_once(
    engine, request, tmp_path
):
    """The real server: 4 control threads, Label Studio holding the first sync's read of
    project 1. Webhooks of project 1 and 2 and /setup calls answer within Label Studio's
    timeouts, and every label is stored."""
    env = {
        "LORA_ENABLED": "false",
        "THREADS": "4",
        "SYNC_MIN_INTERVAL_S": "0",
        "LABEL_STUDIO_API_KEY": TOKEN,
    }
    if engine == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("database_url")
    with FakeLabelStudio() as ls:
        for pid in (1, 2, 3):
            ls.add_project(pid, CONFIG, [f"project {pid} text {i}" for i in range(1, 31)])
        hold = Hold(project=1, page=1, timeout_s=120)
        ls.holds.append(hold)
        backend = BackendServer(tmp_path / "models", env={**env, "LABEL_STUDIO_URL": ls.url})
        backend.start()
        http = httpx.Client(base_url=backend.url, timeout=60)

        def timed(path: str, body: dict[str, Any]) -> tuple[int, float]:
            started = time.monotonic()
            status = http.post(path, json=body).status_code
            return status, time.monotonic() - started

        try:
            assert timed("/setup", {"project": "2.1", "schema": CONFIG})[0] == 200
            assert timed("/setup", {"project": "1.1", "schema": CONFIG})[0] == 200
            assert hold.reached.wait(60), "the first sync of project 1 never read its tasks"
            calls = [
                *[
                    ("/webhook", annotation_event(n, 10_000 + n, ["A"], config=CONFIG, project=1))
                    for n in range(1, 5)
                ],
                *[
                    ("/webhook", annotation_event(n, 20_000 + n, ["B"], config=CONFIG, project=2))
                    for n in range(5, 7)
                ],
                ("/setup", {"project": "3.1", "schema": CONFIG}),
                ("/setup", {"project": "2.1", "schema": CONFIG}),
            ]
            with ThreadPoolExecutor(len(calls)) as pool:
                answers = list(pool.map(lambda call: timed(*call), calls))
            held_still = not hold.release.is_set()
        finally:
            hold.release.set()
        try:
            assert held_still
            assert all(status == 200 for status, _ in answers), answers
            webhook_s = [s for (path, _), (_, s) in zip(calls, answers, strict=True)
                         if path == "/webhook"]  # fmt: skip
            setup_s = [s for (path, _), (_, s) in zip(calls, answers, strict=True)
                       if path == "/setup"]  # fmt: skip
            assert max(webhook_s) < WEBHOOK_S, webhook_s
            assert max(setup_s) < SETUP_S, setup_s

            def settled() -> dict[str, Any] | None:
                shown = http.get("/status").json()["projects"]
                one, two = shown.get("1", {}), shown.get("2", {})
                done = one.get("jobs", {}).get("sync", {}).get("state") == "done"
                ok = one.get("annotations") == 4 and two.get("annotations") == 2
                return shown if done and ok and one.get("tasks") == 30 else None

            wait_for(settled, timeout=120, what="every label stored and project 1's read done")
        finally:
            http.close()
            backend.stop()
