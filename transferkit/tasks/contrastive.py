"""Contrastive few-shot fine-tuning, SetFit's recipe (Tunstall et al. 2022, "Efficient Few-Shot Learning Without
Prompts", arXiv 2209.11055) for any backbone, text or image: tune the body on pairs of examples so that examples of
one class embed close together and examples of different classes far apart, then fit a classifier on the tuned
embeddings.

    task = ContrastiveTask(model, pairs_per_example=20)   # model: a TransferModel with a Classification head
    tk.Trainer(epochs=1, lr=2e-5, batch_size=16).fit(task, train)
    fit_head(model, train)                                 # scikit-learn's logistic regression, into the head

**Pairs in bounded memory.** SetFit draws its pairs up front, and its pair generation grows with the square of
the data (setfit #628, #472, #249). :class:`Pairs` keeps only the labels and one index list per class (memory
linear in the examples) and makes pair ``i`` when it is asked for: its anchor is example ``i // pairs_per_example``,
even ``i`` a positive (another example of the anchor's class), odd ``i`` a negative (an example of another class),
the partner drawn from a generator seeded by ``(seed, epoch, i)`` — the same pairs for a seed, new ones each epoch,
and ``pairs_per_example × n`` pairs an epoch, however large ``n``.

**The loss** is SetFit's default ``CosineSimilarityLoss``: the squared error between the cosine similarity of the
two pooled embeddings and the pair's target (1 for a positive, 0 for a negative).

**The head.** :func:`fit_head` embeds the training data with the tuned backbone, fits a scikit-learn linear
classifier (``LogisticRegression`` by default, SetFit's head) and writes its coefficients into the model's linear
classification head, so the model saves as safetensors and predicts like any other (no pickled estimator; a
scikit-learn model without ``coef_`` and ``intercept_`` is refused).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data import preprocess_named
from transferkit.errors import ConfigError, DataError

from .classification import ClassificationTask


class Pairs(torch.utils.data.Dataset):
    """``pairs_per_example × n`` pairs of the examples, made on demand (see the module docstring).

    Args:
        examples: ``(input, class id)`` examples.
        pairs_per_example: pairs per example and epoch (SetFit's ``num_iterations`` × 2).
        seed: the pairs' seed.
    """

    def __init__(self, examples: Sequence[tuple[Any, int]], pairs_per_example: int = 20, seed: int = 0):
        if pairs_per_example < 2 or pairs_per_example % 2:
            raise ConfigError(f"pairs_per_example is an even number, 2 or more (half positive, half negative); got "
                              f"{pairs_per_example}.")
        self.examples = examples
        self.pairs_per_example, self.seed, self.epoch = pairs_per_example, seed, 0
        self.labels = np.fromiter((e[-1] for e in examples), dtype=np.int64, count=len(examples))
        order = np.argsort(self.labels, kind="stable")
        classes, starts = np.unique(self.labels[order], return_index=True)
        if len(classes) < 2:
            raise DataError(f"contrastive pairs need at least two classes; the data has {len(classes)}.")
        self.by_class = dict(zip(classes.tolist(), np.split(order, starts[1:])))
        small = [c for c, idx in self.by_class.items() if len(idx) < 2]
        if small:
            raise DataError(f"classes {small[:5]} have one example each: a positive pair needs two examples of a "
                            "class. Add examples, or drop those classes.")
        self.classes = classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples) * self.pairs_per_example

    def __getitem__(self, i: int) -> tuple[Any, Any, float]:
        anchor = i // self.pairs_per_example
        rng = np.random.default_rng((self.seed, self.epoch, i))
        own = int(self.labels[anchor])
        if i % 2 == 0:  # positive: another example of the anchor's class
            same = self.by_class[own]
            partner = int(same[rng.integers(len(same) - 1)])
            partner = partner if partner != anchor else int(same[-1])  # the draw skips the anchor itself
            target = 1.0
        else:  # negative: a class other than the anchor's, then one of its examples
            other = self.classes[self.classes != own]
            members = self.by_class[int(other[rng.integers(len(other))])]
            partner, target = int(members[rng.integers(len(members))]), 0.0
        return self.examples[anchor][0], self.examples[partner][0], target


class ContrastiveTask(nn.Module):
    """Tune a model's backbone on contrastive pairs (SetFit's first stage; see the module docstring).

    Args:
        model: a :class:`~transferkit.TransferModel` whose head is a :class:`~transferkit.heads.Classification`
            (its labels are read from the data, for :func:`fit_head`); only the backbone learns here.
        pairs_per_example: pairs per example and epoch.
        seed: the pairs' seed.
        input_column, label_column: the columns of a table.
    """

    default_metric = "loss"

    def __init__(self, model: nn.Module, pairs_per_example: int = 20, seed: int = 0, input_column: str = "text",
                 label_column: str = "label"):
        super().__init__()
        self.model = model
        self.pairs_per_example, self.seed = pairs_per_example, seed
        self.reader = ClassificationTask(model, input_column=input_column, label_column=label_column)

    def examples(self, data: Any) -> Pairs:
        return Pairs(self.reader.examples(data), self.pairs_per_example, self.seed)

    def collate(self, pairs: Sequence[tuple[Any, Any, float]]) -> dict[str, Any]:
        origins = [f"pair {i}" for i in range(len(pairs))]
        preprocess = self.model.backbone.preprocess
        return {"a": preprocess_named(preprocess, [a for a, _, _ in pairs], origins),
                "b": preprocess_named(preprocess, [b for _, b, _ in pairs], origins),
                "targets": torch.tensor([t for _, _, t in pairs], dtype=torch.float32)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        a = self.model.backbone(**batch["a"]).pooled.float()
        b = self.model.backbone(**batch["b"]).pooled.float()
        similarity = F.cosine_similarity(a, b, dim=-1)
        return {"loss": F.mse_loss(similarity, batch["targets"]), "similarity": similarity}

    def metrics(self) -> "PairMetrics":
        return PairMetrics()


class PairMetrics:
    """The loss, and how often a pair's cosine similarity is on its target's side of 0.5."""

    higher_is_better = {"loss": False, "pair_accuracy": True}

    def __init__(self):
        self.loss_sum, self.right, self.count = 0.0, 0, 0

    def update(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        targets = batch["targets"].cpu()
        self.loss_sum += float(outputs["loss"]) * len(targets)
        self.right += int(((outputs["similarity"].cpu() > 0.5).float() == targets).sum())
        self.count += len(targets)

    def compute(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.count, 1), "pair_accuracy": self.right / max(self.count, 1)}


def fit_head(model: nn.Module, data: Any, estimator: Any = None, batch_size: int = 64) -> Any:
    """Fit ``estimator`` (default ``LogisticRegression(max_iter=1000)``) on the backbone's features of ``data`` and put
    its linear decision function into the model's classification head; returns the fitted estimator.

    The head must be a linear :class:`~transferkit.heads.Classification` (no hidden layer, no prototypes): its logits
    then equal the estimator's ``decision_function`` (for two classes, ``[0, z]``, the same probabilities).

    Raises:
        ConfigError: the head is not a linear classifier, or the estimator has no ``coef_`` / ``intercept_``.
    """
    head = model.head
    if getattr(head, "head_type", None) != "classification" or head.hidden or head.prototypes is not None:
        raise ConfigError("fit_head writes a linear classifier into a linear Classification head (no hidden layer, "
                          "no prototypes); build the model with tk.heads.Classification().")
    examples = ClassificationTask(model).examples(data)
    features = model.backbone.encode([x for x, _ in examples], batch_size).float().cpu().numpy()
    labels = np.array([y for _, y in examples])
    if estimator is None:
        from sklearn.linear_model import LogisticRegression

        estimator = LogisticRegression(max_iter=1000)
    estimator.fit(features, labels)
    if not hasattr(estimator, "coef_") or not hasattr(estimator, "intercept_"):
        raise ConfigError(f"{type(estimator).__name__} has no coef_ and intercept_: only linear scikit-learn "
                          "classifiers (LogisticRegression, RidgeClassifier, LinearSVC...) can become the head, "
                          "saved as weights without pickle.")
    coef = torch.as_tensor(np.asarray(estimator.coef_), dtype=torch.float32)
    bias = torch.as_tensor(np.asarray(estimator.intercept_), dtype=torch.float32).reshape(-1)
    classes = list(np.asarray(estimator.classes_).tolist())
    weight = torch.zeros(head.num_classes, coef.shape[1])
    offset = torch.zeros(head.num_classes)
    if coef.shape[0] == 1:  # binary: the decision function is the second class's logit against the first's zero
        weight[classes[1]], offset[classes[1]] = coef[0], bias[0]
    else:
        for row, c in enumerate(classes):
            weight[c], offset[c] = coef[row], bias[row]
    linear = head.layers[-1]
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight))
        linear.bias.copy_(offset.to(linear.bias))
    return estimator
