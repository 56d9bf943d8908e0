"""Training logs and reports: CSV files, TensorBoard scalars, loss/metric curves and the task's own figures.

Each logger is a small object whose ``on_*`` methods are :class:`~transferkit.Trainer` callbacks::

    csv = CSVLogger("runs/exp1")
    Trainer(callbacks=csv.callbacks()).fit(model, train, val)

:func:`loggers` builds several by name (``"csv"``, ``"tensorboard"``, ``"report"``) into one callbacks dict.
matplotlib (a dependency) and tensorboard (optional: ``pip install 'transferkit[tensorboard]'``) are
imported only when a logger that needs them starts, so a missing one fails before training, not after.
What a figure shows beyond the curves belongs to the task: the report asks the metrics object of the
restored epoch for its files (``report(output_dir)``; classification's ``confusion.png``, see
:mod:`transferkit.tasks.classification`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from transferkit.errors import ConfigError
from transferkit.files import atomic_path
from transferkit.registry import Registry

# The Trainer's events (``loop.EVENTS``), not imported from there so that loop.py may import this module.
_EVENTS = ("on_train_start", "on_step_end", "on_epoch_end", "on_train_end")
STEP_COLUMNS = ("step", "epoch", "loss", "lr")


def _callbacks(logger: object) -> dict[str, list[Callable]]:
    """The logger's ``on_*`` methods as a Trainer ``callbacks`` dict."""
    return {event: [getattr(logger, event)] for event in _EVENTS if hasattr(logger, event)}


