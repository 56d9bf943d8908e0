"""Segmentation data: images with a class-index mask each, from folders, COCO JSON or Python pairs.

Forms :func:`load_masked` reads:

* a folder holding ``images/`` and ``masks/`` whose files share their stems (``images/tile_03.jpg`` ↔
  ``masks/tile_03.png``); every image needs its mask and every mask its image;
* a COCO JSON file (``instances_*.json``): ``images`` (``file_name`` relative to the JSON's folder, or to
  ``images/`` beside it), ``annotations`` with polygon or RLE ``segmentation`` and ``category_id``, and
  ``categories``; each image's mask paints its annotations' classes (in file order, a later one over an
  earlier one) on background, class 0. Rasterised with ``pycocotools``;
* a list of ``(image, mask)`` pairs: images in any form the backbones read (path, PIL, array, tensor),
  masks as paths or ``H×W`` integer / boolean arrays or tensors.

A mask is a class index per pixel: a palette (``P``) PNG gives its indices, a greyscale (``L``, ``I;16``,
``I``, ``1``) image its values; an RGB file whose three channels are equal counts as greyscale, any other
colour mask is refused (convert it to a palette or index PNG). :data:`IGNORE` (255, the VOC
convention for "void" borders) marks pixels that are neither scored nor learnt from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import DataError, LabelError

from .common import IMAGE_SUFFIXES, first, is_array, short

IGNORE = 255  # mask value of pixels that are not scored (VOC's void)


class MaskError(DataError):
    """A mask that cannot be read or does not fit its image."""


@dataclass(frozen=True)
class MaskedImage:
    """One segmentation example: the image, its mask (a path, an array, or COCO annotations to paint) and
    where it came from, for messages."""

    image: Any
    mask: Any
    origin: str


@dataclass(frozen=True)
class CocoMask:
    """The annotations of one COCO image, painted into a mask when read (:func:`read_mask`)."""

    height: int
    width: int
    shapes: tuple  # ((segmentation, class index), ...)


def load_masked(source: Any) -> tuple[list[MaskedImage], list[str] | None]:
    """The examples of ``source`` (see the module docstring) and the class names it defines (COCO: its
    categories after ``"background"``; the other forms define none).

    Raises:
        DataError: a missing folder or file, images without masks or masks without images, an empty
            source, an unreadable COCO file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _folder(path), None
        if path.suffix.lower() == ".json" and path.is_file():
            return _coco(path)
        raise DataError(f"segmentation data {str(path)!r} is neither a folder holding images/ and masks/ nor a "
                        "COCO JSON file" + ("" if path.exists() else " (it does not exist)") + ".")
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("the segmentation data is an empty list: give (image, mask) pairs.")
        out = []
        for i, item in enumerate(source):
            if isinstance(item, MaskedImage):
                out.append(item)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                out.append(MaskedImage(item[0], item[1], f"pair {i}"))
            else:
                raise DataError(f"segmentation pair {i} is {short(item)}; give (image, mask) pairs.")
        return out, None
    raise DataError(f"segmentation data must be a folder, a COCO JSON file or a list of (image, mask) pairs; got "
                    f"{short(source)}.")


def _files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in files:
                raise DataError(f"{folder} holds two files with the stem {p.stem!r} ({files[p.stem].name}, {p.name}): "
                                "the stem pairs an image with its mask, so keep one.")
            files[p.stem] = p
    return files


def _folder(root: Path) -> list[MaskedImage]:
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"segmentation folder {str(root)!r} needs images/ and masks/ sub-folders (files paired by "
                            f"stem); {d.name}/ is missing.")
    images, masks = _files(images_dir), _files(masks_dir)
    if not images:
        raise DataError(f"{images_dir} holds no image files.")
    lonely = sorted(set(images) ^ set(masks))
    if lonely:
        which = [f"images/{images[s].name} (no mask)" if s in images else f"masks/{masks[s].name} (no image)"
                 for s in lonely]
        raise DataError(f"{len(lonely)} file(s) in {root} have no partner of the same stem: {first(which)}. "
                        "Every image needs its mask.")
    return [MaskedImage(str(images[s]), str(masks[s]), f"{root.name}/images/{images[s].name}") for s in images]


def _coco(path: Path) -> tuple[list[MaskedImage], list[str]]:
    from .coco import image_file, origin, read_coco

    images, annotations, categories = read_coco(path)
    index = {c["id"]: i + 1 for i, c in enumerate(categories)}
    out = []
    for im in images:
        shapes = []
        for a in annotations.get(im["id"], []):
            if not a.get("segmentation"):
                raise DataError(f"{path}: annotation {a['id']} has no segmentation (polygons or RLE).")
            shapes.append((a["segmentation"], index[a["category_id"]]))
        mask = CocoMask(int(im["height"]), int(im["width"]), tuple(shapes))
        out.append(MaskedImage(image_file(path, im), mask, origin(path, im)))
    return out, ["background"] + [str(c["name"]) for c in categories]


