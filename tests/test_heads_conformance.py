"""Every registered head × each backbone family it supports: the same contract, checked the same way.

A loss that falls on a tiny learnable set, predictions whose count matches the inputs, and save → load giving
identical predictions. A head registered without a case here fails the guard test (as every backbone source
must have a tiny instance in test_backbones.py). The same cases run the trainer's promises in
test_heads_resume.py (exact resume after a stop mid-epoch, accumulation, DDP) and every registered strategy in
test_strategies.py, so a new head is held to them as soon as it has its case here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.heads import HEADS

from conftest import SENTENCES

TOPIC = ["animals", "markets", "sport"]


def topic(i: int) -> str:
    return TOPIC[(i % 9) // 3]


def classes():
    return [(s, topic(i)) for i, s in enumerate(SENTENCES)]


def label_sets():
    return [(s, [topic(i)] + (["news"] if topic(i) != "animals" else [])) for i, s in enumerate(SENTENCES)]


def numbers():
    return [(s, float(TOPIC.index(topic(i))) * 10.0 + 5.0) for i, s in enumerate(SENTENCES)]


def tagged():
    kinds = {"cat": "ANI", "dog": "ANI", "stocks": "FIN", "market": "FIN", "goal": "SPO", "team": "SPO"}
    return [(s.split(), [f"B-{kinds[w]}" if w in kinds else "O" for w in s.split()]) for s in SENTENCES]


def pairs():
    return [(SENTENCES[i], SENTENCES[j], "same" if topic(i) == topic(j) else "different")
            for i in range(0, 27, 3) for j in range(1, 27, 4)]


def questions():
    rows = []
    for i, s in enumerate(SENTENCES[:45]):
        word = s.split()[1]
        rows.append({"question": word, "context": s, "answers": [{"text": word, "answer_start": s.index(" " + word) + 1}]})
    return rows


def continuations():
    return [(" ".join(s.split()[:2]), " ".join(s.split()[2:])) for s in SENTENCES[:27]]


def images():
    rng = np.random.default_rng(0)
    return [(torch.full((3, 24, 24), 0.2 if i % 2 else 0.8) + torch.tensor(rng.normal(0, 0.05, (3, 24, 24))).float()
             .clamp(-0.2, 0.2), "dark" if i % 2 else "light") for i in range(40)]


def image_label_sets():
    """Image multi-label: each image is "dark" or "light", and every third one also "marked"."""
    return [(x, [y] + (["marked"] if i % 3 == 0 else [])) for i, (x, y) in enumerate(images())]


def image_numbers():
    """Image regression: the mean brightness of each image, as a score of 0-100."""
    return [(x, float(x.mean()) * 100.0) for x, _ in images()]


def masked_images():
    """Images with a bright rectangle and its mask (class 1); some of another size than the network's."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(40):
        h, w = (24, 24) if i % 3 else (30, 20)
        img = rng.uniform(0.0, 0.3, (h, w, 3)).astype(np.float32)
        mask = np.zeros((h, w), dtype=np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[top:top + h // 3, left:left + w // 3] += 0.6
        mask[top:top + h // 3, left:left + w // 3] = 1
        out.append((img, mask))
    return out


def boxed_images():
    """Images with 0-2 bright rectangles each, boxed and labelled "box"; some of another size than the network's."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        h, w = (32, 32) if i % 3 else (40, 28)
        img = rng.uniform(0.0, 0.3, (h, w, 3)).astype(np.float32)
        boxes = []
        for _ in range(int(rng.integers(0, 3))):
            x, y = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
            img[y:y + 10, x:x + 10] += 0.6
            boxes.append([x, y, x + 10, y + 10])
        out.append((img.clip(0, 1), {"boxes": boxes, "labels": ["box"] * len(boxes)}))
    return out


# head type -> (head factory, {backbone family: data}), and how to pick inputs for predict from the data
CASES: dict[str, tuple[Callable, dict[str, Callable], Callable]] = {
    "classification": (lambda: tk.heads.Classification(labels=TOPIC), {"word_vectors": classes, "hf": classes},
                       lambda data: [x for x, _ in data[:6]]),
    "multilabel": (lambda: tk.heads.MultiLabel(), {"word_vectors": label_sets, "hf": label_sets,
                                                   "vision": image_label_sets},
                   lambda data: [x for x, _ in data[:6]]),
    "regression": (lambda: tk.heads.Regression(), {"word_vectors": numbers, "hf": numbers, "vision": image_numbers},
                   lambda data: [x for x, _ in data[:6]]),
    "token_classification": (lambda: tk.heads.TokenClassification(), {"word_vectors": tagged, "hf": tagged},
                             lambda data: [w for w, _ in data[:6]]),
    "pair": (lambda: tk.heads.Pair(), {"word_vectors": pairs, "hf": pairs},
             lambda data: [(a, b) for a, b, _ in data[:6]]),
    "generation": (lambda: tk.heads.Generation(max_new_tokens=6), {"gpt2": continuations, "t5": continuations},
                   lambda data: [x for x, _ in data[:6]]),
    "qa": (lambda: tk.heads.QuestionAnswering(stride=8, max_length=32), {"hf": questions},
           lambda data: [{"question": q["question"], "context": q["context"]} for q in data[:6]]),
    "detection": (lambda: tk.heads.Detection(channels=64), {"vision": boxed_images},
                  lambda data: [x for x, _ in data[:6]]),
    "segmentation": (lambda: tk.heads.Segmentation(channels=16), {"vision": masked_images, "vit": masked_images},
                     lambda data: [x for x, _ in data[:6]]),
}
ALIASES = {"ner"}


def backbone(family: str, assets):
    if family == "word_vectors":
        return tk.load_backbone(f"glove:{assets['glove']}")
    if family == "hf":
        return tk.load_backbone(f"hf:{assets['bert']}")
    if family == "gpt2":  # a causal decoder, for generation
        return tk.load_backbone("scratch:gpt2", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1,
                                heads=2, max_length=64)
    if family == "t5":  # an encoder-decoder, for generation
        from transformers import AutoTokenizer, T5Config, T5Model

        from transferkit.backbones.hf import from_model

        tok = AutoTokenizer.from_pretrained(assets["bert"])
        config = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=48, num_layers=1, num_heads=2,
                          dropout_rate=0.0, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
        return from_model(T5Model(config), tok, name="tiny-t5")
    if family == "vit":  # LayerNorm, no BatchNorm: accumulation and DDP make the large batch's update exactly
        return tk.load_backbone("timm:test_vit", weights=None, image_size=32)
    return tk.load_backbone("timm:test_resnet", weights=None, image_size=24)


PARAMS = [(head, family) for head, (_, families, _) in CASES.items() for family in families] + [
    ("classification", "vision")]


def test_every_registered_head_has_a_case():
    assert set(HEADS.names()) - ALIASES == set(CASES)


@pytest.mark.parametrize("head_type, family", PARAMS, ids=[f"{h}-{f}" for h, f in PARAMS])
def test_head_contract(head_type, family, assets, tmp_path):
    make_head, families, inputs_of = CASES[head_type]
    data = images() if (head_type, family) == ("classification", "vision") else families[family]()
    if family == "vision" and head_type == "classification":
        make_head = lambda: tk.heads.Classification(labels=["dark", "light"])  # noqa: E731
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(family, assets), make_head())
    assert model.head.head_type == head_type
    lr = 0.05 if family == "word_vectors" else 3e-3
    # An MSE head over a random BatchNorm CNN oscillates at head_lr 0.05 (train loss 0.72, 0.23, 1.49, 0.78).
    head_lr = 0.01 if (head_type, family) == ("regression", "vision") else 0.05
    history = tk.Trainer(epochs=4, lr=lr, head_lr=head_lr, batch_size=8, progress=False).fit(model, data, data)
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    inputs = inputs_of(data)
    predictions = model.predict(inputs)
    assert len(predictions) == len(inputs)
    model.save_pretrained(tmp_path / "m")
    again = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert again.head.config == model.head.config
    assert same(again.predict(inputs), predictions)


def same(a, b) -> bool:
    """Predictions equal, arrays (segmentation masks) included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
