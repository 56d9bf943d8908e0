"""Labelled data as (raw inputs, labels, origins), read from the containers users actually have.

Raw inputs stay raw (strings, image paths, arrays); the backbone's preprocessor turns each batch into
tensors, so the same data works with any backbone of the right modality. Every example carries its
*origin* in the user's data (``"train.csv line 7"``, ``"row 12"``, ``"item 3"``, an image file's path), and
every error about an example names it.

Containers (:func:`load_labelled`): a ``.csv``/``.tsv``/``.jsonl`` file or an image folder; a pandas
``DataFrame``, a dict of columns or a Hugging Face ``datasets.Dataset`` (input and label columns by name:
``text_column=``/``input_column=`` and ``label_column=``); a tuple of two columns ``(inputs, labels)``
(lists, numpy arrays, pandas Series, tensors); a list or generator of ``(input, label)`` pairs or of dicts;
a torch map-style ``Dataset`` of pairs; a torch ``DataLoader`` (read through its ``.dataset``: its batch
size, sampler and ``collate_fn`` are not used, the Trainer batches itself). Anything ambiguous (a dict
without the columns, a tuple of two strings, strings without labels) is refused with a
:class:`~transferkit.errors.DataError` that says what to pass. pandas and datasets stay optional: they
are recognised by duck typing, never imported.

The label rule (the same for CSV, JSONL, lists, numpy, pandas and every other container):

- A missing or empty label (``None``, NaN, ``pd.NA``, ``""``, whitespace, the missing cell of a short CSV
  row) is a :class:`~transferkit.errors.LabelError` naming the rows (first 10 and a count).
- Labels are class names. Strings are stripped of surrounding whitespace; numpy and torch scalars count
  as the Python value they hold; integral floats (``1.0``, as pandas makes of integer columns) are ints;
  other floats are refused (classification needs class names, not measurements).
- Integer labels are class names like any other: JSONL labels 5 and 7 make 2 classes ``[5, 7]``, exactly as
  the CSV strings ``"5"`` and ``"7"`` make 2 classes ``["5", "7"]``. The one exception: a head built with
  ``num_classes=N`` and no ``labels`` treats integer labels as class ids ``0..N-1``.
- Bools are class names too (``[False, True]``), never the ids 0 and 1.
- Predictions come back in the type the labels were given in: all ints give ints, all bools give bools,
  anything else (strings, or a mix of types) gives strings. The head records the type (``label_type``),
  so it survives ``save_pretrained``/``from_pretrained``. Classes are sorted: numbers by value, strings
  made only of digits by their value, other strings alphabetically.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from transferkit.errors import DataError, InputError, LabelError, ModalityError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
COLUMN_HINT = "Pass text_column=/label_column= (CLI: --text-column/--label-column)."


@dataclass
class LabelledData:
    """Parallel lists of raw inputs, their labels and where each came from.

    Attributes:
        inputs: raw inputs (strings, image paths, arrays...).
        labels: class names (or integer class ids for a head without names).
        origins: where each example is in the user's data, e.g. ``"train.csv line 7"``; defaults to
            ``"item i"``.
        input_column: the column the inputs were read from, when they came from a table.
    """

    inputs: list
    labels: list
    origins: list[str] | None = None
    input_column: str | None = None

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.labels)} labels: they must pair up.")
        if self.origins is None:
            self.origins = [f"item {i}" for i in range(len(self.inputs))]
        elif len(self.origins) != len(self.inputs):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.origins)} origins: they must pair up.")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: Sequence[int]) -> "LabelledData":
        return LabelledData([self.inputs[i] for i in indices], [self.labels[i] for i in indices],
                            [self.origins[i] for i in indices], self.input_column)


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
    labels, missing, bad = [], [], []
    for y, origin in zip(data.labels, data.origins):
        try:
            label = clean_label(y)
        except TypeError:
            bad.append(f"{origin} ({y!r})")
            continue
        if label is None:
            missing.append(origin)
        labels.append(label)
    if missing:
        raise LabelError(f"{len(missing)} example(s) have a missing or empty label: {first(missing)}. Every "
                         "example needs a label: fill them in or remove those rows.")
    if bad:
        raise LabelError(f"{len(bad)} label(s) are not class names: {first(bad)}. Classification labels are "
                         "strings, integers or bools (for a regression target, use another head).")
    return LabelledData(data.inputs, labels, data.origins, data.input_column)


def load_inputs(source: Any, *, input_column: str = "text") -> tuple[list, list[str]]:
    """The inputs of an unlabelled file or table (for prediction) and their origins.

    Reads what :func:`load_labelled` reads, but only ``input_column``: no label column is needed.
    """
    data = _read(source, input_column, input_column)
    return list(data.inputs), list(data.origins)


def first(items: Sequence[str], n: int = 10) -> str:
    """The first ``n`` items joined, and how many more there are."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


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
    raise DataError(f"{origin} is {_short(item)}, not an (input, label) pair. " + _containers(
        f"a collection of {type(item).__name__}") + " Inputs without labels go to predict, not to training.")


