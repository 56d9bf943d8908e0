"""Object detection: torchvision's detectors over tiny random timm backbones; data forms, geometry, COCO mAP."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.data.boxes import BoxError, load_boxes
from transferkit.errors import DataError, LabelError
from transferkit.tasks.dense import DenseInputs
from transferkit.tasks.detection import DetectionMetrics, coco_pair


def red_boxes(n: int = 16, size: int = 64, seed: int = 0) -> list:
    """Dark noisy images with 0-2 red rectangles each, labelled "red"."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.uniform(0, 0.3, (size, size, 3)).astype(np.float32)
        boxes = []
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.integers(0, size - 24, 2)
            w, h = rng.integers(10, 24, 2)
            img[y:y + h, x:x + w, 0] += 0.6
            boxes.append([int(x), int(y), int(x + w), int(y + h)])
        out.append((img, {"boxes": boxes, "labels": ["red"] * len(boxes)}))
    return out


def resnet(size: int = 64):
    return tk.load_backbone("timm:test_resnet", weights=None, image_size=size)


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "faster_rcnn"])
def test_each_arch_trains_and_predicts_in_original_pixels(arch):
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Detection(arch=arch, channels=64))
    data = red_boxes()
    history = tk.Trainer(epochs=2, batch_size=4, lr=1e-3, progress=False).fit(model, data, data[:4])
    assert model.head.labels == ["red"]
    assert {"val_map", "val_map_50", "val_map_75", "val_mar_100"} <= set(history[-1])
    assert all(np.isfinite(r["train_loss"]) for r in history)
    wide = np.zeros((40, 120, 3), np.float32)  # letterboxed: scale 64/120
    result = model.predict(wide)
    assert set(result) == {"boxes", "labels", "scores"}
    boxes = np.asarray(result["boxes"]).reshape(-1, 4)
    assert (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 40).all() and (boxes >= 0).all()
    assert result["scores"] == sorted(result["scores"], reverse=True)


def test_the_loss_falls_on_a_few_images():
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
    history = tk.Trainer(epochs=4, batch_size=4, lr=2e-3, progress=False).fit(model.task(augment=None), red_boxes(8))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"], history


def test_boxes_follow_flips_and_the_letterbox_exactly():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    dense = DenseInputs(resnet(), augment=v2.RandomHorizontalFlip(p=1.0), kind="detection")
    image = torch.zeros(3, 40, 80)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 5.0, 30.0, 25.0]]), format="XYXY", canvas_size=(40, 80))
    pixels, moved, where = dense(image, {"boxes": boxes}, train=True)
    assert where.scale == pytest.approx(64 / 80) and where.content == (32, 64)
    # flipped in the 80-wide image: x1 = 80 - 30, x2 = 80 - 10; then scaled by 0.8
    torch.testing.assert_close(moved["boxes"].as_subclass(torch.Tensor), torch.tensor([[40.0, 4.0, 56.0, 20.0]]))
    back = where.detections_to_original({"boxes": moved["boxes"].as_subclass(torch.Tensor),
                                         "labels": torch.zeros(1, dtype=torch.long), "scores": torch.ones(1)})
    torch.testing.assert_close(back["boxes"], torch.tensor([[50.0, 5.0, 70.0, 25.0]]))


