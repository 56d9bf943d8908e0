"""Unlabelled text streamed from disk for self-supervised pretraining.

File format (plain UTF-8):

* one sentence or document per line; leading/trailing whitespace is stripped;
* blank lines separate *documents*. For next-sentence / sentence-order prediction a document is a block of
  consecutive non-blank lines and each line is one sentence. For masked and causal language modelling
  every non-blank line is one training text and blank lines are skipped.

Nothing is held in memory but the current line (and, for sentence pairs, a bounded window of documents),
so a corpus may be larger than RAM. With several DataLoader workers each worker reads every line and keeps
its own share (line ``i`` goes to worker ``i % num_workers``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from transferkit.errors import DataError

from .corpus import utf8_lines


class CorpusError(DataError):
    """A text corpus is missing, empty or not UTF-8."""


def _check_corpus(path: Path) -> None:
    """Raise :class:`CorpusError` unless ``path`` is a readable UTF-8 file with a non-blank line.

    One pass in constant memory; a bad byte is reported by line number and absolute byte offset.
    """
    if not path.exists():
        raise CorpusError(f"text corpus {path}: no such file. Give a UTF-8 text file, one text per line.")
    if not path.is_file():
        raise CorpusError(f"text corpus {path}: not a file.")
    any_text = False
    for _, line in utf8_lines(path, CorpusError):  # the whole file: a bad byte anywhere is found now
        any_text = any_text or bool(line.strip())
    if not any_text:
        raise CorpusError(f"text corpus {path}: the file is empty (no non-blank line).")


def _lines(path: Path, worker_share: bool = True) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every line, blank ones included, of this worker's share."""
    info = get_worker_info() if worker_share else None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            if info is None or number % info.num_workers == info.id:
                yield number, line.strip()


def _shuffled(items, buffer: int, rng: random.Random):
    """Approximate shuffle with a bounded buffer (as tf.data / webdataset do): constant memory."""
    if buffer <= 1:
        yield from items
        return
    pool = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        i = rng.randrange(buffer)
        yield pool[i]
        pool[i] = item
    rng.shuffle(pool)
    yield from pool


