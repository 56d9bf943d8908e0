"""Tasks: modules that turn raw examples into batches and return a dict with ``loss``.

The :class:`~transferkit.Trainer` trains any task that follows the protocol written down in
:mod:`.protocol` (:class:`Task`, :class:`Metrics`):

* ``examples(data)`` → a list of examples, or a ``torch.utils.data.IterableDataset`` that streams them
  from disk (checks the data against the model);
* ``collate(examples)`` → a batch (a dict of tensors, preprocessed by the backbone);
* ``forward(batch)`` → ``{"loss": ..., optional "num_items": ..., ...}``;
* ``metrics()`` → a fresh streaming metric with ``update(batch, outputs)``, ``compute() -> dict`` and
  ``higher_is_better`` (each metric's direction);
* ``default_metric`` → the metric that selects the best epoch when the user names none.

Here live the tasks and their pretext views and losses (:mod:`.text`, :mod:`.vision`, :mod:`.vision_views`,
:mod:`.pixels`). What they read lives in :mod:`transferkit.data` (labelled data, text corpora, image
folders); the word-vector trainers live with their backbones in :mod:`transferkit.backbones.word_vectors`.
The old paths ``tasks.corpus``, ``tasks.text_corpus``, ``tasks.vision_data``, ``tasks.word_vectors`` and
``tasks.glove`` re-export the moved names for one release.
"""

from .classification import ClassificationMetrics, ClassificationTask
from .multilabel import MultiLabelTask, tune_thresholds
from .protocol import ClassWeighted, Metrics, Task

__all__ = ["ClassificationTask", "ClassificationMetrics", "ClassWeighted", "Metrics", "MultiLabelTask", "Task",
           "tune_thresholds"]
