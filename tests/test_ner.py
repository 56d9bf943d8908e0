"""Token classification (NER): entity metrics equal to seqeval's, decoding that never emits an invalid tag
sequence, CoNLL/JSONL readers with named errors, word alignment of both text preprocessors, and training on
the tiny BERT and on word vectors (loss falls, save → load identical predictions)."""

from __future__ import annotations

import itertools
import json
import random
import warnings

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.data.conll import (convert_tags, encode_tags, entities_from_tags, load_tagged, read_conll,
                                    spans_to_sentence)
from transferkit.errors import ConfigError, DataError, InputError, LabelError
from transferkit.heads import head_from_config
from transferkit.heads.token_classification import TokenClassification
from transferkit.tasks.token_classification import EntityMetrics, entity_scores

# Tricky cases for the metric: I- without B-, type changes inside a chunk, BIOES, mixed prefixes, E- after O,
# S- inside a chunk, an entity at the end of a sentence, sentences without entities.
Y_TRUE = [
    ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"],
    ["I-ORG", "I-ORG", "O", "O", "B-MISC"],
    ["S-PER", "O", "B-LOC", "E-LOC", "O", "S-ORG"],
    ["O", "O", "O"],
    ["B-PER", "I-LOC", "I-LOC", "O", "E-PER", "I-PER"],
    ["B-ORG", "S-ORG", "I-ORG", "E-ORG", "B-PER"],
]
Y_PRED = [
    ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"],
    ["B-ORG", "I-ORG", "O", "O", "I-MISC"],
    ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-ORG"],
    ["B-PER", "O", "O"],
    ["B-PER", "B-LOC", "I-LOC", "O", "E-PER", "I-PER"],
    ["B-ORG", "I-ORG", "I-ORG", "E-ORG", "S-PER"],
]


def test_entity_metrics_identical_to_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    ours = entity_scores(Y_TRUE, Y_PRED)
    assert ours == {"precision": precision_score(Y_TRUE, Y_PRED), "recall": recall_score(Y_TRUE, Y_PRED),
                    "f1": f1_score(Y_TRUE, Y_PRED)}
    assert 0 < ours["f1"] < 1
    with warnings.catch_warnings():  # seqeval warns on undefined precision/recall (and gives 0)
        warnings.simplefilter("ignore")
        for true, pred in [(Y_TRUE[3:4], Y_TRUE[3:4]), (Y_TRUE[:1], [["O"] * 6]), ([["O"] * 6], Y_TRUE[:1])]:
            got = entity_scores(true, pred)
            assert got == {"precision": precision_score(true, pred), "recall": recall_score(true, pred),
                           "f1": f1_score(true, pred)}


def test_entities_read_as_seqeval_reads_them():
    from seqeval.metrics.sequence_labeling import get_entities

    tags = ["O"] + [f"{p}-{t}" for p in "BIES" for t in ("A", "B")]
    rng = random.Random(0)
    for _ in range(500):
        seq = [rng.choice(tags) for _ in range(rng.randint(1, 9))]
        assert entities_from_tags(seq) == get_entities(seq), seq


def test_streamed_metrics_from_model_outputs_equal_seqeval():
    from seqeval.metrics import f1_score

    head = TokenClassification(["PER", "LOC"])
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    pred = [["B-PER", "O", "O"], ["O", "B-LOC"]]
    # two tokens per word (the second ignored), one padded row
    logits = torch.full((2, 6, head.num_classes), -5.0)
    word_ids = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, -1, -1]])
    for b, tags in enumerate(pred):
        for w, tag in enumerate(tags):
            logits[b, 2 * w, head.index[tag]] = 5.0
    metrics = EntityMetrics(head)
    word_tags = torch.tensor([[head.index[t] for t in gold[0]], [head.index[t] for t in gold[1]] + [-1]])
    metrics.update({"word_ids": word_ids, "word_tags": word_tags},
                   {"logits": logits, "loss": torch.tensor(1.0), "num_items": torch.tensor(5)})
    assert metrics.compute()["f1"] == f1_score(gold, pred) == 0.5


