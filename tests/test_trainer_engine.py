"""The trainer's engine: accumulation, schedules, precision, custom metrics, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.tasks.text import MaskedLM
from transferkit.trainer.optim import schedule_factor

from conftest import SENTENCES

SCRIPT = Path(__file__).parent / "scripts" / "train_run.py"
TOPIC = {0: "animals", 1: "animals", 2: "animals", 3: "markets", 4: "markets", 5: "markets",
         6: "sport", 7: "sport", 8: "sport"}
PAIRS = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]


class TokenTask(nn.Module):
    """A token-level loss over sequences with different numbers of labelled tokens (like masked LM)."""

    def __init__(self, weighted: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 3)
        self.weighted = weighted

    def examples(self, data):
        return data

    def collate(self, examples):
        length = max(len(x) for x in examples)
        x = torch.zeros(len(examples), length, 4)
        y = torch.full((len(examples), length), -100)
        for i, seq in enumerate(examples):
            x[i, :len(seq)] = torch.tensor(seq)
            y[i, :len(seq)] = torch.tensor([int(abs(v[0] * 10)) % 3 for v in seq])
        return {"x": x, "y": y}

    def forward(self, batch):
        logits = self.proj(batch["x"])
        keep = batch["y"] != -100
        loss = nn.functional.cross_entropy(logits[keep], batch["y"][keep])
        return {"loss": loss, "num_items": keep.sum()} if self.weighted else {"loss": loss}

    def metrics(self):
        raise NotImplementedError


def _token_data():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(int(n), 4)).tolist() for n in rng.integers(1, 12, size=8)]


def _params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_accumulation_gives_the_large_batch_update():
    data = _token_data()
    results = {}
    for weighted in (True, False):
        for accumulate in (1, 4):
            task = TokenTask(weighted)
            tk.Trainer(epochs=1, batch_size=8, accumulate=accumulate, lr=0.1, optimizer="sgd", max_grad_norm=None,
                       weight_decay=0.0, progress=False).fit(task, data)
            results[weighted, accumulate] = _params(task)
    torch.testing.assert_close(results[True, 4], results[True, 1], rtol=0, atol=1e-6)
    # Averaging the micro-batches' mean losses (no token counts) would give another update: the test can fail.
    assert (results[False, 4] - results[False, 1]).abs().max() > 1e-3


def test_masked_lm_reports_its_token_count(assets):
    task = MaskedLM(tk.load_backbone(f"hf:{assets['bert']}"))
    torch.manual_seed(0)
    batch = task.collate(SENTENCES[:6])
    out = task(batch)
    assert int(out["num_items"]) == int((batch["labels"] != -100).sum()) > 0


def test_schedule_shapes_and_lr_seen_by_callbacks(assets):
    assert [round(schedule_factor("linear", s, 2, 10), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]
    assert schedule_factor("cosine", 6, 2, 10) == pytest.approx(0.5)
    assert schedule_factor("constant", 9, 0, 10) == 1.0
    lrs = []
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    tk.Trainer(epochs=2, batch_size=8, lr=0.1, schedule="linear", warmup=0.2, progress=False,
               callbacks={"on_step_end": [lambda t, s: lrs.append(s["lr"])]}).fit(model, PAIRS[:40])
    assert len(lrs) == 10 and lrs[:2] == pytest.approx([0.1 / 3, 0.2 / 3])  # warm-up: 20% of 10 steps
    assert lrs[2:4] == pytest.approx([0.1, 0.1 * 7 / 8]) and lrs[-1] == pytest.approx(0.1 / 8)
    with pytest.raises(ValueError, match="schedule must be one of"):
        tk.Trainer(epochs=1, schedule="step", progress=False).fit(model, PAIRS[:8])


def test_bf16_on_cpu_learns_and_fp16_needs_cuda(assets):
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(3))
    history = tk.Trainer(epochs=4, batch_size=8, lr=1e-3, head_lr=1e-2, precision="bf16",
                         progress=False).fit(model, PAIRS[:40], PAIRS[40:60])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        tk.Trainer(epochs=1, precision="fp16", device="cpu", progress=False).fit(model, PAIRS[:8])


def test_auto_precision_takes_bf16_only_where_the_hardware_has_it(monkeypatch):
    from transferkit.trainer.precision import Precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert Precision("auto", cpu).name == "fp32" and Precision("auto", cpu).dtype is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert Precision("auto", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision("fp8", cpu)


def test_custom_metric_from_the_streamed_confusion_matrix(assets):
    def balanced_accuracy(confusion):
        return float(np.mean(np.diag(confusion) / confusion.sum(1)))

    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    trainer = tk.Trainer(epochs=2, lr=0.05, batch_size=8, eval_batch_size=4, progress=False,
                         metrics={"balanced": balanced_accuracy}, metric="balanced")
    history = trainer.fit(model, PAIRS[:30], PAIRS[30:50])
    predictions = model.predict([s for s, _ in PAIRS[30:50]])
    truth = [y for _, y in PAIRS[30:50]]
    per_class = [np.mean([p == y for p, y in zip(predictions, truth) if y == c]) for c in sorted(set(truth))]
    assert history[-1]["val_balanced"] == pytest.approx(np.mean(per_class))
    assert trainer.best["metric"] == "balanced" and trainer.best["higher_is_better"]
    # The name is checked against the task's metrics when fit starts; the message lists them.
    trainer = tk.Trainer(metric="mcc", metrics={"balanced": balanced_accuracy}, progress=False)
    with pytest.raises(ConfigError, match=r"'mcc' is not one ClassificationTask reports: choose one of "
                                          r"\['accuracy', 'balanced', 'loss', 'macro_f1'\]"):
        trainer.fit(model, PAIRS[:8], PAIRS[8:12])
    with pytest.raises(ConfigError, match=r"metrics\['mcc'\] must be fn, \(fn, 'max'\) or \(fn, 'min'\)"):
        tk.Trainer(metrics={"mcc": (balanced_accuracy, "lowest")})


def test_checkpoint_is_safetensors_and_a_failed_save_keeps_the_last_one(assets, tmp_path, monkeypatch):
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    tk.Trainer(epochs=1, batch_size=8, lr=0.05, output_dir=str(tmp_path), loggers=(),
               progress=False).fit(model, PAIRS[:16], PAIRS[16:24])
    saved = tmp_path / "checkpoint"
    # Epoch 1 is the best so far: its weights are the model's, so no best.safetensors copy is written.
    assert sorted(p.name for p in saved.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                       "rng.safetensors", "state.json"]
    state = json.loads((saved / "state.json").read_text())
    assert state["step"] == 2 and state["best_epoch"] == 1 and "model.head.layers.1.weight" in state["best_keys"]
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tk.Trainer(epochs=1, batch_size=8, lr=0.05, output_dir=str(tmp_path), loggers=(),
                   progress=False).fit(model, PAIRS[:16])
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".transferkit-run", "checkpoint"]  # no temporary directory left


def test_resume_of_a_run_stopped_mid_epoch_matches_the_full_run_streamed(assets, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES[:24]) + "\n", encoding="utf-8")

    class Stop(Exception):
        pass

    def run(out, stop_at=None, resume=False):
        torch.manual_seed(0)
        task = MaskedLM(tk.load_backbone(f"hf:{assets['bert']}"))

        def stop(trainer, state):
            if state["step"] == stop_at:
                raise Stop

        trainer = tk.Trainer(epochs=2, batch_size=4, lr=1e-3, output_dir=str(out), save_every=1, loggers=(),
                             max_steps=12, schedule="linear", progress=False, callbacks={"on_step_end": [stop]})
        history = trainer.fit(task, str(corpus), resume=resume)
        return _params(task), history

    full, full_history = run(tmp_path / "a")
    with pytest.raises(Stop):
        run(tmp_path / "b", stop_at=3)  # epoch 1 has 6 steps: stopped in the middle
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["epoch_step"] == 3
    resumed, history = run(tmp_path / "b", resume=True)
    assert torch.equal(resumed, full)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in full_history]


def _wait_for_checkpoint(out: Path, process, at_least: int) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = json.loads((out / "checkpoint" / "state.json").read_text())
            if state["step"] >= at_least and state["epoch_step"] > 0:
                return state
        except (OSError, ValueError):
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_mid_epoch_then_resume_is_bitwise_equal_to_an_uninterrupted_run(assets, tmp_path):
    args = ["--model", "bert", "--asset", assets["bert"]]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "full"), *args], check=True, env=env)

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args, "--slow", "0.3"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = _wait_for_checkpoint(out, process, at_least=13)  # 10 steps an epoch: inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (out / "final.safetensors").exists()
    assert state["epoch"] == 2
    subprocess.run([sys.executable, str(SCRIPT), str(out), *args, "--resume"], check=True, env=env)

    full, resumed = load_file(tmp_path / "full" / "final.safetensors"), load_file(out / "final.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (json.loads((out / "history.json").read_text())
            == json.loads((tmp_path / "full" / "history.json").read_text()))


@pytest.mark.parametrize("adversarial", [None, "pgd"])
def test_two_process_ddp_with_gloo_equals_one_process(assets, tmp_path, adversarial):
    # PGD: several forward/backward passes per micro-batch, the gradient exchanged once (trainer.adversarial).
    args = ["--model", "glove", "--asset", assets["glove"], "--epochs", "2", "--batch-size", "8"]
    args += ["--adversarial", adversarial] if adversarial else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), *args], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(SCRIPT), str(tmp_path / "two"), *args, "--accumulate", "2"], check=True, env=env,
                   capture_output=True)
    one, two = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [r["val_accuracy"] for r in h1] == [r["val_accuracy"] for r in h2]
    assert [r["train_loss"] for r in h2] == pytest.approx([r["train_loss"] for r in h1], rel=1e-5)


def test_compile_and_channels_last_train_the_same_function():
    torch.manual_seed(0)
    images = [torch.rand(3, 32, 32) for _ in range(16)]
    labels = [i % 2 for i in range(16)]
    losses = {}
    for options in ({}, {"channels_last": True}, {"compile": "eager"}):
        torch.manual_seed(0)
        model = tk.TransferModel(tk.load_backbone("timm:test_resnet", weights=None, image_size=32),
                                 tk.heads.Classification(2))
        history = tk.Trainer(epochs=1, batch_size=8, lr=1e-3, progress=False, **options).fit(
            model, (images, labels), (images, labels))
        losses[str(options)] = history[0]["val_loss"]
    values = list(losses.values())
    assert values[1] == pytest.approx(values[0], rel=1e-4) and values[2] == pytest.approx(values[0], rel=1e-4)


def test_streamed_corpus_is_reshuffled_every_epoch_with_workers(tmp_path):
    from transferkit.tasks.text_corpus import TextCorpus

    corpus = tmp_path / "numbers.txt"
    corpus.write_text("\n".join(str(i) for i in range(40)) + "\n", encoding="utf-8")

    class Order(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.seen = []

        def examples(self, data):
            return TextCorpus(data, shuffle_buffer=40)

        def collate(self, texts):
            return {"ids": torch.tensor([int(t) for t in texts])}

        def forward(self, batch):
            self.seen.append(batch["ids"].tolist())
            return {"loss": (self.w ** 2).sum() + 1}

    task = Order()
    tk.Trainer(epochs=2, batch_size=40, num_workers=1, progress=False).fit(task, str(corpus))
    first, second = task.seen
    assert sorted(first) == sorted(second) == list(range(40)) and first != second
