"""Self-supervised word vectors from a raw text corpus: word2vec, fastText and GloVe.

Each trainer streams a plain UTF-8 corpus (one document per line) from disk, tokenises it exactly as the
word-vector backbones do, and writes a file the matching backbone source loads::

    from transferkit.backbones.word_vectors.training import train_word2vec, train_fasttext, train_glove
    import transferkit as tk

    train_word2vec("corpus.txt", "vectors/w2v.bin")   # → tk.load_backbone("word2vec:vectors/w2v.bin")
    train_fasttext("corpus.txt", "vectors/ft.bin")    # → tk.load_backbone("fasttext:vectors/ft.bin")
    train_glove("corpus.txt", "vectors/glove.txt")    # → tk.load_backbone("glove:vectors/glove.txt")

Word2vec and fastText are gensim's implementations; GloVe (which gensim lacks) is in
:mod:`.glove_training`. Files are written atomically (:func:`transferkit.files.atomic_path`): a reader sees
the old file or the complete new one. (The old path ``transferkit.tasks.word_vectors`` re-exports this module.)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from transferkit.data.corpus import check_vocabulary, open_corpus
from transferkit.files import atomic_path

from .glove_training import build_cooccurrence, fit_glove, train_glove

__all__ = ["build_cooccurrence", "fit_glove", "train_fasttext", "train_glove", "train_word2vec"]

logger = logging.getLogger(__name__)

MAX_SENTENCE = 10_000  # gensim's MAX_WORDS_IN_BATCH: longer sentences would be silently truncated


def default_workers() -> int:
    """Worker threads for gensim: the CPU cores this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def train_word2vec(corpus_path: str | os.PathLike, output_path: str | os.PathLike, *, vector_size: int = 100,
                   window: int = 5, min_count: int = 5, epochs: int = 5, sg: int = 0, workers: int | None = None,
                   seed: int = 0, progress: bool = True, **gensim_kwargs: Any) -> Path:
    """Train word2vec on a text corpus and write the vectors in word2vec's C binary format.

    Word2vec (Mikolov et al. 2013, "Efficient Estimation of Word Representations in Vector Space",
    arXiv 1301.3781; "Distributed Representations of Words and Phrases and their Compositionality",
    arXiv 1310.4546) learns a vector per word by predicting words from their context (CBOW, ``sg=0``) or
    the context from the word (skip-gram, ``sg=1``) with negative sampling. This runs gensim's
    implementation over a stream that re-reads the corpus on each epoch.

    Args:
        corpus_path: UTF-8 text, one document per line; tokenised like the ``word2vec:`` backbone.
        output_path: the ``.bin`` file to write; load it with ``load_backbone("word2vec:PATH")``.
        vector_size: dimension of the vectors.
        window: maximum distance between the predicted and the context word.
        min_count: words rarer than this are dropped.
        epochs: passes over the corpus.
        sg: 1 for skip-gram, 0 for CBOW.
        workers: training threads (default: the available cores, at most 8). Results are reproducible
            only with ``workers=1``.
        seed: random seed.
        progress: show a progress bar with words/s per epoch (and log it).
        **gensim_kwargs: any other ``gensim.models.Word2Vec`` argument (``negative``, ``sample``, ``alpha``...).

    Returns:
        ``output_path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: the corpus is missing, empty, not UTF-8, or no word occurs ``min_count`` times.
    """
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=vector_size, window=window, min_count=min_count, sg=sg, seed=seed,
                     workers=workers or default_workers(), **gensim_kwargs)
    model = _train(model, corpus_path, epochs, progress, "word2vec")
    output = Path(output_path)
    with atomic_path(output) as tmp:
        model.wv.save_word2vec_format(str(tmp), binary=True)
    return output


