"""NER training time per epoch on WNUT-16: transferkit vs Hugging Face's Trainer, with and without length grouping.

    .venv/bin/python benchmarks/ner_speed.py                 # about 12 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/ner_speed.py --rounds 1      # about 4 minutes
    .venv/bin/python benchmarks/ner_speed.py --device cuda --rounds 5

The same data, model and update as ``ner_wnut16.py`` (its train split, all-MiniLM-L6-v2 with ``max_length``
64, batch 16, AdamW, linear decay, clipping at 1.0, learning rate 2e-4), one epoch per run, four systems:

* transferkit ``Trainer()`` and ``Trainer(group_by_length=True)``;
* transformers ``Trainer`` with its defaults and with its length grouping (``LengthGroupedSampler``:
  ``train_sampling_strategy="group_by_length"`` in transformers 5, ``group_by_length=True`` before).

Each batch is padded to its longest sentence in all four (``DataCollatorForTokenClassification`` pads
dynamically too), so the difference grouping makes is the padding it saves. The runs alternate,
``--rounds`` times each, in a rotating order, so a machine slowing down or speeding up affects all four alike;
the figure is the median seconds of one epoch's training (evaluation and model loading excluded: transferkit's
``history[0]["seconds"]``, HF's epoch-begin → epoch-end callback). Also printed: the padded positions per
epoch of each order (what the model computes over), from the same orders the trainers use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ner_wnut16 import MINILM, entity_types, hf_run, load_wnut16, split, tk_fit, tk_model  # noqa: E402

SYSTEMS = ["transferkit", "transferkit group_by_length", "HF Trainer", "HF Trainer group_by_length"]


def padded_positions(train: list, max_length: int, batch_size: int, seed: int) -> dict[str, int]:
    """Token positions per epoch (each batch padded to its longest) under transferkit's two orders."""
    from transferkit.tasks.protocol import example_lengths
    from transferkit.trainer.distributed import grouped_permutation, permutation

    model = tk_model(MINILM, entity_types(train), max_length, seed)
    task = model.head.task(model)
    lengths = example_lengths(task, task.examples([(s.words, s.tags) for s in train]))

    def positions(order: np.ndarray) -> int:
        return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
                   for i in range(0, len(order), batch_size))
    return {"shuffled": positions(permutation(len(lengths), seed, 1)),
            "grouped": positions(grouped_permutation(lengths, batch_size, seed, 1)),
            "tokens": int(lengths.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    parts = split(load_wnut16(), args.split_seed)
    train, types = parts["train"], entity_types(parts["train"])
    print(f"WNUT-16 train split: {len(train)} sentences; {args.rounds} round(s) of 4 one-epoch runs", flush=True)
    pad = padded_positions(train, args.max_length, args.batch_size, args.seed)
    print(f"positions per epoch: {pad['tokens']} real tokens; padded {pad['shuffled']} shuffled, "
          f"{pad['grouped']} grouped ({pad['grouped'] / pad['shuffled']:.2f} x)", flush=True)

    def run(system: str) -> float:
        group = system.endswith("group_by_length")
        if system.startswith("transferkit"):
            model = tk_model(MINILM, types, args.max_length, args.seed)
            _, seconds = tk_fit(model, train, None, args, 1, args.lr, group_by_length=group)
        else:
            seconds, _ = hf_run(train, train[:8], types_bio(types), args, 1, args.lr, group_by_length=group)
        return seconds[0]

    times: dict[str, list[float]] = {s: [] for s in SYSTEMS}
    for r in range(args.rounds):
        for system in SYSTEMS[r % 4:] + SYSTEMS[:r % 4]:
            times[system].append(run(system))
            print(f"  round {r + 1}: {system}: {times[system][-1]:.1f} s", flush=True)
    median = {s: statistics.median(t) for s, t in times.items()}
    base = median["HF Trainer"]
    print("\n| system | s / epoch (median) | runs | vs HF Trainer (defaults) |\n|---|---|---|---|")
    for s in SYSTEMS:
        print(f"| {s} | {median[s]:.1f} | {', '.join(f'{x:.1f}' for x in times[s])} | {median[s] / base:.2f} x |")
    print(f"\ntransferkit / HF, both defaults: {median['transferkit'] / base:.2f} x; both grouped: "
          f"{median['transferkit group_by_length'] / median['HF Trainer group_by_length']:.2f} x")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": times, "median": median, "positions": pad}, indent=1))


def types_bio(types: list[str]) -> list[str]:
    """The tag list transferkit's BIO head uses, in its order (HF is given the same label ids)."""
    import transferkit as tk

    return tk.heads.TokenClassification(types).labels


if __name__ == "__main__":
    main()
