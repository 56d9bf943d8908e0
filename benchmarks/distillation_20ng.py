"""Distillation across families: a fine-tuned MiniLM teacher → a GloVe student at a fraction of its size.

    python benchmarks/distillation_20ng.py [--labelled 50] [--seeds 3]

Data: 20 Newsgroups, the demo's four groups. ``--labelled`` posts per group of the official train split are
labelled; 25 other posts per group are the validation set (it picks each model's best epoch); the rest of the train
split (about 2,000 posts) is the unlabelled transfer set; 400 posts of the official test split (100 per group) are
the test set, used for nothing but the table.

Teacher: MiniLM-L6 (all-MiniLM-L6-v2, 22.7M parameters, max 128 tokens), fully fine-tuned on the labelled posts.
Student: GloVe 6B.50d vectors kept for the words of the training split only (the rest of the 400k-word table is
never used by this data), mean+max pooled, a 256-unit hidden layer; vectors trainable. Rows:

* student trained on the labelled posts alone (no teacher);
* student distilled on the labelled posts (``DistillationTask``, T = 2, alpha = 0.5);
* student distilled on the labelled posts plus the transfer set labelled by the teacher (``teacher_labels``).

Throughput is ``predict`` on the 400 test posts (batch 64, 2 threads).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelled", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    import transferkit as tk
    from transferkit.backbones.word_vectors import from_vectors
    from transferkit.recipes.datasets import newsgroups
    from transferkit.tasks.distillation import DistillationTask, teacher_labels

    torch.set_num_threads(2)
    pool, test = newsgroups(100)
    glove = tk.load_backbone("glove:6B.50d", max_tokens=256)
    seen = {w for text in pool[0] for w in re.findall(r"[a-z0-9']+", text.lower())}
    vocab = [w for w in glove.preprocessor.vocab if w in seen]
    index = {w: i for i, w in enumerate(glove.preprocessor.vocab)}
    table = glove.encoder.embeddings.weight.detach().numpy()
    vectors = np.stack([table[1 + index[w]] for w in vocab]).astype(np.float32)
    print(f"GloVe student vocabulary: {len(vocab):,} of {len(glove.preprocessor.vocab):,} words (those in the train "
          "split)", flush=True)

    def student() -> tk.TransferModel:
        backbone = from_vectors(vocab, vectors, source="glove", name="6B.50d-20ng", pooling="mean+max",
                                max_tokens=256)
        return tk.TransferModel(backbone, tk.heads.Classification(labels=sorted(set(pool[1])), hidden=256))

    def accuracy(model) -> float:
        return sum(p == y for p, y in zip(model.predict(test[0], batch_size=64), test[1])) / len(test[1])

    def speed(model) -> float:
        start = time.perf_counter()
        model.predict(test[0], batch_size=64)
        return len(test[0]) / (time.perf_counter() - start)

    rows: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    speeds: dict[str, float] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        labelled, val, rest = [], [], []
        for group in sorted(set(pool[1])):
            idx = rng.permutation([i for i, y in enumerate(pool[1]) if y == group]).tolist()
            labelled += idx[: args.labelled]
            val += idx[args.labelled: args.labelled + 25]
            rest += idx[args.labelled + 25:]
        train = ([pool[0][i] for i in labelled], [pool[1][i] for i in labelled])
        valid = ([pool[0][i] for i in val], [pool[1][i] for i in val])
        transfer = [pool[0][i] for i in rest]

        torch.manual_seed(seed)
        teacher = tk.TransferModel(tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=128),
                                   tk.heads.Classification(labels=sorted(set(pool[1]))))
        tk.Trainer(epochs=4, lr=1e-4, head_lr=3e-3, batch_size=8, seed=seed, progress=False, loggers=()).fit(
            teacher, train, valid)
        rows.setdefault("teacher: MiniLM-L6 fine-tuned", []).append(accuracy(teacher))
        sizes["teacher: MiniLM-L6 fine-tuned"] = sum(p.numel() for p in teacher.parameters())
        speeds["teacher: MiniLM-L6 fine-tuned"] = speed(teacher)

        start = time.perf_counter()
        transfer_set = (train[0] + transfer, train[1] + teacher_labels(teacher, transfer))
        print(f"seed {seed}: teacher {rows['teacher: MiniLM-L6 fine-tuned'][-1]:.3f}; labelled the transfer set "
              f"({len(transfer)} posts) in {time.perf_counter() - start:.0f} s", flush=True)
        trainer = dict(epochs=30, lr=0.01, head_lr=0.01, batch_size=32, seed=seed, progress=False, loggers=(),
                       patience=5)
        for name, data, teach in (("student: GloVe, labelled posts only", train, False),
                                  ("student: GloVe distilled, labelled posts", train, True),
                                  ("student: GloVe distilled, + transfer set", transfer_set, True)):
            torch.manual_seed(seed)
            model = student()
            task = DistillationTask(model, teacher, temperature=2.0, alpha=0.5) if teach else model
            tk.Trainer(**trainer).fit(task, data, valid)
            rows.setdefault(name, []).append(accuracy(model))
            sizes[name] = sum(p.numel() for p in model.parameters())
            speeds[name] = speed(model)
            print(f"  {name}: {rows[name][-1]:.3f}", flush=True)

    teacher_mean = statistics.mean(rows["teacher: MiniLM-L6 fine-tuned"])
    print(f"\n{args.labelled} labelled posts per group, {args.seeds} seeds; 400 test posts\n")
    print("| model | accuracy (mean ± std) | % of teacher | parameters | × teacher size | posts/s |")
    print("|---|---|---|---|---|---|")
    teacher_size = sizes["teacher: MiniLM-L6 fine-tuned"]
    for name, scores in rows.items():
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"| {name} | {statistics.mean(scores):.3f} ± {spread:.3f} | "
              f"{100 * statistics.mean(scores) / teacher_mean:.1f}% | {sizes[name]:,} | "
              f"{sizes[name] / teacher_size:.3f} | {speeds[name]:.0f} |")


if __name__ == "__main__":
    main()
