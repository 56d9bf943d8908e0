"""Reading labelled data from the containers users actually have (see :mod:`transferkit.data`).

Containers (:func:`load_labelled`): a ``.csv``/``.tsv``/``.jsonl`` file or an image folder; a pandas
``DataFrame``, a dict of columns or a Hugging Face ``datasets.Dataset`` (input and label columns by name:
``text_column=``/``input_column=`` and ``label_column=``); a tuple of two columns ``(inputs, labels)``
(lists, numpy arrays, pandas Series, tensors); a list or generator of ``(input, label)`` pairs or of dicts;
a torch map-style ``Dataset`` of pairs; a torch ``DataLoader`` (read through its ``.dataset``: its batch
size, sampler and ``collate_fn`` are not used, the Trainer batches itself). Anything ambiguous (a dict
without the columns, a tuple of two strings, strings without labels) is refused with a
:class:`~transferkit.errors.DataError` that says what to pass. pandas and datasets stay optional: they
are recognised by duck typing, never imported. Every example gets its *origin* (``"train.csv line 7"``,
``"row 12"``, ``"item 3"``, an image file's path).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from transferkit.errors import DataError

from .common import IMAGE_SUFFIXES, first, is_array, short
from .labelled import LabelledData
from .labels import clean_labels

COLUMN_HINT = "Pass text_column=/label_column= (CLI: --text-column/--label-column)."


def load_labelled(source: Any, *, text_column: str = "text", label_column: str = "label",
                  input_column: str | None = None) -> LabelledData:
    """Read labelled data from any container in the module docstring, applying the label rule.

    Args:
        source: the data; see the module docstring for every accepted form (a :class:`LabelledData`
            is checked and returned with its labels cleaned).
        text_column: column holding the inputs (texts, or image paths/arrays) in tables.
        label_column: column holding the labels in tables.
        input_column: a neutral alias of ``text_column`` (e.g. ``"image"``); wins when given.

    Raises:
        DataError: the source is empty, unreadable, ambiguous, or lacks the named columns.
        LabelError: labels are missing, empty or not class names (the message names the rows).
    """
    data = _read(source, input_column or text_column, label_column)
    if len(data) == 0:
        raise DataError(f"the dataset {_describe(source)} is empty: give at least one labelled example.")
    labels = clean_labels(data.labels, data.origins)
    return LabelledData(data.inputs, labels, data.origins, data.input_column)


def load_inputs(source: Any, *, input_column: str = "text") -> tuple[list, list[str]]:
    """The inputs of an unlabelled file or table (for prediction) and their origins.

    Reads what :func:`load_labelled` reads, but only ``input_column``: no label column is needed.
    """
    data = _read(source, input_column, input_column)
    return list(data.inputs), list(data.origins)


def load_raw(source: Any, *, input_column: str = "text", label_column: str = "label") -> LabelledData:
    """Inputs and the raw values of ``label_column`` from any container, before any label rule.

    For heads whose labels are not class names (regression targets, tag sequences, answer spans): they
    apply their own reading to ``labels``. Raises DataError for an empty, unreadable or ambiguous source.
    """
    data = _read(source, input_column, label_column)
    if len(data) == 0:
        raise DataError(f"the dataset {_describe(source)} is empty: give at least one labelled example.")
    return data


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def _read(source: Any, column: str, label_column: str) -> LabelledData:
    if isinstance(source, LabelledData):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _image_folder(path)
        if path.is_file():
            return _file(path, column, label_column)
        raise DataError(f"data path {str(path)!r} does not exist.")
    if type(source).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise DataError(f"a {type(source).__name__} holds several splits {list(source)}: pass one, e.g. "
                        "ds['train'].")
    table = as_table(source)
    if table is not None:
        what, columns, get, origins = table
        x_key = find_column(columns, column, what)
        y_key = find_column(columns, label_column, what)
        return LabelledData(get(x_key), get(y_key), origins, str(x_key))
    import torch.utils.data as tud

    if isinstance(source, tud.DataLoader):  # the Trainer batches itself: read the examples
        source = source.dataset
    if isinstance(source, tud.Dataset) and not isinstance(source, tud.IterableDataset) and hasattr(source, "__len__"):
        source = [source[i] for i in range(len(source))]
    if isinstance(source, tuple) and len(source) == 2:
        a, b = source
        if _is_column(a) and _is_column(b):
            return LabelledData(_values(a), _values(b))
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == 2:
            raise DataError("a tuple of two 2-tuples is ambiguous (two (input, label) pairs, or columns "
                            "(inputs, labels)?): pass a list of pairs [(input, label), ...] or two lists.")
        if not isinstance(a, (tuple, list, dict)):
            raise DataError(f"a tuple ({type(a).__name__}, {type(b).__name__}) looks like one (input, label) "
                            "pair: pass a list of pairs [(input, label), ...] or (inputs, labels) as two lists.")
    if is_array(source):
        if source.ndim == 2 and source.shape[1] == 2 and source.dtype.kind in "OUS":
            source = source.tolist()
        else:
            raise DataError(f"a single array of shape {source.shape} has no labels: pass (inputs, labels), "
                            "e.g. (X, y) as two arrays.")
    if isinstance(source, (bytes, dict)) or not isinstance(source, Iterable):
        raise DataError(_containers(type(source).__name__))
    inputs, labels, origins = [], [], []
    for i, item in enumerate(source):
        x, y = _pair(item, f"item {i}", column, label_column)
        inputs.append(x)
        labels.append(y)
        origins.append(f"item {i}")
    return LabelledData(inputs, labels, origins)


def _containers(got: str) -> str:
    return ("labelled data must be a list of (input, label) pairs, (inputs, labels) as two lists or arrays, a "
            "pandas DataFrame, a dict of columns, a datasets.Dataset, a torch Dataset of pairs, a "
            f"CSV/TSV/JSONL file or an image folder; got {got}.")


def _pair(item: Any, origin: str, column: str, label_column: str) -> tuple[Any, Any]:
    if isinstance(item, dict):
        keys = list(item)
        return item[find_column(keys, column, origin)], item[find_column(keys, label_column, origin)]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise DataError(f"{origin} is {short(item)}, not an (input, label) pair. " + _containers(
        f"a collection of {type(item).__name__}") + " Inputs without labels go to predict, not to training.")


def _is_column(x: Any) -> bool:
    return (not isinstance(x, (str, bytes, tuple, dict)) and hasattr(x, "__len__") and hasattr(x, "__iter__")
            and as_table(x) is None)


def _values(column: Any) -> list:
    """A column's values as Python objects; a stack of images (``ndim > 1``) becomes a list of images."""
    if getattr(column, "ndim", 1) > 1 or not hasattr(column, "tolist"):
        return list(column)
    return column.tolist()


