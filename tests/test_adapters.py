"""PEFT adapters on every backbone family: what trains, save → load bit-identical, merge, several adapters, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import transferkit as tk
from transferkit.backbones import adapters
from transferkit.errors import AdapterError, BaseMismatchError, ConfigError

from conftest import SENTENCES, raw_batch

METHODS = ["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "bottleneck", "bitfit", "norm_tuning"]
FOR_LANGUAGE_MODELS = ("prompt_tuning", "prefix_tuning")
# What each family cannot take, and why (the error is tested below).
CANNOT = {("glove", "ia3"): "word vectors have no linear layer to rescale",
          ("glove", "bitfit"): "no biases", ("glove", "norm_tuning"): "no normalisation layers"}
FAMILIES = ["hf", "glove", "timm", "timm-vit", "torchvision"]


@pytest.fixture(scope="module")
def bases(tiny_specs, tmp_path_factory) -> dict[str, str]:
    """Each family's tiny backbone saved once, so that a saved adapter can find the very same base again
    (random-weight vision networks are not rebuilt with the same weights from their spec)."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for family in FAMILIES:
        spec, options = tiny_specs[family]
        torch.manual_seed(0)
        out[family] = str(tk.load_backbone(spec, **options).save_pretrained(root / family))
    return out


def model_for(base: str, family: str) -> tk.TransferModel:
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone(base), tk.heads.Classification(num_classes=3))


def inputs(family: str) -> list:
    return raw_batch("text" if family in ("hf", "glove") else "image", 4)


