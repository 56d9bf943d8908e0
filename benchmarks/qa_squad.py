"""Extractive QA: fine-tune transferkit's QuestionAnswering head on a SQuAD-format file, official EM/F1 on a dev file.

    HF_HUB_OFFLINE=1 python benchmarks/qa_squad.py --squad train-v1.1.json --dev dev-v1.1.json \
        --backbone hf:distilbert-base-uncased --max-train 20000 --epochs 2     # real data (hours on a CPU)
    HF_HUB_OFFLINE=1 python benchmarks/qa_squad.py            # no file: a SMOKE run on synthetic data (13 min measured
        # with --threads 1 on 2 cores shared with ~10 other jobs; far less on idle cores)
    HF_HUB_OFFLINE=1 python benchmarks/qa_squad.py --quick    # a smaller smoke run, ~1 min

No real QA set installs offline here (the issue's finding; none was found in the package lists either), so **without** ``--squad`` the script writes a small synthetic SQuAD v1.1 file of templated facts
(people, cities, years, jobs, pets; ``/tmp/transferkit-qa-smoke/``) and runs on it: it shows the pipeline
works end to end (windows, training, span decoding, the official metric), **not** how well transferkit does QA.
The metric itself is checked against the official ``evaluate-v1.1.py`` functions in ``tests/test_qa.py``.

Protocol: the epoch is chosen on validation F1 — a seeded 10 % of the ``--squad`` file's *articles* held out
(so no paragraph is in both) — and the ``--dev`` file is evaluated once at the end (without ``--dev``, the
held-out articles are the only evaluation and are reported as such). ``--max-train`` / ``--max-dev`` keep the
first questions of a seeded shuffle. Anchor in the same run: the sentence of the context that shares the most
words with the question, minus the question's words (a sliding-window style heuristic after Richardson et al.
2013 / Rajpurkar et al. 2016), scored by the same official EM/F1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transferkit as tk  # noqa: E402
from transferkit.data.squad import load_squad  # noqa: E402
from transferkit.tasks.qa import normalize_answer, squad_evaluate  # noqa: E402

MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"
SMOKE_DIR = Path("/tmp/transferkit-qa-smoke")


@dataclass
class Settings:
    backbone: str = MINILM
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 384
    stride: int = 128
    max_train: int | None = None
    max_dev: int | None = None
    smoke_articles: int = 50  # synthetic paragraphs written without --squad
    seed: int = 0

    @classmethod
    def quick_settings(cls, **kw) -> Settings:
        return cls(epochs=1, smoke_articles=40, **kw)


# --- a synthetic SQuAD v1.1 file for the smoke run --------------------------------------------------------------

NAMES = ["Ada Brook", "Omar Haddad", "Lena Vogt", "Ravi Menon", "Sofia Marquez", "Tom Okafor", "Mei Lin",
         "Jonas Berg", "Aisha Bello", "Pablo Ruiz", "Nora Quinn", "Ivan Petrov", "Hana Sato", "Leo Rossi"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quebec City", "Tromso", "Valparaiso", "Krakow", "Hobart", "Cusco",
          "Tbilisi", "Accra", "Bergen"]
JOBS = ["a ship engineer", "a violin maker", "a marine biologist", "a tax lawyer", "a glass blower",
        "a radio host", "a bridge inspector", "a pastry chef", "a botanist", "a locksmith"]
PETS = ["a grey parrot", "two cats", "an old sheepdog", "a tortoise", "a goldfish", "a ferret"]


def smoke_squad(path: Path, articles: int, seed: int) -> Path:
    """Write a synthetic SQuAD v1.1 file: each paragraph states facts about two people in shuffled order, with
    one question per fact (answer spans located by ``str.find``, so the offsets are exact)."""
    rng = np.random.default_rng(seed)
    data = []
    for a in range(articles):
        people = rng.choice(NAMES, size=2, replace=False)
        facts, qas = [], []
        for person in people:
            city, job, pet = rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS)
            year = int(rng.integers(1900, 2000))
            first = person.split()[0]
            facts += [(f"{person} was born in {city} in {year}.", [(f"Where was {person} born?", city),
                                                                    (f"In what year was {person} born?", str(year))]),
                      (f"Later {first} worked as {job}.", [(f"What did {first} work as?", job)]),
                      (f"At home {first} kept {pet}.", [(f"What did {first} keep at home?", pet)])]
        order = rng.permutation(len(facts))
        context = " ".join(facts[i][0] for i in order)
        for i in order:
            for question, answer in facts[i][1]:
                start = context.find(facts[i][0]) + facts[i][0].find(answer)
                qas.append({"id": f"a{a}q{len(qas)}", "question": question,
                            "answers": [{"text": answer, "answer_start": start}]})
        data.append({"title": f"synthetic {a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


# --- splits and the anchor ---------------------------------------------------------------------------------------


def read_split(path: str, seed: int, held_out: float = 0.1) -> tuple[dict, dict]:
    """The SQuAD file as (train, validation) SQuAD dicts, validation a seeded ``held_out`` of the articles."""
    with open(path, encoding="utf-8") as f:
        squad = json.load(f)
    articles = squad["data"]
    order = np.random.default_rng(seed).permutation(len(articles))
    n_val = max(1, round(held_out * len(articles)))
    pick = lambda idx: {"version": squad.get("version", "1.1"), "data": [articles[i] for i in idx]}  # noqa: E731
    return pick(sorted(order[n_val:])), pick(sorted(order[:n_val]))


def limit(examples: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(examples):
        return examples
    order = np.random.default_rng(seed).permutation(len(examples))[:n]
    return [examples[i] for i in sorted(order)]


def overlap_anchor(examples: list) -> dict[str, str]:
    """The context sentence sharing most (normalised) words with the question, minus the question's words."""
    predictions = {}
    for e in examples:
        asked = set(normalize_answer(e.question).split())
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", e.context) if s.strip()] or [e.context]
        best = max(sentences, key=lambda s: len(asked & set(normalize_answer(s).split())))
        rest = [w for w in best.split() if normalize_answer(w) not in asked]
        predictions[e.id] = " ".join(rest)
    return predictions


