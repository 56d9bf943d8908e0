"""Fully sharded data parallel training (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``).

``Trainer(fsdp=True)`` launched with ``torchrun`` shards the parameters, gradients and optimiser state of the
model across the processes: each holds a ``1 / world_size`` slice of every tensor and gathers a layer's full weights
only while that layer runs (Zhao et al. 2023, "PyTorch FSDP", arXiv 2304.11277). That is how a model that does not
fit one device's memory trains on several.

What is sharded: each layer group of the backbone after the first (each transformer block, CNN stage, with the last
group's tail) is its own FSDP unit; the embeddings or stem, the head and anything left form the root unit (tied
weights, such as a generation head tied to the input embeddings, stay in one unit). The trainer trains a sharded
copy of the task and, at the end, puts the full weights back into the model you gave it (gathered from every
process), so ``fit`` returns the same plain model as without FSDP. Gradients are averaged over the processes as DDP
averages them, so a run gives the same weights as one process with the same global batch (tested with 2 gloo
processes on CPU).

Checkpoints are sharded (``torch.distributed.checkpoint``): with ``output_dir``, every process writes its own slice
of the weights, optimiser state and best weights into ``OUTPUT/checkpoint/sharded/`` (no process ever holds them
whole), and rank 0 adds ``state.json`` and its generator states, as in :mod:`.checkpoint`. The directory is staged
and swapped in as a whole, so a run killed mid-save keeps its last checkpoint; ``resume=True`` with the same number
of processes continues where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn


def shard(task: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``task`` on ``device``, sharded with ``fully_shard`` per backbone layer group, then as a whole."""
    from torch.distributed.fsdp import fully_shard

    from .strategies import find_backbone

    sharded = copy.deepcopy(task).to(device)
    backbone = find_backbone(sharded)
    if backbone is not None:
        for group in backbone.layer_groups()[1:]:  # the first (embeddings, stem) stays with the root
            for module in group.modules:
                if any(True for _ in module.parameters()):
                    fully_shard(module)
    fully_shard(sharded)
    return sharded


class Sharded:
    """The sharded task's forward pass, with ``no_sync`` (no gradient reduce-scatter) for accumulation steps."""

    def __init__(self, task: nn.Module):
        self.task = task

    def __call__(self, batch: Any) -> Any:
        return self.task(batch)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.task.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.task.set_requires_gradient_sync(True)


def full_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """The sharded task's full weights on every process (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu() for k, v in state.items()}


def save_checkpoint(directory: Path, task: nn.Module, optimizer: torch.optim.Optimizer, best_state: dict | None,
                    state: dict[str, Any], world) -> None:
    """Write a sharded checkpoint to ``directory / "checkpoint"`` (a collective: every process calls it)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from transferkit import files

    from . import checkpoint

    target = Path(directory) / checkpoint.NAME
    with contextlib.ExitStack() as stack:
        staged = None
        if world.main:
            files.recover(target, complete=checkpoint._complete)
            files.clean_stale(target, locked=False)
            staged = stack.enter_context(files.replacing_dir(target))
        name = [None if staged is None else str(staged)]
        dist.broadcast_object_list(name, src=0)  # every process writes its shard into rank 0's staging directory
        model, optim = get_state_dict(task, optimizer)
        payload = {"model": model, "optim": optim}
        if best_state is not None:
            payload["best"] = best_state
        dcp.save(payload, checkpoint_id=str(Path(name[0]) / "sharded"))
        if world.main:
            checkpoint.write_position(staged, {**state, "sharded": {
                "world_size": world.size, "best": sorted(best_state) if best_state is not None else None}})
        dist.barrier()  # every shard is on disk before rank 0 swaps the directory in
    dist.barrier()  # and the swap is done before any process goes on


def load_checkpoint(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer, world
                    ) -> tuple[dict, dict | None]:
    """Restore a sharded checkpoint into the sharded task and optimiser; returns (state.json, best weights or None).

    Raises:
        CheckpointError: the checkpoint is not a sharded one, or was written by another number of processes.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from transferkit.errors import CheckpointError

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {path / 'state.json'} is damaged ({e}).") from e
    sharded = state.get("sharded")
    if sharded is None:
        raise CheckpointError(f"cannot resume a sharded (FSDP) run from {path}: it was written without fsdp=True. "
                              "Resume with the settings it was written with, or resume=False.")
    if sharded["world_size"] != world.size:
        raise CheckpointError(f"{path} was written by {sharded['world_size']} processes and this run has "
                              f"{world.size}: resume with torchrun --nproc_per_node={sharded['world_size']}.")
    model, optim = get_state_dict(task, optimizer)
    payload = {"model": model, "optim": optim}
    if sharded["best"] is not None:
        payload["best"] = {k: torch.empty_like(model[k]) for k in sharded["best"]}
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

    stored = set(FileSystemReader(str(path / "sharded")).read_metadata().state_dict_metadata)
    missing = sorted(f"model.{k}" for k in model if f"model.{k}" not in stored)
    if missing:
        raise CheckpointError(f"cannot resume from {path}: it holds another model (missing {missing[:3]}). Use "
                              "another output directory or resume=False.")
    # The optimiser may hold state the checkpoint lacks: parameters that had no gradient yet (the template is a
    # fresh optimiser's, which has state for every parameter); those keep their fresh (zero) state.
    dcp.load(payload, checkpoint_id=str(path / "sharded"), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(task, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optim"])
    return state, payload.get("best")
