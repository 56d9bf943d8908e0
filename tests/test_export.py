"""Export to ONNX and TorchScript: ONNX Runtime matches eager PyTorch for a text, a word-vector and a vision model,
on other batch sizes and sequence lengths than the trace saw; int8; heads that cannot be one graph are refused."""

from __future__ import annotations

import json

import pytest
import torch

import transferkit as tk
from transferkit.export import ExportError, load_exported

from conftest import SENTENCES, raw_batch

pytest.importorskip("onnxruntime")  # the `export` extra; `make test` installs it

SPECS = {"text": ("hf", {}), "word_vectors": ("glove", {}), "vision": ("timm:test_efficientnet",
                                                                       {"weights": None, "image_size": 32}),
         "vit": ("timm:test_vit", {"weights": None})}


def make(family: str, assets, head=None) -> tk.TransferModel:
    spec, options = SPECS[family]
    spec = {"hf": f"hf:{assets['bert']}", "glove": f"glove:{assets['glove']}"}.get(spec, spec)
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone(spec, **options), head or tk.heads.Classification(num_classes=3))


def raw(family: str, n: int) -> list:
    if family in ("text", "word_vectors"):
        return [" ".join(SENTENCES[i: i + 1 + i % 4]) for i in range(n)]  # several lengths
    return raw_batch("image", n)


@pytest.mark.parametrize("family", list(SPECS))
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graph_matches_eager(family, fmt, assets, tmp_path):
    model = make(family, assets)
    out = model.export(tmp_path / "export", fmt)
    config = json.loads((out / "config.json").read_text())
    assert config["saved"] == "export" and (out / config["export"]["file"]).is_file()
    exported = load_exported(out)
    for n in (1, 7):  # batch sizes (and, for text, sequence lengths) the trace never saw
        inputs = raw(family, n)
        want = model.outputs(inputs)[0]
        got = exported.outputs(inputs)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-4
    assert exported.predict(raw(family, 5)) == model.predict(raw(family, 5))


def test_token_head_exports_with_a_dynamic_sequence_axis(assets, tmp_path):
    model = make("text", assets, tk.heads.TokenClassification(labels=["O", "B-X", "I-X"]))
    out = model.export(tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["export"]["dynamic_axes"]["logits"] == {"0": "batch", "1": "sequence"}
    exported = load_exported(out)
    batch = model.preprocess(raw("text", 6))
    with torch.no_grad():
        want = model(**batch)["logits"]
    got = torch.from_numpy(exported.run(batch))
    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-4


def test_int8_graph_is_smaller_and_close(assets, tmp_path):
    model = make("text", assets)
    out = model.export(tmp_path / "export", quantize="int8")
    import onnx

    weights = {t.name: t.data_type for t in onnx.load(str(out / "model.int8.onnx")).graph.initializer}
    assert sum(dtype == onnx.TensorProto.INT8 for dtype in weights.values()) >= 12  # the 2 layers' matrices
    fp32, int8 = load_exported(out), load_exported(out, int8=True)
    inputs = raw("text", 6)
    assert (fp32.predict_proba(inputs) - int8.predict_proba(inputs)).abs().max().item() < 0.1


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "bottleneck"])
def test_adapters_are_in_the_export(method, assets, tmp_path):
    """LoRA merged into the weights; the adapters that cannot be merged exported as the layers they are."""
    model = make("text", assets)
    model.add_adapter(method)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if p.requires_grad:  # not the identity they start as
                p.normal_(0, 0.5)
    exported = load_exported(model.export(tmp_path / "export"))
    inputs = raw("text", 4)
    assert (exported.outputs(inputs) - model.outputs(inputs)[0]).abs().max().item() <= 1e-4
    assert model.adapter_names == ["default"]  # the model itself keeps its adapter


def test_a_cross_encoder_pair_head_exports(assets, tmp_path):
    model = make("text", assets, tk.heads.Pair(num_classes=2, mode="cross"))
    exported = load_exported(model.export(tmp_path / "pair"))
    pairs = [(SENTENCES[i], SENTENCES[i + 1] + " " + SENTENCES[i + 2]) for i in range(6)]
    assert (exported.predict_proba(pairs) - model.predict_proba(pairs)).abs().max().item() <= 1e-4
    assert exported.predict(pairs) == model.predict(pairs)


def test_what_cannot_be_exported_is_refused(assets, tmp_path):
    pair = make("word_vectors", assets, tk.heads.Pair(num_classes=2))  # word vectors: a bi-encoder
    with pytest.raises(ExportError, match="'bi' mode.*bi-encoder"):
        pair.export(tmp_path / "pair")
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        make("text", assets).export(tmp_path / "x", "tflite")
    with pytest.raises(ExportError, match="ONNX Runtime's"):
        make("text", assets).export(tmp_path / "x", "torchscript", quantize="int8")
    assert not (tmp_path / "pair").exists() and not (tmp_path / "x").exists()
    out = make("text", assets).export(tmp_path / "ok")
    with pytest.raises(tk.errors.CheckpointError, match="load_exported"):
        tk.TransferModel.from_pretrained(out)


def test_cli_export(assets, tmp_path, capsys):
    from transferkit.cli import main

    saved = make("word_vectors", assets).save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(saved), "--output", str(tmp_path / "onnx"), "--quantize", "int8"]) == 0
    assert "exported" in capsys.readouterr().out
    assert (tmp_path / "onnx" / "model.onnx").is_file() and (tmp_path / "onnx" / "model.int8.onnx").is_file()
    assert main(["export", "--model", str(saved), "--output", str(tmp_path / "onnx")]) == 0  # an export is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", "--model", str(saved), "--output", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
