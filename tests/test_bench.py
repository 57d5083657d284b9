import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from ls_backend import bench
from ls_backend.core.labels import LabelSpace


def toy_data(seed: int = 0) -> bench.BenchData:
    """Three separable classes in 16-d, 90 pool items and 30 test items."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = np.eye(16)[y] * 3 + rng.normal(size=(n, 16))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    pool_x, pool_y = split(90)
    test_x, test_y = split(30)
    return bench.BenchData(LabelSpace(("a", "b", "c")), pool_x, pool_y, test_x, test_y)


def test_simulate_labels_batch_by_batch_up_to_the_budget() -> None:
    run = bench.simulate(toy_data(), "default", seed=0, init=6, batch=5, budget=31)
    assert run.labels == [6, 11, 16, 21, 26, 31]
    assert len(run.accuracy) == len(run.macro_f1) == len(run.seconds) == 6
    assert run.accuracy[-1] > 0.9  # separable classes: the head learns them


def test_every_strategy_starts_from_the_same_labels_for_a_seed() -> None:
    data = toy_data()
    first = [bench.simulate(data, s, 3, 6, 5, 6).accuracy[0] for s in ("random", "margin")]
    assert first[0] == first[1]


def test_one_seen_class_predicts_that_class() -> None:
    data = toy_data()
    probs, pred = bench.fit_predict(data, np.flatnonzero(data.pool_y == 1)[:4])
    assert (pred == 1).all()
    assert probs.shape == (90, 3, 1)


def test_summary_has_the_promised_shape() -> None:
    runs = {
        "random": [bench.Run([10, 20], [0.5, 0.6], [0.4, 0.5], [0.1, 0.1])],
        "default": [bench.Run([10, 20], [0.5, 0.8], [0.4, 0.7], [0.1, 0.1])],
    }
    results, details = bench.summarise(runs, full_pool_accuracy=0.8, budget=20)
    assert results["default"] == "default"
    entry = results["strategies"]["default"]
    assert set(entry) == {"auc", "auc_std", "ripl", "labels_to_target", "savings", "curve"}
    assert entry["auc"] == pytest.approx(0.65)
    assert entry["ripl"] == pytest.approx(100 * (0.65 - 0.55) / 0.45)
    assert entry["labels_to_target"] == 20  # 0.95 * 0.8 = 0.76
    assert results["strategies"]["random"]["labels_to_target"] is None
    assert details["strategies"]["default"]["labels_to_random_final"] == 20


def test_bench_command_writes_results_table_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "load_data", lambda *args, **kwargs: toy_data())
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text('{"text": "x", "label": "a"}\n')
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "bench",
            "--train",
            str(tmp_path / "train.jsonl"),
            "--test",
            str(tmp_path / "test.jsonl"),
            "--out",
            str(out),
            "--init",
            "6",
            "--batch",
            "6",
            "--budget",
            "30",
            "--seeds",
            "2",
        ]
    )
    args.func(args)
    results = json.loads((out / "results.json").read_text())
    assert set(results["strategies"]) == {"random", "margin", "default"}
    assert len(results["strategies"]["default"]["curve"]) == 5
    assert "| default |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0


def test_lora_modes_are_accepted_but_refused_clearly_until_wired(tmp_path: Path) -> None:
    with pytest.raises((RuntimeError, NotImplementedError), match="lora"):
        bench.run_bench(tmp_path / "a", tmp_path / "b", tmp_path / "out", model="lora")


def test_reads_plain_and_gzipped_jsonl(tmp_path: Path) -> None:
    import gzip

    line = '{"text": "hello", "label": 1}\n'
    (tmp_path / "a.jsonl").write_text(line)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(line)
    for name in ("a.jsonl", "b.jsonl.gz"):
        assert bench.read_jsonl(tmp_path / name) == (["hello"], ["1"])
