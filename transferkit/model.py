"""``TransferModel``: a backbone and a head composed, with ``predict`` and safe saving/loading.

Saving and loading live in :mod:`transferkit.saving`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferkit.backbones.base import Backbone, inference, length_batches, restore_order
from transferkit.data import check_inputs, prediction_inputs, preprocess_named
from transferkit.errors import CheckpointError, ConfigError, InputError
from transferkit.heads import check_needs, head_from_config
from transferkit.saving import (_load_weights, _rebuild_backbone, adapter_base, head_own_state, load_adapter_dir,
                                read_config, save_pretrained)


class TransferModel(nn.Module):
    """A backbone and a head; ``forward(**inputs)`` returns ``{"logits", "features"}``.

    The head receives the backbone's whole :class:`~transferkit.Features` and reads the parts it declares
    in ``head.needs`` (the contract: :mod:`transferkit.heads.base`); ``"logits"`` holds the head's raw
    outputs and ``"features"`` the pooled vectors.

    Args:
        backbone: from :func:`transferkit.load_backbone`.
        head: e.g. ``transferkit.heads.Classification(num_classes=4)``; sized from ``backbone.feature_dim``.

    Raises:
        ConfigError: the head needs feature parts (tokens, feature maps) the backbone does not give.
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        _build_head(head, backbone)
        self.backbone = backbone
        self.head = head
        # The head of each PEFT adapter on the backbone, by adapter name (the active one is also ``self.head``).
        self._heads: dict[str, nn.Module] = {}

    def forward(self, **inputs: torch.Tensor) -> dict[str, Any]:
        # Multi-scale maps cost hooks or intermediate outputs: only for heads that read them.
        stages = "stages" in getattr(self.head, "needs", ())
        features = self.backbone(**inputs, stages=True) if stages else self.backbone(**inputs)
        return {"logits": self.head(features), "features": features.pooled}

    def task(self, **options: Any) -> nn.Module:
        """The task that trains this model: the head's (loss, metrics, label reading); what ``Trainer.fit`` uses."""
        return self.head.task(self, **options)

    def preprocess(self, raw_inputs: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.backbone.preprocess(raw_inputs)

    def outputs(self, raw_inputs: Any, batch_size: int = 32, *, by_length: bool = True) -> tuple[torch.Tensor, bool]:
        """The head's raw outputs for raw inputs, batch by batch, and whether the input was a single one.

        Args:
            by_length: batch texts of similar length together, longest first (the rows come back in input
                order): far less padding than batches in input order (``benchmarks/inference_speed.py``).
        """
        inputs, single = prediction_inputs(raw_inputs, getattr(self.head, "input_column", None))
        origins = [f"item {i}" for i in range(len(inputs))]
        check_inputs(inputs, getattr(self.backbone, "modality", None), origins)
        batches = length_batches(inputs, batch_size, by_length)
        out = []
        with inference(self) as device:
            for indices in batches:
                batch = preprocess_named(self.preprocess, [inputs[i] for i in indices], [origins[i] for i in indices])
                out.append(self(**{k: v.to(device) for k, v in batch.items()})["logits"].float().cpu())
        if not out:  # an empty collection: no rows, the head's width
            return torch.empty(0, getattr(self.head, "num_classes", 0)), single
        return restore_order(torch.cat(out), [i for indices in batches for i in indices]), single

    def predict_proba(self, raw_inputs: Any, batch_size: int = 32, *, by_length: bool = True) -> torch.Tensor:
        """Class probabilities for raw inputs: ``[N, num_classes]`` for a collection, ``[num_classes]``
        for one single input (the head's ``scores``).

        Args:
            raw_inputs: one input (a string, an image path, a PIL image, an ``H×W``/``H×W×C`` array, a
                ``C×H×W`` tensor) or a collection of them (a list, tuple, pandas Series, numpy array of
                strings, generator, ``N×…`` batch array/tensor). A DataFrame, dict of columns or
                datasets.Dataset gives the column the model was trained on, else its ``"text"`` column.
            batch_size: inputs per forward pass.
            by_length: batch texts of similar length together (see :meth:`outputs`).

        Raises:
            ModalityError: texts for an image model, images or image paths for a text model.
            InputError: an input is empty or unusable; the message names it (``item i``).
        """
        if hasattr(self.head, "scores_raw"):  # heads that read their own raw inputs (text pairs)
            return self.head.scores_raw(self, raw_inputs, batch_size)
        if hasattr(self.head, "predict_raw"):  # heads whose outputs have one row per token, not per input
            raise InputError(f"predict_proba has no single score per input for a {self.head.head_type} head: use "
                             "predict, whose results carry their scores.")
        outputs, single = self.outputs(raw_inputs, batch_size, by_length=by_length)
        scores = self.head.scores(outputs)
        return scores[0] if single else scores

    def predict(self, raw_inputs: Any, batch_size: int = 32, *, by_length: bool = True) -> Any:
        """The head's prediction for each input (classification: the class name, in the labels' type).

        Like a transformers pipeline, one single input gives one prediction and a collection gives a list
        of the same length (see :meth:`predict_proba` for what counts as which).
        """
        if hasattr(self.head, "predict_raw"):  # token heads: spans with character offsets, tags per word
            return self.head.predict_raw(self, raw_inputs, batch_size)
        outputs, single = self.outputs(raw_inputs, batch_size, by_length=by_length)
        predictions = self.head.predict(outputs)
        return predictions[0] if single else predictions

    def save_pretrained(self, directory: str | os.PathLike, metrics: dict | None = None, *,
                        overwrite: bool = False, include_base: bool = False, merge: bool = False,
                        training: dict | None = None) -> Path:
        """Write weights (safetensors), config and model card to ``directory``; returns its path.

        An existing transferkit model there is replaced once the new one is complete; any other non-empty
        directory is refused unless ``overwrite=True``, and a file always is (see
        :func:`transferkit.files.check_output`).

        With a PEFT adapter on the backbone, the default writes the active adapter and its head (small) and a
        reference to the base (its ``load_backbone`` spec and a fingerprint of its weights), which
        :meth:`from_pretrained` loads again; ``include_base=True`` writes the whole model with the adapter in it;
        ``merge=True`` writes a plain model with the adapter folded into the weights (this model keeps its
        adapter). ``training``: how it was trained (settings, and why each default was chosen), kept in
        config.json and the model card.
        """
        if merge and self.backbone.config.get("adapters") is not None:
            import copy

            merged = copy.deepcopy(self)
            merged.merge()
            return save_pretrained(directory, merged.backbone, merged.head, metrics, overwrite=overwrite,
                                   training=training)
        return save_pretrained(directory, self.backbone, self.head, metrics, overwrite=overwrite,
                               include_base=include_base, training=training)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu", *,
                        base: "str | os.PathLike | Backbone | None" = None) -> "TransferModel":
        """Load a directory written by :meth:`save_pretrained`; needs no network or original files.

        Args:
            base: for a saved adapter, the base backbone to put it on (a spec, a directory or a Backbone) instead of
                the one it records; it must have the same weights (their fingerprint is checked).

        Raises:
            BaseMismatchError: ``base`` (or the recorded base, when its files changed) is not the adapter's base.
        """
        directory = Path(directory)
        config = read_config(directory)
        if config.get("head") is None:
            raise CheckpointError(f"{directory} holds a backbone without a head: load it with "
                                  "transferkit.load_backbone(dir) and compose a TransferModel.")
        if config.get("saved") == "export":
            raise CheckpointError(f"{directory} holds an exported graph ({config['export']['file']}), not weights: "
                                  "load it with transferkit.export.load_exported(dir).")
        if config.get("saved") == "adapter":
            backbone = adapter_base(config, directory, base)
            name, head_state = load_adapter_dir(directory, config, backbone)
            model = cls(backbone, head_from_config(config["head"]))
            _load_head(model.head, head_state, backbone, directory)
            model._heads[name] = model.head
            return model.to(device)
        model = cls(_rebuild_backbone(config, directory), head_from_config(config["head"]))
        _load_weights(model, directory, allow_unexpected=())
        return model.to(device)

    def export(self, directory: str | os.PathLike, format: str = "onnx", *, quantize: str | None = None,
               overwrite: bool = False) -> Path:
        """Export to ONNX or TorchScript with the preprocessing beside it (``quantize="int8"``: also an int8 ONNX
        graph); see :mod:`transferkit.export`. Read it back with :func:`transferkit.export.load_exported`."""
        from transferkit.export import export

        return export(self, directory, format, quantize=quantize, overwrite=overwrite)

    # --- PEFT adapters (transferkit.backbones.adapters); each adapter has its own head ---------------------------

    @property
    def adapter_names(self) -> list[str]:
        """The names of the backbone's adapters."""
        from transferkit.backbones.adapters import adapter_names

        return adapter_names(self.backbone)

    @property
    def active_adapter(self) -> str | None:
        record = self.backbone.config.get("adapters")
        return None if record is None else record["active"]

    def add_adapter(self, method: str = "lora", name: str = "default", head: nn.Module | None = None,
                    **options: Any) -> "TransferModel":
        """Add a PEFT adapter to the backbone (see :meth:`transferkit.Backbone.add_adapter`) and make it active.

        Args:
            head: the new adapter's head; ``None`` keeps the model's head for its first adapter, and gives a later
                adapter a fresh head like the current one.
        """
        first = self.active_adapter is None
        self._remember_head()
        self.backbone.add_adapter(method, name, **options)
        if head is None and not first:
            head = head_from_config(self.head.config)
        if head is not None:
            _build_head(head, self.backbone)
            self.head = head.to(self.backbone.device)
        self._heads[name] = self.head
        return self

    def load_adapter(self, directory: str | os.PathLike, name: str | None = None) -> "TransferModel":
        """Load an adapter saved by :meth:`save_pretrained` (with its head) onto this model's base, and make it
        active; several adapters on one base are switched with :meth:`set_adapter`.

        Raises:
            BaseMismatchError: the adapter was trained on another base (the message names both).
            AdapterError: ``name`` is in use, or the adapter's method differs from this backbone's adapters.
        """
        directory = Path(directory)
        config = read_config(directory)
        self._remember_head()
        name, head_state = load_adapter_dir(directory, config, self.backbone, name)
        head = head_from_config(config["head"])
        _build_head(head, self.backbone)
        _load_head(head, head_state, self.backbone, directory)
        self.head = head.to(self.backbone.device)
        self._heads[name] = self.head
        return self

    def set_adapter(self, name: str) -> "TransferModel":
        """Run the adapter named ``name`` with its head.

        Raises:
            AdapterError: no adapter of that name (the message lists the names).
        """
        self._remember_head()
        self.backbone.set_adapter(name)
        self.head = self._heads[name].to(self.backbone.device)
        return self

    def merge(self) -> "TransferModel":
        """Fold the active adapter into the backbone's weights (LoRA, DoRA, IA³, BitFit, norm-tuning) and drop the
        adapters and their other heads: a plain model, for export."""
        self.backbone.merge_adapter()
        self._heads = {}
        return self

    def _remember_head(self) -> None:
        active = self.active_adapter
        if active is not None:
            self._heads[active] = self.head