def read_mask(mask: Any, origin: str) -> np.ndarray:
    """A mask as an ``H×W`` ``int64`` array of class indices (see the module docstring for the forms).

    Raises:
        MaskError: an unreadable file, a colour mask, a mask that is not 2-D, or non-integer values.
    """
    if isinstance(mask, CocoMask):
        return _paint(mask, origin)
    if isinstance(mask, (str, os.PathLike)):
        return _mask_file(Path(mask), origin)
    if type(mask).__module__.startswith("PIL."):
        return _mask_image(mask, origin)
    if hasattr(mask, "detach"):  # a tensor
        mask = mask.detach().cpu().numpy()
    if is_array(mask):
        arr = np.asarray(mask)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise MaskError(f"{origin}: the mask is an array of shape {arr.shape}; a mask is H×W class indices.")
        if arr.dtype == bool:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise MaskError(f"{origin}: the mask holds non-integer values ({arr.dtype}); a mask holds class "
                                "indices.")
        return arr.astype(np.int64)
    raise MaskError(f"{origin}: the mask is {short(mask)}; give a path, a PIL image or an H×W integer array.")


def _mask_file(path: Path, origin: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return _mask_image(im, f"{origin} (mask {path.name})")
    except MaskError:
        raise
    except Exception as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile
            except ImportError:
                raise MaskError(f"{origin}: PIL cannot read the mask {path} ({e}); `pip install tifffile` reads "
                                "more TIFF kinds.") from e
            return read_mask(tifffile.imread(path), f"{origin} (mask {path.name})")
        raise MaskError(f"{origin}: cannot read the mask {path} ({type(e).__name__}: {e}).") from e


def _mask_image(im: Any, origin: str) -> np.ndarray:
    if im.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.int64)
    if im.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(im.convert("RGB"))
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].astype(np.int64)
        raise MaskError(f"{origin}: the mask is a colour ({im.mode}) image; a mask holds a class index per pixel: "
                        "save it as a palette (P) or greyscale index PNG (PIL: Image.fromarray(indices.astype('uint8'))).")
    raise MaskError(f"{origin}: the mask has PIL mode {im.mode!r}; give a palette or greyscale index image.")


def _paint(mask: CocoMask, origin: str) -> np.ndarray:
    try:
        from pycocotools import mask as coco_mask
    except ImportError as e:
        raise DataError("COCO segmentation masks are rasterised with pycocotools: `pip install pycocotools` "
                        "(or `pip install 'transferkit[vision]'`).") from e
    out = np.zeros((mask.height, mask.width), dtype=np.int64)
    for segmentation, cls in mask.shapes:
        try:
            if isinstance(segmentation, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
                rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, mask.height, mask.width))
            elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                rle = coco_mask.frPyObjects(segmentation, mask.height, mask.width)
            else:
                rle = segmentation
            out[coco_mask.decode(rle).astype(bool)] = cls
        except Exception as e:
            raise MaskError(f"{origin}: a segmentation cannot be rasterised ({type(e).__name__}: {e}).") from e
    return out


def check_mask_values(values: np.ndarray, num_classes: int, origin: str) -> None:
    """Refuse class indices outside ``0..num_classes-1`` (``IGNORE`` is allowed).

    Raises:
        LabelError: naming the example and the unknown values.
    """
    bad = sorted(int(v) for v in np.unique(values) if v != IGNORE and not 0 <= v < num_classes)
    if bad:
        raise LabelError(f"{origin}: the mask holds class indices {first([str(b) for b in bad])}, not in the head's "
                         f"{num_classes} classes (0..{num_classes - 1}; {IGNORE} = ignored). Give the head all the "
                         "classes (Segmentation(labels=[...])), or fix the mask.")


def mask_sizes_match(image_size: Sequence[int], mask: np.ndarray, origin: str) -> None:
    """Refuse a mask whose ``H×W`` differs from its image's.

    Raises:
        MaskError: naming the example and both sizes.
    """
    if tuple(mask.shape) != tuple(image_size):
        raise MaskError(f"{origin}: the mask is {mask.shape[0]}×{mask.shape[1]} pixels but its image is "
                        f"{image_size[0]}×{image_size[1]}; a mask labels every pixel of its image, at the same size.")
