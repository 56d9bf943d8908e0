"""GloVe: global vectors from a word co-occurrence matrix (Pennington, Socher & Manning 2014).

"GloVe: Global Vectors for Word Representation", EMNLP 2014, https://nlp.stanford.edu/pubs/glove.pdf;
reference implementation https://github.com/stanfordnlp/GloVe (``cooccur.c``, ``glove.c``).

Two steps, each usable on its own:

1. :func:`build_cooccurrence` streams the corpus twice: a vocabulary pass, then a counting pass that adds
   ``1/d`` to ``X[w, c]`` and ``X[c, w]`` for every pair of vocabulary words ``d <= window`` tokens apart on
   the same line (out-of-vocabulary tokens are removed first, as ``cooccur.c`` does). A chunk of lines at a
   time, every pair occurrence becomes one int64 key (word, word, distance); one numpy sort groups equal
   pairs, and the chunk's sparse matrix joins a stack of partial sums merged like a binary counter, so memory
   grows with the number of distinct pairs, not with the corpus.
2. :func:`fit_glove` minimises the weighted least squares

       J = sum_{ij: X_ij > 0} f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2,  f(x) = min(1, (x / x_max)^alpha)

   with ``glove.c``'s AdaGrad (parameters uniform in ``[-0.5, 0.5) / dim``, accumulators starting at 1, the
   learning rate applied before the gradient is squared into the accumulator, vector gradients clipped at
   100), vectorised with torch over mini-batches of the once-shuffled non-zero entries. Two departures, both
   measured on 20 Newsgroups (``docs/pretraining_word_vectors.md``):

   * ``glove.c`` updates one entry at a time, so a frequent word takes many small steps. In a mini-batch a
     word may occur in dozens of entries; it takes one step with the *mean* of their gradients. (Adding
     their raw gradients into one step, as this module used to, makes the first steps of frequent words
     dozens of times too large; ``test_glove_repeated_words_in_a_batch_take_one_bounded_step`` diverged.)
   * One AdaGrad accumulator per vector (fed the mean squared coordinate, as fbgemm's row-wise AdaGrad)
     and one per bias, instead of one per coordinate: it halves the memory traffic, and with accumulators
     starting at 1 the two barely differ (about the same scores on the benchmark).

   The saved vector of a word is ``w_i + c_i`` (the paper's section 4.2, ``glove.c -model 2``).

:func:`train_glove` runs both and writes Stanford's text format, loadable with ``load_backbone("glove:PATH")``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transferkit.data.corpus import check_vocabulary, count_words, open_corpus
from transferkit.files import atomic_path

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
        vectors = self.vectors
        fmt = " ".join(["%.6f"] * vectors.shape[1])
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for word, row in zip(self.vocab, vectors.tolist()):
                f.write(word + " " + fmt % tuple(row) + "\n")
        return output


def build_cooccurrence(corpus_path: str | os.PathLike, *, window: int = 15, min_count: int = 5,
                       max_vocab: int | None = None, chunk_tokens: int = 500_000) -> Cooccurrence:
    """Count distance-weighted co-occurrences of vocabulary words in a streamed corpus.

    Follows ``cooccur.c`` of the reference implementation with a symmetric window: each pair of
    vocabulary words ``d`` positions apart (``1 <= d <= window``, within one line, after removing
    out-of-vocabulary tokens) adds ``1/d`` to ``X[a, b]`` and to ``X[b, a]``.

    Args:
        corpus_path: UTF-8 text, one document per line; tokenised like the ``glove:`` backbone.
        window: context size on each side (15, as the reference ``demo.sh``; the paper's main runs used 10).
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

    start = time.perf_counter()
    merged: list[sparse.csr_matrix] = []  # partial sums, each at most half the size of the one below it
    buffer: list[list[str]] = []
    buffered = 0
    for tokens in corpus.lines():
        buffer.append(tokens)
        buffered += len(tokens)
        if buffered >= chunk_tokens:
            _push(merged, _count_chunk(buffer, index, window))
            buffer, buffered = [], 0
    _push(merged, _count_chunk(buffer, index, window))
    pairs = sum(merged[1:], merged[0])
    matrix = (pairs + pairs.T).tocsr()
    matrix.sum_duplicates()
    seconds = time.perf_counter() - start
    logger.info("glove: %d non-zero co-occurrences from %d tokens in %.1fs (%.0f tokens/s)", matrix.nnz, total,
                seconds, total / max(seconds, 1e-9))
    counts = np.array([frequencies[w] for w in kept], dtype=np.int64)
    return Cooccurrence(kept, counts, matrix, tokens=total, seconds=seconds)


def _push(stack: list, matrix) -> None:
    """Add a chunk's counts to a stack of partial sums, merging equal-sized neighbours (a binary counter).

    Each entry is merged O(log chunks) times, so counting stays linear in the corpus (up to a log) instead
    of re-adding the whole matrix for every chunk.
    """
    stack.append(matrix)
    while len(stack) > 1 and stack[-1].nnz * 2 >= stack[-2].nnz:
        top = stack.pop()
        stack[-1] = stack[-1] + top


def _count_chunk(lines: list[list[str]], index: dict[str, int], window: int):
    """Sparse ``M[a, b] = sum 1/d`` over vocabulary pairs (``a`` before ``b``, ``d <= window`` apart) per line.

    Out-of-vocabulary tokens are removed before pairing. Each pair occurrence becomes one int64 key
    ``(a, b, d)`` packed into bit fields; one sort brings equal pairs together and ``1/d`` is summed per pair.
    """
    from scipy import sparse

    size = len(index)
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ids = np.fromiter(map(index.get, itertools.chain.from_iterable(lines), itertools.repeat(-1)), dtype=np.int64,
                      count=int(lengths.sum()))
    line_of = np.repeat(np.arange(len(lines), dtype=np.int32), lengths)
    known = ids >= 0
    ids, line_of = ids[known], line_of[known]
    word_bits, d_bits = max(size - 1, 1).bit_length(), window.bit_length()
    if 2 * word_bits + d_bits > 63:
        raise ValueError(f"vocabulary of {size} words and window {window} do not fit in 64-bit pair keys")
    first = ids << (word_bits + d_bits)
    keys = []
    for d in range(1, min(window, len(ids) - 1) + 1):
        same = line_of[:-d] == line_of[d:]
        keys.append(first[:-d][same] | (ids[d:][same] << d_bits) | d)
    if not keys:
        return sparse.csr_matrix((size, size), dtype=np.float64)
    keys = np.sort(np.concatenate(keys))
    pair = keys >> d_bits
    weights = (1.0 / np.arange(1 << d_bits).clip(1))[keys & ((1 << d_bits) - 1)]
    starts = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    values = np.add.reduceat(weights, starts)
    pair = pair[starts]
    rows, cols = pair >> word_bits, pair & ((1 << word_bits) - 1)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=size))])
    return sparse.csr_matrix((values, cols, indptr), shape=(size, size))


