"""Self-supervised pretraining tasks for text backbones: masked LM, next-sentence / sentence-order, causal LM.

Each task is three small parts (as in lightly's transforms / heads / losses):

* a *view* made at collate time, which turns raw text into the pretext inputs and labels
  (:func:`mask_tokens`, :class:`~transferkit.data.text_corpus.SentencePairs`, shifted next tokens);
* a *head* (:class:`MLMHead`, :class:`SentencePairHead`, :class:`LMHead`) whose output layer is tied to the
  backbone's input embeddings where the method says so;
* a *loss* (cross-entropy over the labelled positions; ``-100`` marks positions without a label).

Every task takes ``Task(backbone, **options)``, streams a text file with ``task.examples(path)`` and keeps the
backbone at ``task.backbone``: after pretraining, ``task.backbone.save_pretrained(dir)`` and fine-tune later
with ``transferkit.load_backbone(dir)``. The backbone must be an ``hf:`` backbone (a transformers base model
and its tokenizer, see :func:`transferkit.backbones.hf.from_model`).

Example::

    import transferkit as tk
    from transferkit.tasks.text import MaskedLM
    task = MaskedLM(tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2"))
    tk.Trainer(epochs=1, lr=5e-5).fit(task, "in_domain.txt")
    task.backbone.save_pretrained("runs/adapted")
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.text_corpus import CorpusError, SentencePairs, TextCorpus
from transferkit.errors import DataError

__all__ = ["MaskedLM", "NextSentencePrediction", "CausalLM", "TextCorpus", "SentencePairs", "CorpusError",
           "mask_tokens", "MLMHead", "SentencePairHead", "LMHead", "LMMetrics"]

IGNORE = -100  # label of positions without a target (PyTorch cross_entropy's ignore_index)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# --- shared helpers -----------------------------------------------------------------------------------------

def _tokenizer(backbone):
    tok = getattr(getattr(backbone, "preprocessor", None), "tokenizer", None)
    if tok is None or not hasattr(getattr(backbone, "encoder", None), "model"):
        raise TypeError("text pretraining needs an hf: backbone (a transformers model and its tokenizer), got "
                        f"{type(backbone).__name__} {getattr(backbone, 'config', {}).get('source', '')!r}.")
    return tok


def _encode(backbone, texts: Sequence[str], pairs: Sequence[str] | None = None, **kwargs):
    """Tokenize like the backbone's preprocessor (same max_length), keeping the BatchEncoding (word_ids)."""
    texts = list(texts)
    if not texts:
        raise DataError("an empty batch of texts.")
    return _tokenizer(backbone)(texts, pairs, padding=True, truncation=True,
                                max_length=backbone.preprocessor.max_length, return_tensors="pt", **kwargs)


def _inputs(enc) -> dict[str, torch.Tensor]:
    return {k: v for k, v in enc.items() if k in MODEL_INPUTS}


def _examples(data: Any) -> Any:
    """A path streams a :class:`TextCorpus`; datasets and lists of strings pass through."""
    if isinstance(data, (str, os.PathLike)):
        return TextCorpus(data)
    if isinstance(data, torch.utils.data.IterableDataset):
        return data
    data = list(data)
    if not data or not all(isinstance(t, str) and t.strip() for t in data):
        raise DataError("text pretraining data must be a path to a text file or a non-empty list of non-blank "
                        "strings.")
    return data


def _embeddings(backbone) -> nn.Embedding:
    return backbone.encoder.model.get_input_embeddings()


