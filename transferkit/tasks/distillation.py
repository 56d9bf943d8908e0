"""Knowledge distillation: a student model learns from a fine-tuned teacher's outputs, across families.

``Trainer().fit(DistillationTask(student, teacher), train, val)`` trains ``student`` (any backbone: a GloVe
student of a MiniLM teacher, a small CNN of a large one) on its own task's loss mixed with the teacher's outputs:

* classification — the KL divergence between the teacher's and the student's class distributions softened by a
  temperature ``T``, scaled by ``T²`` (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", arXiv
  1503.02531): ``loss = alpha · task loss + (1 − alpha) · T² · KL(softmax(t/T) ‖ softmax(s/T))``;
* other heads (regression, multi-label) — the squared error between the raw outputs (logit matching, Ba & Caruana
  2014, "Do Deep Nets Really Need to be Deep?", arXiv 1312.6184);
* optionally ``features > 0``: the squared error between the teacher's pooled features and a learnt linear map of
  the student's (FitNets' hint loss, Romero et al. 2015, arXiv 1412.6550), weighted by ``features``.

The teacher runs once, before training, over every example (texts batched by length, in inference mode); its
outputs travel with the examples, so an epoch costs the student's forward and backward passes only and the teacher
may be of any family — it reads the raw inputs with its own preprocessing. Unlabelled inputs can join the
training data with the teacher's labels (:func:`teacher_labels`): distillation's main strength, more data than was
ever labelled.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from transferkit.errors import ConfigError


class Distilled:
    """One example of the student's task with the teacher's outputs on it; indexes and reads as the student's
    example (its raw input first), so hooks that read examples (class counts, lengths) see the usual ones."""

    __slots__ = ("example", "logits", "features")

    def __init__(self, example: Any, logits: torch.Tensor, features: torch.Tensor | None):
        self.example, self.logits, self.features = example, logits, features

    def __getitem__(self, index):
        return self.example[index]

    def __len__(self) -> int:
        return len(self.example)

    @property
    def origin(self):
        return getattr(self.example, "origin", None)


def teacher_labels(teacher: nn.Module, inputs: Sequence[Any], batch_size: int = 64) -> list:
    """The teacher's most likely class for each unlabelled input: add ``(inputs, teacher_labels(...))`` to the
    training data to distil on more than was ever labelled (the transfer set of Hinton et al. 2015)."""
    return list(teacher.predict(list(inputs), batch_size=batch_size))


class DistillationTask(nn.Module):
    """The student's own task (examples, batches, metrics) with the teacher's outputs as extra targets.

    Args:
        student: the :class:`~transferkit.TransferModel` that learns (its head's task gives loss and metrics).
        teacher: a fine-tuned model with a head of the same kind and the same classes (any backbone family).
        temperature: softens both distributions (classification); 1 is none, 2–4 is usual.
        alpha: weight of the student's own task loss; ``1 − alpha`` weighs the distillation term.
        features: weight of the feature-matching term; 0 (default) turns it off.
        teacher_batch_size: inputs per teacher forward pass when its outputs are computed.
        **task_options: passed to the student's task (``input_column``, ``label_column``...).

    Raises:
        ConfigError: teacher and student heads of different kinds or classes; ``alpha`` outside [0, 1] or a
            temperature <= 0.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5,
                 features: float = 0.0, teacher_batch_size: int = 64,
                 **task_options: Any):
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha weighs the task loss against the teacher's and must be in [0, 1], got {alpha!r}.")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (1 leaves the distributions as they are), got {temperature!r}.")
        kinds = [getattr(m.head, "head_type", type(m.head).__name__) for m in (student, teacher)]
        if kinds[0] != kinds[1]:
            raise ConfigError(f"the teacher has a {kinds[1]} head and the student a {kinds[0]} head: distillation "
                              "matches their outputs, so give the student a head of the teacher's kind.")
        self.kind = kinds[0]
        self.task = student.task(**task_options)
        self.default_metric = getattr(self.task, "default_metric", "loss")
        object.__setattr__(self, "teacher", teacher)  # not a submodule: it neither trains nor is saved
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.features = float(features)
        self.teacher_batch_size = teacher_batch_size
        self.project = nn.Linear(student.backbone.feature_dim, teacher.backbone.feature_dim) if features else None
        self._pooled: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        """The student (what strategies freeze and unfreeze, and what is saved)."""
        return self.task.model

    def examples(self, data: Any) -> list[Distilled]:
        """The student task's examples, each with the teacher's outputs on its raw input."""
        examples = list(self.task.examples(data))
        logits = self._teacher_logits([e[0] for e in examples])
        feats = self.teacher.backbone.encode([e[0] for e in examples], self.teacher_batch_size) if self.features \
            else [None] * len(examples)
        return [Distilled(e, logits[i], feats[i]) for i, e in enumerate(examples)]

    def _teacher_logits(self, raw: list) -> torch.Tensor:
        logits, _ = self.teacher.outputs(raw, self.teacher_batch_size)
        student_labels = getattr(self.model.head, "labels", None)
        teacher_labels = getattr(self.teacher.head, "labels", None)
        if self.kind == "classification" and student_labels is not None and teacher_labels is not None:
            if sorted(map(str, student_labels)) != sorted(map(str, teacher_labels)):
                raise ConfigError(f"the teacher's classes {list(teacher_labels)[:10]} are not the student's "
                                  f"{list(student_labels)[:10]}: distil a teacher fine-tuned on the same labels.")
            position = {str(label): i for i, label in enumerate(teacher_labels)}
            logits = logits[:, [position[str(label)] for label in student_labels]]
        elif logits.shape[-1] != getattr(self.model.head, "num_classes", logits.shape[-1]):
            raise ConfigError(f"the teacher gives {logits.shape[-1]} outputs per input and the student's head "
                              f"{self.model.head.num_classes}: give them the same outputs.")
        return logits

    def collate(self, examples: Sequence[Distilled]) -> dict[str, Any]:
        batch = self.task.collate([e.example for e in examples])
        batch["teacher_logits"] = torch.stack([e.logits for e in examples])
        if self.features:
            batch["teacher_features"] = torch.stack([e.features for e in examples])
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._pooled.clear()
        hook = self.model.backbone.register_forward_hook(
            lambda module, args, out: self._pooled.append(out.pooled)) if self.features else None
        try:
            out = self.task(batch)
        finally:
            if hook is not None:
                hook.remove()
        student, teacher = out["logits"], batch["teacher_logits"].to(out["logits"].device)
        if self.kind == "classification":
            t = self.temperature
            soft = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                            reduction="batchmean", log_target=True) * t * t
        else:
            soft = F.mse_loss(student.float(), teacher.float())
        loss = self.alpha * out["loss"] + (1 - self.alpha) * soft
        extra = {"task_loss": out["loss"].detach(), "distill_loss": soft.detach()}
        if self.features:
            hint = F.mse_loss(self.project(self._pooled[-1]), batch["teacher_features"].to(student.device))
            loss = loss + self.features * hint
            extra["feature_loss"] = hint.detach()
        return {**out, "loss": loss, **extra}

    def metrics(self):
        """The student task's metrics (on the real labels of the validation data)."""
        return self.task.metrics()
