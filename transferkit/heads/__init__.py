"""Heads: small modules from a backbone's ``Features`` to predictions, one module per task family.

The contract every head follows is in :mod:`transferkit.heads.base`. Heads are registered by name
(:func:`register_head`, backed by the one :class:`~transferkit.registry.Registry` helper) so that a saved
config rebuilds them (:func:`head_from_config`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from transferkit.registry import Registry

HEADS: Registry[Callable[..., nn.Module]] = Registry("head type")


def register_head(name: str):
    """Decorator registering a head class under ``name`` (used to rebuild heads from saved configs)."""

    def decorator(cls):
        HEADS.register(name, cls)
        cls.head_type = name
        return cls

    return decorator


def head_from_config(config: dict) -> nn.Module:
    """Rebuild a head from ``head.config``; an unknown type lists the close matches."""
    config = dict(config)
    return HEADS.get(config.pop("type"))(**config)


def list_heads(pattern: str = "*") -> list[str]:
    """The registered head types."""
    return HEADS.names(pattern)


from transferkit.heads.base import Head, check_needs  # noqa: E402  (after the registry they use)
from transferkit.heads.classification import Classification  # noqa: E402
from transferkit.heads.detection import Detection  # noqa: E402
from transferkit.heads.generation import Generation  # noqa: E402
from transferkit.heads.multilabel import MultiLabel  # noqa: E402
from transferkit.heads.pair import Pair  # noqa: E402
from transferkit.heads.qa import QuestionAnswering  # noqa: E402
from transferkit.heads.regression import Regression  # noqa: E402
from transferkit.heads.segmentation import Segmentation  # noqa: E402
from transferkit.heads.token_classification import TokenClassification  # noqa: E402

__all__ = ["Classification", "Detection", "Generation", "HEADS", "Head", "MultiLabel", "Pair", "QuestionAnswering", "Regression", "Segmentation", "TokenClassification", "check_needs", "head_from_config", "list_heads",
           "register_head"]
