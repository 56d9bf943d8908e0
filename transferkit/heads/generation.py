"""Text generation on ``(input, target)`` pairs: a causal LM, or an encoder-decoder (T5, BART) model.

**Causal decoders** (GPT-2 family, Llama family such as SmolLM2, ``scratch:gpt2``) read
``prompt_template.format(input=x)`` followed by a separator and learn to continue it with the target and an
end-of-sequence token; the loss is on the target tokens (and that end token) only, as in instruction tuning
(Ouyang et al. 2022, arXiv:2203.02155; the ``-100`` labels of Hugging Face's causal-LM fine-tuning).

**Encoder-decoder models** (``config.is_encoder_decoder``: T5, Raffel et al. 2020, arXiv:1910.10683; BART, Lewis
et al. 2020, arXiv:1910.13461; mT5, Pegasus...) read the prompt with the encoder (the backbone's own forward pass)
and the decoder predicts ``target + <eos>`` by teacher forcing: its inputs are the target shifted right, starting
at ``decoder_start_token_id`` (T5's ``_shift_right``); the separator is not used.

The output layer is what the model's own ``...ForCausalLM`` / ``...ForConditionalGeneration`` computes:

* tied to the input embedding matrix (GPT-2, Radford et al. 2019; Press & Wolf 2017, arXiv:1608.05859) — the
  :class:`~transferkit.tasks.text.LMHead` that :class:`~transferkit.tasks.text.CausalLM` pretrains with;
* or, when the checkpoint holds an untied ``lm_head.weight`` (T5 v1.1 / flan-T5, Llama models with
  ``tie_word_embeddings=False``), which ``AutoModel`` drops, the head's own ``nn.Linear`` initialised from it
  (read by key from the checkpoint's safetensors files, see :meth:`HFEncoder.pretrained_tensor
  <transferkit.backbones.hf.HFEncoder.pretrained_tensor>`);
* T5 v1.0 scales the decoder output by ``d_model ** -0.5`` before the tied projection
  (``config.scale_decoder_outputs``; older transformers: ``tie_word_embeddings``), and BART-family models add
  their ``final_logits_bias`` (read from the checkpoint and kept as a buffer of the head).

``TransferModel.predict`` returns the generated text (the continuation only), decoded greedily with a key/value
cache (:mod:`transferkit.tasks.decoding`). An encoder (BERT) or a word-vector backbone is refused with a
:class:`~transferkit.errors.ConfigError` naming what can generate. The loss and the metrics (perplexity; ROUGE-L
and BLEU on generated text when asked) are in :mod:`transferkit.tasks.generation`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError, InputError
from transferkit.backbones.base import inference
from transferkit.heads import register_head

# Decoder-only model types whose base model (AutoModel) attends causally; others must say config.is_decoder.
CAUSAL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "codegen", "llama", "mistral", "mixtral", "qwen2",
    "qwen3", "phi", "phi3", "gemma", "gemma2", "gemma3_text", "opt", "bloom", "falcon", "olmo", "olmo2",
    "stablelm", "smollm3", "granite", "cohere", "starcoder2"})
# T5-family types whose ForConditionalGeneration scaled the decoder output when tied (transformers < 5.2x,
# whose configs lack ``scale_decoder_outputs``); mT5 never scales.
SCALED_WHEN_TIED = frozenset({"t5", "umt5", "longt5", "switch_transformers", "pop2piano"})
CAN_GENERATE = ("a causal decoder (hf:gpt2, hf:HuggingFaceTB/SmolLM2-135M, scratch:gpt2) or an encoder-decoder "
                "(hf:t5-small, hf:google/flan-t5-small, hf:facebook/bart-base)")


def language_model(backbone: Any) -> tuple[nn.Module, str]:
    """The transformers base model of an ``hf:`` backbone that can generate, and its kind.

    Returns:
        ``(model, "causal")`` for a causal decoder, ``(model, "seq2seq")`` for an encoder-decoder model.

    Raises:
        ConfigError: a word-vector or vision backbone, or an encoder-only model (BERT), naming what can generate.
    """
    name = f"{backbone.config.get('source')}:{backbone.config.get('name')}"
    model = getattr(getattr(backbone, "encoder", None), "model", None)
    tokenizer = getattr(getattr(backbone, "preprocessor", None), "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "get_input_embeddings"):
        raise ConfigError(f"generation needs a Hugging Face causal language model or encoder-decoder: "
                          f"{CAN_GENERATE}; the {name} backbone has none.")
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return model, "seq2seq"
    if getattr(config, "is_decoder", False) or getattr(config, "model_type", None) in CAUSAL_TYPES:
        return model, "causal"
    raise ConfigError(f"generation needs {CAN_GENERATE}; {name} is a "
                      f"{getattr(config, 'model_type', type(model).__name__)} model, an encoder whose attention "
                      "is not causal and which has no decoder.")


def output_scale(config: Any) -> float | None:
    """The factor T5 v1.0 applies to the decoder output before the tied projection (``d_model ** -0.5``), or
    ``None`` for models that do not scale (T5 v1.1, mT5, BART...)."""
    scale = getattr(config, "scale_decoder_outputs", None)
    if scale is None:
        scale = config.model_type in SCALED_WHEN_TIED and getattr(config, "tie_word_embeddings", True)
    dim = getattr(config, "d_model", None) or config.hidden_size
    return float(dim) ** -0.5 if scale else None


@register_head("generation")
class Generation(nn.Module):
    """A language-model head over the backbone's tokens that generates a target for each input.

    Args:
        max_new_tokens: tokens generated at most by ``predict`` (it stops earlier at the end token).
        prompt_template: how an input becomes the prompt; must contain ``{input}``, e.g.
            ``"Article: {input}\\nHeadline:"`` (or T5's ``"summarize: {input}"``).
        separator: causal models: text put between the prompt and the target (e.g. ``" "``); ``None`` puts the
            tokenizer's end-of-sequence token there, which needs no whitespace convention. Unused by
            encoder-decoder models, whose decoder starts at ``decoder_start_token_id``.
        tie_to_embeddings: the output layer is the input embedding matrix (GPT-2, SmolLM2, T5 v1.0, BART);
            ``False`` gives the head its own output matrix, saved with the head and initialised from the
            checkpoint's untied ``lm_head.weight`` when it has one, else as a copy of the embeddings. ``None``
            (default) does what the checkpoint does: untied when it holds its own ``lm_head.weight`` or its
            config says ``tie_word_embeddings=False``.
        final_logits_bias: add BART's ``final_logits_bias`` to the logits; ``None`` (default): when the
            checkpoint has one.
        generate_in_eval: generate during validation and report ROUGE-L and BLEU (slow: one decoder step per
            generated token); otherwise validation reports loss, accuracy and perplexity only.
        input_column: the table column the head was trained on (recorded by training).
        in_features, vocab_size: sizes; normally left out and taken from the backbone.
    """

    needs = frozenset({"tokens", "mask"})

    def __init__(self, *, max_new_tokens: int = 32, prompt_template: str = "{input}", separator: str | None = None,
                 tie_to_embeddings: bool | None = None, final_logits_bias: bool | None = None,
                 generate_in_eval: bool = False, input_column: str | None = None, in_features: int | None = None,
                 vocab_size: int | None = None):
        super().__init__()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"Generation(max_new_tokens=...) must be a whole number of tokens, at least 1; got "
                              f"{max_new_tokens!r}.")
        try:
            ok = isinstance(prompt_template, str) and "{input}" in prompt_template
            ok = ok and prompt_template.format(input="x") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"Generation(prompt_template=...) must be a string with one '{{input}}' field and no "
                              f"other fields (double literal braces: '{{{{'), got {prompt_template!r}.")
        if separator is not None and not isinstance(separator, str):
            raise ConfigError(f"Generation(separator=...) must be a string or None, got {separator!r}.")
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.separator = separator
        self.tie_to_embeddings = None if tie_to_embeddings is None else bool(tie_to_embeddings)
        self.final_logits_bias = None if final_logits_bias is None else bool(final_logits_bias)
        self.generate_in_eval = bool(generate_in_eval)
        self.input_column = input_column
        self.in_features = in_features
        self.vocab_size = vocab_size
        self.output: nn.Module | None = None
        self.register_buffer("bias", None)  # BART's final_logits_bias [vocab], when the model has one
        self.kind: str | None = None  # "causal" or "seq2seq", known once attached
        self.scale: float | None = None  # T5 v1.0's d_model ** -0.5 on the decoder output
        self._backbone: list = []  # the backbone, unregistered (TransferModel owns it)

    # --- composing -----------------------------------------------------------------------------------------

    def build(self, in_features: int) -> None:
        """Record the token feature size (the output layer is made in :meth:`attach`, from the embeddings)."""
        if self.in_features is not None and self.output is not None and in_features != self.in_features:
            raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
        self.in_features = int(in_features)

    def attach(self, backbone: Any) -> None:
        """Make the output layer as the backbone's model does (tied, or the checkpoint's own ``lm_head``; T5's
        scale, BART's bias), refusing backbones that cannot generate.

        Raises:
            ConfigError: the backbone is not a causal decoder or an encoder-decoder model, or the sizes disagree.
        """
        from transferkit.tasks.text import LMHead

        model, self.kind = language_model(backbone)
        embeddings = model.get_input_embeddings()
        rows, dim = embeddings.weight.shape
        if self.vocab_size is not None and self.vocab_size != rows:
            raise ConfigError(f"head was built for a vocabulary of {self.vocab_size}, backbone has {rows}.")
        self.vocab_size = int(rows)
        self._backbone = [backbone]
        read = getattr(backbone.encoder, "pretrained_tensor", lambda key: None)
        pretrained = read("lm_head.weight")
        if pretrained is not None and tuple(pretrained.shape) != (rows, self.in_features or dim):
            raise ConfigError(f"the checkpoint's lm_head.weight is {tuple(pretrained.shape)}, but the model has "
                              f"{rows} tokens of {self.in_features or dim} features: it belongs to another model.")
        untied = pretrained is not None and not torch.equal(pretrained.to(embeddings.weight), embeddings.weight)
        if self.tie_to_embeddings is None:
            self.tie_to_embeddings = not untied and getattr(model.config, "tie_word_embeddings", True) is not False
        if self.tie_to_embeddings and self.in_features is not None and dim != self.in_features:
            raise ConfigError(f"the {backbone.config.get('name')} embeddings have {dim} dimensions but its tokens "
                              f"{self.in_features}: tie_to_embeddings needs them equal; pass "
                              "Generation(tie_to_embeddings=False).")
        if self.tie_to_embeddings:
            self.output = LMHead(embeddings)  # no parameters of its own: reads the embedding matrix at each call
        elif not isinstance(self.output, nn.Linear):
            self.output = nn.Linear(self.in_features or dim, rows, bias=False).to(embeddings.weight)
            source = pretrained if pretrained is not None else embeddings.weight if self.output.weight.shape == \
                embeddings.weight.shape else None
            if source is not None:
                with torch.no_grad():
                    self.output.weight.copy_(source)
        self.scale = output_scale(model.config) if self.kind == "seq2seq" else None
        bias = read("final_logits_bias")
        if self.final_logits_bias is None:
            self.final_logits_bias = bias is not None
        if self.final_logits_bias and self.bias is None:
            bias = torch.zeros(rows) if bias is None else bias.reshape(-1)
            if len(bias) != rows:
                raise ConfigError(f"the checkpoint's final_logits_bias has {len(bias)} entries, the model {rows} "
                                  "tokens: it belongs to another model.")
            self.bias = bias.to(embeddings.weight)

    @property
    def backbone(self) -> Any:
        if not self._backbone:
            raise RuntimeError("head is not attached: compose it with a backbone in TransferModel first")
        return self._backbone[0]

    @property
    def model(self) -> nn.Module:
        """The transformers base model (for an encoder-decoder, the one holding the decoder)."""
        return self.backbone.encoder.model

    @property
    def tokenizer(self) -> Any:
        return self.backbone.preprocessor.tokenizer

    @property
    def window(self) -> int:
        """The longest sequence the backbone takes (causal: prompt + target; seq2seq: source, and target)."""
        return int(self.backbone.preprocessor.max_length)

    @property
    def eos_id(self) -> int:
        tok = self.tokenizer
        for eos in (tok.eos_token_id, tok.sep_token_id, getattr(self.model.config, "eos_token_id", None)):
            if isinstance(eos, int):
                return eos
        raise ConfigError(f"{type(tok).__name__} has no end-of-sequence token, which generation needs to stop.")

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else int(pad)

    @property
    def start_id(self) -> int:
        """The decoder's first input token (``decoder_start_token_id``; T5: the padding token, BART: ``</s>``)."""
        config = self.model.config
        for start in (getattr(config, "decoder_start_token_id", None), getattr(config, "bos_token_id", None)):
            if isinstance(start, int):
                return start
        raise ConfigError(f"the {config.model_type} model's config has no decoder_start_token_id (nor "
                          "bos_token_id), which its decoder needs as its first input: set it in config.json.")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[..., vocab]`` of hidden states ``[..., D]`` (decoder states for seq2seq)."""
        if self.output is None:
            raise RuntimeError("head is not attached: compose it with a backbone in TransferModel first")
        if self.scale is not None:
            hidden = hidden * self.scale
        out = self.output(hidden)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def decode(self, encoder_states: torch.Tensor, encoder_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
               decoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's hidden states ``[B, T, D]`` for its inputs, cross-attending to the encoder's states."""
        return self.model.get_decoder()(input_ids=decoder_input_ids, attention_mask=decoder_mask,
                                        encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                                        use_cache=False).last_hidden_state

    def forward(self, features: Any) -> torch.Tensor:
        """Causal: next-token logits of every position ``[B, T, vocab]``. Seq2seq: the logits of the first
        target token ``[B, 1, vocab]`` (the decoder run on ``decoder_start_token_id`` alone)."""
        from transferkit.heads.base import features_part

        tokens = features_part(features, "tokens")
        if self.kind != "seq2seq":
            return self.logits(tokens)
        start = torch.full((tokens.shape[0], 1), self.start_id, dtype=torch.long, device=tokens.device)
        return self.logits(self.decode(tokens, features_part(features, "mask"), start))

    # --- tokens ------------------------------------------------------------------------------------------

    def prompt_ids(self, inputs: Sequence[str]) -> list[list[int]]:
        """Token ids of each input's prompt. Causal: the template, the tokenizer's own special start tokens, the
        separator (or the end token when ``separator is None``). Seq2seq: the encoder's input, the template with
        the tokenizer's special tokens (T5's ``</s>``, BART's ``<s> … </s>``), cut to the window."""
        tok = self.tokenizer
        texts = [self.prompt_template.format(input=x) for x in inputs]
        if self.kind == "seq2seq":
            return [list(row) for row in tok(texts, truncation=True, max_length=self.window)["input_ids"]]
        ids = tok([t + self._separator_parts[0] for t in texts])["input_ids"]
        if self.separator is None:
            ids = [list(row) + [self.eos_id] for row in ids]
        return [list(row) for row in ids]

    @property
    def _separator_parts(self) -> tuple[str, str]:
        """The separator as (what ends the prompt, the spaces that start the target).

        Byte-level BPE tokenizers (GPT-2, SmolLM2) write a word's leading space into the word's token (``'ĠBank'``);
        a prompt ending in ``" "`` tokenized apart from its target would give a lone ``'Ġ'`` and then ``'Bank'``,
        which running text never has. So trailing spaces of the separator go to the front of the target, and the
        prompt, the target and ``prompt + separator + target`` tokenize alike."""
        sep = self.separator or ""
        text = sep.rstrip(" ") if self.kind != "seq2seq" else sep
        return text, sep[len(text):]

    def target_ids(self, targets: Sequence[str]) -> list[list[int]]:
        """Token ids of each target (after the separator's trailing spaces), without special tokens (the end
        token is added by the task)."""
        lead = self._separator_parts[1]  # "" for seq2seq, whose decoder starts at decoder_start_token_id
        rows = self.tokenizer([lead + t for t in targets], add_special_tokens=False)["input_ids"]
        return [list(row) for row in rows]

    # --- generating --------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, model: nn.Module, prompts: Sequence[Sequence[int]], use_cache: bool = True
                     ) -> list[list[int]]:
        """Greedy continuations (token ids, the end token excluded) of a batch of prompts (:meth:`prompt_ids`).

        Causal: left-padded prompts and the base model's key/value cache; a prompt longer than the window minus
        ``max_new_tokens`` keeps its last tokens. Seq2seq: the encoder runs once, the decoder one token per step
        with its cache. ``use_cache=False`` runs the plain reference loops (:mod:`transferkit.tasks.decoding`).
        """
        from transferkit.tasks.decoding import causal_continuations, seq2seq_continuations

        if self.kind != "seq2seq":
            record = self.backbone.config.get("adapters")
            if record is not None and record["method"] in ("prompt_tuning", "prefix_tuning"):
                # The decoding loop drives the base model and its cache itself: it would leave them out.
                raise ConfigError(f"generating with a causal model under {record['method']} is not built: the "
                                  "decoding loop would run without the learnt tokens. Use LoRA, IA³ or bottleneck "
                                  "adapters for a causal generation head (prompt tuning works with seq2seq models).")
            return causal_continuations(self.model, self.logits, prompts, max_new_tokens=self.max_new_tokens,
                                        eos_id=self.eos_id, pad_id=self.pad_id, window=self.window,
                                        use_cache=use_cache)
        device = next(model.parameters()).device
        prompts = [list(p) for p in prompts]
        if any(not p for p in prompts):
            raise InputError("a prompt has no tokens: give non-empty inputs.")
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [self.pad_id] * (width - len(p)) for p in prompts], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=device)
        states = self.backbone(input_ids=ids, attention_mask=mask).tokens
        return seq2seq_continuations(self.model.get_decoder(), self.logits, states, mask, start_id=self.start_id,
                                     eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=self.max_new_tokens,
                                     use_cache=use_cache)

    @torch.no_grad()
    def generate(self, model: nn.Module, inputs: Sequence[str], batch_size: int = 32, use_cache: bool = True
                 ) -> list[str]:
        """The generated text of each input (greedy, at most ``max_new_tokens``, without the prompt)."""
        texts: list[str] = []
        with inference(model):
            for at in range(0, len(inputs), batch_size):
                ids = self.generate_ids(model, self.prompt_ids(inputs[at: at + batch_size]), use_cache=use_cache)
                texts += [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        return texts

    def predict_raw(self, model: nn.Module, raw_inputs: Any, batch_size: int = 32) -> Any:
        """What ``TransferModel.predict`` returns: the generated string per input (one string for one input).

        Raises:
            InputError: an input is not a non-empty string (naming it as ``item i``).
        """
        from transferkit.data import check_inputs
        from transferkit.data import prediction_inputs

        inputs, single = prediction_inputs(raw_inputs, self.input_column)
        check_inputs(inputs, "text", [f"item {i}" for i in range(len(inputs))])
        texts = self.generate(model, [str(x) for x in inputs], batch_size)
        return texts[0] if single else texts

    # --- the contract's other parts ------------------------------------------------------------------------

    def task(self, model: nn.Module, **options: Any) -> nn.Module:
        """The task that trains it: cross-entropy on target tokens (teacher forcing for seq2seq); perplexity,
        optionally ROUGE-L and BLEU."""
        from transferkit.tasks.generation import GenerationTask

        return GenerationTask(model, **options)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        raise InputError("a generation head has no score per input: use predict, which returns the generated text.")

    def predict(self, outputs: torch.Tensor) -> list:
        """The most likely next token id at each position of logits ``[B, T, vocab]`` (text needs
        ``TransferModel.predict``, which generates)."""
        return outputs.argmax(-1).tolist()

    @property
    def config(self) -> dict:
        return {"type": self.head_type, "max_new_tokens": self.max_new_tokens,
                "prompt_template": self.prompt_template, "separator": self.separator,
                "tie_to_embeddings": self.tie_to_embeddings, "final_logits_bias": self.final_logits_bias,
                "generate_in_eval": self.generate_in_eval,
                "input_column": self.input_column, "in_features": self.in_features, "vocab_size": self.vocab_size}