def _short(x: Any) -> str:
    text = repr(x)
    return f"a {type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def is_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and hasattr(x, "ndim") and hasattr(x, "dtype")


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


def _jsonl(f, path: Path) -> tuple[list[dict], list[int], list]:
    rows, lines, columns = [], [], {}
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON: {e.msg}") from e
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


# --- the label rule -----------------------------------------------------------------------------------

def clean_label(y: Any) -> str | int | bool | None:
    """One label as its class name (``str``, ``int`` or ``bool``), or ``None`` when it is missing.

    Raises:
        TypeError: ``y`` cannot be a class name (a non-integral float, a list...).
    """
    if y is None or type(y).__name__ in ("NAType", "NaTType"):
        return None
    if getattr(y, "ndim", None) == 0 and hasattr(y, "item"):  # numpy / torch scalars
        y = y.item()
    if isinstance(y, bool):
        return y
    if isinstance(y, int):
        return int(y)
    if isinstance(y, float):
        if y != y:
            return None
        if y.is_integer():
            return int(y)
        raise TypeError(y)
    if isinstance(y, str):
        return str(y).strip() or None
    raise TypeError(y)


def label_type(labels: Iterable) -> str:
    """``"int"``, ``"bool"`` or ``"str"``: the type predictions come back in (mixed types give ``"str"``)."""
    kinds = {"bool" if isinstance(y, bool) else "int" if isinstance(y, int) else "str" for y in labels}
    return kinds.pop() if len(kinds) == 1 else "str"


def class_names(labels: Iterable) -> tuple[list, str]:
    """The sorted distinct classes of ``labels`` and their type, by the label rule.

    ``class_names([5, 7, 5]) == ([5, 7], "int")``; ``class_names(["b", "a"]) == (["a", "b"], "str")``.
    Build the head with ``Classification(labels=names)``.

    Raises:
        LabelError: a label is missing or is not a class name.
    """
    cleaned = []
    for i, y in enumerate(labels):
        try:
            label = clean_label(y)
        except TypeError:
            label = None
        if label is None:
            raise LabelError(f"label {i} ({y!r}) is missing or not a class name; apply load_labelled first.")
        cleaned.append(label)
    kind = label_type(cleaned)
    if kind != "str":
        return sorted(set(cleaned)), kind
    names = {str(y) for y in cleaned}
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n)), kind
    return sorted(names), kind


def infer_label_names(labels: Sequence) -> list | None:
    """Sorted class names, or ``None`` when every label is an integer (a class id for a ``num_classes`` head)."""
    names, kind = class_names(labels)
    return None if kind == "int" else names


def label_ids(labels: Sequence, names: Sequence | None, num_classes: int,
              origins: Sequence[str] | None = None) -> list[int]:
    """Map labels to class ids ``0..num_classes-1``, checking they fit the head.

    Labels are matched to ``names`` (by their text, so ``5`` and ``"5"`` are one class) when the head has
    names, else they must be integers in range. Errors name the examples through ``origins``.
    """
    origins = origins or [f"item {i}" for i in range(len(labels))]
    if names is not None:
        index = {str(n): i for i, n in enumerate(names)}
        wrong = [(y, o) for y, o in zip(labels, origins) if str(y) not in index]
        if wrong:
            unknown = sorted({str(y) for y, _ in wrong})
            raise LabelError(f"labels {unknown[:10]} are not among the head's classes {list(names)} (at "
                             f"{first([o for _, o in wrong])}): remove those examples, or train a head that has "
                             "these classes.")
        return [index[str(y)] for y in labels]
    ids = []
    for y, origin in zip(labels, origins):
        if isinstance(y, bool) or not isinstance(y, int) and not (isinstance(y, str) and y.strip().isdigit()):
            raise LabelError(f"label {y!r} ({origin}) is not a class id and the head has no label names: give "
                             "the head labels=[...] or use integer labels 0..num_classes-1.")
        ids.append(int(y))
    bad = sorted({i for i in ids if not 0 <= i < num_classes})
    if bad:
        rows = [o for i, o in zip(ids, origins) if not 0 <= i < num_classes]
        raise LabelError(f"labels {bad[:10]} are out of range for a head with num_classes={num_classes} (at "
                         f"{first(rows)}). Integer labels are class ids 0..num_classes-1 for a head without "
                         "labels; to use them as class names, build it with Classification(labels=[...]).")
    return ids


