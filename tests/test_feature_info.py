"""A backbone describes its features before any forward pass, and pooling is its own part.

Parity: ``Features.pooled`` is bit-identical to what each encoder computed when it pooled inside itself
(the old formulas are kept inline below) and to the vision networks' own outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

import transferkit as tk
from transferkit.backbones import FeatureInfo, Pooling, Stage, pooling_for
from transferkit.errors import ConfigError, TransferkitError


# --- the pooling formulas as the encoders had them inside themselves (the reference) ---------------

def old_hf_pooled(hidden, attention_mask, pooling):
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    positions = torch.arange(hidden.shape[1])
    last = (attention_mask * positions).argmax(1)
    return hidden[torch.arange(hidden.shape[0]), last]


def old_word_vector_pooled(tokens, attention_mask, pooling):
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "mean":
        return mean
    mx = tokens.masked_fill(mask == 0, float("-inf")).amax(1)
    mx = torch.where(mask.sum(1) > 0, mx, torch.zeros_like(mx))
    return mx if pooling == "max" else torch.cat([mean, mx], dim=-1)


TEXT_CASES = [("hf", p, old_hf_pooled) for p in ("mean", "cls", "last")] + [
    (source, p, old_word_vector_pooled) for source in ("glove", "fasttext") for p in ("mean", "max", "mean+max")]


@pytest.mark.parametrize("key,pooling,reference", TEXT_CASES, ids=[f"{k}-{p}" for k, p, _ in TEXT_CASES])
def test_text_pooled_is_bit_identical_to_the_old_encoders(tiny_specs, key, pooling, reference):
    spec, options = tiny_specs[key]
    backbone = tk.load_backbone(spec, **{**options, "pooling": pooling}).eval()
    # Two texts of different lengths, so padding is present; one with no known word for word vectors.
    inputs = backbone.preprocess(["the market rallied on strong earnings today", "zzzq"])
    with torch.no_grad():
        out = backbone(**inputs)
    assert torch.equal(out.pooled, reference(out.tokens, inputs["attention_mask"], pooling))
    info = backbone.feature_info
    assert info.pooling == pooling and info.pooled == out.pooled.shape[-1] == backbone.config["feature_dim"]
    assert backbone.config["arch"]["pooling"] == pooling  # recorded exactly as before


def test_vision_pooled_is_the_networks_own(tiny_specs):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for key in ("timm", "timm-stage", "torchvision"):
        spec, options = tiny_specs[key]
        backbone = tk.load_backbone(spec, **options).eval()
        net = backbone.encoder.model
        with torch.no_grad():
            pooled = backbone(pixel_values=pixels).pooled
            staged = backbone(pixel_values=pixels, stages=True).pooled
            if key == "timm":
                expected = net.forward_head(net.forward_features(pixels), pre_logits=True)
            elif key == "timm-stage":
                expected = net.forward_intermediates(pixels, indices=[2], intermediates_only=True)[0].mean((2, 3))
            else:
                expected = net(pixels)
        assert torch.equal(pooled, expected) and torch.equal(staged, expected), key
        assert backbone.feature_info.pooling == ("avg" if key == "timm-stage" else None)


def test_feature_info_needs_no_forward_pass(tiny_specs):
    def refuse(*_):
        raise AssertionError("feature_info ran a forward pass")

    for key in ("hf", "glove", "timm", "timm-vit", "timm-stage", "torchvision"):
        spec, options = tiny_specs[key]
        backbone = tk.load_backbone(spec, **options)
        handles = [m.register_forward_pre_hook(refuse) for m in backbone.modules()]
        info = backbone.feature_info
        for handle in handles:
            handle.remove()
        assert isinstance(info, FeatureInfo) and all(isinstance(s, Stage) for s in info.stages)
        with pytest.raises(AttributeError):
            info.pooled = 1  # frozen


def test_timm_feature_info_is_timms_own_cut_at_stage(tiny_specs):
    spec, options = tiny_specs["timm"]
    full = tk.load_backbone(spec, **options).feature_info
    timm_info = tk.load_backbone(spec, **options).encoder.model.feature_info
    assert [(s.name, s.channels, s.stride) for s in full.stages] == [
        (f["module"], f["num_chs"], f["reduction"]) for f in timm_info]
    assert full.tokens is None and full.spatial == full.pooled
    cut = tk.load_backbone(spec, **{**options, "stage": 2}).feature_info
    assert cut.stages == full.stages[:3] and cut.pooled == cut.spatial == full.stages[2].channels
    assert tk.load_backbone(spec, **{**options, "stage": -1}).feature_info.stages == full.stages
    vit = tk.load_backbone(*tiny_specs["timm-vit"][:1], **tiny_specs["timm-vit"][1]).feature_info
    assert vit.tokens == vit.pooled == 64 and vit.spatial is None and {s.stride for s in vit.stages} == {16}


def test_timm_feature_dim_is_past_the_head_convolution():
    # timm MobileNetV3 pools, then applies conv_head: pre-logits are head_hidden_size wide, not num_features.
    backbone = tk.load_backbone("timm:mobilenetv3_small_050", weights=None, image_size=32).eval()
    with torch.no_grad():
        out = backbone(pixel_values=torch.rand(1, 3, 32, 32))
    assert out.pooled.shape[-1] == backbone.feature_dim == 1024
    assert out.spatial.shape[1] == backbone.feature_info.spatial == 288


# Stages read from the module structure: (name, channels, stride) as timm's feature_info would give them.
TORCHVISION = {
    "resnet18": [("relu", 64, 2), ("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)],
    "efficientnet_b0": [("features.1", 16, 2), ("features.2", 24, 4), ("features.3", 40, 8),
                        ("features.5", 112, 16), ("features.8", 1280, 32)],
    "regnet_x_400mf": [("stem", 32, 2), ("trunk_output.block1", 32, 4), ("trunk_output.block2", 64, 8),
                       ("trunk_output.block3", 160, 16), ("trunk_output.block4", 400, 32)],
    "shufflenet_v2_x0_5": [("conv1", 24, 2), ("maxpool", 24, 4), ("stage2", 48, 8), ("stage3", 96, 16),
                           ("conv5", 1024, 32)],
}
SLOW_TORCHVISION = {  # bigger networks, slower to build: concatenated branches, channels-last maps
    "densenet121": [("features.relu0", 64, 2), ("features.denseblock1", 256, 4), ("features.denseblock2", 512, 8),
                    ("features.denseblock3", 1024, 16), ("features.norm5", 1024, 32)],
    "swin_t": [("features.1", 96, 4), ("features.3", 192, 8), ("features.5", 384, 16), ("features.7", 768, 32)],
    "googlenet": [("conv1", 64, 2), ("conv3", 192, 4), ("inception3b", 480, 8), ("inception4e", 832, 16),
                  ("inception5b", 1024, 32)],
}
TV_CASES = list(TORCHVISION.items()) + [pytest.param(k, v, marks=pytest.mark.slow) for k, v in SLOW_TORCHVISION.items()]


@pytest.mark.parametrize("arch,expected", TV_CASES)
def test_torchvision_stages_from_the_structure_match_the_maps(arch, expected):
    torch.manual_seed(0)
    backbone = tk.load_backbone(f"torchvision:{arch}", weights=None, image_size=64).eval()
    info = backbone.feature_info
    assert [(s.name, s.channels, s.stride) for s in info.stages] == expected
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, out = backbone(pixel_values=pixels), backbone(pixel_values=pixels, stages=True)
    assert torch.equal(out.pooled, plain.pooled)
    for stage, fmap in zip(info.stages, out.stages):
        assert fmap.shape == (2, stage.channels, math.ceil(64 / stage.stride), math.ceil(64 / stage.stride)), stage
    assert (plain.spatial is None) == (info.spatial is None)
    if info.spatial is not None:
        assert plain.spatial.shape[1] == info.spatial


def test_pool_another_way_without_rebuilding(tiny_specs):
    spec, options = tiny_specs["hf"]
    backbone = tk.load_backbone(spec, **options).eval()
    inputs = backbone.preprocess(["the market rallied", "shares fell sharply on the news"])
    with torch.no_grad():
        features = backbone(**inputs)
        as_cls = tk.load_backbone(spec, pooling="cls").eval()(**inputs).pooled
    assert torch.equal(backbone.pool(features), features.pooled)
    assert torch.equal(backbone.pool(features, "cls"), as_cls)
    assert torch.equal(backbone.pool(features, pooling_for("last")), old_hf_pooled(
        features.tokens, inputs["attention_mask"], "last"))
    both = backbone.pool(features, "mean+max")
    assert both.shape[-1] == pooling_for("mean+max").out_features(backbone.feature_info.tokens) == 64
    assert torch.equal(both[:, :32], features.pooled)


def test_avg_pooling_of_spatial_maps(tiny_specs):
    spec, options = tiny_specs["timm"]
    backbone = tk.load_backbone(spec, **options).eval()
    with torch.no_grad():
        features = backbone(pixel_values=torch.rand(2, 3, 32, 32))
    avg = backbone.pool(features, "avg")
    assert avg.shape == (2, Pooling("avg").out_features(backbone.feature_info.spatial))
    assert torch.equal(avg, features.spatial.mean((2, 3)))


def test_pooling_errors_say_what_to_do(tiny_specs):
    with pytest.raises(ConfigError, match="'avgg'.*'mean', 'max', 'mean\\+max', 'cls', 'last', 'avg'"):
        pooling_for("avgg")
    text = tk.load_backbone(tiny_specs["hf"][0]).eval()
    image = tk.load_backbone(tiny_specs["timm"][0], **tiny_specs["timm"][1]).eval()
    with torch.no_grad():
        text_features = text(**text.preprocess(["the market rallied"]))
        image_features = image(pixel_values=torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="spatial map.*'mean'"):
        text.pool(text_features, "avg")
    with pytest.raises(ConfigError, match="per-token.*'avg'") as caught:
        image.pool(image_features, "mean")
    assert isinstance(caught.value, TransferkitError)


def test_text_backbones_give_no_stages_and_pooling_adds_no_weights(tiny_specs):
    backbone = tk.load_backbone(tiny_specs["glove"][0], **tiny_specs["glove"][1]).eval()
    inputs = backbone.preprocess(["the market rallied"])
    assert backbone(**inputs, stages=True).stages == [] and backbone.feature_info.stages == ()
    # Nothing new is saved: old saved models load into the same state_dict and config.
    assert all(k.startswith("encoder.") for k in backbone.state_dict())
    # "init" (where the weights came from) is load_backbone's record; configs saved without it load too.
    assert set(backbone.config) == {"source", "name", "modality", "feature_dim", "arch", "preprocess", "init"}
    assert set(backbone.config["arch"]) == {"num_words", "dim", "pooling", "buckets"}
