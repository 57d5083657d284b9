"""The admin's dashboard in a real browser, on a real backend trained through a real Label Studio.

100 TREC questions are labeled through Label Studio's API, 5 of them with a wrong label on
purpose; the page must show a learning-curve point per scored version, the task Label Studio
serves next at the head of its queue, the planted mislabels among its suspects, and a rollback
that moves the serving version. Screenshots go to ``<tmp_path>/dashboard-screens``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.[test])")

from annotator import CHROMIUM_ARGS, chromium_path  # noqa: E402
from backend_server import BackendServer  # noqa: E402
from fakes import wait_for  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from ls_backend.labelstudio.client import LabelStudioClient  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)"),
]

LABELED, UNLABELED = 100, 100
FIRST_BATCH = 60  # labels before the first wait: above EVAL_MIN_LABELS, so it is scored
FLIPPED = (7, 23, 41, 66, 88)  # rows labeled with another class on purpose


def head_trained_on(backend: BackendServer, pid: int) -> int:
    head = httpx.get(f"{backend.url}/status").json()["projects"][str(pid)]["jobs"]["head"]
    return int((head.get("last_result") or {}).get("labels", 0))


def lanes_idle(backend: BackendServer, pid: int) -> bool:
    jobs = httpx.get(f"{backend.url}/status").json()["projects"][str(pid)]["jobs"]
    return all(job["state"] not in {"queued", "running"} for job in jobs.values())


def test_the_dashboard_shows_curve_queue_suspects_and_rolls_back(
    label_studio, make_ls_project, trec_labels, trec_test_rows, tmp_path: Path
):
    rows = trec_test_rows[: LABELED + UNLABELED]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    pid, task_ids = project["id"], project["task_ids"]
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "LORA_ENABLED": "false",
        "SYNC_MIN_INTERVAL_S": "0",
    }
    backend = BackendServer(tmp_path / "models", env=env).start()
    ls = httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=60,
    )
    screens = tmp_path / "dashboard-screens"
    screens.mkdir()
    try:
        sdk = LabelStudioClient(label_studio.url, label_studio.token)
        sdk.ensure_ml_backend(pid, backend.url, "ls-backend")
        sdk.close()
        given = {}
        for i, (task_id, row) in enumerate(zip(task_ids[:LABELED], rows, strict=False)):
            label = row["label"]
            if i in FLIPPED:
                label = next(name for name in trec_labels if name != label)
            given[task_id] = label
            result = [
                {
                    "from_name": "label",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ]
            reply = ls.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
            assert reply.status_code == 201, reply.text
            if i + 1 in (FIRST_BATCH, LABELED):  # two held-out-scored versions, whatever the pace
                wait_for(lambda n=i + 1: head_trained_on(backend, pid) == n, 120, f"{i + 1} labels")
        flipped = {task_ids[i] for i in FLIPPED}
        wait_for(lambda: lanes_idle(backend, pid), 120, "training and sync after the labels")
        assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202
        wait_for(lambda: lanes_idle(backend, pid), 120, "the requested sync")
        report = httpx.get(f"{backend.url}/projects/{pid}/report", timeout=60).json()
        served = ls.post(
            "/api/dm/actions", params={"id": "next_task", "project": pid}, json={"project": pid}
        )
        assert served.status_code == 200, served.text
        next_task = served.json()["id"]

        scored = [p["version"] for p in report["learning_curve"] if p["accuracy"] is not None]
        assert len(scored) >= 2, report["learning_curve"]
        assert report["queue"][0]["task_id"] == next_task
        top = [s["task_id"] for s in report["suspects"][:10]]
        assert len(flipped & set(top)) >= 3, (top, flipped)
        assert report["stopping"] is not None and report["stopping"]["kappas"]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{backend.url}/")
            assert page.url.endswith("/ui")
            page.screenshot(path=str(screens / "projects.png"), full_page=True)
            assert page.locator(f"a[href='/ui/projects/{pid}']").count() == 1
            started = time.monotonic()
            page.goto(f"{backend.url}/ui/projects/{pid}")
            print(f"\nproject page: {time.monotonic() - started:.2f} s")
            page.screenshot(path=str(screens / "project.png"), full_page=True)

            points = page.eval_on_selector_all(
                "#learning-curve .acc-point", "els => els.map(e => e.dataset.version)"
            )
            assert points == scored
            # Drawn, not only in the markup: both metrics' marks and the serving ring.
            curve = page.locator("#learning-curve")
            assert curve.locator(".f1-point").count() == len(scored)
            assert curve.locator(".f1-point").first.is_visible()
            assert curve.locator(".serving-mark").is_visible()
            first_row = page.locator("#queue tr").nth(1)
            assert first_row.locator("td").nth(1).inner_text().strip() == str(next_task)
            shown = page.eval_on_selector_all(
                "#suspects tr td:first-child", "els => els.map(e => e.innerText.trim())"
            )
            assert len(flipped & {int(t) for t in shown[:10]}) >= 3
            assert page.locator("#stop-note").inner_text()

            before = report["model_version"]
            target = next(p["version"] for p in report["learning_curve"] if p["version"] != before)
            page.select_option("#rollback-version", target)
            dialogs: list[str] = []

            def accept(dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", accept)
            page.click("#rollback")
            cell = f"[data-project='{pid}'][data-serving]"
            page.wait_for_function(
                "([sel, v]) => document.querySelector(sel)?.textContent.trim() === v",
                arg=[cell, target],
                timeout=60_000,
            )
            assert len(dialogs) == 1 and target in dialogs[0], dialogs  # the confirmation only
            page.screenshot(path=str(screens / "after-rollback.png"), full_page=True)
            browser.close()
        status = httpx.get(f"{backend.url}/status").json()["projects"][str(pid)]
        assert status["model_version"] == target
        assert problems == []
        print(f"\nscreenshots: {screens}")
        print(json.dumps({k: report[k] for k in ("stopping_note", "suspects_note")}, indent=1))
    finally:
        ls.close()
        backend.stop()
