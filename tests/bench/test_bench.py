import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ls_backend.bench import cli, report, simulate
from ls_backend.bench import data as bench_data
from ls_backend.core.labels import LabelSpace


def toy_data(seed: int = 0) -> bench_data.BenchData:
    """Three separable classes in 16-d, 90 pool items and 30 test items."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = np.eye(16)[y] * 3 + rng.normal(size=(n, 16))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    pool_x, pool_y = split(90)
    test_x, test_y = split(30)
    return bench_data.BenchData(LabelSpace(("a", "b", "c")), pool_x, pool_y, test_x, test_y)


def test_simulate_labels_batch_by_batch_up_to_the_budget() -> None:
    run = simulate.simulate(toy_data(), "default", seed=0, init=6, batch=5, budget=31)
    assert run.labels == [6, 11, 16, 21, 26, 31]
    assert len(run.accuracy) == len(run.macro_f1) == len(run.seconds) == 6
    assert run.accuracy[-1] > 0.9  # separable classes: the head learns them


def test_every_strategy_starts_from_the_same_labels_for_a_seed() -> None:
    data = toy_data()
    first = [simulate.simulate(data, s, 3, 6, 5, 6).acquired for s in ("random", "margin")]
    assert first[0] == first[1]
    assert simulate.simulate(data, "random", 4, 6, 5, 6).acquired != first[0]


def test_the_served_mode_runs_the_server_lane_and_serves_a_fit_on_every_label(
    tmp_path: Path,
) -> None:
    from ls_backend.core.configs import RoundConfig

    data = toy_data()
    data.label_x = np.roll(np.eye(16, dtype=np.float32)[:3], 1, axis=0)  # wrong prototypes
    fit = simulate.ServedFit(tmp_path, data, RoundConfig(eval_min_labels=30))
    run = simulate.simulate(data, "default", seed=0, init=6, batch=10, budget=56, fit=fit)
    assert run.accuracy[-1] > 0.9
    serving = fit.registry.current()
    seen = json.loads((fit.registry.path(serving) / "annotations.json").read_text())
    assert sorted(seen["trained_on"]) == sorted(run.acquired) and seen["held_out"]
    tally = run.promotions
    assert tally["rounds"] == len(run.labels) and tally["promoted"] >= 1


def test_the_served_mode_records_the_plateau_signal_on_pool_rows(tmp_path: Path) -> None:
    from ls_backend.core.configs import RoundConfig
    from ls_backend.core.stopping import MIN_STOP_COVERED

    data = toy_data()
    data.label_x = np.eye(16, dtype=np.float32)[:3]
    fit = simulate.ServedFit(tmp_path, data, RoundConfig(eval_min_labels=30))
    run = simulate.simulate(data, "random", seed=0, init=6, batch=10, budget=86, fit=fit)
    assert len(run.plateau_gain) == len(run.plateau_stop) == len(run.plateau_unseen)
    assert len(run.plateau_gain) == len(run.labels)
    assert run.plateau_unseen[-1] == 0.0  # every class has many labels: nothing new to meet
    assert set(fit.stop_rows) <= set(range(data.pool_y.size))  # pool rows, never the test split
    # Separable classes learnt by 86 labels: a forecast under a point, but too few labels.
    assert run.plateau_gain[-1] is not None and run.plateau_gain[-1] < 0.01
    assert run.labels[-1] < MIN_STOP_COVERED and not any(run.plateau_stop)
    # Labels per class each round, for re-deciding the floor without a rerun.
    assert [sum(c) for c in run.plateau_counts] == run.labels
    assert len(run.plateau_counts[-1]) == data.space.size


def test_the_stop_figures_count_labels_left_and_saved_at_the_first_stop() -> None:
    run = simulate.Run([100, 200, 300, 400], [0.7, 0.8, 0.85, 0.86], [0.6] * 4, [0.1] * 4)
    run.plateau_stop = [False, False, True, True]
    stop = report.plateau_stop_figures([run], 0.01)
    assert stop["labels"] == [300] and stop["stopped_seeds"] == 1
    assert stop["labels_saved"] == [100]
    assert stop["accuracy_left"] == [pytest.approx(0.01)]
    assert stop["within_point_labels"] == 300


def test_a_run_that_never_stops_counts_at_the_budget() -> None:
    run = simulate.Run([10, 20, 30], [0.5, 0.6, 0.7], [0.4, 0.5, 0.6], [0.1] * 3)
    run.plateau_stop = [False] * 3
    stop = report.plateau_stop_figures([run], 0.01)
    assert stop["stopped_seeds"] == 0 and stop["labels"] == [30] and stop["labels_saved"] == [0]
    assert stop["accuracy_left"] == [0.0] and stop["within_point_labels"] == 30


def test_one_seen_class_predicts_that_class() -> None:
    data = toy_data()
    predicted = simulate.fit_predict(data, np.flatnonzero(data.pool_y == 1)[:4])
    assert (simulate.decided(predicted.test) == 1).all()
    assert predicted.pool is not None and predicted.pool.shape == (90, 3, 1)


def test_calibration_error_is_the_gap_between_confidence_and_accuracy() -> None:
    probs = np.array([[[0.9], [0.1]], [[0.9], [0.1]]], dtype=np.float32)  # both say class 0
    assert simulate.calibration_error(probs, np.array([0, 0])) == pytest.approx(0.1)
    assert simulate.calibration_error(probs, np.array([0, 1])) == pytest.approx(0.4)


SUMMARY_KEYS = {"auc", "auc_std", "ripl", "ripl_se", "labels_to_target", "savings", "curve"}


def test_summary_has_the_promised_shape() -> None:
    runs = {
        "random": [simulate.Run([10, 20], [0.5, 0.6], [0.4, 0.5], [0.1, 0.1])],
        "default": [simulate.Run([10, 20], [0.5, 0.8], [0.4, 0.7], [0.1, 0.1])],
    }
    results, details = report.summarise(runs, full_pool_accuracy=0.8, budget=20)
    assert results["default"] == "default"
    entry = results["strategies"]["default"]
    assert set(entry) == SUMMARY_KEYS
    assert entry["auc"] == pytest.approx(0.65)
    assert entry["ripl_se"] is None  # one seed: no spread to judge the gain by
    assert entry["ripl"] == pytest.approx(100 * (0.65 - 0.55) / 0.45)
    assert entry["labels_to_target"] == 20  # 0.95 * 0.8 = 0.76
    assert results["strategies"]["random"]["labels_to_target"] is None
    assert details["strategies"]["default"]["labels_to_random_final"] == 20


def run_cli(tmp_path: Path, *flags: str) -> Path:
    """``ls-backend bench`` on tmp_path's train/test files with ``flags``; returns --out."""
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "out"
    files = ["--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    args = parser.parse_args(["bench", *files, "--out", str(out), *flags])
    args.func(args)
    return out


def test_bench_command_writes_results_table_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: toy_data())
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text('{"text": "x", "label": "a"}\n')
    out = run_cli(tmp_path, "--init", "6", "--batch", "6", "--budget", "30", "--seeds", "2")
    results = json.loads((out / "results.json").read_text())
    assert set(results["strategies"]) == {"random", "margin", "default"}
    assert len(results["strategies"]["default"]["curve"]) == 5
    assert "| default |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0


