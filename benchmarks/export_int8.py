"""Eager PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic quantisation) on real posts: accuracy,
latency per post (batch 1) and throughput (batch 32), same inputs, one run.

    python benchmarks/export_int8.py [--train-per-class 50] [--latency-posts 100] [--threads 2]

MiniLM-L6 (all-MiniLM-L6-v2, max 128 tokens) is fine-tuned on 20 Newsgroups (four groups, ``--train-per-class``
posts per group from the official train split; 3 epochs, lr 1e-4, head lr 3e-3), then exported with
``model.export(DIR, "onnx", quantize="int8")`` and read back with ``load_exported``. All three score the same 400
held-out posts of the official test split (100 per group). Each engine runs with ``--threads`` intra-op threads;
times are the best of two passes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--latency-posts", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import transferkit as tk
    from transferkit.export import load_exported
    from transferkit.recipes.datasets import newsgroups
    from transferkit.recipes.fewshot import few_shot, subset

    torch.set_num_threads(args.threads)
    pool, (texts, labels) = newsgroups(100)
    train = subset(pool, few_shot(pool[1], args.train_per_class, 0))
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=128),
                             tk.heads.Classification(labels=sorted(set(train[1]))))
    start = time.perf_counter()
    tk.Trainer(epochs=3, lr=1e-4, head_lr=3e-3, batch_size=8, progress=False, loggers=()).fit(model, train)
    print(f"fine-tuned on {len(train[0])} posts in {time.perf_counter() - start:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        out = model.export(Path(tmp) / "export", "onnx", quantize="int8")
        sizes = {name: (out / name).stat().st_size / 2**20 for name in ("model.onnx", "model.int8.onnx")}
        engines = {"eager PyTorch fp32": model,
                   "ONNX Runtime fp32": load_exported(out, threads=args.threads),
                   "ONNX Runtime int8": load_exported(out, int8=True, threads=args.threads)}
        rows = []
        for name, engine in engines.items():
            best_batch, best_single = float("inf"), float("inf")
            for _ in range(2):
                start = time.perf_counter()
                predicted = engine.predict(texts, batch_size=32)
                best_batch = min(best_batch, time.perf_counter() - start)
                start = time.perf_counter()
                for text in texts[: args.latency_posts]:
                    engine.predict([text], batch_size=1)
                best_single = min(best_single, (time.perf_counter() - start) / args.latency_posts)
            accuracy = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
            rows.append((name, accuracy, best_single * 1000, len(texts) / best_batch))
    base = rows[0]
    print(f"\n400 held-out posts; graph sizes: fp32 {sizes['model.onnx']:.1f} MiB, int8 "
          f"{sizes['model.int8.onnx']:.1f} MiB; {args.threads} threads\n")
    print("| engine | accuracy | Δ vs eager | latency (ms/post, batch 1) | throughput (posts/s, batch 32) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, accuracy, latency, throughput in rows:
        print(f"| {name} | {accuracy:.4f} | {100 * (accuracy - base[1]):+.2f} pts | {latency:.1f} | "
              f"{throughput:.1f} | {throughput / base[3]:.2f}× |")


if __name__ == "__main__":
    main()
