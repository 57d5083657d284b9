"""What the admin's dashboard shows, computed: the learning curve of a project's versions, the
stopping signal, the classes the model confuses and the annotations it doubts.

Pure and typed: version records, predictions and embeddings in, plain dataclasses out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.evaluation import stratified_folds
from ls_backend.core.heads import LinearHead
from ls_backend.core.labels import Embeddings, LabelSpace

#: Stabilizing predictions (Bloodgood & Vijay-Shanker 2009, "A method for stopping active
#: learning based on stabilizing predictions and the need for user-adjustable stopping"):
#: stop once the mean Cohen's kappa between successive models' predictions on a fixed stop
#: set, over the last STOP_WINDOW pairs, is at least STOP_KAPPA (the paper's values).
STOP_KAPPA = 0.99
STOP_WINDOW = 3
#: Folds of the out-of-fold predictions that judge each annotation.
OOF_FOLDS = 5
#: The fewest labels between two versions whose accuracies make a gain per 100 labels.
GAIN_SPAN = 50


@dataclass(frozen=True)
class CurvePoint:
    """One saved version: what it trained on and how it scored (None: zero-shot, unscored)."""

    version: str
    kind: str
    labels: int
    accuracy: float | None
    macro_f1: float | None
    evaluation: str | None  # "held-out" or "k-fold"
    promoted: bool
    serving: bool
    reason: str


def learning_curve(infos: Sequence[Mapping[str, Any]], serving: str | None) -> list[CurvePoint]:
    """Every version's figures from its ``info.json`` record, in version order."""
    points = []
    for info in infos:
        metrics = info.get("metrics") or {}
        points.append(
            CurvePoint(
                version=str(info["version"]),
                kind=str(info.get("kind", "")),
                labels=int(info.get("labels", 0)),
                # A span project's headline figure is entity F1, in accuracy's place; one of
                # several controls', the mean of theirs (``core.composite``).
                accuracy=metrics.get("accuracy", metrics.get("entity_f1", metrics.get("score"))),
                macro_f1=metrics.get("macro_f1"),
                evaluation=info.get("evaluation"),
                promoted=bool(info.get("promoted")),
                serving=info["version"] == serving,
                reason=str(info.get("reason", "")),
            )
        )
    return points


def gain_per_100_labels(points: Sequence[CurvePoint], span: int = GAIN_SPAN) -> float | None:
    """Held-out accuracy gained per 100 labels between the latest scored version and the
    newest one of its kind trained on at least ``span`` fewer labels (k-fold figures and
    other kinds do not compare). None until the history spans that many labels: each
    version is scored on its own held-out labels, so over a few labels the difference is
    noise, and scaled to 100 labels it reads as a trend."""
    scored = [p for p in points if p.accuracy is not None and p.evaluation == "held-out"]
    if not scored:
        return None
    last = scored[-1]
    earlier = [p for p in scored if p.kind == last.kind and p.labels <= last.labels - span]
    if not earlier:
        return None
    first = earlier[-1]
    assert first.accuracy is not None and last.accuracy is not None
    return 100 * (last.accuracy - first.accuracy) / (last.labels - first.labels)


