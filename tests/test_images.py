"""Image decoding: high bit depths keep their range, alpha lands on white, bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.backbones.images import BACKGROUND, ImageTransform, check_image_files, to_tensor
from transferkit.errors import ImageError, InputError


@pytest.fixture(scope="module")
def vision():
    return tk.load_backbone("timm:test_resnet", weights=None, image_size=32)


def test_16_bit_png_keeps_its_range(tmp_path):
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    img.save(tmp_path / "deep.png")
    path = tmp_path / "deep.png"
    assert Image.open(path).mode.startswith("I")
    x = to_tensor(str(path))
    expected = values.astype(np.float64) / 65535
    assert x.shape == (3, 64, 64)
    assert float(x.mean()) == pytest.approx(expected.mean(), abs=1e-4)  # ~0.5, not saturated at 1.0
    assert float((x >= 1.0).float().mean()) < 0.01
    torch.testing.assert_close(x[0].double(), torch.from_numpy(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", ["uint16 array", "I;16B image", "I image", "F image"])
def test_other_high_bit_depth_forms(form):
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    img = {"uint16 array": values,
           "I;16B image": Image.frombytes("I;16B", (16, 16), values.astype(">u2").tobytes()),
           "I image": Image.fromarray(values.astype(np.int32)),
           "F image": Image.fromarray(values.astype(np.float32) / 65535)}[form]
    torch.testing.assert_close(to_tensor(img)[1], expected, atol=1e-6, rtol=0)


def test_out_of_range_deep_images_are_refused():
    with pytest.raises(ImageError, match="beyond 16 bits"):
        to_tensor(Image.fromarray(np.full((4, 4), 70000, np.int32)))
    with pytest.raises(ImageError, match="scale it to 0–1"):
        to_tensor(Image.fromarray(np.full((4, 4), 3.0, np.float32)))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(mode):
    rgba = np.zeros((8, 8, 4), np.uint8)  # black, fully transparent...
    rgba[:4, :, 3] = 255  # ...but for an opaque black top half
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P")
        img.info["transparency"] = img.getpixel((0, 7))  # the transparent pixels' palette index
    x = to_tensor(img)
    assert torch.all(x[:, :4] == 0) and torch.all(x[:, 4:] == 1.0)  # white shows through, not black
    assert BACKGROUND == (255, 255, 255)


def test_background_is_a_config_field_with_a_compatible_default():
    t = ImageTransform(size=(4, 4), resize=4, mean=(0, 0, 0), std=(1, 1, 1), background=(0, 0, 255))
    assert t.to_config()["background"] == [0, 0, 255]
    old = {k: v for k, v in t.to_config().items() if k != "background"}  # saved before the field existed
    assert ImageTransform.from_config(old).background == BACKGROUND
    transparent = Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA")
    out = ImageTransform.from_config(t.to_config())([transparent])["pixel_values"][0]
    assert torch.equal(out[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(InputError, match="RGB colour"):
        ImageTransform(size=(4, 4), resize=4, background=(0, 300))


def test_decompression_bomb_names_the_file(vision, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: a warning, which becomes an error
    for call in (lambda: vision.preprocess([str(tmp_path / "bomb.png")]),
                 lambda: check_image_files([tmp_path / "bomb.png"])):
        with pytest.raises(ImageError, match=r"bomb\.png.*decompression bomb.*MAX_IMAGE_PIXELS"):
            call()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: PIL's own error
    with pytest.raises(ImageError, match=r"bomb\.png.*decompression bomb"):
        vision.preprocess([str(tmp_path / "bomb.png")])


def test_junk_and_truncated_files_name_the_file(vision, tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"\x00 this is not a jpeg" * 10)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"junk\.jpg.*not an image file"):
        vision.preprocess([str(tmp_path / "junk.jpg")])
    with pytest.raises(ImageError, match=r"cut\.png"):
        vision.preprocess([str(tmp_path / "full.png"), str(tmp_path / "cut.png")])


def test_header_check_reports_every_bad_file(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    for i in range(12):
        (tmp_path / f"bad{i}.png").write_bytes(b"junk")
    check_image_files([tmp_path / "good.png"])  # fine: returns quietly
    with pytest.raises(ImageError, match=r"13 image file\(s\).*missing\.png.*no such file.*bad0\.png.*and 3 more"):
        check_image_files([tmp_path / "good.png", tmp_path / "missing.png"] +
                          [tmp_path / f"bad{i}.png" for i in range(12)])
    with pytest.raises(ImageError, match=r"train\.csv line 3: .*bad0\.png"):
        check_image_files([str(tmp_path / "bad0.png")], origins=["train.csv line 3"])


def test_bad_file_fails_before_epoch_one_naming_it(tmp_path):
    for label, value in (("dark", 20), ("light", 230)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "light" / "9.png").write_bytes(b"not a png at all")
    backbone = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    model = tk.TransferModel(backbone, tk.heads.Classification(2))
    epochs = []
    trainer = tk.Trainer(epochs=1, progress=False, callbacks={"on_train_start": [lambda t, s: epochs.append(1)]})
    with pytest.raises(ImageError, match=r"1 image file\(s\).*light/9\.png"):
        trainer.fit(model, str(tmp_path))
    assert epochs == []  # refused before training started