def test_an_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        run_bench(tmp_path / "a", tmp_path / "b", tmp_path / "out", model="bert")


def test_the_pool_is_predicted_only_when_the_strategy_ranks_with_it() -> None:
    calls: dict[str, list[bool]] = {}
    for strategy in ("random", "margin"):
        flags = calls[strategy] = []

        def fit(data: bench_data.BenchData, labeled: np.ndarray, pool: bool, flags=flags) -> Any:
            flags.append(pool)
            return simulate.fit_predict(data, labeled, pool)

        simulate.simulate(toy_data(), strategy, 0, 6, 5, 16, fit)
    assert calls == {"random": [False] * 3, "margin": [True, True, False]}


def test_subsample_is_stratified_sorted_and_fixed() -> None:
    texts = [f"t{i}" for i in range(40)]
    labels = ["a"] * 30 + ["b"] * 10
    kept, kept_labels = bench_data.subsample(texts, labels, 20)
    assert kept_labels.count("b") == 5 and kept == sorted(kept, key=lambda t: int(t[1:]))
    assert bench_data.subsample(texts, labels, 20) == (kept, kept_labels)
    assert bench_data.subsample(texts, labels, 50) == (texts, labels)


# --- LoRA modes, on a tiny random BERT (seconds on CPU) ----------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import torch
    from core.test_lora import save_tiny_bert  # tests/ is on sys.path (rootdir imports)

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs: see tests/core/test_lora.py
    yield save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    torch.set_num_threads(before)


