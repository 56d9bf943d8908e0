"""Backbones: pretrained networks plus their preprocessing, under one contract (see :class:`Backbone`)."""

from . import hf, scratch, vision, word_vectors  # noqa: F401  (registers the sources; heavy libraries load lazily)
from .base import Backbone, Features
from .registry import list_backbones, load_backbone, register_backbone, register_source

__all__ = ["Backbone", "Features", "load_backbone", "list_backbones", "register_backbone", "register_source"]
