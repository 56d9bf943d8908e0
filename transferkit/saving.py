"""The one place that writes and reads a saved transferkit directory.

A saved directory holds::

    config.json         {"format": "transferkit", "backbone": {...}, "head": {...} | null, ...}
    model.safetensors   all weights ("backbone.*", "head.*"); no pickle
    README.md           a short model card
    backbone/           preprocessing files (tokenizer, vocabulary) where the source needs them

A model with a PEFT adapter (:mod:`transferkit.backbones.adapters`) is saved, by default, as the adapter and the
head alone, with a reference to its base (``load_backbone``'s spec and options, and a sha256 fingerprint of the
base's weights, which loading checks)::

    config.json         ... "saved": "adapter", "backbone": {..., "adapters": {"base": {...}, ...}}
    adapter.safetensors the adapter's parameters ("backbone.*") and the head's ("head.*")

A save never removes anything transferkit did not write: the target must be missing, empty or a
transferkit model (or any directory with ``overwrite=True``). It is written to ``.NAME.tmp-*`` and
swapped in crash-safely under a lock (see :mod:`transferkit.files`), so at any kill ``DIR`` holds the
complete old model or the complete new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from transferkit import files
from transferkit.backbones import adapters
from transferkit.backbones.base import SAVED_FORMATS, Backbone, SavedFormat
from transferkit.backbones.registry import source
from transferkit.errors import AdapterError, BaseMismatchError, CheckpointError, FileFormatError, OptionError
from transferkit.files import check_output, output_lock

FORMAT = files.MODEL_FORMAT
FORMAT_VERSION = 1

__all__ = ["check_output", "load_saved_backbone", "output_lock", "read_config", "save_pretrained"]


def read_config(directory: str | os.PathLike) -> dict:
    """The config.json of a saved directory, checked to be transferkit's; a killed save is recovered first."""
    directory = Path(directory)
    files.recover(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: it is not a directory written by save_pretrained.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{directory} was not written by transferkit (config.json has no "
                              f"'format': 'transferkit'). For a transformers checkpoint use 'hf:{directory}'.")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} uses format version {config['format_version']}; upgrade transferkit.")
    return config


def _rebuild_backbone(config: dict, directory: Path) -> Backbone:
    backbone_config = dict(config["backbone"])
    record = backbone_config.pop("adapters", None)
    backbone = source(backbone_config["source"]).rebuild(backbone_config, directory)
    backbone.config = backbone_config
    if record is not None:  # a whole model saved with its adapter: the same modules, then the weights
        adapters.restore(backbone, record)
    return backbone


def _load_weights(model: nn.Module, directory: Path, allow_unexpected: tuple[str, ...]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no model.safetensors.")
    try:
        missing, unexpected = load_model(model, path, strict=False)
    except SafetensorError as e:
        raise FileFormatError(f"{path} is damaged: it is truncated or not a safetensors file ({e}). Save the "
                              "model again, or download it again.") from e
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the architecture in config.json: {e}") from e
    unexpected = [k for k in unexpected if not k.startswith(allow_unexpected)]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the architecture in config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}.")


def load_saved_backbone(directory: str | os.PathLike, **options: Any) -> Backbone:
    """The backbone of a ``save_pretrained`` directory (what ``load_backbone(DIR)`` returns); for a saved adapter,
    its base with the adapter on."""
    if options:
        raise OptionError(f"{directory}: a saved backbone is rebuilt exactly as saved; options {sorted(options)} "
                          "are not accepted: drop them, or load the original spec with options.")
    directory = Path(directory)
    config = read_config(directory)
    if config.get("saved") == "adapter":
        backbone = adapter_base(config, directory, None)
        load_adapter_dir(directory, config, backbone)
        return backbone
    holder = nn.Module()
    holder.backbone = _rebuild_backbone(config, directory)
    _load_weights(holder, directory, allow_unexpected=("head.",))
    return holder.backbone