def toy_text_data() -> bench_data.BenchData:
    data = toy_data()
    words = ("alpha", "bravo", "charlie")
    data.pool_texts = [f"{words[y]} item {i}" for i, y in enumerate(data.pool_y)]
    data.test_texts = [f"{words[y]} thing {i}" for i, y in enumerate(data.test_y)]
    return data


def tiny_lora(backbone: str) -> Any:
    from ls_backend.core.configs import LoraTrainConfig

    return LoraTrainConfig(
        backbone=backbone, max_length=16, epochs=2, min_steps=0, batch_size=4, mc_samples=2
    )


def run_bench(train: Path, test: Path, out: Path, **options: Any) -> dict:
    return cli.run_bench(cli.BenchOptions(train, test, out, **options))


LORA_BENCH = {"strategies": ("random", "default"), "init": 6, "batch": 5, "budget": 21, "seeds": 1}


def test_lora_every_round_writes_the_usual_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone: str
) -> None:
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: toy_text_data())
    out = tmp_path / "lora"
    results = run_bench(
        tmp_path / "train.jsonl",
        tmp_path / "test.jsonl",
        out,
        model="lora",
        lora=tiny_lora(tiny_backbone),
        **LORA_BENCH,
    )
    assert results == json.loads((out / "results.json").read_text())
    assert results["model"] == "lora" and set(results["strategies"]) == {"random", "default"}
    for entry in results["strategies"].values():
        assert set(entry) == SUMMARY_KEYS and len(entry["curve"]) == 4  # 6, 11, 16, 21 labels
        assert all(0 <= a <= 1 for a in entry["curve"])
    details = json.loads((out / "details.json").read_text())
    assert details["strategies"]["default"]["seconds_total"] > 0
    assert "| default |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0

    # prepal-then-lora against this run (--compare): no second LoRA-every-round loop.
    both = run_bench(
        tmp_path / "train.jsonl",
        tmp_path / "test.jsonl",
        tmp_path / "prepal",
        model="prepal-then-lora",
        lora=tiny_lora(tiny_backbone),
        compare_with=out,
        **LORA_BENCH,
    )
    assert not (tmp_path / "prepal" / "lora").exists()
    every = both["prepal_then_lora"]["default"]["lora_every_round"]
    assert every["final_accuracy"] == results["strategies"]["default"]["curve"][-1]


def test_prepal_then_lora_selects_like_head_and_compares_with_lora_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone: str
) -> None:
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: toy_text_data())
    out = run_cli(
        tmp_path,
        *["--model", "prepal-then-lora", "--strategies", "random,default", "--init", "6"],
        *["--batch", "5", "--budget", "21", "--seeds", "1", "--backbone", tiny_backbone],
        *["--lora-epochs", "2", "--lora-min-steps", "0", "--max-length", "16"],
        *["--mc-samples", "2"],
    )
    results = json.loads((out / "results.json").read_text())
    head = run_bench(tmp_path / "a", tmp_path / "b", tmp_path / "head", **LORA_BENCH)
    for name, entry in results["strategies"].items():  # the selection is the head loop's
        assert set(entry) == SUMMARY_KEYS and entry["curve"] == head["strategies"][name]["curve"]
    table = results["prepal_then_lora"]
    assert set(table) == {"random", "default"}
    for row in table.values():
        assert 0 <= row["prepal_then_lora"]["final_accuracy"] <= 1
        assert row["prepal_then_lora"]["seconds"] > row["prepal_then_lora"]["lora_seconds"] > 0
        assert row["lora_every_round"]["seconds"] > 0
    # Random picks the same labels whatever the model: the same final LoRA fit.
    random = table["random"]
    assert (
        random["prepal_then_lora"]["final_accuracy"] == random["lora_every_round"]["final_accuracy"]
    )
    assert json.loads((out / "lora" / "results.json").read_text())["model"] == "lora"
    text = (out / "results.md").read_text()
    assert "LoRA every round vs head in the loop, LoRA once" in text and "| random |" in text


