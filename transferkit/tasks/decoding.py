"""Token-by-token decoding with a key/value cache, for causal and encoder-decoder transformers models.

Autoregressive decoding (Vaswani et al. 2017, arXiv:1706.03762) feeds each chosen token back as the next input.
Without a cache every step re-runs the whole growing sequence (quadratic work); with one, the keys and values of
the positions already seen are kept (the ``past_key_values`` / ``cache`` of Hugging Face transformers, with
``use_cache=True``) and each step runs one new position per row, as ``transformers.GenerationMixin.generate``
does.

* :func:`causal_continuations` — decoder-only models (GPT-2, Llama...). Prompts of different lengths are padded
  on the **left**, so every row's last prompt token sits in the last column and one forward pass fills the cache;
  ``position_ids`` count real tokens only (``attention_mask.cumsum(-1) - 1``, padding at 0), which is what
  ``generate`` computes, so a padded row sees the positions it would see alone. ``use_cache=False`` is the plain
  reference loop: prompts padded on the right, the whole sequence re-run per step, each row reading the logits
  at its own last token (causal attention keeps them free of the padding after it).
* :func:`seq2seq_continuations` — encoder-decoder models (T5, Raffel et al. 2020, arXiv:1910.10683; BART,
  Lewis et al. 2020, arXiv:1910.13461): the encoder's states are computed once by the caller; the decoder
  starts every row at ``decoder_start_token_id`` and is cross-attended to them; ``use_cache=False`` re-runs the
  decoder over all decoder tokens at each step.

The next token is chosen by ``pick`` from the float logits ``[B, vocab]`` of each row's last position:
:func:`greedy` (argmax) by default, or a sampler (:class:`~transferkit.tasks.text.CausalLM` samples with a
temperature and top-k). A row stops at the end token (not returned) or at its length limit; finished rows are
fed the padding token and their outputs ignored, as ``generate`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from transferkit.errors import InputError

Pick = Callable[[torch.Tensor], torch.Tensor]  # float logits [B, vocab] -> token ids [B]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row (greedy decoding)."""
    return logits.argmax(-1)


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_name(module: nn.Module) -> str:
    """The keyword under which ``module.forward`` takes the key/value cache: ``cache`` (recent transformers 5
    releases) or ``past_key_values`` (earlier ones)."""
    return "cache" if _accepts(module, "cache") else "past_key_values"


def _cache_of(output) -> object:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class _Rows:
    """Per-row bookkeeping: the tokens chosen so far, which rows are done, and each row's limit."""

    def __init__(self, limits: torch.Tensor, eos_id: int):
        self.limits = limits.tolist()
        self.eos_id = eos_id
        self.out: list[list[int]] = [[] for _ in self.limits]
        self.done = [limit <= 0 for limit in self.limits]

    def add(self, next_ids: torch.Tensor) -> None:
        for i, token in enumerate(next_ids.tolist()):
            if self.done[i]:
                continue
            if token == self.eos_id:
                self.done[i] = True
                continue
            self.out[i].append(token)
            self.done[i] = len(self.out[i]) >= self.limits[i]

    @property
    def finished(self) -> bool:
        return all(self.done)


