"""Rankings and models that were tried against `default` and lost: the comparison in RESULTS.md.

    .venv/bin/python benchmarks/strategies.py [--datasets trec,reuters_r8] [--seeds 10]

Same protocol as `ls-backend bench` in head mode (4,000-item pool, 10 random initial labels,
batches of 10 up to 300, `bench.simulate`); each candidate is either a ranking plugged into
the core's strategy table for the run, or a different model behind the same ranking:

- `badge`: k-means++ seeding on gradient embeddings (Ash et al. 2020), one batch at a time;
- `power_margin`: margin sampled rather than sorted, p ~ margin^2 (Kirsch et al. 2023);
- `novelty_margin`: greedy margin x posterior variance of a ridge model on the embeddings,
  updated after each pick (uncertainty times "not yet spanned by the labels");
- `bagged:<strategy>`: the ranking sees 8 bootstrap heads (so BALD has samples); the test
  predictions are the plain head's, so only the choice of items differs;
- `prior:<strategy>`: a head whose weights shrink towards the label-name prototypes rather
  than towards zero (zero-shot as a prior), for prediction and ranking alike.

RIPL is against plain random with the plain head, paired by seed, ± its standard error.
Embeddings come from the bench's cache (`--cache`); a first run embeds each dataset.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from tqdm import tqdm

from ls_backend.bench import data as bench_data
from ls_backend.bench import simulate as bench
from ls_backend.core import learning_curves as lc
from ls_backend.core import ranking, uncertainty
from ls_backend.core.embeddings import Encoder
from ls_backend.core.heads import LinearHead, label_prototype_texts
from ls_backend.core.labels import Probs
from ls_backend.store.databases import Databases

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BAG = 8


def badge(pool: ranking.Pool, window: int = 10) -> ranking.Order:
    if pool.probs is None:
        return ranking.k_center(pool)
    cand = pool.unlabeled
    p = pool.probs.mean(axis=2)[cand].astype(np.float64)
    grad = p.copy()  # d(cross-entropy)/d(logits) at the predicted label
    grad[np.arange(cand.size), p.argmax(axis=1)] -= 1.0
    x = pool.embeddings[cand].astype(np.float64)
    # <g_i, g_j> = <grad_i, grad_j> <x_i, x_j>: no need to build the C x D gradient vectors.
    norms = (grad * grad).sum(axis=1) * (x * x).sum(axis=1)
    picks = [int(np.argmax(norms))]
    nearest = np.full(cand.size, np.inf)
    while len(picks) < min(window, cand.size):
        j = picks[-1]
        dist = norms + norms[j] - 2 * (grad @ grad[j]) * (x @ x[j])
        nearest = np.minimum(nearest, np.maximum(dist, 0.0))
        nearest[picks] = 0.0
        if nearest.sum() <= 0:
            break
        picks.append(int(pool.rng.choice(cand.size, p=nearest / nearest.sum())))
    return ranking.then_rest(cand[np.array(picks)], ranking.by_uncertainty(pool, "margin"))


def power_margin(pool: ranking.Pool, beta: float = 2.0) -> ranking.Order:
    if pool.probs is None:
        return ranking.random_order(pool)
    scores = uncertainty.margin(pool.probs)[pool.unlabeled]
    # Gumbel-top-k: sampling without replacement in proportion to score ** beta.
    keys = beta * np.log(np.maximum(scores, 1e-12)) + pool.rng.gumbel(size=scores.size)
    return pool.unlabeled[np.argsort(-keys, kind="stable")]


def novelty_margin(pool: ranking.Pool, ridge: float = 1.0) -> ranking.Order:
    if pool.probs is None:
        return ranking.k_center(pool)
    order = ranking.by_uncertainty(pool, "margin")
    x = pool.embeddings.astype(np.float64)
    labeled = x[pool.labeled]
    inverse = np.linalg.inv(ridge * np.eye(x.shape[1]) + labeled.T @ labeled)
    cand = x[pool.unlabeled]
    variance = ((cand @ inverse) * cand).sum(axis=1)
    gain = uncertainty.margin(pool.probs)[pool.unlabeled]
    updates: list[tuple[NDArray[np.float64], float]] = []
    picks: list[int] = []
    for _ in range(min(ranking.HEAD, cand.shape[0])):
        score = gain * variance
        score[picks] = -np.inf
        j = int(np.argmax(score))
        picks.append(j)
        # Sherman-Morrison: the variance after adding item j to the labeled set.
        v = inverse @ cand[j]
        for u, d in updates:
            v -= u * (u @ cand[j]) / d
        denom = 1.0 + variance[j]
        variance = variance - (cand @ v) ** 2 / denom
        updates.append((v, denom))
    return ranking.then_rest(pool.unlabeled[np.array(picks)], order)


RANKINGS: dict[str, ranking.Strategy] = {
    "badge": badge,
    "power_margin": power_margin,
    "novelty_margin": novelty_margin,
}


def bagged_fit(
    data: bench_data.BenchData, labeled: NDArray[np.int64], pool: bool = True
) -> bench.Predicted:
    plain = bench.fit_predict(data, labeled, pool)
    targets = data.pool_y[labeled]
    if plain.pool is None or np.unique(targets).size < 2:
        return plain
    rng = np.random.default_rng(labeled.size)
    members = [plain.pool[:, :, 0]]
    while len(members) < BAG:
        rows = rng.choice(labeled.size, labeled.size)
        if np.unique(targets[rows]).size > 1:
            head = LinearHead.fit(data.space, data.pool_x[labeled[rows]], targets[rows])
            members.append(head.predict_proba(data.pool_x)[:, :, 0])
    return bench.Predicted(plain.test, np.stack(members, axis=2))


def fit_with_prior(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    prototypes: NDArray[np.float64],
    c: float = 10.0,
    scale: float = 20.0,
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """Multinomial logistic regression (all classes, sklearn's C) with weights a * prototype + W:
    the L2 penalty pulls W to 0, so the model starts as the zero-shot one; a, the prior's
    strength, is learnt around ``scale`` (the prototype head's temperature)."""
    n, dim = x.shape
    k = prototypes.shape[0]
    sims = x @ prototypes.T
    onehot = np.eye(k)[y]

    def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        a, w, b = theta[0], theta[1 : 1 + k * dim].reshape(k, dim), theta[1 + k * dim :]
        logp = log_softmax(a * sims + x @ w.T + b, axis=1)
        err = c * (np.exp(logp) - onehot)
        value = -c * (logp * onehot).sum() + 0.5 * (w * w).sum() + 0.005 * (a - scale) ** 2
        grad_a = (err * sims).sum() + 0.01 * (a - scale)
        return value, np.concatenate([[grad_a], (err.T @ x + w).ravel(), err.sum(axis=0)])

    theta = np.zeros(1 + k * dim + k)
    theta[0] = scale
    theta = minimize(loss, theta, jac=True, method="L-BFGS-B", options={"maxiter": 200}).x
    a, w, b = theta[0], theta[1 : 1 + k * dim].reshape(k, dim), theta[1 + k * dim :]
    return lambda z: softmax(z @ (a * prototypes + w).T + b, axis=1)


def prior_fit(prototypes: NDArray[np.float64]) -> bench.Fit:
    def fit(
        data: bench_data.BenchData, labeled: NDArray[np.int64], pool: bool = True
    ) -> bench.Predicted:
        predict = fit_with_prior(
            data.pool_x[labeled].astype(np.float64), data.pool_y[labeled], prototypes
        )
        test = predict(data.test_x.astype(np.float64)).astype(np.float32)[:, :, None]
        probs: Probs | None = None
        if pool:
            probs = predict(data.pool_x.astype(np.float64)).astype(np.float32)[:, :, None]
        return bench.Predicted(test, probs)

    return fit


def split(name: str, part: str) -> Path:
    path = DATA / name / f"{part}.jsonl"
    return path if path.exists() else path.with_suffix(".jsonl.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="trec,movie_review_snippets,sms_spam,reuters_r8")
    parser.add_argument(
        "--candidates",
        default="margin,default,badge,power_margin,"
        "novelty_margin,bagged:margin,bagged:bald,prior:random,prior:margin,"
        "prior:default",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=Path("bench_out/cache/embeddings.sqlite"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/strategies"))
    args = parser.parse_args()
    ranking.STRATEGIES.update(RANKINGS)
    candidates = ["random", *args.candidates.split(",")]
    print("| dataset | candidate | AUC | RIPL % vs random |")
    print("|---|---|---|---|")
    for name in args.datasets.split(","):
        data = bench_data.load_data(split(name, "train"), split(name, "test"), 4000, args.cache)
        encoder = Encoder(cache=Databases.embedding_cache_at(args.cache))
        fits = {
            "bagged": bagged_fit,
            "prior": prior_fit(
                encoder.encode(label_prototype_texts(data.space)).astype(np.float64)
            ),
        }
        aucs: dict[str, list[float]] = {}
        for candidate in tqdm(candidates, desc=name):
            model, _, strategy = candidate.rpartition(":")
            fit = fits[model] if model else bench.fit_predict
            runs = [bench.simulate(data, strategy, s, 10, 10, 300, fit) for s in range(args.seeds)]
            aucs[candidate] = [lc.curve_auc(run.accuracy) for run in runs]
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "aucs.json").write_text(json.dumps(aucs))
        random = aucs["random"]
        for candidate, values in aucs.items():
            ripl = 100 * lc.ripl(float(np.mean(values)), float(np.mean(random)))
            se = lc.ripl_standard_error(values, random)
            spread = "" if se is None else f" ± {100 * se:.1f}"
            print(
                f"| {name} | {candidate} | {np.mean(values):.4f} | {ripl:+.1f}{spread} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
