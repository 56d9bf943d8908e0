"""The label rule: what counts as a class name, the type predictions come back in, and class ids.

The same rule holds for CSV, JSONL, lists, numpy, pandas and every other container (see
:mod:`transferkit.data`): a missing or empty label is a :class:`~transferkit.errors.LabelError` naming the
rows; labels are class names (strings stripped, numpy/torch scalars as their Python value, integral floats
as ints, other floats refused); integer and bool labels are class names too, except that a head built with
``num_classes=N`` and no ``labels`` treats integers as class ids ``0..N-1``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from transferkit.errors import LabelError

from .common import first


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


def clean_labels(labels: Sequence, origins: Sequence[str], what: str = "example",
                 hint: str = "for a regression target, use another head") -> list:
    """Every label cleaned by :func:`clean_label`, or one :class:`LabelError` naming all the bad rows.

    Args:
        what: what a row is, for the message (``"example"``, ``"pair"``).
        hint: what to do when labels are not class names.
    """
    cleaned, missing, bad = [], [], []
    for y, origin in zip(labels, origins):
        try:
            label = clean_label(y)
        except TypeError:
            bad.append(f"{origin} ({y!r})")
            continue
        if label is None:
            missing.append(origin)
        cleaned.append(label)
    if missing:
        raise LabelError(f"{len(missing)} {what}(s) have a missing or empty label: {first(missing)}. Every "
                         f"{what} needs a label: fill them in or remove those rows.")
    if bad:
        raise LabelError(f"{len(bad)} label(s) are not class names: {first(bad)}. Labels are strings, integers "
                         f"or bools ({hint}).")
    return cleaned
