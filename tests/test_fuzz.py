"""Property-based fuzzing (Hypothesis) of the data readers, the label rule and the image loader.

Arbitrary bytes and shapes never crash with anything but a ``TransferkitError``, and what reaches training
is exactly the user's rows. Bounded (a few hundred examples in all, no deadline) so the default suite stays
fast.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import transferkit as tk
from transferkit.backbones.images import to_tensor
from transferkit.backbones.word_vectors import from_vectors
from transferkit.data import class_names
from transferkit.errors import TransferkitError
from transferkit.tasks import ClassificationTask

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SUFFIXES = (".csv", ".tsv", ".jsonl")
VOCAB = ["the", "cat", "sat", "stocks", "fell", "goal"]
BACKBONE = from_vectors(VOCAB, np.random.default_rng(0).random((len(VOCAB), 4), dtype=np.float32),
                        source="glove", name="fuzz")

# Texts a user may have: any printable text that is not blank (NUL is not text).
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=40).filter(lambda t: t.strip())
labels = st.sampled_from(["pos", "neg", "neutral", "5", "7", "spam eggs"])


def task_for(data) -> ClassificationTask:
    """A fresh head sized from the data's classes, on the shared tiny backbone, as the CLI builds it."""
    names, _ = class_names(data.labels)
    head = tk.heads.Classification(labels=names) if len(names) > 1 else tk.heads.Classification(2)
    return ClassificationTask(tk.TransferModel(BACKBONE, head))


def write_rows(path, rows) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="," if path.suffix == ".csv" else "\t").writerows([("text", "label"), *rows])


@FUZZ
@given(rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=12), suffix=st.sampled_from(SUFFIXES))
def test_written_rows_read_back_exactly(tmp_path, rows, suffix):
    path = tmp_path / f"data{suffix}"
    write_rows(path, rows)
    data = tk.load_labelled(path)
    assert list(data.inputs) == [t for t, _ in rows]
    assert [str(y) for y in data.labels] == [y for _, y in rows]


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_are_rows_or_a_named_error(tmp_path, raw, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(raw)
    try:
        data = tk.load_labelled(path)
        examples = task_for(data).examples(data)
    except TransferkitError:
        return
    decoded = raw.decode("utf-8-sig")
    assert len(examples) == len(data) > 0
    for text, label_id in examples:
        # What trains is a real, non-blank text of the file with a label id the head knows.
        assert isinstance(text, str) and text.strip()
        assert all(part in decoded for part in text.split()) or suffix == ".jsonl"
        assert isinstance(label_id, int)


@FUZZ
@given(values=st.lists(st.integers(-3, 40), min_size=2, max_size=20), numpy=st.booleans())
def test_integer_labels_make_exactly_their_classes(values, numpy):
    if len(set(values)) < 2:
        values = values + [values[0] + 1]
    given_labels = list(np.array(values, dtype=np.int64)) if numpy else values
    data = tk.load_labelled((["the cat sat"] * len(values), given_labels))
    task = task_for(data)
    examples = task.examples(data)
    assert task.model.head.num_classes == len(set(values))  # no phantom classes between or below them
    model = task.model
    predicted = model.predict(["the cat sat", "stocks fell"])
    assert all(type(p) is int and p in set(values) for p in predicted)
    assert len(examples) == len(values)


@FUZZ
@given(raw=st.binary(max_size=400), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a"]))
def test_arbitrary_image_bytes_are_an_image_or_an_image_error(tmp_path, raw, header):
    path = tmp_path / "x.png"
    path.write_bytes(header + raw)
    try:
        x = to_tensor(str(path))
    except TransferkitError:
        return
    assert x.ndim == 3 and x.shape[0] == 3 and torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


@FUZZ
@given(arr=arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
                  st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)))
def test_arbitrary_arrays_are_an_image_or_an_input_error(arr):
    try:
        x = to_tensor(arr)
    except TransferkitError:
        return
    assert x.ndim == 3 and x.shape[0] == 3
    assert torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


def test_fuzz_targets_reject_something():
    """The properties above are not vacuous: junk is refused, and so is a NaN image."""
    with pytest.raises(TransferkitError):
        to_tensor(np.full((4, 4), math.nan, dtype=np.float32))
    with pytest.raises(TransferkitError):
        tk.load_labelled(io.BytesIO(b"not a path"))
