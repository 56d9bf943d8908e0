"""The new user's sequence with no tuning flags, before and after the small-data defaults (issue 16).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/small_data_defaults.py              # after only, 3 seeds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/small_data_defaults.py --before     # also the old defaults
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/small_data_defaults.py --parts text --seeds 1

Every run is the ``transferkit`` command in a fresh process, as a new user types it, and is scored with
``transferkit evaluate`` on held-out data no setting was chosen on.

* **digits**: scikit-learn's 1,797 8×8 digits written as 32×32 PNGs (upscaled, as in the issue): the first 1,397
  are the unlabelled pool, 5 per class drawn from it (per seed) the labelled folder, the last 400 the test set.
  ``transferkit pretrain rotation --backbone timm:resnet18 --option weights=none --data unlabelled/ --output rot``
  once, then ``transferkit finetune --backbone rot --data labelled/ --output m`` and the same from
  ``timm:resnet18 --option weights=none`` (scratch).
* **text**: the demo's few-label setting, four groups of 20 Newsgroups, 8 labelled posts per class (per seed,
  the demo's draw), its 400 test posts: ``transferkit finetune --backbone hf:sentence-transformers/all-MiniLM-L6-v2
  --data train.csv --output m`` against TF-IDF + logistic regression on the same 32 posts.

``--before`` also runs the defaults the commands had before issue 16, spelled out as flags: ``pretrain --epochs 1
--lr 5e-4 --batch-size 16`` at the network's own 224-pixel input, ``finetune --epochs 3 --lr 5e-5 --head-lr 1e-3``
(the old pretraining alone takes about a quarter of an hour on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_PRETRAIN = ["--epochs", "1", "--lr", "5e-4", "--batch-size", "16", "--option", "image_size=224"]
OLD_FINETUNE = ["--epochs", "3", "--lr", "5e-5", "--head-lr", "1e-3"]
MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"


def transferkit(*args: str, log: Path) -> float:
    """Run ``transferkit ARGS`` in a fresh process (its output to ``log``); returns the seconds it took."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "transferkit", *args, "--no-progress"], stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"transferkit {' '.join(args)} failed; see {log}")
    return time.perf_counter() - start


