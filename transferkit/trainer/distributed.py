"""Data order and data parallelism: which examples each process sees at each micro-step.

``torchrun --nproc_per_node=N script.py`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`setup` then
joins the process group (NCCL on CUDA, gloo on CPU) and the Trainer wraps the task in
``DistributedDataParallel``. The Trainer's ``batch_size`` is the *global* batch of one optimiser step:
each step's examples are split over ``world × accumulate`` micro-batches, so a run with any number of
processes or accumulation steps makes the same updates as one process with the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def default_device(device: str | None) -> str:
    """``device`` if given, else ``"cuda"`` when available, else ``"cpu"``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def setup(device: str | None) -> tuple[World, torch.device]:
    """Join the process group when launched by ``torchrun``; returns (world, this process's device)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), torch.device(default_device(device))
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = default_device(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, torch.device(f"cuda:{world.local_rank}" if use_cuda else "cpu")


def all_sum(value: float, world: World, device: torch.device) -> float:
    """Sum of ``value`` over all processes (``value`` itself with one process)."""
    if world.size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a new shuffle every epoch, the same one for a given (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def grouped_permutation(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                        mega: int = 50) -> np.ndarray:
    """The order of epoch ``epoch`` with examples of similar length together (less padding per batch).

    A shuffle (:func:`permutation`) is cut into mega-batches of ``mega * batch_size`` examples, each sorted
    longest first and cut into batches; the full batches are then shuffled, the one holding the longest
    example first (so running out of memory shows in the first step, not hours in), and the smaller last
    batch stays last. Like :func:`permutation`, the same order for a given (seed, epoch, lengths), so
    exact resume and every process under DDP agree.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    order = permutation(len(lengths), seed, epoch)
    size = mega * batch_size
    order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(size, len(order), size))])
    full = len(order) // batch_size
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]
    if not batches:
        return order
    rest = order[full * batch_size:]
    shuffled = rng.permutation(len(batches))
    longest = int(np.argmax([lengths[b].max() for b in batches]))
    shuffled = [longest] + [int(i) for i in shuffled if i != longest]
    return np.concatenate([batches[i] for i in shuffled] + [rest])


def micro_batches(order: np.ndarray, batch_size: int, accumulate: int, world: World,
                  start_step: int = 0) -> Iterator[list[list[int]]]:
    """For each optimiser step from ``start_step``: this process's micro-batches (lists of indices).

    A step's ``batch_size`` examples are cut into ``world.size`` contiguous shares, and each share into
    ``accumulate`` micro-batches. The last, smaller step of an epoch is cut the same way; empty
    micro-batches are dropped, except with several processes where every process must run the same
    number of passes: there the last step is dropped when it has fewer examples than micro-batches.
    """
    for begin in range(start_step * batch_size, len(order), batch_size):
        step = order[begin:begin + batch_size]
        if world.size > 1 and len(step) < world.size * accumulate:
            return
        share = np.array_split(step, world.size)[world.rank]
        yield [m.tolist() for m in np.array_split(share, accumulate) if len(m)]


def steps_per_epoch(n: int, batch_size: int, accumulate: int, world: World) -> int:
    steps = -(-n // batch_size)
    if world.size > 1 and n % batch_size and n % batch_size < world.size * accumulate:
        steps -= 1
    return steps
