"""Extractive question answering: windows over long contexts, start/end cross-entropy, SQuAD EM and F1.

The recipe of BERT's SQuAD experiments (Devlin et al. 2019, arXiv:1810.04805, sections 4.2–4.3) as the
Hugging Face ``run_qa.py`` example implements it:

* each question and its context are tokenized together (``[CLS] question [SEP] context [SEP]``); a context
  longer than ``max_length`` is cut into overlapping windows (``stride`` tokens shared by neighbours);
* a window holding the whole (first) answer is labelled with the answer's first and last tokens; every
  other window — and every window of an unanswerable question — points at the first token (``[CLS]``,
  index 0);
* the loss is the mean of the cross-entropies of the start and the end positions;
* decoding takes the best valid span over all windows of a question (start ≤ end, at most
  ``max_answer_length`` tokens, inside the context) by ``start_logit + end_logit`` and maps it back to
  characters of the context through the tokenizer's offsets. With ``allow_unanswerable`` the answer is
  empty when the no-answer score ``start_logit[0] + end_logit[0]`` (its minimum over the windows) plus
  ``null_threshold`` is at least the best span's score (BERT §4.3).

Metrics are those of the official SQuAD v1.1 script ``evaluate-v1.1.py`` (Rajpurkar et al. 2016,
arXiv:1606.05250): answers normalised (lower case, punctuation, the articles a/an/the and extra white space
removed), exact match and token F1 each the maximum over the gold answers, averaged over questions and
multiplied by 100, as the official script reports them. An unanswerable question (SQuAD v2) scores as the
v2 script scores it: 1 when the prediction normalises to the empty string, else 0. They stream question by
question; ``tests/test_qa.py`` checks them against a copy of the official functions.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.common import first
from transferkit.data.squad import QAExample, load_squad
from transferkit.errors import ConfigError, InputError, LabelError

# --- the official SQuAD v1.1 evaluation (evaluate-v1.1.py), function for function ----------------------


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space (``evaluate-v1.1.py``)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 of the normalised answers (0 without a common token)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Sequence[str]) -> float:
    return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)


class SquadScores:
    """Exact match and F1 summed question by question (streaming), reported ×100 as the official script does."""

    def __init__(self):
        self.exact = self.f1 = 0.0
        self.total = 0

    def update(self, prediction: str | None, ground_truths: Sequence[str]) -> None:
        """Add one question; ``ground_truths`` empty for an unanswerable one; ``prediction`` ``None`` when the
        question got no prediction (it scores 0, as in the official script)."""
        self.total += 1
        if prediction is None:
            return
        if not ground_truths:  # SQuAD v2: the gold answer is the empty string
            right = normalize_answer(prediction) == ""
            self.exact += right
            self.f1 += right
            return
        self.exact += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        self.f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)

    def compute(self) -> dict[str, float]:
        total = max(self.total, 1)
        return {"exact_match": 100.0 * self.exact / total, "f1": 100.0 * self.f1 / total}


def squad_evaluate(data: Any, predictions: dict[str, str]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` (×100) of ``predictions`` (question id → answer text) on QA data.

    ``data`` is anything :func:`transferkit.data.squad.load_squad` reads (a SQuAD dev file...); a question
    without a prediction scores 0, as in the official script.
    """
    scores = SquadScores()
    for example in load_squad(data):
        scores.update(predictions.get(example.id), [text for text, _ in example.answers])
    return scores.compute()


# --- windows ------------------------------------------------------------------------------------------


def qa_tokenizer(backbone: Any) -> Any:
    """The backbone's fast (Rust) Hugging Face tokenizer, which gives windows and character offsets.

    Raises:
        ConfigError: the backbone is not an ``hf:`` one (word vectors have no question/context encoding) or
            its tokenizer is a slow one.
    """
    tokenizer = getattr(getattr(backbone, "preprocessor", None), "tokenizer", None)
    name = f"{backbone.config.get('source')}:{backbone.config.get('name')}"
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError(f"extractive question answering needs a Hugging Face backbone (hf:...), which encodes a "
                          f"question and its context together; the {name} backbone cannot. Use e.g. "
                          "hf:distilbert-base-uncased.")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"question answering needs a fast (Rust) tokenizer for character offsets; {name} has "
                          f"{type(tokenizer).__name__}: save the checkpoint with a tokenizer.json.")
    return tokenizer


def window_length(head: Any, backbone: Any) -> int:
    """Tokens per window: the head's ``max_length``, else the backbone's."""
    limit = int(getattr(backbone.preprocessor, "max_length", 512))
    length = head.max_length or limit
    if length > limit:
        raise ConfigError(f"QuestionAnswering(max_length={length}) is longer than the backbone's {limit} tokens; "
                          f"use at most {limit}.")
    return length


