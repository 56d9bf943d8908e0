"""Bad input gets a specific, actionable error; every accepted image form gives the same tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.backbones.images import ImageTransform
from transferkit.errors import (BackboneFileNotFoundError, CheckpointError, DataError, InputError,
                                UnknownBackboneError, WeightsError)


@pytest.fixture(scope="module")
def vision():
    return tk.load_backbone("timm:test_efficientnet", weights=None, image_size=32)


@pytest.fixture(scope="module")
def text(assets):
    return tk.load_backbone(f"glove:{assets['glove']}")


# --- unknown specs and missing files ----------------------------------------------------------------

def test_unknown_source_lists_close_matches():
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone source 'tim'.*'timm:'"):
        tk.load_backbone("tim:resnet18")


def test_unknown_architecture_lists_close_matches():
    with pytest.raises(UnknownBackboneError, match=r"timm:resnet1000.*Did you mean.*'timm:resnet10"):
        tk.load_backbone("timm:resnet1000", weights=None)
    with pytest.raises(UnknownBackboneError, match="torchvision:resnet18"):
        tk.load_backbone("torchvision:resnet19", weights=None)


def test_unknown_weights_tag_lists_the_real_tags():
    with pytest.raises(UnknownBackboneError, match="IMAGENET1K_V1"):
        tk.load_backbone("torchvision:resnet18.NOPE")


def test_spec_without_source():
    with pytest.raises(UnknownBackboneError, match="neither a 'source:name' spec nor a directory"):
        tk.load_backbone("resnet18")


def test_missing_files(tmp_path):
    with pytest.raises(BackboneFileNotFoundError, match="no such file"):
        tk.load_backbone(f"glove:{tmp_path}/nope.txt")
    with pytest.raises(BackboneFileNotFoundError, match="glove:6B.50d"):
        tk.load_backbone("glove:6B.50")
    with pytest.raises(BackboneFileNotFoundError, match="no such directory"):
        tk.load_backbone(f"hf:{tmp_path}/missing-model")
    with pytest.raises(BackboneFileNotFoundError, match="weights file"):
        tk.load_backbone("timm:test_resnet", weights=f"{tmp_path}/w.safetensors")


def test_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    save_file({"conv_stem.weight": torch.zeros(1, 1, 1, 1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match="do not fit"):
        tk.load_backbone("timm:test_efficientnet", weights=str(tmp_path / "w.safetensors"))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _RunsCodeWhenUnpickled(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        tk.load_backbone("timm:test_efficientnet", weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_saved_directory_checks(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="not written by transferkit"):
        tk.TransferModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        tk.TransferModel.from_pretrained(tmp_path / "elsewhere")


# --- text ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, message", [
    (["fine", ""], "text #1 is empty"),
    (["   "], "text #0 is empty"),
    ([], "empty batch"),
    ("one string", "wrap it as"),
    ([3], "not a str"),
])
def test_bad_text_input(text, batch, message):
    with pytest.raises(InputError, match=message):
        text.preprocess(batch)


def test_bad_text_input_for_transformers(tiny_specs):
    spec, options = tiny_specs["hf"]
    with pytest.raises(InputError, match="text #0 is empty"):
        tk.load_backbone(spec, **options).preprocess([""])


# --- images ---------------------------------------------------------------------------------------------

def test_all_image_forms_agree(vision, tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    forms = [rgb, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1),
             torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, str(tmp_path / "x.png"),
             Image.fromarray(rgb).convert("RGBA")]
    tensors = [vision.preprocess([f])["pixel_values"] for f in forms]
    for t in tensors[1:]:
        torch.testing.assert_close(t, tensors[0], atol=1e-5, rtol=0)
    assert tensors[0].shape == (1, 3, 32, 32)


def test_greyscale_images_become_three_channels(vision):
    grey = np.full((16, 16), 128, np.uint8)
    mean = torch.tensor(vision.preprocessor.mean).view(3, 1, 1)
    std = torch.tensor(vision.preprocessor.std).view(3, 1, 1)
    for form in (grey, Image.fromarray(grey), torch.from_numpy(grey)[None]):
        x = vision.preprocess([form])["pixel_values"]
        assert x.shape == (1, 3, 32, 32)
        torch.testing.assert_close(x[0] * std + mean, torch.full((3, 32, 32), 128 / 255))


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\).*alpha"),
    (np.zeros((2, 8, 8, 3), np.uint8), "expected H×W"),
    (torch.zeros(4, 8, 8), "1 or 3 channels"),
    (torch.zeros(8, 8, 3), "channels first"),
    (np.zeros((1, 1, 3), np.uint8), "1×1 pixels"),
    (np.full((8, 8), 16.0), r"scaled to 0–1"),
    (np.zeros((8, 8), np.int64), "dtype"),
    ("missing.png", "cannot read image"),
    (42, "int"),
])
def test_bad_images(vision, image, message):
    with pytest.raises(InputError, match=message):
        vision.preprocess([image])


def test_undecodable_image_file(vision, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        vision.preprocess([str(tmp_path / "broken.png")])


def test_transform_resizes_shorter_side_then_crops():
    t = ImageTransform(size=(4, 4), resize=4, mean=(0, 0, 0), std=(1, 1, 1))
    img = torch.zeros(3, 8, 16)
    img[:, :, 2:14] = 1.0  # white but for 2-pixel black borders left and right, which the crop drops
    out = t([img])["pixel_values"][0]
    assert out.shape == (3, 4, 4) and torch.allclose(out, torch.ones_like(out))


# --- data and labels ----------------------------------------------------------------------------------

def test_empty_dataset(text, tmp_path):
    model = tk.TransferModel(text, tk.heads.Classification(2))
    with pytest.raises(DataError, match="empty"):
        tk.Trainer(progress=False).fit(model, [])
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="empty"):
        tk.Trainer(progress=False).fit(model, str(tmp_path / "empty.csv"))


def test_labels_that_do_not_match_the_head(text):
    model = tk.TransferModel(text, tk.heads.Classification(2))
    with pytest.raises(DataError, match="3 distinct labels.*num_classes=2"):
        tk.Trainer(progress=False).fit(model, [("a", "x"), ("b", "y"), ("c", "z")])
    with pytest.raises(DataError, match=r"labels \[5\] are out of range.*num_classes=2"):
        tk.Trainer(progress=False).fit(model, [("a", 0), ("b", 5)])
    named = tk.TransferModel(text, tk.heads.Classification(labels=["pos", "neg"]))
    with pytest.raises(DataError, match=r"\['meh'\] are not among the head's classes"):
        tk.Trainer(progress=False).fit(named, [("a", "pos"), ("b", "meh")])


def test_missing_columns_and_paths(tmp_path):
    (tmp_path / "d.csv").write_text("sentence,label\nhello,1\n")
    with pytest.raises(DataError, match=r"no column 'text'; its columns are \['sentence', 'label'\]"):
        tk.load_labelled(str(tmp_path / "d.csv"))
    with pytest.raises(DataError, match="does not exist"):
        tk.load_labelled(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.csv").write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        tk.load_labelled(str(tmp_path / "bad.csv"))


def test_head_arguments():
    assert tk.heads.Classification().num_classes is None  # classes from the training data
    with pytest.raises(ValueError, match="at least 2 classes"):
        tk.heads.Classification(1)
    with pytest.raises(ValueError, match="num_classes=3 but 2 labels"):
        tk.heads.Classification(3, labels=["a", "b"])
