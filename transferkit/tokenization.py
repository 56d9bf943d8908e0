"""Tokenizers for pretraining: train one from a corpus, build a random model for it, or extend an existing one.

Pretraining from scratch is ``train_tokenizer`` → ``new_text_backbone`` → ``MaskedLM``/``CausalLM`` →
``Trainer``::

    from transferkit.tokenization import train_tokenizer, new_text_backbone
    tok = train_tokenizer("corpus.txt", kind="wordpiece", vocab_size=2000)
    backbone = new_text_backbone(tok, arch="bert", hidden=64, layers=2, heads=2)

Adapting a pretrained model to a new domain or language adds the new domain's words to its tokenizer
(:func:`extend_tokenizer`, after Imamura & Sumita 2022, arXiv:2211.15965).

``tokenizers`` and ``transformers`` are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from typing import Iterable

import torch

from transferkit.errors import DataError

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ENDOFTEXT = "<|endoftext|>"
_WORD = re.compile(r"^\w+$")


def _corpus_lines(corpus_path) -> Iterable[str]:
    from transferkit.data.text_corpus import TextCorpus

    return iter(TextCorpus(corpus_path))  # validates the file (missing, empty, not UTF-8) first


def train_tokenizer(corpus_path: str | os.PathLike, kind: str = "wordpiece", vocab_size: int = 8000, *,
                    min_frequency: int = 2, lowercase: bool = True, max_length: int = 512,
                    special_tokens: list[str] | None = None):
    """Train a subword tokenizer on a text corpus (streamed, one text per line) with HF ``tokenizers``.

    * ``"wordpiece"``: BERT's tokenizer (Wu et al. 2016, arXiv:1609.08144; Devlin et al. 2019): BERT
      normalisation (lower-casing and accent stripping when ``lowercase``), split on whitespace and
      punctuation, ``##`` continuation pieces, ``[CLS] A [SEP] B [SEP]`` templates, and the special tokens
      ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4).
    * ``"bpe"``: GPT-2's byte-level BPE (Sennrich et al. 2016, arXiv:1508.07909; Radford et al. 2019): no
      unknown tokens, no normalisation, ``<|endoftext|>`` as beginning, end and padding token.

    Args:
        corpus_path: a UTF-8 text file.
        kind: ``"wordpiece"`` or ``"bpe"``.
        vocab_size: size of the vocabulary, special tokens included.
        min_frequency: pairs (BPE) or pieces (WordPiece) seen fewer times are not merged.
        lowercase: WordPiece only: lower-case and strip accents (an "uncased" model).
        max_length: the tokenizer's ``model_max_length``.
        special_tokens: replaces the default special tokens (the first ones keep their roles above).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (saved and loaded with ``save_pretrained`` /
        ``AutoTokenizer.from_pretrained``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"kind must be 'wordpiece' or 'bpe', got {kind!r}")
    lines = _corpus_lines(corpus_path)
    if kind == "wordpiece":
        specials = special_tokens or WORDPIECE_SPECIALS
        pad, unk, cls, sep, mask = specials[:5]
        tok = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, continuing_subword_prefix="##")
        tok.train_from_iterator(lines, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=pad, cls_token=cls,
                                       sep_token=sep, mask_token=mask, model_max_length=max_length,
                                       additional_special_tokens=specials[5:] or None)
    specials = special_tokens or [ENDOFTEXT]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    eos = specials[0]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos,
                                   pad_token=eos, model_max_length=max_length,
                                   additional_special_tokens=specials[1:] or None)


def new_text_backbone(tokenizer, arch: str = "bert", hidden: int = 128, layers: int = 2, heads: int = 2,
                      max_length: int = 128, *, intermediate: int | None = None, dropout: float = 0.1,
                      pooling: str | None = None, name: str | None = None, seed: int | None = None):
    """A small transformer with random weights for ``tokenizer``, wrapped as an ``hf`` Backbone.

    Built from ``transformers.BertConfig`` (``arch="bert"``, an encoder for :class:`MaskedLM` and
    :class:`NextSentencePrediction`) or ``GPT2Config`` (``arch="gpt2"``, a causal decoder for
    :class:`CausalLM`) with ``AutoModel.from_config``.

    Args:
        tokenizer: e.g. from :func:`train_tokenizer`; sets the vocabulary size and special token ids.
        hidden, layers, heads: width, depth and attention heads (``hidden`` divisible by ``heads``).
        max_length: position embeddings, and the longest token sequence the backbone keeps.
        intermediate: feed-forward width (default ``4 * hidden``).
        dropout: hidden and attention dropout.
        pooling: ``"mean"`` (default for BERT), ``"cls"`` or ``"last"`` (default for GPT-2).
        name: recorded in the backbone's config (default ``"scratch-ARCH"``).
        seed: seeds the random initialisation.

    Returns:
        A :class:`~transferkit.Backbone` that ``save_pretrained``/``load_backbone`` round-trip.
    """
    from transformers import AutoModel, BertConfig, GPT2Config

    from transferkit.backbones.hf import from_model

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    intermediate = intermediate or 4 * hidden
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = max_length
    if arch == "bert":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate,
                            max_position_embeddings=max_length, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, pad_token_id=tokenizer.pad_token_id)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads,
                            n_inner=intermediate, n_positions=max_length, resid_pdrop=dropout,
                            embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        raise ValueError(f"arch must be 'bert' or 'gpt2', got {arch!r}")
    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    return from_model(model, tokenizer, name=name or f"scratch-{arch}",
                      pooling=pooling or ("mean" if arch == "bert" else "last"), max_length=max_length)


