"""The one place that writes and reads a saved transferkit directory.

A saved directory holds::

    config.json         {"format": "transferkit", "backbone": {...}, "head": {...} | null, ...}
    model.safetensors   all weights ("backbone.*", "head.*"); no pickle
    README.md           a short model card
    backbone/           preprocessing files (tokenizer, vocabulary) where the source needs them

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
from transferkit.backbones.base import SAVED_FORMATS, Backbone, SavedFormat
from transferkit.backbones.registry import source
from transferkit.errors import CheckpointError, FileFormatError, OptionError
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
    backbone_config = config["backbone"]
    backbone = source(backbone_config["source"]).rebuild(backbone_config, directory)
    backbone.config = backbone_config
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
    """The backbone of a ``save_pretrained`` directory (what ``load_backbone(DIR)`` returns)."""
    if options:
        raise OptionError(f"{directory}: a saved backbone is rebuilt exactly as saved; options {sorted(options)} "
                          "are not accepted: drop them, or load the original spec with options.")
    directory = Path(directory)
    config = read_config(directory)
    holder = nn.Module()
    holder.backbone = _rebuild_backbone(config, directory)
    _load_weights(holder, directory, allow_unexpected=("head.",))
    return holder.backbone


def save_pretrained(directory: str | os.PathLike, backbone: Backbone, head: nn.Module | None = None,
                    metrics: dict | None = None, *, overwrite: bool = False) -> Path:
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

    Returns:
        ``directory`` as a Path.

    Raises:
        OutputError: an unusable target (``.``, an ancestor of the working directory, ``/``, the home
            directory, a path inside a model directory).
        OutputExistsError: a file or link at ``directory``, or a foreign directory without ``overwrite``.
        OutputLockedError: another process is saving to ``directory``.
    """
    from safetensors.torch import save_model

    from transferkit import __version__

    directory = Path(directory)
    check_output(directory, overwrite=overwrite)
    with output_lock(directory):
        check_output(directory, overwrite=overwrite)
        files.clean_stale(directory, locked=True)
        with files.replacing_dir(directory) as tmp:
            holder = nn.Module()
            holder.backbone = backbone
            if head is not None:
                holder.head = head
            config = {"format": FORMAT, "format_version": FORMAT_VERSION, "transferkit_version": __version__,
                      "backbone": backbone.config, "head": head.config if head is not None else None,
                      "metrics": metrics or {}}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_model(holder, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            save_assets = source(backbone.config["source"]).save_assets
            if save_assets is not None:
                save_assets(backbone, tmp)
            (tmp / "README.md").write_text(model_card(config), encoding="utf-8")
    return directory


def model_card(config: dict) -> str:
    b, h = config["backbone"], config["head"]
    lines = [f"# transferkit model: {b['source']}:{b['name']}", "",
             f"- modality: {b['modality']}", f"- backbone: `{b['source']}:{b['name']}`, feature size {b['feature_dim']}"]
    if h is not None:
        lines.append(f"- head: {h['type']}, {h.get('num_classes')} classes" +
                     (f" ({', '.join(map(str, h['labels']))})" if h.get("labels") else ""))
    for k, v in config.get("metrics", {}).items():
        lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    lines += ["", "Preprocessing is saved with the weights.", "", "```python",
              "from transferkit import TransferModel, load_backbone",
              "model = TransferModel.from_pretrained('THIS_DIR')" if h is not None else "backbone = load_backbone('THIS_DIR')",
              "```", ""]
    return "\n".join(lines)


SAVED_FORMATS.register(FORMAT, SavedFormat(save=save_pretrained, load=load_saved_backbone))