class TextCorpus(IterableDataset):
    """Every non-blank line of a UTF-8 text file, streamed.

    Args:
        path: the text file.
        shuffle_buffer: lines held for an approximate shuffle (0: file order). Each pass draws a new order.
        seed: seed of the shuffle; pass ``e`` uses ``seed + e``.
        check: read the file once at construction to fail early on a missing, empty or non-UTF-8 file
            (constant memory). Without it the same errors are raised while iterating.

    Raises:
        CorpusError: (a :class:`~transferkit.errors.DataError`) for a missing or empty file, or bytes that
            are not UTF-8 (the message gives the line number and byte offset).
    """

    def __init__(self, path: str | os.PathLike, shuffle_buffer: int = 0, seed: int = 0, check: bool = True):
        super().__init__()
        self.path = Path(path)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self._passes = 0
        if check:
            _check_corpus(self.path)

    def __iter__(self) -> Iterator[str]:
        if not self.path.is_file():
            _check_corpus(self.path)
        rng = random.Random(self.seed + self._passes)
        self._passes += 1  # in a worker this counts only the worker's copy: the Trainer calls set_epoch
        texts = (line for _, line in self._checked_lines() if line)
        yield from _shuffled(texts, self.shuffle_buffer, rng)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle pass ``epoch`` next (the Trainer calls this: worker copies cannot count passes)."""
        self._passes = epoch

    def _checked_lines(self):
        try:
            yield from _lines(self.path)
        except UnicodeDecodeError:
            _check_corpus(self.path)  # re-read in bytes to say where
            raise

    def documents(self) -> Iterator[list[str]]:
        """Blocks of consecutive non-blank lines (the sentences of each document), in file order.

        Not split between workers: use :class:`SentencePairs` for that.
        """
        doc: list[str] = []
        for _, line in _lines(self.path, worker_share=False):
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc

    def __repr__(self) -> str:
        return f"TextCorpus({str(self.path)!r})"


class SentencePairs(IterableDataset):
    """Sentence pairs with labels for next-sentence prediction (BERT) or sentence-order prediction (ALBERT).

    For each pair of consecutive sentences ``(s[i], s[i+1])`` of a document one example ``(a, b, label)`` is
    made, with the convention of ``transformers.BertForPreTraining`` (label 0 = ``b`` really follows ``a``):

    * NSP (Devlin et al. 2019, arXiv:1810.04805): with probability 1/2 ``(s[i], s[i+1], 0)``, otherwise
      ``(s[i], r, 1)`` where ``r`` is a random sentence of *another* document;
    * SOP (``order=True``; Lan et al. 2019, ALBERT, arXiv:1909.11942): with probability 1/2
      ``(s[i], s[i+1], 0)``, otherwise the swapped ``(s[i+1], s[i], 1)``.

    Random sentences come from a window of ``window`` documents around the current one (constant memory;
    BERT's own data script also samples from the documents it has loaded). A new draw is made on every
    pass, so each epoch sees different negatives.

    Raises:
        CorpusError: for a bad file, or when no document has two sentences (NSP also needs two documents).
    """

    def __init__(self, path: str | os.PathLike, order: bool = False, seed: int = 0, window: int = 1000):
        super().__init__()
        self.corpus = TextCorpus(path)
        self.order = order
        self.seed = seed
        self.window = max(2, window)
        self._passes = 0
        self._check_structure()

    def _check_structure(self) -> None:
        docs, longest = 0, 0
        for doc in self.corpus.documents():
            docs, longest = docs + 1, max(longest, len(doc))
            if longest >= 2 and (self.order or docs >= 2):
                return
        what = "sentence-order" if self.order else "next-sentence"
        raise CorpusError(
            f"text corpus {self.corpus.path}: {what} prediction needs documents of at least two sentences "
            f"(one per line){'' if self.order else ' and at least two documents'}, separated by blank lines; "
            f"found {docs} document(s), the longest with {longest} sentence(s).")

    def _windows(self) -> Iterator[list[list[str]]]:
        """Consecutive windows of documents; a last window of one document is merged into the previous one."""
        previous, current = None, []
        for doc in self.corpus.documents():
            current.append(doc)
            if len(current) == self.window:
                if previous is not None:
                    yield previous
                previous, current = current, []
        if previous is not None and len(current) < 2:
            yield previous + current
        else:
            if previous is not None:
                yield previous
            if current:
                yield current

    def set_epoch(self, epoch: int) -> None:
        """Shuffle pass ``epoch`` next (the Trainer calls this: worker copies cannot count passes)."""
        self._passes = epoch

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        rng = random.Random(self.seed + self._passes)
        self._passes += 1  # in a worker this counts only the worker's copy: the Trainer calls set_epoch
        info = get_worker_info()
        n = 0
        for docs in self._windows():
            for d, doc in enumerate(docs):
                for i in range(len(doc) - 1):
                    example = self._pair(docs, d, i, rng)  # drawn by every worker so all share one RNG state
                    if info is None or n % info.num_workers == info.id:
                        yield example
                    n += 1

    def _pair(self, docs: list[list[str]], d: int, i: int, rng: random.Random) -> tuple[str, str, int]:
        a, b = docs[d][i], docs[d][i + 1]
        if rng.random() < 0.5:
            return a, b, 0
        if self.order:
            return b, a, 1
        if len(docs) < 2:  # the window holds one document only: keep the true pair
            return a, b, 0
        other = rng.randrange(len(docs) - 1)
        other += other >= d  # any document but this one
        return a, rng.choice(docs[other]), 1

    def __repr__(self) -> str:
        return f"SentencePairs({str(self.corpus.path)!r}, order={self.order})"
