"""Training checkpoints that resume exactly: weights, optimiser, schedule, loss scale, RNG and data position.

Layout of ``OUTPUT/checkpoint/`` (written to a temporary directory, then swapped with the previous one by
:func:`transferkit.files.replace_dir`, so a run killed while saving still has its last good checkpoint):

* ``model.safetensors`` — the task's weights (backbone, head, pretext head);
* ``optimizer.safetensors`` — every tensor of the optimiser state (``state.<param>.<name>``);
* ``best.safetensors`` — the best validation weights so far (early stopping restores them), without
  parameters that never learned in the run; not written when the checkpoint ends the best epoch
  (``state.json``'s ``best_keys`` then names the tensors of ``model.safetensors``);
* ``ema.safetensors`` — the moving average of the weights, with ``Trainer(ema=...)``;
* ``rng.safetensors`` — torch CPU and CUDA generator states;
* ``state.json`` — epoch, step, position in the epoch, history, optimiser hyper-parameters, schedule,
  loss scaler, Python and NumPy generator states.

Nothing is pickled: loading executes no code from the files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit import files
from transferkit.errors import CheckpointError

NAME = "checkpoint"


def save(directory: Path, task: nn.Module, optimizer: torch.optim.Optimizer, best_state: dict | None,
         state: dict[str, Any], extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint to ``directory / "checkpoint"`` atomically; returns its path.

    ``extra``: more tensors to keep, file name → tensors (the moving average's ``ema.safetensors``).
    """
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    target = directory / NAME
    files.recover(target, complete=_complete)
    files.clean_stale(target, locked=False)  # what killed saves left, unless a live process owns it
    with files.replacing_dir(target) as tmp:
        save_model(task, str(tmp / "model.safetensors"))
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file(tensors, str(tmp / name))
        write_position(tmp, {**state, "optimizer_groups": groups})
    return directory / NAME


def write_position(tmp: Path, state: dict[str, Any]) -> None:
    """``rng.safetensors`` and ``state.json`` (with the Python and NumPy generator states) into ``tmp``."""
    from safetensors.torch import save_file

    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    meta = {**state, "python_rng": _jsonable(random.getstate()),
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file()


def find(directory: Path) -> Path | None:
    """The checkpoint in ``directory``; one left aside by a save killed mid-rename is restored first."""
    path = Path(directory) / NAME
    files.recover(path, complete=_complete)
    if _complete(path):
        return path
    leftovers = sorted(Path(directory).glob(f".{NAME}.old-*/state.json"))  # e.g. a read-only directory
    return leftovers[0].parent if leftovers else None


def load(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict | None]:
    """Restore weights and optimiser from ``path``; returns (state.json contents, best weights or None).

    RNG states are *not* applied here: call :func:`restore_rng` once the data position is reached.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {path / 'state.json'} is damaged ({e}). Delete "
                              f"{path} to start afresh.") from e
    try:
        missing, unexpected = load_model(task, str(path / "model.safetensors"), strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}. Delete it to start afresh.") from e
    except (SafetensorError, OSError) as e:
        raise _damaged(path / "model.safetensors", e) from e
    if missing or unexpected:
        raise CheckpointError(f"cannot resume from {path}: it holds another model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}). Use another output directory or resume=False.")
    tensors = _load_file(path / "optimizer.safetensors")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer_groups")))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: the optimiser does not match ({e}); the strategy "
                              "or trainable parameters changed since it was written.") from e
    best = path / "best.safetensors"
    return state, (_load_file(best) if best.is_file() else None)


def load_extra(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors :func:`save` kept under ``extra[name]``; a CheckpointError when the file is missing or damaged."""
    file = Path(path) / name
    if not file.is_file():
        raise CheckpointError(f"cannot resume from {path}: it has no {name} (it was written by a run with other "
                              "settings, e.g. without ema). Resume with the settings it was written with, or "
                              "resume=False.")
    return _load_file(file)


def _damaged(file: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(f"cannot resume from {file.parent}: {file} is damaged (truncated or not a safetensors "
                           f"file: {e}). Delete {file.parent} to start afresh, or resume=False.")


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:  # junk, truncated, missing
        raise _damaged(file, e) from e


def restore_rng(path: Path, state: dict) -> None:
    rng = _load_file(Path(path) / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, inner, gauss = state["python_rng"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            elif value is not None:
                tensors[f"state.{index}.{name}"] = torch.tensor(value)
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value