def run(settings: Settings, squad: str | None, dev: str | None, log=print) -> dict:
    smoke = squad is None
    if smoke:
        squad = str(smoke_squad(SMOKE_DIR / "train.json", settings.smoke_articles, settings.seed))
        dev = str(smoke_squad(SMOKE_DIR / "dev.json", max(10, settings.smoke_articles // 4), settings.seed + 1000))
        log(f"SMOKE RUN on synthetic data written to {SMOKE_DIR} (templated facts): NOT evidence of QA quality")
    train_dict, val_dict = read_split(squad, settings.seed)
    train = limit(load_squad(train_dict), settings.max_train, settings.seed)
    val = limit(load_squad(val_dict), settings.max_dev, settings.seed)
    report_set = limit(load_squad(dev), settings.max_dev, settings.seed) if dev else val
    report_name = f"dev ({Path(dev).name})" if dev else "held-out articles of --squad (also used for selection)"
    log(f"questions: train {len(train)}, validation {len(val)}, reported on {len(report_set)} ({report_name})")

    rows = []
    start = time.perf_counter()
    rows.append({"method": "anchor: best-overlap sentence minus question words",
                 **squad_evaluate(report_set, overlap_anchor(report_set)), "seconds": time.perf_counter() - start})
    import torch

    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    model = tk.TransferModel(tk.load_backbone(settings.backbone),
                             tk.heads.QuestionAnswering(max_length=settings.max_length, stride=settings.stride))
    trainer = tk.Trainer(epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                         seed=settings.seed, progress=False, metric="f1")
    history = trainer.fit(model.task(), train, val)
    best = max(history, key=lambda h: h["val_f1"])
    log(f"  {settings.backbone}: validation F1 by epoch {[round(h['val_f1'], 1) for h in history]}")
    answers = model.predict([{"question": e.question, "context": e.context} for e in report_set],
                            batch_size=settings.batch_size)
    figures = squad_evaluate(report_set, {e.id: a["answer"] for e, a in zip(report_set, answers)})
    rows.append({"method": f"transferkit QuestionAnswering, {settings.backbone}", **figures,
                 "seconds": time.perf_counter() - start, "chosen": {"epoch": best["epoch"], "val_f1": best["val_f1"]}})
    return {"smoke": smoke, "train_file": squad, "dev_file": dev, "reported_on": report_name,
            "sizes": {"train": len(train), "val": len(val), "reported": len(report_set)}, "rows": rows}


def table(result: dict) -> str:
    lines = ["| method | EM | F1 | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['exact_match']:.1f} | {r['f1']:.1f} | {r['seconds']:.0f} |"
              for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--squad", help="SQuAD-format training file (without it: a synthetic smoke run)")
    p.add_argument("--dev", help="SQuAD-format dev file, evaluated once at the end")
    p.add_argument("--backbone", default=MINILM, help="an hf: backbone with a fast tokenizer")
    p.add_argument("--quick", action="store_true", help="1 epoch (and a smaller synthetic file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-train", type=int, help="training questions kept (seeded)")
    p.add_argument("--max-dev", type=int, help="validation and dev questions kept (seeded)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.dev and not args.squad:
        p.error("--dev needs --squad (the training file)")
    settings = (Settings.quick_settings if args.quick else Settings)(backbone=args.backbone, seed=args.seed)
    for name in ("epochs", "lr", "max_length", "max_train", "max_dev"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.squad is None:  # the synthetic contexts are short: small windows are enough
        settings.max_length = args.max_length or 128
        settings.stride = 32
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = run(settings, args.squad, args.dev, log=lambda line: print(line, flush=True))
    title = "SMOKE RUN, synthetic data (not evidence)" if result["smoke"] else Path(args.squad).name
    print(f"\n### Extractive QA: {title}; reported on {result['sizes']['reported']} questions, "
          f"{result['reported_on']}\n")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": asdict(settings), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