def valid(tags: list[str], scheme: str) -> bool:
    prev = "O"
    for tag in tags + ["O"]:
        p, kind = (tag, "") if tag == "O" else tag.split("-", 1)
        q, prev_kind = (prev, "") if prev == "O" else prev.split("-", 1)
        inside = p in ("I", "E")
        if inside and not (q in ("B", "I") and kind == prev_kind):
            return False
        if scheme == "BIOES" and q in ("B", "I") and not inside:
            return False
        prev = tag
    return True


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_decoding_is_the_best_valid_sequence(scheme):
    head = TokenClassification(["A", "B"], scheme=scheme)
    torch.manual_seed(0)
    n = head.num_classes
    for _ in range(20):
        log_probs = torch.randn(4, n).log_softmax(-1)
        path = [head.labels[i] for i in head.decode(log_probs)]
        assert valid(path, scheme), path
        best = max((seq for seq in itertools.product(range(n), repeat=4)
                    if valid([head.labels[i] for i in seq], scheme)),
                   key=lambda seq: float(sum(log_probs[t, i] for t, i in enumerate(seq))))
        assert path == [head.labels[i] for i in best]
    # the plain argmax would be invalid here: I-A first
    log_probs = torch.full((2, n), -9.0)
    log_probs[0, head.index["I-A"]] = log_probs[1, head.index["I-A"]] = 0.0
    assert valid(head.predict(log_probs[None])[0], scheme)


def test_scheme_conversion_keeps_entities():
    bio = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    bioes = convert_tags(bio, "BIOES")
    assert bioes == ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"]
    assert convert_tags(bioes, "BIO") == bio
    assert convert_tags(["I-PER", "I-PER", "O", "I-LOC"], "BIO") == ["B-PER", "I-PER", "O", "B-LOC"]  # IOB1
    assert entities_from_tags(encode_tags([("X", 1, 3)], 5, "BIOES")) == [("X", 1, 3)]