def fit_glove(cooccurrence: Cooccurrence, *, vector_size: int = 50, x_max: float = 10.0, alpha: float = 0.75,
              epochs: int = 15, lr: float = 0.1, batch_size: int = 8192, seed: int = 0,
              progress: bool = True) -> GloveModel:
    """Fit GloVe vectors to a co-occurrence matrix (Pennington et al. 2014, eq. 8, AdaGrad as in ``glove.c``).

    Args:
        cooccurrence: from :func:`build_cooccurrence` (or built by hand: any non-negative sparse matrix).
        vector_size: dimension of the vectors.
        x_max, alpha: the weighting ``f(x) = min(1, (x / x_max) ** alpha)``. The paper uses 100 and 3/4 on
            corpora of billions of tokens; the reference ``demo.sh`` uses ``x_max=10`` on text8 (17M tokens),
            and so does this default: with 100, almost every pair of a small corpus gets a tiny weight.
        epochs: passes over the shuffled non-zero entries.
        lr: AdaGrad's initial learning rate (``eta``; ``glove.c`` uses 0.05, which needs more epochs).
        batch_size: non-zero entries updated together (see the module docstring).
        seed: seeds the initialisation and the shuffling.
        progress: show a progress bar over epochs with the cost and entries/s.

    Returns:
        A :class:`GloveModel`; its ``vectors`` are ``word + context``.

    Raises:
        DataError: the matrix has no positive entry.
        FloatingPointError: the fit diverged (an epoch's cost above twice that of all-zero parameters,
            or NaN): lower ``lr``.
    """
    import torch
    from tqdm.auto import tqdm

    matrix = cooccurrence.matrix.tocoo()
    keep = matrix.data > 0
    if not keep.any():
        from transferkit.errors import DataError

        raise DataError("the co-occurrence matrix has no non-zero entry: the corpus has no two vocabulary "
                        "words on one line within the window.")
    size, dim, nnz = len(cooccurrence.vocab), vector_size, int(keep.sum())
    gen = torch.Generator().manual_seed(seed)
    # glove.c: parameters uniform in [-0.5, 0.5) / vector_size. One table: rows 0..V-1 are [w_i | b_i], rows
    # V..2V-1 are [c_j | b~_j]. AdaGrad accumulators start at 1: row 0 per vector, row 1 per bias.
    table = (torch.rand(2 * size, dim + 1, generator=gen) - 0.5) / dim
    sq_grads = torch.ones(2, 2 * size)
    # Shuffled once, as glove.c's `shuffle` step does; each epoch then visits the batches in a new order.
    order = torch.randperm(nnz, generator=gen)
    x = torch.from_numpy(matrix.data[keep]).index_select(0, order)
    log_x = torch.log(x).float()
    weight = torch.clamp((x / x_max) ** alpha, max=1.0).float()
    del x
    batches = _batch_ids(torch.from_numpy(matrix.row[keep]).index_select(0, order),
                         torch.from_numpy(matrix.col[keep]).index_select(0, order), size, batch_size)
    del matrix, keep, order

    costs: list[float] = []
    baseline = 0.5 * float(torch.dot(weight, log_x * log_x)) / nnz  # the cost with all parameters at 0
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="glove epochs", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        epoch_start = time.perf_counter()
        total_cost = 0.0
        for k in torch.randperm(len(batches), generator=gen).tolist():
            ids, share = batches[k]
            entries = slice(k * batch_size, k * batch_size + len(ids) // 2)
            total_cost += _adagrad_step(table, sq_grads, ids.long(), share, log_x[entries], weight[entries], lr)
        costs.append(total_cost / nnz)
        rate = nnz / max(time.perf_counter() - epoch_start, 1e-9)
        bar.set_postfix_str(f"cost {costs[-1]:.4f}, {rate:,.0f} entries/s")
        logger.info("glove: epoch %d/%d, cost %.5f, %.0f entries/s", epoch + 1, epochs, costs[-1], rate)
        if not costs[-1] <= 2 * baseline:  # also catches NaN; a working fit is far below the baseline
            raise FloatingPointError(f"GloVe diverged at epoch {epoch + 1}: cost {costs[-1]:.4g}, more than twice "
                                     f"the {baseline:.4g} of all-zero parameters. Lower lr (now {lr}).")
    bar.close()
    seconds = time.perf_counter() - start
    word, context = table[:size].numpy(), table[size:].numpy()
    return GloveModel(list(cooccurrence.vocab), word[:, :dim].copy(), context[:, :dim].copy(), word[:, dim].copy(),
                      context[:, dim].copy(), cost=costs, seconds=seconds,
                      entries_per_second=nnz * epochs / max(seconds, 1e-9))


def _batch_ids(rows, cols, size: int, batch_size: int) -> list:
    """Per mini-batch, the table rows it touches, ``[i_1..i_n | V + j_1..V + j_n]``, and for each of them
    ``1 / (how often that row occurs in the batch)``. Kept as int32 when it fits (half the memory), but
    converted back per batch: torch's ``index_add_`` is about twice as slow with int32 indices."""
    import torch

    dtype = torch.int32 if 2 * size < 2**31 else torch.int64
    batches = []
    for lo in range(0, len(rows), batch_size):
        ids = torch.cat([rows[lo:lo + batch_size].to(dtype), cols[lo:lo + batch_size].to(dtype) + size])
        batches.append((ids, torch.bincount(ids, minlength=2 * size).index_select(0, ids).float().reciprocal_()))
    return batches


def _adagrad_step(table, sq_grads, ids, share, log_x, weight, lr: float) -> float:
    """One mini-batch of ``glove.c``'s update; returns ``sum 0.5 f(X_ij) diff^2`` over the batch.

    Each entry's gradient is computed from the parameters as they were at the start of the batch. A vector
    (or bias) that occurs in ``k`` entries of the batch takes one AdaGrad step with the mean of their
    gradients and adds the mean of their squares to its accumulator (``share`` holds ``1/k``): one step per
    batch, never ``k`` overlapping ones that together overshoot.
    """
    import torch

    n, dim = len(log_x), table.shape[1] - 1
    rows = table.index_select(0, ids)
    w, c = rows[:n], rows[n:]
    diff = torch.linalg.vecdot(w[:, :dim], c[:, :dim]).add_(w[:, dim]).add_(c[:, dim]).sub_(log_x)
    fdiff = weight * diff
    cost = 0.5 * float(torch.dot(fdiff, diff))
    fdiff.mul_(lr)  # glove.c scales by eta before the gradient is squared into the accumulator
    # The gradient w.r.t. [w_i | b_i] is fdiff * [c_j | 1], w.r.t. [c_j | b~_j] it is fdiff * [w_i | 1].
    grad = torch.empty_like(rows)
    torch.mul(c, fdiff.unsqueeze(1), out=grad[:n])
    torch.mul(w, fdiff.unsqueeze(1), out=grad[n:])
    vec, bias = grad[:, :dim].clamp_(-GRAD_CLIP, GRAD_CLIP), grad[:, dim]  # glove.c clips vector gradients only
    bias[:n], bias[n:] = fdiff, fdiff
    # AdaGrad with one accumulator per vector (fed its mean squared coordinate) and one per bias.
    vec_scale = sq_grads[0].index_select(0, ids).rsqrt_().mul_(share).neg_()
    bias_scale = sq_grads[1].index_select(0, ids).rsqrt_().mul_(share).neg_()
    sq_grads[0].index_add_(0, ids, torch.linalg.vecdot(vec, vec).mul_(share / dim))
    sq_grads[1].index_add_(0, ids, (bias * bias).mul_(share))  # x * x: torch's square() is a slow pow()
    vec.mul_(vec_scale.unsqueeze(1))
    bias.mul_(bias_scale)
    table.index_add_(0, ids, grad)
    return cost


def train_glove(corpus_path: str | os.PathLike, output_path: str | os.PathLike, *, vector_size: int = 50,
                window: int = 15, min_count: int = 5, x_max: float = 10.0, alpha: float = 0.75, epochs: int = 15,
                lr: float = 0.1, seed: int = 0, progress: bool = True, max_vocab: int | None = None,
                batch_size: int = 8192) -> Path:
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
