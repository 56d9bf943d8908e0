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
from transferkit.errors import ConfigError

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
    from safetensors.torch import load_file

    one, history = _run(head_type, family, assets, strategy)
    two = load_file(two_processes / f"{head_type}-{family}-{strategy}.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    sharded = json.loads((two_processes / f"{head_type}-{family}-{strategy}.json").read_text())
    assert len(sharded) == len(history)
    for a, b in zip(sharded, history):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)
    # Each process held half of the sharded tensors: the runs recorded their local sizes.
    assert json.loads((two_processes / "shards.json").read_text())["halved"]


def _main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out, assets = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
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


def test_fsdp_with_checkpoints_is_refused_until_sharded_checkpoints_exist(assets, tmp_path, monkeypatch):
    """In one process FSDP is off (nothing to shard across), so the refusal is checked where it applies."""
    from transferkit.trainer import distributed

    from test_heads_resume import data_of, make_model

    model = make_model("classification", "hf", assets)
    train, _ = data_of("classification", "hf")
    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.World(0, 2, 0), torch.device("cpu")))
    with pytest.raises(ConfigError, match="checkpoints of sharded"):
        tk.Trainer(epochs=1, fsdp=True, output_dir=str(tmp_path / "run"), progress=False).fit(model, train)


if __name__ == "__main__":
    _main()