def check_questions(model: nn.Module, questions: Sequence[str], origins: Sequence[str]) -> None:
    """Refuse questions that leave no room (more than ``stride`` tokens) for the context in a window.

    Raises:
        InputError: a question too long for the window (naming it).
        ConfigError: ``stride`` too large for the room a question leaves (naming the numbers).
    """
    head, tokenizer = model.head, qa_tokenizer(model.backbone)
    length = window_length(head, model.backbone)
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    long, tight = [], []
    for n, origin in zip(lengths, origins):
        room = length - n - specials
        if room < 1:
            long.append(f"{origin} ({n} tokens)")
        elif room <= head.stride:
            tight.append((origin, room))
    if long:
        raise InputError(f"question(s) too long for a {length}-token window: {first(long)}; shorten them or raise "
                         "QuestionAnswering(max_length=...).")
    if tight:
        origin, room = min(tight, key=lambda t: t[1])
        raise ConfigError(f"stride={head.stride} must be below the context tokens a window holds: {origin} leaves "
                          f"{room} (max_length {length} minus the question and {specials} special tokens). Pass a "
                          f"smaller QuestionAnswering(stride=...), e.g. {max(room // 2, 0)}, or a longer max_length.")


def encode_windows(model: nn.Module, questions: Sequence[str], contexts: Sequence[str],
                   origins: Sequence[str]) -> dict[str, Any]:
    """Tokenize question/context pairs into windows.

    Returns:
        ``inputs`` (the model's tensors, one row per window), ``window_of`` ``[W]`` (the question each
        window belongs to), ``offsets`` ``[W, T, 2]`` (character offsets into the context) and
        ``context_mask`` ``[W, T]`` (True on context tokens).
    """
    check_questions(model, questions, origins)
    head, tokenizer = model.head, qa_tokenizer(model.backbone)
    enc = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=window_length(
        head, model.backbone), stride=head.stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="longest", return_tensors="pt")
    context_mask = torch.tensor([[s == 1 for s in enc.sequence_ids(i)] for i in range(len(enc["input_ids"]))])
    inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return {"inputs": inputs, "window_of": enc["overflow_to_sample_mapping"].long(),
            "offsets": enc["offset_mapping"].long(), "context_mask": context_mask}


