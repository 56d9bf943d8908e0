"""What ``finetune`` and ``pretrain`` choose when a setting is not given (:mod:`transferkit.trainer.auto`):
the backbone sized to the data's images, and how each choice is said and kept with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from transferkit.trainer.auto import Choice


def sized_backbone(spec: str, options: dict, image_paths: Iterable[Any], seed: int):
    """``load_backbone(spec, **options)``; for images far smaller than a CNN's default input, built again at a
    size that fits them (``image_size`` unset, a source that takes it). Returns ``(backbone, options, choice)``:
    the options to build it again with, and the image-size :class:`Choice` or ``None``."""
    import transferkit as tk
    from transferkit.data.images import typical_side
    from transferkit.errors import OptionError
    from transferkit.trainer import auto

    from transferkit.files import is_model_dir

    backbone = tk.load_backbone(spec, **options)
    if (backbone.modality != "image" or "image_size" in options or is_model_dir(spec)  # keeps its saved size
            or backbone.feature_info.tokens is not None):  # a ViT's input size is fixed by its position embeddings
        return backbone, options, None
    choice = auto.image_size(max(backbone.preprocessor.size), typical_side(image_paths))
    if choice is None:
        return backbone, options, None
    sized = {**options, "image_size": choice.value}
    tk.seed_everything(seed)  # the same random weights as a run given --option image_size=N
    try:
        return tk.load_backbone(spec, **sized), sized, choice
    except OptionError:  # a named backbone that takes no image_size
        return backbone, options, None


def announce(chosen: dict[str, Choice], what: str) -> None:
    """Print the settings chosen for the user, one a line, with why."""
    if chosen:
        print(f"{what} chosen from the data and the backbone (give the flag to set one):", flush=True)
    for name, choice in chosen.items():
        print(f"  {name}={_number(choice.value)}: {choice.reason}", flush=True)


def record_settings(chosen: dict[str, Choice], given: dict[str, Any]) -> dict:
    """The run's settings as saved (run directory's settings.json, the model's config and card): each value,
    and for the chosen ones why."""
    return {"settings": {**given, **{k: c.value for k, c in chosen.items()}},
            "chosen": {k: c.reason for k, c in chosen.items()}}


def save_record(run_dir: Path, settings: dict) -> None:
    from transferkit.files import write_json_atomic

    write_json_atomic(run_dir / "settings.json", settings)


def _number(value: Any) -> str:
    from transferkit.cli import format_number

    return format_number(value)
