"""Label sets for multi-label heads: each example carries a *set* of class names.

The rule (the same for every container :func:`~transferkit.data.load_labelled` reads):

- In Python containers (pairs, DataFrames, dicts of columns, ``datasets.Dataset``, LabelledData) a label
  set is a ``list``, ``tuple``, ``set``, ``frozenset`` or 1-D numpy array of class names:
  ``("the match ended", ["sport"])``.
- In CSV/TSV/JSONL cells (and any other string) a label set is either a JSON list
  (``["sport", "politics"]``; a cell that starts with ``[`` is always read as JSON) or the names joined
  by a separator (``sport|politics``; ``separator="|"`` by default, ``None`` for no splitting). A JSONL
  value may also be a JSON list directly.
- A single class name that is not a string (an int, a bool) is a set of one.
- Each name follows the label rule of :mod:`transferkit.data.labels` (strings stripped, integral floats as
  ints, other floats refused); a name repeated in one set counts once.
- **The empty set is allowed and means "none of the classes"**: write ``[]`` (an empty Python list, or the
  cell ``[]``). An *empty cell* is not an empty set: CSV cannot tell an empty cell from a forgotten one,
  so a missing, empty or whitespace cell, ``None`` or NaN is a :class:`~transferkit.errors.LabelError`
  naming the rows, as is an empty name between separators (``sport||politics``).
- Names not among a head's classes are a :class:`~transferkit.errors.LabelError` naming the rows and the
  names (:func:`label_matrix`).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from transferkit.errors import DataError, LabelError

from .common import first, is_array
from .labelled import LabelledData
from .labels import class_names, clean_label
from .readers import load_raw

SEPARATOR = "|"

_SETS = (list, tuple, set, frozenset)


def load_label_sets(source: Any, *, input_column: str = "text", label_column: str = "label",
                    separator: str | None = SEPARATOR) -> LabelledData:
    """Inputs and their label sets (a list of class names per input, empty for "none") from any container.

    Args:
        source: any container :func:`transferkit.load_labelled` reads, its label column holding label sets
            as in the module docstring.
        input_column: the column of the inputs in tables.
        label_column: the column of the label sets in tables.
        separator: what joins names in a string cell (``"|"``); ``None``: a string is one name.

    Raises:
        LabelError: a label set is missing, cannot be read, or holds a name that is not a class name (the
            message names the rows).
        DataError: the source is empty, unreadable, or lacks the columns.
    """
    if separator is not None and (not isinstance(separator, str) or not separator.strip()):
        raise DataError(f"separator must be a non-blank string (such as '|') or None, got {separator!r}.")
    data = load_raw(source, input_column=input_column, label_column=label_column)
    sets, missing, bad = [], [], []
    for value, origin in zip(data.labels, data.origins):
        try:
            names = parse_label_set(value, separator)
        except _Missing:
            missing.append(origin)
            continue
        except ValueError as e:
            bad.append(f"{origin} ({e})")
            continue
        sets.append(names)
    if missing:
        raise LabelError(f"{len(missing)} example(s) have a missing or empty label set: {first(missing)}. Every "
                         "example needs its set of labels; write [] for an example of none of the classes.")
    if bad:
        raise LabelError(f"{len(bad)} label set(s) cannot be read: {first(bad)}. A label set is a list of class "
                         f"names: a JSON list such as [\"sport\", \"politics\"] or names joined by "
                         f"{separator!r} in a table cell, a list/tuple/set in Python.")
    return LabelledData(list(data.inputs), sets, list(data.origins), data.input_column)


class _Missing(Exception):
    """A missing label set (an empty cell, None, NaN)."""


def parse_label_set(value: Any, separator: str | None = SEPARATOR) -> list:
    """One label set as a list of distinct class names, in their order of first appearance.

    Raises:
        _Missing: the value is missing (None, NaN, an empty or blank string).
        ValueError: it cannot be read as a set of class names (the message says why).
    """
    if is_array(value) and getattr(value, "ndim", 0) == 1:
        value = value.tolist()
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise _Missing
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{_cut(text)} starts with '[' but is not a JSON list: {e.msg}") from e
            if not isinstance(value, list):
                raise ValueError(f"{_cut(text)} is not a JSON list")
        elif separator is None:
            value = [text]
        else:
            value = text.split(separator)
            if any(not part.strip() for part in value):
                raise ValueError(f"{_cut(text)} has an empty name between {separator!r} separators")
    elif not isinstance(value, _SETS):
        try:
            name = clean_label(value)
        except TypeError:
            raise ValueError(f"{_cut(repr(value))} is not a class name or a list of them") from None
        if name is None:
            raise _Missing
        return [name]
    names: list = []
    for item in value:
        try:
            name = clean_label(item)
        except TypeError:
            raise ValueError(f"{_cut(repr(item))} in {_cut(repr(value))} is not a class name") from None
        if name is None:
            raise ValueError(f"{_cut(repr(value))} holds a missing or empty name")
        if name not in names:
            names.append(name)
    return names


def label_set_classes(label_sets: Iterable[Sequence]) -> tuple[list, str]:
    """The sorted distinct classes of all the sets and their type, by the label rule (:func:`class_names`).

    Raises:
        LabelError: no set holds any class (every example is an empty set).
    """
    flat = [name for names in label_sets for name in names]
    if not flat:
        raise LabelError("every label set is empty, so there are no classes to learn: give examples of the "
                         "classes, or build the head with MultiLabel(labels=[...]).")
    return class_names(flat)


def label_matrix(label_sets: Sequence[Sequence], names: Sequence, origins: Sequence[str] | None = None) -> list[
        tuple[int, ...]]:
    """Each set as a 0/1 indicator row over ``names`` (matched by text, so ``5`` and ``"5"`` are one class).

    Raises:
        LabelError: sets hold names not among ``names`` (the message names the rows and the names).
    """
    origins = origins or [f"item {i}" for i in range(len(label_sets))]
    index = {str(n): i for i, n in enumerate(names)}
    rows, wrong, unknown = [], [], []
    for names_here, origin in zip(label_sets, origins):
        row = [0] * len(index)
        extra = [str(n) for n in names_here if str(n) not in index]
        if extra:
            wrong.append(f"{origin} ({', '.join(extra)})")
            unknown += [n for n in extra if n not in unknown]
            continue
        for n in names_here:
            row[index[str(n)]] = 1
        rows.append(tuple(row))
    if wrong:
        raise LabelError(f"labels {unknown[:10]} are not among the head's classes {list(names)[:20]}: "
                         f"{len(wrong)} example(s) hold them: {first(wrong)}. Remove those labels or examples, or "
                         "train a head that has these classes.")
    return rows


def _cut(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."
