"""Classifiers on frozen embeddings (PRepAL): label-name prototypes and the light head.

Both return probabilities ``[N, C, 1]``: they are deterministic, so one sample.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from ls_backend.core.evaluation import stratified_folds
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings, LabelSpace, Probs

#: Cosine similarities between a text and label names are small and close together;
#: this sharpens them into usable probabilities (CLIP-style temperature).
PROTOTYPE_SCALE = 20.0
#: Strengths of the zero-shot prior that cross-validation chooses from (0: none, the plain
#: head). At most half the prototype head's PROTOTYPE_SCALE: with 20 on the grid, reuters_r8
#: lost 5.3 RIPL (its names mislead, the head grows sure, uncertainty sampling never asks).
PRIOR_STRENGTHS = (0.0, 2.5, 5.0, 10.0)
#: Folds of that cross-validation, at most (fewer when there are fewer labels).
PRIOR_FOLDS = 5
#: Labels it runs on, at most (a fixed random subset beyond): 20 fits on 3,000 labels take
#: seconds, and with that many labels the strength hardly matters.
PRIOR_CV_LABELS = 500
#: Probabilities are clipped here in the cross-validated log-loss (a class the fold's head
#: never saw gets 0 from the plain head).
LOG_LOSS_FLOOR = 1e-3


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: NDArray[np.float32] = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class PrototypeHead:
    """Zero-shot: a text belongs to the label whose name it is closest to in embedding space."""

    kind = ModelKind.PROTOTYPE

    def __init__(self, space: LabelSpace, prototypes: Embeddings) -> None:
        if prototypes.shape[0] != space.size:
            raise ValueError("one prototype per label is needed")
        self.space = space
        self.prototypes = prototypes

    def predict_proba(self, embeddings: Embeddings) -> Probs:
        sims = embeddings.astype(np.float64) @ self.prototypes.T.astype(np.float64)
        if self.space.multi_label:
            # A label applies when it is clearly closer than the average label.
            centred = sims - sims.mean(axis=1, keepdims=True)
            return _sigmoid(PROTOTYPE_SCALE * centred)[:, :, None]
        return _softmax(PROTOTYPE_SCALE * sims)[:, :, None]

    def save(self, path: Path) -> None:
        np.save(path / "prototypes.npy", self.prototypes)

    @classmethod
    def load(cls, path: Path, space: LabelSpace) -> PrototypeHead:
        return cls(space, np.load(path / "prototypes.npy"))


class LinearHead:
    """Logistic regression on frozen embeddings: refit from scratch in well under a second.

    Classes without a label yet get probability 0 (single-label), or the prior of
    their labels (multi-label: a label seen only positive or only negative).
    """

    kind = ModelKind.HEAD

    def __init__(
        self,
        space: LabelSpace,
        coef: NDArray[np.float64],
        intercept: NDArray[np.float64],
        classes: NDArray[np.int64],
        prior_strength: float = 0.0,
    ) -> None:
        self.space = space
        self.coef = coef  # [K, D] over the trained classes (single) or all labels (multi)
        self.intercept = intercept  # [K]
        self.classes = classes  # single: trained class indices; multi: unused (all labels)
        self.prior_strength = prior_strength  # recorded with the version; coef includes it

    @classmethod
    def fit(
        cls,
        space: LabelSpace,
        embeddings: Embeddings,
        targets: NDArray[np.int64],
        c: float = 10.0,
        prior: Embeddings | None = None,
        strength: float = 0.0,
    ) -> LinearHead:
        """Targets: class indices ``[N]`` (single-label) or a 0/1 matrix ``[N, C]`` (multi).

        With ``prior`` (label-name embeddings ``[C, D]``) and a ``strength`` above 0, a
        single-label head's weights are ``strength * prior + W`` with W shrunk toward 0: it
        starts as the zero-shot model and gives every class, labeled or not, a probability.
        """
        x = embeddings.astype(np.float64)
        # torch already owns the cores; an unlimited BLAS here oversubscribes them (~30x slower).
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if space.multi_label:
                return cls._fit_multi(space, x, targets, c)
            classes = np.unique(targets)
            if classes.size < 2:
                raise ValueError("the light head needs labels of at least 2 classes")
            if prior is not None and strength > 0:
                coef, intercept = _fit_toward(x, targets, strength * prior.astype(np.float64), c)
                return cls(space, coef, intercept, np.arange(space.size, dtype=np.int64), strength)
            model = LogisticRegression(C=c, max_iter=200)
            model.fit(x, targets)
            coef = model.coef_
            intercept = model.intercept_
            if classes.size == 2:  # sklearn stores one row for two classes
                coef = np.vstack([-coef[0], coef[0]]) / 2
                intercept = np.array([-intercept[0], intercept[0]]) / 2
            return cls(space, coef, intercept, classes.astype(np.int64))

    @classmethod
    def _fit_multi(
        cls, space: LabelSpace, x: NDArray[np.float64], targets: NDArray[np.int64], c: float
    ) -> LinearHead:
        dim = x.shape[1]
        coef = np.zeros((space.size, dim))
        intercept = np.zeros(space.size)
        for label in range(space.size):
            column = targets[:, label]
            if column.min() == column.max():
                # Seen only one way: a constant logit at its smoothed prior.
                prior = (column.sum() + 0.5) / (column.size + 1.0)
                intercept[label] = np.log(prior / (1 - prior))
                continue
            model = LogisticRegression(C=c, max_iter=200)
            model.fit(x, column)
            coef[label] = model.coef_[0]
            intercept[label] = model.intercept_[0]
        return cls(space, coef, intercept, np.arange(space.size, dtype=np.int64))

    def predict_proba(self, embeddings: Embeddings) -> Probs:
        logits = embeddings.astype(np.float64) @ self.coef.T + self.intercept
        if self.space.multi_label:
            return _sigmoid(logits)[:, :, None]
        probs = np.zeros((embeddings.shape[0], self.space.size), dtype=np.float32)
        probs[:, self.classes] = _softmax(logits)
        return probs[:, :, None]

    def save(self, path: Path) -> None:
        np.savez(path / "head.npz", coef=self.coef, intercept=self.intercept, classes=self.classes)

    @classmethod
    def load(cls, path: Path, space: LabelSpace) -> LinearHead:
        with np.load(path / "head.npz") as data:
            return cls(space, data["coef"], data["intercept"], data["classes"])


def _fit_toward(
    x: NDArray[np.float64], y: NDArray[np.int64], offset: NDArray[np.float64], c: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Multinomial logistic regression over every class with weights ``offset + W``, at
    sklearn's objective (C x the log-loss + |W|^2 / 2; the intercepts get the same L2 here,
    so a class without a label keeps its prior instead of drifting to -inf)."""
    k, dim = offset.shape
    base = x @ offset.T
    onehot = np.eye(k)[y]

    def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        w, b = theta[: k * dim].reshape(k, dim), theta[k * dim :]
        logp = log_softmax(base + x @ w.T + b, axis=1)
        err = c * (np.exp(logp) - onehot)
        value = -c * float((logp * onehot).sum()) + 0.5 * float((w * w).sum() + (b * b).sum())
        return value, np.concatenate([(err.T @ x + w).ravel(), err.sum(axis=0) + b])

    theta = minimize(
        loss, np.zeros(k * dim + k), jac=True, method="L-BFGS-B", options={"maxiter": 200}
    ).x
    return offset + theta[: k * dim].reshape(k, dim), theta[k * dim :]