def test_streamed_map_equals_one_cocoeval_over_everything():
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    truths, preds, sizes = [], [], []
    for i in range(9):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, n)
        truths.append({"boxes": boxes, "labels": labels})
        keep = rng.random(n) < 0.8
        noisy = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        extra = rng.uniform(0, 60, (2, 2))
        noisy = np.concatenate([noisy, np.concatenate([extra, extra + 10], 1)])
        preds.append({"boxes": noisy, "labels": np.concatenate([labels[keep], rng.integers(0, 2, 2)]),
                      "scores": rng.random(len(noisy))})
        sizes.append((100, 100))
    metrics = DetectionMetrics(["a", "b"])
    for start in (0, 4, 7):  # uneven batches
        end = {0: 4, 4: 7, 7: 9}[start]
        metrics.add(preds[start:end], truths[start:end], sizes[start:end])
    streamed = metrics.compute()
    gt, dt = coco_pair(range(1, 10), preds, truths, sizes, 2)
    evaluator = COCOeval(gt, dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert streamed["map"] == pytest.approx(evaluator.stats[0])
    assert streamed["map_50"] == pytest.approx(evaluator.stats[1])
    assert streamed["map_75"] == pytest.approx(evaluator.stats[2])
    assert streamed["mar_100"] == pytest.approx(evaluator.stats[8])
    assert 0 < streamed["map"] < 1


def test_faster_rcnn_built_our_way_equals_torchvisions_builder():
    """A torchvision ResNet-50 + our FPN/RPN/RoI heads, given the weights of torchvision's own
    fasterrcnn_resnet50_fpn, gives its detections on an image it does not resize."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=128,
                                        max_size=128, box_score_thresh=0.0).eval()
    backbone = tk.load_backbone("torchvision:resnet50", weights=None, image_size=128)
    model = tk.TransferModel(backbone, tk.heads.Detection(["a", "b"], arch="faster_rcnn", channels=256, levels=4,
                                                          score_threshold=0.0)).eval()
    state = reference.state_dict()
    ours = {}
    for k, v in state.items():
        if k.startswith("backbone.body."):
            ours["backbone.encoder.model." + k.removeprefix("backbone.body.")] = v
        elif k.startswith("backbone.fpn."):
            ours["head.detector.backbone.fpn.fpn." + k.removeprefix("backbone.fpn.")] = v
        else:
            ours["head.detector." + k] = v
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and all(k.startswith("backbone.encoder.model.fc.") for k in missing), missing
    image = torch.rand(3, 128, 128)
    with torch.no_grad():
        expected = reference([image])[0]
        got = model.predict(image.numpy().transpose(1, 2, 0))
    assert len(expected["boxes"]) > 0
    torch.testing.assert_close(torch.tensor(got["boxes"]), expected["boxes"], atol=0.02, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(got["scores"]), expected["scores"], atol=1e-4, rtol=1e-3)
    assert got["labels"] == [["a", "b"][int(i) - 1] for i in expected["labels"]]


def test_save_load_gives_identical_detections(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
    tk.Trainer(epochs=1, batch_size=4, lr=1e-3, progress=False).fit(model, red_boxes(8))
    images = [x for x, _ in red_boxes(3, seed=4)]
    model.save_pretrained(tmp_path / "det")
    again = tk.TransferModel.from_pretrained(tmp_path / "det")
    assert again.head.config == model.head.config
    assert again.predict(images) == model.predict(images)


def write_images(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, _) in enumerate(data):
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_coco_voc_and_csv_files_read_alike(tmp_path):
    data = red_boxes(4)
    write_images(tmp_path / "images", data)
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in range(4)],
            "categories": [{"id": 5, "name": "red"}],
            "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": 5, "iscrowd": 0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                            for i, (_, t) in enumerate(data) for k, b in enumerate(t["boxes"])]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with open(tmp_path / "b.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        for i, (_, t) in enumerate(data):
            for b in t["boxes"]:
                w.writerow([f"images/{i}.png", *b, "red"])
            if not t["boxes"]:
                w.writerow([f"images/{i}.png", "", "", "", "", ""])
    voc = tmp_path / "voc"
    voc.mkdir()
    for i, (_, t) in enumerate(data):
        objects = "".join(f"<object><name>red</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                          f"<ymax>{b[3]}</ymax></bndbox></object>" for b in t["boxes"])
        (voc / f"{i}.xml").write_text(f"<annotation><filename>{i}.png</filename>{objects}</annotation>")
        Image.open(tmp_path / "images" / f"{i}.png").save(voc / f"{i}.png")
    (from_coco, names), (from_csv, _), (from_voc, _) = (load_boxes(tmp_path / "c.json"), load_boxes(tmp_path / "b.csv"),
                                                        load_boxes(voc))
    assert names == ["red"]
    for got in (from_csv, from_voc):
        assert len(got) == 4
        for a, b in zip(from_coco, got):
            assert np.array_equal(a.boxes, b.boxes) and a.labels == b.labels
    assert any(len(e.boxes) == 0 for e in from_csv)  # background-only images are kept
    model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
    tk.Trainer(epochs=1, batch_size=2, progress=False).fit(model, tmp_path / "b.csv")


def test_bad_boxes_and_labels_are_named(tmp_path):
    model = tk.TransferModel(resnet(), tk.heads.Detection(["red"], channels=64))
    task = model.task()
    img = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(BoxError, match=r"pair 0: box 0 \[x1=30, y1=5, x2=10, y2=25\] has x2 <= x1"):
        task.examples([(img, {"boxes": [[30, 5, 10, 25]], "labels": ["red"]})])
    with pytest.raises(BoxError, match="leave the 64×64 image"):
        task.examples([(img, {"boxes": [[30, 5, 90, 25]], "labels": ["red"]})])
    with pytest.raises(BoxError, match="2 boxes but 1 labels"):
        task.examples([(img, {"boxes": [[1, 1, 5, 5], [2, 2, 6, 6]], "labels": ["red"]})])
    with pytest.raises(LabelError, match=r"classes the head does not know \['red'\]: pair 1 \(\['blue'\]\)"):
        task.examples([(img, {"boxes": [], "labels": []}), (img, {"boxes": [[1, 1, 5, 5]], "labels": ["blue"]})])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="has no rows"):
        task.examples(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("image,x\n")
    with pytest.raises(DataError, match="has no rows"):
        task.examples(tmp_path / "cols.csv")
    (tmp_path / "cols2.csv").write_text("image,x\na.png,1\n")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['image_path'"):
        task.examples(tmp_path / "cols2.csv")
    (tmp_path / "none.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="lists no images"):
        task.examples(tmp_path / "none.json")
    fresh = tk.TransferModel(resnet(), tk.heads.Detection(channels=64)).task()
    with pytest.raises(LabelError, match="no box at all"):
        fresh.examples([(img, {"boxes": [], "labels": []})])
    # images with no boxes are fine once the classes are known
    assert len(task.examples([(img, {"boxes": [], "labels": []})])) == 1


def test_cli_finetune_predict_evaluate_detection(tmp_path, capsys):
    from transferkit.cli import main

    data = red_boxes(8)
    write_images(tmp_path / "images", data)
    with open(tmp_path / "b.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        for i, (_, t) in enumerate(data):
            for b in t["boxes"] or [["", "", "", ""]]:
                w.writerow([f"images/{i}.png", *b, "red" if t["boxes"] else ""])
    out = tmp_path / "model"
    assert main(["finetune", "--task", "detection", "--arch", "retinanet", "--backbone", "timm:test_resnet",
                 "--option", "weights=none", "--option", "image_size=64", "--data", str(tmp_path / "b.csv"),
                 "--output", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 images" in printed and "val_map=" in printed
    assert json.loads((out / "config.json").read_text())["head"]["arch"] == "retinanet"
    assert main(["evaluate", "--model", str(out), "--data", str(tmp_path / "b.csv"), "--json"]) == 0
    assert {"map", "map_50", "map_75"} <= set(json.loads(capsys.readouterr().out))
    images = [str(tmp_path / "images" / f"{i}.png") for i in range(3)]
    assert main(["predict", "--model", str(out), *images, "--output-dir", str(tmp_path / "pred")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["input"] for x in lines] == images and all(set(x) == {"input", "boxes", "labels", "scores"} for x in lines)
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(results) == sum(len(x["boxes"]) for x in lines)
    assert all(set(r) == {"image_id", "file_name", "category_id", "bbox", "score"} for r in results)


def test_accumulation_trains_detection():
    """torchvision normalises detection losses per batch, so accumulate=2 is not bit-equal to one batch; it trains."""
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
    history = tk.Trainer(epochs=2, batch_size=4, accumulate=2, lr=2e-3, progress=False).fit(
        model.task(augment=None), red_boxes(8))
    assert all(np.isfinite(r["train_loss"]) for r in history)


def test_the_report_draws_validation_boxes(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
    data = red_boxes(8)
    trainer = tk.Trainer(epochs=1, batch_size=4, output_dir=str(tmp_path / "run"), loggers=("report",), progress=False)
    trainer.fit(model, data[:4], data[4:])
    assert Image.open(tmp_path / "run" / "detection_samples.png").size[1] > 4 * 100


def test_channels_last_trains_the_same_function():
    data = red_boxes(8)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = tk.TransferModel(resnet(), tk.heads.Detection(channels=64))
        history = tk.Trainer(epochs=1, batch_size=4, lr=1e-3, channels_last=channels_last, progress=False).fit(
            model.task(augment=None), data[:4], data[4:])
        results.append(history[0])
    assert results[1]["train_loss"] == pytest.approx(results[0]["train_loss"], rel=1e-4)


def test_a_crop_that_leaves_a_box_outside_drops_it_with_its_label():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    dense = DenseInputs(resnet(), augment=v2.CenterCrop(40), kind="detection")
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 1.0, 8.0, 8.0], [30.0, 30.0, 50.0, 50.0]]), format="XYXY",
                                     canvas_size=(80, 80))
    _, moved, _ = dense(torch.zeros(3, 80, 80), {"boxes": boxes, "labels": torch.tensor([0, 1])}, train=True)
    assert moved["labels"].tolist() == [1]  # the corner box is outside the central 40x40 crop
    torch.testing.assert_close(moved["boxes"].as_subclass(torch.Tensor), torch.tensor([[16.0, 16.0, 48.0, 48.0]]))
