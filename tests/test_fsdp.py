"""FSDP (PyTorch's fully_shard): two gloo processes train to the same weights and history as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transferkit as tk

sys.path.insert(0, str(Path(__file__).parent))

CASES = [("classification", "hf"), ("token_classification", "hf"), ("segmentation", "vit")]


def _run(head_type: str, family: str, assets, strategy: str = "full") -> tuple[dict, list[dict]]:
    """2 epochs, global batch 8 (2 processes: 2 × accumulate 2 micro-batches of 2), no dropout."""
    from test_heads_resume import data_of, make_model, weights, without_seconds

    model = make_model(head_type, family, assets, dropout=False)
    train, val = data_of(head_type, family)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Random augmentations are drawn per process, so sharded they cannot be one process's draws.
    task = model.task(augment=None) if head_type == "segmentation" else model
    history = tk.Trainer(epochs=2, batch_size=8, accumulate=2 if world > 1 else 1, lr=0.1, optimizer="sgd",
                         strategy=strategy, fsdp=True, progress=False).fit(task, train, val)
    assert not any(type(p).__name__ == "DTensor" for p in model.parameters())  # the plain model comes back
    return weights(model), without_seconds(history)


RUNS = [(h, f, "full") for h, f in CASES] + [("classification", "hf", "lora"), ("classification", "hf", "lp_ft")]


@pytest.fixture(scope="module")
def two_processes(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    (out / "assets.json").write_text(json.dumps(dict(assets)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(out), str(out / "assets.json")], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.parametrize("head_type,family,strategy", RUNS, ids=["-".join(r) for r in RUNS])
def test_two_process_fsdp_equals_one_process(head_type, family, strategy, two_processes, assets):
    from test_heads_resume import assert_same_run

    one, history = _run(head_type, family, assets, strategy)
    assert_same_run(one, history, two_processes / f"{head_type}-{family}-{strategy}")
    # Each process held half of the sharded tensors: the runs recorded their local sizes.
    assert json.loads((two_processes / "shards.json").read_text())["halved"]


class Stop(Exception):
    """Raised by a callback: the run is 'killed' after a checkpoint was written."""


def _checkpointed(assets, run_dir: Path, stop_at: int | None = None, resume: bool = False):
    """3 epochs of 2 steps with sharded checkpoints in ``run_dir``; stopped after step ``stop_at`` (mid epoch 2,
    its last checkpoint the end of epoch 1)."""
    from test_heads_resume import data_of, make_model, weights

    def stop(trainer, state):
        if stop_at is not None and state["step"] == stop_at:
            raise Stop

    model = make_model("classification", "hf", assets, dropout=False)
    train, val = data_of("classification", "hf")
    trainer = tk.Trainer(epochs=3, batch_size=8, accumulate=2, lr=0.1, optimizer="sgd", fsdp=True, progress=False,
                         output_dir=str(run_dir), loggers=(), callbacks={"on_step_end": [stop]})
    try:
        history = trainer.fit(model, train, val, resume=resume)
    except Stop:
        return None
    return weights(model), [r["train_loss"] for r in history]


def _main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out, assets = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    whole, losses = _checkpointed(assets, out / "uninterrupted")
    assert _checkpointed(assets, out / "killed", stop_at=3) is None
    shards = sorted(p.name for p in (out / "killed" / "checkpoint" / "sharded").iterdir())
    resumed, resumed_losses = _checkpointed(assets, out / "killed", resume=True)
    if rank0:
        save_file({k: v.contiguous() for k, v in whole.items()}, str(out / "uninterrupted.safetensors"))
        save_file({k: v.contiguous() for k, v in resumed.items()}, str(out / "resumed.safetensors"))
        (out / "resume.json").write_text(json.dumps({"shards": shards, "losses": losses,
                                                     "resumed_losses": resumed_losses}))
    for head_type, family, strategy in RUNS:
        state, history = _run(head_type, family, assets, strategy)
        if int(os.environ.get("RANK", "0")) == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{head_type}-{family}-{strategy}.safetensors"))
            (out / f"{head_type}-{family}-{strategy}.json").write_text(json.dumps(history))
    # That the parameters really are sharded: a sharded block holds half of its rows on each process.
    from test_heads_resume import make_model

    from transferkit.trainer import sharding

    model = make_model("classification", "hf", assets)
    sharded = sharding.shard(model, torch.device("cpu"))
    full = dict(model.named_parameters())
    local = {n: p.to_local().shape[0] for n, p in sharded.named_parameters() if type(p).__name__ == "DTensor"}
    halved = bool(local) and all(rows == -(-full[n].shape[0] // 2) or rows == full[n].shape[0] // 2
                                 for n, rows in local.items())
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "shards.json").write_text(json.dumps({"halved": halved, "tensors": len(local)}))


def test_a_killed_sharded_run_resumes_bit_for_bit(two_processes):
    """Each process wrote its own shard; the run killed mid-epoch resumes from its sharded checkpoint and ends with
    the weights and losses of the run that was never interrupted."""
    from safetensors.torch import load_file

    record = json.loads((two_processes / "resume.json").read_text())
    assert ".metadata" in record["shards"] and sum(s.endswith(".distcp") for s in record["shards"]) == 2
    whole, resumed = (load_file(two_processes / f"{n}.safetensors") for n in ("uninterrupted", "resumed"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert record["resumed_losses"] == record["losses"]


def test_a_sharded_checkpoint_needs_its_number_of_processes(tmp_path):
    from transferkit.errors import CheckpointError
    from transferkit.trainer import distributed, sharding

    (tmp_path / "state.json").write_text(json.dumps({"sharded": {"world_size": 4, "best": None}}))
    with pytest.raises(CheckpointError, match="written by 4 processes and this run has 2.*nproc_per_node=4"):
        sharding.load_checkpoint(tmp_path, torch.nn.Linear(2, 2), None, distributed.World(0, 2, 0))
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError, match="written without fsdp=True"):
        sharding.load_checkpoint(tmp_path, torch.nn.Linear(2, 2), None, distributed.World(0, 2, 0))


if __name__ == "__main__":
    _main()