def as_table(source: Any) -> tuple[str, list, Callable[[Any], list], list[str] | None] | None:
    """``(description, columns, column reader, origins)`` for a DataFrame, datasets.Dataset or dict of
    columns; ``None`` for anything else."""
    module = type(source).__module__
    if module.startswith("pandas") and hasattr(source, "columns") and hasattr(source, "iloc"):
        return ("the DataFrame", list(source.columns), lambda c: source[c].tolist(),
                [f"row {i}" for i in source.index])
    if module.startswith("datasets") and hasattr(source, "column_names") and hasattr(source, "__len__"):
        # map-style only: a streamed IterableDataset is read as an iterable of row dicts
        return ("the datasets.Dataset", list(source.column_names), lambda c: list(source[c]),
                [f"row {i}" for i in range(len(source))])
    if isinstance(source, dict):
        lengths = {k: len(v) if _is_column(v) or isinstance(v, tuple) else None for k, v in source.items()}
        if not source or None in lengths.values() or len(set(lengths.values())) != 1:
            raise DataError(f"a dict is read as columns {{column: [values, ...]}} of equal length; this one has "
                            f"{ {k: ('not a list' if n is None else n) for k, n in lengths.items()} }. Pass e.g. "
                            "{'text': [...], 'label': [...]}, or a list of dicts for single examples.")
        return "the dict", list(source), lambda c: _values(source[c]), None
    return None


def find_column(columns: Sequence, name: Any, what: Any) -> Any:
    """The key among ``columns`` for ``name``, forgiving a UTF-8 BOM and surrounding spaces."""
    if name in columns:
        return name
    matches = [c for c in columns if str(c).lstrip("\ufeff").strip() == str(name).strip()]
    if len(matches) == 1:
        return matches[0]
    shown = [str(c).lstrip("\ufeff") for c in columns]
    raise DataError(f"{what} has no column {name!r}; its columns are {shown}. {COLUMN_HINT}")


def _file(path: Path, column: str, label_column: str) -> LabelledData:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv", ".tsv", ".tab"):
        raise DataError(f"{path}: unknown data file type {suffix!r}; use .csv, .tsv or .jsonl.")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: Excel writes a BOM
            rows, lines, columns = (_jsonl(f, path) if suffix in (".jsonl", ".ndjson")
                                    else _csv(f, path, "," if suffix == ".csv" else "\t"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8.") from e
    if not rows:
        return LabelledData([], [])
    x_key, y_key = find_column(columns, column, path), find_column(columns, label_column, path)
    return LabelledData([r.get(x_key) for r in rows], [r.get(y_key) for r in rows],
                        [f"{path} line {n}" for n in lines], column)


def _csv(f, path: Path, delimiter: str) -> tuple[list[dict], list[int], list]:
    reader = csv.DictReader(f, delimiter=delimiter)
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num} is not valid CSV: {e}.") from e
    long = [f"line {n}" for n, r in zip(lines, rows) if None in r]
    if long:
        raise DataError(f"{path}: {first(long)} have more fields than the header, so their text was cut at a "
                        f"{'comma' if delimiter == ',' else 'tab'}: quote fields that hold one (\"a, b\").")
    return rows, lines, list(reader.fieldnames or [])


def json_lines(f, path: Path):
    """``(line number, value)`` of each non-blank line of an open JSONL file; bad JSON is a DataError
    naming the line."""
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON: {e.msg}") from e


def _jsonl(f, path: Path) -> tuple[list[dict], list[int], list]:
    rows, lines, columns = [], [], {}
    for n, row in json_lines(f, path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is a JSON {type(row).__name__}; each line must be an object "
                            '{"text": ..., "label": ...}.')
        rows.append(row), lines.append(n), columns.update(dict.fromkeys(row))
    return rows, lines, list(columns)


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
    return LabelledData(inputs, labels, list(inputs))