def train_fasttext(corpus_path: str | os.PathLike, output_path: str | os.PathLike, *, vector_size: int = 100,
                   window: int = 5, min_count: int = 5, epochs: int = 5, sg: int = 0, workers: int | None = None,
                   seed: int = 0, progress: bool = True, min_n: int = 3, max_n: int = 6, bucket: int = 200_000,
                   **gensim_kwargs: Any) -> Path:
    """Train fastText on a text corpus and write a Facebook fastText ``.bin`` model.

    FastText (Bojanowski et al. 2017, "Enriching Word Vectors with Subword Information", arXiv 1607.04606)
    is word2vec where a word's vector is the sum of its vector and the vectors of its character n-grams
    (``min_n``..``max_n`` characters, hashed into ``bucket`` rows), so words never seen in training still
    get a vector from their n-grams. This runs gensim's implementation and saves with
    ``gensim.models.fasttext.save_facebook_model``; ``load_backbone("fasttext:PATH")`` reads it with its
    subword vectors.

    Args:
        corpus_path, output_path, vector_size, window, min_count, epochs, sg, workers, seed, progress:
            as for :func:`train_word2vec`.
        min_n, max_n: shortest and longest character n-grams.
        bucket: rows of the n-gram hash table. Facebook's default is 2,000,000 (800 MB at 100 dimensions);
            200,000 keeps files and backbones ten times smaller with little loss on corpora below ~100M
            tokens. Pass ``bucket=2_000_000`` for Facebook's setting.
        **gensim_kwargs: any other ``gensim.models.FastText`` argument.

    Returns:
        ``output_path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: the corpus is missing, empty, not UTF-8, or no word occurs ``min_count`` times.
    """
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    model = FastText(vector_size=vector_size, window=window, min_count=min_count, sg=sg, seed=seed,
                     workers=workers or default_workers(), min_n=min_n, max_n=max_n, bucket=bucket,
                     **gensim_kwargs)
    model = _train(model, corpus_path, epochs, progress, "fasttext")
    output = Path(output_path)
    with atomic_path(output) as tmp:
        save_facebook_model(model, str(tmp))
    return output


def _train(model, corpus_path, epochs: int, progress: bool, name: str):
    """Build the vocabulary and train a gensim Word2Vec/FastText model on a streamed corpus."""
    corpus = open_corpus(corpus_path, max_length=MAX_SENTENCE)
    start = time.perf_counter()
    model.build_vocab(corpus_iterable=corpus, keep_raw_vocab=True)
    raw = model.raw_vocab
    check_vocabulary(corpus.path, len(model.wv), model.corpus_total_words, len(raw), model.min_count,
                     max(raw.values(), default=0))
    model.raw_vocab = {}  # only needed for the message above
    logger.info("%s: vocabulary of %d words from %d tokens in %d documents (%.1fs)", name, len(model.wv),
                model.corpus_total_words, model.corpus_count, time.perf_counter() - start)
    callback = _EpochProgress(name, epochs, model.corpus_total_words, progress)
    try:
        model.train(corpus_iterable=corpus, total_examples=model.corpus_count,
                    total_words=model.corpus_total_words, epochs=epochs, callbacks=[callback])
    finally:
        callback.close()
    return model


class _EpochProgress:
    """gensim callback: a tqdm bar over epochs and a log line with words/s after each."""

    def __init__(self, name: str, epochs: int, words: int, show: bool):
        from tqdm.auto import tqdm

        self.name, self.epochs, self.words = name, epochs, words
        self.bar = tqdm(total=epochs, desc=f"{name} epochs", unit="epoch", disable=not show, leave=False)
        self.epoch = 0
        self.started = time.perf_counter()

    def on_train_begin(self, model) -> None:
        pass

    def on_epoch_begin(self, model) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, model) -> None:
        self.epoch += 1
        rate = self.words / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} words/s")
        self.bar.update(1)
        logger.info("%s: epoch %d/%d, %.0f words/s", self.name, self.epoch, self.epochs, rate)

    def on_train_end(self, model) -> None:
        pass

    def close(self) -> None:
        self.bar.close()

