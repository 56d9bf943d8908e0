"""Token classification (NER): cross-entropy on each word's first sub-token (with a CRF head, the negative
log-likelihood of each sentence's word tags under the CRF, :mod:`transferkit.heads.crf`); entity precision,
recall and F1.

Entity metrics are micro-averaged over entity types and computed as ``seqeval`` computes them by default
(``seqeval.metrics.f1_score`` / ``precision_score`` / ``recall_score`` with ``average="micro"``, default
mode: entities read by the ``conlleval`` chunk rules, :func:`transferkit.data.conll.entities_from_tags`): an
entity is right when its type, first and last word all match. They stream from three counts (true
positives, predicted and gold entities), so nothing per sentence is kept; ``tests/test_ner.py`` checks them
against seqeval on a fixture of tricky cases. Words cut by the backbone's length limit are predicted ``O``,
so their entities count as missed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.conll import TaggedSentence, convert_tags, entities_from_tags, load_tagged, split_tag
from transferkit.errors import ConfigError, InputError, LabelError

IGNORE = -100  # cross_entropy's ignore_index: tokens that are not a word's first sub-token


class TagExample(tuple):
    """One ``(words, tag ids)`` sentence that also knows its ``origin`` (``"train.conll line 7"``)."""

    origin: str

    def __new__(cls, words: list[str], tags: list[int], origin: str) -> "TagExample":
        example = super().__new__(cls, (words, tags))
        example.origin = origin
        return example

    def __reduce__(self):  # DataLoader workers receive examples pickled
        return (TagExample, (self[0], self[1], self.origin))


def preprocess_tokens(model: nn.Module, sentences: Sequence[Any], origins: Sequence[str]) -> tuple[dict, torch.Tensor]:
    """The backbone's tensors for pre-split sentences and their ``word_ids`` (kept out of the model inputs).

    Raises:
        ConfigError: the backbone's preprocessor cannot map tokens to words (no ``encode_tokens``).
        InputError: a sentence is unusable, naming its origin.
    """
    backbone = model.backbone
    encode = getattr(backbone.preprocessor, "encode_tokens", None)
    if encode is None:
        raise ConfigError(f"the {backbone.config.get('source')}:{backbone.config.get('name')} backbone's "
                          "preprocessor cannot map tokens to words (it has no encode_tokens); token tasks need "
                          "a text backbone such as hf: or word vectors.")
    try:
        out = dict(encode(list(sentences)))
    except InputError as error:
        for sentence, origin in zip(sentences, origins):
            try:
                encode([sentence])
            except InputError as item_error:
                raise type(item_error)(f"{origin}: {item_error}") from item_error
        raise error
    out.pop("offsets", None)
    return out, out.pop("word_ids")


def first_mask(word_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` True at each word's first sub-token (a word's pieces are consecutive tokens)."""
    previous = torch.cat([torch.full_like(word_ids[:, :1], -1), word_ids[:, :-1]], 1)
    return (word_ids >= 0) & (word_ids != previous)


def first_subtokens(logits: torch.Tensor, word_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sentence, the logits of each word's first sub-token ``[W', L]`` and those words' indices ``[W']``."""
    first = first_mask(word_ids)
    return [(logits[b][first[b]], word_ids[b][first[b]]) for b in range(len(word_ids))]


def word_level(logits: torch.Tensor, word_ids: torch.Tensor,
               lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each word's logits, read on its first sub-token, ``[B, W, L]`` with ``W = max(lengths)`` (zeros for a
    word without a token: cut by the length limit, or padding), and ``[B, W]`` which words have a token."""
    batch, width = len(word_ids), max(lengths, default=0)
    rows, positions = first_mask(word_ids).nonzero(as_tuple=True)
    words = word_ids[rows, positions]
    inside = words < width
    rows, positions, words = rows[inside], positions[inside], words[inside]
    emissions = logits.new_zeros(batch, width, logits.shape[-1]).index_put((rows, words), logits[rows, positions])
    present = torch.zeros(batch, width, dtype=torch.bool, device=word_ids.device)
    present[rows, words] = True
    return emissions, present


