"""Small transformers from random weights with a tokenizer trained on a corpus: ``scratch:bert``, ``scratch:gpt2``.

The start of pretraining from scratch::

    backbone = tk.load_backbone("scratch:bert", corpus="corpus.txt", vocab_size=2000, hidden=64, layers=2, heads=2)
    tk.Trainer(epochs=2).fit(tk.tasks.text.MaskedLM(backbone), "corpus.txt")

``bert`` trains BERT's WordPiece tokenizer and builds a random ``BertModel`` (an encoder, for masked-LM and
next-sentence pretraining); ``gpt2`` trains GPT-2's byte-level BPE and builds a random ``GPT2Model`` (a causal
decoder). Both come from :func:`transferkit.tokenization.train_tokenizer` and
:func:`transferkit.tokenization.new_text_backbone`. ``transferkit pretrain --backbone scratch:bert --data
corpus.txt`` passes its ``--data`` as the corpus.

The result is an ``hf`` backbone: its config names the source ``hf``, so ``save_pretrained`` writes the
tokenizer and transformers config beside the weights and ``load_backbone(DIR)`` rebuilds it through the
``hf`` source, like any transformers checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.errors import ConfigError, OptionError, UnknownBackboneError

from .base import Backbone
from .registry import close_matches, register_source, source

ARCHS = {"bert": "wordpiece", "gpt2": "bpe"}  # architecture → the tokenizer it is trained with


def _rebuild(config: dict, directory: Path) -> Backbone:
    # Saved scratch backbones say source "hf"; a config that says "scratch" is rebuilt the same way.
    return source("hf").rebuild(config, directory)


@register_source("scratch", rebuild=_rebuild, list_names=lambda: sorted(ARCHS),
                 usage="scratch:bert|gpt2 (random small transformer, tokenizer trained on corpus=PATH); options: "
                       "vocab_size=8000, hidden=128, layers=2, heads=2, max_length=128, pooling")
def scratch(name: str, *, corpus: str | os.PathLike | None = None, vocab_size: int = 8000, hidden: int = 128,
            layers: int = 2, heads: int = 2, max_length: int = 128, pooling: str | None = None) -> Backbone:
    """A random BERT or GPT-2 with a tokenizer trained on ``corpus`` (seed with ``torch.manual_seed`` first).

    Args:
        name: ``"bert"`` or ``"gpt2"``.
        corpus: a UTF-8 text file, one text per line, to train the tokenizer on (required).
        vocab_size: size of the tokenizer's vocabulary, special tokens included.
        hidden, layers, heads: width, depth and attention heads (``hidden`` divisible by ``heads``).
        max_length: position embeddings, and the longest token sequence the backbone keeps.
        pooling: ``"mean"`` (BERT's default), ``"cls"`` or ``"last"`` (GPT-2's default).

    Raises:
        UnknownBackboneError: ``name`` is not ``bert`` or ``gpt2``.
        OptionError: no ``corpus`` was given.
        ConfigError: a size is not a positive whole number, or ``hidden`` is not divisible by ``heads``.
        CorpusError: the corpus is missing, empty or not UTF-8.
    """
    from transferkit.tokenization import new_text_backbone, train_tokenizer

    if name not in ARCHS:
        raise UnknownBackboneError(f"scratch:{name}: scratch models are scratch:bert or scratch:gpt2."
                                   + close_matches(name, list(ARCHS), "scratch"))
    if corpus is None:
        raise OptionError(f"scratch:{name} needs corpus=PATH, a UTF-8 text file (one text per line) to train its "
                          "tokenizer on; `transferkit pretrain` passes its --data.")
    sizes = {"vocab_size": vocab_size, "hidden": hidden, "layers": layers, "heads": heads, "max_length": max_length}
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"scratch:{name}: {key} must be a positive whole number, got {value!r}.")
    if hidden % heads:
        raise ConfigError(f"scratch:{name}: hidden ({hidden}) must be divisible by heads ({heads}); "
                          f"e.g. heads={next(h for h in (8, 4, 2, 1) if hidden % h == 0)}.")
    tokenizer = train_tokenizer(corpus, kind=ARCHS[name], vocab_size=vocab_size)
    return new_text_backbone(tokenizer, arch=name, hidden=hidden, layers=layers, heads=heads,
                             max_length=max_length, pooling=pooling)
