"""The bench's figures: learning-curve AUC, RIPL against random with its paired standard error,
labels to a target, the stopping rule's verdict, promotions; as ``results.json``,
``details.json`` and a markdown table (``curves`` draws the plot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.bench.curves import plot
from ls_backend.bench.simulate import Run
from ls_backend.core import learning_curves as lc
from ls_backend.core import stopping
from ls_backend.core.report import STOP_KAPPA, STOP_WINDOW, first_stop

#: What the server ranks with unless STRATEGY says otherwise (Settings.strategy's default).
DEFAULT_STRATEGY = "default"
#: Share of the full-pool ("ceiling") accuracy that ``labels_to_target`` counts labels to.
TARGET_SHARE = 0.95


def summarise(
    runs: dict[str, list[Run]],
    full_pool_accuracy: float,
    budget: int,
    model: str = "head",
    classes: int | None = None,
    metric: str = "accuracy",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, details). results: per strategy AUC (mean, std over seeds), RIPL in % and its
    standard error over paired seeds, labels to reach 95% of the ceiling, savings against
    random there, and the mean curve. details: std bands, macro-F1, labels to match random's
    final accuracy, time per round."""
    # ``metric``: what the curves measure (entity F1 for spans) under the same keys.
    out: dict[str, Any] = {
        "default": DEFAULT_STRATEGY,
        "model": model,
        "metric": metric,
        "strategies": {},
    }
    details: dict[str, Any] = {
        "ceiling": full_pool_accuracy,
        "model": model,
        "metric": metric,
        "strategies": {},
    }
    target = TARGET_SHARE * full_pool_accuracy
    aucs = {name: [lc.curve_auc(r.accuracy) for r in rs] for name, rs in runs.items()}
    random_auc = float(np.mean(aucs["random"])) if "random" in runs else None
    labels = runs[next(iter(runs))][0].labels
    curves = {name: np.mean([r.accuracy for r in rs], axis=0) for name, rs in runs.items()}
    to_target = {name: lc.labels_to_reach(labels, c, target) for name, c in curves.items()}
    random_final = float(curves["random"][-1]) if "random" in runs else None
    for name, rs in runs.items():
        auc = float(np.mean(aucs[name]))
        out["strategies"][name] = {
            "auc": auc,
            "auc_std": float(np.std(aucs[name])),
            "ripl": None if random_auc is None else 100 * lc.ripl(auc, random_auc),
            "ripl_se": None
            if random_auc is None
            else _percent(lc.ripl_standard_error(aucs[name], aucs["random"])),
            "labels_to_target": to_target[name],
            "savings": lc.savings(to_target[name], to_target.get("random")),
            "curve": [float(a) for a in curves[name]],
        }
        f1 = np.array([r.macro_f1 for r in rs])
        acc = np.array([r.accuracy for r in rs])
        ece = np.array([r.ece for r in rs])
        details["strategies"][name] = {
            "labels": labels,
            "accuracy_std": acc.std(axis=0).tolist(),
            "macro_f1": f1.mean(axis=0).tolist(),
            "macro_f1_std": f1.std(axis=0).tolist(),
            "ece": ece.mean(axis=0).tolist(),  # of the test probabilities, per round
            "ece_std": ece.std(axis=0).tolist(),
            # Per seed, so runs written apart can be paired (RIPL and its SE across folders).
            "accuracy_per_seed": acc.tolist(),
            "ece_per_seed": ece.tolist(),
            "labels_to_random_final": None
            if random_final is None
            else lc.labels_to_reach(labels, curves[name], random_final),
            "seconds_per_round": float(np.mean([np.mean(r.seconds) for r in rs])),
            "seconds_total": float(np.mean([np.sum(r.seconds) for r in rs])),
        }
        details["strategies"][name]["stop"] = plateau_stop_figures(rs, stopping.POINT, classes)
        details["strategies"][name]["stop_stabilizing"] = stop_figures(rs)
        if any(r.promotions for r in rs):  # summed over seeds
            details["strategies"][name]["promotions"] = {
                key: sum(r.promotions.get(key, 0) for r in rs) for key in rs[0].promotions
            }
    details["budget"] = budget
    details["seeds"] = len(runs[next(iter(runs))])
    return out, details


def stop_figures(runs: Sequence[Run]) -> dict[str, Any]:
    """Where the stabilizing-predictions rule (core.report) says stop, per seed: the labels
    then, and the test accuracy left on the table (accuracy at the budget minus at the stop)."""
    labels, left = [], []
    for run in runs:
        at = first_stop(run.kappas, STOP_KAPPA, STOP_WINDOW)
        if at is not None:  # kappas[i] compares round i + 1 with round i
            labels.append(run.labels[at + 1])
            left.append(run.accuracy[-1] - run.accuracy[at + 1])
    return {
        "stopped_seeds": len(labels),
        "labels": labels,
        "accuracy_left": left,
        "mean_labels": float(np.mean(labels)) if labels else None,
        "mean_accuracy_left": float(np.mean(left)) if left else None,
    }