def save_pretrained(directory: str | os.PathLike, backbone: Backbone, head: nn.Module | None = None,
                    metrics: dict | None = None, *, overwrite: bool = False, include_base: bool = False,
                    training: dict | None = None) -> Path:
    """Save a backbone (and optionally its head) crash-safely; see the module docstring for the layout.

    What may be at ``directory``: nothing, an empty directory, or a transferkit model (replaced). Any
    other directory is replaced only with ``overwrite=True``, and then as a whole: its old content is
    removed only once the new model is in place. A file or a link is never replaced. The checks run
    again under the output lock, so a path that changed since :func:`check_output` is still safe.

    Args:
        directory: where the model goes.
        backbone: the backbone to save.
        head: its head, or None for a backbone-only directory.
        metrics: numbers written into config.json and the model card.
        overwrite: replace a directory that is not a transferkit model.
        include_base: with a PEFT adapter on the backbone, save the whole model (base, active adapter and head;
            BitFit and norm-tuning adapters are then in the weights) instead of the adapter and head alone.
        training: how the model was trained (JSON: ``{"settings": {...}, "chosen": {name: why}}`` as
            ``transferkit finetune`` writes it), kept in config.json and listed in the model card.

    Returns:
        ``directory`` as a Path.

    Raises:
        OutputError: an unusable target (``.``, an ancestor of the working directory, ``/``, the home
            directory, a path inside a model directory).
        OutputExistsError: a file or link at ``directory``, or a foreign directory without ``overwrite``.
        OutputLockedError: another process is saving to ``directory``.
        AdapterError: an adapter-only save of a base that ``load_backbone`` did not build (it has no spec to
            refer to): save with ``include_base=True``.
    """
    from transferkit import __version__

    directory = Path(directory)
    record = backbone.config.get("adapters")
    adapter_only = record is not None and not include_base
    if adapter_only and record["base"]["spec"] is None:
        raise AdapterError(f"the adapter's base {record['base']['name']} was not built by load_backbone, so a saved "
                           "adapter could not find it again: save with include_base=True, or save the base first "
                           "(backbone.save_pretrained(DIR)) and build the model on load_backbone(DIR).")
    check_output(directory, overwrite=overwrite)
    with output_lock(directory):
        check_output(directory, overwrite=overwrite)
        files.clean_stale(directory, locked=True)
        with files.replacing_dir(directory) as tmp:
            backbone_config = dict(backbone.config)
            if record is not None:  # the active adapter only (the others are saved from set_adapter(name))
                backbone_config["adapters"] = active_record(record)
                if include_base and adapters.METHODS.get(record["method"]).in_place:
                    del backbone_config["adapters"]  # BitFit / norm-tuning: the adapter is in the weights
            config = {"format": FORMAT, "format_version": FORMAT_VERSION, "transferkit_version": __version__,
                      "backbone": backbone_config, "head": head.config if head is not None else None,
                      "metrics": metrics or {}}
            if training:
                config["training"] = training
            if adapter_only:
                config["saved"] = "adapter"
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            if adapter_only:
                _save_adapter(tmp / "adapter.safetensors", backbone, head)
            else:
                _save_whole(tmp / "model.safetensors", backbone, head)
                save_assets = source(backbone.config["source"]).save_assets
                if save_assets is not None:
                    save_assets(backbone, tmp)
            (tmp / "README.md").write_text(model_card(config), encoding="utf-8")
    return directory


def active_record(record: dict) -> dict:
    """An adapters record with the active adapter's settings only."""
    return {**record, "specs": {record["active"]: record["specs"][record["active"]]}}


def _save_whole(path: Path, backbone: Backbone, head: nn.Module | None) -> None:
    """Every weight, tied ones once (safetensors' ``save_model``), inactive adapters left out."""
    from safetensors.torch import _remove_duplicate_names, save_file

    holder = nn.Module()
    holder.backbone = backbone
    if head is not None:
        holder.head = head
    state = holder.state_dict()
    record = backbone.config.get("adapters")
    if record is not None:
        others = set()
        for name in record["specs"]:
            if name != record["active"] and not adapters.METHODS.get(record["method"]).in_place:
                others |= {"backbone." + k for k in adapters.adapter_state(backbone, name)}
        state = {k: v for k, v in state.items() if k not in others}
    metadata = {"format": "pt"}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata.setdefault(name, kept)
            del state[name]
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def _save_adapter(path: Path, backbone: Backbone, head: nn.Module | None) -> None:
    """The active adapter's tensors ("backbone.*") and the head's ("head.*"), without what the head shares with the
    base (a generation head tied to the embeddings): small, and nothing the base already holds."""
    from safetensors.torch import save_file

    state = {"backbone." + k: v for k, v in adapters.adapter_state(backbone).items()}
    if head is not None:
        state.update({"head." + k: v for k, v in head_own_state(head, backbone).items()})
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def head_own_state(head: nn.Module, backbone: Backbone) -> dict:
    """The head's tensors that are not the backbone's (a generation head tied to the embeddings shares them)."""
    shared = {t.data_ptr() for t in backbone.state_dict().values()}
    return {k: v for k, v in head.state_dict().items() if v.data_ptr() not in shared}


