"""Prototype layers: classify a feature vector by its distance to a few prototypes per class.

``Classification(prototypes=K)`` puts this layer where the linear layer would be. Each class has ``K`` prototype
vectors; a class's logit is the log-sum-exp of the example's negative distances to its prototypes, so the softmax
over classes is a mixture over prototypes (with ``K = 1``, the prototypical network of Snell et al. 2017,
"Prototypical Networks for Few-shot Learning", arXiv 1703.05175; with learned prototypes and several per class the
prototypical fine-tuning of Jin et al. 2022, "Prototypical Fine-tuning: Towards Robust Performance Under Varying
Data Sizes", arXiv 2211.13638).

What is built of PFit's four principles, and what is not:

* mixture prototype initialisation — yes: before training, each class's prototypes start at the centres of a
  k-means of its training examples' features (one prototype: the class mean), so the untrained head is already
  the nearest-centroid classifier (:meth:`PrototypeLayer.initialise`; the task calls it through ``prepare``);
* adaptive prototype refinement — yes: the prototypes are parameters that learn with the head;
* dynamic diversity regularisation — yes, as a fixed-margin penalty: ``diversity`` weighs
  ``mean(relu(margin − d(p_i, p_j)))`` over prototype pairs of different classes (:meth:`PrototypeLayer.penalty`);
* infinite mixture prototype creation (adding and pruning prototypes while training) — not built: the number per
  class is fixed, so the optimiser state and checkpoints keep their shapes.

``distance="cosine"`` (the default) compares directions, scaled by a learned ``scale`` (starting at 10, the cosine
classifier of Chen et al. 2019, "A Closer Look at Few-shot Classification", arXiv 1904.04232), which suits pooled
transformer and CNN features of arbitrary norm; ``"euclidean"`` is Snell's squared Euclidean distance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError

DISTANCES = ("cosine", "euclidean")


class PrototypeLayer(nn.Module):
    """``[B, in_features]`` features → ``[B, num_classes]`` logits by distance to ``per_class`` prototypes per class.

    Args:
        in_features: the feature size.
        num_classes: classes.
        per_class: prototypes per class.
        distance: ``"cosine"`` or ``"euclidean"``.
        margin: the diversity penalty's margin, in the distance's units (cosine: 1 − cosine similarity).
    """

    def __init__(self, in_features: int, num_classes: int, per_class: int = 1, distance: str = "cosine",
                 margin: float = 0.5):
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"distance must be one of {DISTANCES}, got {distance!r}.")
        if per_class < 1:
            raise ConfigError(f"prototypes per class must be 1 or more, got {per_class}.")
        self.num_classes, self.per_class, self.distance, self.margin = num_classes, per_class, distance, margin
        self.prototypes = nn.Parameter(torch.randn(num_classes * per_class, in_features) / math.sqrt(in_features))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)), requires_grad=distance == "cosine")
        # Whether the prototypes were placed on data (saved with the weights, so a loaded model is not re-placed).
        self.register_buffer("initialised", torch.tensor(False))

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, P]``: each example's distance to each prototype (class ``c`` owns rows ``c*K .. c*K+K-1``)."""
        if self.distance == "cosine":
            return 1.0 - F.normalize(x.float(), dim=-1) @ F.normalize(self.prototypes.float(), dim=-1).T
        return torch.cdist(x.float(), self.prototypes.float()).pow(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.distances(x)
        scale = self.log_scale.exp() if self.distance == "cosine" else 1.0
        return torch.logsumexp((-scale * d).view(len(x), self.num_classes, self.per_class), dim=-1)

    def penalty(self) -> torch.Tensor:
        """The diversity penalty: how far prototypes of different classes are inside ``margin`` of each other."""
        p = self.prototypes.float()
        d = 1.0 - F.normalize(p, dim=-1) @ F.normalize(p, dim=-1).T if self.distance == "cosine" else \
            torch.cdist(p, p).pow(2)
        owner = torch.arange(len(p), device=p.device) // self.per_class
        other = owner[:, None] != owner[None, :]
        return F.relu(self.margin - d[other]).mean() if other.any() else p.sum() * 0

    @torch.no_grad()
    def initialise(self, features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        """Place each class's prototypes at the k-means centres of its examples' ``features`` (the class mean for one
        prototype); a class with fewer examples than prototypes repeats them."""
        generator = torch.Generator().manual_seed(seed)
        features = features.float().cpu()
        if self.distance == "cosine":
            features = F.normalize(features, dim=-1)
        for c in range(self.num_classes):
            mine = features[labels.cpu() == c]
            if len(mine) == 0:
                continue  # a class absent from the data keeps its random prototypes
            centres = _kmeans(mine, self.per_class, generator)
            rows = slice(c * self.per_class, (c + 1) * self.per_class)
            self.prototypes[rows] = centres.to(self.prototypes.device, self.prototypes.dtype)
        self.initialised.fill_(True)


def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20) -> torch.Tensor:
    """``k`` centres of the rows of ``x`` (Lloyd's algorithm from ``k`` distinct random rows; rows repeat when fewer)."""
    if k == 1:
        return x.mean(0, keepdim=True)
    start = torch.randperm(len(x), generator=generator)[:k]
    centres = x[start.repeat(-(-k // len(start)))[:k]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            members = x[nearest == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres
