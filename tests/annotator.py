"""A real-browser annotator: Label Studio's own labeling UI, driven by Playwright.

Logs in, opens the project's Data Manager, clicks *Label All Tasks*, and for each task picks a
choice and clicks *Submit*, timing Submit -> next task rendered (LABEL_STUDIO.md, section 7).
The browser is Debian's `chromium` (Playwright cannot download its own here).

    run = label_tasks(ls.url, USERNAME, PASSWORD, project_id, 25)
    print(run.median_s, run.max_s, run.failures)
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import ConsoleMessage, Page, Request, Response, sync_playwright
from playwright.sync_api import Error as PlaywrightError

# As root Chromium refuses its sandbox; /dev/shm is small in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]
NEXT_TASK = "/api/dm/actions?id=next_task"
SUBMIT = "[data-testid=bottombar-submit-button]"
CHOICES = ".lsf-choices input"
# What Label Studio shows when a request fails: the error dialog ("Runtime error", "Server
# error": its `error-message` block), or a red toast ("Annotation is not saved, ...").
ERROR_DIALOG = "[class*='error-message__title']"
ERROR_DETAIL = "[class*='error-message__detail']"
ERROR_TOAST = "[class*='toast_error']"
FEEDBACK_WAIT_MS = 3000  # the toast follows the failed response within a moment
QUEUE_POLL_S = 0.5

# "shown" once the editor renders task `id` (the bottom bar's task id) with its text (when
# known) and choices; "error" once Label Studio's error dialog is up.
TASK_SHOWN_JS = """([id, text, errorDialog]) => {
  if (document.querySelector(errorDialog)) return 'error';
  const norm = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const idEl = document.querySelector('.lsf-current-task__task-id');
  const body = document.querySelector('.lsf-htx-richtext');
  if (!idEl || !idEl.firstChild || !document.querySelector('.lsf-choices input')) return false;
  if (norm(idEl.firstChild.textContent) !== String(id)) return false;
  return text === null || (!!body && norm(body.textContent) === norm(text)) ? 'shown' : false;
}"""


@dataclass
class TaskRecord:
    """One labeled task: what was shown and how long Submit -> next task took."""

    task_id: int
    text: str | None
    prediction_shown: bool  # a choice was already checked when the task opened
    # (model_version, score) of the predictions served with it: Label Studio sends those of
    # the project's model_version at that moment (tasks/models.py, get_predictions_for_prelabeling)
    predictions: list[tuple[str, float | None]] = field(default_factory=list)
    choice: str | None = None
    seconds: float | None = None  # Submit click -> next task rendered; None if it never was
    shown_at: float = 0.0  # time.monotonic() once it was shown
    # Within `seconds`, Label Studio's answer times (request sent -> last byte) of the save and
    # of the next-task request, as the browser measured them.
    save_s: float | None = None
    next_s: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class AnnotatorRun:
    """Every task labeled, in the order served, and the figures over them."""

    tasks: list[TaskRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # outside any task: (re)opening the stream

    @property
    def seconds(self) -> list[float]:
        return [t.seconds for t in self.tasks if t.seconds is not None]

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def max_s(self) -> float | None:
        return max(self.seconds, default=None)

    def median_of(self, attribute: str) -> float | None:
        values = [v for t in self.tasks if (v := getattr(t, attribute)) is not None]
        return statistics.median(values) if values else None

    @property
    def failures(self) -> int:
        """Tasks whose save or next task failed (an error, or no next task), and run errors."""
        return len(self.errors) + sum(1 for t in self.tasks if t.errors or t.seconds is None)

    def summary(self) -> str:
        def fmt(s: float | None) -> str:
            return "-" if s is None else f"{s:.2f} s"

        return (
            f"{len(self.tasks)} tasks, submit->next median {fmt(self.median_s)}, "
            f"max {fmt(self.max_s)}, failures {self.failures}"
        )


@dataclass
class QueueWatch:
    """Polls the project's queue version; keeps, per ranking version, when it was first seen
    (monotonic) and its predictions' scores by task."""

    ls_url: str
    token: str
    project_id: int
    seen: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Token {self.token}"}
        with httpx.Client(base_url=self.ls_url, headers=headers, timeout=30) as http:
            while not self._stop.wait(QUEUE_POLL_S):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    project = http.get(f"/api/projects/{self.project_id}").json()
                    version = project.get("model_version") or ""
                    if version.startswith("rank-") and version not in self.seen:
                        self.seen[version] = time.monotonic()
                        self.scores[version] = self._scores(http, version)

    def _scores(self, http: httpx.Client, version: str) -> dict[int, float]:
        rows = http.get("/api/predictions", params={"project": self.project_id}).json()
        return {p["task"]: p["score"] for p in rows if p["model_version"] == version}

    def catch_up(self, versions: set[str]) -> None:
        """Read the rankings served that the polls missed (pushed and replaced between two)."""
        missing = versions - set(self.scores)
        if not missing:
            return
        headers = {"Authorization": f"Token {self.token}"}
        with httpx.Client(base_url=self.ls_url, headers=headers, timeout=30) as http:
            for version in missing:
                self.scores[version] = self._scores(http, version)

    @contextlib.contextmanager
    def running(self) -> Iterator[QueueWatch]:
        thread = threading.Thread(target=self.run, name="queue-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)


@dataclass
class Order:
    """How the tasks served after the first ranking landed relate to the ranking in force."""

    after_first: int = 0  # tasks shown after the first ranked push was seen
    ranked: int = 0  # ... that came with a prediction of a ranking
    in_order: int = 0  # ... that were the lowest score of their ranking not yet labeled
    off: list[str] = field(default_factory=list)


def served_order(run: AnnotatorRun, watch: QueueWatch) -> Order:
    """Each task shown after the first ranking was seen: was it served by a ranking, and was
    it the lowest-scored task of that ranking not labeled yet (Label Studio serves it so)?"""
    watch.catch_up({v for r in run.tasks for v, _ in r.predictions if v.startswith("rank-")})
    order = Order()
    first = min(watch.seen.values(), default=None)
    labeled: set[int] = set()
    for record in run.tasks:
        if first is not None and record.shown_at >= first:
            order.after_first += 1
            _check(record, watch, labeled, order)
        labeled.add(record.task_id)
    return order


def _check(record: TaskRecord, watch: QueueWatch, labeled: set[int], order: Order) -> None:
    ranked = [(v, s) for v, s in record.predictions if v.startswith("rank-")]
    if not ranked:
        order.off.append(f"task {record.task_id}: no ranking prediction")
        return
    order.ranked += 1
    version, score = ranked[-1]
    scores = watch.scores.get(version)
    if not scores:
        order.off.append(f"task {record.task_id}: ranking {version} not read")
        return
    lowest = min((s for task, s in scores.items() if task not in labeled), default=None)
    if score == lowest:
        order.in_order += 1
    else:
        order.off.append(f"task {record.task_id}: score {score} of {version}, lowest {lowest}")


def chromium_path() -> str | None:
    return shutil.which("chromium")


class _Watcher:
    """Collects what went wrong in the page (failed Label Studio requests, script errors) and
    how long Label Studio took to answer the last save and next-task requests."""

    def __init__(self, page: Page, ls_url: str) -> None:
        self.ls_url = ls_url
        self.errors: list[str] = []
        self._failed: list[Response] = []
        self.answered: dict[str, float] = {}  # "save" | "next" -> seconds
        page.on("requestfinished", self._on_finished)
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_request_failed)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._on_console)

    def failed(self, response: Response) -> bool:
        """A Label Studio request that failed: any 5xx, or a 4xx from its API."""
        if not response.url.startswith(self.ls_url):
            return False
        api = response.url[len(self.ls_url) :].startswith("/api/")
        return response.status >= 500 or (api and response.status >= 400)

    def _on_response(self, response: Response) -> None:
        if self.failed(response):
            self._failed.append(response)  # its body is read in take(), not inside the event

    def _on_finished(self, request: Request) -> None:
        kind = None
        if request.method == "POST" and NEXT_TASK in request.url:
            kind = "next"
        elif request.method == "POST" and "/annotations" in request.url:
            kind = "save"
        end = request.timing.get("responseEnd", -1)
        if kind is not None and end >= 0:  # ms from the request's start
            self.answered[kind] = end / 1000

    def _on_request_failed(self, request: Request) -> None:
        # An aborted request is the page's own cancellation (a navigation), not a failure.
        failure = request.failure or ""
        if request.url.startswith(self.ls_url) and "ERR_ABORTED" not in failure:
            self.errors.append(f"{request.method} {request.url}: {failure}")

    def _on_console(self, message: ConsoleMessage) -> None:
        # Failed loads are reported through responses; Label Studio's CSP is report-only.
        text = message.text
        if message.type != "error" or text.startswith("Failed to load resource"):
            return
        if "Content Security Policy" not in text:
            self.errors.append(f"console: {text[:300]}")

    def take(self) -> list[str]:
        """The errors since the last call; a failed response with the start of its body."""
        for response in self._failed:
            try:
                body = _brief(response.text())
            except PlaywrightError:
                body = "(body unavailable)"
            method = response.request.method
            self.errors.append(f"HTTP {response.status} {method} {response.url}: {body}")
        self._failed.clear()
        taken, self.errors = self.errors, []
        return taken


