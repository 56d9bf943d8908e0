"""Training augmentation for classification: for images a per-image policy, random erasing, and mixup / cutmix with
the soft targets they make (:class:`ImageAugment`); for texts EDA-style word swaps, deletions and replacements
(:class:`TextAugment`). Evaluation batches are never augmented.

``ClassificationTask(model, augment=ImageAugment(policy="trivial", mixup=0.2, cutmix=1.0, erasing=0.25))``, or
``trainer.fit(model.task(augment=ImageAugment(...)), train, val)``. Each part is torchvision's
(``transforms.v2``), applied where the method puts it:

* ``policy`` — on each raw image, before the backbone's resize and normalisation: ``"trivial"``
  (``TrivialAugmentWide``: one random operation at a random strength per image; Müller & Hutter 2021, arXiv
  2103.10158), ``"randaugment"`` (``RandAugment``: ``num_ops`` operations at ``magnitude``; Cubuk et al. 2020,
  arXiv 1909.13719), ``"autoaugment"`` (the ImageNet policy; Cubuk et al. 2019, arXiv 1805.09501), or ``None``.
* ``erasing`` — the probability that a random rectangle of the normalised image is set to zero, the dataset mean
  (``RandomErasing``; Zhong et al. 2020, arXiv 1708.04896).
* ``mixup`` / ``cutmix`` — the ``alpha`` of the Beta distribution the mixing weight is drawn from, 0 to turn one off
  (``MixUp``: Zhang et al. 2018, arXiv 1710.09412; ``CutMix``: Yun et al. 2019, arXiv 1905.04899). With both, each
  batch takes one of them at random, as timm's ``Mixup(switch_prob=0.5)`` does. The batch's images are mixed with
  the batch rolled by one, and the targets become the same mix of the one-hot labels, so every row sums to 1; the
  loss is then the cross-entropy with those soft targets (label smoothing applies to them, class weights weigh
  each class's share).

Randomness comes from torch's generator, which the Trainer seeds (and DataLoader workers seed from it), so a run
is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from transferkit.errors import ConfigError

POLICIES = ("trivial", "randaugment", "autoaugment")


@dataclass
class ImageAugment:
    """Which augmentations train an image classifier (see the module docstring).

    Attributes:
        policy: ``"trivial"``, ``"randaugment"``, ``"autoaugment"`` or ``None``.
        num_ops: RandAugment's operations per image.
        magnitude: RandAugment's strength (0–30; 9 is the paper's ImageNet setting).
        erasing: probability of random erasing per image (0: off).
        mixup: mixup's Beta ``alpha`` (0: off; 0.2 is the paper's ImageNet setting).
        cutmix: cutmix's Beta ``alpha`` (0: off; 1.0 is the paper's).
    """

    modality = "image"  # what it augments (not a field)
    policy: str | None = "trivial"
    num_ops: int = 2
    magnitude: int = 9
    erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self):
        if self.policy not in (*POLICIES, None):
            raise ConfigError(f"policy must be one of {POLICIES} or None, got {self.policy!r}.")
        if not 0.0 <= self.erasing <= 1.0:
            raise ConfigError(f"erasing is a probability in 0–1, got {self.erasing!r}.")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is the alpha of a Beta distribution, 0 (off) or more; got "
                                  f"{getattr(self, name)!r}.")
        self._policy = self._mix = self._erase = None

    @property
    def mixes(self) -> bool:
        """Whether batches get soft targets (mixup or cutmix is on)."""
        return self.mixup > 0 or self.cutmix > 0

    def images(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Each raw image (a path, PIL image, array or tensor) as a ``3×H×W`` float tensor in 0–1, after the policy."""
        from transferkit.backbones.images import to_tensor

        tensors = [to_tensor(img, i) for i, img in enumerate(images)]
        if self.policy is None:
            return tensors
        policy = self._build_policy()
        return [policy((x * 255).round().to(torch.uint8)).float() / 255.0 for x in tensors]

    def erase(self, pixels: torch.Tensor) -> torch.Tensor:
        """Random erasing of each normalised image of a ``[B, 3, H, W]`` batch."""
        if self.erasing == 0:
            return pixels
        if self._erase is None:
            from torchvision.transforms import v2

            self._erase = v2.RandomErasing(p=self.erasing, value=0)
        return torch.stack([self._erase(x) for x in pixels])

    def mix(self, pixels: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix of a batch: the mixed images and their soft targets ``[B, num_classes]``."""
        from torchvision.transforms import v2

        if self._mix is None or self._mix[0] != num_classes:
            parts = ([v2.MixUp(alpha=self.mixup, num_classes=num_classes)] if self.mixup > 0 else []) + \
                    ([v2.CutMix(alpha=self.cutmix, num_classes=num_classes)] if self.cutmix > 0 else [])
            self._mix = (num_classes, parts[0] if len(parts) == 1 else v2.RandomChoice(parts))
        return self._mix[1](pixels, labels)

    def _build_policy(self):
        if self._policy is None:
            from torchvision.transforms import v2

            self._policy = {"trivial": lambda: v2.TrivialAugmentWide(),
                            "randaugment": lambda: v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude),
                            "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)}[self.policy]()
        return self._policy

    def __getstate__(self):  # DataLoader workers receive the settings; the torchvision parts are rebuilt there
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._policy = self._mix = self._erase = None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: Any = None,
                       label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The cross-entropy with soft ``targets`` (``[B, C]``, rows summing to 1), optionally class-weighted.

    Label smoothing mixes each row with the uniform distribution. A class weight ``w_c`` scales the class's term,
    and the weighted mean divides by the batch's total weight ``sum_i sum_c w_c t_ic`` (of the targets before smoothing) (returned as ``num_items``,
    for accumulation), so one-hot targets give exactly the class-id cross-entropy of
    :func:`~transferkit.tasks.classification.cross_entropy`, weighted or not (PyTorch's probability targets would
    divide a weighted sum by the batch size instead). Without weights the mean is over examples.
    """
    targets = targets.float()
    smoothed = targets * (1 - label_smoothing) + label_smoothing / logits.shape[-1] if label_smoothing else targets
    log_p = logits.float().log_softmax(-1)
    if class_weights is None:
        return {"loss": -(smoothed * log_p).sum(-1).mean(), "num_items": len(targets)}
    weight = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    total = (targets * weight).sum()  # the weight of the targets before smoothing, as PyTorch's class-id loss has
    return {"loss": -(smoothed * weight * log_p).sum() / total, "num_items": total}


@dataclass
class TextAugment:
    """EDA-style token augmentation of training texts (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for
    Boosting Performance on Text Classification Tasks", arXiv 1901.11196), applied to each raw training text before the
    backbone's tokenizer, so it works with every text backbone. Evaluation batches are never augmented.

    Words are the text's whitespace-separated tokens. With ``n`` words, ``round(swap·n)`` random pairs change places
    (EDA's random swap), then each word is dropped with probability ``delete`` (random deletion; one word always
    stays), then ``round(replace·n)`` random words are replaced by a word drawn uniformly from ``vocabulary``. EDA's
    synonym replacement and insertion need WordNet, which is not used here: the replacement words come from the
    training texts themselves (``ClassificationTask.prepare`` collects them when ``vocabulary`` is ``None``), the
    "uniform" word replacement that UDA (Xie et al. 2020, arXiv 1904.12848) compares against its TF-IDF variant.
    Randomness comes from torch's generator, which the Trainer seeds, so a run is repeatable.

    ``mixup`` adds wordMixup (Guo, Mao & Zhang 2019, "Augmenting Data with Mixup for Sentence Classification", arXiv
    1905.08941): each training batch's input embeddings become ``λ·e + (1 − λ)·e_rolled`` (the batch rolled by one,
    ``λ ~ Beta(mixup, mixup)`` per batch), the attention mask the union of both texts', and the targets the same mix
    of the one-hot labels, with the soft-target loss of :func:`soft_cross_entropy`.

    Attributes:
        delete: probability of dropping each word (EDA's α; the paper's small-data setting is 0.1).
        swap: share of the words swapped in pairs.
        replace: share of the words replaced by a vocabulary word.
        vocabulary: the replacement words; ``None``: the training texts' words.
        mixup: wordMixup's Beta ``alpha`` (0: off).
    """

    modality = "text"  # what it augments (not a field)
    delete: float = 0.1
    swap: float = 0.1
    replace: float = 0.1
    vocabulary: list[str] | None = None
    mixup: float = 0.0

    def __post_init__(self):
        for name in ("delete", "swap", "replace"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ConfigError(f"TextAugment {name} is a share of the words, 0 or more and below 1; got {value!r}.")
        if not (isinstance(self.mixup, (int, float)) and self.mixup >= 0):
            raise ConfigError(f"mixup is the alpha of a Beta distribution, 0 (off) or more; got {self.mixup!r}.")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (wordMixup is on)."""
        return self.mixup > 0

    def mix(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw wordMixup's ``λ`` for a tokenized batch: widens ``inputs["attention_mask"]`` to the union of each text
        and the one it is mixed with (in place) and returns ``λ`` and the soft targets ``[B, num_classes]``; the
        embeddings are mixed by :func:`mix_rows` during the forward pass."""
        lam = torch.distributions.Beta(float(self.mixup), float(self.mixup)).sample()
        if "attention_mask" in inputs:
            inputs["attention_mask"] = torch.maximum(inputs["attention_mask"], inputs["attention_mask"].roll(1, 0))
        one_hot = torch.nn.functional.one_hot(labels, num_classes).float()
        return lam, mix_rows(one_hot, lam)

    def fit(self, texts: Sequence[str]) -> "TextAugment":
        """Take the replacement words from ``texts`` unless a vocabulary was given."""
        if self.vocabulary is None:
            self.vocabulary = sorted({w for t in texts for w in t.split()})
        return self

    def texts(self, texts: Sequence[str]) -> list[str]:
        """Each text augmented (see the class docstring)."""
        import random

        if self.replace and not self.vocabulary:
            raise ConfigError("TextAugment(replace=...) needs replacement words: give vocabulary=, or train through "
                              "ClassificationTask, which takes them from the training texts.")
        rng = random.Random(int(torch.randint(2 ** 31, ())))
        return [self._one(t, rng) for t in texts]

    def _one(self, text: str, rng) -> str:
        words = text.split()
        n = len(words)
        if n < 2:
            return text
        for _ in range(round(self.swap * n)):
            i, j = rng.randrange(n), rng.randrange(n)
            words[i], words[j] = words[j], words[i]
        kept = [w for w in words if rng.random() >= self.delete] or [rng.choice(words)]
        for _ in range(round(self.replace * n)):
            kept[rng.randrange(len(kept))] = rng.choice(self.vocabulary)
        return " ".join(kept)


def mix_rows(x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``λ·x + (1 − λ)·x`` rolled by one along the batch: each row mixed with the one before it (the first with the
    last), as torchvision's ``MixUp`` pairs a batch."""
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    return lam * x + (1 - lam) * x.roll(1, 0)
