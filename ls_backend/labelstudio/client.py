"""A thin, retrying adapter over label-studio-sdk 2.x: tasks in, predictions and queue settings out.

The SDK resolves the credential (legacy token or personal access token, which it refreshes) and
builds the auth header; every call goes through `_request`, which adds one retry policy (connection
errors, timeouts, 5xx) and one error type. The bulk reads use the plain REST list endpoint: for
10,000 tasks it is several times faster than the SDK's per-item pydantic pager. No ranking or ML
logic lives here. The API key is never logged, nor kept on this object.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

log = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"

# Data Manager filter: tasks with at least one annotation that is not a skip.
_LABELED_FILTER = {
    "filters": {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:total_annotations",
                "operator": "greater",
                "type": "Number",
                "value": 0,
            }
        ],
    }
}


class Annotation(TypedDict):
    id: int
    result: list[dict[str, Any]]
    completed_by: int | None
    updated_at: str | None


class Prediction(TypedDict):
    id: int
    result: list[dict[str, Any]]
    score: float | None
    model_version: str


class _TaskRequired(TypedDict):
    id: int
    data: dict[str, Any]
    annotations: list[Annotation]  # skipped ones (was_cancelled) are left out


class Task(_TaskRequired, total=False):
    predictions: list[Prediction]  # only when asked for


class PredictionItem(TypedDict):
    """One row of `POST /api/projects/{id}/import/predictions`."""

    task: int
    result: list[dict[str, Any]]
    score: float
    model_version: str


COUNT_FIELDS = ("task_number", "num_tasks_with_annotations", "total_predictions_number")


@dataclass(frozen=True)
class ProjectCounts:
    task_number: int
    num_tasks_with_annotations: int  # tasks with a non-skip, non-ground-truth annotation
    total_predictions_number: int


class LabelStudioError(RuntimeError):
    """A Label Studio call failed for good (not retried, or retries exhausted)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class IncompleteRead(LabelStudioError):
    """A paged read stopped before its last page (an empty or repeated page)."""


class LabelStudioAuthError(LabelStudioError):
    """401: the API key is wrong, expired, or a legacy token with legacy tokens disabled."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits min(base * 2**n, cap) * U(0.5, 1)."""

    attempts: int = 5  # total tries, the first included
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2.0**attempt, self.max_backoff_s) * random.uniform(0.5, 1.0)


