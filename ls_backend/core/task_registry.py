"""The task kinds the backend serves, by ``TaskKind``: a new kind is a module implementing
``core.tasks.Task`` and one line here (its Label Studio half registers in ``labelstudio``)."""

from __future__ import annotations

from ls_backend.core.classification import CLASSIFICATION
from ls_backend.core.composite import Composite
from ls_backend.core.spans.task import SPANS
from ls_backend.core.tasks import Task, TaskKind

TASKS: dict[TaskKind, Task] = {CLASSIFICATION.kind: CLASSIFICATION, SPANS.kind: SPANS}
#: Several controls on one text: a part of one of the kinds above per control.
TASKS[TaskKind.MULTI] = Composite(dict(TASKS))


def task_of(kind: TaskKind | str) -> Task:
    try:
        return TASKS[TaskKind(kind)]
    except (KeyError, ValueError):
        known = [k.value for k in TASKS]
        raise ValueError(f"unknown task kind {kind!r}; known: {known}") from None
