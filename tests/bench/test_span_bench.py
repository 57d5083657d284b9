"""``ls-backend bench`` on span JSONL (``text`` + ``spans``): the classification bench's files
and keys, entity F1 in place of accuracy."""

import json
from pathlib import Path

import pytest

from ls_backend.bench.cli import BenchOptions, run_bench
from ls_backend.settings import Settings

PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Prague"]


def rows(n: int, offset: int, people=PEOPLE, places=PLACES) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        person, place = people[i % len(people)], places[(5 * i + 1) % len(places)]
        if i % 4 == 3:  # some sentences without an entity
            out.append({"text": f"It rained for {i} days .", "spans": []})
            continue
        text = f"{person} flew to {place} after {i} days ."
        at = text.index(place)
        spans = [
            {"start": 0, "end": len(person), "label": "PER"},
            {"start": at, "end": at + len(place), "label": "LOC"},
        ]
        out.append({"text": text, "spans": spans})
    return out


def write(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


@pytest.mark.parametrize("model", ["head", "served"])
def test_span_jsonl_gives_entity_f1_curves_with_the_bench_keys(tmp_path: Path, model: str) -> None:
    train = write(tmp_path / "train.jsonl", rows(60, 0))
    # People and places the pool never names, in other words: no strategy is perfect.
    unseen = []
    for p, q in [("Ivan", "Oslo"), ("Julia", "Athens"), ("Karl", "Tunis"), ("Lena", "Quito")]:
        text = f"Then {p} and Bo met in {q} ,"
        spans = [
            {"start": 5, "end": 5 + len(p), "label": "PER"},
            {"start": text.index(q), "end": text.index(q) + len(q), "label": "LOC"},
        ]
        unseen.append({"text": text, "spans": spans})
    test = write(tmp_path / "test.jsonl", rows(12, 100, ["Mia", "Noah"], ["Kyiv", "Lima"]) + unseen)
    out = tmp_path / "out"
    options = BenchOptions(
        train=train,
        test=test,
        out=out,
        init=10,
        batch=10,
        budget=30,
        seeds=2,
        model=model,
        embedding_backend="torch",
        settings=Settings(model_dir=tmp_path / "models", eval_min_labels=15),
    )
    results = run_bench(options)
    assert results["default"] == "default" and results["metric"] == "entity_f1"
    assert set(results["strategies"]) == {"random", "entropy_sum", "default"}
    for s in results["strategies"].values():
        assert len(s["curve"]) == 3 and 0.0 <= s["curve"][-1] <= 1.0
        assert "ripl" in s and "ripl_se" in s and 0.0 <= s["auc"] <= 1.0
    assert results["strategies"]["random"]["ripl"] == 0.0
    details = json.loads((out / "details.json").read_text())
    assert details["metric"] == "entity_f1" and details["seeds"] == 2
    assert len(details["strategies"]["default"]["accuracy_per_seed"][0]) == 3
    assert results["strategies"]["default"]["curve"][-1] > 0.5  # a learnable toy
    assert (out / "curves.png").is_file() and "entity_f1" in (out / "results.md").read_text()
