"""Backbones: pretrained networks plus their preprocessing, under one contract (see :class:`Backbone`).

``backbone.feature_info`` (:class:`FeatureInfo`, with one :class:`Stage` per multi-scale stage) describes
the features before any forward pass; :mod:`.pooling` (:class:`Pooling`, :func:`pooling_for`) turns tokens
or spatial maps into the pooled vector.
"""

from . import hf, scratch, smollm2, stack as _stack, vision, word_vectors  # noqa: F401  (registers the sources; heavy libraries load lazily)
from .base import Backbone, FeatureInfo, Features, Stage
from .pooling import POOLINGS, Pooling, pooling_for
from .registry import list_backbones, load_backbone, register_backbone, register_source
from .stack import stack

__all__ = ["Backbone", "FeatureInfo", "Features", "POOLINGS", "Pooling", "Stage", "list_backbones", "load_backbone",
           "pooling_for", "register_backbone", "register_source", "stack"]