class TokenClassificationTask(nn.Module):
    """Fine-tune a :class:`~transferkit.TransferModel` with a :class:`~transferkit.heads.token_classification.TokenClassification` head.

    Args:
        model: the model; a head without labels takes its entity types from the first training data.
        words_column: column of the word lists in tables (and JSONL lines with words and tags).
        tags_column: column of the tag lists.

    The data forms are those of :func:`transferkit.data.conll.load_tagged` (CoNLL, JSONL spans, lists of
    ``(words, tags)``, tables). Tags in another scheme than the head's (BIOES data for a BIO head, IOB1)
    are converted, keeping the entities.
    """

    default_metric = "f1"
    higher_is_better = {"loss": False, "precision": True, "recall": True, "f1": True}

    def __init__(self, model: nn.Module, words_column: str = "tokens", tags_column: str = "tags"):
        super().__init__()
        self.model = model
        self.words_column = words_column
        self.tags_column = tags_column

    def examples(self, data: Any) -> list[TagExample]:
        """``(words, tag ids)`` sentences, checked before any training starts.

        Raises:
            DataError: the data cannot be read (naming the line or item).
            LabelError: tags misaligned with the words, an invalid tag, a span off word boundaries or
                overlapping another, or an entity type the head does not know (naming the sentences).
        """
        head = self.model.head
        sentences = load_tagged(data, words_column=self.words_column, tags_column=self.tags_column,
                                pattern=head.word_pattern)
        types = {split_tag(t)[1] for s in sentences for t in s.tags} - {""}
        if head.labels is None:
            if not types:
                raise LabelError("the training data has no entity (every tag is O): the head cannot learn its "
                                 "entity types; give TokenClassification(labels=[...]) or tagged data.")
            head.set_labels(sorted(types))
        known = set(head.types)
        unknown = [s for s in sentences if {split_tag(t)[1] for t in s.tags} - {""} - known]
        if unknown:
            shown = ", ".join(f"{s.origin} ({sorted({split_tag(t)[1] for t in s.tags} - {''} - known)})"
                              for s in unknown[:10])
            raise LabelError(f"{len(unknown)} sentence(s) have entity types the head does not know {head.types}: "
                             f"{shown}. Build the head with those types too, or fix the tags.")
        return [_example(s, head) for s in sentences]

    def collate(self, examples: Sequence[TagExample]) -> dict[str, Any]:
        origins = [getattr(e, "origin", f"example {i}") for i, e in enumerate(examples)]
        inputs, word_ids = preprocess_tokens(self.model, [words for words, _ in examples], origins)
        width = max(len(tags) for _, tags in examples)
        word_tags = torch.full((len(examples), width), -1, dtype=torch.long)
        for b, (_, tags) in enumerate(examples):
            word_tags[b, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        labels = torch.full_like(word_ids, IGNORE)
        rows, positions = first_mask(word_ids).nonzero(as_tuple=True)
        labels[rows, positions] = word_tags[rows, word_ids[rows, positions]]
        return {"inputs": inputs, "labels": labels, "word_ids": word_ids, "word_tags": word_tags}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy per labelled token; with a CRF head, the sentences' CRF negative log-likelihood over
        their words (skipping tokens that are not a word's first sub-token), divided by the labelled tokens."""
        logits = self.model(**batch["inputs"])["logits"]
        keep = batch["labels"] != IGNORE
        count = keep.sum()
        head = self.model.head
        if not bool(count):
            loss = logits.sum() * 0.0
        elif getattr(head, "crf_layer", None) is not None:
            tags = batch["word_tags"].to(logits.device)
            emissions, mask, ended = head.word_emissions(logits, batch["word_ids"].to(logits.device),
                                                         (tags >= 0).sum(1).tolist())
            loss = head.crf_layer.nll(emissions, tags, mask, ended).sum() / count
        else:
            loss = F.cross_entropy(logits[keep].float(), batch["labels"][keep])
        return {"loss": loss, "logits": logits, "num_items": count}

    def metrics(self) -> "EntityMetrics":
        return EntityMetrics(self.model.head)


def _example(sentence: TaggedSentence, head: Any) -> TagExample:
    tags = convert_tags(sentence.tags, head.scheme)
    return TagExample(sentence.words, [head.index[t] for t in tags], sentence.origin)


class EntityCounts:
    """Entity true positives, predicted and gold entities, streamed sentence by sentence (micro average)."""

    def __init__(self):
        self.tp = self.pred = self.true = 0

    def update(self, true_tags: Sequence[str], pred_tags: Sequence[str]) -> None:
        """Add one sentence (tag strings, one per word, any mix of BIO/BIOES prefixes)."""
        gold, guess = set(entities_from_tags(true_tags)), set(entities_from_tags(pred_tags))
        self.tp += len(gold & guess)
        self.pred += len(guess)
        self.true += len(gold)

    def compute(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1``: 0 where undefined, as seqeval's ``zero_division="warn"`` gives."""
        precision = self.tp / self.pred if self.pred else 0.0
        recall = self.tp / self.true if self.true else 0.0
        denom = precision + recall
        f1 = 2.0 * precision * recall / denom if denom else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 of tag sequences, equal to seqeval's defaults."""
    if len(y_true) != len(y_pred) or any(len(a) != len(b) for a, b in zip(y_true, y_pred)):
        raise LabelError("y_true and y_pred must hold the same number of sentences, each with as many tags.")
    counts = EntityCounts()
    for true_tags, pred_tags in zip(y_true, y_pred):
        counts.update(true_tags, pred_tags)
    return counts.compute()


class EntityMetrics:
    """Streaming validation metrics of a token-classification task: loss (per labelled token) and entity
    precision, recall, F1 of the decoded (valid) tag sequences."""

    higher_is_better = TokenClassificationTask.higher_is_better

    def __init__(self, head: Any):
        self.head = head
        self.counts = EntityCounts()
        self.loss_sum = 0.0
        self.items = 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        n = int(outputs.get("num_items", 1))
        self.loss_sum += float(outputs["loss"]) * n
        self.items += n
        golds = [[self.head.labels[t] for t in tags if t >= 0] for tags in batch["word_tags"].tolist()]
        logits = outputs["logits"].detach()
        predicted = self.head.tag_words(logits, batch["word_ids"].to(logits.device), [len(g) for g in golds],
                                        scores=False)
        for gold, (pred, _) in zip(golds, predicted):
            self.counts.update(gold, pred)

    def compute(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.items, 1), **self.counts.compute()}

    def custom_metric_input(self) -> EntityCounts:
        """What a custom metric receives: the entity counts (``tp``, ``pred``, ``true``)."""
        return self.counts

    def state_dict(self) -> dict[str, Any]:
        return {"tp": self.counts.tp, "pred": self.counts.pred, "true": self.counts.true,
                "loss_sum": self.loss_sum, "items": self.items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.tp, self.counts.pred, self.counts.true = state["tp"], state["pred"], state["true"]
        self.loss_sum, self.items = state["loss_sum"], state["items"]