def load_adapter_dir(directory: Path, config: dict, backbone: Backbone, name: str | None = None) -> tuple[str, dict]:
    """Put the adapter saved in ``directory`` on ``backbone`` under ``name`` (default: its saved name); returns the name
    and the head's tensors from the file.

    Raises:
        BaseMismatchError: ``backbone`` is not the base the adapter was trained on (the message names both).
        AdapterError: ``name`` is in use, or the adapter's method differs from the backbone's adapters.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = config["backbone"].get("adapters")
    if record is None or config.get("saved") != "adapter":
        raise CheckpointError(f"{directory} holds a whole model, not an adapter: load it with "
                              "TransferModel.from_pretrained.")
    check_base(backbone, record["base"], directory)
    saved_name = record["active"]
    name = saved_name if name is None else name
    path = directory / "adapter.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no adapter.safetensors.")
    try:
        state = load_file(path)
    except SafetensorError as e:
        raise FileFormatError(f"{path} is damaged: it is truncated or not a safetensors file ({e}). Save the "
                              "adapter again.") from e
    spec = record["specs"][saved_name]
    adapters.restore(backbone, {**record, "specs": {name: spec}, "active": name})
    renamed = {adapters.rename(backbone, k[len("backbone."):], saved_name, name): v for k, v in state.items()
               if k.startswith("backbone.")}
    adapters.load_adapter_state(backbone, renamed, name)
    return name, {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}


def adapter_base(config: dict, directory: Path, base: "str | os.PathLike | Backbone | None") -> Backbone:
    """The base backbone a saved adapter goes on: ``base`` when given, else the one its config refers to."""
    from transferkit.backbones.registry import load_backbone

    if isinstance(base, Backbone):
        return base
    if base is not None:
        return load_backbone(base)
    reference = config["backbone"]["adapters"]["base"]
    try:
        return load_backbone(reference["spec"], **(reference["options"] or {}))
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{directory} holds an adapter whose base {reference['spec']!r} cannot be loaded here "
                              f"({e}): pass the base, TransferModel.from_pretrained(DIR, base=SPEC_OR_DIR).") from e


def check_base(backbone: Backbone, reference: dict, directory: Path) -> None:
    """Refuse an adapter's base that is not the one it was trained on (sha256 fingerprints of the weights)."""
    record = backbone.config.get("adapters")
    own = record["base"]["fingerprint"] if record is not None else adapters.fingerprint(backbone)
    if own != reference["fingerprint"]:
        given = f"{backbone.config['source']}:{backbone.config['name']}"
        origin = getattr(backbone, "origin", None) or {}
        random = " Its base had random weights, which cannot be built again: save it with include_base=True." if (
            (reference.get("options") or {}).get("weights", "default") is None) else ""
        raise BaseMismatchError(
            f"the adapter in {directory} was trained on the base {reference['name']} (loaded as "
            f"{reference.get('spec')!r}), not on {given} (loaded as {origin.get('spec')!r}): their weights differ "
            f"(fingerprints {reference['fingerprint'][:12]} vs {own[:12]}).{random} Load it on its own base: "
            f"TransferModel.from_pretrained({str(directory)!r}).")


def model_card(config: dict) -> str:
    b, h = config["backbone"], config["head"]
    lines = [f"# transferkit model: {b['source']}:{b['name']}", "",
             f"- modality: {b['modality']}", f"- backbone: `{b['source']}:{b['name']}`, feature size {b['feature_dim']}"]
    if h is not None:
        lines.append(f"- head: {h['type']}, {h.get('num_classes')} classes" +
                     (f" ({', '.join(map(str, h['labels']))})" if h.get("labels") else ""))
    record = b.get("adapters")
    if record is not None:
        spec = record["specs"][record["active"]]
        shown = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("target_modules", "feedforward_modules"))
        targets = spec.get("target_modules")
        lines.append(f"- PEFT adapter `{record['active']}`: {record['method']}" + (f" ({shown})" if shown else "") +
                     (f", on {len(targets)} modules" if targets else ""))
        base = record["base"]
        if config.get("saved") == "adapter":
            lines.append(f"- base (not in this directory): `{base['spec']}` with options {base['options'] or {}}, "
                         f"weights sha256 fingerprint `{base['fingerprint'][:16]}…` (checked on load)")
    for k, v in config.get("metrics", {}).items():
        lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    training = config.get("training") or {}
    if training.get("settings"):
        lines.append("- trained with: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in training["settings"].items() if v is not None))
    for k, why in (training.get("chosen") or {}).items():
        lines.append(f"  - {k} chosen by default: {why}")
    lines += ["", "Preprocessing is saved with the weights." if config.get("saved") != "adapter" else
              "The base's preprocessing comes with the base.", "", "```python",
              "from transferkit import TransferModel, load_backbone",
              "model = TransferModel.from_pretrained('THIS_DIR')" if h is not None else "backbone = load_backbone('THIS_DIR')",
              "```", ""]
    return "\n".join(lines)


SAVED_FORMATS.register(FORMAT, SavedFormat(save=save_pretrained, load=load_saved_backbone))
