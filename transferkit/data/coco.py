"""Reading COCO JSON files (https://cocodataset.org/#format-data), shared by the segmentation and detection readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transferkit.errors import DataError, LabelError


def read_coco(path: Path) -> tuple[list[dict], dict[Any, list[dict]], list[dict]]:
    """A COCO file's ``images``, its ``annotations`` grouped by ``image_id`` (file order kept), and ``categories``.

    Raises:
        DataError: the file cannot be read as COCO JSON, lists no images, or repeats a category id.
        LabelError: an annotation's ``category_id`` is not one of the categories.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"cannot read {path} as COCO JSON ({type(e).__name__}: {e}); it needs 'images', "
                        "'annotations' and 'categories'.") from e
    if not images:
        raise DataError(f"{path} lists no images.")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: category ids repeat: {ids}.")
    per_image: dict[Any, list[dict]] = {}
    for n, a in enumerate(annotations):
        if a.get("category_id") not in ids:
            raise LabelError(f"{path}: annotation {a.get('id', n)} has category_id {a.get('category_id')!r}, not one "
                             f"of the categories {sorted(ids)}.")
        per_image.setdefault(a.get("image_id"), []).append({**a, "id": a.get("id", n)})
    return images, per_image, categories


def image_file(path: Path, image: dict) -> str:
    """Where a COCO ``images`` entry's ``file_name`` is: absolute, relative to the JSON's folder, or in ``images/``
    beside it."""
    file = Path(image["file_name"])
    if file.is_absolute() or (path.parent / file).exists():
        return str(file if file.is_absolute() else path.parent / file)
    return str(path.parent / "images" / file)


def origin(path: Path, image: dict) -> str:
    """How messages name a COCO image."""
    return f"{path.name} image {image['id']} ({image['file_name']})"
