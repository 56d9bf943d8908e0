"""Numeric targets for regression heads: one or several columns of numbers per input.

The rule: a target is a finite number (an int, a float, or a string that parses as one, such as a CSV cell
``"3.5"``); a missing, empty, NaN, infinite or non-numeric target is a
:class:`~transferkit.errors.LabelError` naming the rows (first 10 and a count), never a silently dropped or
zero-filled row.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from transferkit.errors import DataError, LabelError

from .common import first
from .readers import load_raw


def load_targets(source: Any, *, input_column: str = "text",
                 target_columns: Sequence[str] = ("label",)) -> tuple[list, list[list[float]], list[str]]:
    """Inputs, their targets (a list of floats per input, one per column) and the rows' origins.

    Args:
        source: any container :func:`transferkit.load_labelled` reads (CSV/TSV/JSONL, DataFrame, dict of
            columns, datasets.Dataset, pairs ``(input, target)`` or ``(input, [t1, t2])``...).
        input_column: the column of the inputs in tables.
        target_columns: the columns of the targets in tables; pairs give them in order.

    Raises:
        LabelError: a target is missing or not a finite number (the message names the rows).
        DataError: the source is empty or unreadable, or a column is missing.
    """
    columns = list(target_columns)
    if not columns:
        raise DataError("give at least one target column, e.g. target_columns=['price'].")
    first_read = load_raw(source, input_column=input_column, label_column=columns[0])
    if _rows_hold_all(first_read.labels, len(columns)):  # (input, [t1, ..., tn]) pairs, LabelledData
        raw = [list(y) for y in first_read.labels]
    elif len(columns) == 1:
        raw = [[y] for y in first_read.labels]
    else:
        others = [load_raw(source, input_column=input_column, label_column=c).labels for c in columns[1:]]
        raw = [list(row) for row in zip(first_read.labels, *others)]
    targets, bad = [], []
    for origin, row in zip(first_read.origins, raw):
        values = [number(v) for v in row]
        if len(values) != len(columns) or any(v is None for v in values):
            bad.append(f"{origin} ({row if len(row) > 1 else row[0]!r})")
        targets.append(values)
    if bad:
        raise LabelError(f"{len(bad)} target(s) are missing or not finite numbers: {first(bad)}. Every example needs "
                         f"a number in {', '.join(map(repr, columns))}: fill them in or remove those rows.")
    return list(first_read.inputs), targets, list(first_read.origins)


def _rows_hold_all(labels: list, n: int) -> bool:
    """Pairs ``(input, [t1, ..., tn])`` carry every target in one value."""
    return all(isinstance(y, (list, tuple)) and len(y) == n for y in labels)


def number(value: Any) -> float | None:
    """A finite float from an int, a float, a numeric string or a numpy/torch scalar; ``None`` otherwise."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
