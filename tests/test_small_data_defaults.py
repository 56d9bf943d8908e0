"""The small-data defaults (issue 16): steps, learning rates, image size and the validation split chosen from the
data and the backbone when the user sets none, said and saved with the run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import transferkit as tk
from transferkit.cli import main
from transferkit.data import LabelledData, stratified_split
from transferkit.data.images import typical_side
from transferkit.errors import TooFewToSplitError
from transferkit.trainer import auto

from conftest import SENTENCES


def digit_folder(root, per_class: int = 3, side: int = 32, classes=("one", "two", "three")):
    """Class folders of small greyscale images, each class a different bright bar."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (side, side), dtype=np.uint8)
            pixels[:, c * side // len(classes):(c + 1) * side // len(classes)] = 230
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_epochs_give_a_floor_of_steps_on_tiny_sets_and_three_passes_on_large_ones(assets):
    new = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    tiny = auto.epochs(24, 16, new)  # 2 steps an epoch
    assert tiny.value == 50 and "at least 100 optimiser steps for a new image backbone" in tiny.reason
    assert auto.epochs(40, 16, new).value == 34  # 3 steps an epoch: 102 steps
    assert auto.epochs(1, 16, new).value == 100
    pretrained = tk.load_backbone(f"hf:{assets['bert']}")
    few = auto.epochs(24, 16, pretrained)
    assert few.value == 13 and "at least 25 optimiser steps for a pretrained transformer backbone" in few.reason
    assert auto.epochs(24, 16, tk.load_backbone(f"glove:{assets['glove']}")).value == 50
    large = auto.epochs(100_000, 16, new)
    assert large.value == auto.MIN_EPOCHS and "plenty" in large.reason


def test_learning_rates_follow_what_is_trained(assets):
    bert = tk.load_backbone(f"hf:{assets['bert']}")
    assert auto.initialisation(bert) == "pretrained"
    lr, head_lr = auto.rates(bert, frozen=False)
    assert (lr.value, head_lr.value) == (1e-4, 3e-3) and "pretrained" in lr.reason
    random_cnn = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    assert auto.initialisation(random_cnn) == "random"
    lr, head_lr = auto.rates(random_cnn, frozen=False)
    assert (lr.value, head_lr.value) == (1e-3, 1e-2) and "random weights" in lr.reason
    glove = tk.load_backbone(f"glove:{assets['glove']}")
    assert [c.value for c in auto.rates(glove, frozen=False)] == [1e-3, 2e-2]
    assert auto.rates(bert, frozen=True)[1].value == 1e-2 and "unused" in auto.rates(bert, frozen=True)[0].reason
    scratch = tk.load_backbone("scratch:bert", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1,
                               heads=2, max_length=32)
    assert auto.initialisation(scratch) == "random"
    assert auto.rates(scratch, frozen=False)[0].value == 1e-3


def test_the_initialisation_record_survives_saving(tmp_path):
    backbone = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    backbone.save_pretrained(tmp_path / "b")
    assert auto.initialisation(tk.load_backbone(tmp_path / "b")) == "random"
    del backbone.config["init"]  # a backbone saved before the record existed: read from its weights' origin
    assert auto.initialisation(backbone) == "random"


@pytest.mark.parametrize("network, data, expected", [(224, 32, 32), (224, 8, 32), (224, 100, 128), (224, 28, 32),
                                                     (224, 150, None), (224, None, None), (64, 32, 32), (64, 40, None)])
def test_image_size_fits_small_images(network, data, expected):
    choice = auto.image_size(network, data)
    assert (choice.value if choice else None) == expected


def test_typical_side_reads_headers_and_skips_what_is_not_an_image(tmp_path):
    paths = []
    for i, side in enumerate((30, 32, 34)):
        Image.new("RGB", (side, side // 2)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert typical_side([*paths, str(tmp_path / "bad.png"), np.zeros((4, 4))]) == 32
    assert typical_side([]) is None


def test_stratified_split_leaves_every_class_two_training_examples_or_refuses():
    data = LabelledData(list(range(14)), ["a"] * 10 + ["b"] * 2 + ["c"] * 2, None, "text")
    train, val = stratified_split(data, 0.2)
    assert sorted(val.labels) == ["a", "a"]  # b and c (two each) keep theirs
    assert train.labels.count("b") == train.labels.count("c") == 2
    three = LabelledData(list(range(6)), ["a"] * 3 + ["b"] * 3, None, "text")
    train, val = stratified_split(three, 0.5)
    assert train.labels.count("a") == train.labels.count("b") == 2 and len(val) == 2
    with pytest.raises(TooFewToSplitError, match="too few"):
        stratified_split(LabelledData([1, 2, 3, 4], ["a", "a", "b", "b"], None, "text"), 0.2)


def test_finetune_defaults_on_small_images_are_said_and_saved(tmp_path, capsys):
    data = digit_folder(tmp_path / "labelled", per_class=4)
    out = tmp_path / "m"
    assert main(["finetune", "--backbone", "timm:test_resnet", "--option", "weights=none", "--data", str(data),
                 "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "image_size=32: the images are about 32 px, the network's default input 160 px" in printed
    assert "epochs=100: at least 100 optimiser steps for a new image backbone: 9 examples" in printed  # 1 per class held
    assert "lr=0.0010: a vision network, from random weights" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["preprocess"]["size"] == [32, 32]  # the preprocessing saved records the size
    assert config["training"]["settings"]["epochs"] == 100 and config["training"]["settings"]["lr"] == 1e-3
    assert config["training"]["settings"]["initialisation"] == "random"
    assert "image_size" in config["training"]["chosen"]
    run = json.loads((tmp_path / "m.run" / "settings.json").read_text())
    assert run == config["training"]
    card = (out / "README.md").read_text()
    assert "trained with: " in card and "epochs chosen by default: at least 100 optimiser steps" in card
    assert len((tmp_path / "m.run" / "metrics.csv").read_text().splitlines()) == 101  # header + 100 epochs


def test_given_flags_are_kept(tmp_path, capsys):
    data = digit_folder(tmp_path / "labelled", per_class=4)
    assert main(["finetune", "--backbone", "timm:test_resnet", "--option", "weights=none", "--option",
                 "image_size=48", "--data", str(data), "--output", str(tmp_path / "m"), "--epochs", "2", "--lr",
                 "0.01", "--head-lr", "0.02", "--no-progress"]) == 0
    assert "chosen from the data" not in capsys.readouterr().out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["backbone"]["preprocess"]["size"] == [48, 48]
    assert config["training"] == {"settings": {"epochs": 2, "lr": 0.01, "head_lr": 0.02, "batch_size": 16,
                                               "strategy": "full", "initialisation": "random"}, "chosen": {}}


def test_a_set_too_small_to_split_trains_on_all_and_keeps_the_last_epoch(assets, tmp_path, capsys):
    rows = [("the cat sat on the mat", "animals"), ("a dog played", "animals"),
            ("stocks fell today", "markets"), ("the market rallied", "markets")]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "m"), "--epochs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "no validation split" in printed and "All 4 examples train" in printed
    assert "on 4 examples" in printed and "restored epoch" not in printed
    header = (tmp_path / "m.run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_" not in header


def test_pretrain_defaults_follow_the_recipe_and_mark_the_backbone_self_supervised(tmp_path, capsys):
    unlabelled = digit_folder(tmp_path / "unlabelled", per_class=2)
    rot = tmp_path / "rot"
    assert main(["pretrain", "rotation", "--backbone", "timm:test_resnet", "--option", "weights=none", "--data",
                 str(unlabelled), "--output", str(rot), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "image_size=32: the images are about 32 px" in printed
    assert "epochs=6: the recipe from random weights" in printed and "lr=0.0030" in printed
    assert "batch_size=64" in printed
    config = json.loads((rot / "config.json").read_text())["backbone"]
    assert config["init"] == "self-supervised" and config["preprocess"]["size"] == [32, 32]
    assert [(p["task"], p["epochs"], p["lr"], p["batch_size"]) for p in config["pretraining"]] == \
        [("rotation", 6, 3e-3, 64)]
    labelled = digit_folder(tmp_path / "labelled", per_class=3)
    assert main(["finetune", "--backbone", str(rot), "--data", str(labelled), "--output", str(tmp_path / "m"),
                 "--epochs", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "lr=0.0010: a vision network, self-supervised from random weights" in printed
    assert "image_size" not in printed  # the saved backbone keeps the size it was pretrained at


def test_text_defaults_for_a_pretrained_transformer(assets, tmp_path, capsys):
    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + [(s, topic[i % 9]) for i, s in enumerate(SENTENCES[:18])])
    assert main(["finetune", "--backbone", f"hf:{assets['bert']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "m"), "--batch-size", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epochs=13: at least 25 optimiser steps for a pretrained transformer backbone: 15 examples in batches of 8 make 2 " \
        "per epoch" in printed
    assert "lr=0.0001: a transformer, pretrained" in printed and "head_lr=0.0030" in printed
