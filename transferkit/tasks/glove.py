"""GloVe: global vectors from a word co-occurrence matrix (Pennington, Socher & Manning 2014).

"GloVe: Global Vectors for Word Representation", EMNLP 2014, https://nlp.stanford.edu/pubs/glove.pdf;
reference implementation https://github.com/stanfordnlp/GloVe (``cooccur.c``, ``glove.c``).

Two steps, each usable on its own:

1. :func:`build_cooccurrence` streams the corpus twice: a vocabulary pass, then a counting pass that adds
   ``1/d`` to ``X[w, c]`` and ``X[c, w]`` for every pair of vocabulary words ``d <= window`` tokens apart on
   the same line (out-of-vocabulary tokens are removed first, as ``cooccur.c`` does). Pairs are gathered
   with numpy, a chunk of lines at a time, and summed into a ``scipy.sparse`` matrix, so memory grows with
   the number of distinct pairs, not with the corpus.
2. :func:`fit_glove` minimises the weighted least squares

       J = sum_{ij: X_ij > 0} f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2,  f(x) = min(1, (x / x_max)^alpha)

   over shuffled mini-batches of the non-zero entries with AdaGrad as ``glove.c`` does it (accumulators
   start at 1, the learning rate multiplies the gradient before it is squared into the accumulator,
   per-entry gradients clipped at 100). Within a mini-batch the gradients of a repeated word are summed,
   as sparse AdaGrad does. The saved vector of a word is ``w_i + c_i`` (the paper's section 4.2).

:func:`train_glove` runs both and writes Stanford's text format, loadable with ``load_backbone("glove:PATH")``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .corpus import check_vocabulary, count_words, finish, open_corpus, temporary_path

if TYPE_CHECKING:
    from scipy import sparse

logger = logging.getLogger(__name__)

GRAD_CLIP = 100.0  # glove.c's grad_clip_value


@dataclass
class Cooccurrence:
    """A vocabulary and its symmetric, distance-weighted co-occurrence matrix."""

    vocab: list[str]  # most frequent first
    counts: np.ndarray  # [V] corpus frequency of each vocabulary word
    matrix: sparse.csr_matrix  # [V, V] float64, X[i, j] = sum of 1/distance
    tokens: int = 0  # tokens read, out-of-vocabulary included
    seconds: float = 0.0  # time of the counting pass (vocabulary pass excluded)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


@dataclass
class GloveModel:
    """Trained GloVe parameters: word and context vectors and biases, in vocabulary order."""

    vocab: list[str]
    word: np.ndarray  # [V, D] w_i
    context: np.ndarray  # [V, D] c_j
    word_bias: np.ndarray  # [V]
    context_bias: np.ndarray  # [V]
    cost: list[float] = field(default_factory=list)  # weighted squared error per epoch, averaged over entries
    seconds: float = 0.0
    entries_per_second: float = 0.0

    @property
    def vectors(self) -> np.ndarray:
        """The vectors GloVe publishes: word + context (Pennington et al. 2014, section 4.2)."""
        return self.word + self.context

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``word v1 ... vD`` lines (Stanford's GloVe text format, no header) atomically."""
        output = Path(path)
        tmp = temporary_path(output)
        vectors = self.vectors
        fmt = " ".join(["%.6f"] * vectors.shape[1])
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for word, row in zip(self.vocab, vectors.tolist()):
                    f.write(word + " " + fmt % tuple(row) + "\n")
            return finish(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)


