"""Unlabelled images for self-supervised pretraining: streamed folders and in-memory lists.

:class:`ImageFolderCorpus` walks a folder tree lazily and decodes each image only when it is read, so
memory does not grow with the number of images (a bounded shuffle buffer mixes the order).
:func:`unlabelled_images` is what every vision pretext task's ``examples(data)`` calls.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from transferkit.errors import DataError

from .common import IMAGE_SUFFIXES


class ImageFolderCorpus(IterableDataset):
    """Every image under a folder (recursively), decoded lazily and streamed.

    Files are found with a lazy directory walk (entries sorted within each directory, hidden entries
    skipped) and decoded to RGB PIL images one at a time, so memory is independent of the number of
    images. Order is mixed with a shuffle buffer of ``shuffle_buffer`` images, reseeded each pass
    (epoch); ``shuffle_buffer=0`` keeps the walk order. With several DataLoader workers each worker
    reads every n-th file.

    Args:
        path: a directory holding image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``,
            ``.webp``, ``.tif``, ``.tiff``, ``.ppm``, ``.pgm``), at any depth.
        shuffle_buffer: images held at once to mix the order.
        seed: seed of the shuffle (pass ``p`` of the corpus uses ``seed + p``).
        on_error: ``"raise"`` (default) a :class:`~transferkit.errors.DataError` naming a file that
            cannot be decoded, or ``"skip"`` it with a warning.

    Raises:
        DataError: the path does not exist, is not a directory, or holds no image file.
    """

    def __init__(self, path: str | os.PathLike, shuffle_buffer: int = 256, seed: int = 0, on_error: str = "raise"):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = Path(path)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.on_error = on_error
        self.passes = 0
        if not self.path.exists():
            raise DataError(f"image folder {str(self.path)!r} does not exist.")
        if not self.path.is_dir():
            raise DataError(f"{str(self.path)!r} is not a folder; pass a folder of images or a list of images.")
        if next(self.files(), None) is None:
            raise DataError(f"image folder {str(self.path)!r} holds no image files (looked recursively for "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))}).")

    def files(self) -> Iterator[Path]:
        """Image file paths in walk order, found lazily."""
        stack = [self.path]
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
            for entry in entries:
                if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    yield Path(entry.path)
            stack.extend(Path(e.path) for e in reversed(entries) if e.is_dir())

    def decode(self, path: Path):
        """One file as an RGB PIL image, or a DataError naming it."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as e:  # PIL raises many types for broken files
            raise DataError(f"cannot decode image file {str(path)!r} ({type(e).__name__}: {e}); remove or "
                            "replace it, or pass on_error='skip'.") from e

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(self.seed + self.passes)
        self.passes += 1
        buffer: list = []
        for i, path in enumerate(self.files()):
            if i % workers != worker:
                continue
            try:
                image = self.decode(path)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                warnings.warn(f"skipping: {e}", stacklevel=2)
                continue
            if self.shuffle_buffer <= 1:
                yield image
                continue
            buffer.append(image)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


def unlabelled_images(data: Any) -> list | ImageFolderCorpus:
    """What a vision pretext task trains on: a streamed folder, or an in-memory list of images.

    Args:
        data: a folder path (→ :class:`ImageFolderCorpus`), an :class:`ImageFolderCorpus`, a list of
            images (PIL images, numpy arrays ``H×W``/``H×W×C``, tensors ``C×H×W``, or file paths), or one
            array/tensor stacking ``N`` images (``N×H×W``, ``N×H×W×C`` numpy, ``N×C×H×W`` torch).

    Raises:
        DataError: the folder is missing or empty, or the list is empty.
    """
    if isinstance(data, ImageFolderCorpus):
        return data
    if isinstance(data, (str, os.PathLike)):
        return ImageFolderCorpus(data)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if data.ndim not in (3, 4):
            raise DataError(f"an array of images must be N×H×W or N×H×W×C (numpy) / N×C×H×W (torch); got shape "
                            f"{tuple(data.shape)}.")
        data = list(data)
    elif isinstance(data, dict) or not hasattr(data, "__iter__"):
        raise DataError(f"unlabelled images must be a folder, a list of images or an array; got {type(data).__name__}.")
    images = list(data)
    if not images:
        raise DataError("the list of images is empty: give at least one image.")
    return images


def typical_side(paths: Any, sample: int = 64) -> int | None:
    """The median longer side, in pixels, of the first ``sample`` image files of ``paths`` (an iterable of
    paths: only the headers are read), or ``None`` when none of them is a readable image file.

    What the small-data defaults size a network's input by (:func:`transferkit.trainer.auto.image_size`).
    """
    from PIL import Image

    sides = []
    for path in paths:
        if len(sides) >= sample:
            break
        if not isinstance(path, (str, os.PathLike)):
            continue
        try:
            with Image.open(path) as im:
                sides.append(max(im.size))
        except Exception:  # unreadable files are reported by the data readers, not here
            continue
    return int(np.median(sides)) if sides else None