class CSVLogger:
    """Write ``metrics.csv`` (one row per epoch) and ``steps.csv`` (one row per optimiser step).

    ``metrics.csv`` has the columns ``epoch, step, train_loss, val_*..., seconds`` and, once training
    ends with validation data, ``restored`` (``1`` in the row of the epoch whose weights the Trainer
    restored, empty elsewhere); ``steps.csv`` has ``step, epoch, loss, lr`` (``lr`` empty when the trainer
    does not report it). A step costs one list append: step rows are buffered and appended to the file at
    each epoch's end. ``metrics.csv`` is rewritten whole and atomically at each epoch's end, so a column
    first reported at a later epoch gets its header (earlier rows leave it empty).

    A run that starts at epoch 1 replaces earlier files; a resumed run keeps their rows from before its
    first epoch and step.

    Args:
        output_dir: directory of the two files (created if missing).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self._epochs: list[dict[str, Any]] | None = None  # None until this run's first epoch ends
        self._steps: list[tuple] = []
        self._steps_started = False
        self._clock: float | None = None

    def callbacks(self) -> dict[str, list[Callable]]:
        """``{event: [method]}`` for ``Trainer(callbacks=...)``."""
        return _callbacks(self)

    def on_train_start(self, trainer: Any, state: dict) -> None:
        self._epochs, self._steps, self._steps_started = None, [], False
        self._clock = time.perf_counter()

    def on_step_end(self, trainer: Any, state: dict) -> None:
        self._steps.append((state["step"], state["epoch"], state["loss"], state.get("lr")))

    def on_epoch_end(self, trainer: Any, state: dict) -> None:
        now, seconds = time.perf_counter(), state.get("seconds")
        if seconds is None and self._clock is not None:  # trainers that do not time epochs
            seconds = now - self._clock
        self._clock = now
        metrics = state.get("metrics", {})
        row = {"epoch": state.get("epoch", metrics.get("epoch")), "step": state.get("step")}
        row.update((k, v) for k, v in metrics.items() if k != "epoch")
        row["seconds"] = seconds
        if self._epochs is None:
            self._epochs = _rows_before(self.output_dir / "metrics.csv", "epoch", row["epoch"])
        self._epochs.append(row)
        self._flush_steps()
        self._write_metrics()

    def on_train_end(self, trainer: Any, state: dict) -> None:
        self._flush_steps()
        best = state.get("best")
        if not best:
            return
        if self._epochs is None:  # resumed after the last epoch: the file holds every row
            self._epochs = _rows_before(self.output_dir / "metrics.csv", "epoch", math.inf)
        for row in self._epochs:
            row.pop("restored", None)
            if _number(row.get("epoch")) == best["epoch"]:
                row["restored"] = 1
        if self._epochs:
            self._write_metrics()

    def _flush_steps(self) -> None:
        if not self._steps:
            return
        path = self.output_dir / "steps.csv"
        if self._steps_started:
            with open(path, "a", newline="") as f:
                csv.writer(f).writerows(self._steps)
        else:
            earlier = _rows_before(path, "step", self._steps[0][0])
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, STEP_COLUMNS, extrasaction="ignore", lineterminator="\n")
                writer.writeheader()
                writer.writerows(earlier)
                writer.writer.writerows(self._steps)
        self._steps.clear()
        self._steps_started = True

    def _write_metrics(self) -> None:
        columns = list(dict.fromkeys(k for row in self._epochs for k in row if k != "seconds")) + ["seconds"]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._epochs)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            tmp.write_text(text.getvalue(), encoding="utf-8")


def describe_best(history: Sequence[dict], epoch: int, metric: str,
                  higher_is_better: bool | None = None) -> dict[str, Any]:
    """Why the Trainer restored ``epoch``: its selection value, its validation loss and the ties it won.

    Args:
        history: the records of ``Trainer.fit`` (``epoch``, ``val_*``).
        epoch: the restored epoch.
        metric: the selection metric; ``"loss"`` when the history has no ``val_<metric>``.
        higher_is_better: its direction, as the task declares it; ``None``: ``loss`` is minimised, any
            other metric maximised.

    Returns:
        ``{"epoch", "metric", "value", "val_loss", "higher_is_better", "reason"}``; e.g. the reason
        "highest val_accuracy (0.5000), tied with epochs 1-6, 8-20; lowest val_loss among them (0.6750)".
    """
    name = metric if any(f"val_{metric}" in row for row in history) else "loss"
    higher = (name != "loss") if higher_is_better is None or name != metric else higher_is_better
    key = f"val_{name}"
    record = next(row for row in history if row.get("epoch") == epoch)
    value, loss = record[key], record.get("val_loss")
    reason = f"{'highest' if higher else 'lowest'} {key} ({value:.4f})"
    ties = [row["epoch"] for row in history if row is not record and row.get(key) == value]
    if ties:
        reason += f", tied with {_epochs(ties)}"
    if ties and name != "loss" and loss is not None:
        reason += f"; lowest val_loss among them ({loss:.4f})"
        ties = [row["epoch"] for row in history if row["epoch"] in ties and row.get("val_loss") == loss]
        if ties:
            reason += f"; {_epochs(ties)} tie{'s' if len(ties) == 1 else ''} on val_loss too: the earliest kept"
    elif ties:
        reason += ": the earliest kept"
    return {"epoch": epoch, "metric": name, "value": value, "val_loss": loss, "higher_is_better": higher,
            "reason": reason}


def _epochs(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` as ``"epochs 1-3, 5"``; ``[4]`` as ``"epoch 4"``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"epoch {text}" if len(spans) == 1 and spans[0][0] == spans[0][1] else f"epochs {text}"


def _rows_before(path: Path, column: str, first: Any) -> list[dict[str, str]]:
    """Rows of an earlier CSV file whose ``column`` is below ``first``: what a resumed run keeps."""
    if not path.exists() or not isinstance(first, (int, float)) or first <= 1:
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if _number(row.get(column)) < first]


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.inf


class TensorBoardLogger:
    """TensorBoard scalars: ``train/loss`` and ``train/lr`` per step; ``val/<metric>`` per epoch.

    Step scalars use the global step as x-axis; epoch scalars (``val/*``, and ``epoch/train_loss`` and the
    record's other numbers) use the epoch number. A step costs one list append: step scalars are handed
    to the writer every ``flush_every`` steps and at each epoch's end. Needs ``pip install tensorboard``;
    view with ``tensorboard --logdir <log_dir>``.

    Args:
        log_dir: directory of the event files (created if missing).
        flush_every: steps buffered at most before they are written (long epochs still show progress).
    """

    def __init__(self, log_dir: str | os.PathLike, flush_every: int = 500):
        self.log_dir = Path(log_dir)
        self.flush_every = flush_every
        self._writer = None
        self._steps: list[tuple] = []

    def callbacks(self) -> dict[str, list[Callable]]:
        """``{event: [method]}`` for ``Trainer(callbacks=...)``."""
        return _callbacks(self)

    def on_train_start(self, trainer: Any, state: dict) -> None:
        self._open()
        self._steps = []

    def on_step_end(self, trainer: Any, state: dict) -> None:
        self._steps.append((state["step"], state["loss"], state.get("lr")))
        if len(self._steps) >= self.flush_every:
            self._flush_steps()

    def on_epoch_end(self, trainer: Any, state: dict) -> None:
        writer = self._flush_steps()
        metrics = state.get("metrics", {})
        epoch = state.get("epoch", metrics.get("epoch"))
        for key, value in metrics.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                writer.add_scalar(f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}", value, epoch)
        writer.flush()

    def on_train_end(self, trainer: Any, state: dict) -> None:
        if self._writer is not None:
            self._flush_steps()
            self._writer.close()
            self._writer = None

    def _flush_steps(self):
        writer = self._open()
        for step, loss, lr in self._steps:
            writer.add_scalar("train/loss", loss, step)
            if lr is not None:
                writer.add_scalar("train/lr", lr, step)
        self._steps.clear()
        return writer

    def _open(self):
        if self._writer is None:
            # A queue longer than a flush: the writer's thread writes while training goes on.
            self._writer = _summary_writer()(log_dir=str(self.log_dir), max_queue=2 * self.flush_every + 100)
        return self._writer


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'transferkit[tensorboard]').") from e
    return SummaryWriter


class ReportWriter:
    """At the end of training, write ``curves.png`` and the task's own report files.

    The history comes from the ``on_train_end`` state (see :func:`write_report`); the task's files from
    its ``best_metrics`` (the restored epoch's metrics object), when that has ``report(output_dir)``:
    classification writes ``confusion.png``. A state with ``confusion`` (and ``labels``) instead, as
    callers driving the writer by hand may send, draws that matrix. matplotlib is checked at
    ``on_train_start`` so a missing install fails before training.

    Args:
        output_dir: directory of the images (created if missing).

    Attributes:
        paths: the files written by the last ``on_train_end``.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.paths: list[Path] = []
        self._history: list[dict] = []

    def callbacks(self) -> dict[str, list[Callable]]:
        """``{event: [method]}`` for ``Trainer(callbacks=...)``."""
        return _callbacks(self)

    def on_train_start(self, trainer: Any, state: dict) -> None:
        _import_matplotlib()  # fail now, not after training
        self._history = []

    def on_epoch_end(self, trainer: Any, state: dict) -> None:
        self._history.append(dict(state["metrics"]))  # used when the end state carries no history

    def on_train_end(self, trainer: Any, state: dict) -> None:
        history = state.get("history") or self._history
        self.paths = write_report(history, self.output_dir, state.get("confusion"), state.get("labels"))
        metrics = state.get("best_metrics")
        if hasattr(metrics, "report"):
            self.paths += list(metrics.report(self.output_dir))


def write_report(history: Sequence[dict], output_dir: str | os.PathLike, confusion: Any = None,
                 labels: Sequence[str] | None = None) -> list[Path]:
    """Plot a training history (and, for classification, a confusion matrix) as PNG files.

    Args:
        history: one dict per epoch, as returned by ``Trainer.fit`` (``epoch``, ``train_loss``, ``val_*``).
        output_dir: directory of the images (created if missing).
        confusion: ``[C, C]`` counts (tensor or array), rows = true class, columns = predicted; or ``None``.
        labels: the ``C`` class names (default ``0..C-1``).

    Returns:
        The paths written: ``curves.png`` (train/val loss; other ``val_*`` metrics on a second panel) when the
        history is not empty, and ``confusion.png`` when a confusion matrix is given (drawn by
        :func:`transferkit.tasks.classification.save_confusion`). Each file is written to a temporary name
        and renamed, so a reader never sees a partial image.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if history:
        paths.append(_save(_curves_figure(list(history)), output_dir / "curves.png"))
    if confusion is not None:
        from transferkit.tasks.classification import save_confusion

        paths.append(save_confusion(confusion, output_dir, labels))
    return paths


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("reports need matplotlib, a dependency of transferkit: pip install matplotlib") from e
    return Figure, FigureCanvasAgg


def _new_figure(**kwargs):
    """A figure drawn by the Agg canvas: no display, and pyplot's global state is never touched."""
    figure_class, canvas_class = _import_matplotlib()
    figure = figure_class(**kwargs)
    canvas_class(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(history)
              if isinstance(row.get(key), (int, float))]
    return [x for x, _ in points], [y for _, y in points]


def _plot(axes, history: list[dict], keys: Iterable[str], ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    keys = list(keys)
    for key in keys:
        line, = axes.plot(*_series(history, key), marker="o", label=key)
        (x, low), (_, high) = _series(history, f"{key}_low"), _series(history, f"{key}_high")
        if low and len(low) == len(high) and all(v == v for v in low + high):  # over seeds: the 95% interval
            axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if keys:
        axes.legend()


SPREAD_SUFFIXES = ("_std", "_low", "_high")  # a history over seeds (trainer.seeds): drawn as bands, not lines


def _curves_figure(history: list[dict]):
    keys = list(dict.fromkeys(k for row in history for k in row))
    losses = [k for k in ("train_loss", "val_loss") if k in keys]
    others = [k for k in keys if k.startswith("val_") and k != "val_loss" and not k.endswith(SPREAD_SUFFIXES)]
    figure = _new_figure(figsize=(11 if others else 6, 4), dpi=100, layout="constrained")
    panels = figure.subplots(1, 2 if others else 1, squeeze=False)[0]
    _plot(panels[0], history, losses, "loss")
    if others:
        _plot(panels[1], history, others, "validation metric")
    restored = [row["epoch"] for row in history if row.get("restored") and "epoch" in row]
    for axes in panels if restored else ():
        axes.axvline(restored[0], color="grey", linestyle="--", linewidth=1)
        axes.annotate("restored", (restored[0], 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                      textcoords="offset points", color="grey", fontsize=8)
    return figure


LOGGERS: Registry[Callable[[Path], Any]] = Registry("logger", hint="(Trainer(loggers=...))")
LOGGERS.register("csv", CSVLogger)
LOGGERS.register("tensorboard", lambda output_dir: TensorBoardLogger(output_dir / "tensorboard"))
LOGGERS.register("report", ReportWriter)


def loggers(names: str | Iterable[str], output_dir: str | os.PathLike | None) -> dict[str, list[Callable]]:
    """Trainer callbacks for the named loggers, all writing under ``output_dir``.

    Args:
        names: among ``"csv"`` (:class:`CSVLogger`), ``"tensorboard"`` (:class:`TensorBoardLogger`, in
            ``output_dir/tensorboard``) and ``"report"`` (:class:`ReportWriter`).
        output_dir: where the files go.

    Returns:
        ``{event: [fn, ...]}``, ready for ``Trainer(callbacks=...)``.

    Raises:
        ConfigError: an unknown name (close matches listed), or no ``output_dir`` (a ``ValueError``).
    """
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    builders = [LOGGERS.get(name) for name in names]
    if names and output_dir is None:
        raise ConfigError(f"loggers {names} write files: give an output_dir.")
    callbacks: dict[str, list[Callable]] = {}
    for build in builders:
        for event, fns in build(Path(output_dir)).callbacks().items():
            callbacks.setdefault(event, []).extend(fns)
    return callbacks
