"""Settings chosen from the data and the backbone when the user sets none: the small-data defaults.

``transferkit finetune`` without ``--epochs``, ``--lr`` or ``--head-lr`` (and ``transferkit pretrain`` without
``--epochs``, ``--lr`` or ``--batch-size``) asks this module, prints what it chose and why, and saves it with the
run. Every rate below is the one a documented recipe measured; the reasons name where.

* **Steps**: a floor of optimiser steps whatever the data size (:data:`MIN_STEPS`: 25 for a pretrained transformer,
  100 for the rest; a tiny labelled set gets many epochs), and
  :data:`MIN_EPOCHS` passes over a large one. 40 training images in batches of 16 make 3 steps an epoch: the old
  fixed 3 epochs were 9 steps, too few to train a network.
* **Learning rates** by what is trained (:func:`initialisation`): a pretrained transformer wants a small rate
  (fine-tuning erases what a large one would), a network from random or self-supervised weights a large one,
  a fresh head a larger one than its backbone, and a frozen backbone's head the largest (:data:`RATES`).
* **Image size** (:func:`image_size`): images far smaller than the network's input (8×8 digits for a 224-pixel
  ResNet) are given to it near their own size; upscaling adds no detail and costs the square of the factor.
* **Pretraining** (:func:`pretraining`): the recipes of docs/pretraining_vision.md and docs/pretraining_text.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Floors of optimiser steps by what is trained, chosen on validation data (docs/training.md, "Small-data defaults"):
# networks from random or self-supervised weights need many (docs/pretraining_vision.md: 80-100 steps of 16 fine-tune
# a digits ResNet; the old fixed 3 epochs made 9-12), and so does a pretrained CNN on digits (EfficientNet-Lite0,
# 10 labels per class of MNIST: 25 steps 0.580, 100 steps 0.725); a pretrained transformer's fresh head fits in few,
# and more overfit 24 posts (MiniLM, 8 labels per class of 20 Newsgroups: 12 steps 0.933, 25 0.927, 50 0.914,
# 100 0.913). Keyed like RATES; what is not listed gets DEFAULT_MIN_STEPS.
MIN_STEPS = {("transformer", "pretrained"): 25}
DEFAULT_MIN_STEPS = 100
MIN_EPOCHS = 3  # a large set: three passes, the Trainer's own default
SMALL_SIDE = 32  # the smallest input these networks take at stride 32 (one cell in the last map)


@dataclass(frozen=True)
class Rates:
    """Learning rates of a recipe: the backbone's, the head's, and where they were measured."""

    lr: float
    head_lr: float
    evidence: str


# (family, initialisation) → rates. "random" covers self-supervised too: both measured best at the large rate
# (docs/pretraining_vision.md: backbone lr 1e-4 instead of 1e-3 hurt random and rotation-pretrained ResNets alike).
RATES: dict[tuple[str, str], Rates] = {
    ("transformer", "pretrained"): Rates(1e-4, 3e-3, "MiniLM on 8 labels per class, docs/demo.md"),
    ("transformer", "random"): Rates(1e-3, 3e-3, "a small BERT from random or masked-LM weights, "
                                                 "docs/pretraining_text.md"),
    # Chosen on validation documents of the 20 Newsgroups training split (8 labels per class, 3 seeds): trained
    # GloVe 6B.50d at 1e-3 0.889, 1e-4 0.886, 1e-2 0.869; frozen 0.888 (head 2e-2), 0.879 (head 1e-2).
    ("vectors", "pretrained"): Rates(1e-3, 2e-2, "GloVe on 8 labels per class of 20 Newsgroups, docs/training.md"),
    ("vectors", "random"): Rates(2e-2, 2e-2, "random vectors trained, docs/demo.md"),
    # Validation digits of the MNIST pool, 10 labels per class, 100 steps: EfficientNet-Lite0 0.725 at 1e-3, 0.515 at 1e-4.
    ("image", "pretrained"): Rates(1e-3, 1e-2, "EfficientNet-Lite0 on 10 digits per class, docs/training.md"),
    ("image", "random"): Rates(1e-3, 1e-2, "ResNets from random or rotation-pretrained weights on digits, "
                                           "docs/pretraining_vision.md"),
}
# Linear probes: EfficientNet-Lite0's head in docs/demo.md; frozen GloVe's (2e-2 beat 1e-2 on validation, above).
FROZEN_HEAD_LR = {"image": 1e-2, "transformer": 1e-2, "vectors": 2e-2}
VECTOR_SOURCES = ("word2vec", "glove", "fasttext")


@dataclass(frozen=True)
class Choice:
    """One setting chosen for the user: its value and why."""

    value: Any
    reason: str


def initialisation(backbone) -> str:
    """Where a backbone's weights come from: ``"pretrained"``, ``"random"`` or ``"self-supervised"``.

    :func:`transferkit.load_backbone` records it in ``config["init"]`` (``weights=None`` and the ``scratch:``
    source are random); ``transferkit pretrain`` turns a random backbone into a self-supervised one. A backbone
    built by hand without the record counts as random when its config says so (``arch.weights == "random"``),
    else as pretrained.
    """
    config = backbone.config
    if "init" in config:
        return config["init"]
    return "random" if (config.get("arch") or {}).get("weights") == "random" else "pretrained"


def family(backbone) -> str:
    """``"image"``, ``"vectors"`` (word vectors) or ``"transformer"`` (any other text backbone)."""
    if backbone.modality == "image":
        return "image"
    return "vectors" if backbone.config["source"] in VECTOR_SOURCES else "transformer"


def epochs(n_train: int, batch_size: int, backbone) -> Choice:
    """Enough passes for the :data:`MIN_STEPS` floor of optimiser steps for ``backbone``, and at least
    :data:`MIN_EPOCHS`."""
    start = _start(backbone)
    floor = MIN_STEPS.get((family(backbone), start), DEFAULT_MIN_STEPS)
    per_epoch = max(1, math.ceil(n_train / batch_size))
    value = max(MIN_EPOCHS, math.ceil(floor / per_epoch))
    if value == MIN_EPOCHS:
        return Choice(value, f"{per_epoch} steps per epoch ({n_train} examples, batch {batch_size}) are plenty: "
                             f"{MIN_EPOCHS} passes")
    whose = f"a {'pretrained' if start == 'pretrained' else 'new'} {family(backbone)} backbone"
    return Choice(value, f"at least {floor} optimiser steps for {whose}: {n_train} examples in batches of "
                         f"{batch_size} make {per_epoch} per epoch")


def _start(backbone) -> str:
    """``"pretrained"``, or ``"random"`` for weights from random or self-supervised initialisation."""
    return "pretrained" if initialisation(backbone) == "pretrained" else "random"


def rates(backbone, *, frozen: bool) -> tuple[Choice, Choice]:
    """The backbone's and the head's learning rates for what is trained (``frozen``: the head alone)."""
    init = initialisation(backbone)
    kind = family(backbone)
    chosen = RATES[(kind, _start(backbone))]
    what = {"image": "a vision network", "vectors": "word vectors", "transformer": "a transformer"}[kind]
    whence = {"pretrained": "pretrained", "random": "from random weights",
              "self-supervised": "self-supervised from random weights"}[init]
    if frozen:
        return (Choice(chosen.lr, "unused: the backbone is frozen"),
                Choice(FROZEN_HEAD_LR[kind], f"a linear probe of {what}: only the head learns (docs/demo.md)"))
    return (Choice(chosen.lr, f"{what}, {whence} ({chosen.evidence})"),
            Choice(chosen.head_lr, f"a fresh head on {what} {whence} ({chosen.evidence})"))


def image_size(network_side: int, data_side: int | None) -> Choice | None:
    """The input side for images of about ``data_side`` pixels, when far smaller than the network's default
    ``network_side`` (at most half); ``None`` keeps the network's size.

    The size is the data's side rounded up to a multiple of 32 (what networks of stride 32 divide evenly),
    at least :data:`SMALL_SIDE`.
    """
    if data_side is None or data_side * 2 > network_side:
        return None
    side = max(SMALL_SIDE, 32 * math.ceil(data_side / 32))
    return Choice(side, f"the images are about {data_side} px, the network's default input {network_side} px: "
                        f"{side} px costs {(network_side / side) ** 2:.0f}× less and upscaling adds no detail "
                        "(--option image_size=N sets it)")


@dataclass(frozen=True)
class Pretraining:
    """A pretraining recipe: passes, learning rate, batch size, and where it was shown to work."""

    epochs: int
    lr: float
    batch_size: int
    evidence: str


PRETRAINING: dict[tuple[str, str], Pretraining] = {
    # docs/pretraining_vision.md / recipes.vision_gain.pretrain: rotation (with random crops), 6 epochs, AdamW 3e-3,
    # 64 images a step; the same recipe ran the patch-colour and autoencoder rows.
    ("image", "random"): Pretraining(6, 3e-3, 64, "rotation on 1,300 digits, docs/pretraining_vision.md"),
    ("image", "pretrained"): Pretraining(1, 1e-4, 64, "continued pretraining: a rate that keeps the weights "
                                                      "(not measured here)"),
    # docs/pretraining_text.md: masked LM of a small BERT from scratch, 6 epochs, 1e-3, batch 32; continued masked
    # LM of MiniLM, one pass at 5e-5, batch 16.
    ("transformer", "random"): Pretraining(6, 1e-3, 32, "masked LM of a small BERT from scratch, "
                                                        "docs/pretraining_text.md"),
    ("transformer", "pretrained"): Pretraining(1, 5e-5, 16, "continued masked LM of MiniLM, docs/pretraining_text.md"),
}


def pretraining(backbone) -> tuple[Pretraining, str]:
    """The recipe for pretraining ``backbone`` further, and a line saying which it is."""
    kind = family(backbone)
    if kind == "vectors":
        kind = "transformer"  # word-vector backbones are not pretrained with network tasks; never reached by the CLI
    start = "random" if initialisation(backbone) == "random" else "pretrained"  # self-supervised: continue it
    recipe = PRETRAINING[(kind, start)]
    return recipe, f"{'from random weights' if start == 'random' else 'from pretrained weights'}: {recipe.evidence}"
