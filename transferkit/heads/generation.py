"""Text generation with a causal language model fine-tuned on ``(input, target)`` pairs.

The model reads ``prompt_template.format(input=x)`` followed by a separator and learns to continue it with the
target and an end-of-sequence token; the loss is on the target tokens (and that end token) only, as in
instruction tuning (Ouyang et al. 2022, arXiv:2203.02155; the ``-100`` labels of Hugging Face's causal-LM
fine-tuning). The output layer is the backbone's input embedding matrix, as in GPT-2 (Radford et al. 2019;
Press & Wolf 2017, arXiv:1608.05859, for the tying) — the same :class:`~transferkit.tasks.text.LMHead` that
:class:`~transferkit.tasks.text.CausalLM` pretrains with. The loss, the metrics (perplexity; ROUGE-L and BLEU
on generated text when asked) are in :mod:`transferkit.tasks.generation`.

Only ``hf:`` causal decoders serve it (GPT-2 family, Llama family such as SmolLM2, ``scratch:gpt2``); an
encoder (BERT) or a word-vector backbone is refused with a :class:`~transferkit.errors.ConfigError`.
Sequence-to-sequence models (T5, BART) are not supported yet. ``TransferModel.predict`` returns the generated
text (the continuation only, without the prompt), decoded greedily.
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


def causal_model(backbone: Any) -> nn.Module:
    """The transformers base model of an ``hf:`` causal-decoder backbone.

    Raises:
        ConfigError: a word-vector or vision backbone, or an encoder / encoder-decoder model.
    """
    name = f"{backbone.config.get('source')}:{backbone.config.get('name')}"
    model = getattr(getattr(backbone, "encoder", None), "model", None)
    tokenizer = getattr(getattr(backbone, "preprocessor", None), "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "get_input_embeddings"):
        raise ConfigError(f"generation needs a Hugging Face causal language model (hf:gpt2, hf:HuggingFaceTB/"
                          f"SmolLM2-135M, scratch:gpt2); the {name} backbone has none.")
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or not (
            getattr(config, "is_decoder", False) or getattr(config, "model_type", None) in CAUSAL_TYPES):
        raise ConfigError(f"generation needs a causal decoder (GPT-2, Llama...); {name} is a "
                          f"{getattr(config, 'model_type', type(model).__name__)} model, whose attention is not "
                          "causal. Sequence-to-sequence models (T5, BART) are not supported yet.")
    return model


@register_head("generation")
class Generation(nn.Module):
    """A language-model head over the backbone's tokens that generates a target for each input.

    Args:
        max_new_tokens: tokens generated at most by ``predict`` (it stops earlier at the end token).
        prompt_template: how an input becomes the prompt; must contain ``{input}``, e.g.
            ``"Article: {input}\\nHeadline:"``.
        separator: text put between the prompt and the target (e.g. ``" "``); ``None`` puts the tokenizer's
            end-of-sequence token there, which needs no whitespace convention.
        tie_to_embeddings: the output layer is the input embedding matrix (GPT-2, SmolLM2); ``False`` gives
            the head its own output matrix, initialised as a copy of the embeddings and saved with the head.
        generate_in_eval: generate during validation and report ROUGE-L and BLEU (slow: one forward pass per
            generated token); otherwise validation reports loss, accuracy and perplexity only.
        input_column: the table column the head was trained on (recorded by training).
        in_features, vocab_size: sizes; normally left out and taken from the backbone.
    """

    needs = frozenset({"tokens", "mask"})

    def __init__(self, *, max_new_tokens: int = 32, prompt_template: str = "{input}", separator: str | None = None,
                 tie_to_embeddings: bool = True, generate_in_eval: bool = False, input_column: str | None = None,
                 in_features: int | None = None, vocab_size: int | None = None):
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
        self.tie_to_embeddings = bool(tie_to_embeddings)
        self.generate_in_eval = bool(generate_in_eval)
        self.input_column = input_column
        self.in_features = in_features
        self.vocab_size = vocab_size
        self.output: nn.Module | None = None
        self._backbone: list = []  # the backbone, unregistered (TransferModel owns it)

    # --- composing -----------------------------------------------------------------------------------------

    def build(self, in_features: int) -> None:
        """Record the token feature size (the output layer is made in :meth:`attach`, from the embeddings)."""
        if self.in_features is not None and self.output is not None and in_features != self.in_features:
            raise ConfigError(f"head was built for {self.in_features} features, backbone gives {in_features}")
        self.in_features = int(in_features)

    def attach(self, backbone: Any) -> None:
        """Tie the output layer to ``backbone``'s input embeddings (or copy them), refusing non-causal models."""
        from transferkit.tasks.text import LMHead

        embeddings = causal_model(backbone).get_input_embeddings()
        rows, dim = embeddings.weight.shape
        if self.in_features is not None and dim != self.in_features:
            raise ConfigError(f"the {backbone.config.get('name')} embeddings have {dim} dimensions but its tokens "
                              f"{self.in_features}: tie_to_embeddings needs them equal; pass "
                              "Generation(tie_to_embeddings=False).")
        if self.vocab_size is not None and self.vocab_size != rows:
            raise ConfigError(f"head was built for a vocabulary of {self.vocab_size}, backbone has {rows}.")
        self.vocab_size = int(rows)
        self._backbone = [backbone]
        if self.tie_to_embeddings:
            self.output = LMHead(embeddings)  # no parameters of its own: reads the embedding matrix at each call
        elif not isinstance(self.output, nn.Linear):
            self.output = nn.Linear(dim, rows, bias=False)
            with torch.no_grad():
                self.output.weight.copy_(embeddings.weight)

    @property
    def backbone(self) -> Any:
        if not self._backbone:
            raise RuntimeError("head is not attached: compose it with a backbone in TransferModel first")
        return self._backbone[0]

    @property
    def tokenizer(self) -> Any:
        return self.backbone.preprocessor.tokenizer

    @property
    def window(self) -> int:
        """The longest sequence (prompt + target) the backbone takes."""
        return int(self.backbone.preprocessor.max_length)

    @property
    def eos_id(self) -> int:
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ConfigError(f"{type(tok).__name__} has no end-of-sequence token, which generation needs to stop.")
        return int(eos)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[..., vocab]`` of hidden states ``[..., D]``."""
        if self.output is None:
            raise RuntimeError("head is not attached: compose it with a backbone in TransferModel first")
        return self.output(hidden)

    def forward(self, features: Any) -> torch.Tensor:
        """Next-token logits of every position ``[B, T, vocab]``."""
        from transferkit.heads.base import features_part

        return self.logits(features_part(features, "tokens"))

    # --- tokens ------------------------------------------------------------------------------------------

    def prompt_ids(self, inputs: Sequence[str]) -> list[list[int]]:
        """Token ids of each input's prompt: the template, the tokenizer's own special start tokens, the
        separator (or the end token when ``separator is None``)."""
        tok = self.tokenizer
        sep = self.separator or ""
        ids = tok([self.prompt_template.format(input=x) + sep for x in inputs])["input_ids"]
        if self.separator is None:
            ids = [list(row) + [self.eos_id] for row in ids]
        return [list(row) for row in ids]

    def target_ids(self, targets: Sequence[str]) -> list[list[int]]:
        """Token ids of each target, without special tokens (the end token is added by the task)."""
        return [list(row) for row in self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]]

    # --- generating --------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, model: nn.Module, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Greedy continuations (token ids, the end token excluded) of a batch of prompts.

        A plain loop over the growing sequence (no key/value cache): the prompts are padded on the right and each
        row reads the logits at its own last token, which causal attention keeps free of the padding after it.
        A prompt longer than the window minus ``max_new_tokens`` keeps its last tokens.
        """
        device = next(model.parameters()).device
        keep = max(1, self.window - self.max_new_tokens)
        prompts = [list(p)[-keep:] for p in prompts]
        if any(not p for p in prompts):
            raise InputError("a prompt has no tokens: give non-empty inputs.")
        n = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = min(self.window, int(lengths.max()) + self.max_new_tokens)
        ids = torch.full((n, width), self.eos_id, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        out: list[list[int]] = [[] for _ in range(n)]
        rows = torch.arange(n, device=device)
        for _ in range(self.max_new_tokens):
            done |= lengths >= width
            if bool(done.all()):
                break
            cur = int(lengths[~done].max())
            mask = (torch.arange(cur, device=device)[None, :] < lengths[:, None]).long()
            hidden = self.backbone(input_ids=ids[:, :cur], attention_mask=mask).tokens
            last = hidden[rows, (lengths - 1).clamp(max=cur - 1)]
            next_ids = self.logits(last).float().argmax(-1)
            for i in (~done).nonzero().flatten().tolist():
                token = int(next_ids[i])
                if token == self.eos_id:
                    done[i] = True
                    continue
                ids[i, lengths[i]] = token
                lengths[i] += 1
                out[i].append(token)
        return out

    @torch.no_grad()
    def generate(self, model: nn.Module, inputs: Sequence[str], batch_size: int = 32) -> list[str]:
        """The generated text of each input (greedy, at most ``max_new_tokens``, without the prompt)."""
        texts: list[str] = []
        with inference(model):
            for at in range(0, len(inputs), batch_size):
                ids = self.generate_ids(model, self.prompt_ids(inputs[at: at + batch_size]))
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
        """The task that trains it: cross-entropy on target tokens; perplexity, optionally ROUGE-L and BLEU."""
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
                "tie_to_embeddings": self.tie_to_embeddings, "generate_in_eval": self.generate_in_eval,
                "input_column": self.input_column, "in_features": self.in_features, "vocab_size": self.vocab_size}
