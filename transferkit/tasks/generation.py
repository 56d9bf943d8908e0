"""Fine-tuning a generation model on ``(input, target)`` pairs: loss on target tokens only; perplexity, ROUGE-L, BLEU.

**Causal LM.** Each example becomes ``prompt + target + <eos>`` (the prompt: :meth:`Generation.prompt_ids
<transferkit.heads.generation.Generation.prompt_ids>`), padded on the right; the labels are ``-100`` on the
prompt and the padding, so the cross-entropy of next-token prediction counts the target tokens and the end
token only. A sequence longer than the backbone's window loses the start of its prompt first (the template's
end and the separator stay), keeping at least half the window for the prompt; a target longer than the rest
is cut (and then has no end token).

**Encoder-decoder** (T5, Raffel et al. 2020, arXiv:1910.10683; BART, Lewis et al. 2020, arXiv:1910.13461). The
prompt goes to the encoder (cut to the window by the tokenizer, its special tokens kept); ``target + <eos>`` (cut
to the window) is the decoder's labels, and its inputs are the labels shifted right, starting at
``decoder_start_token_id`` (teacher forcing, as ``T5ForConditionalGeneration._shift_right`` makes them); padding
is ``-100`` in the labels and masked in both attention masks.

Validation streams the loss per target token, next-token accuracy and perplexity (``exp`` of the loss; the
same :class:`~transferkit.tasks.text.LMMetrics` the causal-LM pretraining reports). With
``generate_in_eval`` it also generates greedily for every validation input and reports **ROUGE-L** — the
mean over examples of the ``rougeL`` F-measure of Google's ``rouge-score`` package (Lin 2004, "ROUGE: a
package for automatic evaluation of summaries"; no stemming), ×100 — and corpus **BLEU** from ``sacrebleu``
(Papineni et al. 2002; Post 2018, arXiv:1804.08771; its default 13a tokenisation), 0–100. Both packages are
optional (``pip install rouge-score sacrebleu``); generating costs one decoder step per generated token (with a
key/value cache), so it is off by default and the best epoch is chosen on the loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.data.common import first
from transferkit.errors import ConfigError, InputError, LabelError

from .text import IGNORE, LMMetrics, _token_loss
from .supervised import check_examples


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """The ``rougeL`` F-measure (0–1) of each prediction against its reference (``rouge_score``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0–100) of the predictions, one reference each (``sacrebleu.corpus_bleu``)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _require_text_metrics() -> None:
    missing = []
    for module, package in (("rouge_score", "rouge-score"), ("sacrebleu", "sacrebleu")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(f"generate_in_eval reports ROUGE-L and BLEU, which need {' and '.join(missing)}: pip "
                          f"install {' '.join(missing)}, or leave generate_in_eval off (loss and perplexity only).")


class GenerationTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.generation.Generation` head
    (a causal LM or an encoder-decoder model).

    Args:
        model: the model.
        input_column, target_column: the columns of a table (CSV/TSV/JSONL, DataFrame, dict of columns,
            datasets.Dataset, list of dicts); a list of ``(input, target)`` pairs needs none.
        generate_in_eval: overrides the head's ``generate_in_eval`` (generate during validation: ROUGE-L, BLEU).

    Raises:
        ConfigError: ``generate_in_eval`` without ``rouge-score``/``sacrebleu`` installed.
    """

    default_metric = "loss"
    higher_is_better = {"loss": False, "accuracy": True, "perplexity": False, "rougeL": True, "bleu": True}

    def __init__(self, model: nn.Module, input_column: str = "input", target_column: str = "target",
                 generate_in_eval: bool | None = None):
        super().__init__()
        self.model = model
        self.input_column = input_column
        self.target_column = target_column
        head = model.head
        self.generate_in_eval = head.generate_in_eval if generate_in_eval is None else bool(generate_in_eval)
        if self.generate_in_eval:
            _require_text_metrics()

    def examples(self, data: Any) -> list[tuple[str, str]]:
        """``(input, target)`` string pairs, checked before any training starts.

        Raises:
            DataError: the data is empty, unreadable or lacks the input/target columns.
            LabelError: a target is missing, not a string or blank (naming the rows).
            InputError: an input is empty or not text (naming the rows).
        """
        from transferkit.data import load_raw

        raw = load_raw(data, input_column=self.input_column, label_column=self.target_column)
        bad = []
        for y, origin in zip(raw.labels, raw.origins):
            if not isinstance(y, str) or not y.strip():
                bad.append(f"{origin} ({'missing' if y is None or y != y else repr(y)[:40]})")
        if bad:
            raise LabelError(f"{len(bad)} example(s) have no target text: {first(bad)}. Every example needs a "
                             f"non-empty target string (column {self.target_column!r}): fill them in or remove "
                             "those rows.")
        table = None if isinstance(data, (list, tuple)) else (raw.input_column or self.input_column)
        check_examples(self.model, raw.inputs, raw.origins, table)
        if not all(isinstance(x, str) for x in raw.inputs):
            wrong = [o for x, o in zip(raw.inputs, raw.origins) if not isinstance(x, str)]
            raise InputError(f"{len(wrong)} input(s) are not text: {first(wrong)}. Generation reads strings.")
        return list(zip(raw.inputs, raw.labels))

    def encode(self, inputs: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        """Causal: ``input_ids``/``attention_mask`` of ``prompt + target + eos`` (right-padded) and the labels.
        Seq2seq: the encoder's ``input_ids``/``attention_mask``, the decoder's ``decoder_input_ids`` /
        ``decoder_attention_mask`` and the labels ``target + eos``."""
        head = self.model.head
        if head.kind == "seq2seq":
            return self._encode_seq2seq(inputs, targets)
        window, eos = head.window, head.eos_id
        rows, labels = [], []
        for prompt, target in zip(head.prompt_ids(inputs), head.target_ids(targets)):
            target = target + [eos]
            room = max(window - len(target), (window + 1) // 2)  # the prompt keeps at least half the window
            prompt = prompt[-room:] if len(prompt) > room else prompt
            target = target[: window - len(prompt)]
            rows.append(prompt + target)
            labels.append([IGNORE] * len(prompt) + target)
        ids, mask = _pad(rows, head.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": _pad(labels, IGNORE)[0]}

    def _encode_seq2seq(self, inputs: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        head = self.model.head
        sources = head.prompt_ids(inputs)
        labels = [(target + [head.eos_id])[: head.window] for target in head.target_ids(targets)]
        shifted = [[head.start_id] + label[:-1] for label in labels]
        ids, mask = _pad(sources, head.pad_id)
        decoder_ids, decoder_mask = _pad(shifted, head.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
                "decoder_attention_mask": decoder_mask, "labels": _pad(labels, IGNORE)[0]}

    def collate(self, examples: Sequence[tuple[str, str]]) -> dict[str, Any]:
        enc = self.encode([x for x, _ in examples], [y for _, y in examples])
        labels = enc.pop("labels")
        decoder = {"input_ids": enc.pop("decoder_input_ids"), "attention_mask": enc.pop("decoder_attention_mask")} \
            if "decoder_input_ids" in enc else None
        batch = {"inputs": enc, "labels": labels, "texts": [x for x, _ in examples],
                 "targets": [y for _, y in examples]}
        if decoder is not None:
            batch["decoder"] = decoder
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        head = self.model.head
        features = self.model.backbone(**batch["inputs"])
        if "decoder" in batch:  # seq2seq: decoder states at every target position, teacher-forced
            hidden = head.decode(features.tokens, features.mask, batch["decoder"]["input_ids"],
                                 batch["decoder"]["attention_mask"])
            labels = batch["labels"]
        else:
            hidden, labels = features.tokens[:, :-1], batch["labels"][:, 1:]  # position t predicts token t + 1
        keep = labels != IGNORE  # only target positions go through the vocabulary-sized output layer
        return _token_loss(head.logits(hidden[keep]), labels[keep])

    def metrics(self) -> "GenerationMetrics":
        return GenerationMetrics(self.model if self.generate_in_eval else None)


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the right with ``value`` ``[B, T]`` and their mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


class GenerationMetrics:
    """Loss per target token, accuracy and perplexity (streaming); with a model, ROUGE-L and BLEU of its greedy
    generations (the generated and reference strings are kept: corpus BLEU needs them all)."""

    higher_is_better = GenerationTask.higher_is_better

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        self.lm = LMMetrics()
        self.predictions: list[str] = []
        self.references: list[str] = []
        self.rouge_sum = 0.0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        self.lm.update(batch, outputs)
        if self.model is None:
            return
        generated = self.model.head.generate(self.model, batch["texts"], batch_size=len(batch["texts"]))
        self.rouge_sum += sum(rouge_l(generated, batch["targets"]))
        self.predictions += generated
        self.references += list(batch["targets"])

    def compute(self) -> dict[str, float]:
        out = self.lm.compute()
        if self.model is not None:
            n = max(len(self.predictions), 1)
            out["rougeL"] = 100.0 * self.rouge_sum / n
            out["bleu"] = bleu(self.predictions, self.references) if self.predictions else 0.0
        return out

    def custom_metric_input(self) -> "GenerationMetrics":
        """What a custom metric receives: this object (``predictions`` and ``references`` when generating)."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.lm.loss_sum, "correct": self.lm.correct, "count": self.lm.count,
                "predictions": self.predictions, "references": self.references, "rouge_sum": self.rouge_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lm.loss_sum, self.lm.correct, self.lm.count = state["loss_sum"], state["correct"], state["count"]
        self.predictions, self.references = list(state["predictions"]), list(state["references"])
        self.rouge_sum = state["rouge_sum"]
