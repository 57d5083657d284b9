"""Span labeling (NER): the pure core of a ``<Labels>``-on-``<Text>`` project.

- ``types``: ``Span`` (character offsets, end exclusive), ``SpanLabelSpace`` (labels in config
  order and their BILOU/BIO tags), ``TokenProbs`` (ragged tag probabilities ``[U, K, T]``).
- ``validation``: ``check_regions`` names what is wrong with each Label Studio region.
- ``alignment``: units (the tokenizer's words) <-> tags <-> spans; constrained decoding.
- ``tokens``: ``TokenEncoder``, token vectors per unit (torch or OpenVINO), long texts in
  overlapping windows.
- ``features``: word-shape features an uncased encoder cannot see.
- ``head``: ``SpanHead``, the light head refit after every label.
- ``lora``: ``LoraSpanTagger``, LoRA token classification for the LoRA lane.
- ``uncertainty``: sentence scores (``SPAN_MEASURES``), higher = less sure.
- ``metrics``: entity-level F1, per type, and the per-sentence terms the promotion rule pairs.
- ``predict``: the serving path after the encoder.
- ``task``: ``SPANS``, the task kind (``core.tasks.Task``) the server trains and serves.
"""
