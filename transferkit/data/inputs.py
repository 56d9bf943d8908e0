"""Input checks: raw inputs against the backbone's modality, and preprocessing errors named by origin."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Sequence

from transferkit.errors import InputError, ModalityError

from .common import IMAGE_SUFFIXES, first, is_array, short


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
    return "empty" if isinstance(x, str) else short(x)


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
        other = [f"{o} ({short(x)})" for x, o in pairs
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


def prediction_inputs(raw: Any, column: str | None = None) -> tuple[list, bool]:
    """The inputs of a ``predict`` call as a list, and whether ``raw`` was one single input.

    A string, a path, a PIL image, an array of at most 3 dimensions (``H×W``, ``H×W×C``) or a tensor of at
    most 3 (``C×H×W``) is one input; a 4-D array or tensor is a batch of images. A DataFrame, dict or
    datasets.Dataset gives its ``column`` (the one the model was trained on), else its ``"text"`` column.
    Anything else iterable (list, tuple, Series, array of strings, generator) is a collection.
    """
    import torch

    from .readers import as_table, find_column

    if isinstance(raw, (str, os.PathLike)) or type(raw).__module__.startswith("PIL."):
        return [raw], True
    if is_array(raw) or isinstance(raw, torch.Tensor):
        if is_array(raw) and raw.dtype.kind in "OUS":
            if raw.ndim > 1:
                raise InputError(f"predict got a {raw.ndim}-D array of strings; pass a 1-D array or a list.")
            return ([raw.item()], True) if raw.ndim == 0 else (raw.tolist(), False)
        if raw.ndim == 4 or raw.ndim == 1:
            return list(raw), False
        return [raw], True
    table = as_table(raw)
    if table is not None:
        what, columns, get, _ = table
        for name in (column, "text"):
            if name is not None and any(str(c).lstrip("\ufeff").strip() == str(name) for c in columns):
                return get(find_column(columns, name, what)), False
        raise InputError(f"{what} has no column {column or 'text'!r} to predict on; its columns are "
                         f"{[str(c) for c in columns]}: pass the column itself, e.g. model.predict(df['review']).")
    if isinstance(raw, bytes) or not isinstance(raw, Iterable):
        raise InputError(f"predict takes one input (a string, an image) or a collection of them (a list, a "
                         f"Series, an array, a generator); got a {type(raw).__name__}.")
    return list(raw), False
