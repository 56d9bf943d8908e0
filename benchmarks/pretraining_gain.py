"""Does self-supervised pretraining help? Images, text and word vectors on real data, offline, one table.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pretraining_gain.py            # 3 seeds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pretraining_gain.py --quick    # 1 seed, shorter pretraining
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pretraining_gain.py --only images,text

Three parts, each also a script of its own with the details and more options:

* images (``pretraining_gain_images.py``): rotation, masked-patch grey level and a denoising autoencoder
  pretrained on 1,300 unlabelled scikit-learn digits vs random init ("scratch"), fine-tuned with 1, 5 and
  10 labels per class, accuracy on 497 held-out digits. The recipe chosen on a validation split of the
  pool: ``timm:test_resnet`` fine-tuned on its stage-3 features.
* text (``pretraining_gain_text.py``): masked-LM pretraining from scratch of a small BERT on 20 Newsgroups
  texts vs random weights, and continued (domain-adaptive) masked-LM pretraining of MiniLM-L6 vs MiniLM as
  shipped, each fine-tuned on 8 labels per class of four newsgroups.
* word vectors (``word_vectors_eval.py``): word2vec, fastText and our GloVe trained on the same 20 Newsgroups
  texts, scored on gensim's analogy (``questions-words.txt``) and similarity (``wordsim353.tsv``) files, with
  the pretrained GloVe 6B vectors as the reference.

It prints each part's table, then a summary of the images and text comparisons: the baseline, the
pretrained result and the gain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = ("images", "text", "words")


def images(quick: bool, log) -> tuple[str, list[tuple]]:
    import pretraining_gain_images as bench
    from transferkit.recipes.vision_gain import ROTATION_BACKBONE, ROTATION_STAGE

    settings = bench.Settings.quick() if quick else bench.Settings()
    settings = replace(settings, backbone=ROTATION_BACKBONE, stage=ROTATION_STAGE)
    rows = bench.run(settings, log=log)
    scratch = {r["shots"]: r["scores"] for r in rows if r["init"] == "scratch"}
    summary = [(f"digits, {r['shots']} label{'s' if r['shots'] > 1 else ''}/class", r["init"], "accuracy %",
                100 * statistics.mean(scratch[r["shots"]]), 100 * statistics.mean(r["scores"]))
               for r in rows if r["init"] != "scratch"]
    return bench.table(rows, settings), summary


def text(quick: bool, log) -> tuple[str, list[tuple]]:
    import pretraining_gain_text as bench

    settings = bench.Settings.quick() if quick else bench.Settings()
    rows = bench.run(settings, log=log)
    (_, random_init, _, _), (_, mlm, _, _), (_, shipped, _, _), (_, adapted, _, _) = rows
    setting = f"20 Newsgroups, {settings.shots} labels/class"
    summary = [(setting, "small BERT: MLM from scratch vs random init", "accuracy", random_init, mlm),
               (setting, "MiniLM: continued MLM vs as shipped", "accuracy", shipped, adapted)]
    return bench.table(rows, settings), summary


def words(quick: bool, log) -> tuple[str, list[tuple]]:
    """Word vectors have no 'before': their table compares them with the pretrained GloVe 6B instead."""
    import word_vectors_eval as bench

    return bench.table(bench.run(quick=quick)), []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed and shorter pretraining in every part")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {PARTS}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parts = [p.strip() for p in args.only.split(",")]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; parts are {PARTS}")
    run = {"images": images, "text": text, "words": words}
    tables, summary, seconds = {}, [], {}
    for part in parts:
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        tables[part], rows = run[part](args.quick, lambda line: print(f"   {line}", flush=True))
        summary += rows
        seconds[part] = time.perf_counter() - start
    for part in parts:
        print(f"\n### {part} ({seconds[part]:.0f} s)\n\n{tables[part]}")
    print("\n### Summary: baseline vs pretrained\n")
    print("| data | comparison | metric | baseline | pretrained | gain |\n|---|---|---|---:|---:|---:|")
    for data, what, metric, base, pre in summary:
        f = ".1f" if metric.endswith("%") else ".3f"
        print(f"| {data} | {what} | {metric} | {base:{f}} | {pre:{f}} | {pre - base:+{f}} |")
    print(f"\ntotal {sum(seconds.values()):.0f} s ({'quick' if args.quick else 'full'} settings, "
          f"{args.threads} torch thread(s))")


if __name__ == "__main__":
    main()
