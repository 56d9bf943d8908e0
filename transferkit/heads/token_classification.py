"""Token classification (named-entity recognition): a tag per word from the backbone's per-token features.

A linear layer over ``Features.tokens`` scores every tag of a BIO or BIOES scheme at every token; each word
is labelled and predicted on its first sub-token (the recipe of BERT's CoNLL-2003 experiments, Devlin et al.
2019, arXiv:1810.04805, section 5.3). Decoding never emits an invalid tag sequence: the most probable *valid*
sequence of the words' tags is found with the Viterbi algorithm (Viterbi 1967) restricted to the allowed
transitions (``I-X`` only after ``B-X``/``I-X``; in BIOES, ``E-X`` closes and ``S-X`` is a one-word entity) —
the constrained decoding of AllenNLP's ``allowed_transitions`` + ``viterbi_decode`` (Gardner et al. 2018,
arXiv:1803.07640) applied to per-word log-probabilities, with no learned transition scores.

With ``crf=True`` a linear-chain CRF (:mod:`transferkit.heads.crf`; Lafferty et al. 2001, the BiLSTM-CRF /
BERT-CRF tagging of Lample et al. 2016, arXiv:1603.01360) sits on the per-word logits: it learns transition,
start and end scores, the loss becomes the CRF's negative log-likelihood of the words' tag sequence, and
decoding is Viterbi over logits + learnt transitions — with the same hard constraints, so it still never
emits an invalid sequence. Entity scores are then the CRF's marginal tag probabilities.

``TransferModel.predict`` on raw text returns entity spans with character offsets::

    [{"entity": "PER", "start": 0, "end": 5, "text": "Alice", "score": 0.93}, ...]

and on pre-split sentences (lists of words) the tag of each word (see :meth:`TokenClassification.predict_raw`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.data.conll import (SCHEMES, WORD_PATTERN, check_scheme, convert_tags, entities_from_tags, scheme_tags,
                                    split_tag, split_words)
from transferkit.errors import ConfigError, InputError
from transferkit.heads import HEADS, register_head
from transferkit.backbones.base import inference, length_batches
from transferkit.heads.base import features_part
from transferkit.heads.crf import CRF


@register_head("token_classification")
class TokenClassification(nn.Module):
    """A tag per word (BIO or BIOES) from per-token features, decoded into valid tag sequences.

    Args:
        labels: the tags (``["O", "B-PER", "I-PER", ...]``) or the entity types (``["LOC", "PER"]``); either
            way the head holds every tag of ``scheme`` for those types, ``O`` first. ``None``: taken from the
            first training data.
        scheme: ``"BIO"`` (IOB2) or ``"BIOES"``; training tags in the other scheme (or IOB1) are converted.
        dropout: dropout on the token features before the linear layer.
        word_pattern: the regular expression that splits raw text into words (JSONL spans and ``predict``
            on raw text use it).
        in_features: feature size; normally left out and taken from the backbone.
        input_column: recorded by training, like the other heads.
        crf: put a linear-chain CRF on the word logits (learnt transitions, CRF loss, Viterbi over
            logits + transitions); its scores are saved with the head.
    """

    needs = frozenset({"tokens", "mask"})

    def __init__(self, labels: Sequence[str] | None = None, *, scheme: str = "BIO", dropout: float = 0.0,
                 word_pattern: str = WORD_PATTERN, in_features: int | None = None, input_column: str | None = None,
                 crf: bool = False):
        super().__init__()
        if not isinstance(crf, bool):
            raise ConfigError(f"crf must be True or False, got {crf!r}.")
        self.crf = crf
        self.scheme = check_scheme(scheme)
        self.dropout = float(dropout)
        self.word_pattern = word_pattern
        self.input_column = input_column
        self.in_features = in_features
        self.labels: list[str] | None = None
        self.layers: nn.Module | None = None
        self.crf_layer: CRF | None = None
        if labels is not None:
            self.set_labels(labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels or ())

    @property
    def types(self) -> list[str]:
        """The entity types, sorted."""
        return sorted({split_tag(t)[1] for t in self.labels or ()} - {""})

    def set_labels(self, labels: Sequence[str]) -> None:
        """Hold every tag of the scheme for the types among ``labels`` (tags or entity types).

        Raises:
            ConfigError: no labels, a tag with a prefix outside the scheme, or the head already has others.
        """
        labels = [str(x).strip() for x in labels]
        types, bad = set(), []
        for label in labels:
            try:
                prefix, kind = split_tag(label)
            except ValueError:
                prefix, kind = "type", label
            if prefix not in ("O", "type") + SCHEMES[self.scheme] or not kind and prefix != "O" or " " in kind:
                bad.append(label)
            if kind:
                types.add(kind)
        if bad or not types:
            raise ConfigError(f"labels must be {self.scheme} tags (O, {', '.join(p + '-TYPE' for p in SCHEMES[self.scheme])}) "
                              f"or entity types (PER, LOC), at least one type; got {labels[:12]} "
                              f"{'(bad: ' + str(bad[:5]) + ')' if bad else ''}.")
        tags = scheme_tags(types, self.scheme)
        if self.labels is not None and tags != self.labels:
            raise ConfigError(f"the head already has the tags {self.labels}; build a new head for {tags}.")
        self.labels = tags
        self.index = {t: i for i, t in enumerate(tags)}
        if self.in_features is not None:
            self.build(self.in_features)

    def build(self, in_features: int) -> None:
        """Create the linear layer once the token feature size and the tags are known (idempotent).

        ``in_features`` is the size of ``Features.tokens`` (``backbone.feature_info.tokens``).
        """
        if self.layers is not None:
            if in_features != self.in_features:
                raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
            return
        self.in_features = int(in_features)
        if self.labels is not None:
            self.layers = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(self.in_features, self.num_classes))
            if self.crf:
                self.crf_layer = CRF(self.num_classes, *self.transitions())

    def forward(self, features: Any) -> torch.Tensor:
        """Tag logits of every token ``[B, T, num_tags]``."""
        if self.layers is None:
            raise RuntimeError("head is not built: it learns its tags from the training data (or give labels=) "
                               "and is composed with a backbone in TransferModel")
        tokens = features_part(features, "tokens")
        if tokens.shape[-1] != self.in_features:
            raise ConfigError(f"the head was built for {self.in_features} features but the backbone's tokens have "
                              f"{tokens.shape[-1]}: token heads are built from backbone.feature_info.tokens, "
                              "which differs from the pooled size here (e.g. word vectors with pooling='mean+max').")
        return self.layers(tokens)

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: cross-entropy on first sub-tokens (with ``crf``: the CRF's negative
        log-likelihood of each sentence's word tags); entity precision/recall/F1 (seqeval)."""
        from transferkit.tasks.token_classification import TokenClassificationTask

        return TokenClassificationTask(model, **options)

    # --- decoding ------------------------------------------------------------------------------------------

    def transitions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(allowed [L, L], may_start [L], may_end [L])``: which tag may follow which, begin and end a sentence."""
        opens = [split_tag(t) for t in self.labels]  # (prefix, type)
        inside = {"BIO": ("I",), "BIOES": ("I", "E")}[self.scheme]

        def closed(p: str) -> bool:  # after it a new entity may start
            return p in ("O", "E", "S") or self.scheme == "BIO"

        def follows(a: tuple[str, str] | None, b: tuple[str, str]) -> bool:
            if b[0] in inside:  # continues an entity: only after its B-/I-
                return a is not None and a[0] in ("B", "I") and a[1] == b[1]
            return a is None or closed(a[0]) or self.scheme == "BIO"

        allowed = torch.tensor([[follows(a, b) for b in opens] for a in opens])
        start = torch.tensor([follows(None, b) for b in opens])
        end = torch.tensor([closed(p) for p, _ in opens])
        return allowed, start, end

    def decode(self, log_probs: torch.Tensor) -> list[int]:
        """The most probable valid tag sequence (ids) of one sentence's ``[W, L]`` word scores.

        Viterbi over the allowed transitions: ``score_t(j) = max_i score_{t-1}(i) + trans(i, j) + s_t(j)`` over
        allowed ``i → j``, started from allowed first tags and ended on allowed last tags. Without ``crf`` the
        scores are log-probabilities and ``trans`` is 0; with it, the CRF's learnt scores over the logits.
        """
        return self._chain(log_probs.device).decode(log_probs[None].float())[0]

    def _chain(self, device: torch.device) -> CRF:
        """The CRF that decodes: the learnt one, or (without ``crf``) one with zero scores and the constraints."""
        if self.crf_layer is not None:
            return self.crf_layer
        if self.labels is None:
            raise RuntimeError("head has no tags yet: give labels= or train it first")
        return CRF(self.num_classes, *self.transitions()).to(device)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Tag probabilities of word-level logits ``[..., W, L]``: softmax over tags, or with ``crf`` the CRF's
        marginals ``p(y_t = tag | sentence)``."""
        if self.crf_layer is None:
            return outputs.float().softmax(-1)
        rows = outputs.float().reshape(-1, *outputs.shape[-2:])
        return self.crf_layer.marginals(rows).reshape(outputs.shape)

    def predict(self, outputs: torch.Tensor) -> list:
        """Valid tag sequences for word-level logits ``[B, W, L]`` (one list of tag names per sentence)."""
        outputs = outputs.float()
        emissions = outputs if self.crf_layer is not None else outputs.log_softmax(-1)
        return [[self.labels[i] for i in path] for path in self._chain(outputs.device).decode(emissions)]

    @torch.no_grad()
    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 32) -> Any:
        """Entities of raw texts, or tags of pre-split sentences (what ``TransferModel.predict`` returns).

        Args:
            model: the :class:`~transferkit.TransferModel` holding this head.
            raw_inputs: one text; a list of texts; or a list of pre-split sentences (lists of words). One
                pre-split sentence alone is ``[words]``.
            batch_size: sentences per forward pass.

        Returns:
            For texts, a list of entities per text (one list for one text): ``{"entity", "start", "end",
            "text", "score"}`` with character offsets (``end`` exclusive) and the mean probability of the
            entity's word tags. For word lists, a list of tags per sentence. Words cut by the backbone's
            length limit are tagged ``O``.

        Raises:
            InputError: an empty text or sentence, a mix of texts and word lists (naming the item).
        """
        from transferkit.tasks.token_classification import preprocess_tokens

        from transferkit.data import as_table, find_column

        single = isinstance(raw_inputs, str)
        table = None if single else as_table(raw_inputs)
        if table is not None:  # a DataFrame, dict of columns or datasets.Dataset: the trained-on column
            what, columns, get, _ = table
            raw_inputs = get(find_column(columns, self.input_column or "text", what))
        items = [raw_inputs] if single else list(raw_inputs)
        texts = bool(items) and all(isinstance(x, str) for x in items)
        if texts:
            split = [split_words(t, self.word_pattern) for t in items]
            empty = [f"item {i}" for i, (words, _) in enumerate(split) if not words]
            if empty:
                raise InputError(f"{', '.join(empty[:10])}: no words to tag (empty or only whitespace).")
            sentences = [words for words, _ in split]
        else:
            sentences = items
        # Sentences of similar length batch together (less padding); the results come back in input order.
        results = [None] * len(sentences)
        with inference(model) as device:
            for indices in length_batches(sentences, batch_size):
                chunk = [sentences[i] for i in indices]
                inputs, word_ids = preprocess_tokens(model, chunk, [f"item {i}" for i in indices])
                logits = model(**{k: v.to(device) for k, v in inputs.items()})["logits"].float()
                for i, result in zip(indices, self.tag_words(logits, word_ids.to(device), [len(w) for w in chunk])):
                    results[i] = result
        if texts:
            results = [self._spans(tags, probs, text, offsets)
                       for (tags, probs), text, (_, offsets) in zip(results, items, split)]
            return results[0] if single else results
        return [tags for tags, _ in results]

    def tag_words(self, logits: torch.Tensor, word_ids: torch.Tensor, lengths: Sequence[int],
                  scores: bool = True) -> list[tuple[list[str], list[float]]]:
        """Valid tags and tag probabilities of each sentence's words, decoded as one batch.

        Args:
            logits: token logits ``[B, T, L]`` (what the model returns).
            word_ids: ``[B, T]``, each token's word (``-1``: none); words are read on their first sub-token.
            lengths: the number of words of each sentence.
            scores: also compute the probabilities (else they are 0).

        Returns:
            per sentence ``(tags, probabilities)``, one per word. Without ``crf`` the words that have a token
            are decoded (probability: softmax); with it, every word up to the last one with a token (a word
            without a token between them scores 0 for every tag; probability: the CRF marginal), the end open
            if later words were cut. Words left out (cut, or without a token and no CRF) are ``O``, the
            sequence kept valid.
        """
        emissions, mask, ended = self.word_emissions(logits, word_ids, lengths)
        chain = self._chain(emissions.device)
        paths = chain.decode(emissions, mask, ended)
        probs = None
        if scores:
            probs = (emissions.exp() if self.crf_layer is None else chain.marginals(emissions, mask, ended)).cpu()
        kept = mask.tolist()
        out = []
        for b, (path, n) in enumerate(zip(paths, lengths)):
            words = [w for w, k in enumerate(kept[b]) if k]
            tags, word_probs = ["O"] * n, [0.0] * n
            for w, tag_id in zip(words, path):
                tags[w] = self.labels[tag_id]
                if probs is not None:
                    word_probs[w] = float(probs[b, w, tag_id])
            if len(words) < n:  # words cut or without a token: keep the sequence valid
                tags = convert_tags(tags, self.scheme)
            out.append((tags, word_probs))
        return out

    def word_emissions(self, logits: torch.Tensor, word_ids: torch.Tensor,
                       lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What is decoded (and, with ``crf``, trained): word scores ``[B, W, L]``, the words that count
        ``[B, W]`` and whether each sentence's end is among them ``[B]`` (``W = max(lengths)``).

        Without ``crf``: the log-probabilities of the words that have a token, the sentences ended. With it:
        the logits of every word up to the last one with a token (zeros for a word without a token, so the
        gold sequence stays valid), a sentence cut by the length limit left open at the end.
        """
        from transferkit.tasks.token_classification import word_level

        emissions, present = word_level(logits.float(), word_ids, lengths)
        length = torch.as_tensor(list(lengths), dtype=torch.long, device=emissions.device)
        if self.crf_layer is None:
            return emissions.log_softmax(-1), present, torch.ones_like(length, dtype=torch.bool)
        positions = torch.arange(emissions.shape[1], device=emissions.device)
        last = torch.where(present, positions, torch.full_like(positions, -1)).amax(1) if emissions.shape[1] \
            else torch.full_like(length, -1)
        return emissions, positions[None] <= last[:, None], last == length - 1

    @staticmethod
    def _spans(tags: list[str], probs: list[float], text: str, offsets: list[tuple[int, int]]) -> list[dict]:
        out = []
        for kind, first, last in entities_from_tags(tags):
            start, end = offsets[first][0], offsets[last][1]
            score = sum(probs[first: last + 1]) / (last - first + 1)
            out.append({"entity": kind, "start": start, "end": end, "text": text[start:end], "score": score})
        return out

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "labels": self.labels, "scheme": self.scheme, "dropout": self.dropout,
                "word_pattern": self.word_pattern, "in_features": self.in_features, "input_column": self.input_column,
                "crf": self.crf}


HEADS.register("ner", TokenClassification)  # an alias: the head's type stays "token_classification"
