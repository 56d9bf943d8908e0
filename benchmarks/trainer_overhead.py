"""Per-step cost of transferkit's Trainer vs a hand-written PyTorch loop vs Hugging Face's Trainer.

    .venv/bin/python benchmarks/trainer_overhead.py               # about 3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/trainer_overhead.py --steps 20 --rounds 2   # quicker
    .venv/bin/python benchmarks/trainer_overhead.py --device cuda --precision bf16 --size base

The three train the same model (a BERT sequence classifier) on the same pre-tokenised batches with the
same update (AdamW, fused kernel where available; constant learning rate; gradient clipping at 1.0): no
evaluation, logging or checkpoints in any of them. They run alternately, ``--rounds`` times each, in a
rotating order, so a machine slowing down or speeding up affects all three alike. The figure is the median seconds per
optimiser step over the steps after ``--warmup`` (data loading included), from each run's step-end
events. Needs ``accelerate`` for Hugging Face's Trainer (``pip install 'transferkit[bench]'``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

SIZES = {  # hidden, layers, heads, intermediate
    "tiny": (64, 2, 2, 128),  # overhead-dominated: shows the per-step cost of the loop itself
    "small": (256, 4, 4, 1024),
    "base": (768, 12, 12, 3072),  # BERT-base
}


def build_model(size: str, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    hidden, layers, heads, inter = SIZES[size]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=8000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, max_position_embeddings=512, num_labels=4)
    return BertForSequenceClassification(config)


class Examples(torch.utils.data.Dataset):
    """Pre-tokenised fixed-length examples: the three loops do the same (tiny) data work."""

    def __init__(self, n: int, length: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 8000, (n, length), generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([x[k] for x in items]) for k in items[0]}


class Task(nn.Module):
    """The model as a transferkit task: ``examples``, ``collate``, ``forward(batch) -> {"loss"}``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def examples(self, data):
        return data

    def collate(self, items):
        return collate(items)

    def forward(self, batch):
        return {"loss": self.model(**batch).loss}


def hand_loop(model, data, args, device) -> list[float]:
    """The loop a user would write: the reference."""
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0),
                                         pin_memory=device.type == "cuda")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    dtype = {"bf16": torch.bfloat16}.get(args.precision)
    times = [time.perf_counter()]
    for step, batch in zip(range(args.steps), loader):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # every trainer reads the loss (logging, NaN check); so does the reference
        times.append(time.perf_counter())
    return times


def transferkit_loop(model, data, args, device) -> list[float]:
    import transferkit as tk

    times = []
    trainer = tk.Trainer(epochs=1, max_steps=args.steps, batch_size=args.batch_size, lr=1e-4, weight_decay=0.0,
                         precision=args.precision, device=str(device), progress=False,
                         callbacks={"on_train_start": [lambda t, s: times.append(time.perf_counter())],
                                    "on_step_end": [lambda t, s: times.append(time.perf_counter())]})
    trainer.fit(Task(model), data)
    return times


def hf_loop(model, data, args, device) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not times:
                times.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter())

    hf_args = TrainingArguments(output_dir=args.hf_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                                learning_rate=1e-4, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                                max_grad_norm=1.0, optim="adamw_torch_fused", logging_strategy="no",
                                save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
                                use_cpu=device.type == "cpu", bf16=args.precision == "bf16",
                                dataloader_num_workers=0, seed=0)
    Trainer(model=model, args=hf_args, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    return times


LOOPS = {"hand loop": hand_loop, "transferkit": transferkit_loop, "HF Trainer": hf_loop}


def step_times(times: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(times[warmup:], times[warmup + 1:])]


def flops_per_step(model: nn.Module, args) -> float:
    """6 × parameters × tokens (Kaplan et al. 2020) plus attention: a model FLOPs estimate per step."""
    hidden, layers, _, _ = SIZES[args.size]
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    tokens = args.batch_size * args.length
    return 6 * params * tokens + 12 * layers * hidden * args.length * tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for the chosen precision (MFU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--hf-dir", default="/tmp/transferkit-bench-hf")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = Examples(args.batch_size * (args.steps + 1), args.length)
    results: dict[str, list[float]] = {name: [] for name in LOOPS}
    print(f"BERT-{args.size} classifier, batch {args.batch_size} × {args.length} tokens, {args.steps} steps "
          f"(first {args.warmup} not timed), {args.rounds} rounds, {device}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    names = list(LOOPS)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:  # each loop takes each place in the order in turn
            loop = LOOPS[name]
            model = build_model(args.size)
            times = loop(model, data, args, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            steps = step_times(times, args.warmup)
            results[name] += steps
            print(f"  round {r + 1} {name:>12}: {statistics.median(steps) * 1000:8.2f} ms/step", flush=True)
    reference = statistics.median(results["hand loop"])
    flops = flops_per_step(build_model(args.size), args)
    print("\n| loop | median ms/step | × hand loop | examples/s |" + (" MFU |" if args.peak_tflops else ""))
    print("|---|---:|---:|---:|" + ("---:|" if args.peak_tflops else ""))
    for name, steps in results.items():
        median = statistics.median(steps)
        row = f"| {name} | {median * 1000:.2f} | {median / reference:.3f} | {args.batch_size / median:.1f} |"
        if args.peak_tflops:
            row += f" {flops / median / (args.peak_tflops * 1e12):.1%} |"
        print(row)


if __name__ == "__main__":
    main()
