"""Object-detection data: images with labelled boxes, from COCO JSON, Pascal VOC XML or CSV.

Forms :func:`load_boxes` reads:

* a COCO JSON file: ``images`` (``file_name`` relative to the JSON's folder, or to ``images/`` beside it),
  ``annotations`` with ``bbox`` ``[x, y, width, height]`` and ``category_id``, ``categories``. Crowd
  annotations (``iscrowd: 1``) are left out of training targets (torchvision's detection models learn from
  single objects only);
* a Pascal VOC folder: ``.xml`` files (``Annotations/`` or the folder itself) naming their image in
  ``<filename>`` (looked up in ``JPEGImages/``, ``images/`` or beside the XML), boxes in ``<bndbox>``;
* a CSV file with the columns ``image_path,xmin,ymin,xmax,ymax,label`` (DeepForest's and Keras-RetinaNet's
  format), paths relative to the CSV; a row with the box columns empty (or all 0) lists an image with no object;
* a list of ``(image, {"boxes": [[x1, y1, x2, y2], ...], "labels": [...]})`` pairs.

Boxes are ``x1, y1, x2, y2`` in pixels of the original image (VOC's 1-based corners are read as they are, the
usual practice). An image with no box is allowed: it teaches the model what background looks like.

Bad boxes are refused, naming the file and the box: ``x2 <= x1`` or ``y2 <= y1``, coordinates that are not
finite numbers, or boxes that leave the image (more than one pixel outside it, which is what a box drawn in
another image's coordinates looks like).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import DataError

from .common import IMAGE_SUFFIXES, first, short

TOLERANCE = 1.0  # pixels a box may leave its image by (rounding of annotation tools)


class BoxError(DataError):
    """A box that cannot be a box of its image."""


@dataclass(frozen=True)
class BoxedImage:
    """One detection example: the image, its boxes ``[N, 4]`` (x1, y1, x2, y2, float) and their class names."""

    image: Any
    boxes: np.ndarray
    labels: tuple
    origin: str


def load_boxes(source: Any) -> tuple[list[BoxedImage], list[str] | None]:
    """The examples of ``source`` (see the module docstring) and the class names it defines (COCO categories,
    in file order; the other forms: ``None``, names come from the labels seen).

    Raises:
        DataError: unreadable or empty annotation files, missing images or columns.
        BoxError: a box with ``x2 <= x1`` / ``y2 <= y1`` or non-finite coordinates.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _voc(path), None
        if path.suffix.lower() == ".json" and path.is_file():
            return _coco(path)
        if path.suffix.lower() in (".csv", ".tsv") and path.is_file():
            return _csv(path), None
        raise DataError(f"detection data {str(path)!r} is not a COCO JSON file, a CSV file or a folder of Pascal VOC "
                        "XML files" + ("" if path.exists() else " (it does not exist)") + ".")
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("the detection data is an empty list: give (image, {'boxes': ..., 'labels': ...}) pairs.")
        out = []
        for i, item in enumerate(source):
            if isinstance(item, BoxedImage):
                out.append(item)
                continue
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
                raise DataError(f"detection pair {i} is {short(item)}; give (image, {{'boxes': [[x1, y1, x2, y2], "
                                "...], 'labels': [...]}}) pairs.")
            target = item[1]
            boxes = target.get("boxes", [])
            labels = target.get("labels", [])
            out.append(_example(item[0], boxes, labels, f"pair {i}"))
        return out, None
    raise DataError(f"detection data must be a COCO JSON file, a VOC folder, a CSV file or a list of pairs; got "
                    f"{short(source)}.")


def _example(image: Any, boxes: Any, labels: Sequence, origin: str) -> BoxedImage:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    if len(arr) != len(labels):
        raise BoxError(f"{origin}: {len(arr)} boxes but {len(labels)} labels; give one label per box.")
    for k, (x1, y1, x2, y2) in enumerate(arr):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise BoxError(f"{origin}: box {k} {[x1, y1, x2, y2]} has a coordinate that is not a finite number.")
        if x2 <= x1 or y2 <= y1:
            raise BoxError(f"{origin}: box {k} [x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}] has x2 <= x1 or y2 <= y1; "
                           "boxes are (x1, y1, x2, y2) corners with x2 > x1 and y2 > y1 (COCO's [x, y, w, h] is "
                           "converted when read from COCO JSON).")
    return BoxedImage(image, arr.astype(np.float32), tuple(labels), origin)


