"""Prediction throughput: texts batched by length (the default) vs padding in input order, on real posts.

    python benchmarks/inference_speed.py [--posts 800] [--max-length 256] [--batch-size 32] [--repeats 2]

MiniLM-L6 (all-MiniLM-L6-v2) with a classification head predicts the first ``--posts`` posts of 20 Newsgroups'
official test split (four groups, as the demo reads them; their lengths vary from a line to pages). Both ways run
in this one process, alternating, ``--repeats`` times each; the figure is the best time of each. The predictions
of the two must agree (the largest probability difference is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=800)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    import transferkit as tk
    from transferkit.recipes.datasets import newsgroups

    torch.set_num_threads(2)
    _, (texts, _) = newsgroups(10_000)
    texts = texts[: args.posts]
    backbone = tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=args.max_length)
    torch.manual_seed(0)
    model = tk.TransferModel(backbone, tk.heads.Classification(num_classes=4))
    tokens = [min(len(ids), args.max_length) for ids in backbone.preprocessor.tokenizer(texts)["input_ids"]]
    print(f"{len(texts)} posts, tokens per post (cut at {args.max_length}): median {statistics.median(tokens):.0f}, "
          f"min {min(tokens)}, max {max(tokens)}; batch size {args.batch_size}")
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.repeats):
        for by_length in (False, True):
            start = time.perf_counter()
            results[by_length] = model.predict_proba(texts, batch_size=args.batch_size, by_length=by_length)
            times[by_length].append(time.perf_counter() - start)
    diff = (results[True] - results[False]).abs().max().item()
    plain, bucketed = min(times[False]), min(times[True])
    print("| batching | seconds | posts/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| input order (plain padding) | {plain:.1f} | {len(texts) / plain:.1f} | 1.00× |")
    print(f"| by length (default) | {bucketed:.1f} | {len(texts) / bucketed:.1f} | {plain / bucketed:.2f}× |")
    print(f"largest probability difference between the two: {diff:.2e}")


if __name__ == "__main__":
    main()
