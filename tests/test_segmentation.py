"""Semantic segmentation: the FPN head on tiny random timm backbones, its data forms, geometry and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.data.masks import IGNORE, MaskError, load_masked, read_mask
from transferkit.errors import ConfigError, DataError, LabelError
from transferkit.tasks.dense import DenseInputs
from transferkit.tasks.segmentation import SegmentationMetrics


def squares(n: int = 24, size: tuple[int, int] = (32, 32), seed: int = 0) -> list:
    """Dark noisy images with one bright rectangle each; the mask is the rectangle (class 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = size
        img = rng.uniform(0.0, 0.3, (h, w, 3)).astype(np.float32)
        mask = np.zeros((h, w), dtype=np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        bottom, right = top + rng.integers(h // 4, h // 2), left + rng.integers(w // 4, w // 2)
        img[top:bottom, left:right] += 0.6
        mask[top:bottom, left:right] = 1
        out.append((img, mask))
    return out


def resnet(image_size: int = 32):
    return tk.load_backbone("timm:test_resnet", weights=None, image_size=image_size)


@pytest.mark.parametrize("spec, stride", [("timm:test_resnet", 4), ("timm:test_vit", 16)])
def test_logits_come_at_the_finest_level_and_predict_at_the_original_size(spec, stride):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(spec, weights=None, image_size=32), tk.heads.Segmentation(num_classes=3))
    assert model.head.stride == stride
    out = model(pixel_values=torch.randn(2, 3, 32, 32))["logits"]
    assert out.shape == (2, 3, 32 // stride, 32 // stride)
    masks = model.predict([np.zeros((50, 30, 3), np.float32), np.zeros((20, 70, 3), np.float32)])
    assert [m.shape for m in masks] == [(50, 30), (20, 70)] and masks[0].dtype == np.uint8
    probabilities = model.head.probabilities(model, np.zeros((50, 30, 3), np.float32))
    assert probabilities.shape == (3, 50, 30)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(50, 30))


def test_the_loss_falls_and_the_squares_are_found():
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(labels=["background", "square"], channels=32))
    data = squares(32)
    history = tk.Trainer(epochs=8, batch_size=8, lr=3e-3, head_lr=3e-3, progress=False).fit(
        model.task(augment=None), data[:24], data[24:])
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"], history
    assert history[-1]["val_miou"] > 0.6, history
    assert set(history[-1]) >= {"val_miou", "val_dice", "val_pixel_accuracy", "val_iou_background", "val_iou_square"}


def test_dice_and_combined_losses_train():
    for loss in ("dice", "ce+dice"):
        torch.manual_seed(0)
        model = tk.TransferModel(resnet(), tk.heads.Segmentation(num_classes=2, channels=32, loss=loss))
        history = tk.Trainer(epochs=4, batch_size=8, lr=3e-3, progress=False).fit(model.task(augment=None),
                                                                                   squares(16))
        assert history[-1]["train_loss"] < history[0]["train_loss"], (loss, history)


def test_masks_follow_flips_and_crops_exactly():
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    blocks = np.kron(rng.integers(0, 2, (5, 5)), np.ones((8, 8)))  # 8-pixel blocks: few pixels on an edge
    image = torch.from_numpy(blocks[None].astype(np.float32)).expand(3, -1, -1).clone()
    mask = image[0].long()  # the mask is the image's own pattern: any geometric change must keep them equal
    dense = DenseInputs(resnet(), augment=v2.Compose([v2.RandomCrop(24), v2.RandomHorizontalFlip(p=1.0),
                                                       v2.RandomVerticalFlip(p=1.0)]))
    from torchvision import tv_tensors

    for _ in range(5):
        pixels, moved, where = dense(image, {"mask": tv_tensors.Mask(mask)}, train=True)
        unit = pixels * dense.std + dense.mean  # back to 0-1
        content = unit[0, :where.content[0], :where.content[1]].round().long()
        assert where.content == (32, 32)  # 24x24 crop letterboxed to 32x32 (nearest for the mask)
        got = moved["mask"][:32, :32]
        # The image is resized bilinearly and the mask with nearest: they agree away from pattern edges.
        agree = (content == got).float().mean()
        assert agree > 0.9
    # Without resampling (a 32x32 crop of a 32-pixel network) the two are identical.
    dense = DenseInputs(resnet(), augment=v2.Compose([v2.RandomCrop(32), v2.RandomHorizontalFlip(p=1.0)]))
    pixels, moved, where = dense(image, {"mask": tv_tensors.Mask(mask)}, train=True)
    assert torch.equal((pixels * dense.std + dense.mean)[0].round().long(), moved["mask"].as_subclass(torch.Tensor))


def test_letterbox_pads_with_ignored_pixels_and_maps_back_exactly():
    from torchvision import tv_tensors

    dense = DenseInputs(resnet(), augment=None)
    mask = torch.arange(16 * 8).reshape(16, 8) % 3
    pixels, moved, where = dense(torch.rand(3, 16, 8), {"mask": tv_tensors.Mask(mask)}, train=False)
    assert pixels.shape == (3, 32, 32) and where.scale == 2.0 and where.content == (32, 16)
    assert (moved["mask"][:, 16:] == IGNORE).all() and (pixels[:, :, 16:] == 0).all()
    back = where.to_original(moved["mask"][None].float(), mode="nearest")[0].long()
    assert torch.equal(back, mask)


def test_save_load_gives_identical_masks(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(labels=["bg", "fg"], channels=16))
    tk.Trainer(epochs=1, batch_size=8, lr=1e-3, progress=False).fit(model, squares(8))
    images = [x for x, _ in squares(3, size=(40, 28), seed=5)]
    model.save_pretrained(tmp_path / "seg")
    again = tk.TransferModel.from_pretrained(tmp_path / "seg")
    assert again.head.config == model.head.config
    for a, b in zip(model.predict(images), again.predict(images)):
        assert np.array_equal(a, b)
    torch.testing.assert_close(model.head.probabilities(model, images[0]), again.head.probabilities(again, images[0]))


def test_miou_equals_a_direct_confusion_matrix_computation():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    truths = [rng.integers(0, 4, (9, 7)) for _ in range(5)]
    truths[0][0, :3] = IGNORE
    preds = [np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, 4, t.shape)) % 4 for t in truths]
    metrics = SegmentationMetrics(["a", "b", "c", "d"])
    metrics.add(preds[:2], truths[:2])
    metrics.add(preds[2:], truths[2:])
    keep = np.concatenate([t.ravel() for t in truths]) != IGNORE
    t = np.concatenate([t.ravel() for t in truths])[keep]
    p = np.concatenate([p.ravel() for p in preds])[keep]
    cm = confusion_matrix(t, p, labels=range(4))
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    out = metrics.compute()
    assert out["miou"] == pytest.approx(iou.mean())
    assert out["iou_c"] == pytest.approx(iou[2])
    assert out["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    dice = 2 * np.diag(cm) / (cm.sum(0) + cm.sum(1))
    assert out["dice"] == pytest.approx(dice.mean())


def write_folder(root, pairs, mask_suffix=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (img, mask) in enumerate(pairs):
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(root / "images" / f"t{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"t{i}{mask_suffix}")
    return root


def test_a_folder_of_images_and_masks_trains_and_names_its_classes(tmp_path):
    root = write_folder(tmp_path / "data", squares(8))
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(channels=16))
    tk.Trainer(epochs=1, batch_size=4, progress=False).fit(model, root)
    assert model.head.labels == ["0", "1"]


def test_a_palette_mask_gives_its_indices(tmp_path):
    mask = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    im = Image.fromarray(mask, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png", "m"), mask)
    Image.fromarray(np.stack([mask * 100, mask, mask], -1)).save(tmp_path / "rgb.png")
    with pytest.raises(MaskError, match="colour"):
        read_mask(tmp_path / "rgb.png", "rgb")


def test_coco_polygons_paint_their_category(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}],
            "categories": [{"id": 3, "name": "leaf"}, {"id": 9, "name": "stem"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 9, "iscrowd": 0,
                             "segmentation": [[5, 5, 15, 5, 15, 10, 5, 10]]}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    examples, names = load_masked(tmp_path / "c.json")
    assert names == ["background", "leaf", "stem"]
    mask = read_mask(examples[0].mask, examples[0].origin)
    assert mask.shape == (20, 30) and set(np.unique(mask)) == {0, 2}
    assert (mask[6:10, 6:15] == 2).all() and (mask[:4] == 0).all()
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(channels=16))
    model.task().examples(tmp_path / "c.json")
    assert model.head.labels == names


def test_bad_segmentation_data_is_named(tmp_path):
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(labels=["bg", "fg"], channels=16))
    task = model.task()
    img, mask = squares(1)[0]
    with pytest.raises(MaskError, match="pair 0: the mask is 16×32 pixels but its image is 32×32"):
        task.examples([(img, mask[:16])])
    with pytest.raises(LabelError, match=r"pair 1: the mask holds class indices 5"):
        task.examples([(img, mask), (img, np.where(mask, 5, 0))])
    with pytest.raises(LabelError, match="background \\(class 0\\) only"):
        task.examples([(img, np.zeros_like(mask))])
    with pytest.raises(DataError, match="empty list"):
        task.examples([])
    root = write_folder(tmp_path / "d", squares(2))
    (root / "masks" / "t1.png").unlink()
    with pytest.raises(DataError, match=r"images/t1.jpg \(no mask\)"):
        task.examples(root)
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="lists no images"):
        task.examples(tmp_path / "empty.json")
    with pytest.raises(ConfigError, match="image backbone"):
        DenseInputs(type("TextBackbone", (), {"modality": "text", "preprocessor": None})())
    with pytest.raises(ConfigError, match="at least 2 distinct classes"):
        tk.heads.Segmentation(labels=["only"])


