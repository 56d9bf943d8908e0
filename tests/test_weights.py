"""Choosing vision weights: random, a local file (safetensors or weights-only torch), never a bare bool."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.errors import WeightsError


def _same_outputs(a, b):
    x = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(a.encode(x), b.encode(x), atol=0, rtol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(0)
    reference = tk.load_backbone("timm:test_resnet", weights=None, image_size=32)
    import timm

    full = timm.create_model("test_resnet", num_classes=5)  # a file with a classifier, as published
    full.load_state_dict(reference.encoder.model.state_dict(), strict=False)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(full.state_dict(), str(path))
    else:
        torch.save({"state_dict": full.state_dict()}, path)
    torch.manual_seed(1)
    loaded = tk.load_backbone("timm:test_resnet", weights=str(path), image_size=32)
    _same_outputs(reference, loaded)
    assert loaded.config["arch"]["weights"] == str(path)


def test_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    published = torchvision.models.mobilenet_v3_small(num_classes=1000)
    torch.save(published.state_dict(), tmp_path / "m.pth")
    loaded = tk.load_backbone("torchvision:mobilenet_v3_small", weights=str(tmp_path / "m.pth"), image_size=32)
    published.classifier[-1] = torch.nn.Identity()
    published.eval()
    x = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        expected = published(loaded.preprocess(x)["pixel_values"])
    torch.testing.assert_close(loaded.encode(x), expected, atol=1e-6, rtol=1e-5)


def test_random_weights_differ_from_file_weights_and_are_recorded():
    a = tk.load_backbone("timm:test_resnet", weights=None)
    assert a.config["arch"]["weights"] == "random"
    b = tk.load_backbone("torchvision:mobilenet_v3_small", weights="random")
    assert b.config["arch"]["weights"] == "random" and b.feature_dim == 1024


def test_a_weights_file_for_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = tk.load_backbone("timm:test_efficientnet", weights=None)
    save_file(other.encoder.model.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="do not fit the architecture"):
        tk.load_backbone("timm:test_resnet", weights=str(tmp_path / "other.safetensors"))


def test_stage_features_are_timm_intermediates(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = timm.create_model("test_efficientnet", num_classes=0).eval()
    save_file(full.state_dict(), str(tmp_path / "w.safetensors"))
    staged = tk.load_backbone("timm:test_efficientnet", weights=str(tmp_path / "w.safetensors"), stage=2)
    x = [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))]
    pixels = staged.preprocess(x)["pixel_values"]
    with torch.no_grad():
        expected = full.forward_intermediates(pixels, indices=[2], intermediates_only=True)[0]
    staged.eval()
    out = staged(pixel_values=pixels)
    torch.testing.assert_close(out.spatial, expected)
    torch.testing.assert_close(out.pooled, expected.mean((2, 3)))
    assert staged.feature_dim == full.feature_info[2]["num_chs"]
    assert sum(p.numel() for p in staged.parameters()) < sum(p.numel() for p in full.parameters())


def test_a_weights_tag_with_a_local_file_keeps_the_tags_preprocessing(tmp_path):
    import torchvision

    torch.save(torchvision.models.regnet_y_400mf().state_dict(), tmp_path / "r.pth")
    backbone = tk.load_backbone("torchvision:regnet_y_400mf.IMAGENET1K_V2", weights=str(tmp_path / "r.pth"))
    assert backbone.config["arch"]["weights"] == str(tmp_path / "r.pth")
    expected = torchvision.models.RegNet_Y_400MF_Weights.IMAGENET1K_V2.transforms()
    assert expected.resize_size[0] == 232  # differs from the 256 default, so the test can fail
    assert backbone.config["preprocess"]["size"] == [expected.crop_size[0]] * 2
    assert backbone.config["preprocess"]["resize"] == expected.resize_size[0]