def _init(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _token_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy over labelled positions, with the counts :class:`LMMetrics` needs."""
    keep = labels != IGNORE
    target = labels[keep]
    logits = logits[keep] if logits.shape[:-1] == labels.shape else logits
    loss = F.cross_entropy(logits.float(), target) if len(target) else logits.sum() * 0.0
    count = keep.sum()
    # num_items: the Trainer weights this mean by it, so accumulated micro-batches give the large batch's loss.
    return {"loss": loss, "correct": (logits.argmax(-1) == target).sum(), "count": count, "num_items": count}


# --- masked language modelling --------------------------------------------------------------------------

def _word_starts(enc, tokenizer, row: int, ids: torch.Tensor) -> torch.Tensor:
    """True where a token begins a word: WordPiece's ``##`` pieces continue one, else ``word_ids()``."""
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    prefix = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None),
                     "continuing_subword_prefix", None)
    if prefix:  # WordPiece (BERT): "##ing" continues the previous word
        return torch.tensor([not (t or "").startswith(prefix) for t in tokens])
    word_ids = enc.word_ids(row) if getattr(enc, "encodings", None) else None
    if word_ids is None:
        return torch.ones(len(tokens), dtype=torch.bool)
    return torch.tensor([w is None or i == 0 or w != word_ids[i - 1] for i, w in enumerate(word_ids)])


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, mask_prob: float = 0.15,
                word_starts: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019, arXiv:1810.04805, section 3.1).

    ``mask_prob`` of the non-special, non-padding tokens are selected; of those 80% become ``[MASK]``, 10%
    a uniformly random token and 10% stay unchanged. Labels are the original ids at selected positions and
    ``-100`` elsewhere. With ``word_starts`` (a bool ``[B, T]`` marking the first piece of each word), whole
    words are selected together (whole-word masking, Google's BERT release of 2019; Cui et al. 2019,
    arXiv:1906.08101): a word is selected with probability ``mask_prob`` and all its pieces are masked.

    A batch in which nothing would be selected gets one selected token, so the loss is always defined.

    Returns:
        ``(masked input_ids, labels)``; ``input_ids`` is not modified.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no mask token; masked language modelling needs one "
                         "(train a WordPiece tokenizer or use CausalLM).")
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=input_ids.device)
    candidate = attention_mask.bool() & ~torch.isin(input_ids, special)

    def rand(shape):
        return torch.rand(shape, generator=generator).to(input_ids.device)

    if word_starts is None:
        selected = candidate & (rand(input_ids.shape) < mask_prob)
    else:
        starts = word_starts.to(input_ids.device) & candidate
        word = torch.cumsum(starts.long(), dim=1)  # word number of each token within its row (0: before any)
        chosen = starts & (rand(input_ids.shape) < mask_prob)
        # A token is selected when the start of its word is: scatter word choices to all of its pieces.
        chosen_words = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.bool,
                                   device=input_ids.device)
        chosen_words.scatter_(1, word * chosen, chosen)
        chosen_words[:, 0] = False
        selected = candidate & chosen_words.gather(1, word) & (word > 0)
    if not selected.any() and candidate.any():
        first = candidate.flatten().nonzero()[torch.randint(int(candidate.sum()), (1,), generator=generator)]
        selected.view(-1)[first.to(input_ids.device)] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    draw = rand(input_ids.shape)
    masked = input_ids.clone()
    masked[selected & (draw < 0.8)] = tokenizer.mask_token_id
    randomised = selected & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator).to(input_ids.device)
    masked[randomised] = random_ids[randomised]
    return masked, labels


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then a decoder tied to the input embeddings.

    The decoder's weight *is* the backbone's input embedding matrix (read at every call, so the two stay
    tied through resizing and loading); it has its own output bias (Devlin et al. 2019; Press & Wolf 2017,
    arXiv:1608.05859, for the tying).
    """

    def __init__(self, embeddings: nn.Embedding, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.embeddings = [embeddings]  # a list: not registered twice as a submodule of the task
        dim = embeddings.weight.shape[1]
        self.transform = nn.Sequential(nn.Linear(hidden, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.bias = nn.Parameter(torch.zeros(embeddings.weight.shape[0]))
        _init(self.transform)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embeddings[0].weight
        bias = self.bias if len(self.bias) == len(weight) else F.pad(self.bias, (0, len(weight) - len(self.bias)))
        return F.linear(self.transform(hidden), weight, bias)


class MaskedLM(nn.Module):
    """Masked language modelling (BERT, Devlin et al. 2019, arXiv:1810.04805).

    Masks are drawn when a batch is collated (dynamic masking, RoBERTa, Liu et al. 2019, arXiv:1907.11692),
    so every epoch sees new masks. Random draws use torch's global generator, which
    :class:`~transferkit.Trainer` seeds.

    Args:
        backbone: an ``hf:`` text backbone whose tokenizer has a mask token.
        mask_prob: fraction of tokens (or words) selected for prediction.
        whole_word: select whole words (all WordPiece pieces of a word, or all tokens with one
            ``word_id``) together.
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone, mask_prob: float = 0.15, whole_word: bool = False):
        super().__init__()
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.backbone = backbone
        self.mask_prob = mask_prob
        self.whole_word = whole_word
        config = backbone.encoder.model.config
        self.head = MLMHead(_embeddings(backbone), backbone.feature_dim, getattr(config, "layer_norm_eps", 1e-12))
        _tokenizer(backbone)

    def examples(self, data: Any):
        """A path streams its non-blank lines (:class:`TextCorpus`); a list of strings is used as is."""
        return _examples(data)

    def collate(self, texts: Sequence[str]) -> dict[str, Any]:
        enc = _encode(self.backbone, texts)
        return self.mask(enc)

    def mask(self, enc) -> dict[str, Any]:
        """Mask a tokenized batch: ``{"inputs": model inputs with masks, "labels": ...}``."""
        tok = _tokenizer(self.backbone)
        starts = None
        if self.whole_word:
            starts = torch.stack([_word_starts(enc, tok, i, row) for i, row in enumerate(enc["input_ids"])])
        ids, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], tok, self.mask_prob, starts)
        return {"inputs": {**_inputs(enc), "input_ids": ids}, "labels": labels}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tokens = self.backbone(**batch["inputs"]).tokens
        labels = batch["labels"]
        keep = labels != IGNORE  # only masked positions go through the vocabulary-sized decoder
        return _token_loss(self.head(tokens[keep]), labels[keep])

    def metrics(self) -> "LMMetrics":
        return LMMetrics()


