"""Tables (and one plot per dataset) from ``benchmarks/star_ablation.sh`` output: RESULTS.md's
"STAR measured" section.

    .venv/bin/python benchmarks/star_report.py OUT [--plots DIR]

OUT holds ``<dataset>/<variant>/{results,details}.json``. RIPL is against random *of the same
variant*, paired by seed (± its standard error); ``no-dynamic`` pairs with full STAR's random
(dynamic uncertainty only changes the ranking, so random's runs are the same), ``no-mc``
with ``no-mc-random``, ``no-l2`` with ``no-l2-random``. "Δ AUC vs full STAR" pairs each
variant's ``default`` with full STAR's, seed by seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.core import learning_curves as lc

#: Variant -> (folder, folder of its random runs), in table order.
VARIANTS = {
    "head only (served)": ("served", "served"),
    "full STAR": ("star", "star"),
    "no dynamic uncertainty": ("no-dynamic", "star"),
    "no MC dropout": ("no-mc", "no-mc-random"),
    "no L2 on lora_B": ("no-l2", "no-l2-random"),
}
#: Label counts the per-round table shows.
SHOWN = (10, 50, 100, 140, 150, 160, 200, 250, 280, 290, 300)


def _runs(root: Path, folder: str, strategy: str) -> dict[str, Any] | None:
    details = root / folder / "details.json"
    if not details.exists():
        return None
    entry = json.loads(details.read_text())["strategies"].get(strategy)
    return None if entry is None or "accuracy_per_seed" not in entry else entry


def _paired(aucs: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean AUC difference over seeds and its standard error (seed s against seed s)."""
    d = aucs - other
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def rows(root: Path) -> list[dict[str, Any]]:
    out = []
    reference = _runs(root, "star", "default")
    shown: set[str] = set()  # random runs are listed once, under the first variant using them
    for variant, (folder, random_folder) in VARIANTS.items():
        random = _runs(root, random_folder, "random")
        for strategy in ("random", "default"):
            if strategy == "random" and random_folder in shown:
                continue
            entry = _runs(root, random_folder if strategy == "random" else folder, strategy)
            if entry is None:
                continue
            if strategy == "random":
                shown.add(random_folder)
            acc = np.array(entry["accuracy_per_seed"])
            ece = np.array(entry["ece_per_seed"])
            aucs = acc.mean(axis=1)
            row: dict[str, Any] = {
                "variant": variant,
                "strategy": strategy,
                "labels": entry["labels"],
                "auc": aucs.mean(),
                "auc_std": aucs.std(),
                "final": acc[:, -1].mean(),
                "final_std": acc[:, -1].std(),
                "ece_last": ece[:, -1].mean(),
                "ece_mean": ece.mean(),
                "curve": acc.mean(axis=0),
                "ece_curve": ece.mean(axis=0),
                "promotions": entry.get("promotions", {}),
                "ripl": None,
                "ripl_se": None,
                "vs_star": None,
            }
            if strategy == "default" and reference is not None and folder != "star":
                star_aucs = np.array(reference["accuracy_per_seed"]).mean(axis=1)
                row["vs_star"] = _paired(aucs, star_aucs)
            if strategy == "default" and random is not None:
                random_aucs = np.array(random["accuracy_per_seed"]).mean(axis=1)
                row["ripl"] = 100 * lc.ripl(float(aucs.mean()), float(random_aucs.mean()))
                se = lc.ripl_standard_error(list(aucs), list(random_aucs))
                row["ripl_se"] = None if se is None else 100 * se
            out.append(row)
    return out


def table(found: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | strategy | AUC | RIPL % vs its random (± SE) | final acc. | ECE, last "
        "| ECE, mean | LoRA promoted / rounds | LoRA kept out but better "
        "| Δ AUC vs full STAR (± SE) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
        ripl = "-" if r["ripl"] is None else f"{r['ripl']:+.1f}"
        if r["ripl_se"] is not None:
            ripl += f" ± {r['ripl_se']:.1f}"
        p = r["promotions"]
        lora = f"{p['lora_promoted']} / {p['lora_rounds']}" if "lora_rounds" in p else "-"
        better = str(p["lora_better_kept_out"]) if "lora_rounds" in p else "-"
        vs = "-" if r["vs_star"] is None else f"{r['vs_star'][0]:+.3f} ± {r['vs_star'][1]:.3f}"
        lines.append(
            f"| {r['variant']} | {r['strategy']} | {r['auc']:.3f} ± {r['auc_std']:.3f} | {ripl} "
            f"| {r['final']:.3f} ± {r['final_std']:.3f} | {r['ece_last']:.3f} "
            f"| {r['ece_mean']:.3f} | {lora} | {better} | {vs} |"
        )
    return "\n".join(lines)


def curves(found: list[dict[str, Any]]) -> str:
    labels = found[0]["labels"]
    shown = [i for i, n in enumerate(labels) if n in SHOWN]
    head = " | ".join(str(labels[i]) for i in shown)
    lines = [
        f"| variant, strategy: accuracy / ECE at | {head} |",
        "|---|" + "---|" * len(shown),
    ]
    for r in found:
        cells = " | ".join(f"{r['curve'][i]:.3f} / {r['ece_curve'][i]:.3f}" for i in shown)
        lines.append(f"| {r['variant']}, {r['strategy']} | {cells} |")
    return "\n".join(lines)


def plot(title: str, found: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for r in found:
        style = "--" if r["strategy"] == "random" else "-"
        label = f"{r['variant']}, {r['strategy']}"
        top.plot(r["labels"], r["curve"], style, label=label)
        bottom.plot(r["labels"], r["ece_curve"], style, label=label)
    top.set(title=title, ylabel="test accuracy (served model)")
    bottom.set(xlabel="labels", ylabel="ECE (served model)")
    top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--plots", type=Path, default=None, help="write <dataset>.png here")
    args = parser.parse_args()
    for root in sorted(p for p in args.out.iterdir() if p.is_dir()):
        found = rows(root)
        if not found:
            continue
        print(f"#### {root.name}\n\n{table(found)}\n\n{curves(found)}\n")
        if args.plots is not None:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot(f"{root.name}: STAR ablation", found, args.plots / f"star-{root.name}.png")


if __name__ == "__main__":
    main()
