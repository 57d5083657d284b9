"""A span project through the lanes and the sync, as the server runs them: the head round, a
LoRA token-classification round (peft TOKEN_CLS), regions served, a queue ranked by span
uncertainty."""

from __future__ import annotations

import numpy as np

from ls_backend.jobs import lanes_for
from ls_backend.jobs.lanes import run_once
from ls_backend.labelstudio.sync import TaskPool, rank_front
from ls_backend.projects import Projects
from ls_backend.settings import Settings

NER = """<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/>
</Labels><Text name="text" value="$text"/></View>"""
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Prague"]


def labeled(i: int) -> tuple[str, list[dict]]:
    person, place = PEOPLE[i % 8], PLACES[(3 * i + 1) % 8]
    text = f"{person} flew to {place} on day {i} ."
    at = text.index(place)
    result = [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
        }
        for s, e, label in ((0, len(person), "PER"), (at, at + len(place), "LOC"))
    ]
    return text, result


def test_a_span_project_trains_head_and_adapter_and_ranks_by_span_uncertainty(tmp_path):
    settings = Settings(
        model_dir=tmp_path,
        lora_min_labels=30,
        lora_every=30,
        lora_epochs=2,
        lora_min_steps=0,
        max_length=32,
        device="cpu",
    )
    projects = Projects(settings)
    project = projects.project(3)
    project.setup(NER)
    tasks = []
    for i in range(40):
        text, result = labeled(i)
        project.store.apply(
            {
                "action": "ANNOTATION_CREATED",
                "annotation": {"id": i, "task": 100 + i, "was_cancelled": False, "result": result},
                "task": {"id": 100 + i, "data": {"text": text}},
                "project": {"id": 3, "label_config": NER},
            }
        )
        tasks.append((100 + i, {"text": text}, True))
    # Unlabeled: some like the labeled ones, some unlike anything seen (less sure).
    odd = [f"Zyx{i} qwv went to Kblorp near Uvvw {i}" for i in range(10)]
    plain = [f"{PEOPLE[i % 8]} flew to {PLACES[i % 8]} on day {i} ." for i in range(20)]
    tasks += [(500 + i, {"text": t}, False) for i, t in enumerate(plain + odd)]
    project.store.replace_tasks(tasks)

    lanes = lanes_for(projects)
    for lane in ("head", "lora"):
        status = run_once(project, lanes[lane])
        assert status.state == "done", status.last_error
        result = status.last_result
        assert result["version"].endswith(f"-{lane}"), result
        metrics = project.registry.info(result["version"])["metrics"]
        assert set(metrics["per_type"]) == {"PER", "LOC"} and 0 <= metrics["entity_f1"] <= 1
    peft = project.registry.path(result["version"]) / "lora" / "adapter_config.json"
    assert '"TOKEN_CLS"' in peft.read_text()

    batch = project.predict([{"id": 9, "data": {"text": "Emma flew to Rome on day 3 ."}}])
    for region in batch.results[0]["result"]:
        value = region["value"]
        assert "Emma flew to Rome on day 3 ."[value["start"] : value["end"]] == value["text"]

    pool = TaskPool(projects.encoder.dim)
    done, waiting = pool.refresh(project.store, project.config(), projects.encoder, projects.pacer)
    assert waiting == 0 and int(done.sum()) == 40
    model = project.model().without_adapter()  # the head: a deterministic order to check
    front = rank_front(model, project.config(), pool, done, settings)
    assert set(front.tasks) <= {500 + i for i in range(30)}
    scored = project.score(pool.texts, pool.embeddings, model)
    by_id = dict(zip(pool.ids.tolist(), scored.uncertainty, strict=True))
    # What the front carries is each task's span uncertainty (entropy summed over its words).
    assert np.allclose(front.uncertainty, [by_id[t] for t in front.tasks], atol=1e-5)
    unlabeled = [by_id[500 + i] for i in range(30)]
    assert front.uncertainty[0] == max(front.uncertainty)
    assert max(front.uncertainty) >= np.quantile(unlabeled, 0.9) - 1e-6
    assert all(r["result"] == [] or r["result"][0]["type"] == "labels" for r in front.results)
