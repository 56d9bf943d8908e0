"""Conformance: every backbone source passes the same contract checks on a tiny instance."""

from __future__ import annotations

import json
import math

import pytest
import torch

import transferkit as tk
from transferkit.backbones.registry import sources

from conftest import raw_batch

SPEC_NAMES = ["word2vec", "word2vec-text", "glove", "fasttext", "hf", "timm", "timm-vit", "timm-stage", "torchvision",
              "scratch", "stack"]


@pytest.fixture(scope="module", params=SPEC_NAMES)
def backbone(request, tiny_specs):
    spec, options = tiny_specs[request.param]
    torch.manual_seed(0)
    return tk.load_backbone(spec, **options)


def test_every_registered_source_has_a_tiny_instance(tiny_specs):
    covered = {spec.split(":", 1)[0] for spec, _ in tiny_specs.values()}
    # zoo: only resolves an entry to another source's spec (tested in test_zoo_*), so it builds nothing itself.
    assert set(sources()) - {"zoo"} <= covered


def test_contract_shapes_and_config(backbone):
    assert backbone.modality in ("text", "image")
    raw = raw_batch(backbone.modality)
    inputs = backbone.preprocess(raw)
    assert all(isinstance(v, torch.Tensor) for v in inputs.values())
    backbone.eval()
    out = backbone(**inputs)
    assert out.pooled.shape == (len(raw), backbone.feature_dim)
    assert torch.isfinite(out.pooled).all()
    if out.tokens is not None:
        assert out.tokens.shape[:2] == out.mask.shape and out.tokens.shape[0] == len(raw)
    if out.spatial is not None:
        assert out.spatial.ndim == 4 and out.spatial.shape[0] == len(raw)
    # Text backbones give tokens, except a stack, which says so in feature_info (its members' tokens differ in size).
    assert out.tokens is not None or out.spatial is not None or backbone.modality == "image" or \
        (backbone.config["source"] == "stack" and backbone.feature_info.tokens is None)
    config = json.loads(json.dumps(backbone.config))  # JSON-serialisable
    assert {"source", "name", "modality", "feature_dim", "preprocess"} <= set(config)
    assert config["feature_dim"] == backbone.feature_dim


def test_eval_forward_is_deterministic_and_batch_independent(backbone):
    raw = raw_batch(backbone.modality)
    a = backbone.encode(raw)
    b = backbone.encode(raw[:1])
    torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(backbone.encode(raw), a)


def test_freeze_stops_gradients_and_batchnorm_statistics(backbone):
    backbone.freeze().train()
    assert not any(p.requires_grad for p in backbone.parameters())
    buffers = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(**backbone.preprocess(raw_batch(backbone.modality)))
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, buffers[k]), f"{k} changed while frozen"
    backbone.unfreeze()
    assert all(p.requires_grad for p in backbone.parameters())
    assert backbone.encoder.training


def test_gradients_reach_the_backbone_when_trainable(backbone):
    backbone.unfreeze().train()
    out = backbone(**backbone.preprocess(raw_batch(backbone.modality)))
    out.pooled.sum().backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    backbone.zero_grad()
    backbone.eval()


def test_backbone_save_and_load_back(backbone, tmp_path):
    backbone.eval()
    raw = raw_batch(backbone.modality)
    expected = backbone.encode(raw)
    backbone.save_pretrained(tmp_path / "bb")
    again = tk.load_backbone(str(tmp_path / "bb"))
    assert again.config == backbone.config
    torch.testing.assert_close(again.encode(raw), expected, atol=0, rtol=0)


def test_transfer_model_round_trip_gives_identical_predictions(backbone, tmp_path):
    torch.manual_seed(1)
    model = tk.TransferModel(backbone, tk.heads.Classification(labels=["a", "b", "c"]))
    raw = raw_batch(backbone.modality)
    expected = model.predict_proba(raw)
    model.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "m").iterdir()}
    loaded = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.predict_proba(raw), expected)
    assert loaded.predict(raw) == model.predict(raw)
    assert set(loaded.predict(raw)) <= {"a", "b", "c"}


def test_tiny_text_backbones_know_the_test_words(tiny_specs):
    hf = tk.load_backbone(tiny_specs["hf"][0])
    assert hf.preprocessor.tokenizer.unk_token_id not in hf.preprocess(["the market rallied"])["input_ids"]
    w2v = tk.load_backbone(tiny_specs["word2vec"][0])
    assert (w2v.preprocess(["the market rallied"])["input_ids"] > 0).all()  # 0 is padding/unknown


def test_feature_info_describes_a_real_forward(backbone):
    info = backbone.feature_info  # from the architecture: no forward pass
    assert isinstance(info, tk.backbones.FeatureInfo) and info == backbone.feature_info
    assert info.modality == backbone.modality and info.pooled == backbone.feature_dim
    backbone.eval()
    inputs = backbone.preprocess(raw_batch(backbone.modality))
    with torch.no_grad():
        plain, out = backbone(**inputs), backbone(**inputs, stages=True)
    assert torch.equal(out.pooled, plain.pooled) and out.pooled.shape[-1] == info.pooled
    assert (out.tokens is None) == (info.tokens is None)
    if info.tokens is not None:
        assert out.tokens.shape[-1] == info.tokens
    assert (out.spatial is None) == (info.spatial is None)
    if info.spatial is not None:
        assert out.spatial.shape[1] == info.spatial
    assert plain.stages is None and len(out.stages) == len(info.stages)
    assert bool(info.stages) == (backbone.modality == "image")
    for stage, fmap in zip(info.stages, out.stages):
        height, width = inputs["pixel_values"].shape[-2:]
        assert fmap.shape == (len(raw_batch("image")), stage.channels, math.ceil(height / stage.stride),
                              math.ceil(width / stage.stride)), stage
    strides = [s.stride for s in info.stages]
    assert strides == sorted(strides)