def test_reads_plain_and_gzipped_jsonl(tmp_path: Path) -> None:
    import gzip

    line = '{"text": "hello", "label": 1}\n'
    (tmp_path / "a.jsonl").write_text(line)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(line)
    for name in ("a.jsonl", "b.jsonl.gz"):
        assert bench_data.read_jsonl(tmp_path / name) == (["hello"], ["1"])


def toy_served_lora_data() -> bench_data.BenchData:
    data = toy_text_data()
    data.label_x = np.eye(16, dtype=np.float32)[:3]
    return data


def test_served_lora_runs_the_lora_lane_every_n_labels_with_the_star_parts_as_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone: str
) -> None:
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: toy_served_lora_data())
    out = run_cli(
        tmp_path,
        *["--model", "served-lora", "--lora-every", "20", "--strategies", "random,default"],
        *["--init", "6", "--batch", "10", "--budget", "56", "--seeds", "1"],
        *["--backbone", tiny_backbone, "--lora-epochs", "2", "--lora-min-steps", "0"],
        *["--max-length", "16", "--mc-samples", "2", "--b-decay", "0", "--no-star-mix"],
    )
    details = json.loads((out / "details.json").read_text())
    record = details["served_lora"]
    assert record["star_mix"] is False and record["lora_every"] == 20
    assert record["lora"]["b_decay"] == 0 and record["lora"]["mc_samples"] == 2
    for entry in details["strategies"].values():
        # 6, 16, ..., 56 labels: LoRA from 50 labels (LORA_MIN_LABELS) and 20 after the last.
        assert entry["promotions"]["rounds"] == 6 and entry["promotions"]["lora_rounds"] == 1
        assert len(entry["ece"]) == 6 and all(0 <= e <= 1 for e in entry["ece"])
    text = (out / "results.md").read_text()
    assert "LoRA every 20 labels, ranked by the adapter's margin" in text and "| lora |" in text


def test_while_an_adapter_serves_the_pool_is_ranked_by_star_mix_or_its_margin(
    tmp_path: Path, tiny_backbone: str
) -> None:
    from dataclasses import replace

    from ls_backend.core.configs import RoundConfig
    from ls_backend.core.lora import LoraClassifier
    from ls_backend.core.model import ModelVersion
    from ls_backend.core.uncertainty import star_scores

    data = toy_served_lora_data()
    lora = RoundConfig(star_lambda_decay=0.5, lora=tiny_lora(tiny_backbone))
    labeled = np.arange(12, dtype=np.int64)
    adapter = LoraClassifier.train(
        data.space, data.pool_texts[:12], data.pool_y[:12], replace(lora.lora, epochs=1)
    )
    served = {}
    for mix in (True, False):
        fit = simulate.ServedLoraFit(tmp_path / str(mix), data, RoundConfig(), lora, 50, 50, mix)
        head = simulate.ServedFit(tmp_path / f"head-{mix}", data, RoundConfig())
        head.round("head", data, labeled, RoundConfig())
        fit.serving = ModelVersion("v-lora", data.space, head.serving.head, adapter, lora_round=2)
        served[mix] = fit.predict(data, labeled, True)
    mixed, alone = served[True], served[False]
    assert mixed.pool is not None and mixed.pool.shape == (90, 3, 2)  # MC dropout: 2 passes
    assert mixed.test.shape == (30, 3, 2) and alone.scores is None  # default: adapter's margin
    base = head.serving.head.predict_proba(data.pool_x)
    expected = star_scores(base, mixed.pool, 2, 0.5)  # lambda = 0.5 ** 2
    assert mixed.scores is not None and np.allclose(mixed.scores, expected)
    margin_only = star_scores(base, mixed.pool, 2, 1e-9)
    assert not np.allclose(mixed.scores[12:], margin_only[12:])
