"""Extractive question answering: the answer is a span of the context, found by a start and an end score
per token (Devlin et al. 2019, BERT, arXiv:1810.04805, section 4.2; unanswerable questions as in section
4.3). The windows, the loss, the decoding and the SQuAD metrics are in :mod:`transferkit.tasks.qa`.

Only ``hf:`` backbones serve it (their fast tokenizer encodes a question and its context together, cuts long
contexts into windows and maps tokens back to characters); a word-vector backbone is refused with a
:class:`~transferkit.errors.ConfigError`. ``TransferModel.predict`` returns, per question::

    {"answer": "the cat", "start": 4, "end": 11, "score": 0.87}   # context[start:end] == answer
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, InputError
from transferkit.heads import register_head
from transferkit.backbones.base import inference
from transferkit.heads.base import features_part


@register_head("qa")
class QuestionAnswering(nn.Module):
    """A linear layer from each token's features to a start and an end logit.

    Args:
        max_answer_length: longest answer predicted, in tokens.
        stride: tokens shared by neighbouring windows of a long context (``run_qa.py``'s ``doc_stride``); it
            must be below the context tokens a window holds.
        max_length: tokens per window (question + context + special tokens); ``None``: the backbone's.
        allow_unanswerable: SQuAD v2: predict an empty answer when the no-answer score (``[CLS]``) beats the
            best span; without it, questions without answers are refused in training data.
        null_threshold: added to the no-answer score before the comparison (BERT's τ, tuned on dev data).
        in_features: token feature size; normally left out and taken from the backbone.
    """

    needs = frozenset({"tokens", "mask"})

    def __init__(self, *, max_answer_length: int = 30, stride: int = 128, max_length: int | None = None,
                 allow_unanswerable: bool = False, null_threshold: float = 0.0, in_features: int | None = None):
        super().__init__()
        for name, value in (("max_answer_length", max_answer_length), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_answer_length" else 0):
                raise ConfigError(f"QuestionAnswering({name}=...) must be a whole number of tokens "
                                  f"({'at least 1' if name == 'max_answer_length' else 'from 0'}), got {value!r}.")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4):
            raise ConfigError(f"QuestionAnswering(max_length=...) must be None or a whole number of tokens (at least 4), "
                              f"got {max_length!r}.")
        self.max_answer_length = max_answer_length
        self.stride = stride
        self.max_length = max_length
        self.allow_unanswerable = bool(allow_unanswerable)
        self.null_threshold = float(null_threshold)
        self.in_features = in_features
        self.layers: nn.Module | None = None
        if in_features is not None:
            self.build(in_features)

    def build(self, in_features: int) -> None:
        """Create the linear layer for ``in_features``-sized token features (idempotent)."""
        if self.layers is not None:
            if in_features != self.in_features:
                raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
            return
        self.in_features = int(in_features)
        self.layers = nn.Linear(self.in_features, 2)

    def forward(self, features: Any) -> torch.Tensor:
        """Start and end logits of every token ``[B, T, 2]``."""
        if self.layers is None:
            raise RuntimeError("head is not built: compose it with a backbone in TransferModel first")
        return self.layers(features_part(features, "tokens"))

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: start/end cross-entropy over windows; SQuAD exact match and F1."""
        from transferkit.tasks.qa import QuestionAnsweringTask

        return QuestionAnsweringTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        raise InputError("a QA head has no score per input: use predict, whose answers carry their scores.")

    def predict(self, outputs: torch.Tensor) -> list:
        """Best token spans ``{"start_token", "end_token", "score"}`` of window logits ``[B, T, 2]`` (any token;
        answers in characters need the offsets: ``TransferModel.predict`` on questions gives them)."""
        from transferkit.tasks.qa import best_span

        out = []
        for row in outputs.float():
            mask = torch.ones(len(row), dtype=torch.bool)
            score, s, e = best_span(row[:, 0], row[:, 1], mask, self.max_answer_length)
            out.append({"start_token": s, "end_token": e, "score": score})
        return out

    @torch.no_grad()
    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 32) -> Any:
        """Answers to questions (what ``TransferModel.predict`` returns).

        Args:
            model: the :class:`~transferkit.TransferModel` holding this head.
            raw_inputs: one ``{"question", "context"}`` dict, a list of them, or columns
                ``{"question": [...], "context": [...]}`` (a dict of lists, a DataFrame).
            batch_size: questions per forward pass (each may take several windows).

        Returns:
            ``{"answer", "start", "end", "score"}`` per question (one dict for one question): character offsets
            into the context (``end`` exclusive, ``context[start:end] == answer``) and the span's probability.

        Raises:
            InputError: a question without its question or context text (naming the item), a question too
                long for a window.
        """
        from transferkit.tasks.qa import decode_answers, encode_windows

        questions, contexts, single = _questions(raw_inputs)
        results: list[dict] = []
        with inference(model) as device:
            for at in range(0, len(questions), batch_size):
                q, c = questions[at: at + batch_size], contexts[at: at + batch_size]
                windows = encode_windows(model, q, c, [f"item {at + i}" for i in range(len(q))])
                logits = model(**{k: v.to(device) for k, v in windows["inputs"].items()})["logits"]
                results += decode_answers(self, logits, windows, c)
        return results[0] if single else results

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "max_answer_length": self.max_answer_length, "stride": self.stride,
                "max_length": self.max_length, "allow_unanswerable": self.allow_unanswerable,
                "null_threshold": self.null_threshold, "in_features": self.in_features}


def _questions(raw: Any) -> tuple[list[str], list[str], bool]:
    """Questions and contexts of a ``predict`` call, and whether it was one question."""
    from transferkit.data import as_table, find_column

    single = isinstance(raw, dict) and all(isinstance(raw.get(k), str) for k in ("question", "context"))
    if single:
        items = [raw]
    elif isinstance(raw, (str, bytes)):
        raise InputError("a QA model answers a question about a context: pass {'question': ..., 'context': ...} "
                         "or a list of them, not a bare string.")
    else:
        table = as_table(raw) if not isinstance(raw, (list, tuple)) else None
        if table is not None:
            what, columns, get, _ = table
            items = [{"question": q, "context": c} for q, c in zip(get(find_column(columns, "question", what)),
                                                                    get(find_column(columns, "context", what)))]
        else:
            items = list(raw)
    bad = []
    for i, item in enumerate(items):
        ok = isinstance(item, dict) and all(isinstance(item.get(k), str) and item[k].strip()
                                            for k in ("question", "context"))
        if not ok:
            bad.append(f"item {i}")
    if bad:
        raise InputError(f"{', '.join(bad[:10])}: each question is a dict with non-empty 'question' and 'context' "
                         "strings.")
    return [x["question"] for x in items], [x["context"] for x in items], single
