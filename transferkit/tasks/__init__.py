"""Tasks: modules that turn raw examples into batches and return a dict with ``loss``.

The :class:`~transferkit.Trainer` trains any task with this shape:

* ``examples(data)`` → a list of examples, or a ``torch.utils.data.IterableDataset`` that streams them
  from disk (checks the data against the model);
* ``collate(examples)`` → a batch (a dict of tensors, preprocessed by the backbone);
* ``forward(batch)`` → ``{"loss": ..., ...}``;
* ``metrics()`` → a fresh streaming metric with ``update(batch, outputs)`` and ``compute() -> dict``.
"""

from .classification import ClassificationMetrics, ClassificationTask

__all__ = ["ClassificationTask", "ClassificationMetrics"]
