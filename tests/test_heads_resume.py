"""Every registered head × each backbone family: exact resume, gradient accumulation and DDP.

The Trainer knows only the Task protocol, so what it promises for classification it must keep for every head:

* **exact resume** — a run stopped in the middle of epoch 2 and resumed from its checkpoint (``resume=True``)
  ends bit for bit where the uninterrupted run ends: every tensor of the model (head included, buffers too),
  the last epoch's weights before the best epoch is restored, the history and the best-epoch choice;
* **accumulation** — ``accumulate=4`` makes the update of the whole batch (``batch_size`` is the batch of one
  optimiser step): each task's loss is a mean over examples, windows (QA) or labelled tokens (tagging,
  generation: the ``num_items`` the task reports), and the trainer weights each micro-batch by its items, so
  the accumulated gradient equals the large batch's, up to float rounding. Dropout is switched off there
  (the micro-batches draw other masks) and BatchNorm backbones are left out (their statistics are per
  micro-batch, so accumulation is not the large batch for them: that is BatchNorm, not the trainer);
* **DDP** — two processes (gloo, CPU, ``torchrun``) with the same global batch make the updates of one
  process, for one backbone family per head. The heads under test train in one launch (started once for the
  module); the default suite runs token classification (whose head leaves BERT's pooler unused), ``-m slow``
  every head.

Every task's loss is batch-independent for this: QA's softmax leaves out padding positions, and a class-weighted
cross-entropy reports its weight sum as ``num_items``.

Run as a script (by the DDP fixture, under ``torch.distributed.run``)::

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_heads_resume.py OUT ASSETS_JSON HEAD...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import transferkit as tk
# As a script (sys.path[0] is tests/) and under pytest alike: the conformance cases.
from test_heads_conformance import CASES, PARAMS, backbone, images

# One family per head for DDP: the BERT encoder (the heads that read its tokens leave its pooler unused, which
# DDP must tolerate) and the causal decoder for generation.
DDP_FAMILY = {head: {"generation": "gpt2", "segmentation": "vit"}.get(head, "hf") for head in CASES}
DDP_DEFAULT = {"token_classification"}  # in the default suite; the other heads' DDP runs are marked slow

class Stop(Exception):
    """Raised by a callback: the run is 'killed' after a checkpoint was written."""


def data_of(head_type: str, family: str) -> list:
    """A small train/validation split of the head's conformance data (16 + 8 examples)."""
    data = images() if (head_type, family) == ("classification", "vision") else CASES[head_type][1][family]()
    return data[:16], data[16:24]


def make_model(head_type: str, family: str, assets, dropout: bool = True) -> tk.TransferModel:
    torch.manual_seed(0)
    head = tk.heads.Classification(labels=["dark", "light"]) if (head_type, family) == ("classification", "vision") \
        else CASES[head_type][0]()
    model = tk.TransferModel(backbone(family, assets), head)
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):  # Dropout, Dropout2d...
                module.p = 0.0  # attention dropout reads .p too
        if isinstance(getattr(model.head, "dropout", None), float):  # for layers built once the data names classes
            model.head.dropout = 0.0
    return model


def lr_of(family: str) -> float:
    return 0.05 if family == "word_vectors" else 3e-3


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# --- exact resume -----------------------------------------------------------------------------------

def _resume_run(head_type, family, assets, out: Path | None, stop_at=None, resume=False):
    """3 epochs, linear schedule with warm-up; checkpoints in ``out`` (also after step ``stop_at``, where it
    stops); the uninterrupted run writes none (``out=None``), so saving must not change the run either."""
    model = make_model(head_type, family, assets)
    train, val = data_of(head_type, family)
    last = {}

    def stop(trainer, state):
        if state["step"] == stop_at:
            raise Stop

    def keep_last(trainer, state):
        if state["epoch"] == trainer.epochs:  # before the best epoch's weights are restored
            last.update(weights(model))

    trainer = tk.Trainer(epochs=3, batch_size=4, lr=lr_of(family), head_lr=0.05, schedule="linear", warmup=2,
                         seed=1, output_dir=out and str(out), save_every=stop_at, loggers=(), progress=False,
                         callbacks={"on_step_end": [stop], "on_epoch_end": [keep_last]})
    history = trainer.fit(model, train, val, resume=resume)
    return trainer, model, history, last