class LMMetrics:
    """Streaming loss per predicted token, accuracy of the predicted tokens (masked or next) and
    perplexity (``exp`` of the loss)."""

    higher_is_better = {"loss": False, "accuracy": True, "perplexity": False}

    def __init__(self):
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        n = int(outputs["count"])
        self.loss_sum += float(outputs["loss"]) * n
        self.correct += int(outputs["correct"])
        self.count += n

    def compute(self) -> dict[str, float]:
        loss = self.loss_sum / max(1, self.count)
        return {"loss": loss, "accuracy": self.correct / max(1, self.count),
                "perplexity": float(torch.tensor(loss).exp())}


# --- sentence pairs ---------------------------------------------------------------------------------------

class SentencePairHead(nn.Module):
    """BERT's pooler (dense + tanh) and a 2-way classifier on the pooled feature."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        _init(self.net)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class NextSentencePrediction(nn.Module):
    """Next-sentence prediction (BERT) or, with ``order=True``, sentence-order prediction (ALBERT).

    NSP (Devlin et al. 2019, arXiv:1810.04805): is sentence B the one that follows A, or a random sentence
    from another document? SOP (Lan et al. 2019, ALBERT, arXiv:1909.11942): are two consecutive sentences
    in order or swapped? SOP cannot be solved by topic alone, which ALBERT found makes NSP too easy.
    Labels follow ``transformers.BertForPreTraining``: 0 = in order / true next, 1 = swapped / random.
    The classifier reads the backbone's pooled feature (the [CLS] token with ``pooling="cls"``).

    ``examples(path)`` reads documents separated by blank lines, one sentence per line
    (:class:`SentencePairs`); a list of ``(a, b, label)`` triples is used as is.

    Args:
        backbone: an ``hf:`` text backbone.
        order: sentence-order prediction instead of next-sentence prediction.
        mlm: add masked language modelling on the same pairs and sum the losses, as BERT does.
        mask_prob, whole_word: masking options when ``mlm=True`` (see :class:`MaskedLM`).
        seed: seed of the pair sampling (pass ``e`` over the file uses ``seed + e``).
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone, order: bool = False, mlm: bool = False, mask_prob: float = 0.15,
                 whole_word: bool = False, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.order, self.seed = order, seed
        self.head = SentencePairHead(backbone.feature_dim)
        # Composition: the masked-LM part is a MaskedLM sharing this backbone (its parameters are counted once).
        self.mlm = MaskedLM(backbone, mask_prob, whole_word) if mlm else None
        _tokenizer(backbone)

    def examples(self, data: Any):
        if isinstance(data, (str, os.PathLike)):
            return SentencePairs(data, order=self.order, seed=self.seed)
        if isinstance(data, torch.utils.data.IterableDataset):
            return data
        data = [tuple(x) for x in data]
        if not data or any(len(x) != 3 or x[2] not in (0, 1) for x in data):
            raise DataError("sentence-pair data must be a path or a non-empty list of (a, b, label 0/1) triples.")
        return data

    def collate(self, examples: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
        enc = _encode(self.backbone, [a for a, _, _ in examples], [b for _, b, _ in examples])
        batch = self.mlm.mask(enc) if self.mlm is not None else {"inputs": _inputs(enc)}
        return {**batch, "pair_labels": torch.tensor([y for _, _, y in examples], dtype=torch.long)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        features = self.backbone(**batch["inputs"])
        logits = self.head(features.pooled)
        loss = F.cross_entropy(logits.float(), batch["pair_labels"])
        out = {"pair_loss": loss, "logits": logits}
        if self.mlm is not None:
            labels = batch["labels"]
            keep = labels != IGNORE
            mlm = _token_loss(self.mlm.head(features.tokens[keep]), labels[keep])
            out.update(mlm_loss=mlm["loss"], correct=mlm["correct"], count=mlm["count"])
            loss = loss + mlm["loss"]
        out["loss"] = loss
        return out

    def metrics(self) -> "PairMetrics":
        return PairMetrics(self.mlm is not None)


class PairMetrics:
    """Loss, pair accuracy, and with MLM the masked-token loss and accuracy."""

    def __init__(self, mlm: bool):
        self.mlm = LMMetrics() if mlm else None
        self.higher_is_better = {"loss": False, "accuracy": True}
        if self.mlm is not None:
            self.higher_is_better.update({f"mlm_{k}": v for k, v in LMMetrics.higher_is_better.items()})
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        labels = batch["pair_labels"]
        self.loss_sum += float(outputs["loss"]) * len(labels)
        self.correct += int((outputs["logits"].argmax(-1) == labels).sum())
        self.count += len(labels)
        if self.mlm is not None:
            self.mlm.update(batch, {"loss": outputs["mlm_loss"], "correct": outputs["correct"],
                                    "count": outputs["count"]})

    def compute(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(1, self.count), "accuracy": self.correct / max(1, self.count)}
        if self.mlm is not None:
            out.update({f"mlm_{k}": v for k, v in self.mlm.compute().items()})
        return out


# --- causal language modelling ----------------------------------------------------------------------------

class LMHead(nn.Module):
    """Next-token logits: the hidden state times the (tied) input embedding matrix, as GPT-2 does."""

    def __init__(self, embeddings: nn.Embedding):
        super().__init__()
        self.embeddings = [embeddings]  # tied, read at every call; not a second registered copy

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embeddings[0].weight)


class CausalLM(nn.Module):
    """Causal language modelling: predict each next token (GPT, Radford et al. 2018; GPT-2, 2019).

    Works with decoder base models (``GPT2Model``, ``LlamaModel``... whose attention is causal). Texts are
    padded on the right and padding positions are labelled ``-100``; an end-of-text token is appended to
    each text (``add_eos``) so the model learns where texts end. The output layer is tied to the input
    embeddings (Press & Wolf 2017, arXiv:1608.05859).

    Args:
        backbone: an ``hf:`` backbone whose model is a causal decoder.
        add_eos: append the tokenizer's end-of-sequence token to each text when it does not already.
    """

    default_metric = "loss"  # selects the best epoch unless Trainer(metric=...) names another

    def __init__(self, backbone, add_eos: bool = True):
        super().__init__()
        self.backbone = backbone
        self.add_eos = add_eos
        self.head = LMHead(_embeddings(backbone))
        tok = _tokenizer(backbone)
        self._eos = tok.eos_token if add_eos and tok.eos_token and tok("a")["input_ids"][-1] != tok.eos_token_id \
            else ""

    def examples(self, data: Any):
        """A path streams its non-blank lines (:class:`TextCorpus`); a list of strings is used as is."""
        return _examples(data)

    def collate(self, texts: Sequence[str]) -> dict[str, Any]:
        enc = _encode(self.backbone, [t + self._eos for t in texts], padding_side="right")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
        return {"inputs": _inputs(enc), "labels": labels}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tokens = self.backbone(**batch["inputs"]).tokens
        labels = batch["labels"][:, 1:]  # position t predicts token t + 1
        keep = labels != IGNORE
        return _token_loss(self.head(tokens[:, :-1][keep]), labels[keep])

    def metrics(self) -> LMMetrics:
        return LMMetrics()

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """Continue ``prompt``; returns the prompt and its continuation as text.

        Decoding runs with the base model's key/value cache (:func:`transferkit.tasks.decoding.causal_continuations`,
        the loop the ``generation`` head predicts with); a prompt longer than the window minus ``max_new_tokens``
        is read from its last tokens, and generation stops at the window.

        Args:
            max_new_tokens: tokens to add at most (stops early at the end-of-sequence token).
            temperature: 0 picks the most likely token (greedy); otherwise logits are divided by it and a
                token is sampled.
            top_k: sample among the ``top_k`` most likely tokens only (Fan et al. 2018, arXiv:1805.04833).
            seed: seeds the sampling generator, so the same seed gives the same text.
        """
        from transferkit.backbones.base import inference
        from .decoding import causal_continuations, greedy

        tok = _tokenizer(self.backbone)
        ids = list(tok(prompt)["input_ids"])
        if not ids:
            ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
        eos = tok.eos_token_id if tok.eos_token_id is not None else -1  # -1: no end token, never produced
        with inference(self) as device:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else int(torch.randint(2**31, (1,))))

            def sample(logits: torch.Tensor) -> torch.Tensor:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

            new = causal_continuations(self.backbone.encoder.model, self.head, [ids], max_new_tokens=max_new_tokens,
                                       eos_id=eos, pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                                       window=self.backbone.preprocessor.max_length,
                                       pick=greedy if temperature == 0 else sample)[0]
        return tok.decode(ids + new, skip_special_tokens=True)