def test_cli_finetune_predict_evaluate_segmentation(tmp_path, capsys):
    from transferkit.cli import main

    root = write_folder(tmp_path / "data", squares(12))
    out = tmp_path / "model"
    assert main(["finetune", "--task", "segmentation", "--backbone", "timm:test_resnet", "--option", "weights=none",
                 "--option", "image_size=32", "--data", str(root), "--output", str(out), "--epochs", "2",
                 "--batch-size", "4", "--lr", "3e-3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "12 images with masks" in printed and "val_miou=" in printed
    assert main(["evaluate", "--model", str(out), "--data", str(root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"miou", "dice", "pixel_accuracy", "iou_0", "iou_1"} <= set(metrics)
    masks = tmp_path / "masks"
    images = sorted(str(p) for p in (root / "images").iterdir())[:3]
    assert main(["predict", "--model", str(out), *images, "--output-dir", str(masks)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["input"] for x in lines] == images and all((x["height"], x["width"]) == (32, 32) for x in lines)
    written = read_mask(lines[0]["mask"], "m")
    assert written.shape == (32, 32)
    assert sum(lines[0]["pixels"].values()) == 32 * 32
    # A second run would write over the masks: refused before anything is written.
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    assert main(["predict", "--model", str(out), *images, "--output-dir", str(masks)]) != 0
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before


def test_hierarchical_chain_rotation_pretraining_then_segmentation(tmp_path, capsys):
    """ImageNet-or-random weights → rotation pretraining on the unlabelled images → dense fine-tuning, by CLI."""
    from transferkit.cli import main

    root = write_folder(tmp_path / "data", squares(12))
    assert main(["pretrain", "rotation", "--backbone", "timm:test_resnet", "--option", "weights=none",
                 "--option", "image_size=32", "--data", str(root / "images"), "--output", str(tmp_path / "bb"),
                 "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    pretrained = tk.load_backbone(str(tmp_path / "bb"))
    assert main(["finetune", "--task", "segmentation", "--backbone", str(tmp_path / "bb"), "--data", str(root),
                 "--output", str(tmp_path / "seg"), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    capsys.readouterr()
    model = tk.TransferModel.from_pretrained(tmp_path / "seg")
    assert model.backbone.preprocessor.size == pretrained.preprocessor.size == (32, 32)


def test_the_report_draws_validation_masks(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Segmentation(num_classes=2, channels=16))
    data = squares(8)
    trainer = tk.Trainer(epochs=1, batch_size=4, output_dir=str(tmp_path / "run"), loggers=("report",), progress=False)
    trainer.fit(model, data[:4], data[4:])
    image = Image.open(tmp_path / "run" / "segmentation_samples.png")
    assert image.size[0] > 100 and image.size[1] > 4 * 100


def test_a_torchvision_vit_gives_stage_maps_for_dense_heads():
    backbone = tk.load_backbone("torchvision:vit_b_16", weights=None)  # torchvision's ViT takes its own size only
    stages = backbone.feature_info.stages
    assert len(stages) == 12 and stages[0].channels == 768 and stages[0].stride == 16
    pixels = torch.randn(1, 3, 224, 224)
    features = backbone(pixel_values=pixels, stages=True)
    assert [tuple(m.shape) for m in features.stages] == [(1, 768, 14, 14)] * 12
    # The map is the patch tokens in row-major order: patch (row 0, column 1) is token 2 (token 0 is the class token).
    captured = {}
    layer = backbone.encoder.model.encoder.layers[11]
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    backbone(pixel_values=pixels, stages=True)
    handle.remove()
    torch.testing.assert_close(features.stages[-1][0, :, 0, 1], captured["tokens"][0, 2])
    model = tk.TransferModel(backbone, tk.heads.Segmentation(num_classes=2, channels=16))
    assert model(pixel_values=pixels)["logits"].shape == (1, 2, 14, 14)


def test_channels_last_trains_the_same_function():
    """What CUDA turns on by default (channels_last for conv nets) gives the same run on the CPU."""
    data = squares(16)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = tk.TransferModel(resnet(), tk.heads.Segmentation(num_classes=2, channels=16))
        history = tk.Trainer(epochs=1, batch_size=8, lr=1e-3, channels_last=channels_last, progress=False).fit(
            model.task(augment=None), data[:8], data[8:])
        results.append(history[0])
    assert results[1]["val_loss"] == pytest.approx(results[0]["val_loss"], rel=1e-4)
    assert results[1]["val_miou"] == pytest.approx(results[0]["val_miou"], abs=1e-3)
