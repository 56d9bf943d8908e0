"""Moved: the GloVe trainer lives in :mod:`transferkit.backbones.word_vectors.glove_training`; this path
re-exports it."""

from transferkit.backbones.word_vectors.glove_training import (GRAD_CLIP, Cooccurrence, GloveModel, build_cooccurrence,
                                                               fit_glove, train_glove)

__all__ = ["GRAD_CLIP", "Cooccurrence", "GloveModel", "build_cooccurrence", "fit_glove", "train_glove"]
