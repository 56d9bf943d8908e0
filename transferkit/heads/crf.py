"""A linear-chain conditional random field over tag sequences, with hard constraints on its transitions.

The CRF of Lafferty, McCallum & Pereira 2001 ("Conditional Random Fields: Probabilistic Models for Segmenting
and Labeling Sequence Data", ICML) as the output layer of a neural tagger — the BiLSTM-CRF of Lample et al.
2016 ("Neural Architectures for Named Entity Recognition", arXiv:1603.01360), and BERT-CRF when the emissions
come from a transformer. A sequence of tags ``y_1..y_n`` over emission scores ``e_t`` (the tagger's logits)
scores::

    s(y) = start[y_1] + sum_t e_t[y_t] + sum_{t>1} trans[y_{t-1}, y_t] + end[y_n]

and ``p(y | x) = exp s(y) / Z``. The loss is the negative log-likelihood ``log Z - s(y_gold)``, with ``log Z``
from the forward algorithm in log space (a logsumexp per step, vectorised over the batch, a loop over time
steps only); decoding is the Viterbi algorithm (max instead of logsumexp, then backpointers); the marginals
``p(y_t = j | x)`` are the gradient of ``log Z`` with respect to the emissions (forward-backward as
back-propagation, Eisner 2016, "Inside-Outside and Forward-Backward Algorithms Are Just Backprop").

**Hard constraints.** Transitions a tagging scheme forbids (BIO: ``O → I-X``; BIOES: ``B-X → O``...), and the
tags that may not begin or end a sentence, score ``-inf`` in training *and* in decoding (the allowed
transitions of AllenNLP's CRF tagger, Gardner et al. 2018, arXiv:1803.07640). The CRF is then a distribution
over valid sequences only, and Viterbi never returns an invalid one.

**Masks.** Positions whose mask is False are skipped: the sequence is the kept positions in order (padding,
or tokens that are not a word's first sub-token). A sequence whose ``ended`` flag is False was cut by a length
limit: its last kept position is not the sentence's end, so it gets no end score and no end constraint.

Written here rather than taken from ``pytorch-crf`` (``torchcrf``): that package is unmaintained since 2020
and has no constrained transitions.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.errors import ConfigError, InputError, LabelError

NEG_INF = float("-inf")


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` whose gradient stays finite (zero) for groups that are all ``-inf``.

    ``torch.logsumexp`` gives ``NaN`` gradients there (``exp(-inf - -inf)``), which a constraint mask that
    makes a tag unreachable at some step would cause.
    """
    top = x.amax(dim)
    finite = torch.isfinite(top)
    shift = torch.where(finite, top, torch.zeros_like(top)).detach()
    total = (x - shift.unsqueeze(dim)).exp().sum(dim)
    safe = torch.where(finite, total, torch.ones_like(total))
    return torch.where(finite, safe.log() + shift, torch.full_like(total, NEG_INF))


