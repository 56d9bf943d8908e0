"""Image classification augmentation: per-image policies, random erasing, mixup / cutmix and the soft-target loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.tasks import ClassificationTask
from transferkit.tasks.augment import ImageAugment, soft_cross_entropy
from transferkit.tasks.classification import cross_entropy


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)]
    return list(zip(images, [i % 3 for i in range(n)]))


def _model():
    torch.manual_seed(0)
    backbone = tk.load_backbone("timm:test_efficientnet", weights=None, image_size=32)
    return tk.TransferModel(backbone, tk.heads.Classification(3))


def test_one_hot_soft_targets_are_the_class_id_cross_entropy_and_the_gradient_is_softmax_minus_target():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 1])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for w in (None, weights):
        for smoothing in (0.0, 0.1):
            soft, hard = soft_cross_entropy(logits, one_hot, w, smoothing), cross_entropy(logits, labels, w, smoothing)
            assert torch.allclose(soft["loss"], hard["loss"]) and float(soft["num_items"]) == float(hard["num_items"])
    targets = torch.softmax(torch.randn(6, 4), -1)
    loss = soft_cross_entropy(logits, targets)["loss"]
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(grad, (logits.softmax(-1) - targets).detach() / 6, atol=1e-6)


def test_mixup_mixes_images_and_targets_alike_and_targets_sum_to_one():
    torch.manual_seed(0)
    pixels = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixed, targets = ImageAugment(policy=None, mixup=0.4).mix(pixels, labels, 3)
    assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
    lam = float(targets[0, labels[0]])  # labels[0] differs from the rolled one (labels[-1])
    assert torch.allclose(mixed, lam * pixels + (1 - lam) * pixels.roll(1, 0), atol=1e-6)
    assert torch.allclose(targets, lam * torch.eye(3)[labels] + (1 - lam) * torch.eye(3)[labels.roll(1, 0)])


def test_cutmix_pastes_a_box_whose_area_is_the_targets_share():
    torch.manual_seed(3)
    pixels = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 20, 20).clone()  # image i is all i
    labels = torch.tensor([0, 1, 2, 0])
    mixed, targets = ImageAugment(policy=None, cutmix=1.0).mix(pixels, labels, 3)
    pasted = float((mixed[1] == 0).float().mean())  # image 1 got a box of image 0
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert float(targets[1, 1]) == pytest.approx(1 - pasted, abs=1e-6)


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    model = _model()
    augment = ImageAugment(policy="trivial", erasing=1.0, mixup=0.2, cutmix=1.0)
    task = ClassificationTask(model, augment=augment)
    examples = task.examples(_images())
    plain = ClassificationTask(model).collate(examples[:4])
    task.eval()
    assert torch.equal(task.collate(examples[:4])["inputs"]["pixel_values"], plain["inputs"]["pixel_values"])
    assert "targets" not in task.collate(examples[:4])
    task.train()
    torch.manual_seed(0)
    batch = task.collate(examples[:4])
    assert batch["targets"].shape == (4, 3) and torch.allclose(batch["targets"].sum(1), torch.ones(4))
    assert not torch.equal(batch["inputs"]["pixel_values"], plain["inputs"]["pixel_values"])
    torch.manual_seed(0)
    assert torch.equal(task.collate(examples[:4])["inputs"]["pixel_values"], batch["inputs"]["pixel_values"])
    out = task(batch)
    assert torch.isfinite(out["loss"]) and out["logits"].shape == (4, 3)


@pytest.mark.parametrize("policy", ["trivial", "randaugment", "autoaugment"])
def test_each_policy_changes_images_and_keeps_their_shape_and_range(policy):
    torch.manual_seed(1)
    images = [torch.rand(3, 20, 24) for _ in range(8)]
    out = ImageAugment(policy=policy).images(images)
    assert all(o.shape == x.shape and o.min() >= 0 and o.max() <= 1 for o, x in zip(out, images))
    assert any(not torch.allclose(o, x, atol=1 / 255) for o, x in zip(out, images))


def test_an_augmented_run_trains_and_resumes_in_workers(tmp_path):
    model = _model()
    task = model.task(augment=ImageAugment(policy="randaugment", mixup=0.2, cutmix=1.0, erasing=0.25))
    history = tk.Trainer(epochs=2, lr=1e-2, batch_size=4, progress=False, num_workers=1, loggers=()).fit(
        task, _images(), _images(6, seed=1))
    assert len(history) == 2 and all(np.isfinite(r["train_loss"]) for r in history)


def test_bad_settings_and_a_text_model_are_refused(assets):
    with pytest.raises(ConfigError, match="policy must be one of"):
        ImageAugment(policy="auto")
    with pytest.raises(ConfigError, match="alpha of a Beta"):
        ImageAugment(mixup=-1)
    with pytest.raises(ConfigError, match="takes an ImageAugment"):
        ClassificationTask(_model(), augment="trivial")
    text = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(2))
    with pytest.raises(ConfigError, match="ImageAugment augments images"):
        ClassificationTask(text, augment=ImageAugment()).examples([("a cat", "x"), ("a dog", "y")])


def test_finetune_augments_image_classification_and_records_it(tmp_path, capsys):
    import json

    from transferkit.cli import main
    from test_small_data_defaults import digit_folder

    data = digit_folder(tmp_path / "labelled", per_class=4)
    out = tmp_path / "m"
    assert main(["finetune", "--backbone", "timm:test_resnet", "--option", "weights=none", "--data", str(data),
                 "--output", str(out), "--epochs", "2", "--augment", "trivial", "--mixup", "0.2", "--cutmix", "1",
                 "--erasing", "0.25", "--no-progress"]) == 0
    settings = json.loads((out / "config.json").read_text())["training"]["settings"]
    assert settings["augment"] == {"policy": "trivial", "num_ops": 2, "magnitude": 9, "erasing": 0.25, "mixup": 0.2,
                                   "cutmix": 1.0}
    assert tk.TransferModel.from_pretrained(out).predict([str(next(data.rglob("*.png")))])
    with open(tmp_path / "t.csv", "w") as f:
        f.write("text,label\na cat,x\na dog,y\n")
    assert main(["finetune", "--backbone", "timm:test_resnet", "--task", "regression", "--data", str(tmp_path / "t.csv"),
                 "--output", str(tmp_path / "r"), "--mixup", "0.2", "--no-progress"]) == 1
    assert "--word-mixup augment classification; this run's task is regression" in capsys.readouterr().err


def test_text_augment_swaps_deletes_and_replaces_the_stated_shares():
    from transferkit.tasks.augment import TextAugment

    text = " ".join(f"w{i}" for i in range(40))
    torch.manual_seed(0)
    swapped = TextAugment(delete=0, swap=0.1, replace=0).texts([text])[0].split()
    assert sorted(swapped) == sorted(text.split()) and swapped != text.split()  # a permutation, 4 swaps
    torch.manual_seed(0)
    kept = [len(t.split()) for t in TextAugment(delete=0.25, swap=0, replace=0).texts([text] * 200)]
    assert 0.7 < sum(kept) / (40 * 200) < 0.8  # each word dropped with probability 0.25
    torch.manual_seed(0)
    replaced = TextAugment(delete=0, swap=0, replace=0.1, vocabulary=["NEW"]).texts([text])[0].split()
    assert len(replaced) == 40 and 1 <= replaced.count("NEW") <= 4  # 4 draws, some may hit the same word
    assert TextAugment(delete=0.99, swap=0, replace=0).texts(["a b c"])[0]  # one word always stays
    torch.manual_seed(3)
    a = TextAugment().fit([text]).texts([text])
    torch.manual_seed(3)
    assert TextAugment().fit([text]).texts([text]) == a  # repeatable under the Trainer's seed
    with pytest.raises(ConfigError, match="share of the words"):
        TextAugment(delete=1.0)
    with pytest.raises(ConfigError, match="needs replacement words"):
        TextAugment().texts([text])


def test_text_augment_changes_training_batches_only_and_takes_words_from_the_training_texts(assets):
    from transferkit.tasks.augment import ImageAugment, TextAugment

    from conftest import TOPIC_PAIRS

    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    task = model.task(augment=TextAugment(delete=0.2, swap=0.2, replace=0.2))
    examples = task.examples(TOPIC_PAIRS[:20])
    task.prepare(examples)
    assert set(task.augment.vocabulary) == {w for t, _ in TOPIC_PAIRS[:20] for w in t.split()}
    task.eval()
    plain = task.collate(examples)
    task.train()
    torch.manual_seed(0)
    augmented = task.collate(examples)
    before, after = plain["inputs"]["input_ids"], augmented["inputs"]["input_ids"]
    assert before.shape != after.shape or not torch.equal(before, after)  # the training words changed
    task.eval()
    assert torch.equal(task.collate(examples)["inputs"]["input_ids"], before)  # evaluation: never augmented
    task.train()
    assert torch.equal(plain["labels"], augmented["labels"])
    history = tk.Trainer(epochs=2, lr=0.02, batch_size=8, progress=False, loggers=()).fit(task, TOPIC_PAIRS[:30],
                                                                                         TOPIC_PAIRS[45:54])
    assert len(history) == 2
    with pytest.raises(ConfigError, match="ImageAugment augments images"):
        model.task(augment=ImageAugment()).examples(TOPIC_PAIRS[:5])
    image_model = tk.TransferModel(tk.load_backbone("timm:test_resnet", weights=None, image_size=32),
                                   tk.heads.Classification(2))
    with pytest.raises(ConfigError, match="TextAugment augments texts"):
        image_model.task(augment=TextAugment()).examples(([torch.rand(3, 32, 32)] * 2, [0, 1]))


def test_finetune_eda_records_the_text_augmentation(assets, tmp_path):
    import json

    from transferkit.cli import main

    from conftest import TOPIC_PAIRS, write_labelled_csv

    write_labelled_csv(tmp_path / "train.csv", TOPIC_PAIRS[:40])
    out = tmp_path / "m"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "1", "--eda", "0.1", "--word-mixup", "0.2", "--no-progress"]) == 0
    settings = json.loads((out / "config.json").read_text())["training"]["settings"]
    assert settings["augment"] == {"delete": 0.1, "swap": 0.1, "replace": 0.1, "vocabulary": None, "mixup": 0.2}
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "x"), "--eda", "0.1", "--mixup", "0.2", "--no-progress"]) == 1


def test_word_mixup_mixes_embeddings_masks_and_targets_alike(assets):
    from transferkit.tasks.augment import TextAugment, mix_rows

    from conftest import SENTENCES

    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(mix_rows(x, 0.25), 0.25 * x + 0.75 * x[[2, 0, 1]])
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(3))
    task = model.task(augment=TextAugment(delete=0, swap=0, replace=0, mixup=0.4)).train()
    examples = task.examples((SENTENCES[:4], [0, 1, 2, 0]))
    task.eval()
    plain = task.collate(examples)
    task.train()
    torch.manual_seed(1)
    batch = task.collate(examples)
    lam = float(batch["mix"])
    assert 0 < lam < 1 and torch.allclose(batch["targets"].sum(-1), torch.ones(4))
    assert batch["targets"][1].tolist() == pytest.approx([1 - lam, lam, 0])  # class 1 (λ) mixed with the row before (0)
    mask = plain["inputs"]["attention_mask"]
    assert torch.equal(batch["inputs"]["attention_mask"], torch.maximum(mask, mask.roll(1, 0)))
    task.model.eval()  # no dropout: compare with the embeddings mixed by hand
    table = model.backbone.encoder.model.get_input_embeddings()
    handle = table.register_forward_hook(lambda m, a, out: lam * out + (1 - lam) * out.roll(1, 0))
    by_hand = model(**batch["inputs"])["logits"]
    handle.remove()
    out = task(batch)
    assert torch.allclose(out["logits"], by_hand, atol=1e-6)
    assert not torch.allclose(out["logits"], model(**batch["inputs"])["logits"], atol=1e-4)  # the hook is gone after
    expected = soft_cross_entropy(by_hand.detach(), batch["targets"])["loss"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    glove = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    from conftest import TOPIC_PAIRS

    history = tk.Trainer(epochs=2, lr=0.02, batch_size=8, progress=False, loggers=()).fit(
        glove.task(augment=TextAugment(mixup=0.2)), TOPIC_PAIRS[:30], TOPIC_PAIRS[45:54])
    assert all(np.isfinite(r["train_loss"]) for r in history)
    with pytest.raises(ConfigError, match="alpha of a Beta"):
        TextAugment(mixup=-1)
