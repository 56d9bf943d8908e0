"""Moved: the word-vector corpus lives in :mod:`transferkit.data.corpus`; this path re-exports it."""

from transferkit.data.corpus import LineCorpus, check_vocabulary, corpus_tokenizer, count_words, open_corpus, utf8_lines

__all__ = ["LineCorpus", "check_vocabulary", "corpus_tokenizer", "count_words", "open_corpus", "utf8_lines"]
