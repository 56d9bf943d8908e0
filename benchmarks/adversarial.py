"""Adversarial fine-tuning (issue 13) against plain fine-tuning with the same backbone, budget, data and seeds: FGM,
PGD, FreeLB and SMART (``Trainer(adversarial=...)``, their default settings), and what each costs per step.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adversarial.py                      # both parts, 5 data seeds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adversarial.py --parts vision --seeds 3 --methods fgm,smart

The data, backbones and settings are those of ``benchmarks/few_shot_methods.py`` (EfficientNet-Lite0 on MNIST, 10
labels per class at 32 px; MiniLM-L6 on four groups of 20 Newsgroups, 8 per class, 128 tokens; validation on a
separate draw of the same size selects the epoch; the epochs and rates ``finetune`` picks). For each data seed the
plain run and every method start from the same model (head included) with ``Trainer(seed=s)``; test accuracy on the
held-out posts or digits, never used to choose. The cost is each method's seconds per optimiser step divided by the
plain run's, measured in the same process one after the other.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from few_shot_methods import TEXT, VISION, draw  # run from the repository root: benchmarks/ is on sys.path

METHODS = ("fgm", "pgd", "freelb", "smart")


def part(name: str, seeds: int, methods: list[str]) -> dict:
    import torch

    import transferkit as tk
    from transferkit.recipes.datasets import mnist, newsgroups
    from transferkit.trainer import auto

    torch.set_num_threads(2)
    cfg = VISION if name == "vision" else TEXT
    pool, test = mnist(500) if name == "vision" else newsgroups(100)
    rows = {k: [] for k in ("plain", *methods)}
    per_step = {k: [] for k in rows}
    for seed in range(seeds):
        train, val = draw(pool, cfg["shots"], seed)
        backbone = tk.load_backbone(cfg["spec"], **cfg["options"])
        epochs = auto.epochs(len(train[0]), cfg["batch_size"], backbone).value
        lr, head_lr = (c.value for c in auto.rates(backbone, frozen=False))
        torch.manual_seed(seed)
        start = tk.TransferModel(backbone, tk.heads.Classification(labels=sorted(set(train[1]))))
        for method in rows:
            model = copy.deepcopy(start)
            trainer = tk.Trainer(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=cfg["batch_size"], seed=seed,
                                 progress=False, loggers=(), adversarial=None if method == "plain" else method)
            t = time.perf_counter()
            history = trainer.fit(model, train, val)
            per_step[method].append((time.perf_counter() - t) / history[-1]["step"])
            rows[method].append(trainer.evaluate(model, test)["accuracy"])
        print(f"{name} seed {seed}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()) +
              f"  ({epochs} epochs, lr {lr:g}/{head_lr:g})", flush=True)
    cost = {k: sum(v) / sum(per_step["plain"]) for k, v in per_step.items()}
    return {"rows": rows, "seconds_per_step": per_step, "cost": cost, "epochs": epochs, "lr": lr, "head_lr": head_lr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="vision,text")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    from transferkit.trainer.seeds import Comparison

    out = {}
    for name in args.parts.split(","):
        figures = part(name, args.seeds, args.methods.split(","))
        out[name] = figures
        table = Comparison(metric="test accuracy", seeds=list(range(args.seeds)), scores=figures["rows"],
                           higher_is_better=True)
        print(f"\n{name}: {figures['epochs']} epochs, lr {figures['lr']:g}, head lr {figures['head_lr']:g}; "
              "seconds per step × plain: " + ", ".join(f"{k} {v:.2f}" for k, v in figures["cost"].items()))
        print(table.table() + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
