"""Word vectors: the ``word2vec:``, ``glove:`` and ``fasttext:`` backbone sources, and their trainers.

* :mod:`.source` — the backbones: regex tokenizer, vocabulary lookup, fastText n-grams, pooling, the
  registered sources and ``glove:6B.50d``;
* :mod:`.formats` — a vectors file's format sniffed before gensim reads it;
* :mod:`.training` — ``train_word2vec`` / ``train_fasttext`` (gensim) on a streamed corpus, writing files
  these sources load; :mod:`.glove_training` — our GloVe (``build_cooccurrence``, ``fit_glove``,
  ``train_glove``). The trainers are imported only when asked for.
"""

from .formats import FASTTEXT_MAGIC, FORMATS, sniff_format
from .formats import _is_binary_word2vec  # noqa: F401  (private: kept importable from this path)
from .source import (PAD, POOLINGS, TOKEN_PATTERN, WordTokenizer, WordVectorEncoder, check_pooling, fasttext,
                     from_vectors, glove, glove_6b_50d, save_assets, word2vec)
from .source import _check_texts  # noqa: F401  (private: backbones/hf.py imports it from this path)

__all__ = ["FASTTEXT_MAGIC", "FORMATS", "PAD", "POOLINGS", "TOKEN_PATTERN", "WordTokenizer", "WordVectorEncoder",
           "check_pooling", "fasttext", "from_vectors", "glove", "glove_6b_50d", "save_assets", "sniff_format",
           "word2vec"]
