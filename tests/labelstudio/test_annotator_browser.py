"""An annotator in a real browser (tests/annotator.py), without and with ls-backend connected.

Label Studio's own labeling UI: every Submit saves and the next task shows, and with the backend
the stream serves its ranking with its pre-annotations. Timings are printed (`-s` shows them);
figures for larger projects come from benchmarks/annotator.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.[test])")

from annotator import (  # noqa: E402
    AnnotatorRun,
    QueueWatch,
    chromium_path,
    label_tasks,
    served_order,
)
from backend_server import BackendServer  # noqa: E402
from labelstudio_server import (  # noqa: E402
    ENGINES,
    PASSWORD,
    USERNAME,
    LabelStudioServer,
    label_studio_on,
)

from ls_backend.labelstudio.client import LabelStudioClient  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)"),
]

TASKS = 1_000
FIRST_RANKING_S = 60.0


@pytest.fixture(params=ENGINES)
def label_studio(request: pytest.FixtureRequest) -> LabelStudioServer:
    """Label Studio on SQLite, and on PostgreSQL as the compose stack runs it."""
    return label_studio_on(request)


def trec_tasks(rows: list[dict[str, str]], n: int) -> tuple[list[dict[str, str]], dict[str, str]]:
    """`n` tasks cycling through the TREC rows, each text made unique; and text -> true label."""
    texts = [
        (f"{rows[i % len(rows)]['text']} #{i}", rows[i % len(rows)]["label"]) for i in range(n)
    ]
    return [{"text": text} for text, _ in texts], dict(texts)


def api(label_studio: LabelStudioServer) -> httpx.Client:
    headers = {"Authorization": f"Token {label_studio.token}"}
    return httpx.Client(base_url=label_studio.url, headers=headers, timeout=60)


def stored_choices(client: httpx.Client, task_ids: list[int]) -> dict[int, list[list[str]]]:
    """Each task's saved annotations, as their chosen labels."""
    stored = {}
    for task_id in task_ids:
        annotations = client.get(f"/api/tasks/{task_id}").json()["annotations"]
        stored[task_id] = [item["value"]["choices"] for a in annotations for item in a["result"]]
    return stored


def log_since(label_studio: LabelStudioServer, offset: int) -> str:
    with open(label_studio.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def report(name: str, run: AnnotatorRun, server_log: str) -> None:
    """Print the timings, the errors, and how often Label Studio's SQLite was locked meanwhile
    (LABEL_STUDIO.md 7: what makes saves fail, even when this run's requests all got through)."""
    print(f"\n{name}: {run.summary()}")
    locked = sum(
        "[ERROR]" in line and "database is locked" in line for line in server_log.splitlines()
    )
    print(f"Label Studio logged {locked} 'database is locked' errors meanwhile")
    print("submit -> next task, s:", " ".join(f"{s:.2f}" for s in run.seconds))
    versions = Counter(v for record in run.tasks for v, _ in record.predictions)
    if versions:
        print("tasks served per ranking version:", dict(versions))
    for record in run.tasks:
        for error in record.errors:
            print(f"  task {record.task_id}: {error}")
    for error in run.errors:
        print(f"  run: {error}")


# The control needs no second engine: what PostgreSQL changes is what the backend does to it.
@pytest.mark.parametrize("label_studio", ["sqlite"], indirect=True)
@pytest.mark.parametrize("labels", [25])
def test_every_submit_saves_and_shows_the_next_task_without_a_backend(
    label_studio, make_ls_project, trec_labels, trec_test_rows, tmp_path: Path, labels: int
):
    tasks, _ = trec_tasks(trec_test_rows, TASKS)
    project = make_ls_project(trec_labels, tasks=tasks)
    log_offset = label_studio.log_path.stat().st_size

    run = label_tasks(
        label_studio.url,
        USERNAME,
        PASSWORD,
        project["id"],
        labels,
        screenshots_dir=tmp_path / "screens",
    )
    report("no backend", run, log_since(label_studio, log_offset))

    assert run.failures == 0 and len(run.seconds) == labels
    # Sequential sampling: the stream serves tasks in id order, with nothing pre-annotated.
    assert [r.task_id for r in run.tasks] == project["task_ids"][:labels]
    assert not any(r.prediction_shown or r.predictions for r in run.tasks)
    with api(label_studio) as client:
        first = trec_labels[0]  # the harness's default choice
        assert stored_choices(client, project["task_ids"][:labels]) == {
            task_id: [[first]] for task_id in project["task_ids"][:labels]
        }


@pytest.mark.parametrize("labels", [25])
def test_from_the_connect_on_the_stream_serves_the_backends_ranking_with_pre_annotations(
    label_studio, make_ls_project, trec_labels, trec_test_rows, tmp_path: Path, labels: int
):
    """The annotator starts labeling as the model is connected: within seconds the queue is
    the backend's ranking (a first one on a sample), and every task served from then on is
    the lowest-scored one not labeled yet of the ranking in force, shown pre-annotated."""
    tasks, truth = trec_tasks(trec_test_rows, TASKS)
    project = make_ls_project(trec_labels, tasks=tasks)
    pid = project["id"]
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    backend = BackendServer(tmp_path / "models", env=env).start()
    connected: list[float] = []

    def connect() -> None:  # as the admin clicks Connect Model; Label Studio adds the webhook
        connected.append(time.monotonic())
        ls = LabelStudioClient(label_studio.url, label_studio.token)
        ls.ensure_ml_backend(pid, backend.url, "ls-backend")
        ls.close()

    client = api(label_studio)
    try:
        log_offset = label_studio.log_path.stat().st_size
        with QueueWatch(label_studio.url, label_studio.token, pid).running() as watch:
            run = label_tasks(
                label_studio.url,
                USERNAME,
                PASSWORD,
                pid,
                labels,
                choose=lambda text: truth[text],
                screenshots_dir=tmp_path / "screens",
                before_open=connect,
            )
        order = served_order(run, watch)
        first = min(watch.seen.values(), default=None)
        waited = None if first is None else first - connected[0]
        report(f"with ls-backend, labeling from the connect (first ranking after {waited} s)",
               run, log_since(label_studio, log_offset))  # fmt: skip
        stored = stored_choices(client, [r.task_id for r in run.tasks])
    finally:
        backend.stop()
        client.close()

    assert run.failures == 0 and len(run.seconds) == labels
    assert stored == {r.task_id: [[truth[r.text]]] for r in run.tasks}
    # The goal is seconds (benchmarks/annotator.py measures it); a busy CI box gets slack.
    assert waited is not None and waited < FIRST_RANKING_S and order.after_first >= 8, waited
    # One task may be off: a push that lands between Label Studio choosing a task by the old
    # ranking and sending it shows it with the new ranking's prediction (or none).
    print(f"served in order of the ranking in force: {order.in_order} of {order.after_first}")
    assert order.in_order >= order.after_first - 1, order.off
    after = [r for r in run.tasks if r.shown_at >= first]
    assert sum(r.prediction_shown for r in after) >= len(after) - 1