def check_inside(example: BoxedImage, height: int, width: int) -> None:
    """Refuse boxes that leave their ``height × width`` image by more than :data:`TOLERANCE` pixels.

    Raises:
        BoxError: naming the example, the box and the image size.
    """
    b = example.boxes
    if not len(b):
        return
    outside = (b[:, 0] < -TOLERANCE) | (b[:, 1] < -TOLERANCE) | (b[:, 2] > width + TOLERANCE) | \
        (b[:, 3] > height + TOLERANCE)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise BoxError(f"{example.origin}: {int(outside.sum())} box(es) leave the {width}×{height} image, e.g. box {k} "
                       f"{[round(float(v), 1) for v in b[k]]} (x1, y1, x2, y2); boxes must lie within their image "
                       "(were they drawn on another image, or in another scale?).")


def _coco(path: Path) -> tuple[list[BoxedImage], list[str]]:
    from .coco import image_file, origin, read_coco

    images, annotations, categories = read_coco(path)
    names = {c["id"]: str(c["name"]) for c in categories}
    out = []
    for im in images:
        boxes, labels = [], []
        for a in annotations.get(im["id"], []):
            if a.get("iscrowd", 0):
                continue
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise BoxError(f"{path}: annotation {a['id']} has bbox {bbox!r}; COCO boxes are [x, y, width, height].")
            x, y, w, h = (float(v) for v in bbox)
            boxes.append([x, y, x + w, y + h])
            labels.append(names[a["category_id"]])
        out.append(_example(image_file(path, im), boxes, labels, origin(path, im)))
    return out, list(names.values())


def _voc(folder: Path) -> list[BoxedImage]:
    import xml.etree.ElementTree as ET

    xml_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    files = sorted(p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no Pascal VOC .xml files (looked in {xml_dir}).")
    out = []
    for xml in files:
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as e:
            raise DataError(f"cannot read {xml} as Pascal VOC XML ({e}).") from e
        name = (root.findtext("filename") or "").strip()
        image = _find_image(folder, xml, name)
        boxes, labels = [], []
        for k, obj in enumerate(root.iter("object")):
            box = obj.find("bndbox")
            label = (obj.findtext("name") or "").strip()
            if box is None or not label:
                raise DataError(f"{xml.name}: object {k} lacks a <name> or a <bndbox>.")
            try:
                boxes.append([float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
            except (TypeError, ValueError) as e:
                raise BoxError(f"{xml.name}: object {k} has a <bndbox> without numeric xmin/ymin/xmax/ymax.") from e
            labels.append(label)
        out.append(_example(str(image), boxes, labels, xml.name))
    return out


def _find_image(folder: Path, xml: Path, name: str) -> Path:
    stems = [name] if name else []
    candidates = [d / n for n in stems for d in (folder / "JPEGImages", folder / "images", xml.parent, folder)]
    if not name:  # no <filename>: an image of the XML's stem beside it
        candidates = [xml.with_suffix(s) for s in sorted(IMAGE_SUFFIXES)]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{xml.name}: its image {name or xml.stem!r} is not in JPEGImages/, images/ or beside the XML.")


def _csv(path: Path) -> list[BoxedImage]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as CSV ({e}).") from e
    need = ["image_path", "xmin", "ymin", "xmax", "ymax", "label"]
    if not rows:
        raise DataError(f"{path} has no rows: a detection CSV has a header {','.join(need)} and a row per box.")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; a detection CSV has {','.join(need)} "
                        f"(it has {list(rows[0])}).")
    images: dict[str, list] = {}
    for n, row in enumerate(rows, start=2):
        key = row["image_path"].strip()
        if not key:
            raise DataError(f"{path} line {n}: image_path is empty.")
        coords = [row[c].strip() if row[c] is not None else "" for c in need[1:5]]
        entry = images.setdefault(key, [])
        if all(c in ("", "0", "0.0") for c in coords):
            continue  # an image without objects
        try:
            box = [float(c) for c in coords]
        except ValueError as e:
            raise BoxError(f"{path} line {n}: the box {coords} is not four numbers.") from e
        entry.append((box, row["label"].strip(), n))
    out = []
    for key, rows_of in images.items():
        image = Path(key) if Path(key).is_absolute() else path.parent / key
        if not image.is_file():
            raise DataError(f"{path}: image {key!r} (line {rows_of[0][2] if rows_of else '?'}) does not exist "
                            f"(paths are relative to the CSV's folder).")
        lines = f"lines {first([str(r[2]) for r in rows_of], 5)}" if rows_of else "no objects"
        out.append(_example(str(image), [b for b, _, _ in rows_of], [c for _, c, _ in rows_of],
                            f"{path.name} {key} ({lines})"))
    return out