def _is_retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class LabelStudioClient:
    """Label Studio calls the backend needs, each one retried on transient failures."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        try:
            # max_retries=0: the SDK's own retries would multiply ours.
            self.sdk: LabelStudio = LabelStudio(  # type: ignore[no-untyped-call]
                base_url=self.url, api_key=api_key, timeout=timeout_s, max_retries=0
            )
        except ApiError as exc:  # an expired personal access token fails here already
            raise LabelStudioAuthError(
                f"Label Studio API key rejected before any call ({exc.status_code}): "
                "the personal access token has expired; create a new one",
                status_code=exc.status_code,
            ) from None

    @classmethod
    def from_settings(cls, settings: Any) -> LabelStudioClient:
        """From `ls_backend.settings.Settings` (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)."""
        if not settings.sync_configured:
            raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set")
        return cls(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    # --- transport ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One REST call with retries; returns the decoded JSON body (None when empty)."""
        # The SDK's transport, for its auth headers and PAT refresh (its retries are off).
        http = self.sdk._client_wrapper.httpx_client
        where = f"{method} {self.url}/{path}"
        for attempt in range(self.retry.attempts):
            last_try = attempt == self.retry.attempts - 1
            try:
                response: httpx.Response = http.request(
                    path,
                    method=method,
                    params=params,
                    json=json_body,
                    request_options=RequestOptions(
                        max_retries=0, timeout=timeout_s or self.timeout_s
                    ),
                )
            except (httpx.TransportError, ApiError) as exc:
                if isinstance(exc, ApiError):  # raised by the PAT refresh inside the SDK
                    if exc.status_code == 401:
                        raise self._auth_error(where) from None
                    if exc.status_code is not None and not _is_retryable_status(exc.status_code):
                        raise LabelStudioError(
                            f"{where}: {exc.status_code}", status_code=exc.status_code
                        ) from None
                problem = f"{type(exc).__name__}: {exc}"
                if last_try:
                    raise LabelStudioError(
                        f"{where} failed after {self.retry.attempts} tries: {problem}"
                    ) from exc
            else:
                status = response.status_code
                if status < 400:
                    return response.json() if response.content else None
                if status == 401:
                    raise self._auth_error(where)
                body = response.text[:300]
                if not _is_retryable_status(status) or last_try:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise LabelStudioError(
                        f"{where} -> {status}{tries}: {body}", status_code=status
                    )
                problem = f"{status}: {body}"
            pause = self.retry.delay(attempt)
            log.warning(
                "Label Studio %s failed (%s); retry %d/%d in %.2f s",
                where,
                problem,
                attempt + 1,
                self.retry.attempts - 1,
                pause,
            )
            time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _auth_error(self, where: str) -> LabelStudioAuthError:
        message = (
            f"Label Studio rejected the API key (401) on {where}: check LABEL_STUDIO_API_KEY. "
            "A legacy token also needs legacy tokens enabled for the organization; "
            "a personal access token must be unexpired."
        )
        log.error(message)
        return LabelStudioAuthError(message, status_code=401)

    def close(self) -> None:
        self.sdk._client_wrapper.httpx_client.httpx_client.close()

    # --- reads -------------------------------------------------------------------------------

    def get_project(self, project_id: int) -> dict[str, Any]:
        """The project as Label Studio returns it (label_config, sampling, model_version, ...)."""
        project: dict[str, Any] = self._request("GET", f"api/projects/{project_id}/")
        return project

    def counts(self, project_id: int) -> ProjectCounts:
        """Label Studio's own counters for the project (only these: the rest is costly)."""
        body = self._request(
            "GET", f"api/projects/{project_id}/", params={"include": ",".join(COUNT_FIELDS)}
        )
        return ProjectCounts(**{name: int(body.get(name) or 0) for name in COUNT_FIELDS})

    def iter_tasks(
        self,
        project_id: int,
        *,
        page_size: int = 1000,
        include_predictions: bool = False,
        only_labeled: bool = False,
        task_ids: Sequence[int] | None = None,
        each_page: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> Iterator[Task]:
        """Every task of the project (or those of ``task_ids``), in id order, page by page;
        each page's request runs inside ``each_page()`` (a turn of background work).

        Pages are read by number, so a task imported mid-read may shift a page; ids already
        yielded are skipped, and a later sync picks up anything missed. A page that comes
        back empty before ``total`` is reached, or with no task not already read (a Label
        Studio that ignores ``page``), ends the read with ``IncompleteRead``: a caller must
        not take what it got for every task.
        """
        nested = "annotations,predictions" if include_predictions else "annotations"
        params: dict[str, Any] = {
            "project": project_id,
            "fields": "all",
            "page_size": page_size,
            # Sparse fields (REST_FLEX_FIELDS): ~15x faster than the full Data Manager rows,
            # which compute per-annotation extras we never read.
            "include": f"id,data,{nested}",
            "expand": nested,
        }
        if only_labeled:
            params["query"] = json.dumps(_LABELED_FILTER)
        elif task_ids is not None:
            if not task_ids:
                return
            selected = {"all": False, "included": [int(t) for t in task_ids]}
            params["query"] = json.dumps({"selectedItems": selected})
        seen: set[int] = set()
        page = 1
        while True:
            with each_page() if each_page is not None else nullcontext():
                body = self._request("GET", "api/tasks/", params={**params, "page": page}) or {}
            raw_tasks = body.get("tasks") or []
            total = int(body.get("total") or 0)
            new = [raw for raw in raw_tasks if raw["id"] not in seen]
            if not new and (raw_tasks or (page - 1) * page_size < total):
                what = "the same tasks again" if raw_tasks else "no task"
                raise IncompleteRead(
                    f"Label Studio returned {what} on page {page} of project {project_id}'s "
                    f"tasks ({len(seen)} of {total} read): the read stopped there"
                )
            for raw in new:
                seen.add(raw["id"])
                yield _light_task(raw, include_predictions)
            if len(raw_tasks) < page_size or page * page_size >= total:
                return
            page += 1

    def labeled_tasks(self, project_id: int, *, page_size: int = 1000) -> Iterator[Task]:
        """Tasks with at least one annotation that is not a skip (was_cancelled), read lazily
        (``IncompleteRead`` as ``iter_tasks``)."""
        tasks = self.iter_tasks(project_id, page_size=page_size, only_labeled=True)
        return (task for task in tasks if task["annotations"])

    # --- writes ------------------------------------------------------------------------------

    def import_predictions(
        self, project_id: int, items: Sequence[PredictionItem], *, chunk_size: int = 5000
    ) -> int:
        """Bulk-create predictions (one POST per chunk); returns how many Label Studio created.

        Label Studio *silently drops* (201, smaller `created`) any item that fails its checks:
        a score outside [0, 1], or a result that does not fit the label config. Scores are
        checked here; a shortfall is logged. The bulk endpoint also drops `cluster` and
        `mislabeling`; extra keys inside result items stay. A chunk retried after a timeout
        may be stored twice; duplicates of one version and score leave the queue order as is.
        """
        bad = [item["task"] for item in items if not 0.0 <= float(item["score"]) <= 1.0]
        if bad:
            raise ValueError(
                f"prediction scores must lie in [0, 1] (Label Studio drops the others); "
                f"tasks {bad[:10]}{'...' if len(bad) > 10 else ''}"
            )
        created = 0
        for start in range(0, len(items), chunk_size):
            chunk = list(items[start : start + chunk_size])
            body = self._request(
                "POST",
                f"api/projects/{project_id}/import/predictions",
                json_body=chunk,
                timeout_s=max(self.timeout_s, 0.01 * len(chunk)),  # ~1 ms per row on SQLite
            )
            done = int((body or {}).get("created", 0))
            if done < len(chunk):
                log.warning(
                    "Label Studio stored %d of %d predictions for project %s: the rest failed "
                    "its validation (does each result match the label config?)",
                    done,
                    len(chunk),
                    project_id,
                )
            created += done
        return created

    def create_prediction(self, item: PredictionItem) -> int:
        """Create one prediction and return its id: a short write whatever the project's size
        (the bulk import refreshes the counters of every task of the project: 3.3 s at
        100,000 tasks)."""
        if not 0.0 <= float(item["score"]) <= 1.0:
            raise ValueError(f"prediction scores must lie in [0, 1]; task {item['task']}")
        return int(self._request("POST", "api/predictions/", json_body=dict(item))["id"])

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete one prediction: a write of a few milliseconds (Label Studio updates the
        task's counter per prediction, so a bulk delete of thousands holds SQLite for
        seconds and fails annotators' saves)."""
        try:
            self._request("DELETE", f"api/predictions/{prediction_id}/")
        except LabelStudioError as exc:
            if exc.status_code != 404:  # already gone: what we wanted
                raise

    def set_queue(self, project_id: int, model_version: str) -> None:
        """Serve tasks by the scores of `model_version`'s predictions, lowest first (5.1)."""
        self._request(
            "PATCH",
            f"api/projects/{project_id}/",
            json_body={"sampling": UNCERTAINTY_SAMPLING, "model_version": model_version},
        )

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """The ML backends connected to the project (``url``, ``title``, ``state``, ...)."""
        return list(self._request("GET", "api/ml/", params={"project": project_id}) or [])

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks (``url``, ``headers``, ``is_active``, ...). Label Studio
        shows their headers to any of its users."""
        return list(self._request("GET", "api/webhooks/", params={"project": project_id}) or [])

    def set_webhook_headers(self, webhook_id: int, headers: dict[str, str]) -> None:
        """Replace a webhook's headers (Label Studio sends each event with these only)."""
        self._request("PATCH", f"api/webhooks/{webhook_id}/", json_body={"headers": headers})

    def ensure_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str,
        *,
        basic_auth: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Connect the backend at `url` to the project, unless one with that url already is.

        Label Studio calls the backend's /health and /setup during this request, so the backend
        must be up and answering.
        """
        wanted = url.rstrip("/")
        existing = self._request("GET", "api/ml/", params={"project": project_id}) or []
        for backend in existing:
            if str(backend.get("url", "")).rstrip("/") == wanted:
                return dict(backend)
        payload: dict[str, Any] = {"project": project_id, "url": wanted, "title": title}
        if basic_auth is not None:
            payload.update(
                auth_method="BASIC_AUTH",
                basic_auth_user=basic_auth[0],
                basic_auth_pass=basic_auth[1],
            )
        created: dict[str, Any] = self._request("POST", "api/ml/", json_body=payload)
        return created


def _light_task(raw: dict[str, Any], include_predictions: bool) -> Task:
    task: Task = {
        "id": int(raw["id"]),
        "data": raw.get("data") or {},
        "annotations": [
            {
                "id": int(a["id"]),
                "result": a.get("result") or [],
                "completed_by": _user_id(a.get("completed_by")),
                "updated_at": a.get("updated_at"),
            }
            for a in raw.get("annotations") or []
            if not a.get("was_cancelled")
        ],
    }
    if include_predictions:
        task["predictions"] = [
            {
                "id": int(p["id"]),
                "result": p.get("result") or [],
                "score": p.get("score"),
                "model_version": str(p.get("model_version") or ""),
            }
            for p in raw.get("predictions") or []
        ]
    return task


def _user_id(value: Any) -> int | None:
    if isinstance(value, dict):  # some serializers expand the user
        value = value.get("id")
    return int(value) if value is not None else None
