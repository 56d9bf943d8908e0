"""Word-vector pretraining: word2vec, fastText (gensim) and GloVe (ours) from a streamed corpus."""

from __future__ import annotations

import collections.abc
import os

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.errors import DataError
from transferkit.tasks import word_vectors as wv
from transferkit.tasks.corpus import LineCorpus
from transferkit.tasks.glove import Cooccurrence, build_cooccurrence, fit_glove

TOPICS = [["cat", "dog", "pet", "fur", "paw", "vet"], ["stock", "market", "bank", "trade", "price", "fund"],
          ["goal", "team", "match", "score", "coach", "league"], ["rain", "cloud", "storm", "wind", "snow", "sun"]]


@pytest.fixture(scope="module")
def topic_corpus(tmp_path_factory) -> str:
    """400 lines, each 15 words drawn from one of four topics: words of a topic co-occur, others never."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "topics.txt"
    lines = [" ".join(rng.choice(TOPICS[k % 4], 15)) for k in range(400)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def mixed_topic_corpus(tmp_path_factory) -> str:
    """Like ``topic_corpus`` but 3 of every 15 words come from any topic: pairs across topics co-occur too, less.

    GloVe fits only the non-zero co-occurrences, so on ``topic_corpus`` (uniform counts inside a topic, none
    across) its biases alone fit every entry and the vectors need not separate the topics. Here they must.
    """
    rng = np.random.default_rng(0)
    words = [w for topic in TOPICS for w in topic]
    lines = []
    for k in range(400):
        line = list(rng.choice(TOPICS[k % 4], 15))
        for position in rng.choice(15, 3, replace=False):
            line[position] = rng.choice(words)
        lines.append(" ".join(line))
    path = tmp_path_factory.mktemp("corpus") / "mixed_topics.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def embedding(backbone, word: str) -> np.ndarray:
    index = backbone.preprocessor.vocab.index(word) + 1  # row 0 is padding
    return backbone.encoder.embeddings.weight[index].detach().numpy()


def cosine_gap(vectors: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean cosine similarity of word pairs within a topic, and across topics."""
    within, across = [], []
    for a, words_a in enumerate(TOPICS):
        for b, words_b in enumerate(TOPICS):
            for u in words_a:
                for v in words_b:
                    if u < v or a != b:
                        x, y = vectors[u], vectors[v]
                        (within if a == b else across).append(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    return float(np.mean(within)), float(np.mean(across))


# --- corpus streaming -------------------------------------------------------------------------------------

def test_corpus_tokenises_like_the_backbone(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("The Cat's hat, RED.\n\n  \nsecond   line\n", encoding="utf-8")
    assert list(LineCorpus(path)) == [["the", "cat's", "hat", ",", "red", "."], ["second", "line"]]
    assert list(LineCorpus(path, max_length=4)) == [["the", "cat's", "hat", ","], ["red", "."], ["second", "line"]]


def test_corpus_streams_and_rereads_the_file_on_every_pass(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"first line\nsecond line\n\xff broken\n")
    corpus = LineCorpus(path)
    # Not a materialised list: no length, no indexing, an iterator per pass.
    assert not isinstance(corpus, collections.abc.Sequence) and not hasattr(corpus, "__len__")
    stream = iter(corpus)
    assert iter(stream) is stream
    # Lazy: the first lines come out before the undecodable third line is read.
    assert next(stream) == ["first", "line"] and next(stream) == ["second", "line"]
    with pytest.raises(DataError, match="line 3"):
        next(stream)
    # Re-opened per pass: a second pass sees the file as it is now.
    path.write_text("new text\n", encoding="utf-8")
    assert list(corpus) == [["new", "text"]]


def test_gensim_trainers_iterate_the_stream_once_per_epoch_plus_vocabulary(tmp_path, topic_corpus, monkeypatch):
    passes = []
    original = LineCorpus.__iter__

    def counting_iter(self):
        passes.append(self.path)
        return original(self)

    monkeypatch.setattr(LineCorpus, "__iter__", counting_iter)
    wv.train_word2vec(topic_corpus, tmp_path / "w.bin", vector_size=8, min_count=1, epochs=3, workers=1,
                      progress=False)
    assert len(passes) == 1 + 3


# --- GloVe co-occurrences ----------------------------------------------------------------------------------

def test_cooccurrence_counts_match_a_hand_computation(tmp_path):
    path = tmp_path / "c.txt"
    # "x" occurs once: with min_count=2 it is removed before windowing, so "a x b" counts a-b at distance 1.
    path.write_text("a b c\na a\nc a x b\nb c\n", encoding="utf-8")
    co = build_cooccurrence(path, window=2, min_count=2)
    assert co.vocab == ["a", "b", "c"] and co.counts.tolist() == [4, 3, 3] and co.tokens == 11
    a, b, c = 0, 1, 2
    expected = np.zeros((3, 3))

    def add(u, v, d):
        expected[u, v] += 1 / d
        expected[v, u] += 1 / d

    add(a, b, 1), add(b, c, 1), add(a, c, 2)  # line 1: a b c
    add(a, a, 1)  # line 2: a a (both directions land on the diagonal)
    add(c, a, 1), add(a, b, 1), add(c, b, 2)  # line 3 without x: c a b
    add(b, c, 1)  # line 4; nothing crosses a line break
    np.testing.assert_allclose(co.matrix.toarray(), expected)
    assert np.allclose(co.matrix.toarray(), co.matrix.toarray().T)


def test_cooccurrence_chunking_does_not_change_counts(topic_corpus):
    whole = build_cooccurrence(topic_corpus, window=4, min_count=1)
    chunked = build_cooccurrence(topic_corpus, window=4, min_count=1, chunk_tokens=7)
    assert whole.vocab == chunked.vocab
    np.testing.assert_allclose(whole.matrix.toarray(), chunked.matrix.toarray(), rtol=1e-12)


# --- GloVe learning ----------------------------------------------------------------------------------------

def low_rank_cooccurrence(size: int = 40, rank: int = 3) -> tuple[Cooccurrence, np.ndarray]:
    """A dense co-occurrence matrix whose log is exactly ``u u^T + b_i + b_j``; returns it and its log."""
    from scipy import sparse

    rng = np.random.default_rng(0)
    u = rng.normal(0, 0.7, (size, rank))
    bias = rng.normal(1.0, 0.3, size)
    log_x = u @ u.T + bias[:, None] + bias[None, :]
    co = Cooccurrence([f"w{i}" for i in range(size)], np.ones(size, np.int64), sparse.csr_matrix(np.exp(log_x)))
    return co, log_x


def test_glove_reconstructs_a_low_rank_log_cooccurrence_matrix():
    co, log_x = low_rank_cooccurrence()
    model = fit_glove(co, vector_size=6, x_max=10.0, epochs=150, lr=0.1, batch_size=256, progress=False)
    predicted = model.word @ model.context.T + model.word_bias[:, None] + model.context_bias[None, :]
    residual = ((predicted - log_x) ** 2).mean()
    assert model.cost[-1] < 1e-3 * model.cost[0]
    assert residual < 1e-3 * log_x.var(), (residual, log_x.var())  # measured: 2e-5 (variance 0.8)


def test_glove_divergence_raises_instead_of_returning_garbage():
    co, _ = low_rank_cooccurrence()
    with pytest.raises(FloatingPointError, match="lower lr|Lower lr"):
        fit_glove(co, vector_size=6, x_max=10.0, epochs=5, lr=10.0, batch_size=256, progress=False)


def test_glove_learns_topic_clusters_and_loads_as_a_backbone(tmp_path, mixed_topic_corpus):
    options = dict(vector_size=10, window=5, min_count=1, epochs=40, batch_size=64, seed=1, progress=False)
    path = wv.train_glove(mixed_topic_corpus, tmp_path / "out" / "glove.txt", **options)
    assert path == tmp_path / "out" / "glove.txt" and os.listdir(path.parent) == ["glove.txt"]
    backbone = tk.load_backbone(f"glove:{path}")
    words = [w for topic in TOPICS for w in topic]
    vectors = {w: embedding(backbone, w) for w in words}
    within, across = cosine_gap(vectors)
    assert within > 0.9 and across < 0.0, (within, across)  # measured: about 0.98 and -0.32
    # The file holds exactly the trainer's word + context vectors (6 decimals).
    window, min_count = options.pop("window"), options.pop("min_count")
    model = fit_glove(build_cooccurrence(mixed_topic_corpus, window=window, min_count=min_count), **options)
    for word, vector in zip(model.vocab, model.vectors):
        np.testing.assert_allclose(embedding(backbone, word), vector, atol=2e-6)


def test_glove_repeated_words_in_a_batch_take_one_bounded_step():
    """A hub word in every entry of one batch. Adding up its per-entry steps, or (as this module once did)
    its gradients into one AdaGrad step, makes a step dozens of times too large: the cost explodes to 1e10."""
    from scipy import sparse

    rng = np.random.default_rng(0)
    size = 200
    x = np.zeros((size, size))
    x[0, 1:] = x[1:, 0] = rng.uniform(50, 150, size - 1)  # word 0 co-occurs with everything, often
    co = Cooccurrence([f"w{i}" for i in range(size)], np.ones(size, np.int64), sparse.csr_matrix(x))
    model = fit_glove(co, vector_size=8, epochs=30, lr=0.5, batch_size=len(x.nonzero()[0]), progress=False)
    assert all(np.isfinite(model.cost)) and model.cost[-1] < 0.05 * model.cost[0], model.cost
    assert np.all(np.diff(model.cost) <= 1e-9), model.cost  # one batch per epoch: the cost never goes up


# --- word2vec and fastText ---------------------------------------------------------------------------------

def test_word2vec_matches_gensim_and_loads_as_a_backbone(tmp_path, topic_corpus):
    from gensim.models import Word2Vec

    options = dict(vector_size=12, window=3, min_count=1, epochs=5, sg=1, workers=1, seed=3)
    path = wv.train_word2vec(topic_corpus, tmp_path / "w2v.bin", progress=False, **options)
    reference = Word2Vec([line.split() for line in open(topic_corpus, encoding="utf-8")], **options)
    backbone = tk.load_backbone(f"word2vec:{path}")
    assert sorted(backbone.preprocessor.vocab) == sorted(reference.wv.index_to_key)
    for word in ("cat", "market", "goal", "rain"):
        np.testing.assert_allclose(embedding(backbone, word), reference.wv[word], rtol=1e-5, atol=1e-6)
    # Lookup tokenises like training: upper case and punctuation still find the words.
    assert backbone.preprocess(["CAT Dog"])["attention_mask"].tolist() == [[1, 1]]


def test_fasttext_loads_with_subword_vectors_for_unseen_words(tmp_path, topic_corpus):
    from gensim.models import FastText

    options = dict(vector_size=12, window=3, min_count=1, epochs=5, workers=1, seed=3, bucket=1000, min_n=2, max_n=4)
    path = wv.train_fasttext(topic_corpus, tmp_path / "ft.bin", progress=False, **options)
    reference = FastText([line.split() for line in open(topic_corpus, encoding="utf-8")], **options)
    backbone = tk.load_backbone(f"fasttext:{path}")
    np.testing.assert_allclose(embedding(backbone, "storm"), reference.wv["storm"], rtol=1e-4, atol=1e-5)
    for unseen in ("storms", "catdog", "markets"):
        assert unseen not in reference.wv.key_to_index
        with torch.no_grad():
            pooled = backbone.encode([unseen]).numpy()[0]
        assert np.abs(pooled).sum() > 0
        np.testing.assert_allclose(pooled, reference.wv[unseen], rtol=1e-4, atol=1e-5)


# --- bad corpora -------------------------------------------------------------------------------------------

TRAINERS = {
    "word2vec": lambda src, out, **kw: wv.train_word2vec(src, out, workers=1, progress=False, epochs=1, **kw),
    "fasttext": lambda src, out, **kw: wv.train_fasttext(src, out, workers=1, progress=False, epochs=1,
                                                         bucket=100, **kw),
    "glove": lambda src, out, **kw: wv.train_glove(src, out, progress=False, epochs=1, **kw),
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\n   \n\t\n", "no tokens"),
    (b"good line\nstill good\ncaf\xe9 latin-1\n", "line 3 is not valid UTF-8"),
    (b"every word is rare here\n", "min_count=5"),
])
def test_bad_corpora_raise_data_errors_and_write_nothing(tmp_path, trainer, content, message):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    with pytest.raises(DataError, match=message):
        TRAINERS[trainer](corpus, tmp_path / "out" / "vectors")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
