"""Moved: the word2vec and fastText trainers live in :mod:`transferkit.backbones.word_vectors.training`
(GloVe in :mod:`transferkit.backbones.word_vectors.glove_training`); this path re-exports them."""

from transferkit.backbones.word_vectors.training import (MAX_SENTENCE, build_cooccurrence, default_workers, fit_glove,
                                                         train_fasttext, train_glove, train_word2vec)
from transferkit.data.corpus import LineCorpus

__all__ = ["MAX_SENTENCE", "LineCorpus", "build_cooccurrence", "default_workers", "fit_glove", "train_fasttext",
           "train_glove", "train_word2vec"]
