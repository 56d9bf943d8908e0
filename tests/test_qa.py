"""Extractive QA: EM/F1 identical to the official SQuAD v1.1 script, the SQuAD/JSONL/dict readers with named
errors, stride windows labelled and decoded back to characters, and training on the tiny BERT (loss falls,
an answer in a long context's second window found, save → load identical predictions)."""

from __future__ import annotations

import json
import random
import re
import string
import sys
from collections import Counter

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.data.squad import load_squad
from transferkit.errors import ConfigError, DataError, InputError, LabelError
from transferkit.heads import head_from_config
from transferkit.heads.qa import QuestionAnswering
from transferkit.tasks.qa import (
    SquadScores,
    answer_positions,
    decode_answers,
    encode_windows,
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_evaluate,
)


# --- a copy of the official evaluate-v1.1.py (https://rajpurkar.github.io/SQuAD-explorer/), unchanged -----
def official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return (official_normalize_answer(prediction) == official_normalize_answer(ground_truth))


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    message = 'Unanswered question ' + qa['id'] + ' will receive score 0.'
                    print(message, file=sys.stderr)
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))  # noqa: C417 (verbatim)
                prediction = predictions[qa['id']]
                exact_match += official_metric_max_over_ground_truths(
                    official_exact_match_score, prediction, ground_truths)
                f1 += official_metric_max_over_ground_truths(
                    official_f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}
# --- end of the copy ---------------------------------------------------------------------------------------

# Tricky cases: case, punctuation inside and around words, articles (and words that contain them: "another",
# "theatre"), extra white space, several gold answers, partial overlaps, repeated tokens, a prediction that
# normalises to nothing, a missing prediction, non-ASCII punctuation (not removed by the official script).
CONTEXT = ("The Normans (Norman: Nourmands; French: Normands) gave their name to Normandy, a region in France. "
           "Another theatre, the Théâtre-Français, opened in 1680 — a year of the the reforms.  It cost $1,000.")
CASES = [  # (gold answers, prediction)
    (["Normandy"], "normandy"),
    (["The Normans"], "Normans"),
    (["a region in France"], "region in France."),
    (["Normandy", "a region in France"], "France"),
    (["Another theatre"], "theatre"),
    (["the Théâtre-Français"], "Théâtre Français"),
    (["1680"], "in 1680 —"),
    (["the the reforms"], "reforms reforms"),
    (["$1,000"], "1000"),
    (["It cost $1,000."], "it   cost\t$1,000"),
    (["gave their name to Normandy"], "their name"),
    (["Norman: Nourmands"], "the"),
    (["French: Normands", "Normands"], "French Normands gave"),
    (["a year"], None),
]


def squad_fixture():
    qas = []
    for i, (golds, _) in enumerate(CASES):
        qas.append({"id": f"q{i}", "question": "what", "answers": [
            {"text": g, "answer_start": CONTEXT.index(g)} for g in golds]})
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


def test_metrics_identical_to_official_squad_v11():
    data = squad_fixture()
    predictions = {f"q{i}": p for i, (_, p) in enumerate(CASES) if p is not None}
    for golds, prediction in CASES:
        prediction = prediction or ""
        assert normalize_answer(prediction) == official_normalize_answer(prediction)
        for gold in golds:
            assert f1_score(prediction, gold) == official_f1_score(prediction, gold)
            assert exact_match_score(prediction, gold) == official_exact_match_score(prediction, gold)
    ours = squad_evaluate(data, predictions)
    official = official_evaluate(data["data"], predictions)
    assert ours == official  # identical floats, ×100 as the official script reports
    assert 0 < ours["exact_match"] < ours["f1"] < 100
    streamed = SquadScores()  # streaming, question by question, as validation does
    for golds, prediction in CASES:
        streamed.update(prediction, golds)
    assert streamed.compute() == official


def test_unanswerable_questions_score_as_squad_v2():
    scores = SquadScores()
    scores.update("", [])
    scores.update("the", [])  # normalises to nothing: right, as in evaluate-v2.0.py
    scores.update("cat", [])
    scores.update("", ["cat"])
    assert scores.compute() == {"exact_match": 50.0, "f1": 50.0}