def _words(tokenizer, text: str) -> list[str]:
    """The words the tokenizer's normaliser and pre-tokenizer make of ``text``."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else text.split()


def _pieces(tokenizer, word: str) -> list[str]:
    return tokenizer.tokenize(word)


def extend_tokenizer(backbone, corpus_path: str | os.PathLike, num_new: int = 1000, *, min_frequency: int = 2,
                     keep: Iterable[str] | str | os.PathLike | None = None, check: bool = True):
    """Add a new domain's or language's frequent words to a WordPiece model's tokenizer and embeddings.

    After Imamura & Sumita 2022, "Extending the Subwording Model of Pre-trained BERT Model"
    (arXiv:2211.15965): the vocabulary grows with units learned from the new corpus, existing units keep
    their embeddings, and each new unit's embedding starts as the mean of the embeddings of the old
    pieces it used to be split into (so the model's input barely changes at first).

    How existing segmentations are kept: adding ordinary entries to a WordPiece vocabulary changes the
    greedy longest-match split of old words (adding ``##ckey`` re-splits every old word containing it).
    So the new units are *whole words*, added as ``AddedToken(single_word=True, normalized=True)``: they
    match only a complete word (never inside a longer one) after the usual normalisation, and every other
    word goes through the untouched WordPiece model. Hence a word segments as before unless it *is* one of
    the new words; words of the old vocabulary are never added, nor are the words in ``keep``. Candidates
    are words the old tokenizer splits into 2+ pieces, ranked by the tokens they save
    (``frequency × (pieces − 1)``).

    Args:
        backbone: an ``hf:`` backbone with a WordPiece (or any fast) tokenizer; not modified.
        corpus_path: the new domain's text (UTF-8, one text per line; streamed, word counts are kept).
        num_new: at most this many words are added.
        min_frequency: a word must occur at least this often.
        keep: words whose segmentation must not change (an iterable, or a text file whose words are read),
            e.g. the old corpus.
        check: verify that every word of the old vocabulary and of ``keep`` segments exactly as before.

    Returns:
        A new Backbone (a copy of the model with resized embeddings, and the extended tokenizer) that
        ``save_pretrained``/``load_backbone`` round-trip;
        ``result.preprocessor.tokenizer.added_tokens_encoder`` lists what was added.
    """
    from tokenizers import AddedToken

    from transferkit.backbones.hf import from_model

    old_tok = backbone.preprocessor.tokenizer
    if not getattr(old_tok, "is_fast", False):
        raise TypeError("extend_tokenizer needs a fast (tokenizers-backed) tokenizer.")
    vocab = old_tok.get_vocab()
    protected = set(vocab)
    if keep is not None:
        texts = _corpus_lines(keep) if isinstance(keep, (str, os.PathLike)) else keep
        for text in texts:
            protected.update(_words(old_tok, text))
    counts: Counter = Counter()
    for text in _corpus_lines(corpus_path):
        counts.update(_words(old_tok, text))
    scored = []
    for word, freq in counts.items():
        if freq < min_frequency or word in protected or not _WORD.match(word):
            continue
        pieces = _pieces(old_tok, word)
        if len(pieces) >= 2 and old_tok.unk_token not in pieces:
            scored.append((freq * (len(pieces) - 1), word, pieces))
    scored.sort(key=lambda x: (-x[0], x[1]))
    chosen = scored[:num_new]
    if not chosen:
        raise DataError(f"{corpus_path}: no word occurs {min_frequency}+ times and splits into several pieces; "
                        "nothing to add.")

    tok = copy.deepcopy(old_tok)
    tok.add_tokens([AddedToken(w, single_word=True, normalized=True) for _, w, _ in chosen])
    model = copy.deepcopy(backbone.encoder.model)
    old_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for _, word, pieces in chosen:
            ids = old_tok.convert_tokens_to_ids(pieces)
            weight[tok.convert_tokens_to_ids(word)] = weight[ids].mean(0)
    assert weight.shape[0] >= old_rows
    if check:
        _check_unchanged(old_tok, tok, protected)
    return from_model(model, tok, name=backbone.config["name"] + "+extended",
                      pooling=backbone.pooling.name, max_length=backbone.preprocessor.max_length)


def _check_unchanged(old_tok, new_tok, words: Iterable[str]) -> None:
    changed = [w for w in words if w and not w.startswith("##") and w not in old_tok.all_special_tokens
               and old_tok.tokenize(w) != new_tok.tokenize(w)]
    if changed:
        raise AssertionError(f"extending the tokenizer changed the segmentation of {len(changed)} existing "
                             f"word(s), e.g. {changed[:5]}; please report this.")
