"""Moved: text corpora live in :mod:`transferkit.data.text_corpus`; this path re-exports them."""

from transferkit.data.text_corpus import CorpusError, SentencePairs, TextCorpus

__all__ = ["CorpusError", "SentencePairs", "TextCorpus"]