class _Stream:
    """The label stream in one page: open it, submit, and wait for the task served next."""

    def __init__(self, page: Page, ls_url: str, project_id: int) -> None:
        self.page = page
        self.ls_url = ls_url
        self.project_id = project_id
        self.watcher = _Watcher(page, ls_url)

    def login(self, username: str, password: str) -> None:
        self.page.goto(f"{self.ls_url}/user/login/")
        self.page.fill("input[name=email]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(lambda url: "/user/login" not in url)

    def open(self) -> dict[str, Any]:
        """Data Manager -> *Label All Tasks*; the first task served, once it is shown."""
        self.page.goto(f"{self.ls_url}/projects/{self.project_id}/data")
        return self._next(self.page.get_by_role("button", name="Label All Tasks").click)

    def submit(self) -> dict[str, Any]:
        """Click *Submit*; the next task served, once it is shown."""
        return self._next(self.page.locator(SUBMIT).click)

    def _next(self, click: Callable[[], None]) -> dict[str, Any]:
        # The next-task response, or the first failure: a failed save never asks for one.
        def answer(response: Response) -> bool:
            return NEXT_TASK in response.url or self.watcher.failed(response)

        with self.page.expect_response(answer) as info:
            click()
        response = info.value
        if NEXT_TASK not in response.url or response.status != 200:
            raise RuntimeError(f"HTTP {response.status} {response.request.method} {response.url}")
        task: dict[str, Any] = response.json()
        if "id" not in task:  # an empty queue answers 200 with a detail
            raise RuntimeError(f"no next task: {json.dumps(task)[:200]}")
        shown = [task["id"], task_text(task), ERROR_DIALOG]
        state = self.page.wait_for_function(TASK_SHOWN_JS, arg=shown).json_value()
        if state == "error":
            raise RuntimeError("an error dialog instead of the next task")
        return task

    def error_feedback(self) -> list[str]:
        """What the page tells the annotator about a failure: dialog or toast texts."""
        shown = self.page.locator(f"{ERROR_DIALOG}, {ERROR_TOAST}")
        with contextlib.suppress(PlaywrightError):
            shown.first.wait_for(timeout=FEEDBACK_WAIT_MS)
        texts = self.page.locator(
            f"{ERROR_DIALOG}, {ERROR_DETAIL}, {ERROR_TOAST}"
        ).all_inner_texts()
        return [" ".join(text.split()) for text in texts if text.strip()]

    def prediction_shown(self) -> bool:
        return self.page.locator(f"{CHOICES}:checked").count() > 0

    def pick(self, value: str | None) -> str:
        """Check choice `value` (default: the first) unless it is checked already; returns it."""
        if value is None:
            value = self.page.locator(CHOICES).first.get_attribute("name") or ""
        choice = self.page.locator(f"{CHOICES}[name={json.dumps(value)}]")
        if not choice.is_checked():  # a click on a checked choice would clear it
            choice.click()
        return value


def _brief(body: str) -> str:
    """A response body in one short line; an HTML error page reduced to its words."""
    if body.lstrip().startswith("<"):
        body = re.sub(r"(?s)<(script|style)\b.*?</\1>|<[^>]+>", " ", body)
    return " ".join(body.split())[:200]


def task_text(task: dict[str, Any]) -> str | None:
    text = task.get("data", {}).get("text")
    return text if isinstance(text, str) else None


def label_tasks(
    ls_url: str,
    username: str,
    password: str,
    project_id: int,
    n: int,
    choose: Callable[[str | None], str] | None = None,
    screenshots_dir: Path | None = None,
    *,
    timeout_s: float = 60.0,
    screenshot_every: int = 5,
    before_open: Callable[[], None] | None = None,
) -> AnnotatorRun:
    """Label `n` tasks through the browser as an annotator would (see the module docstring).

    `choose(text)` names the choice to click (default: the first); `before_open` runs once
    logged in, just before the label stream opens (e.g. connecting a model: labeling starts
    at the connect). Every wait is bounded by `timeout_s`. After a failure the annotator goes back to the Data Manager and on, as a person
    would; a stream that cannot be (re)opened ends the run. A failed login raises.
    """
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no `chromium` on PATH (apt-get install chromium)")
    ls_url = ls_url.rstrip("/")
    if screenshots_dir is not None:
        screenshots_dir.mkdir(parents=True, exist_ok=True)
    run = AnnotatorRun()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            # Offline: analytics and Sentry would only add DNS waits and console noise.
            context.route(lambda url: not url.startswith(ls_url), lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)  # bounds every wait below
            stream = _Stream(page, ls_url, project_id)
            stream.login(username, password)
            if before_open is not None:
                before_open()
            task: dict[str, Any] | None = None
            while len(run.tasks) < n:
                if task is None:
                    try:
                        task = stream.open()
                    except (PlaywrightError, RuntimeError) as exc:
                        run.errors += [*stream.watcher.take(), f"opening the label stream: {exc}"]
                        break
                    run.errors += stream.watcher.take()
                record = TaskRecord(
                    task["id"],
                    task_text(task),
                    stream.prediction_shown(),
                    [(p["model_version"], p.get("score")) for p in task.get("predictions", [])],
                    shown_at=time.monotonic(),
                )
                run.tasks.append(record)
                if screenshots_dir is not None and len(run.tasks) % screenshot_every == 1:
                    page.screenshot(path=screenshots_dir / f"{len(run.tasks):03d}-{task['id']}.png")
                try:
                    record.choice = stream.pick(choose(record.text) if choose else None)
                    stream.watcher.answered.clear()
                    started = time.perf_counter()
                    task = stream.submit()
                    record.seconds = time.perf_counter() - started
                    record.save_s = stream.watcher.answered.get("save")
                    record.next_s = stream.watcher.answered.get("next")
                except (PlaywrightError, RuntimeError) as exc:
                    record.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                    record.errors += [f"shown: {text}" for text in stream.error_feedback()]
                    task = None
                record.errors += stream.watcher.take()
                if record.errors and screenshots_dir is not None:
                    page.screenshot(path=screenshots_dir / f"{len(run.tasks):03d}-error.png")
        finally:
            browser.close()
    return run