@pytest.mark.parametrize("head_type, family", PARAMS, ids=[f"{h}-{f}" for h, f in PARAMS])
def test_a_run_stopped_mid_epoch_resumes_bit_for_bit(head_type, family, assets, tmp_path):
    trainer, model, history, last = _resume_run(head_type, family, assets, None)
    per_epoch = history[0]["step"]
    assert per_epoch >= 2
    stop_at = per_epoch + per_epoch // 2  # in the middle of epoch 2
    with pytest.raises(Stop):
        _resume_run(head_type, family, assets, tmp_path / "cut", stop_at=stop_at)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (2, stop_at)
    again, resumed, resumed_history, resumed_last = _resume_run(head_type, family, assets, tmp_path / "cut",
                                                                resume=True)
    assert_equal_weights(resumed_last, last)
    assert_equal_weights(weights(resumed), weights(model))
    assert without_seconds(resumed_history) == without_seconds(history)
    assert again.best == trainer.best


# --- gradient accumulation --------------------------------------------------------------------------

TEXT_PARAMS = [pytest.param(h, f, id=f"{h}-{f}")
               for h, f in PARAMS if f != "vision"]
# torchvision normalises detection losses per batch (by the boxes matched in it), so neither accumulation nor DDP
# can make the large batch's update for detection: tests/test_detection.py checks that both train.


@pytest.mark.parametrize("head_type, family", TEXT_PARAMS)
def test_accumulation_makes_the_update_of_the_whole_batch(head_type, family, assets):
    train, _ = data_of(head_type, family)
    results = {}
    for accumulate in (1, 4):
        model = make_model(head_type, family, assets, dropout=False)
        start = weights(model)
        history = tk.Trainer(epochs=1, batch_size=8, accumulate=accumulate, lr=0.1, optimizer="sgd",
                             max_grad_norm=1.0, progress=False).fit(model, train)
        results[accumulate] = weights(model), history[0]["train_loss"]
    (one, loss_one), (four, loss_four) = results[1], results[4]
    assert any(not torch.equal(one[k], start[k]) for k in one), "nothing trained"
    for k in one:
        torch.testing.assert_close(four[k], one[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert loss_four == pytest.approx(loss_one, rel=1e-5)


# --- DDP ----------------------------------------------------------------------------------------------

def _ddp_run(head_type: str, assets) -> tuple[dict, list[dict]]:
    """2 epochs, global batch 8 (with 2 processes: 2 × accumulate 2 micro-batches of 2), no dropout."""
    family = DDP_FAMILY[head_type]
    model = make_model(head_type, family, assets, dropout=False)
    train, val = data_of(head_type, family)
    accumulate = 2 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 1
    # Random augmentations are drawn per process, so under DDP they cannot be one process's draws.
    task = model.task(augment=None) if head_type == "segmentation" else model
    history = tk.Trainer(epochs=2, batch_size=8, accumulate=accumulate, lr=0.1, optimizer="sgd",
                         progress=False).fit(task, train, val)
    return weights(model), without_seconds(history)


@pytest.fixture(scope="module")
def two_processes(request, assets, tmp_path_factory) -> Path:
    """The heads this session tests, trained in one launch of two gloo processes; rank 0 writes
    ``OUT/<head>.safetensors`` and ``OUT/<head>.json`` (the history)."""
    heads = sorted({item.callspec.params["head_type"] for item in request.session.items
                    if getattr(item, "originalname", None) == "test_two_process_ddp_equals_one_process_for_every_head"})
    out = tmp_path_factory.mktemp("ddp")
    (out / "assets.json").write_text(json.dumps(dict(assets)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(out), str(out / "assets.json"), *heads], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _ddp_params():
    return [pytest.param(head, id=head, marks=[] if head in DDP_DEFAULT else [pytest.mark.slow]) for head in CASES
            if head != "detection"]


@pytest.mark.parametrize("head_type", _ddp_params())
def test_two_process_ddp_equals_one_process_for_every_head(head_type, two_processes, assets):
    one, history = _ddp_run(head_type, assets)
    assert_same_run(one, history, two_processes / head_type)


def assert_same_run(one: dict, history: list[dict], saved) -> None:
    """One process's weights and history equal a multi-process run's, saved as ``saved.safetensors`` / ``.json``."""
    from safetensors.torch import load_file

    two = load_file(f"{saved}.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    other = json.loads(Path(f"{saved}.json").read_text())
    assert len(other) == len(history)
    for a, b in zip(other, history):
        assert a.keys() == b.keys()
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)  # R² near 0 and rank metrics amplify rounding


def _ddp_main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out, assets = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    for head_type in sys.argv[3:]:
        state, history = _ddp_run(head_type, assets)
        if int(os.environ.get("RANK", "0")) == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{head_type}.safetensors"))
            (out / f"{head_type}.json").write_text(json.dumps(history))


if __name__ == "__main__":
    _ddp_main()
