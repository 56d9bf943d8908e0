"""Which validation metric selects the best epoch, and in which direction; custom metrics.

Everything here comes from the task (:mod:`transferkit.tasks.protocol`): its ``default_metric``, and the
``higher_is_better`` of its metrics object. The Trainer adds custom metrics::

    Trainer(metrics={"mcc": mcc})                 # higher is better
    Trainer(metrics={"mse": (mse, "min")})        # lower is better
    Trainer(metrics={"mcc": mcc}, metric="mcc")   # and select on it

A custom ``fn`` receives ``metrics.custom_metric_input()`` when the task's metrics object defines it
(classification: the streamed confusion matrix, a NumPy array), else the metrics object itself after
``compute()``, and returns a number.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from transferkit.errors import ConfigError
from transferkit.tasks.protocol import metric_directions

DIRECTIONS = {"max": True, "min": False}


@dataclass(frozen=True)
class CustomMetric:
    """A user's validation metric: ``fn`` and whether a higher value is better."""

    fn: Callable[[Any], float]
    higher_is_better: bool = True


def custom_metrics(spec: Mapping[str, Any]) -> dict[str, CustomMetric]:
    """``Trainer.metrics`` read: ``name → fn``, ``name → (fn, "max" | "min")`` or a :class:`CustomMetric`.

    Raises:
        ConfigError: a value of another form, or a name that is not a non-empty string.
    """
    out = {}
    for name, value in dict(spec).items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"custom metric names must be non-empty strings, got {name!r}.")
        if isinstance(value, CustomMetric):
            out[name] = value
        elif callable(value):
            out[name] = CustomMetric(value)
        elif isinstance(value, tuple) and len(value) == 2 and callable(value[0]) and value[1] in DIRECTIONS:
            out[name] = CustomMetric(value[0], DIRECTIONS[value[1]])
        else:
            raise ConfigError(f"metrics[{name!r}] must be fn, (fn, 'max') or (fn, 'min') — 'min' when a lower "
                              f"value is better — got {value!r}.")
    return out


def directions(task: nn.Module, custom: Mapping[str, CustomMetric], metrics: Any = None) -> dict[str, bool]:
    """Every metric the task reports and every custom one → whether higher is better.

    Args:
        metrics: the task's metrics object (a fresh ``task.metrics()`` when not given).

    Raises:
        ConfigError: a custom metric has the name of one the task reports.
    """
    found = metric_directions(task.metrics() if metrics is None else metrics)
    clash = sorted(set(found) & set(custom))
    if clash:
        raise ConfigError(f"custom metrics {clash} have the names of metrics {type(task).__name__} reports; "
                          "give them other names.")
    return {**found, **{name: m.higher_is_better for name, m in custom.items()}}


def resolve(metric: str | None, task: nn.Module, custom: Mapping[str, CustomMetric]) -> tuple[str, bool]:
    """The selection metric and whether higher is better: ``metric``, or the task's ``default_metric``.

    Raises:
        ConfigError: the task reports no such metric (the message lists those it reports).
    """
    name = metric if metric is not None else getattr(task, "default_metric", "loss")
    known = directions(task, custom)
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"metric {name!r} is not one {type(task).__name__} reports: choose one of "
                          f"{sorted(known)}, or add it with Trainer(metrics={{{name!r}: fn}}).{hint}")
    return name, known[name]


def custom_values(metrics: Any, custom: Mapping[str, CustomMetric]) -> dict[str, float]:
    """Each custom metric's value on an evaluated metrics object (see the module docstring)."""
    if not custom:
        return {}
    given = metrics.custom_metric_input() if hasattr(metrics, "custom_metric_input") else metrics
    return {name: float(m.fn(given)) for name, m in custom.items()}