def choose_prior_strength(
    space: LabelSpace,
    embeddings: Embeddings,
    targets: NDArray[np.int64],
    prior: Embeddings,
    c: float = 10.0,
    strengths: tuple[float, ...] = PRIOR_STRENGTHS,
) -> float:
    """The strength with the lowest cross-validated log-loss on these labels: names that do
    not fit the labels make the prior wrong on held-out labels, so it gets a weak strength or
    none. Names that fit the labels asked for but mislead on the items uncertainty sampling
    never asks about (reuters_r8) pass; the grid's cap is what limits them. 0 for
    multi-label, or without a usable fold."""
    if space.multi_label:
        return 0.0
    if len(strengths) == 1:
        return strengths[0]
    if targets.size > PRIOR_CV_LABELS:
        rows = np.sort(np.random.default_rng(0).choice(targets.size, PRIOR_CV_LABELS, False))
        embeddings, targets = embeddings[rows], targets[rows]
    k = min(PRIOR_FOLDS, targets.size)
    folds = [
        (train, test)
        for train, test in stratified_folds(targets.tolist(), k)
        if np.unique(targets[train]).size > 1
    ]
    if not folds:
        return 0.0
    losses = []
    for strength in strengths:
        total = 0.0
        for train, test in folds:
            head = LinearHead.fit(space, embeddings[train], targets[train], c, prior, strength)
            probs = head.predict_proba(embeddings[test])[np.arange(test.size), targets[test], 0]
            total -= float(np.log(np.maximum(probs, LOG_LOSS_FLOOR)).sum())
        losses.append(total)
    return strengths[int(np.argmin(losses))]


def label_prototype_texts(space: LabelSpace) -> list[str]:
    """What to embed for each label name: the name itself, made readable."""
    return [name.replace("_", " ").replace("-", " ") for name in space.labels]


def save_space(space: LabelSpace, path: Path) -> None:
    (path / "labels.json").write_text(
        json.dumps({"labels": list(space.labels), "multi_label": space.multi_label})
    )


def load_space(path: Path) -> LabelSpace:
    data = json.loads((path / "labels.json").read_text())
    return LabelSpace(tuple(data["labels"]), bool(data["multi_label"]))
