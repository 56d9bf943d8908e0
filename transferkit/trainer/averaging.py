"""Weight averaging: a moving average of the weights while training, and greedy model soups over finished runs.

**EMA.** ``Trainer(ema=0.999)`` keeps an exponential moving average of the weights that learn (and of floating-point
buffers such as BatchNorm statistics): after each optimiser step ``shadow ← d·shadow + (1 − d)·weights`` with
``d = min(ema, (1 + step) / (10 + step))``, the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=)``,
so the early average is not dominated by the random head it starts from. Validation, the choice of the best epoch and
the weights ``fit`` leaves in the model are the averaged ones; the live weights keep training. The average is the
Polyak–Ruppert averaging of Polyak & Juditsky 1992, as timm's ``ModelEmaV3`` keeps it for image models; on small
data it smooths the noise of the last steps. Only what learns is shadowed (adapters under LoRA, not the frozen
backbone), parameters that start to learn later (gradual unfreezing) join the average when they do, and the shadow
is part of the checkpoint (``ema.safetensors``), so a resumed run is exact.

**Greedy soup** (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", arXiv 2203.05482, recipe 1). Given runs fine-tuned from the same
pretrained weights, rank them by their own validation score, start the soup with the best, and add each next run if
the average of the soup with it scores at least as well on validation. The soup is one model, as fast as any
ingredient, and never worse than the best ingredient on validation (it is chosen there: its validation figure is
optimistic, its test figure is not). ``Trainer(seeds=[...], keep="soup")`` makes a soup of the seeds' runs.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from transferkit.errors import ConfigError

FILE = "ema.safetensors"  # the shadow's file in a checkpoint directory


def check_decay(decay: Any) -> None:
    if decay is not None and not (isinstance(decay, float) and 0.0 < decay < 1.0):
        raise ConfigError(f"ema is the decay of the moving average, a float between 0 and 1 (e.g. 0.999; closer to "
                          f"1 averages over more steps), or None; got {decay!r}.")


class Ema:
    """The moving average of a model's learning weights (see the module docstring).

    Args:
        decay: the largest decay (the average spans about ``1 / (1 − decay)`` steps once warmed up).
    """

    def __init__(self, decay: float):
        check_decay(decay)
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def rate(self, step: int) -> float:
        """The decay used after optimiser step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights after optimiser step ``step`` into the average."""
        decay = self.rate(step)
        olds, news = [], []
        for name, value in model.state_dict(keep_vars=True).items():
            if not _averaged(value):
                continue
            if name not in self.shadow:  # starts learning now: its average starts at its value
                self.shadow[name] = value.detach().clone()
            elif value.dtype.is_floating_point:
                olds.append(self.shadow[name])
                news.append(value.detach())
            else:  # integer buffers (BatchNorm's num_batches_tracked) are counts, not averaged
                self.shadow[name].copy_(value)
        if olds:
            torch._foreach_lerp_(olds, news, 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in ``model`` inside the block, its own weights back after it."""
        live = {name: value.detach().clone() for name, value in model.state_dict().items() if name in self.shadow}
        self.copy_to(model)
        try:
            yield
        finally:
            _load(model, live)

    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into ``model`` for good."""
        _load(model, self.shadow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().contiguous().cpu() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Restore the shadow a checkpoint kept, on ``model``'s devices."""
        weights = model.state_dict()
        unknown = sorted(set(state) - set(weights))
        if unknown:
            from transferkit.errors import CheckpointError

            raise CheckpointError(f"the checkpoint's moving average holds {unknown[:3]}, which this model does not "
                                  "have; resume with the model the run started with, or resume=False.")
        self.shadow = {name: value.to(weights[name].device, weights[name].dtype) for name, value in state.items()}


def _averaged(value: Any) -> bool:
    """What the average follows: parameters that learn now, and buffers (statistics that move with the data)."""
    if isinstance(value, nn.Parameter):
        return value.requires_grad
    return isinstance(value, torch.Tensor)


@torch.no_grad()
def _load(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for name, value in weights.items():
        own[name].copy_(value)


# ------------------------------------------------------------------------------------------------- model soups

@dataclass
class Soup:
    """What :func:`greedy_soup` made.

    Attributes:
        model: the soup (a copy of the first ingredient's model holding the averaged weights).
        ingredients: indices into the models given, in the order they joined (the best first).
        scores: each model's own validation score, in the order given.
        score: the soup's validation score.
        tried: ``(index, soup score with it, joined)`` for each candidate after the first.
    """

    model: nn.Module = field(repr=False)
    ingredients: list[int]
    scores: list[float]
    score: float
    tried: list[tuple[int, float, bool]]


def average(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The uniform average of the models' floating-point weights (integer buffers from the first model)."""
    states = [m.state_dict() for m in models]
    _same_shapes(states)
    out = {}
    for name, value in states[0].items():
        if value.dtype.is_floating_point:
            out[name] = torch.stack([s[name].detach().to(value.device).float() for s in states]).mean(0).to(value.dtype)
        else:
            out[name] = value.detach().clone()
    return out


def greedy_soup(models: Sequence[nn.Module], score: Callable[[nn.Module], float], *, higher_is_better: bool = True,
                scores: Sequence[float] | None = None, order: Sequence[int] | None = None) -> Soup:
    """Greedy soup of ``models`` on a validation ``score`` (see the module docstring).

    Args:
        models: fine-tuned models of one architecture, best fine-tuned from the same pretrained weights (averaging
            models that share no starting point gives a poor soup, and the greedy rule then keeps only the best).
        score: ``model → validation figure``, e.g. ``lambda m: trainer.evaluate(m, val)["accuracy"]``.
        higher_is_better: the figure's direction.
        scores: each model's own score when already known (a run's kept validation value); else computed.
        order: the indices of ``models`` in the order they are tried, best first (e.g. ties broken by validation
            loss); default: by their own scores, ties in the order given.
    """
    if not models:
        raise ConfigError("greedy_soup needs at least one model.")
    _same_shapes([m.state_dict() for m in models])
    own = [float(s) for s in scores] if scores is not None else [float(score(m)) for m in models]
    sign = 1.0 if higher_is_better else -1.0
    order = list(order) if order is not None else sorted(range(len(models)), key=lambda i: -sign * own[i])
    soup = copy.deepcopy(models[order[0]])
    total = {name: value.detach().float().clone() for name, value in models[order[0]].state_dict().items()
             if value.dtype.is_floating_point}
    ingredients, best, tried = [order[0]], own[order[0]], []
    for index in order[1:]:
        weights = models[index].state_dict()
        candidate = {name: (value + weights[name].detach().to(value.device).float()) / (len(ingredients) + 1)
                     for name, value in total.items()}
        _load(soup, candidate)
        value = float(score(soup))
        joined = sign * value >= sign * best  # "at least as well": the paper's recipe
        tried.append((index, value, joined))
        if joined:
            ingredients.append(index)
            best = value
            for name in total:
                total[name] += weights[name].detach().to(total[name].device).float()
    _load(soup, {name: value / len(ingredients) for name, value in total.items()})
    return Soup(model=soup, ingredients=ingredients, scores=own, score=best, tried=tried)


def _same_shapes(states: list[dict]) -> None:
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ConfigError(f"model {i} is not the same architecture as model 0 (other weights or shapes): only "
                              "models of one architecture can be averaged.")