def accuracy(model: Path, data: Path) -> float:
    done = subprocess.run([sys.executable, "-m", "transferkit", "evaluate", "--model", str(model), "--data",
                           str(data), "--json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["accuracy"]


def write_digits(root: Path, seed: int) -> tuple[Path, Path, Path]:
    """unlabelled/ (1,397 pool PNGs), labelled-SEED/ (5 per class from the pool, class folders), test/ (400)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from transferkit.recipes.fewshot import few_shot

    data = load_digits()
    pool, test = 1397, slice(1397, None)

    def save(path: Path, i: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray((data.images[i] * (255 / 16)).astype(np.uint8))
        grey.resize((32, 32), Image.BILINEAR).save(path)

    unlabelled, labelled, held = root / "unlabelled", root / f"labelled-{seed}", root / "test"
    if not unlabelled.exists():
        for i in range(pool):
            save(unlabelled / f"{i:04d}.png", i)
        for i in range(*test.indices(len(data.images))):
            save(held / str(data.target[i]) / f"{i:04d}.png", i)
    for i in few_shot([int(y) for y in data.target[:pool]], 5, seed):
        save(labelled / str(data.target[i]) / f"{i:04d}.png", i)
    return unlabelled, labelled, held


def digits(root: Path, seeds: int, before: bool) -> dict:
    out: dict = {}
    for variant in (["after", "before"] if before else ["after"]):
        old = variant == "before"
        rot = root / f"rot-{variant}"
        unlabelled, _, _ = write_digits(root, 0)
        pretrain_s = transferkit("pretrain", "rotation", "--backbone", "timm:resnet18", "--option", "weights=none",
                                 "--data", str(unlabelled), "--output", str(rot), "--overwrite",
                                 *(OLD_PRETRAIN if old else []), log=root / f"pretrain-{variant}.log")
        rows = {"rotation": [], "scratch": [], "rotation_s": [], "scratch_s": []}
        for seed in range(seeds):
            _, labelled, test = write_digits(root, seed)
            for name, spec in (("rotation", [str(rot)]),
                               ("scratch", ["timm:resnet18", "--option", "weights=none"] +
                                (["--option", "image_size=224"] if old else []))):
                model = root / f"{name}-{variant}-{seed}"
                seconds = transferkit("finetune", "--backbone", *spec, "--data", str(labelled), "--output",
                                      str(model), "--overwrite", "--seed", str(seed), *(OLD_FINETUNE if old else []),
                                      log=root / f"{model.name}.log")
                rows[name].append(accuracy(model, test))
                rows[f"{name}_s"].append(seconds)
                print(f"digits {variant} seed {seed} {name}: {rows[name][-1]:.3f} ({seconds:.0f} s)", flush=True)
        out[variant] = {**rows, "pretrain_s": pretrain_s}
    return out


def text(root: Path, seeds: int, before: bool) -> dict:
    from transferkit.recipes.datasets import newsgroups
    from transferkit.recipes.fewshot import few_shot, subset, tfidf_logistic_regression

    pool, test = newsgroups(100)

    def write(path: Path, split) -> Path:
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *zip(*split)])
        return path

    test_csv = write(root / "test.csv", test)
    out: dict = {"tfidf": []}
    for variant in (["after", "before"] if before else ["after"]):
        out[variant] = {"minilm": [], "minilm_s": []}
    for seed in range(seeds):
        train = subset(pool, few_shot(pool[1], 8, seed))  # the demo's draw
        train_csv = write(root / f"train-{seed}.csv", train)
        out["tfidf"].append(tfidf_logistic_regression(train, test))
        for variant in out:
            if variant == "tfidf":
                continue
            model = root / f"minilm-{variant}-{seed}"
            seconds = transferkit("finetune", "--backbone", MINILM, "--data", str(train_csv), "--output", str(model),
                                  "--overwrite", "--seed", str(seed), *(OLD_FINETUNE if variant == "before" else []),
                                  log=root / f"{model.name}.log")
            out[variant]["minilm"].append(accuracy(model, test_csv))
            out[variant]["minilm_s"].append(seconds)
            print(f"text {variant} seed {seed}: MiniLM {out[variant]['minilm'][-1]:.3f} ({seconds:.0f} s), "
                  f"TF-IDF {out['tfidf'][-1]:.3f}", flush=True)
    return out


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(result: dict) -> str:
    lines = ["| setting | method | " + " | ".join(v for v in ("before", "after") if v in _variants(result)) + " |",
             "|---|---|" + "---|" * len(_variants(result))]
    if "digits" in result:
        d = result["digits"]
        for name in ("rotation", "scratch"):
            lines.append(f"| digits, 5 labels/class | resnet18 {name} | " +
                         " | ".join(summary(d[v][name]) for v in _variants(result) if v in d) + " |")
        lines.append("| digits, 5 labels/class | rotation − scratch (points) | " + " | ".join(
            f"{100 * (statistics.mean(d[v]['rotation']) - statistics.mean(d[v]['scratch'])):+.1f}"
            for v in _variants(result) if v in d) + " |")
    if "text" in result:
        t = result["text"]
        lines.append("| 20 Newsgroups, 8 labels/class | MiniLM fine-tuned | " +
                     " | ".join(summary(t[v]["minilm"]) for v in _variants(result) if v in t) + " |")
        lines.append("| 20 Newsgroups, 8 labels/class | TF-IDF + logistic regression | " +
                     " | ".join(summary(t["tfidf"]) for v in _variants(result) if v in t) + " |")
    return "\n".join(lines)


def _variants(result: dict) -> list[str]:
    return [v for v in ("before", "after") if any(v in part for part in result.values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="digits,text", help="digits, text or both (comma-separated)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="also run the old defaults (slow)")
    parser.add_argument("--workdir", help="keep the data, models and logs here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = {}
        for part in args.parts.split(","):
            (root / part).mkdir(exist_ok=True)
            result[part] = {"digits": digits, "text": text}[part](root / part, args.seeds, args.before)
        print(table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
