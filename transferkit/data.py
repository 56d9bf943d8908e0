"""Labelled data as (raw inputs, labels): from Python lists, CSV/TSV/JSONL files, or image folders.

Raw inputs stay raw (strings, image paths, arrays); the backbone's preprocessor turns each batch into
tensors, so the same data works with any backbone of the right modality.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from transferkit.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class LabelledData:
    """Parallel lists of raw inputs and their labels (names or integer class ids)."""

    inputs: list
    labels: list

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.labels)} labels: they must pair up.")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: Sequence[int]) -> "LabelledData":
        return LabelledData([self.inputs[i] for i in indices], [self.labels[i] for i in indices])


def load_labelled(source: Any, *, text_column: str = "text", label_column: str = "label") -> LabelledData:
    """Read labelled data from any of the supported forms.

    Args:
        source: a :class:`LabelledData`; a list of ``(input, label)`` pairs; a tuple of two lists
            ``(inputs, labels)``; a ``.csv``/``.tsv``/``.jsonl`` file with text and label columns; or a
            directory with one sub-folder of images per class.
        text_column: column holding the text in CSV/TSV/JSONL files.
        label_column: column holding the label in CSV/TSV/JSONL files.

    Raises:
        DataError: the source is empty, unreadable, or lacks the named columns.
    """
    if isinstance(source, LabelledData):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            data = _image_folder(path)
        elif path.is_file():
            data = _table(path, text_column, label_column)
        else:
            raise DataError(f"data path {str(path)!r} does not exist.")
    elif isinstance(source, tuple) and len(source) == 2 and all(isinstance(s, list) for s in source):
        data = LabelledData(list(source[0]), list(source[1]))
    else:
        try:
            pairs = list(source)
            data = LabelledData([p[0] for p in pairs], [p[1] for p in pairs])
        except (TypeError, IndexError, KeyError) as e:
            raise DataError("labelled data must be (input, label) pairs, (inputs, labels) lists, a CSV/TSV/JSONL "
                            f"file or an image folder; got {type(source).__name__}.") from e
    if len(data) == 0:
        raise DataError(f"the dataset {_describe(source)} is empty: give at least one labelled example.")
    return data


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def _table(path: Path, text_column: str, label_column: str) -> LabelledData:
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if suffix in (".jsonl", ".ndjson"):
                rows = [json.loads(line) for line in f if line.strip()]
            elif suffix in (".csv", ".tsv", ".tab"):
                rows = list(csv.DictReader(f, delimiter="\t" if suffix != ".csv" else ","))
            else:
                raise DataError(f"{path}: unknown data file type {suffix!r}; use .csv, .tsv or .jsonl.")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8.") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno} is not valid JSON: {e.msg}") from e
    if not rows:
        return LabelledData([], [])
    columns = list(rows[0])
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(f"{path} has no column {column!r}; its columns are {columns}. Pass "
                            "text_column=/label_column= (CLI: --text-column/--label-column).")
    return LabelledData([r[text_column] for r in rows], [r[label_column] for r in rows])


def _image_folder(path: Path) -> LabelledData:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{path} has no class sub-folders: an image folder holds one sub-folder per class.")
    inputs, labels = [], []
    for name in classes:
        for file in sorted((path / name).rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                inputs.append(str(file))
                labels.append(name)
    return LabelledData(inputs, labels)


def label_ids(labels: Sequence, names: Sequence[str] | None, num_classes: int) -> list[int]:
    """Map labels to class ids ``0..num_classes-1``, checking they fit the head.

    Labels are matched to ``names`` when the head has names, else they must be integers in range.
    """
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(y) for y in labels} - set(index))
        if unknown:
            raise DataError(f"labels {unknown[:10]} are not among the head's classes {list(names)}.")
        return [index[str(y)] for y in labels]
    ids = []
    for y in labels:
        if isinstance(y, bool) or not isinstance(y, int) and not (isinstance(y, str) and y.strip().isdigit()):
            raise DataError(f"label {y!r} is not a class id and the head has no label names: give the head "
                            "labels=[...] or use integer labels 0..num_classes-1.")
        ids.append(int(y))
    bad = sorted({i for i in ids if not 0 <= i < num_classes})
    if bad:
        raise DataError(f"labels {bad[:10]} are out of range for a head with num_classes={num_classes}.")
    return ids


def infer_label_names(labels: Sequence) -> list[str] | None:
    """Sorted distinct label names, or ``None`` when every label is already an integer class id."""
    if all(isinstance(y, int) and not isinstance(y, bool) for y in labels):
        return None
    return sorted({str(y) for y in labels})


def stratified_split(data: LabelledData, fraction: float, seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """Hold out ``fraction`` of each class (at least one example of classes with two or more)."""
    import random

    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}.")
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(data.labels):
        by_class.setdefault(str(y), []).append(i)
    train, held = [], []
    for indices in by_class.values():
        rng.shuffle(indices)
        k = min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        held += indices[:k]
        train += indices[k:]
    if not held:
        raise DataError(f"{len(data)} examples are too few to hold out a validation split: pass --val data.")
    return data.subset(sorted(train)), data.subset(sorted(held))