def _build_head(head: nn.Module, backbone: Backbone) -> None:
    """Size ``head`` from what ``backbone``'s features look like.

    Raises:
        ConfigError: the head needs feature parts (tokens, feature maps) the backbone does not give.
    """
    check_needs(head, backbone)
    info = getattr(backbone, "feature_info", None)
    needs = getattr(head, "needs", ())
    tokens = "tokens" in needs and info is not None and info.tokens is not None
    if "stages" in needs:  # dense heads are built from the stages' channels and strides
        head.build(info)
    else:
        head.build(info.tokens if tokens else backbone.feature_dim)  # token heads read per-token features
    if hasattr(head, "attach"):  # heads whose layers depend on the backbone's kind (pair: cross or bi)
        head.attach(backbone)


def _load_head(head: nn.Module, state: dict, backbone: Backbone, directory: Path) -> None:
    """Load a saved adapter's head; what it shares with the base (tied embeddings) comes from the base."""
    missing = [k for k in head_own_state(head, backbone) if k not in state]
    unexpected = [k for k in state if k not in head.state_dict()]
    if missing or unexpected:
        raise CheckpointError(f"{directory}/adapter.safetensors does not fit the head in config.json: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}.")
    head.load_state_dict(state, strict=False)


class Ensemble:
    """A prediction ensemble of fine-tuned classifiers: the (weighted) mean of their class probabilities.

    The members may use different backbones, even different kinds (word vectors beside a transformer): each reads
    the raw inputs with its own preprocessing. Averaging the probabilities of independently fine-tuned models is
    the simplest ensemble and the usual baseline for weight averaging (Wortsman et al. 2022 compare their soups
    with it); unlike a soup it costs one forward pass per member.

    Args:
        models: fine-tuned :class:`TransferModel` classifiers with the same classes in the same order.
        weights: one non-negative weight per member (normalised to sum to 1); ``None``: equal weights.

    Raises:
        ConfigError: no models, a member that is not a single-label classifier, members whose classes differ, or
            weights that do not fit.
    """

    def __init__(self, models: Sequence[TransferModel], weights: Sequence[float] | None = None):
        self.models = list(models)
        if not self.models:
            raise ConfigError("an Ensemble needs at least one fine-tuned model.")
        for i, model in enumerate(self.models):
            if getattr(model.head, "head_type", None) != "classification" or getattr(model.head, "labels", None) is None:
                raise ConfigError(f"model #{i} is not a trained single-label classifier (its head is "
                                  f"{getattr(model.head, 'head_type', type(model.head).__name__)}): an Ensemble averages "
                                  "class probabilities.")
        self.labels = list(self.models[0].head.labels)
        for i, model in enumerate(self.models[1:], 1):
            if list(model.head.labels) != self.labels:
                raise ConfigError(f"model #{i} predicts the classes {list(model.head.labels)[:10]}, model #0 "
                                  f"{self.labels[:10]}: ensemble members need the same classes in the same order.")
        weights = [1.0] * len(self.models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.models) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"weights: one non-negative weight per model ({len(self.models)}), not all zero; got "
                              f"{weights}.")
        self.weights = [w / sum(weights) for w in weights]

    def predict_proba(self, raw_inputs: Any, batch_size: int = 32) -> torch.Tensor:
        """The weighted mean of the members' :meth:`TransferModel.predict_proba` (same forms of input)."""
        return sum(w * m.predict_proba(raw_inputs, batch_size) for w, m in zip(self.weights, self.models))

    def predict(self, raw_inputs: Any, batch_size: int = 32) -> Any:
        """The class of highest mean probability for each input (one for a single input, else a list)."""
        scores = self.predict_proba(raw_inputs, batch_size)
        best = scores.argmax(-1)
        return self.labels[int(best)] if best.dim() == 0 else [self.labels[int(i)] for i in best]