def test_reader_forms_agree(tmp_path):
    data = squad_fixture()
    (tmp_path / "dev.json").write_text(json.dumps(data), encoding="utf-8")
    rows = [{**qa, "context": CONTEXT} for qa in data["data"][0]["paragraphs"][0]["qas"]]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    hf_style = [{**r, "answers": {"text": [a["text"] for a in r["answers"]],
                                  "answer_start": [a["answer_start"] for a in r["answers"]]}} for r in rows]
    columns = {k: [r[k] for r in hf_style] for k in ("id", "question", "context", "answers")}
    forms = [tmp_path / "dev.json", str(tmp_path / "dev.jsonl"), data, rows, hf_style, columns]
    read = [[(e.id, e.question, e.context, e.answers) for e in load_squad(f)] for f in forms]
    assert all(r == read[0] for r in read) and len(read[0]) == len(CASES)
    assert load_squad(tmp_path / "dev.json")[1].origin == f"{tmp_path / 'dev.json'} data[0].paragraphs[0].qas[1]"
    assert load_squad(tmp_path / "dev.jsonl")[1].origin == f"{tmp_path / 'dev.jsonl'} line 2"


def test_answer_not_at_its_offset_is_named(tmp_path):
    data = squad_fixture()
    data["data"][0]["paragraphs"][0]["qas"][2]["answers"][0]["answer_start"] += 1
    (tmp_path / "dev.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LabelError, match=r"question 'q2' \(.*dev.json data\[0\].paragraphs\[0\].qas\[2\]\): answer "
                                         r"text not at its answer_start.*'a region in France' at"):
        load_squad(tmp_path / "dev.json")
    line = {"question": "where", "context": "the cat sat", "answers": [{"text": "cat", "answer_start": 0}]}
    (tmp_path / "x.jsonl").write_text(json.dumps(line) + "\n\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"x.jsonl line 1: answer text not at its answer_start.*reads 'the'"):
        load_squad(tmp_path / "x.jsonl")
    line["answers"][0]["answer_start"] = 4
    with pytest.raises(LabelError, match="item 0: answer 0 .* answer_start '4'"):
        load_squad([{**line, "answers": [{"text": "cat", "answer_start": "4"}]}])
    with pytest.raises(DataError, match="item 1: 'context' is missing"):
        load_squad([line, {"question": "q"}])
    with pytest.raises(DataError, match="ids must be unique"):
        load_squad([{**line, "id": "a", "answers": []}, {**line, "id": "a", "answers": []}])
    with pytest.raises(LabelError, match="is_impossible but has 1 answer"):
        load_squad([{**line, "answers": [{"text": "cat", "answer_start": 4}], "is_impossible": True}])


# --- the tiny BERT: its vocabulary is the test sentences' words --------------------------------------------
TARGETS = ["cat", "dog", "goal", "stocks", "team", "market"]
FILLER = ["sat", "on", "mat", "log", "played", "fell", "as", "closed", "rallied", "rose", "sold", "today",
          "scored", "late", "won", "match", "in", "final", "minute", "and"]


def question(rng: random.Random, n_words: int, answerable: bool = True, at: int | None = None) -> dict:
    """A question word from TARGETS; the context holds it once (after "the"), among filler words."""
    target = rng.choice(TARGETS)
    words = [rng.choice(FILLER) for _ in range(n_words)]
    if answerable:
        at = rng.randrange(n_words) if at is None else at
        words[at:at] = ["the", target]
    context = " ".join(words)
    answers = [{"text": target, "answer_start": context.index(f"the {target}") + 4}] if answerable else []
    return {"question": target, "context": context, "answers": answers}


@pytest.fixture(scope="module")
def bert(assets):
    return f"hf:{assets['bert']}"


def test_stride_windows_label_and_map_back(bert):
    model = tk.TransferModel(tk.load_backbone(bert), QuestionAnswering(stride=6, max_length=20))
    context = "the cat sat on the mat " * 3 + "and the dog scored a late goal in the final minute"
    start = context.index("late goal")
    example = load_squad([{"id": "long", "question": "goal", "context": context,
                           "answers": [{"text": "late goal", "answer_start": start}]}])
    windows = encode_windows(model, ["goal"], [context], ["long"])
    starts, ends = answer_positions(example, windows)
    assert len(starts) >= 3  # a long context: several windows
    assert starts[0] == ends[0] == 0  # first window: the answer is outside, so [CLS]
    inside = (starts > 0).nonzero().flatten().tolist()
    assert inside and inside[0] >= 1
    for w in inside:  # the tokens labelled give back the answer's characters
        offsets = windows["offsets"][w]
        assert (int(offsets[starts[w], 0]), int(offsets[ends[w], 1])) == (start, start + len("late goal"))
    # Oracle logits peaked at the labels of the last window holding it: decoding finds it across windows.
    w = inside[-1]
    logits = torch.zeros(*windows["offsets"].shape[:2], 2)
    logits[w, starts[w], 0] = logits[w, ends[w], 1] = 10.0
    answer = decode_answers(model.head, logits, windows, [context])[0]
    assert (answer["answer"], answer["start"], answer["end"]) == ("late goal", start, start + 9)
    assert 0.9 < answer["score"] <= 1
    # A higher score outside the context (on the question, on padding) is never chosen; nor a too-long span.
    logits[0, 1, 0] = logits[0, 1, 1] = 50.0
    assert decode_answers(model.head, logits, windows, [context])[0]["answer"] == "late goal"
    short = QuestionAnswering(stride=6, max_length=20, max_answer_length=1)
    short.build(32)
    assert decode_answers(short, logits, windows, [context])[0]["answer"] in ("late", "goal")


def test_fit_finds_answer_in_second_window_and_save_load(bert, tmp_path):
    torch.manual_seed(0)
    rng = random.Random(0)
    model = tk.TransferModel(tk.load_backbone(bert), QuestionAnswering(stride=8, max_length=32))
    train = [question(rng, rng.randrange(4, 40)) for _ in range(120)]
    val = [question(rng, rng.randrange(4, 40)) for _ in range(30)]
    before = tk.Trainer(progress=False).evaluate(model.task(), val)
    history = tk.Trainer(epochs=3, lr=3e-3, head_lr=0.05, batch_size=8, progress=False).fit(model.task(), train, val)
    assert history[-1]["val_loss"] < 0.1 * before["loss"] and before["f1"] < 50
    assert history[-1]["val_f1"] > 80 and history[-1]["val_exact_match"] <= history[-1]["val_f1"]
    # A context of 2 windows whose answer lies in the second only.
    words = [FILLER[i % len(FILLER)] for i in range(44)]
    words[30:30] = ["the", "market"]
    context = " ".join(words)
    windows = encode_windows(model, ["market"], [context], ["item 0"])
    start = context.index("market")
    assert len(windows["window_of"]) == 2 and int(windows["offsets"][0].max()) < start
    found = model.predict({"question": "market", "context": context})
    assert (found["answer"], found["start"], found["end"]) == ("market", start, start + 6)
    questions = [{"question": q["question"], "context": q["context"]} for q in val[:6]] + [
        {"question": "market", "context": context}]
    answers = model.predict(questions)
    assert len(answers) == 7 and all(q["context"][a["start"]:a["end"]] == a["answer"]
                                     for q, a in zip(questions, answers))
    model.save_pretrained(tmp_path / "qa")
    loaded = tk.TransferModel.from_pretrained(tmp_path / "qa")
    assert loaded.head.config == model.head.config and loaded.head.head_type == "qa"
    assert loaded.predict(questions) == answers
    assert tk.Trainer(progress=False).evaluate(loaded.task(), val)["f1"] == history[-1]["val_f1"]


def test_unanswerable_refused_or_supported(bert):
    rng = random.Random(1)
    data = [question(rng, 6) for _ in range(6)] + [question(rng, 6, answerable=False) for _ in range(2)]
    backbone = tk.load_backbone(bert)
    with pytest.raises(LabelError, match=r"2 question\(s\) have no answer: item 6, item 7.*allow_unanswerable=True"):
        tk.TransferModel(backbone, QuestionAnswering(stride=4)).task().examples(data)
    torch.manual_seed(0)
    model = tk.TransferModel(backbone, QuestionAnswering(stride=4, allow_unanswerable=True))
    task = model.task()
    batch = task.collate(task.examples(data))
    assert batch["start_positions"][-2:].tolist() == [0, 0] and bool((batch["start_positions"][:6] > 0).all())
    logits = torch.zeros(*batch["offsets"].shape[:2], 2)
    logits[:, 0, :] = 5.0  # the no-answer score wins everywhere
    answers = decode_answers(model.head, logits, batch, [e.context for e in batch["examples"]])
    assert all(a["answer"] == "" and a["start"] == a["end"] == 0 for a in answers)
    metrics = task.metrics()
    metrics.update(batch, {"loss": torch.tensor(1.0), "logits": logits, "num_items": len(logits)})
    assert metrics.compute()["exact_match"] == 25.0  # the two unanswerable of eight are right
    history = tk.Trainer(epochs=3, lr=3e-3, head_lr=0.05, batch_size=4, progress=False).fit(task, data, data)
    assert all(np.isfinite(h["val_f1"]) for h in history)


def test_bad_inputs_are_named(bert):
    vectors = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    words = from_vectors(["the", "cat", "sat", "mat"], vectors, source="glove", name="tiny")
    with pytest.raises(ConfigError, match="needs a Hugging Face backbone"):
        tk.TransferModel(words, QuestionAnswering()).task()
    model = tk.TransferModel(tk.load_backbone(bert), QuestionAnswering(stride=8, max_length=16))
    with pytest.raises(InputError, match="item 1: each question is a dict"):
        model.predict([{"question": "cat", "context": "the cat"}, {"question": "cat"}])
    with pytest.raises(InputError, match="not a bare string"):
        model.predict("the cat")
    with pytest.raises(InputError, match=r"too long for a 16-token window: item 0 \(13 tokens\)"):
        model.predict({"question": "the cat sat on the mat " * 2 + "and", "context": "the cat"})
    with pytest.raises(ConfigError, match="stride=8 must be below .* item 0 leaves 7"):
        model.predict({"question": "the cat sat on the mat", "context": "the cat"})
    with pytest.raises(ConfigError, match="longer than the backbone's 64 tokens"):
        tk.TransferModel(tk.load_backbone(bert), QuestionAnswering(max_length=128)).predict(
            {"question": "cat", "context": "the cat"})
    with pytest.raises(ConfigError, match="max_answer_length"):
        QuestionAnswering(max_answer_length=0)
    with pytest.raises(InputError, match="use predict"):
        model.predict_proba([{"question": "cat", "context": "the cat"}])


def test_config_round_trip():
    head = QuestionAnswering(max_answer_length=12, stride=32, max_length=256, allow_unanswerable=True,
                             null_threshold=-1.5)
    again = head_from_config(head.config)
    assert again.config == head.config and isinstance(again, QuestionAnswering)
    again.build(32)
    assert again.layers.out_features == 2
    assert again(torch.zeros(3, 7, 32)).shape == (3, 7, 2)


def test_cli_finetune_predict_qa(bert, tmp_path, capsys):
    import json

    from transferkit.cli import main

    rng = random.Random(2)
    rows = [question(rng, rng.randrange(4, 10)) for _ in range(40)]
    with open(tmp_path / "train.jsonl", "w") as f:
        for i, q in enumerate(rows):
            f.write(json.dumps({"id": f"q{i}", **q}) + "\n")
    out = tmp_path / "m"
    assert main(["finetune", "--task", "qa", "--stride", "8", "--backbone", bert, "--data",
                 str(tmp_path / "train.jsonl"), "--output", str(out), "--epochs", "1", "--no-progress"]) == 0
    assert "40 questions, 0 unanswerable" in capsys.readouterr().out
    assert main(["predict", "--model", str(out), "--data", str(tmp_path / "train.jsonl")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [f"q{i}" for i in range(40)]
    assert all(rows[i]["context"][r["start"]:r["end"]] == r["answer"] for i, r in enumerate(records))
