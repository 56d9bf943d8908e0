"""`transferkit evaluate --model DIR --data FILE` for every head: the data in the head's public file format, the
metrics printed as JSON equal to `Trainer.evaluate` of the same saved model on the same file."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import SENTENCES

import transferkit as tk
from transferkit.cli import main

TOPIC = ["animals", "markets", "sport"]
KINDS = {"cat": "ANI", "dog": "ANI", "stocks": "FIN", "market": "FIN", "goal": "SPO", "team": "SPO"}


def topic(i: int) -> str:
    return TOPIC[(i % 9) // 3]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header] + rows)
    return path


def classification(tmp_path):
    return tk.heads.Classification(), write_csv(tmp_path / "d.csv", ("text", "label"),
                                                 [(s, topic(i)) for i, s in enumerate(SENTENCES)]), {}


def multilabel(tmp_path):
    rows = [(s, "|".join([topic(i)] + (["news"] if topic(i) != "animals" else []))) for i, s in enumerate(SENTENCES)]
    return tk.heads.MultiLabel(), write_csv(tmp_path / "d.csv", ("text", "label"), rows), {}


def regression(tmp_path):
    rows = [(s, TOPIC.index(topic(i)) * 10.0 + 5.0) for i, s in enumerate(SENTENCES)]
    return tk.heads.Regression(), write_csv(tmp_path / "d.csv", ("text", "label"), rows), {}


def pair(tmp_path):
    rows = [(SENTENCES[i], SENTENCES[j], "same" if topic(i) == topic(j) else "different")
            for i in range(0, 27, 3) for j in range(1, 27, 4)]
    return tk.heads.Pair(), write_csv(tmp_path / "d.csv", ("text_a", "text_b", "label"), rows), {}


def ner(tmp_path):
    lines = []
    for s in SENTENCES:
        lines += [f"{w} {'B-' + KINDS[w] if w in KINDS else 'O'}" for w in s.split()] + [""]
    path = tmp_path / "d.conll"
    path.write_text("\n".join(lines), encoding="utf-8")
    return tk.heads.TokenClassification(), path, {}


def qa(tmp_path):
    paragraphs = []
    for i, s in enumerate(SENTENCES[:30]):
        word = s.split()[1]
        paragraphs.append({"context": s, "qas": [{"id": str(i), "question": word,
                                                  "answers": [{"text": word, "answer_start": s.index(" " + word) + 1}]}]})
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    return tk.heads.QuestionAnswering(stride=8, max_length=32), path, {}


def generation(tmp_path):
    rows = [(" ".join(s.split()[:2]), " ".join(s.split()[2:])) for s in SENTENCES[:27]]
    return tk.heads.Generation(max_new_tokens=4), write_csv(tmp_path / "d.csv", ("input", "target"), rows), {}


def segmentation(tmp_path):
    import numpy as np
    from PIL import Image
    from test_heads_conformance import masked_images

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (img, mask) in enumerate(masked_images()[:16]):
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return tk.heads.Segmentation(channels=16), root, {}


def detection(tmp_path):
    import numpy as np
    from PIL import Image
    from test_heads_conformance import boxed_images

    root = tmp_path / "det"
    root.mkdir()
    rows = [("image_path", "xmin", "ymin", "xmax", "ymax", "label")]
    for i, (img, target) in enumerate(boxed_images()[:12]):
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows += [(f"{i}.png", *b, "box") for b in target["boxes"]] or [(f"{i}.png", "", "", "", "", "")]
    return tk.heads.Detection(channels=64), write_csv(root / "boxes.csv", rows[0], rows[1:]), {}


CASES = {"classification": (classification, "glove"), "multilabel": (multilabel, "glove"),
         "regression": (regression, "glove"), "pair": (pair, "glove"), "token_classification": (ner, "glove"),
         "qa": (qa, "bert"), "generation": (generation, "gpt2"),
         "segmentation": (segmentation, "resnet"), "detection": (detection, "resnet")}


def backbone(kind: str, assets):
    if kind == "glove":
        return tk.load_backbone(f"glove:{assets['glove']}")
    if kind == "bert":
        return tk.load_backbone(f"hf:{assets['bert']}")
    if kind == "resnet":
        return tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    return tk.load_backbone("scratch:gpt2", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1, heads=2,
                            max_length=64)


def test_every_registered_head_has_a_case():
    from transferkit.heads import HEADS

    assert set(HEADS.names()) - {"ner"} == set(CASES)


@pytest.mark.parametrize("head_type", sorted(CASES))
def test_evaluate_prints_the_heads_metrics(head_type, assets, tmp_path, capsys):
    make, kind = CASES[head_type]
    head, path, _ = make(tmp_path)
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(kind, assets), head)
    tk.Trainer(epochs=1, lr=1e-2, batch_size=8, progress=False).fit(model, path)
    model.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    loaded = tk.TransferModel.from_pretrained(tmp_path / "m")
    expected = tk.Trainer(progress=False).evaluate(loaded, path)
    assert set(printed) == set(expected) and ("loss" in printed or head_type == "detection")  # detection: mAP
    assert printed == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert all(f"{name}=" in line for name in expected), line


def test_a_classifier_without_labels_takes_them_from_the_training_data(assets, tmp_path):
    data = [(s, topic(i)) for i, s in enumerate(SENTENCES)]
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    with pytest.raises(RuntimeError, match="train it"):
        model.predict(["the cat"])
    tk.Trainer(epochs=6, lr=0.05, head_lr=0.05, batch_size=8, progress=False).fit(model, data)
    assert model.head.labels == TOPIC and model.head.num_classes == 3
    assert model.predict([s for s, _ in data[:9]]) == [y for _, y in data[:9]]
    model.save_pretrained(tmp_path / "m")
    assert tk.TransferModel.from_pretrained(tmp_path / "m").head.config == model.head.config
    numbered = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    tk.Trainer(epochs=1, progress=False).fit(numbered, [(s, 10 + TOPIC.index(y)) for s, y in data])
    assert numbered.head.labels == [10, 11, 12]  # integers are class names too, as in the CLI
    one = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification())
    with pytest.raises(tk.errors.LabelError, match="one class only"):
        tk.Trainer(epochs=1, progress=False).fit(one, [(s, "x") for s, _ in data])
