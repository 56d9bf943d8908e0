"""Small helpers every data module shares: image suffixes and how examples are named in messages."""

from __future__ import annotations

from typing import Any, Sequence

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def first(items: Sequence[str], n: int = 10) -> str:
    """The first ``n`` items joined, and how many more there are."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def is_array(x: Any) -> bool:
    """Whether ``x`` is a numpy array (recognised without importing numpy)."""
    return type(x).__module__ == "numpy" and hasattr(x, "ndim") and hasattr(x, "dtype")


def short(x: Any) -> str:
    """``x`` for a message: its type and a repr cut at 60 characters."""
    text = repr(x)
    return f"a {type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"
