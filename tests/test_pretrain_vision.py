"""Self-supervised vision pretraining: labels of every view, loss falling, save → load → fine-tune, bad folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transferkit as tk
from transferkit.errors import DataError, InputError
from transferkit.tasks.vision import DenoisingAutoencoder, ImageFolderCorpus, PatchColor, RotationPrediction
from transferkit.tasks.vision_views import (ColorizationView, CorruptionView, MaskedPatchView, RandomResizedCrop,
                                            RotationView, colour_class)

SPEC = ("timm:test_efficientnet", {"weights": None, "image_size": 32})


def backbone():
    torch.manual_seed(0)
    return tk.load_backbone(SPEC[0], **SPEC[1])


def shapes(n: int = 8, size: int = 24) -> list[np.ndarray]:
    """Colour images: a green gradient, an off-centre block and a bar; every rotation of them looks different."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        img = np.zeros((size, size, 3), dtype=np.uint8)
        img[..., 1] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]  # a gradient: patch colours vary
        img[2:8, 2:14] = rng.integers(128, 256, 3)
        img[10: 10 + (i % 5) + 2, 4:6] = rng.integers(64, 256, 3)
        images.append(img)
    return images


def trainer(**kw) -> tk.Trainer:
    return tk.Trainer(**{"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "metric": "loss", **kw})


# --- views: every label matches the transformation applied -----------------------------------------

@pytest.mark.parametrize("all_rotations", [True, False])
def test_rotation_labels_undo_the_rotation(all_rotations):
    x = torch.rand(5, 3, 12, 12)
    images, labels = RotationView(all_rotations)(x)
    assert len(images) == len(labels) == (20 if all_rotations else 5)
    for i, (img, k) in enumerate(zip(images, labels)):
        assert torch.equal(torch.rot90(img, -int(k), dims=(-2, -1)), x[i % 5])
        if k != 0:  # a real turn changes a random image
            assert not torch.equal(img, x[i % 5])
    if all_rotations:
        assert sorted(labels.tolist()) == [k for k in range(4) for _ in range(5)]


@pytest.mark.parametrize("crop", [False, True])
def test_rotation_task_labels_refer_to_what_the_network_sees(crop):
    from transferkit.backbones.images import to_tensor

    task = RotationPrediction(backbone(), crop_scale=(0.5, 1.0) if crop else None)
    images = shapes(3)
    torch.manual_seed(3)
    batch = task.collate(images)
    seen = task.pixels.unit(batch["inputs"]["pixel_values"])
    # The raw image is turned, then preprocessed like any input (so no resize/crop artefact rotates), then
    # (by default) cropped at random, each example its own box drawn independently of its label.
    turned = [torch.rot90(to_tensor(images[i % 3]), k, dims=(-2, -1)) for i, k in enumerate(batch["labels"].tolist())]
    expected = task.pixels.unit(task.backbone.preprocess(turned)["pixel_values"])
    if crop:
        torch.manual_seed(3)
        expected = RandomResizedCrop((0.5, 1.0))(expected)
    assert torch.allclose(seen, expected, atol=1e-5)
    assert sorted(batch["labels"].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_random_resized_crop_zooms_into_a_box():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(6, 3, 32, 32).contiguous()
    assert torch.allclose(RandomResizedCrop((1.0, 1.0), (1.0, 1.0))(ramp), ramp, atol=1e-5)  # the whole image
    out = RandomResizedCrop((0.25, 0.25), (1.0, 1.0))(ramp, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape
    spans = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.allclose(spans, torch.full((6,), 0.5), atol=0.05)  # a box half the width, stretched back
    assert len({round(float(v), 3) for v in out[:, 0, 0, 0]}) > 1  # each image its own box
    assert torch.allclose(out[:, :, 0], out[:, :, -1], atol=1e-6)  # a horizontal ramp stays one
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop((0.0, 1.0))



@pytest.mark.parametrize("channels", ["rgb", "grey"])
def test_patch_label_is_the_quantised_colour_of_the_masked_region(channels):
    x = torch.rand(6, 3, 16, 16)
    fill = (0.25, 0.5, 0.75)
    masked, labels, boxes = MaskedPatchView(0.25, bins=4, channels=channels, fill=fill)(x, torch.Generator().manual_seed(1))
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        assert (h, w) == (4, 4)
        region = x[i, :, t: t + h, l: l + w]
        assert labels[i] == colour_class(region.mean((1, 2)), 4, channels)
        assert torch.allclose(masked[i, :, t: t + h, l: l + w], torch.tensor(fill).view(3, 1, 1).expand(3, h, w))
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[t: t + h, l: l + w] = False
        assert torch.equal(masked[i][:, outside], x[i][:, outside])


def test_patch_colour_classes_by_hand():
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    _, labels, _ = MaskedPatchView(0.5, bins=4)(red)
    assert labels.tolist() == [3 * 16]  # r bin 3, g bin 0, b bin 0
    grey = torch.full((1, 3, 8, 8), 0.6)
    assert MaskedPatchView(0.5, bins=4, channels="grey")(grey)[1].tolist() == [2]


def test_colorization_input_is_grey_and_labels_are_cell_colours():
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :, :4] = 1.0  # left half red
    x[0, 2, :, 4:] = 1.0  # right half blue
    grey, labels = ColorizationView(bins=2, grid=2)(x)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert torch.allclose(grey[0, 0, 0, 0], torch.tensor(0.299)) and torch.allclose(grey[0, 0, 0, 7], torch.tensor(0.114))
    assert labels.tolist() == [[[4, 1], [4, 1]]]  # red = 1·2², blue = 1
    y = torch.rand(3, 3, 16, 16)
    _, labels = ColorizationView(bins=4, grid=4)(y)
    assert torch.equal(labels, colour_class(F.avg_pool2d(y, 4).permute(0, 2, 3, 1), 4, "rgb"))


def test_corruption_masks_and_noises():
    x = torch.full((4, 3, 16, 16), 0.5)
    out, dropped = CorruptionView("mask", mask_ratio=0.3)(x)
    assert torch.all(out[dropped.expand_as(out)] == 0) and torch.all(out[~dropped.expand_as(out)] == 0.5)
    assert 0.1 < dropped.float().mean() < 0.5
    out, _ = CorruptionView("gaussian", sigma=0.1)(x)
    assert 0.07 < float((out - x).std()) < 0.13 and out.min() >= 0 and out.max() <= 1


def test_denoising_target_is_the_clean_image():
    task = DenoisingAutoencoder(backbone(), noise="mask", output_size=8)
    images = shapes(2)
    batch = task.collate(images)
    clean = task.backbone.preprocess(images)["pixel_values"]
    assert torch.allclose(batch["target"], F.adaptive_avg_pool2d(clean, 8), atol=1e-5)
    assert not torch.allclose(batch["inputs"]["pixel_values"], clean)


# --- training ----------------------------------------------------------------------------------------

TASKS = {
    "rotation": lambda bb: RotationPrediction(bb),
    "patch": lambda bb: PatchColor(bb, bins=3),
    # A half-image patch: with a quarter patch 8 images give too weak a signal to learn in 10 steps.
    "patch-grey": lambda bb: PatchColor(bb, bins=4, channels="grey", patch_fraction=0.5),
    "colorize": lambda bb: PatchColor(bb, mode="colorize", bins=2, grid=2),
    "denoise": lambda bb: DenoisingAutoencoder(bb, output_size=8),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_pretext_loss_falls(name):
    task = TASKS[name](backbone())
    history = trainer(epochs=10, lr=5e-3).fit(task, shapes(8))
    losses = [h["train_loss"] for h in history]
    # Fresh random views every epoch make single epochs noisy: compare the first with the last three.
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0], (name, losses)
    metrics = trainer().evaluate(task, shapes(8))
    assert np.isfinite(metrics["loss"]) and ("accuracy" in metrics) == (name != "denoise")


def test_save_load_finetune_chain(tmp_path):
    task = RotationPrediction(backbone())
    trainer(epochs=2).fit(task, shapes(8))
    task.backbone.save_pretrained(tmp_path / "rot")
    bb = tk.load_backbone(tmp_path / "rot")
    for key, value in task.backbone.state_dict().items():
        assert torch.equal(value, bb.state_dict()[key]), key
    model = tk.TransferModel(bb, tk.heads.Classification(10))
    labelled = [(img, i % 10) for i, img in enumerate(shapes(10) * 2)]
    history = trainer(epochs=1, metric="accuracy").fit(model, labelled, labelled)
    assert "val_accuracy" in history[-1]


def test_text_backbone_is_refused():
    class Text:
        modality = "text"

    with pytest.raises(InputError, match="image backbone"):
        RotationPrediction.__new__(RotationPrediction).__init__(Text())


# --- data: folders, lists, bad inputs --------------------------------------------------------------

def write_folder(root, n: int = 5):
    from PIL import Image

    for i, img in enumerate(shapes(n)):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_streamed_recursively_and_trains(tmp_path):
    root = write_folder(tmp_path / "imgs", 5)
    task = RotationPrediction(backbone())
    corpus = task.examples(str(root))
    assert isinstance(corpus, ImageFolderCorpus) and not isinstance(corpus, list)
    assert len(list(corpus.files())) == 5
    images = list(corpus)
    assert len(images) == 5 and all(im.mode == "RGB" and im.size == (24, 24) for im in images)
    history = trainer(epochs=1, batch_size=2).fit(task, root)
    assert np.isfinite(history[0]["train_loss"])


def test_lists_and_arrays_are_accepted():
    task = PatchColor(backbone(), channels="grey")
    digits = np.random.default_rng(0).random((4, 8, 8))  # N×H×W greyscale floats in 0–1
    assert len(task.examples(digits)) == 4
    assert len(task.examples([torch.rand(3, 9, 9), shapes(1)[0]])) == 2
    with pytest.raises(DataError, match="empty"):
        task.examples([])


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no image files"):
        RotationPrediction(backbone()).examples(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderCorpus(tmp_path / "nope")


def test_undecodable_image_names_the_file(tmp_path):
    root = write_folder(tmp_path / "imgs", 2)
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    task = RotationPrediction(backbone())
    with pytest.raises(DataError, match="broken.jpg"):
        trainer().fit(task, root)
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert len(list(ImageFolderCorpus(root, on_error="skip"))) == 2
    with pytest.raises(InputError, match="broken.jpg"):  # a list of paths is decoded by the preprocessor
        task.collate([str(root / "broken.jpg")])


def test_colorize_refuses_grey_channels():
    with pytest.raises(ValueError, match="colour images"):
        PatchColor(backbone(), mode="colorize", channels="grey")
