"""The bench's data: a labeled dataset's pool and test split, embedded (with the cache in
front, so reruns are fast), and the label names' embeddings (what serves before a label)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from ls_backend.core.embeddings import EMBEDDED_MODEL, Encoder
from ls_backend.core.heads import label_prototype_texts
from ls_backend.core.labels import Embeddings, LabelSpace
from ls_backend.store.databases import Databases


@dataclass
class BenchData:
    space: LabelSpace
    pool_x: Embeddings
    pool_y: NDArray[np.int64]
    test_x: Embeddings
    test_y: NDArray[np.int64]
    pool_texts: list[str] = field(default_factory=list)  # for LoRA; the head needs none
    test_texts: list[str] = field(default_factory=list)
    label_x: Embeddings | None = None  # label-name prototypes: what serves before a label


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def subsample(texts: list[str], labels: list[str], size: int) -> tuple[list[str], list[str]]:
    """A stratified subsample; fixed seed: it is part of the dataset, not of the experiment."""
    if len(texts) <= size:
        return texts, labels
    keep, _ = train_test_split(
        np.arange(len(texts)), train_size=size, stratify=labels, random_state=0
    )
    keep = np.sort(keep)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_data(
    train: Path,
    test: Path,
    pool_size: int,
    cache_path: Path,
    progress: bool = True,
    test_size: int | None = None,
    runtime: str = "torch",
    max_length: int = 128,
    model: str = EMBEDDED_MODEL,
) -> BenchData:
    train_texts, train_labels = subsample(*read_jsonl(train), pool_size)
    test_texts, test_labels = read_jsonl(test)
    if test_size is not None:
        test_texts, test_labels = subsample(test_texts, test_labels, test_size)
    space = LabelSpace(tuple(sorted(set(train_labels) | set(test_labels))))
    encoder = Encoder(
        model,
        cache=Databases.embedding_cache_at(cache_path),
        max_length=max_length,
        runtime=runtime,
        export_dir=cache_path.parent / "onnx",
    )
    label_x = encoder.encode(label_prototype_texts(space))
    return BenchData(
        space,
        encoder.encode(train_texts, progress),
        space.encode([[label] for label in train_labels]),
        encoder.encode(test_texts, progress),
        space.encode([[label] for label in test_labels]),
        train_texts,
        test_texts,
        label_x,
    )