def answer_positions(examples: Sequence[QAExample], windows: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end token of the first answer in each window; 0 (``[CLS]``) where the answer is not wholly
    inside the window or the question has none (the ``run_qa.py`` labelling)."""
    starts, ends = [], []
    for w, q in enumerate(windows["window_of"].tolist()):
        s = e = 0
        example = examples[q]
        context = windows["context_mask"][w].nonzero().flatten()
        if example.answers and len(context):
            text, start_char = example.answers[0]
            end_char = start_char + len(text)
            offsets = windows["offsets"][w][context]
            if offsets[0, 0] <= start_char and offsets[-1, 1] >= end_char:
                s = int(context[(offsets[:, 0] <= start_char).nonzero().max()])
                e = int(context[(offsets[:, 1] >= end_char).nonzero().min()])
        starts.append(s)
        ends.append(e)
    return torch.tensor(starts), torch.tensor(ends)


# --- decoding -----------------------------------------------------------------------------------------


def decode_answers(head: Any, logits: torch.Tensor, windows: dict[str, Any], contexts: Sequence[str]) -> list[dict]:
    """The answer of each question (``{"answer", "start", "end", "score"}``) from its windows' logits ``[W, T, 2]``.

    Spans are compared across windows by ``start_logit + end_logit``; ``score`` is the span's probability in its
    window (softmax of the start and of the end logits over the context tokens, and ``[CLS]`` when the head
    allows unanswerable questions). An empty answer has ``start == end`` (0).
    """
    logits = logits.detach().float().cpu()
    window_of = windows["window_of"].cpu()
    offsets, context_mask = windows["offsets"].cpu(), windows["context_mask"].cpu()
    results = []
    for q, context in enumerate(contexts):
        best, null = None, None
        for w in (window_of == q).nonzero().flatten().tolist():
            start, end, mask = logits[w, :, 0], logits[w, :, 1], context_mask[w]
            span = best_span(start, end, mask, head.max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                best = (*span, w)
            null_score = float(start[0] + end[0])
            if null is None or null_score < null[0]:
                null = (null_score, w)
        if head.allow_unanswerable and null is not None and (best is None or null[0] + head.null_threshold >= best[0]):
            results.append({"answer": "", "start": 0, "end": 0, "score": _probability(head, logits[null[1]], context_mask[null[1]], 0, 0)})
        elif best is None:  # no context token in any window
            results.append({"answer": "", "start": 0, "end": 0, "score": 0.0})
        else:
            _, s, e, w = best
            char_start, char_end = int(offsets[w, s, 0]), int(offsets[w, e, 1])
            results.append({"answer": context[char_start:char_end], "start": char_start, "end": char_end,
                            "score": _probability(head, logits[w], context_mask[w], s, e)})
    return results


def best_span(start: torch.Tensor, end: torch.Tensor, mask: torch.Tensor, max_answer_length: int
              ) -> tuple[float, int, int] | None:
    """``(score, start, end)`` of the best span of one window: start ≤ end < start + max_answer_length, both on
    context tokens; ``None`` when the window has no context token."""
    if not bool(mask.any()):
        return None
    n = len(start)
    i = torch.arange(n)
    valid = mask[:, None] & mask[None, :] & (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_length)
    scores = torch.where(valid, start[:, None] + end[None, :], torch.tensor(float("-inf")))
    flat = int(scores.argmax())
    return float(scores.view(-1)[flat]), flat // n, flat % n


def _probability(head: Any, window_logits: torch.Tensor, mask: torch.Tensor, s: int, e: int) -> float:
    allowed = mask.clone()
    if head.allow_unanswerable:
        allowed[0] = True
    blocked = torch.tensor(float("-inf"))
    start = torch.where(allowed, window_logits[:, 0], blocked).log_softmax(0)
    end = torch.where(allowed, window_logits[:, 1], blocked).log_softmax(0)
    return float((start[s] + end[e]).exp())


# --- the task -----------------------------------------------------------------------------------------


class QuestionAnsweringTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.qa.QuestionAnswering` head.

    Examples are questions (each with its context and answers, :func:`transferkit.data.squad.load_squad`);
    a batch of questions becomes all their windows, so a question's windows are always decoded together.

    Raises:
        ConfigError: the backbone is not an ``hf:`` one with a fast tokenizer.
    """

    default_metric = "f1"
    higher_is_better = {"loss": False, "exact_match": True, "f1": True}

    def __init__(self, model: nn.Module):
        super().__init__()
        qa_tokenizer(model.backbone)
        self.model = model

    def examples(self, data: Any) -> list[QAExample]:
        """The questions of ``data``, checked before any training starts.

        Raises:
            DataError, LabelError: as :func:`~transferkit.data.squad.load_squad` (an answer not at its offset
                names the question); LabelError: unanswerable questions for a head without
                ``allow_unanswerable``. InputError/ConfigError: a question too long for a window.
        """
        examples = load_squad(data)
        if not self.model.head.allow_unanswerable:
            none = [e.where for e in examples if not e.answerable]
            if none:
                raise LabelError(f"{len(none)} question(s) have no answer: {first(none)}. Unanswerable questions "
                                 "(SQuAD v2) need QuestionAnswering(allow_unanswerable=True); else give their answers.")
        check_questions(self.model, [e.question for e in examples], [e.where for e in examples])
        return examples

    def collate(self, examples: Sequence[QAExample]) -> dict[str, Any]:
        windows = encode_windows(self.model, [e.question for e in examples], [e.context for e in examples],
                                 [e.where for e in examples])
        starts, ends = answer_positions(examples, windows)
        return {**windows, "start_positions": starts, "end_positions": ends, "examples": list(examples)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(**batch["inputs"])["logits"].float()
        # The softmax runs over each window's own tokens only: padding (to the longest window of the batch) gets no
        # probability, so a window's loss does not depend on what else is in its batch (accumulation and DDP make
        # the updates of one large batch).
        pad = batch["inputs"]["attention_mask"] == 0
        masked = logits.masked_fill(pad[..., None], torch.finfo(logits.dtype).min)
        loss = (F.cross_entropy(masked[..., 0], batch["start_positions"]) +
                F.cross_entropy(masked[..., 1], batch["end_positions"])) / 2
        return {"loss": loss, "logits": logits, "num_items": len(logits)}

    def metrics(self) -> "QAMetrics":
        return QAMetrics(self.model.head)


class QAMetrics:
    """Streaming validation metrics: loss per window, and exact match and F1 (×100) per question."""

    higher_is_better = QuestionAnsweringTask.higher_is_better

    def __init__(self, head: Any):
        self.head = head
        self.scores = SquadScores()
        self.loss_sum = 0.0
        self.windows = 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        n = int(outputs.get("num_items", 1))
        self.loss_sum += float(outputs["loss"]) * n
        self.windows += n
        examples = batch["examples"]
        answers = decode_answers(self.head, outputs["logits"], batch, [e.context for e in examples])
        for example, answer in zip(examples, answers):
            self.scores.update(answer["answer"], [text for text, _ in example.answers])

    def compute(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.windows, 1), **self.scores.compute()}

    def custom_metric_input(self) -> SquadScores:
        """What a custom metric receives: the summed scores (``exact``, ``f1``, ``total``)."""
        return self.scores

    def state_dict(self) -> dict[str, Any]:
        return {"exact": self.scores.exact, "f1": self.scores.f1, "total": self.scores.total,
                "loss_sum": self.loss_sum, "windows": self.windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores.exact, self.scores.f1, self.scores.total = state["exact"], state["f1"], state["total"]
        self.loss_sum, self.windows = state["loss_sum"], state["windows"]
