"""Streaming token corpora for word-vector pretraining, and the corpus checks its trainers share.

A corpus is a plain UTF-8 text file with one document per line. :class:`LineCorpus` re-opens the file on
every pass and yields one token list per line, so training holds one line in memory at a time whatever
the corpus size. Tokens come from the same regular expression and lower-casing as the ``word2vec:``,
``glove:`` and ``fasttext:`` backbones (:data:`transferkit.backbones.word_vectors.TOKEN_PATTERN`), so the
words a trainer learns are exactly the words the backbone looks up.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from transferkit.errors import DataError


def corpus_tokenizer() -> Callable[[str], list[str]]:
    """The backbone's tokenizer (regex ``TOKEN_PATTERN``, lower-cased), without the token limit."""
    from transferkit.backbones.word_vectors import TOKEN_PATTERN, WordTokenizer  # here: data sits below backbones

    return WordTokenizer([], lowercase=True, max_tokens=sys.maxsize, pattern=TOKEN_PATTERN).tokenize


class LineCorpus:
    """A re-iterable stream of token lists, one per non-empty line of a UTF-8 text file.

    Each ``iter()`` re-opens the file and reads it lazily, line by line: nothing is materialised, so it
    can be passed to gensim (which iterates once to build the vocabulary and once per epoch).

    Args:
        path: the corpus file.
        max_length: documents longer than this are yielded in pieces of at most ``max_length`` tokens
            (gensim silently truncates sentences past 10,000 words); ``None`` keeps whole lines.

    Raises:
        DataError: on iteration, at the first line that is not valid UTF-8 (naming the line).
    """

    def __init__(self, path: str | os.PathLike, max_length: int | None = None):
        self.path = Path(path)
        self.max_length = max_length
        self._tokenize = corpus_tokenizer()

    def __iter__(self) -> Iterator[list[str]]:
        for tokens in self.lines():
            if not tokens:
                continue
            if self.max_length is None or len(tokens) <= self.max_length:
                yield tokens
            else:
                for start in range(0, len(tokens), self.max_length):
                    yield tokens[start: start + self.max_length]

    def lines(self) -> Iterator[list[str]]:
        """Token lists of every line, empty lines included (so callers can number lines)."""
        for _, text in utf8_lines(self.path):
            yield self._tokenize(text)

    def __repr__(self) -> str:
        return f"LineCorpus({str(self.path)!r})"


def utf8_lines(path: Path, error: type[DataError] = DataError) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text)`` of every line, read in constant memory.

    Raises:
        DataError (or ``error``): at the first byte that is not UTF-8, naming its line, byte offset and column.
    """
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}: line {number} is not valid UTF-8 (byte {raw[e.start]:#04x} at byte offset "
                            f"{offset + e.start} of the file, column {e.start + 1}: {e.reason}). Re-encode the "
                            "file as UTF-8, e.g. `iconv -f latin1 -t utf-8`.") from None
            offset += len(raw)
            yield number, text


def open_corpus(path: str | os.PathLike, max_length: int | None = None) -> LineCorpus:
    """A :class:`LineCorpus` for ``path`` after checking the file exists and is not empty."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"corpus {p} {what}: give a UTF-8 text file with one document per line.")
    if p.stat().st_size == 0:
        raise DataError(f"corpus {p} is empty: it needs at least one line of text.")
    return LineCorpus(p, max_length=max_length)


def count_words(corpus: LineCorpus) -> tuple[Counter, int]:
    """Word frequencies and the number of tokens, in one streaming pass."""
    counts: Counter = Counter()
    for tokens in corpus.lines():
        counts.update(tokens)
    total = sum(counts.values())
    if total == 0:
        raise DataError(f"corpus {corpus.path} has no tokens (only blank lines or whitespace).")
    return counts, total


def check_vocabulary(path: Path, kept: int, total_tokens: int, distinct: int, min_count: int,
                     top_count: int | None = None) -> None:
    """Raise :class:`DataError` when no word of the corpus reaches ``min_count``."""
    if total_tokens == 0:
        raise DataError(f"corpus {path} has no tokens (only blank lines or whitespace).")
    if kept == 0:
        top = f" (the most frequent occurs {top_count} times)" if top_count is not None else ""
        raise DataError(f"no word of corpus {path} occurs min_count={min_count} times{top}: {distinct} distinct "
                        f"words in {total_tokens} tokens. Lower min_count or give a larger corpus.")
