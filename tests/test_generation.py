"""The generation head (causal LM on (input, target) pairs): labels on targets only, a falling loss, greedy
predictions of the learnt targets, save → load, named errors, ROUGE-L / BLEU equal to the reference packages."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError, DataError, InputError, LabelError
from transferkit.heads.generation import Generation
from transferkit.tasks.text import IGNORE

PAIRS = [("the cat", "sat on the mat"), ("the dog", "sat on the log"), ("stocks fell", "as markets closed"),
         ("the team", "won the match")]


@pytest.fixture(scope="module")
def gpt2(assets):
    def make(**head):
        torch.manual_seed(0)
        backbone = tk.load_backbone("scratch:gpt2", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1,
                                    heads=2, max_length=64)
        return tk.TransferModel(backbone, Generation(max_new_tokens=24, **head))
    return make


def train(model, steps=60, lr=1e-2):
    task = model.task()
    batch = task.collate(task.examples(PAIRS))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_labels_only_on_target_tokens(gpt2):
    model = gpt2()
    head, task = model.head, model.task()
    batch = task.collate(task.examples(PAIRS))
    ids, mask, labels = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"], batch["labels"]
    assert ids.shape == labels.shape == mask.shape
    for i, (x, y) in enumerate(PAIRS):
        prompt, target = head.prompt_ids([x])[0], head.target_ids([y])[0] + [head.eos_id]
        n = len(prompt) + len(target)
        assert ids[i, :n].tolist() == prompt + target
        assert (labels[i, :len(prompt)] == IGNORE).all()  # the prompt carries no loss
        assert labels[i, len(prompt):n].tolist() == target  # the target and its end token do
        assert (labels[i, n:] == IGNORE).all() and (mask[i, n:] == 0).all()  # nor does the padding
        assert prompt[-1] == head.eos_id  # separator=None: the end token separates prompt and target


def test_shapes_and_tied_output(gpt2):
    model = gpt2()
    enc = model.preprocess(["the cat", "a dog sat"])
    logits = model(**enc)["logits"]
    vocab = model.backbone.encoder.model.get_input_embeddings().weight.shape[0]
    assert logits.shape == (2, enc["input_ids"].shape[1], vocab)
    assert not list(model.head.parameters())  # tied: the head owns no weights
    untied = gpt2(tie_to_embeddings=False)
    assert [p.shape for p in untied.head.parameters()] == [torch.Size([vocab, 32])]


def test_loss_falls_and_greedy_predict_returns_target(gpt2):
    model = gpt2()
    losses = train(model)
    assert losses[-1] < 0.1 * losses[0]
    inputs = [x for x, _ in PAIRS]
    assert model.predict(inputs) == [y for _, y in PAIRS]
    assert model.predict("the cat") == "sat on the mat"  # one input, one string
    assert model.predict(inputs, batch_size=1) == model.predict(inputs, batch_size=4)  # padding changes nothing


def test_save_load_identical_generations(gpt2, tmp_path):
    model = gpt2(separator=" ", prompt_template="in: {input} out:", tie_to_embeddings=False)
    train(model, steps=30)
    inputs = [x for x, _ in PAIRS]
    before = model.predict(inputs)
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.config == model.head.config
    assert again.predict(inputs) == before


def test_trainer_fits_with_generation_metrics(gpt2):
    pytest.importorskip("rouge_score")
    pytest.importorskip("sacrebleu")
    model = gpt2(generate_in_eval=True)
    model.head.max_new_tokens = 8  # generation in evaluation is slow: short outputs
    assert model.task().default_metric == "loss"
    history = tk.Trainer(epochs=15, lr=1e-2, head_lr=1e-2, batch_size=4, progress=False).fit(model, PAIRS, PAIRS)
    last = history[-1]
    assert last["val_loss"] < history[0]["val_loss"]
    for key in ("val_perplexity", "val_accuracy", "val_rougeL", "val_bleu"):
        assert key in last
    assert last["val_rougeL"] > history[0]["val_rougeL"]


def test_bad_rows_are_named(gpt2):
    task = gpt2().task()
    with pytest.raises(LabelError, match="item 1"):
        task.examples([("the cat", "sat"), ("the dog", "  ")])
    with pytest.raises(LabelError, match="item 0"):
        task.examples([("the cat", None)])
    with pytest.raises(InputError, match="item 1"):
        task.examples([("the cat", "sat"), ("", "sat")])
    with pytest.raises(DataError, match="target"):
        task.examples({"input": ["the cat"], "label": ["sat"]})
    assert task.examples({"input": ["the cat"], "target": ["sat"]}) == [("the cat", "sat")]  # columns by name


def test_refused_backbones_and_options(assets):
    with pytest.raises(ConfigError, match="causal"):
        tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), Generation())
    with pytest.raises(ConfigError, match="Hugging Face causal"):
        tk.TransferModel(tk.load_backbone(f"word2vec:{assets['word2vec_txt']}"), Generation())
    with pytest.raises(ConfigError, match="input"):
        Generation(prompt_template="no field")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        Generation(max_new_tokens=0)
    with pytest.raises(InputError):
        Generation().scores(torch.zeros(1, 2, 3))


def test_metrics_equal_reference_packages():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    sacrebleu = pytest.importorskip("sacrebleu")
    from transferkit.tasks.generation import bleu, rouge_l

    predictions = ["the cat sat on the mat", "stocks rose today", "a late goal", ""]
    references = ["the cat sat on a mat", "stocks fell today", "the striker scored a late goal", "the team won"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    assert rouge_l(predictions, references) == pytest.approx(expected)
    assert 0 < expected[0] < 1 and expected[-1] == 0  # the fixture is not trivial
    assert bleu(predictions, references) == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)


def test_cli_finetune_predict_generation(gpt2, assets, tmp_path, capsys):
    import csv
    import json

    from transferkit.cli import main

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("input", "target")] + [("the cat", "sat on the mat"), ("the dog", "sat on the log")] * 8)
    scratch = tmp_path / "gpt2"
    gpt2().backbone.save_pretrained(scratch)
    out = tmp_path / "m"
    assert main(["finetune", "--task", "generation", "--max-new-tokens", "5", "--backbone", str(scratch), "--data",
                 str(tmp_path / "pairs.csv"), "--output", str(out), "--epochs", "1", "--no-progress"]) == 0
    assert "16 (input, target) pairs" in capsys.readouterr().out
    assert main(["predict", "--model", str(out), "the cat"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["input"] == "the cat" and isinstance(record["prediction"], str)
