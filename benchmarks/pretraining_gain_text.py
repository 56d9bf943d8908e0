"""Does self-supervised text pretraining help few-shot classification? Offline, a few minutes on 2 CPU cores.

    HF_HUB_OFFLINE=1 python benchmarks/pretraining_gain_text.py            # 3 seeds, ~8 min on a busy 2-core machine
    HF_HUB_OFFLINE=1 python benchmarks/pretraining_gain_text.py --quick    # 1 seed, smaller, ~2 min

Data: four groups of 20 Newsgroups (the demo's: comp.graphics, rec.sport.hockey, sci.med,
talk.politics.mideast) from the installed Orange text add-on. The *unlabelled* corpus is the texts of the
training split; a few labelled documents per class (drawn per seed) fine-tune; the held-out test documents
come from the test split.

(a) From scratch: a WordPiece tokenizer trained on the corpus, a small BERT (hidden 128, 2 layers), masked-LM
    pretraining on the corpus vs the same BERT left at its random initialisation; each then fine-tuned.
(b) Domain-adaptive: MiniLM-L6 (all-MiniLM-L6-v2, installed package) after continued masked-LM pretraining on
    the corpus (Gururangan et al. 2020, "Don't Stop Pretraining", arXiv:2004.10964) vs MiniLM as shipped.

Pretraining runs once (seed 0); each seed then draws its own few-shot set and head initialisation. Seconds
are per row: pretraining (once) plus the fine-tuning and evaluation of all seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transferkit as tk  # noqa: E402
from transferkit.recipes.datasets import newsgroups  # noqa: E402
from transferkit.recipes.fewshot import few_shot, subset  # noqa: E402
from transferkit.tasks.text import MaskedLM  # noqa: E402
from transferkit.tokenization import new_text_backbone, train_tokenizer  # noqa: E402


@dataclass
class Settings:
    seeds: int = 3
    shots: int = 8  # labelled documents per class
    test_per_class: int = 100
    corpus_docs: int | None = None  # unlabelled documents used (None: all ~2,200 of the 4 groups)
    max_length: int = 64  # tokens per document, pretraining and fine-tuning
    scratch_epochs: int = 6  # masked-LM epochs over the corpus for the small BERT
    minilm_docs: int = 800  # documents of continued pretraining for MiniLM (one pass)
    vocab_size: int = 4000

    @classmethod
    def quick(cls) -> "Settings":
        return cls(seeds=1, test_per_class=50, corpus_docs=1000, scratch_epochs=2, minilm_docs=200)


def fine_tune(backbone_dir: str | None, make, train, test, *, epochs, lr, head_lr, seed) -> float:
    torch.manual_seed(seed)
    backbone = tk.load_backbone(backbone_dir) if backbone_dir else make()
    model = tk.TransferModel(backbone, tk.heads.Classification(labels=sorted(set(train[1]))))
    trainer = tk.Trainer(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=8, seed=seed, progress=False)
    trainer.fit(model, train)
    return trainer.evaluate(model, test)["accuracy"]


def row(name: str, pretrain_seconds: float, score, settings: Settings, rows: list, log=print) -> None:
    start = time.perf_counter()
    scores = [score(seed) for seed in range(settings.seeds)]
    seconds = pretrain_seconds + time.perf_counter() - start
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    rows.append((name, statistics.mean(scores), std, seconds))
    log(f"  {name:<48} {rows[-1][1]:.3f} ± {std:.3f}  ({seconds:.0f} s)")


def run(settings: Settings, log=print) -> list[tuple[str, float, float, float]]:
    """Rows of (backbone, mean accuracy, std over seeds, seconds)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    pool, test = newsgroups(settings.test_per_class)
    corpus_texts = pool[0][: settings.corpus_docs]
    work = Path(tempfile.mkdtemp(prefix="tk-pretrain-text-"))
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(" ".join(t.split()[:200]) for t in corpus_texts) + "\n", encoding="utf-8")
    minilm_corpus = work / "minilm_corpus.txt"
    minilm_corpus.write_text("\n".join(" ".join(t.split()[:200]) for t in corpus_texts[: settings.minilm_docs])
                             + "\n", encoding="utf-8")
    log(f"corpus: {len(corpus_texts)} unlabelled documents; {settings.shots} labels per class; "
        f"{len(test[0])} test documents; {settings.seeds} seed(s)")

    def sample(seed):
        return subset(pool, few_shot(pool[1], settings.shots, seed))

    rows: list = []
    # (a) small BERT from scratch --------------------------------------------------------------------------
    start = time.perf_counter()
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=settings.vocab_size)

    def small_bert():
        return new_text_backbone(tok, arch="bert", hidden=128, layers=2, heads=2, max_length=settings.max_length,
                                 seed=0)
    tok_seconds = time.perf_counter() - start
    start = time.perf_counter()
    task = MaskedLM(small_bert())
    history = tk.Trainer(epochs=settings.scratch_epochs, lr=1e-3, batch_size=32, progress=False).fit(task, corpus)
    task.backbone.save_pretrained(work / "scratch-mlm")
    mlm_seconds = time.perf_counter() - start
    log(f"  small BERT masked-LM loss {history[0]['train_loss']:.2f} -> {history[-1]['train_loss']:.2f} over "
        f"{settings.scratch_epochs} epochs ({mlm_seconds:.0f} s)")
    scratch = dict(epochs=15, lr=1e-3, head_lr=3e-3)
    row("small BERT, random init", tok_seconds,
        lambda s: fine_tune(None, small_bert, sample(s), test, seed=s, **scratch), settings, rows, log)
    row("small BERT, MLM-pretrained on the corpus", tok_seconds + mlm_seconds,
        lambda s: fine_tune(str(work / "scratch-mlm"), None, sample(s), test, seed=s, **scratch), settings, rows,
        log)

    # (b) MiniLM: continued (domain-adaptive) pretraining -----------------------------------------------------
    spec = "hf:sentence-transformers/all-MiniLM-L6-v2"

    def minilm():
        return tk.load_backbone(spec, max_length=settings.max_length)
    start = time.perf_counter()
    task = MaskedLM(minilm())
    history = tk.Trainer(epochs=1, lr=5e-5, batch_size=16, progress=False).fit(task, minilm_corpus)
    task.backbone.save_pretrained(work / "minilm-dapt")
    dapt_seconds = time.perf_counter() - start
    log(f"  MiniLM continued masked-LM: loss {history[0]['train_loss']:.2f} on {settings.minilm_docs} documents "
        f"({dapt_seconds:.0f} s)")
    ft = dict(epochs=5, lr=1e-4, head_lr=3e-3)  # the demo's MiniLM fine-tuning settings
    row("MiniLM-L6 as shipped", 0.0, lambda s: fine_tune(None, minilm, sample(s), test, seed=s, **ft),
        settings, rows, log)
    row("MiniLM-L6 + continued MLM on the corpus", dapt_seconds,
        lambda s: fine_tune(str(work / "minilm-dapt"), None, sample(s), test, seed=s, **ft), settings, rows, log)
    return rows


def table(rows: list, settings: Settings) -> str:
    lines = [f"| backbone | accuracy ({settings.shots} labels/class, mean ± std, {settings.seeds} seeds) | seconds |",
             "|---|---|---|"]
    lines += [f"| {name} | {mean:.3f} ± {std:.3f} | {seconds:.0f} |" for name, mean, std, seconds in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, less pretraining, smaller test set")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(settings, log=lambda line: print(line, flush=True))
    print()
    print(table(rows, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