def _check_prompts(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    prompts = [list(map(int, p)) for p in prompts]
    if any(not p for p in prompts):
        raise InputError("a prompt has no tokens: give non-empty inputs.")
    return prompts


@torch.no_grad()
def causal_continuations(model: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor],
                         prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
                         window: int, pick: Pick = greedy, use_cache: bool = True) -> list[list[int]]:
    """Continuations (token ids, the end token excluded) of a batch of prompts by a causal decoder.

    Args:
        model: the transformers base model (``GPT2Model``, ``LlamaModel``...), returning ``last_hidden_state``.
        logits: maps hidden states ``[B, D]`` to next-token logits ``[B, vocab]`` (the LM head).
        prompts: token ids of each prompt; one longer than ``window - max_new_tokens`` keeps its last tokens.
        max_new_tokens: tokens generated at most per row.
        eos_id: the end token, which stops a row.
        pad_id: the id put in padding positions (masked out, never attended to).
        window: the longest sequence the model takes; a row stops when prompt + continuation reach it.
        pick: chooses the next token from float logits ``[B, vocab]``.
        use_cache: keep keys/values (one new position per step) or re-run the whole sequence (the reference).

    Raises:
        InputError: a prompt has no tokens.
    """
    device = next(model.parameters()).device
    keep = max(1, window - max_new_tokens)
    prompts = [p[-keep:] for p in _check_prompts(prompts)]
    n, width = len(prompts), max(len(p) for p in prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    rows = _Rows((window - lengths).clamp(min=0, max=max_new_tokens), eos_id)
    if not use_cache:
        return _causal_plain(model, logits, prompts, rows, pad_id, pick, device)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row ends in the last column
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra = {"position_ids": positions} if _accepts(model, "position_ids") else {}
    key, cache = cache_name(model), None
    step_ids = ids
    while not rows.finished:
        out = model(input_ids=step_ids, attention_mask=mask, use_cache=True,
                    **extra, **({key: cache} if cache is not None else {}))
        cache = _cache_of(out)
        next_ids = pick(logits(out.last_hidden_state[:, -1]).float())
        rows.add(next_ids)
        if rows.finished:
            break
        done = torch.tensor(rows.done, device=device)
        step_ids = next_ids.masked_fill(done, pad_id)[:, None]
        mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        if extra:
            positions = positions[:, -1:] + 1
            extra = {"position_ids": positions}
    return rows.out


def _causal_plain(model: nn.Module, logits: Callable, prompts: list[list[int]], rows: _Rows, pad_id: int,
                  pick: Pick, device: torch.device) -> list[list[int]]:
    """The reference loop without a cache: right padding, the whole sequence re-run per generated token."""
    n = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max()) + max(rows.limits)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, device=device)
    index = torch.arange(n, device=device)
    while not rows.finished:
        active = [i for i, done in enumerate(rows.done) if not done]
        cur = int(lengths[active].max())
        mask = (torch.arange(cur, device=device)[None, :] < lengths[:, None]).long()
        hidden = model(input_ids=ids[:, :cur], attention_mask=mask).last_hidden_state
        next_ids = pick(logits(hidden[index, (lengths - 1).clamp(max=cur - 1)]).float())
        before = [len(row) for row in rows.out]
        rows.add(next_ids)
        for i in active:
            if len(rows.out[i]) > before[i]:
                ids[i, lengths[i]] = next_ids[i]
                lengths[i] += 1
    return rows.out


@torch.no_grad()
def seq2seq_continuations(decoder: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor],
                          encoder_states: torch.Tensor, encoder_mask: torch.Tensor, *, start_id: int, eos_id: int,
                          pad_id: int, max_new_tokens: int, pick: Pick = greedy,
                          use_cache: bool = True) -> list[list[int]]:
    """Decoded target ids (the end token excluded) of an encoder-decoder model, one row per source.

    Args:
        decoder: the model's decoder stack (``model.get_decoder()``: ``T5Stack``, ``BartDecoder``...).
        logits: maps decoder hidden states ``[B, D]`` to logits ``[B, vocab]`` (scaling and bias included).
        encoder_states: ``[B, S, D]`` the encoder's last hidden states; ``encoder_mask`` ``[B, S]`` its mask.
        start_id: ``decoder_start_token_id``, the first decoder input of every row.
        eos_id, pad_id: the end token (stops a row) and the token fed to finished rows.
        max_new_tokens: tokens generated at most per row.
        pick: chooses the next token from float logits.
        use_cache: keep the decoder's self-attention keys/values (and the cross-attention ones, computed once)
            or re-run the decoder over all its tokens at each step (the reference).
    """
    n, device = encoder_states.shape[0], encoder_states.device
    rows = _Rows(torch.full((n,), max_new_tokens), eos_id)
    tokens = torch.full((n, 1), start_id, dtype=torch.long, device=device)
    key, cache = cache_name(decoder), None
    while not rows.finished:
        step = tokens[:, -1:] if cache is not None else tokens
        out = decoder(input_ids=step, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                      use_cache=use_cache, **({key: cache} if cache is not None else {}))
        cache = _cache_of(out) if use_cache else None
        next_ids = pick(logits(out.last_hidden_state[:, -1]).float())
        rows.add(next_ids)
        done = torch.tensor(rows.done, device=device)
        tokens = torch.cat([tokens, next_ids.masked_fill(done, pad_id)[:, None]], dim=1)
    return rows.out
