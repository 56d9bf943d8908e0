"""Moved: unlabelled images live in :mod:`transferkit.data.images`, the pixel helpers in
:mod:`transferkit.tasks.pixels`; this path re-exports them."""

from transferkit.data.images import ImageFolderCorpus, unlabelled_images
from transferkit.tasks.pixels import Pixels, probe

__all__ = ["ImageFolderCorpus", "Pixels", "probe", "unlabelled_images"]
