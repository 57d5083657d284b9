"""The bench's plot: learning curves with bands over seeds, and the full-pool ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot(title: str, summary: dict[str, Any], details: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary["strategies"].items():
        x = np.array(details["strategies"][name]["labels"])
        mean, std = np.array(s["curve"]), np.array(details["strategies"][name]["accuracy_std"])
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.axhline(details["ceiling"], color="grey", linestyle=":", label="full pool")
    metric = details.get("metric", "accuracy").replace("_", " ")
    ax.set(title=title, xlabel="labels", ylabel=f"test {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
