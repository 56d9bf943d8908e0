"""What every supervised task checks before training: inputs that fit the backbone's modality, readable
image files, and the table column the head learns to read."""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn

from transferkit.backbones.images import check_image_files
from transferkit.data import check_inputs


def check_examples(model: nn.Module, inputs: Sequence[Any], origins: Sequence[str],
                   input_column: str | None = None) -> None:
    """Refuse, before epoch 1, inputs of the wrong modality and unreadable image files (naming them), and
    record on the head the table column its inputs came from (``predict(DataFrame)`` reads the same one).

    Raises:
        ModalityError: texts for an image backbone, images or image paths for a text backbone.
        InputError: a text is empty; :class:`~transferkit.errors.ImageError`: an image file cannot be opened.
    """
    modality = getattr(getattr(model, "backbone", None), "modality", None)
    check_inputs(inputs, modality, origins)
    if modality == "image":
        files = [(x, o) for x, o in zip(inputs, origins) if isinstance(x, (str, os.PathLike))]
        check_image_files([x for x, _ in files], [o for _, o in files])
    head = getattr(model, "head", None)
    if head is not None and getattr(head, "input_column", "") is None and input_column is not None:
        head.input_column = input_column