def test_conll_reader(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
                    "Blackburn NNP I-NP I-PER\n", encoding="utf-8")
    sentences = read_conll(path)
    assert [(s.words, s.tags) for s in sentences] == [(["EU", "rejects"], ["B-ORG", "O"]),
                                                      (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert sentences[1].origin == f"{path} line 7"
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_conll(bad)
    bad.write_text("EU B-ORG\n\nPeter X-PER\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"line 3.*'X-PER'"):
        read_conll(bad)


def test_jsonl_spans_and_their_errors(tmp_path):
    s = spans_to_sentence("Alice met Bob Smith in Paris.", [{"start": 0, "end": 5, "label": "PER"},
                                                             {"start": 10, "end": 19, "label": "PER"},
                                                             {"start": 23, "end": 28, "label": "LOC"}], "x")
    assert s.words == ["Alice", "met", "Bob", "Smith", "in", "Paris", "."]
    assert s.tags == ["B-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    path = tmp_path / "train.jsonl"
    rows = [{"text": "Alice met Bob", "entities": [{"start": 0, "end": 5, "label": "PER"}]},
            {"text": "Alice met Bob", "entities": [{"start": 0, "end": 3, "label": "PER"}]}]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"line 2: entity 0 \[0:3\] \('Ali'\).*word boundaries"):
        load_tagged(path)
    rows[1]["entities"] = [{"start": 0, "end": 9, "label": "PER"}, {"start": 6, "end": 13, "label": "LOC"}]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    with pytest.raises(LabelError, match="line 2: entities 0 and 1 overlap"):
        load_tagged(path)


def test_python_lists_and_misaligned_tags():
    sentences = load_tagged([(["Alice", "sings"], ["B-PER", "O"]), {"tokens": ["Bob"], "tags": ["S-PER"]}])
    assert [s.origin for s in sentences] == ["item 0", "item 1"]
    with pytest.raises(LabelError, match="item 1: 2 words but 1 tags"):
        load_tagged([(["Alice"], ["B-PER"]), (["Bob", "runs"], ["B-PER"])])
    with pytest.raises(LabelError, match=r"item 0.*word 2 \('Z-PER'\)"):
        load_tagged([(["Alice", "Bob"], ["B-PER", "Z-PER"])])
    with pytest.raises(DataError, match="item 0"):
        load_tagged([("Alice", ["B-PER"])])
    with pytest.raises(DataError, match="empty"):
        load_tagged([])


# --- preprocessors ---------------------------------------------------------------------------------------

def test_hf_word_ids_and_offsets(assets):
    backbone = tk.load_backbone(f"hf:{assets['bert']}")
    enc = backbone.preprocessor.encode_tokens([["the", "cats", "sat"], ["dogs"]])
    tokens = backbone.preprocessor.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "the", "cat", "##s", "sat", "[SEP]"]
    assert enc["word_ids"].tolist() == [[-1, 0, 1, 1, 2, -1], [-1, 0, 0, -1, -1, -1]]
    assert "offsets" not in enc and set(backbone.preprocess(["a cat"])) <= set(enc)
    raw = backbone.preprocessor.encode_tokens(["the cats sat"])
    assert raw["offsets"][0].tolist() == [[0, 0], [0, 3], [4, 7], [7, 8], [9, 12], [0, 0]]
    with pytest.raises(InputError, match="sentence #1"):
        backbone.preprocessor.encode_tokens([["the"], ["cat", ""]])


def test_word_vector_word_ids_and_truncation():
    backbone = from_vectors(["alice", "met", "bob"], np.eye(3, dtype=np.float32), source="glove", name="t",
                            max_tokens=3)
    enc = backbone.preprocessor.encode_tokens([["Alice", "met", "Zed", "Bob"], ["bob"]])
    assert enc["word_ids"].tolist() == [[0, 1, 2], [0, -1, -1]]  # the 4th word is cut at max_tokens=3
    assert enc["input_ids"].tolist() == [[1, 2, 0], [3, 0, 0]]  # "Zed" is unknown (padding row)
    raw = backbone.preprocessor.encode_tokens(["Alice met, Bob"])
    assert raw["offsets"][0].tolist() == [[0, 5], [6, 9], [9, 10]]
    assert raw["word_ids"].tolist() == [[0, 1, 2]]


# --- training --------------------------------------------------------------------------------------------

VOCAB = ["the", "cat", "dog", "sat", "on", "mat", "stocks", "market", "final", "minute", "team", "won"]
TAG_OF = {"cat": "ANI", "dog": "ANI", "stocks": "FIN", "market": "FIN"}


def tagged(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Sentences whose tags follow from the words: cat/dog ANI, stocks/market FIN, 'final minute' a TIME pair."""
    rng = random.Random(seed)
    plain = ["the", "sat", "on", "mat", "team", "won", "cat", "dog", "stocks", "market"]
    out = []
    for _ in range(n):
        words = [rng.choice(plain) for _ in range(rng.randint(3, 7))]
        if rng.random() < 0.5:
            at = rng.randint(0, len(words))
            words[at:at] = ["final", "minute"]
        tags = []
        for w in words:
            tags.append("B-TIME" if w == "final" else "I-TIME" if w == "minute" else
                        f"B-{TAG_OF[w]}" if w in TAG_OF else "O")
        out.append((words, tags))
    return out


def word_vectors(seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(VOCAB), 16)).astype(np.float32)
    return from_vectors(VOCAB, vectors, source="glove", name="tiny")


@pytest.mark.parametrize("kind", ["word_vectors", "bert"])
def test_fit_predict_save_load(kind, assets, tmp_path):
    torch.manual_seed(0)
    backbone = word_vectors() if kind == "word_vectors" else tk.load_backbone(f"hf:{assets['bert']}")
    model = tk.TransferModel(backbone, TokenClassification(scheme="BIOES"))
    train, val = tagged(80), tagged(20, seed=1)
    lr = 0.05 if kind == "word_vectors" else 3e-3
    history = tk.Trainer(epochs=6, lr=lr, head_lr=0.05, batch_size=8, progress=False).fit(model.task(), train, val)
    assert model.head.labels == ["O"] + [f"{p}-{t}" for t in ("ANI", "FIN", "TIME") for p in "BIES"]
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert history[-1]["val_f1"] > 0.9
    head = model.head
    words = [["the", "cat", "sat", "on", "the", "final", "minute"], ["stocks"]]
    tags = model.predict(words)
    assert tags == [["O", "S-ANI", "O", "O", "O", "B-TIME", "E-TIME"], ["S-FIN"]]
    spans = model.predict("the dog won the final minute")
    assert [(s["entity"], s["start"], s["end"], s["text"]) for s in spans] == [
        ("ANI", 4, 7, "dog"), ("TIME", 16, 28, "final minute")]
    assert all(0 < s["score"] <= 1 for s in spans)
    model.save_pretrained(tmp_path / "ner")
    loaded = tk.TransferModel.from_pretrained(tmp_path / "ner")
    assert loaded.head.config == head.config and loaded.head.head_type == "token_classification"
    assert loaded.predict(words) == tags
    assert loaded.predict("the dog won the final minute") == spans


def test_bad_inputs_are_named():
    model = tk.TransferModel(word_vectors(), TokenClassification(["ANI"]))
    task = model.task()
    with pytest.raises(LabelError, match=r"does not know \['ANI'\]: item 1 \(\['FIN'\]\)"):
        task.examples([(["cat"], ["B-ANI"]), (["stocks"], ["B-FIN"])])
    with pytest.raises(LabelError, match="item 0: 2 words but 1 tags"):
        task.examples([(["the", "cat"], ["O"])])
    with pytest.raises(LabelError, match="no entity"):
        tk.TransferModel(word_vectors(), TokenClassification()).task().examples([(["the"], ["O"])])
    with pytest.raises(InputError, match="item 1"):
        model.predict(["the cat", "   "])
    with pytest.raises(ConfigError, match="BIO tags"):
        TokenClassification(["B-PER", "S-PER"])  # S- is not BIO
    with pytest.raises(ConfigError, match="scheme"):
        TokenClassification(scheme="IOB9")


def test_config_round_trip_and_alias():
    head = TokenClassification(["O", "B-PER", "I-PER", "B-LOC"], scheme="bio", dropout=0.1)
    assert head.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    again = head_from_config(head.config)
    assert again.config == head.config
    alias = head_from_config({**head.config, "type": "ner"})
    assert isinstance(alias, TokenClassification) and alias.head_type == "token_classification"
    assert tk.TransferModel(word_vectors(), again).head.layers[-1].out_features == 5


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_cli_finetune_predict_ner_and_mean_max_word_vectors(assets, tmp_path, capsys, crf):
    import json

    from transferkit.cli import main

    lines = []
    for _ in range(8):
        lines += ["the O", "cat B-ANI", "sat O", "", "stocks B-FIN", "fell O", "", "a O", "dog B-ANI", "ran O", ""]
    (tmp_path / "train.conll").write_text("\n".join(lines) + "\n")
    out = tmp_path / "m"
    assert main(["finetune", "--task", "ner", "--backbone", f"glove:{assets['glove']}", "--option", "pooling=mean+max",
                 "--data", str(tmp_path / "train.conll"), "--output", str(out), "--epochs", "8", "--lr", "0.05",
                 "--head-lr", "0.05", "--no-progress"] + (["--crf"] if crf else [])) == 0
    printed = capsys.readouterr().out
    assert ("tagged sentences, BIO + CRF" if crf else "tagged sentences, BIO") in printed and "val_f1=" in printed
    assert json.loads((out / "config.json").read_text())["head"]["crf"] is crf
    assert main(["predict", "--model", str(out), "the cat sat"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["input"] == "the cat sat" and [e["entity"] for e in record["entities"]] == ["ANI"]
    model = tk.TransferModel.from_pretrained(out)
    with pytest.raises(InputError, match="use predict"):
        model.predict_proba("the cat")