def cohen_kappa(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    """Agreement of two labelings beyond chance; 1.0 when both give one same answer throughout."""
    a, b = np.ravel(a), np.ravel(b)
    if a.size != b.size or a.size == 0:
        raise ValueError("kappa needs two labelings of the same, non-empty set")
    observed = float(np.mean(a == b))
    values = np.union1d(a, b)
    expected = float(sum(np.mean(a == v) * np.mean(b == v) for v in values))
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class StopSignal:
    """Kappa between each version and the one before it on the stop set, and the rule's verdict."""

    versions: list[str]
    labels: list[int]
    kappas: list[float]  # kappas[i]: versions[i + 1] against versions[i]
    mean_recent: float | None  # mean of the last STOP_WINDOW kappas
    stop: bool
    stop_labels: int | None  # labels of the version at which the rule first said stop
    threshold: float = STOP_KAPPA
    window: int = STOP_WINDOW


def first_stop(
    kappas: Sequence[float], threshold: float = STOP_KAPPA, window: int = STOP_WINDOW
) -> int | None:
    """Index into ``kappas`` where the mean of the last ``window`` first reaches ``threshold``."""
    for end in range(window, len(kappas) + 1):
        if float(np.mean(kappas[end - window : end])) >= threshold:
            return end - 1
    return None


def stabilizing_predictions(
    versions: Sequence[str],
    labels: Sequence[int],
    predictions: Sequence[NDArray[np.int64]],
    threshold: float = STOP_KAPPA,
    window: int = STOP_WINDOW,
) -> StopSignal:
    """The stopping signal over successive models' decisions on one stop set (``[N]`` class
    indices, or ``[N, C]`` 0/1 for multi-label: kappa over every label decision)."""
    kappas = [cohen_kappa(predictions[i - 1], predictions[i]) for i in range(1, len(predictions))]
    recent = float(np.mean(kappas[-window:])) if len(kappas) >= window else None
    at = first_stop(kappas, threshold, window)
    return StopSignal(
        versions=list(versions),
        labels=[int(n) for n in labels],
        kappas=kappas,
        mean_recent=recent,
        stop=recent is not None and recent >= threshold,
        stop_labels=None if at is None else int(labels[at + 1]),
        threshold=threshold,
        window=window,
    )


def label_distribution(space: LabelSpace, targets: NDArray[np.int64]) -> dict[str, int]:
    """Labels given per class (multi-label: annotations carrying each label)."""
    counts = (
        targets.sum(axis=0) if space.multi_label else np.bincount(targets, minlength=space.size)
    )
    return {name: int(n) for name, n in zip(space.labels, counts, strict=True)}


def out_of_fold_probs(
    space: LabelSpace,
    embeddings: Embeddings,
    targets: NDArray[np.int64],
    c: float,
    folds: int = OOF_FOLDS,
) -> NDArray[np.float64]:
    """``[N, C]`` probabilities of each labeled item from the light head fitted on the other
    folds (stratified), so no item is judged by a model that saw its own label."""
    if space.multi_label:
        raise ValueError("out-of-fold judging is for single-label projects")
    if np.unique(targets).size < 2:
        raise ValueError("out-of-fold judging needs labels of at least 2 classes")
    probs = np.zeros((targets.size, space.size))
    for train, test in stratified_folds([int(t) for t in targets], min(folds, targets.size)):
        if np.unique(targets[train]).size < 2:
            counts = np.bincount(targets[train], minlength=space.size)
            # A fold with no training item (the first few labels) judges by the uniform prior.
            probs[test] = counts / train.size if train.size else 1.0 / space.size
            continue
        head = LinearHead.fit(space, embeddings[train], targets[train], c=c)
        probs[test] = head.predict_proba(embeddings[test])[:, :, 0]
    return probs


@dataclass(frozen=True)
class Confusion:
    given: str
    predicted: str
    count: int


def confusions(
    space: LabelSpace, targets: NDArray[np.int64], probs: NDArray[np.float64], top: int = 10
) -> list[Confusion]:
    """The most frequent (given label, predicted label) pairs that disagree."""
    predicted = probs.argmax(axis=1)
    pairs = np.zeros((space.size, space.size), dtype=np.int64)
    np.add.at(pairs, (targets, predicted), 1)
    np.fill_diagonal(pairs, 0)
    flat = np.argsort(-pairs, axis=None, kind="stable")[:top]
    found = []
    for cell in flat:
        given, guess = divmod(int(cell), space.size)
        if pairs[given, guess] == 0:
            break
        found.append(Confusion(space.labels[given], space.labels[guess], int(pairs[given, guess])))
    return found


@dataclass(frozen=True)
class Suspect:
    """An annotation the out-of-fold model finds unlikely: ``index`` into the labeled items."""

    index: int
    given: str
    predicted: str
    quality: float  # cleanlab's label quality: the probability of the given label
    issue: bool  # cleanlab's confident learning flags it as a label issue


def suspected_mislabels(
    space: LabelSpace, targets: NDArray[np.int64], probs: NDArray[np.float64], top: int = 20
) -> list[Suspect]:
    """The ``top`` annotations with the lowest label quality, worst first (cleanlab)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # cleanlab wants rows that sum to 1 and every class seen; unseen classes keep a tiny mass.
    smoothed = probs + 1e-6
    smoothed /= smoothed.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(targets, smoothed, method="self_confidence")
    present = np.unique(targets)
    flagged: set[int] = set()
    if present.size >= 2 and all(np.sum(targets == k) >= 2 for k in present):
        # Confident learning needs each class counted; map to the classes present.
        sub = smoothed[:, present] / smoothed[:, present].sum(axis=1, keepdims=True)
        # n_jobs=1: its default forks a multiprocessing pool, and a process forked from a
        # multi-threaded server can hang forever on a lock another thread held (it did).
        issues = find_label_issues(np.searchsorted(present, targets), sub, n_jobs=1)
        flagged = {int(i) for i in np.flatnonzero(issues)}
    order = np.argsort(quality, kind="stable")[:top]
    guesses = probs.argmax(axis=1)
    return [
        Suspect(
            index=int(i),
            given=space.labels[int(targets[i])],
            predicted=space.labels[int(guesses[i])],
            quality=float(quality[i]),
            issue=int(i) in flagged,
        )
        for i in order
    ]
