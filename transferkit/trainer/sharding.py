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

Not built yet: sharded checkpoints (``output_dir``) — ``Trainer(fsdp=True, output_dir=...)`` is refused.
"""

from __future__ import annotations

import contextlib
import copy
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
