"""PEFT vs full fine-tuning in the demo's few-label settings: accuracy, trained parameters, peak memory, step time.

    python benchmarks/peft_fewshot.py text   [--seeds 5] [--methods full,lora,...]
    python benchmarks/peft_fewshot.py vision [--seeds 5]

text: MiniLM-L6 (all-MiniLM-L6-v2) on the demo's 20 Newsgroups setting (4 groups, 8 labelled posts per group drawn
per seed from the official train split, 400 held-out posts of the official test split; 5 epochs, batch 8, backbone
lr 1e-4, head lr 3e-3, max 64 tokens: the demo's recipe for full fine-tuning). vision: EfficientNet-Lite0 (timm,
ImageNet) on the demo's MNIST setting (10 labelled digits per class, 500 held-out, 64 px) fine-tuned end to end
(20 epochs, batch 16, backbone lr 1e-3, head lr 1e-2; the final layer's pooled features, since a fine-tuned
network adapts its top).

Every method runs in its own process, so the peak resident memory (``ru_maxrss``; on a GPU also
``torch.cuda.max_memory_allocated``) is its own; step time is the
training time over the optimiser steps (no evaluation inside). PEFT adapters learn at the head's rate (the
strategies' rule); nothing was tuned on the test posts or digits. Seeds are paired: each draws the same labelled
set and initialises the same head for every method.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TEXT = {"spec": "hf:sentence-transformers/all-MiniLM-L6-v2", "options": {"max_length": 64}, "epochs": 5,
        "batch_size": 8, "lr": 1e-4, "head_lr": 3e-3, "shots": 8}
VISION = {"spec": "timm:tf_efficientnet_lite0", "options": {"image_size": 64}, "epochs": 20, "batch_size": 16,
          "lr": 1e-3, "head_lr": 1e-2, "shots": 10}
METHODS = ["full", "linear_probe", "lora", "dora", "ia3", "prompt_tuning", "bottleneck", "bitfit", "norm_tuning"]


def one(setting: str, method: str, seeds: int, lora_r: int = 8) -> dict:
    """Train and score ``method`` for every seed in this process; returns the figures."""
    import torch

    import transferkit as tk
    from transferkit.recipes.datasets import mnist, newsgroups
    from transferkit.recipes.fewshot import few_shot, subset

    torch.set_num_threads(2)
    cfg = TEXT if setting == "text" else VISION
    pool, test = newsgroups(100) if setting == "text" else mnist(500)
    scores, step_times, trained, total = [], [], 0, 0
    for seed in range(seeds):
        train = subset(pool, few_shot(pool[1], cfg["shots"], seed))
        backbone = tk.load_backbone(cfg["spec"], **cfg["options"])
        torch.manual_seed(seed)
        model = tk.TransferModel(backbone, tk.heads.Classification(labels=sorted(set(train[1]))))
        strategy = "linear_probe" if method == "linear_probe" else "full"
        if method not in ("full", "linear_probe"):
            model.add_adapter(method, **({"r": lora_r} if method in ("lora", "dora") else {}))
        if method == "linear_probe":
            backbone.freeze()
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and ".bottleneck." not in n
                    and ".prompts." not in n and "ia3_" not in n)
        trainer = tk.Trainer(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], head_lr=cfg["head_lr"],
                             strategy=strategy, seed=seed, progress=False, loggers=(), eval_batch_size=64)
        start = time.perf_counter()
        trainer.fit(model, train)
        steps = cfg["epochs"] * -(-len(train[0]) // cfg["batch_size"])
        step_times.append((time.perf_counter() - start) / steps)
        scores.append(trainer.evaluate(model, test)["accuracy"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB (Linux)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"method": method, "scores": scores, "trained": trained, "total": total, "peak_mib": peak,
            "cuda_mib": cuda, "step_s": statistics.median(step_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("setting", choices=["text", "vision"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lora-r", type=int, default=8, help="rank of LoRA and DoRA (default 8)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.setting, args.one, args.seeds, args.lora_r)))
        return
    rows = []
    for method in args.methods.split(","):
        if args.setting == "vision" and method == "prompt_tuning":
            continue
        out = subprocess.run([sys.executable, __file__, args.setting, "--seeds", str(args.seeds), "--one", method,
                              "--lora-r", str(args.lora_r)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{method}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {method:<13} {statistics.mean(row['scores']):.3f}  {row['scores']}", flush=True)
    full = next((r for r in rows if r["method"] == "full"), None)
    print(f"\n{args.setting}: accuracy over {args.seeds} paired seeds (mean ± std), vs full fine-tuning "
          f"(mean of the per-seed differences); LoRA/DoRA rank {args.lora_r}\n")
    cuda = any(r.get("cuda_mib") is not None for r in rows)
    print("| method | accuracy | vs full | trained params | % of model | peak RSS (MiB) |"
          + (" CUDA max allocated (MiB) |" if cuda else "") + " step (s) |")
    print("|---|---|---|---|---|---|" + ("---|" if cuda else "") + "---|")
    for r in rows:
        s = r["scores"]
        spread = statistics.stdev(s) if len(s) > 1 else 0.0
        diff = "" if full is None or r is full else \
            f"{100 * statistics.mean(a - b for a, b in zip(s, full['scores'])):+.1f} pts"
        print(f"| {r['method']} | {statistics.mean(s):.3f} ± {spread:.3f} | {diff} | {r['trained']:,} | "
              f"{100 * r['trained'] / r['total']:.2f}% | {r['peak_mib']:.0f} |"
              + (f" {r['cuda_mib']:.0f} |" if cuda else "") + f" {r['step_s']:.3f} |")


if __name__ == "__main__":
    main()
