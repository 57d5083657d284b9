"""Ranking cost: time and peak memory of `rank_pool` on synthetic pools.

    .venv/bin/python benchmarks/rank.py [--sizes 1000,10000,100000] [--labeled 10,300]

Embeddings are random unit vectors (384-d, like all-MiniLM-L6-v2) and probabilities random
Dirichlet draws over 6 classes: ranking cost depends on shapes, not on what the numbers mean.
With 10 labels the default still explores (typicality and k-center on a sample); with 300
it no longer does.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from ls_backend.core.ranking import rank_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--strategies", default="default,margin,k_center")
    parser.add_argument("--labeled", default="10,300", help="labeled items in the pool")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| pool | labeled | strategy | predictions | best time (s) | peak extra memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        x = rng.normal(size=(n, 384)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        probs = rng.dirichlet(np.ones(args.classes), size=n).astype(np.float32)[:, :, None]
        runs = [
            (int(size), strategy, with_probs)
            for size in args.labeled.split(",")
            for strategy in args.strategies.split(",")
            # Cold start (no predictions) does not depend on how many labels there are.
            for with_probs in ((True, False) if strategy == "default" else (True,))
        ]
        for size, strategy, with_probs in runs:
            labeled = rng.choice(n, min(size, n // 2), replace=False)
            p = probs if with_probs else None
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                rank_pool(strategy, p, x, labeled, rng=np.random.default_rng(0))
                times.append(time.perf_counter() - start)
            tracemalloc.start()
            rank_pool(strategy, p, x, labeled, rng=np.random.default_rng(0))
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            shown = "yes" if with_probs else "none (cold start)"
            print(f"| {n:,} | {size} | {strategy} | {shown} | {min(times):.3f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