def build_cooccurrence(corpus_path: str | os.PathLike, *, window: int = 10, min_count: int = 5,
                       max_vocab: int | None = None, chunk_tokens: int = 500_000) -> Cooccurrence:
    """Count distance-weighted co-occurrences of vocabulary words in a streamed corpus.

    Follows ``cooccur.c`` of the reference implementation with a symmetric window: each pair of
    vocabulary words ``d`` positions apart (``1 <= d <= window``, within one line, after removing
    out-of-vocabulary tokens) adds ``1/d`` to ``X[a, b]`` and to ``X[b, a]``.

    Args:
        corpus_path: UTF-8 text, one document per line; tokenised like the ``glove:`` backbone.
        window: context size on each side.
        min_count: words rarer than this are left out of the vocabulary.
        max_vocab: keep at most this many of the most frequent words.
        chunk_tokens: tokens gathered before their pairs are summed into the sparse matrix (peak memory
            is about ``16 * window * chunk_tokens`` bytes on top of the matrix).

    Raises:
        DataError: the corpus is missing, empty, not UTF-8, or no word occurs ``min_count`` times.
    """
    from scipy import sparse

    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    corpus = open_corpus(corpus_path)
    start = time.perf_counter()
    frequencies, total = count_words(corpus)
    kept = sorted((w for w, c in frequencies.items() if c >= min_count), key=lambda w: (-frequencies[w], w))
    kept = kept[:max_vocab] if max_vocab is not None else kept
    check_vocabulary(corpus.path, len(kept), total, len(frequencies), min_count, max(frequencies.values()))
    logger.info("glove: vocabulary of %d words (of %d) from %d tokens (%.1fs)", len(kept), len(frequencies),
                total, time.perf_counter() - start)
    index = {w: i for i, w in enumerate(kept)}
    size = len(kept)

    start = time.perf_counter()
    pairs = sparse.csr_matrix((size, size), dtype=np.float64)  # M[a, b]: a occurs before b
    buffer: list[list[int]] = []
    buffered = 0
    for tokens in corpus.lines():
        ids = [index[t] for t in tokens if t in index]
        if len(ids) > 1:
            buffer.append(ids)
            buffered += len(ids)
        if buffered >= chunk_tokens:
            pairs = pairs + _count_chunk(buffer, size, window)
            buffer, buffered = [], 0
    if buffer:
        pairs = pairs + _count_chunk(buffer, size, window)
    matrix = (pairs + pairs.T).tocsr()
    matrix.sum_duplicates()
    seconds = time.perf_counter() - start
    logger.info("glove: %d non-zero co-occurrences from %d tokens in %.1fs (%.0f tokens/s)", matrix.nnz, total,
                seconds, total / max(seconds, 1e-9))
    counts = np.array([frequencies[w] for w in kept], dtype=np.int64)
    return Cooccurrence(kept, counts, matrix, tokens=total, seconds=seconds)


def _count_chunk(lines: list[list[int]], size: int, window: int):
    """Sparse ``M[a, b] = sum 1/d`` over pairs (a before b, d <= window apart) within each line."""
    from scipy import sparse

    ids = np.fromiter((i for line in lines for i in line), dtype=np.int32)
    line_of = np.repeat(np.arange(len(lines), dtype=np.int32), [len(line) for line in lines])
    rows, cols, weights = [], [], []
    for d in range(1, min(window, len(ids) - 1) + 1):
        same = line_of[:-d] == line_of[d:]
        rows.append(ids[:-d][same])
        cols.append(ids[d:][same])
        weights.append(np.full(len(rows[-1]), 1.0 / d))
    coo = sparse.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                            shape=(size, size))
    return coo.tocsr()  # sums duplicate pairs