# --- inputs and modality ------------------------------------------------------------------------------

def looks_like_image_path(x: Any) -> bool:
    """A string or path with an image suffix that is an existing file or has no spaces."""
    if not isinstance(x, (str, os.PathLike)):
        return False
    text = os.fspath(x)
    if "\n" in text or os.path.splitext(text)[1].lower() not in IMAGE_SUFFIXES:
        return False
    return not any(c.isspace() for c in text) or os.path.isfile(text)


def _is_image_object(x: Any) -> bool:
    if type(x).__module__.startswith("PIL."):
        return True
    return (is_array(x) or type(x).__name__ == "Tensor") and getattr(x, "ndim", 0) >= 2


def _what_text(x: Any) -> str:
    if x is None or isinstance(x, float) and x != x or type(x).__name__ in ("NAType", "NaTType"):
        return "missing"
    return "empty" if isinstance(x, str) else _short(x)


def check_inputs(inputs: Sequence, modality: str | None, origins: Sequence[str] | None = None) -> None:
    """Check raw inputs suit a backbone of ``modality`` (``"text"``/``"image"``), naming bad examples.

    Raises:
        ModalityError: images or image paths for a text backbone, text for an image backbone.
        InputError: a text is missing, empty or not a string; an input is neither image nor path.
    """
    origins = origins or [f"item {i}" for i in range(len(inputs))]
    pairs = list(zip(inputs, origins))
    if modality == "text":
        images = [f"{o} ({type(x).__name__})" for x, o in pairs if _is_image_object(x)]
        path_like = [(os.fspath(x), o) for x, o in pairs if looks_like_image_path(x)]
        paths = [f"{o} ({x!r})" for x, o in path_like]
        on_disk = [f"{o} ({x!r})" for x, o in path_like if os.path.isfile(x)]
        if images or on_disk or paths and len(paths) == len(pairs):
            found = images or on_disk or paths
            raise ModalityError(f"this is a text backbone; these look like {'images' if images else 'image files'}: "
                                f"{first(found)}. Use an image backbone (e.g. timm:resnet18) for images, or pass "
                                "texts.")
        bad = [f"{o} ({_what_text(x)})" for x, o in pairs if not isinstance(x, str) or not x.strip()]
        if bad:
            raise InputError(f"a text backbone takes non-empty strings; {len(bad)} input(s) are not: {first(bad)}. "
                             "Fill in or remove those examples.")
    elif modality == "image":
        text = [f"{o} ({x if len(x) < 60 else x[:57] + '...'!r})" for x, o in pairs
                if isinstance(x, str) and not (os.path.splitext(x)[1].lower() in IMAGE_SUFFIXES
                                               or os.path.isfile(x))]
        if text:
            raise ModalityError(f"this is an image backbone; these are not image files (no image suffix and "
                                f"no such file) but look like text: {first(text)}. Use a text backbone for "
                                "texts, or pass image paths, PIL images or arrays.")
        other = [f"{o} ({_short(x)})" for x, o in pairs
                 if not (isinstance(x, (str, os.PathLike)) or _is_image_object(x))]
        if other:
            raise InputError(f"an image backbone takes PIL images, image paths, arrays or tensors; "
                             f"{first(other)} are not: fix or remove those examples.")


def preprocess_named(preprocess: Callable[[list], Any], inputs: list, origins: Sequence[str]) -> Any:
    """``preprocess(inputs)``, re-raising an :class:`InputError` with the origin of the failing input."""
    try:
        return preprocess(inputs)
    except InputError as error:
        for x, origin in zip(inputs, origins):
            try:
                preprocess([x])
            except InputError as item_error:
                message = re.sub(r"\b(image|text) #\d+", r"this \1", str(item_error), count=1)
                raise type(item_error)(f"{origin}: {message}") from item_error
        raise error


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
