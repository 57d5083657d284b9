"""The span project the Label Studio tests label: its NER config, generated sentences with
their gold spans, and an annotation of one through Label Studio's API."""

from __future__ import annotations

import httpx

NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER" background="red"/>
    <Label value="LOC" background="darkorange"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Ivan", "Julia"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Prague", "Oslo"]


def sentence(i: int) -> tuple[str, list[tuple[int, int, str]]]:
    person, place = PEOPLE[i % len(PEOPLE)], PLACES[(7 * i + 2) % len(PLACES)]
    # Repeated spaces and a non-ASCII word before the place: offsets are code points.
    text = f"{person}  flew to {place} via Zürich on day {i} ."
    at = text.index(place)
    return text, [(0, len(person), "PER"), (at, at + len(place), "LOC")]


def annotate(client: httpx.Client, task_id: int, n: int) -> httpx.Response:
    """Label Studio's ``task_id`` annotated with ``sentence(n)``'s gold spans (its text)."""
    return client.post(f"/api/tasks/{task_id}/annotations", json={"result": regions(n)})


def regions(n: int) -> list[dict]:
    """``sentence(n)``'s gold spans as Label Studio result items of the ``label`` control."""
    text, spans = sentence(n)
    return [
        {
            "id": f"r{n}-{k}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
        }
        for k, (s, e, label) in enumerate(spans)
    ]


#: The NER template with a task-level ``<Choices>`` beside its ``<Labels>``: both are served.
NER_AND_TOPIC = NER.replace(
    '  <Text name="text" value="$text"/>',
    '  <Text name="text" value="$text"/>\n'
    '  <Choices name="topic" toName="text">\n'
    '    <Choice value="trip"/><Choice value="other"/>\n'
    "  </Choices>",
)


def annotate_both(client: httpx.Client, task_id: int, n: int, topic: str) -> httpx.Response:
    """``annotate``'s regions and a ``topic`` choice, in one annotation."""
    result = regions(n)
    result.append(
        {
            "id": f"c{n}",
            "from_name": "topic",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [topic]},
        }
    )
    return client.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