def step(model: tk.TransferModel, family: str, steps: int = 2) -> None:
    """A few optimiser steps on whatever requires a gradient, so adapters hold non-initial values (Adam with a tiny
    eps: sign-like steps, visible even where a tiny random network's gradients are minute)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=0.05, eps=1e-30)
    batch = model.preprocess(inputs(family))
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        out = model(**batch)["logits"]
        (out.square().mean() + out[:, 0].mean()).backward()
        optimiser.step()


def cases():
    for family in FAMILIES:
        for method in METHODS:
            if (family, method) in CANNOT or (method in FOR_LANGUAGE_MODELS and family != "hf"):
                continue
            yield family, method


@pytest.mark.parametrize("family,method", list(cases()))
def test_save_load_bit_identical(bases, family, method, tmp_path):
    model = model_for(bases[family], family)
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.add_adapter(method)
    trained = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained and trained == adapters.trainable_names(model.backbone)
    assert all(p.requires_grad for p in model.head.parameters())  # the head always learns
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    raw = inputs(family)
    step(model, family)
    after = dict(model.backbone.named_parameters())
    # The guard against a silent no-op (opacus #820): everything meant to train gets a gradient and the adapter
    # moves; nothing else moves (that the features change is checked through the Trainer below).
    assert all(after[n].grad is not None for n in trained)
    assert any(not torch.equal(before[n], after[n]) for n in trained)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trained)
    if method not in ("bitfit", "norm_tuning"):
        base_names = {n.replace(".base_layer", "") for n in after if n not in trained}
        assert base_names == set(frozen)
    expected = model.predict_proba(raw)

    small = model.save_pretrained(tmp_path / "adapter")
    config = json.loads((small / "config.json").read_text())
    assert config["saved"] == "adapter" and not (small / "model.safetensors").exists()
    card = (small / "README.md").read_text()
    assert f"PEFT adapter `default`: {'lora' if method == 'dora' else method}" in card and "fingerprint" in card
    reloaded = tk.TransferModel.from_pretrained(small)
    assert torch.equal(reloaded.predict_proba(raw), expected)
    assert reloaded.adapter_names == ["default"]

    whole = model.save_pretrained(tmp_path / "whole", include_base=True)
    assert torch.equal(tk.TransferModel.from_pretrained(whole).predict_proba(raw), expected)

    if adapters.METHODS.get(adapters.METHODS.normalise("lora" if method == "dora" else method)).mergeable:
        merged = model.save_pretrained(tmp_path / "merged", merge=True)
        assert "adapters" not in json.loads((merged / "config.json").read_text())["backbone"]
        loaded = tk.TransferModel.from_pretrained(merged)
        assert loaded.adapter_names == []
        import copy

        assert torch.equal(loaded.predict_proba(raw), copy.deepcopy(model).merge().predict_proba(raw))  # bit-identical
        torch.testing.assert_close(loaded.predict_proba(raw), expected, atol=1e-5, rtol=1e-4)  # and the same function
        assert model.adapter_names == ["default"]  # merge=True saves a merged copy; the model keeps its adapter
    else:
        with pytest.raises(AdapterError, match="cannot be merged"):
            model.save_pretrained(tmp_path / "merged", merge=True)


@pytest.mark.parametrize("family,method", sorted(CANNOT) + [("timm", "prompt_tuning"), ("glove", "prompt_tuning"),
                                                           ("timm-vit", "prefix_tuning"), ("glove", "prefix_tuning")])
def test_method_the_family_cannot_take_is_refused(bases, family, method):
    backbone = tk.load_backbone(bases[family])
    with pytest.raises(AdapterError):
        backbone.add_adapter(method)
    assert backbone.config.get("adapters") is None and all(p.requires_grad for p in backbone.parameters())


def test_a_fresh_adapter_changes_nothing(bases):
    """LoRA's B, IA³'s scales, a bottleneck's up-projection start at their identity: outputs are the base's."""
    for family, method in cases():
        if method in FOR_LANGUAGE_MODELS:  # learnt tokens or keys change the outputs from the start
            continue
        model = model_for(bases[family], family)
        raw = inputs(family)
        before = model.predict_proba(raw)
        model.add_adapter(method)
        torch.testing.assert_close(model.predict_proba(raw), before, atol=1e-6, rtol=1e-5, msg=f"{family} {method}")


def test_default_targets_per_family(bases):
    targets = {family: adapters.resolve_targets(tk.load_backbone(bases[family]), "lora", None) for family in FAMILIES}
    assert all(t.endswith((".query", ".value")) for t in targets["hf"]) and len(targets["hf"]) == 4
    assert targets["glove"] == ["embeddings"]
    assert targets["timm-vit"] and all(t.endswith(".attn.qkv") for t in targets["timm-vit"])  # fused qkv
    backbone = tk.load_backbone(bases["timm"])
    convs = [backbone.encoder.get_submodule(t) for t in targets["timm"]]
    assert convs and all(isinstance(c, torch.nn.Conv2d) and c.groups == 1 and c.in_channels > 3 for c in convs)
    assert targets["torchvision"]


def test_unknown_target_module_lists_the_valid_ones(bases):
    backbone = tk.load_backbone(bases["hf"])
    with pytest.raises(AdapterError, match=r"'quary'.*Valid names.*query.*value"):
        backbone.add_adapter("lora", target_modules=["quary"])
    backbone.add_adapter("lora", target_modules=["query", "key"])
    assert all(t.endswith((".query", ".key")) for t in backbone.config["adapters"]["specs"]["default"]["target_modules"])


def test_bad_options_and_names_are_refused(bases):
    backbone = tk.load_backbone(bases["hf"])
    with pytest.raises(AdapterError, match="does not take the option.*'rank'.*r=8"):
        backbone.add_adapter("lora", rank=4)
    with pytest.raises(AdapterError, match="unknown PEFT method 'lorra'"):
        backbone.add_adapter("lorra")
    with pytest.raises(AdapterError, match="not usable"):
        backbone.add_adapter("lora", name="a.b")
    backbone.add_adapter("lora")
    with pytest.raises(AdapterError, match="already has an adapter named 'default'"):
        backbone.add_adapter("lora")
    with pytest.raises(AdapterError, match="one backbone holds adapters of one method"):
        backbone.add_adapter("ia3", name="other")


def test_adapter_saved_for_another_base_is_refused_with_both_names(bases, tmp_path, assets):
    model = model_for(bases["hf"], "hf")
    model.add_adapter("lora")
    step(model, "hf")
    saved = model.save_pretrained(tmp_path / "adapter")
    other = tk.load_backbone("scratch:bert", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1, heads=2,
                             max_length=32)
    with pytest.raises(BaseMismatchError, match=r"trained on the base hf:.*not on hf:scratch-bert \(loaded as 'scratch:bert'\)"):
        tk.TransferModel.from_pretrained(saved, base=other)
    fresh = model_for(bases["glove"], "glove")
    with pytest.raises(BaseMismatchError, match="glove"):
        fresh.load_adapter(saved)


def test_random_base_without_a_saved_copy_is_explained(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone("timm:test_vit", weights=None), tk.heads.Classification(num_classes=2))
    model.add_adapter("lora")
    saved = model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(BaseMismatchError, match="random weights.*include_base=True"):
        tk.TransferModel.from_pretrained(saved)
    # The whole model needs no base.
    whole = model.save_pretrained(tmp_path / "whole", include_base=True)
    raw = inputs("timm-vit")
    assert torch.equal(tk.TransferModel.from_pretrained(whole).predict_proba(raw), model.predict_proba(raw))


@pytest.mark.parametrize("method", ["lora", "bottleneck", "bitfit", "prompt_tuning", "prefix_tuning"])
def test_several_adapters_on_one_base_switch_by_name(bases, method, tmp_path):
    first = model_for(bases["hf"], "hf")
    first.add_adapter(method, name="topic")
    step(first, "hf")
    second = model_for(bases["hf"], "hf")
    second.head = tk.heads.Classification(num_classes=5)
    tk.model._build_head(second.head, second.backbone)
    second.add_adapter(method, name="tone")
    step(second, "hf", steps=3)
    raw = inputs("hf")
    want_topic, want_tone = first.predict_proba(raw), second.predict_proba(raw)
    topic, tone = first.save_pretrained(tmp_path / "topic"), second.save_pretrained(tmp_path / "tone")

    both = tk.TransferModel.from_pretrained(topic)
    both.load_adapter(tone)
    assert both.adapter_names == ["topic", "tone"] and both.active_adapter == "tone"
    assert torch.equal(both.predict_proba(raw), want_tone)
    assert torch.equal(both.set_adapter("topic").predict_proba(raw), want_topic)
    assert torch.equal(both.set_adapter("tone").predict_proba(raw), want_tone)
    both.load_adapter(topic, name="topic2")
    assert torch.equal(both.predict_proba(raw), want_topic)
    with pytest.raises(AdapterError, match="no adapter named 'nope'.*topic, tone, topic2"):
        both.set_adapter("nope")


def test_peft_strategy_trains_adapter_and_head_only_and_composes(bases):
    data = [(s, i % 3) for i, s in enumerate(SENTENCES[:24])]
    model = model_for(bases["hf"], "hf")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    features = model.backbone.encode(SENTENCES[:4])
    strategy = tk.trainer.strategies.get_strategy("lora", r=4, schedule="lp_ft")
    assert strategy.name == "lora+lp_ft"
    history = tk.Trainer(epochs=2, batch_size=8, strategy=strategy, progress=False, loggers=()).fit(model, data)
    assert len(history) == 2
    named = dict(model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], named.get(n, named.get(n.replace(
        ".query.", ".query.base_layer.").replace(".value.", ".value.base_layer."))))}
    assert moved and all(n.startswith("head.") for n in moved)  # the base stayed as it was
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in named.items())  # LoRA's B starts at zero
    assert not torch.allclose(model.backbone.encode(SENTENCES[:4]), features)
    # A strategy of another method on an adapted backbone is refused, naming what is there.
    with pytest.raises(ConfigError, match="already has 'lora' adapters"):
        tk.Trainer(epochs=1, strategy="ia3", progress=False, loggers=()).fit(model, data)


def test_adapters_learn_at_their_own_rate(bases):
    from transferkit.trainer.strategies import ADAPTER_LR, get_strategy

    model = model_for(bases["hf"], "hf")
    model.add_adapter("lora")
    groups = get_strategy("full").param_groups(model.task(), lr=1e-5, head_lr=1e-2)
    assert {g["lr"] for g in groups if not g["name"].startswith("head")} == {ADAPTER_LR} and ADAPTER_LR == 1e-3
    assert {g["lr"] for g in groups if g["name"].startswith("head")} == {1e-2}
    groups = get_strategy("lora", lr=3e-4).param_groups(model.task(), lr=1e-5, head_lr=1e-2)
    assert {g["lr"] for g in groups if g["name"].startswith("backbone")} == {3e-4}
    with pytest.raises(ConfigError, match="learning rate must be > 0"):
        get_strategy("lora", lr=0)


def test_frozen_base_keeps_batchnorm_statistics(bases):
    model = model_for(bases["timm"], "timm")
    model.add_adapter("lora")
    stats = {n: b.clone() for n, b in model.backbone.named_buffers() if "running_mean" in n}
    step(model, "timm")
    assert all(torch.equal(stats[n], b) for n, b in model.backbone.named_buffers() if n in stats)
    tuned = model_for(bases["timm"], "timm")
    tuned.add_adapter("norm_tuning")  # norm-tuning trains the norms: their statistics move, and are saved
    step(tuned, "timm")
    assert any(not torch.equal(stats[n], b) for n, b in tuned.backbone.named_buffers() if n in stats)


def test_merge_folds_lora_into_a_plain_backbone(bases):
    model = model_for(bases["timm-vit"], "timm-vit")
    model.add_adapter("lora")
    step(model, "timm-vit")
    raw = inputs("timm-vit")
    expected = model.predict_proba(raw)
    model.merge()
    assert model.adapter_names == [] and not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model.predict_proba(raw), expected, atol=1e-5, rtol=1e-4)


def test_cli_finetune_with_lora_saves_a_small_adapter_that_predicts_and_resumes(assets, tmp_path, capsys):
    import csv

    from transferkit.cli import main

    topic = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label")] + [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)])
    out = tmp_path / "model"
    args = ["finetune", "--backbone", f"hf:{assets['bert']}", "--data", str(tmp_path / "train.csv"), "--output",
            str(out), "--epochs", "2", "--strategy", "lora", "--strategy-option", "r=4", "--strategy-option",
            "schedule=lp_ft", "--head-lr", "1e-2", "--no-progress"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["saved"] == "adapter" and config["backbone"]["adapters"]["specs"]["default"]["r"] == 4
    assert (out / "adapter.safetensors").stat().st_size < 100_000 and not (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--proba", "stocks fell sharply"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["label"] in topic
    assert main(args + ["--epochs", "3", "--resume"]) == 0  # the adapter resumes from the run's checkpoint
    assert "epoch=3" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert main(args[:6] + [str(merged)] + args[7:] + ["--save", "merged", "--epochs", "1"]) == 0
    assert "adapters" not in json.loads((merged / "config.json").read_text())["backbone"]
    capsys.readouterr()
    assert main(args[:6] + [str(tmp_path / "bad")] + args[7:] + ["--strategy-option", "rank=4"]) == 1
    assert "does not take the option 'rank'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_fingerprint_is_the_base_s_with_or_without_adapters(bases):
    backbone = tk.load_backbone(bases["hf"])
    before = adapters.fingerprint(backbone)
    backbone.add_adapter("lora")
    backbone.add_adapter("lora", name="second")
    assert adapters.fingerprint(backbone) == before == backbone.config["adapters"]["base"]["fingerprint"]


@pytest.mark.parametrize("family,method", [("hf", "lora"), ("timm", "ia3"), ("timm-vit", "bottleneck")])
def test_a_second_adapter_goes_on_the_same_modules(bases, family, method):
    backbone = tk.load_backbone(bases[family])
    backbone.add_adapter(method, name="a")
    backbone.add_adapter(method, name="b")
    specs = backbone.config["adapters"]["specs"]
    assert specs["a"]["target_modules"] == specs["b"]["target_modules"]
    assert not any("base_layer" in t for t in specs["b"]["target_modules"])
    assert len(adapters.trainable_names(backbone, "a")) == len(adapters.trainable_names(backbone, "b"))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_causal_generation_under_learnt_tokens_is_refused_not_silently_wrong(assets, method):
    backbone = tk.load_backbone("scratch:gpt2", corpus=assets["corpus"], vocab_size=200, hidden=32, layers=1, heads=2,
                                max_length=64)
    model = tk.TransferModel(backbone, tk.heads.Generation(max_new_tokens=3))
    model.add_adapter(method, num_virtual_tokens=2)
    with pytest.raises(ConfigError, match=f"under {method} is not built"):
        model.predict(["the cat"])


def test_prefix_tuning_gives_every_layer_learnt_keys_and_values(bases):
    backbone = tk.load_backbone(bases["hf"])
    backbone.add_adapter("prefix_tuning", num_virtual_tokens=3)
    prefix = backbone.encoder.prefixes["default"]
    config = backbone.encoder.model.config
    assert prefix.shape == (config.num_hidden_layers, 2, config.num_attention_heads, 3,
                            config.hidden_size // config.num_attention_heads)
    features = backbone(**backbone.preprocess(SENTENCES[:2]))
    assert features.tokens.shape[1] == features.mask.shape[1]  # one row per real token
    features.pooled.sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    with pytest.raises(AdapterError, match="T5 and BART encoders keep no cache"):
        tk.load_backbone(bases["timm"]).add_adapter("prefix_tuning")
