"""A span project in Label Studio's own labeling UI (a real browser): the backend's
pre-annotated regions are rendered over the text, and a Submit keeps them as the annotation."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.[test])")

from annotator import CHROMIUM_ARGS, SUBMIT, chromium_path  # noqa: E402
from backend_server import BackendServer  # noqa: E402
from fakes import wait_for  # noqa: E402
from labelstudio_server import PASSWORD, USERNAME  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from span_tasks import NER, annotate, sentence  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)"),
]
#: How Label Studio's Text tag draws a region over the text.
HIGHLIGHT = ".htx-highlight"


def test_pre_annotated_regions_render_and_a_submit_keeps_them(label_studio, tmp_path):
    backend = BackendServer(tmp_path / "models", env={"LORA_ENABLED": "false"}).start()
    try:
        sdk = label_studio.client
        project = sdk.projects.create(title="spans in a browser", label_config=NER)
        texts = [sentence(i)[0] for i in range(14)]
        imported = sdk.projects.import_tasks(
            id=project.id, request=[{"text": t} for t in texts], return_task_ids=True
        )
        task_ids = list(imported.task_ids or [])
        sdk.ml.create(project=project.id, url=backend.url, title="ls-backend")
        client = httpx.Client(
            base_url=label_studio.url,
            headers={"Authorization": f"Token {label_studio.token}"},
            timeout=60,
        )
        for n, task_id in enumerate(task_ids[:12]):
            annotate(client, task_id, n)

        def head_serves() -> bool:
            reply = httpx.post(
                f"{backend.url}/setup", json={"project": str(project.id), "schema": NER}
            )
            return reply.json()["model_version"].endswith("-head")

        wait_for(head_serves)
        target = task_ids[13]
        shown = regions_shown_then_submitted(label_studio, project.id, target, tmp_path)
        text = texts[13]
        prediction = next(
            p
            for p in client.get(f"/api/tasks/{target}").json()["predictions"]
            if p["model_version"].endswith("-head")
        )
        predicted = {(r["value"]["start"], r["value"]["end"]) for r in prediction["result"]}
        assert predicted and len(shown) >= len(predicted)
        assert {text[s:e] for s, e in predicted} <= set(shown)

        def saved() -> list:
            return client.get(f"/api/tasks/{target}").json()["annotations"]

        wait_for(lambda: saved())
        kept = {(r["value"]["start"], r["value"]["end"]) for r in saved()[0]["result"]}
        assert kept == predicted
    finally:
        backend.stop()


def test_regions_after_windows_line_endings_render_on_their_words(label_studio, tmp_path):
    # Where Label Studio's labeling UI puts a region whose offsets are Python str indices of
    # a text with "\r\n" and a lone "\r" (what the backend serves), and what a Submit keeps.
    text = "Note:\r\nAlice  flew\rto Paris .\r\n\r\nThen Bob met Carol in Rome ."
    words = [("Alice", "PER"), ("Paris", "LOC"), ("Bob", "PER"), ("Rome", "LOC")]
    regions = [
        {
            "id": f"w{k}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {
                "start": text.index(word),
                "end": text.index(word) + len(word),
                "text": word,
                "labels": [label],
            },
            "score": 0.9,
        }
        for k, (word, label) in enumerate(words)
    ]
    sdk = label_studio.client
    project = sdk.projects.create(title="line endings in a browser", label_config=NER)
    imported = sdk.projects.import_tasks(
        id=project.id,
        request=[{"data": {"text": text}, "predictions": [{"result": regions}]}],
        return_task_ids=True,
    )
    (task_id,) = list(imported.task_ids or [])
    client = httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=60,
    )
    shown = regions_shown_then_submitted(label_studio, project.id, task_id, tmp_path)
    assert sorted(shown) == sorted(word for word, _ in words)

    def saved() -> list:
        return client.get(f"/api/tasks/{task_id}").json()["annotations"]

    wait_for(lambda: saved())
    kept = {
        (r["value"]["start"], r["value"]["end"], r["value"].get("text"))
        for r in saved()[0]["result"]
    }
    assert kept == {(r["value"]["start"], r["value"]["end"], r["value"]["text"]) for r in regions}


def regions_shown_then_submitted(label_studio, project_id: int, task_id: int, tmp_path) -> list:
    """Log in to Label Studio's UI, open the task, read the highlighted regions' texts, Submit."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", USERNAME)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
        try:
            page.wait_for_selector(HIGHLIGHT)
        except Exception:
            (tmp_path / "page.html").write_text(page.content())
            raise
        shown = [text.strip() for text in page.locator(HIGHLIGHT).all_inner_texts()]
        page.locator(SUBMIT).click()
        browser.close()
    return shown