def within(labels: Sequence[int], accuracy: Sequence[float], point: float) -> int:
    """Labels at which a curve first comes within ``point`` of its accuracy at the budget."""
    return next(n for n, a in zip(labels, accuracy, strict=True) if a >= accuracy[-1] - point)


def plateau_stop_figures(
    runs: Sequence[Run], point: float, classes: int | None = None
) -> dict[str, Any]:
    """Where the plateau signal (core.stopping) first says stop, per seed (the budget where it
    never does): labels then, accuracy left on the table (at the budget minus at the stop),
    labels saved; and where the curve first comes within ``point`` of its budget accuracy,
    per seed and for the mean curve (the goal: stop near there, leaving under ``point``)."""
    labels, left, stopped = [], [], []
    for run in runs:
        at = next((i for i, s in enumerate(run.plateau_stop) if s), len(run.labels) - 1)
        stopped.append(at < len(run.labels) - 1)
        labels.append(run.labels[at])
        left.append(run.accuracy[-1] - run.accuracy[at])
    budget = runs[0].labels[-1]
    curve = np.mean([r.accuracy for r in runs], axis=0).tolist()
    return {
        "rule": stopping.RULE,
        "classes": classes,  # of the label config: the floor of the rule
        "stopped_seeds": sum(stopped),
        "stopped": stopped,
        "labels": labels,
        "accuracy_left": left,
        "labels_saved": [budget - n for n in labels],
        "mean_labels": float(np.mean(labels)),
        "mean_accuracy_left": float(np.mean(left)),
        "mean_labels_saved": float(budget - np.mean(labels)),
        "within_point_labels": within(runs[0].labels, curve, point),
        "within_point_per_seed": [within(r.labels, r.accuracy, point) for r in runs],
        # Per round, for re-deciding without a rerun: the forecast, and the probability that
        # the next label's class is new.
        "gain_per_seed": [r.plateau_gain for r in runs],
        "unseen_per_seed": [r.plateau_unseen for r in runs],
        "counts_per_seed": [r.plateau_counts for r in runs],  # labels per class, per round
    }


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def markdown(title: str, summary: dict[str, Any], details: dict[str, Any]) -> str:
    budget = details["budget"]
    metric = details.get("metric", "accuracy")
    ceiling_of = ": the head on the full pool" if details.get("model") == "lora" else ""
    lines = [
        f"### {title} (ceiling {details['ceiling']:.3f}{ceiling_of})",
        "",
        f"| strategy | AUC | RIPL % (± SE) | final {'acc.' if metric == 'accuracy' else metric} "
        "| final macro-F1 | final ECE | mean ECE "
        "| labels to 95% ceiling | savings vs random | labels to random@budget | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, s in summary["strategies"].items():
        d = details["strategies"][name]
        reach = d["labels_to_random_final"]
        share = "-" if reach is None else f"{reach} ({100 * reach / budget:.0f}%)"
        se = "" if s.get("ripl_se") is None else f" ± {s['ripl_se']:.1f}"
        lines.append(
            f"| {name} | {s['auc']:.3f} ± {s['auc_std']:.3f} | {fmt(s['ripl'], '+.1f')}{se} "
            f"| {s['curve'][-1]:.3f} ± {d['accuracy_std'][-1]:.3f} | {d['macro_f1'][-1]:.3f} "
            f"| {d['ece'][-1]:.3f} | {np.mean(d['ece']):.3f} "
            f"| {fmt(s['labels_to_target'], 'd')} | {fmt(s['savings'], '.0%')} | {share} "
            f"| {d['seconds_per_round']:.2f} |"
        )
    lines += [
        "",
        f"Stabilizing predictions (stop when the mean kappa of the last {STOP_WINDOW} rounds' "
        f"test predictions >= {STOP_KAPPA}):",
        "",
        "| strategy | seeds stopped | labels at the stop | accuracy left on the table |",
        "|---|---|---|---|",
    ]
    seeds = details["seeds"]
    for name in summary["strategies"]:
        stop = details["strategies"][name]["stop_stabilizing"]
        lines.append(
            f"| {name} | {stop['stopped_seeds']} of {seeds} "
            f"| {fmt(stop['mean_labels'], '.0f')} "
            f"| {fmt(stop['mean_accuracy_left'], '+.3f')} |"
        )
    plateaus = {n: d["stop"] for n, d in details["strategies"].items()}
    forecasts = [g for p in plateaus.values() for seed in p["gain_per_seed"] for g in seed]
    if any(g is not None for g in forecasts):  # --model served: the server's plateau signal
        lines += [
            "",
            f"Plateau signal (core.stopping; {next(iter(plateaus.values()))['rule']}); a seed "
            "that never stops counts at the budget; 'within a point': where the mean curve "
            "first comes within a point of its budget accuracy:",
            "",
            "| strategy | seeds stopped | labels at the stop | accuracy left | labels saved "
            "| within a point at | stop / within |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, p in plateaus.items():
            lines.append(
                f"| {name} | {p['stopped_seeds']} of {seeds} | {p['mean_labels']:.0f} "
                f"| {p['mean_accuracy_left']:+.3f} | {p['mean_labels_saved']:.0f} "
                f"| {p['within_point_labels']} "
                f"| {p['mean_labels'] / p['within_point_labels']:.2f}x |"
            )
    tallies = {n: d["promotions"] for n, d in details["strategies"].items() if "promotions" in d}
    if tallies:
        lines += [
            "",
            "Promotions, summed over seeds; worse / better: on the full test split, by more "
            "than 2 standard errors of the paired difference:",
            "",
            "| strategy | lane | rounds | promoted | promoted but worse | kept out but better |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in tallies.items():
            for lane, prefix in (("head", ""), ("lora", "lora_")):
                if f"{prefix}rounds" in t:
                    lines.append(
                        f"| {name} | {lane} | {t[prefix + 'rounds']} | {t[prefix + 'promoted']} "
                        f"| {t[prefix + 'worse_promoted']} | {t[prefix + 'better_kept_out']} |"
                    )
    return "\n".join(lines) + "\n"


Report = tuple[dict[str, Any], dict[str, Any]]  # (results.json, details.json)


def compare(
    head: Report,
    head_runs: dict[str, list[Run]],
    once: dict[str, list[tuple[float, float]]],
    every_round: Report | None,
) -> dict[str, Any]:
    """Per strategy: head in the loop then LoRA once vs LoRA every round. Final test accuracy
    (mean, std over seeds) and wall seconds of the whole loop per seed (the once-fit included)."""
    table: dict[str, Any] = {}
    for name, results in once.items():
        accuracy = np.array([a for a, _ in results])
        seconds = [sum(r.seconds) + s for r, (_, s) in zip(head_runs[name], results, strict=True)]
        row: dict[str, Any] = {
            "head_final_accuracy": head[0]["strategies"][name]["curve"][-1],
            "prepal_then_lora": {
                "final_accuracy": float(accuracy.mean()),
                "final_accuracy_std": float(accuracy.std()),
                "seconds": float(np.mean(seconds)),
                "lora_seconds": float(np.mean([s for _, s in results])),
            },
            "lora_every_round": None,
        }
        if every_round is not None and name in every_round[0]["strategies"]:
            s, d = every_round[0]["strategies"][name], every_round[1]["strategies"][name]
            row["lora_every_round"] = {
                "final_accuracy": s["curve"][-1],
                "final_accuracy_std": d["accuracy_std"][-1],
                "auc": s["auc"],
                "seconds": d["seconds_total"],
            }
        table[name] = row
    return table


def comparison_markdown(table: dict[str, Any], budget: int, seeds: int) -> str:
    lines = [
        f"### LoRA every round vs head in the loop, LoRA once ({budget} labels, {seeds} seeds)",
        "",
        "| strategy | head final acc. | LoRA every round: final acc. | time (s) "
        "| head loop + LoRA once: final acc. | time (s) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        once, every = row["prepal_then_lora"], row["lora_every_round"]
        if every is None:
            every_cells, speedup = "- | -", "-"
        else:
            every_cells = (
                f"{every['final_accuracy']:.3f} ± {every['final_accuracy_std']:.3f} "
                f"| {every['seconds']:.0f}"
            )
            speedup = f"{every['seconds'] / once['seconds']:.1f}x"
        lines.append(
            f"| {name} | {row['head_final_accuracy']:.3f} | {every_cells} "
            f"| {once['final_accuracy']:.3f} ± {once['final_accuracy_std']:.3f} "
            f"| {once['seconds']:.0f} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path, title: str, report: Report, extra_markdown: str = "") -> None:
    summary, details = report
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    (out / "results.md").write_text(markdown(title, summary, details) + extra_markdown)
    plot(title, summary, details, out / "curves.png")


def read_report(folder: Path, budget: int) -> Report:
    """A ``--model lora`` output folder, for comparison."""
    summary = json.loads((folder / "results.json").read_text())
    details = json.loads((folder / "details.json").read_text())
    if summary.get("model") != "lora" or details["budget"] != budget:
        raise ValueError(f"{folder} is not a --model lora run with budget {budget}")
    return summary, details
