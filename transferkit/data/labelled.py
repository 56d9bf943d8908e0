"""The labelled-data container (parallel inputs, labels and origins) and its split."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from transferkit.errors import DataError, TooFewToSplitError

# A class gives validation examples only from this many on: it keeps at least two for training.
MIN_TO_HOLD_OUT = 3


@dataclass
class LabelledData:
    """Parallel lists of raw inputs, their labels and where each came from.

    Attributes:
        inputs: raw inputs (strings, image paths, arrays...).
        labels: class names (or integer class ids for a head without names).
        origins: where each example is in the user's data, e.g. ``"train.csv line 7"``; defaults to
            ``"item i"``.
        input_column: the column the inputs were read from, when they came from a table.
    """

    inputs: list
    labels: list
    origins: list[str] | None = None
    input_column: str | None = None

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.labels)} labels: they must pair up.")
        if self.origins is None:
            self.origins = [f"item {i}" for i in range(len(self.inputs))]
        elif len(self.origins) != len(self.inputs):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.origins)} origins: they must pair up.")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: Sequence[int]) -> "LabelledData":
        return LabelledData([self.inputs[i] for i in indices], [self.labels[i] for i in indices],
                            [self.origins[i] for i in indices], self.input_column)


def stratified_split(data: LabelledData, fraction: float, seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """Hold out ``fraction`` of each class that has :data:`MIN_TO_HOLD_OUT` or more examples (at least one of
    each such class); smaller classes keep all theirs for training, so no class is left without training
    examples and none keeps fewer than two.

    Raises:
        TooFewToSplitError: no class has :data:`MIN_TO_HOLD_OUT` examples (``finetune`` then trains on all of
            them and keeps the last epoch's weights).
    """
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}.")
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(data.labels):
        by_class.setdefault(str(y), []).append(i)
    train, held = [], []
    for indices in by_class.values():
        rng.shuffle(indices)
        k = 0 if len(indices) < MIN_TO_HOLD_OUT else min(len(indices) - 2, max(1, round(len(indices) * fraction)))
        held += indices[:k]
        train += indices[k:]
    if not held:
        raise TooFewToSplitError(f"{len(data)} examples are too few to hold out a validation split (no class has "
                                 f"{MIN_TO_HOLD_OUT} or more): pass --val data.")
    return data.subset(sorted(train)), data.subset(sorted(held))


def random_split(data: LabelledData, fraction: float, seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """Hold out ``fraction`` of the examples at random (at least one), for labels that are not classes."""
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}.")
    if len(data) < 2:
        raise TooFewToSplitError(f"{len(data)} example is too few to hold out a validation split: pass --val data.")
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    k = min(len(data) - 1, max(1, round(len(data) * fraction)))
    return data.subset(sorted(order[k:])), data.subset(sorted(order[:k]))