def fit_glove(cooccurrence: Cooccurrence, *, vector_size: int = 50, x_max: float = 100.0, alpha: float = 0.75,
              epochs: int = 25, lr: float = 0.05, batch_size: int = 16_384, seed: int = 0,
              progress: bool = True) -> GloveModel:
    """Fit GloVe vectors to a co-occurrence matrix (Pennington et al. 2014, eq. 8, AdaGrad as in ``glove.c``).

    Args:
        cooccurrence: from :func:`build_cooccurrence` (or built by hand: any non-negative sparse matrix).
        vector_size: dimension of the vectors.
        x_max, alpha: the weighting ``f(x) = min(1, (x / x_max) ** alpha)``; the paper uses 100 and 3/4.
        epochs: passes over the shuffled non-zero entries (the paper: 50 below 300 dimensions, 100 above).
        lr: AdaGrad's initial learning rate (``eta``, 0.05 in ``glove.c``).
        batch_size: non-zero entries per update.
        seed: seeds the initialisation and the shuffling.
        progress: show a progress bar over epochs with the cost and entries/s.

    Returns:
        A :class:`GloveModel`; its ``vectors`` are ``word + context``.
    """
    import torch
    from tqdm.auto import tqdm

    matrix = cooccurrence.matrix.tocoo()
    keep = matrix.data > 0
    rows = torch.from_numpy(matrix.row[keep].astype(np.int64))
    cols = torch.from_numpy(matrix.col[keep].astype(np.int64))
    x = torch.from_numpy(matrix.data[keep].astype(np.float64))
    if len(x) == 0:
        from transferkit.errors import DataError

        raise DataError("the co-occurrence matrix has no non-zero entry: the corpus has no two vocabulary "
                        "words on one line within the window.")
    log_x = torch.log(x).float()
    weight = torch.clamp((x / x_max) ** alpha, max=1.0).float()
    size, dim, nnz = len(cooccurrence.vocab), vector_size, len(x)

    gen = torch.Generator().manual_seed(seed)
    # glove.c: vectors and biases uniform in [-0.5, 0.5) / vector_size; AdaGrad accumulators start at 1.
    # One table: rows 0..V-1 are [w_i | b_i], rows V..2V-1 are [c_j | b~_j].
    table = (torch.rand(2 * size, dim + 1, generator=gen) - 0.5) / dim
    sq_grads = torch.ones(2 * size, dim + 1)
    # Shuffled once, as glove.c's shuffle step does; each epoch then visits the batches in a new order.
    order = torch.randperm(nnz, generator=gen)
    rows, cols, log_x, weight = rows[order], cols[order] + size, log_x[order], weight[order]

    costs: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="glove epochs", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        epoch_start = time.perf_counter()
        total_cost = 0.0
        for lo in torch.randperm((nnz + batch_size - 1) // batch_size, generator=gen).mul_(batch_size).tolist():
            batch = slice(lo, lo + batch_size)
            total_cost += _adagrad_step(table, sq_grads, rows[batch], cols[batch], log_x[batch], weight[batch], lr)
        costs.append(total_cost / nnz)
        rate = nnz / max(time.perf_counter() - epoch_start, 1e-9)
        bar.set_postfix_str(f"cost {costs[-1]:.4f}, {rate:,.0f} entries/s")
        logger.info("glove: epoch %d/%d, cost %.5f, %.0f entries/s", epoch + 1, epochs, costs[-1], rate)
        if not math.isfinite(costs[-1]):
            raise FloatingPointError(f"GloVe diverged at epoch {epoch + 1} (cost {costs[-1]}): lower lr.")
    bar.close()
    seconds = time.perf_counter() - start
    word, context = table[:size].numpy(), table[size:].numpy()
    return GloveModel(list(cooccurrence.vocab), word[:, :dim].copy(), context[:, :dim].copy(), word[:, dim].copy(),
                      context[:, dim].copy(), cost=costs, seconds=seconds,
                      entries_per_second=nnz * epochs / max(seconds, 1e-9))


def _adagrad_step(table, sq_grads, i, j, log_x, weight, lr: float) -> float:
    """One mini-batch of glove.c's update (``j`` already offset by V); returns ``sum 0.5 f(x) diff^2``."""
    import torch

    n = len(i)
    ids = torch.cat([i, j])
    gathered = table.index_select(0, ids)
    wi, cj = gathered[:n], gathered[n:]
    diff = (wi[:, :-1] * cj[:, :-1]).sum(1) + wi[:, -1] + cj[:, -1] - log_x
    fdiff = weight * diff
    cost = float(0.5 * (fdiff * diff).sum())
    fdiff = (lr * fdiff).unsqueeze(1)
    # The gradient w.r.t. [w_i | b_i] is fdiff * [c_j | 1]; w.r.t. [c_j | b~_j] it is fdiff * [w_i | 1].
    grad = torch.cat([cj, wi]).mul_(torch.cat([fdiff, fdiff])).clamp_(-GRAD_CLIP, GRAD_CLIP)
    grad[:, -1] = torch.cat([fdiff, fdiff])[:, 0]  # glove.c does not clip the bias gradient
    unique, inverse = torch.unique(ids, return_inverse=True)
    summed = torch.zeros(len(unique), grad.shape[1]).index_add_(0, inverse, grad)
    table.index_add_(0, unique, summed / sq_grads.index_select(0, unique).sqrt_(), alpha=-1)
    sq_grads.index_add_(0, unique, summed.square_())
    return cost


def train_glove(corpus_path: str | os.PathLike, output_path: str | os.PathLike, *, vector_size: int = 50,
                window: int = 10, min_count: int = 5, x_max: float = 100.0, alpha: float = 0.75, epochs: int = 25,
                lr: float = 0.05, seed: int = 0, progress: bool = True, max_vocab: int | None = None,
                batch_size: int = 16_384) -> Path:
    """Train GloVe (Pennington et al. 2014) on a text corpus and write Stanford's GloVe text format.

    Counts co-occurrences with :func:`build_cooccurrence`, fits them with :func:`fit_glove` and writes
    ``word v1 ... vD`` lines (no header), most frequent word first, under a temporary name renamed into
    place. Load the result with ``load_backbone("glove:PATH")``.

    Args:
        corpus_path: UTF-8 text, one document per line.
        output_path: the text file to write.
        vector_size, x_max, alpha, epochs, lr, seed, batch_size: see :func:`fit_glove`.
        window, min_count, max_vocab: see :func:`build_cooccurrence`.
        progress: show progress bars (and log co-occurrence and training throughput).

    Returns:
        ``output_path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: the corpus is missing, empty, not UTF-8, or no word occurs ``min_count`` times.
    """
    cooccurrence = build_cooccurrence(corpus_path, window=window, min_count=min_count, max_vocab=max_vocab)
    model = fit_glove(cooccurrence, vector_size=vector_size, x_max=x_max, alpha=alpha, epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed, progress=progress)
    logger.info("glove: co-occurrences %.0f tokens/s, training %.0f entries/s", cooccurrence.tokens_per_second,
                model.entries_per_second)
    return model.save(output_path)