def _inputs(emissions: torch.Tensor, mask: torch.Tensor | None, ended: torch.Tensor | None,
            num_tags: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if emissions.ndim != 3 or emissions.shape[-1] != num_tags:
        raise InputError(f"CRF emissions must be [batch, length, {num_tags}] tag scores, got shape "
                         f"{tuple(emissions.shape)}.")
    batch, length, _ = emissions.shape
    device = emissions.device
    mask = torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.bool().to(device)
    ended = torch.ones(batch, dtype=torch.bool, device=device) if ended is None else ended.bool().to(device)
    if mask.shape != (batch, length) or ended.shape != (batch,):
        raise InputError(f"CRF mask must be [batch, length] = {(batch, length)} and ended [batch], got "
                         f"{tuple(mask.shape)} and {tuple(ended.shape)}.")
    return emissions.float(), mask, ended


class CRF(nn.Module):
    """Learnt transition, start and end scores of a linear-chain CRF, with optional hard constraints.

    Args:
        num_tags: number of tags ``L``.
        allowed: ``[L, L]`` bool, ``allowed[i, j]``: tag ``j`` may follow tag ``i``; ``None``: all.
        may_start: ``[L]`` bool, the tags that may begin a sequence; ``None``: all.
        may_end: ``[L]`` bool, the tags that may end a (complete) sequence; ``None``: all.

    The scores start at zero, so an untrained CRF decodes like the constrained per-position decoder. The
    constraints are buffers that are not saved: whoever builds the CRF derives them again (the token
    classification head from its tags and scheme).

    Raises:
        ConfigError: masks of the wrong shape, or constraints under which no sequence is valid.
    """

    def __init__(self, num_tags: int, allowed: torch.Tensor | None = None, may_start: torch.Tensor | None = None,
                 may_end: torch.Tensor | None = None):
        super().__init__()
        n = int(num_tags)
        if n < 1:
            raise ConfigError(f"a CRF needs at least one tag, got num_tags={num_tags!r}.")
        allowed = torch.ones(n, n, dtype=torch.bool) if allowed is None else torch.as_tensor(allowed).bool()
        may_start = torch.ones(n, dtype=torch.bool) if may_start is None else torch.as_tensor(may_start).bool()
        may_end = torch.ones(n, dtype=torch.bool) if may_end is None else torch.as_tensor(may_end).bool()
        if allowed.shape != (n, n) or may_start.shape != (n,) or may_end.shape != (n,):
            raise ConfigError(f"CRF constraints must be allowed [{n}, {n}], may_start [{n}] and may_end [{n}]; got "
                              f"{tuple(allowed.shape)}, {tuple(may_start.shape)}, {tuple(may_end.shape)}.")
        if not bool(may_start.any()) or not bool(may_end.any()):
            raise ConfigError("the CRF constraints allow no sequence at all: no tag may start or none may end "
                              "one; allow some start and end tags.")
        self.num_tags = n
        self.transitions = nn.Parameter(torch.zeros(n, n))
        self.start_scores = nn.Parameter(torch.zeros(n))
        self.end_scores = nn.Parameter(torch.zeros(n))
        self.register_buffer("allowed", allowed.clone(), persistent=False)
        self.register_buffer("may_start", may_start.clone(), persistent=False)
        self.register_buffer("may_end", may_end.clone(), persistent=False)

    def constrained(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(transitions, start, end)`` scores with the forbidden ones set to ``-inf``."""
        return (self.transitions.float().masked_fill(~self.allowed, NEG_INF),
                self.start_scores.float().masked_fill(~self.may_start, NEG_INF),
                self.end_scores.float().masked_fill(~self.may_end, NEG_INF))

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
                      ended: torch.Tensor | None = None) -> torch.Tensor:
        """``log Z`` of each sequence ``[B]`` by the forward algorithm in log space (0 for an empty one).

        Args:
            emissions: ``[B, W, L]`` tag scores.
            mask: ``[B, W]`` bool, the positions that belong to the sequences; ``None``: all.
            ended: ``[B]`` bool, whether each sequence really ends at its last kept position; ``None``: all.
        """
        emissions, mask, ended = _inputs(emissions, mask, ended, self.num_tags)
        trans, start, end = self.constrained()
        batch, length, _ = emissions.shape
        alpha = emissions.new_zeros(batch, self.num_tags)
        started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
        for t in range(length):
            step = _logsumexp(alpha[:, :, None] + trans, 1)  # [B, next]: over the previous tag
            new = emissions[:, t] + torch.where(started[:, None], step, start)
            alpha = torch.where(mask[:, t, None], new, alpha)
            started = started | mask[:, t]
        final = torch.where(ended[:, None], alpha + end, alpha)
        return torch.where(started, _logsumexp(final, 1), torch.zeros_like(final[:, 0]))

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
              ended: torch.Tensor | None = None) -> torch.Tensor:
        """``s(y)`` of given tag sequences ``[B]`` (``-inf`` for a sequence the constraints forbid).

        Args:
            emissions: ``[B, W, L]`` tag scores.
            tags: ``[B, W]`` tag ids; entries at masked-out positions are ignored.
            mask, ended: as in :meth:`log_partition`.
        """
        emissions, mask, ended = _inputs(emissions, mask, ended, self.num_tags)
        trans, start, end = self.constrained()
        batch, length, _ = emissions.shape
        if not length:
            return emissions.new_zeros(batch)
        tags = torch.where(mask, tags.to(emissions.device).long(), torch.zeros_like(mask, dtype=torch.long))
        if bool(((tags < 0) | (tags >= self.num_tags)).any()):
            raise LabelError(f"CRF tags must be tag ids in [0, {self.num_tags}) at every kept position (mask True); "
                             "mask out padding, or map the tags to their ids.")
        positions = torch.arange(length, device=emissions.device).expand(batch, length)
        seen = torch.where(mask, positions, torch.full_like(positions, -1)).cummax(1).values  # last kept ≤ t
        previous = torch.cat([torch.full_like(seen[:, :1], -1), seen[:, :-1]], 1)  # last kept < t
        previous_tags = tags.gather(1, previous.clamp(min=0))
        step = torch.where(previous >= 0, trans[previous_tags, tags], start[tags])
        emitted = emissions.gather(2, tags[..., None]).squeeze(-1)
        total = torch.where(mask, emitted + step, torch.zeros_like(emitted)).sum(1)
        last = seen[:, -1]
        last_tags = tags.gather(1, last.clamp(min=0)[:, None]).squeeze(1)
        closing = torch.where(ended & (last >= 0), end[last_tags], torch.zeros_like(total))
        return total + closing

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
            ended: torch.Tensor | None = None) -> torch.Tensor:
        """The negative log-likelihood ``log Z - s(y)`` of each gold sequence ``[B]`` (0 for empty ones).

        Raises:
            LabelError: a gold sequence the constraints forbid (e.g. ``O`` then ``I-X`` in BIO); convert it
                to a valid one first (:func:`transferkit.data.conll.convert_tags`).
        """
        gold = self.score(emissions, tags, mask, ended)
        if not bool(torch.isfinite(gold).all()):
            bad = (~torch.isfinite(gold)).nonzero().flatten().tolist()
            raise LabelError(f"sequence(s) {bad[:10]} of the batch have tags the CRF's constraints forbid (an "
                             "invalid transition, start or end); convert the tags to a valid scheme first.")
        return self.log_partition(emissions, mask, ended) - gold

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
               ended: torch.Tensor | None = None) -> list[list[int]]:
        """The best valid tag sequence of each row (Viterbi), as tag ids of its kept positions.

        Args:
            emissions, mask, ended: as in :meth:`log_partition`.

        Returns:
            one list per row, as long as its number of kept positions.
        """
        emissions, mask, ended = _inputs(emissions, mask, ended, self.num_tags)
        trans, start, end = self.constrained()
        batch, length, n = emissions.shape
        score = emissions.new_zeros(batch, n)
        started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
        same = torch.arange(n, device=emissions.device).expand(batch, n)
        backs = []
        for t in range(length):
            best, arg = (score[:, :, None] + trans).max(1)  # [B, next]: the best previous tag
            new = emissions[:, t] + torch.where(started[:, None], best, start)
            keep = mask[:, t]
            score = torch.where(keep[:, None], new, score)
            backs.append(torch.where((keep & started)[:, None], arg, same))  # skipped: the tag carries over
            started = started | keep
        if not length:
            return [[] for _ in range(batch)]
        tag = torch.where(ended[:, None], score + end, score).argmax(1)
        path = [tag]
        for back in reversed(backs[1:]):
            tag = back.gather(1, tag[:, None]).squeeze(1)
            path.append(tag)
        tags = torch.stack(path[::-1], 1).tolist()
        keep = mask.tolist()
        return [[y for y, k in zip(row, kept) if k] for row, kept in zip(tags, keep)]

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
                  ended: torch.Tensor | None = None) -> torch.Tensor:
        """``p(y_t = j | x)`` ``[B, W, L]`` (zeros at skipped positions): the gradient of ``log Z`` with
        respect to the emissions (Eisner 2016)."""
        with torch.inference_mode(False), torch.enable_grad():  # prediction runs in inference mode:
            # normal copies of its tensors, which autograd may save
            mask = None if mask is None else mask.clone()
            ended = None if ended is None else ended.clone()
            scores = emissions.detach().float().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_partition(scores, mask, ended).sum(), scores)
        return grad
