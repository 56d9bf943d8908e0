"""A small training run launched as a separate process by the trainer tests (kill/resume, DDP).

    python tests/scripts/train_run.py OUT --model bert|glove --asset PATH [--resume] [--slow S] [options]
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/scripts/train_run.py OUT ...

Writes OUT/final.safetensors (the trained weights) and OUT/history.json (rank 0 only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's data
torch.set_num_threads(1)

import transferkit as tk  # noqa: E402
from conftest import SENTENCES  # noqa: E402

TOPIC = {0: "animals", 1: "animals", 2: "animals", 3: "markets", 4: "markets", 5: "markets",
         6: "sport", 7: "sport", 8: "sport"}
PAIRS = [(s, TOPIC[i % 9]) for i, s in enumerate(SENTENCES)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", choices=["bert", "glove"], required=True)
    parser.add_argument("--asset", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--adversarial", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model == "bert":  # dropout in the backbone and the head: the RNG must resume exactly too
        backbone = tk.load_backbone(f"hf:{args.asset}")
        head = tk.heads.Classification(3, hidden=8, dropout=0.2)
    else:  # no dropout, no BatchNorm: one process and two compute the same function
        backbone = tk.load_backbone(f"glove:{args.asset}")
        head = tk.heads.Classification(3)
    model = tk.TransferModel(backbone, head)
    slow = [lambda trainer, state: time.sleep(args.slow)] if args.slow else []
    trainer = tk.Trainer(epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, lr=1e-3,
                         head_lr=1e-2, schedule="cosine", warmup=2, seed=3, output_dir=args.out, save_every=1,
                         loggers=(), progress=False, callbacks={"on_step_end": slow},
                         adversarial=args.adversarial)
    history = trainer.fit(model, PAIRS[:40], PAIRS[40:60], resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        from safetensors.torch import save_model

        save_model(model, str(Path(args.out) / "final.safetensors"))
        for record in history:
            record.pop("seconds")
        (Path(args.out) / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main()
