"""Train once per seed and report what the seed changes: mean, standard deviation and a 95% interval per metric.

Fine-tuning on little data varies widely with the seed (transformers #265, sentence-transformers #617: "try 10
seeds and compare mean and standard deviation"). ``Trainer(seeds=[0, 1, 2, 3, 4]).fit(model, train, val)`` runs
the Trainer once per seed and keeps the best seed on validation (``keep="best"``, loaded into ``model``) or every
seed's model (``keep="all"``); :func:`compare` runs two or more methods over the same seeds and data and reports
their paired differences::

    trainer = tk.Trainer(epochs=5, seeds=[0, 1, 2, 3, 4])
    history = trainer.fit(build, train, val)      # build(): a fresh model; called after seeding each seed
    print(trainer.seeds_result.table())           # val_accuracy 0.912 ± 0.014 [0.895, 0.929] ...
    result = tk.compare({"full": (build, tk.Trainer(epochs=5)), "lora": (build, tk.Trainer(epochs=5,
                        strategy="lora"))}, train, val, test=test, seeds=range(5))
    print(result.table())                          # paired differences, 95% intervals, p-values

Each seed's run is a whole Trainer run with its own ``output_dir/seed-N`` (checkpoints, metrics.csv, report);
``output_dir/seeds.csv`` holds the per-epoch mean, std and interval over seeds (and ``curves.png`` draws them, the
interval as a band, with the ``"report"`` logger), ``output_dir/seeds.json`` each seed's figures, so a resumed
multi-seed run skips the seeds already done.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from transferkit.errors import ConfigError

from .common import as_task, seed_everything

KEEP = ("best", "all", "soup")


@dataclass(frozen=True)
class Spread:
    """One metric over seeds: the mean, the sample standard deviation, the 95% interval of the mean (Student's
    t with n − 1 degrees of freedom) and the values, in seed order. One seed: no spread (``std`` and the interval
    are ``nan``)."""

    mean: float
    std: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        values = tuple(float(v) for v in values)
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, math.nan, math.nan, math.nan, values)
        from scipy import stats

        std = statistics.stdev(values)
        half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
        return cls(mean, std, mean - half, mean + half, values)

    def __str__(self) -> str:
        if math.isnan(self.std):
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.std:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass
class SeedsResult:
    """What :meth:`Trainer.fit` with ``seeds`` did.

    Attributes:
        seeds: the seeds, in run order.
        runs: one dict per seed: ``seed``, ``history`` (its Trainer history), ``best`` (its ``trainer.best``),
            ``metrics`` (the validation figures of the epoch it kept, or of its last epoch without
            validation data), ``seconds``.
        summary: metric name (``val_accuracy``...) → :class:`Spread` over the seeds' kept epochs.
        metric: the selection metric (``val_<metric>``) that picks the best seed, and ``higher_is_better``.
        best_seed: the seed whose model is kept (``keep="best"``) or ranked first.
        models: seed → trained model (``keep="all"`` and ``"soup"``; with ``keep="best"`` only the best seed's).
        soup: with ``keep="soup"``, the :class:`~.averaging.Soup` of the seeds' models (``soup.ingredients`` index
            ``seeds``); its ``model`` is the model the run leaves. Given a model (not a builder), every seed starts
            from its weights, head included, as the soup paper's runs do (averaging runs from different starting
            points fails); the seed changes the data order and dropout.
    """

    seeds: list[int]
    runs: list[dict]
    summary: dict[str, Spread]
    metric: str
    higher_is_better: bool
    best_seed: int
    models: dict[int, nn.Module] = field(default_factory=dict, repr=False)
    soup: Any = field(default=None, repr=False)

    @property
    def best_model(self) -> nn.Module:
        return self.models[self.best_seed]

    def table(self) -> str:
        """The summary as a markdown table: mean ± std, the 95% interval and each seed's value."""
        lines = ["| metric | mean ± std | 95% interval | " + " | ".join(f"seed {s}" for s in self.seeds) + " |",
                 "|---|---|---|" + "---|" * len(self.seeds)]
        for name, spread in self.summary.items():
            interval = "" if math.isnan(spread.std) else f"[{spread.low:.4f}, {spread.high:.4f}]"
            std = "" if math.isnan(spread.std) else f" ± {spread.std:.4f}"
            lines.append(f"| {name} | {spread.mean:.4f}{std} | {interval} | " +
                         " | ".join(f"{v:.4f}" for v in spread.values) + " |")
        return "\n".join(lines)


def check(seeds: Any, keep: str) -> list[int] | None:
    """The seeds as a list of distinct integers (``None``: one run), and ``keep`` valid; else a ConfigError."""
    if keep not in KEEP:
        raise ConfigError(f"keep must be one of {KEEP}, got {keep!r}.")
    if seeds is None:
        return None
    listed = [seeds] if isinstance(seeds, int) else list(seeds)
    if not listed or not all(isinstance(s, int) and not isinstance(s, bool) for s in listed) or \
            len(set(listed)) != len(listed):
        raise ConfigError(f"seeds must be distinct integers, e.g. seeds=[0, 1, 2, 3, 4]; got {seeds!r}.")
    return listed


def fit_seeds(trainer, model: nn.Module | Callable[[], nn.Module], train: Any, val: Any, resume: bool) -> list[dict]:
    """:meth:`Trainer.fit` once per ``trainer.seeds``; returns the per-epoch history over seeds (see
    :func:`over_seeds`) and leaves a :class:`SeedsResult` in ``trainer.seeds_result``.

    ``model`` is a model (each seed trains a copy whose head is initialised afresh from the seed, so seeds differ
    in the head's initialisation and the data order; the kept seed's weights are loaded into ``model`` at the end)
    or a callable returning a fresh model, called after the global RNGs are seeded with the seed (so a backbone
    from random weights differs per seed too).
    """
    import torch

    seeds = check(trainer.seeds, trainer.keep)
    root = Path(trainer.output_dir) if trainer.output_dir is not None else None
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun every process runs every seed; one writes
    done = _done(root) if resume and root is not None else {}
    runs, models = [], {}
    for seed in seeds:
        seed_everything(seed)
        if callable(model) and not isinstance(model, nn.Module):
            one = model()
        else:  # soup ingredients start from the same weights, the paper's setting; the seed changes the data order
            one = copy.deepcopy(model) if trainer.keep == "soup" else _fresh_copy(model, seed)
        single = dataclasses.replace(trainer, seeds=None, seed=seed,
                                     output_dir=None if root is None else str(root / f"seed-{seed}"))
        if seed in done:  # a resumed run: this seed finished before; its kept weights are on disk
            _load(one, root / f"seed-{seed}" / "kept.safetensors")
            runs.append(done[seed])
            models[seed] = one
            continue
        start = time.perf_counter()
        history = single.fit(one, train, val, resume=resume)
        best = single.best
        kept = next((r for r in history if r.get("restored")), history[-1])
        run = {"seed": seed, "history": history, "best": best, "seconds": time.perf_counter() - start,
               "metrics": {k: v for k, v in kept.items() if k.startswith("val_") or k == "train_loss"}}
        runs.append(run)
        models[seed] = one
        if root is not None and main:
            _save(one, root / f"seed-{seed}" / "kept.safetensors")
            _record(root, runs)
        if trainer.keep == "best":  # only the best so far stays in memory
            _drop_all_but_best(models, runs)
    metric, higher = _selection(runs)
    result = SeedsResult(seeds=seeds, runs=runs, summary=_summary(runs), metric=metric, higher_is_better=higher,
                         best_seed=_best_seed(runs, metric, higher), models=models)
    if trainer.keep == "best":
        result.models = {result.best_seed: models[result.best_seed]}
    kept = result.best_model
    if trainer.keep == "soup":
        result.soup = _soup(trainer, result, val)
        kept = result.soup.model
    if isinstance(model, nn.Module):
        with torch.no_grad():
            model.load_state_dict(kept.state_dict())
        if result.soup is not None:
            result.soup.model = model
        else:
            result.models[result.best_seed] = model
    trainer.seeds_result = result
    trainer.best = {**(next(r for r in runs if r["seed"] == result.best_seed)["best"] or {}), "seed": result.best_seed}
    if result.soup is not None:
        trainer.best.update({"soup": [seeds[i] for i in result.soup.ingredients], "soup_value": result.soup.score})
    history = over_seeds([r["history"] for r in runs])
    if root is not None and main:
        _write_curves(root, history)
        if "report" in trainer.loggers:  # curves.png: the mean over seeds, the 95% interval as a band
            from .report import write_report

            write_report(history, root)
    return history


def _soup(trainer, result: SeedsResult, val: Any):
    """The greedy soup of the seeds' models on ``val`` (the seeds' kept validation values rank them)."""
    from .averaging import greedy_soup

    if val is None:
        raise ConfigError("keep='soup' chooses which seeds' weights to average on validation data, and there is "
                          "none: pass val, or keep='best'.")
    name = result.metric.removeprefix("val_")
    single = dataclasses.replace(trainer, seeds=None)
    runs, rank = result.runs, _rank(result.metric, result.higher_is_better)  # runs are in seed order
    return greedy_soup([result.models[s] for s in result.seeds], lambda m: single.evaluate(m, val)[name],
                       higher_is_better=result.higher_is_better, scores=[r["metrics"][result.metric] for r in runs],
                       order=sorted(range(len(runs)), key=lambda i: rank(runs[i])))  # ties: the lower loss first


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose head (a TransferModel's ``head``, or a task's) is initialised afresh from the
    global RNG (seeded by the caller), so seeds differ as fresh heads would."""
    one = copy.deepcopy(model)
    head = getattr(one, "head", None)
    if head is None:
        head = getattr(getattr(one, "model", None), "head", None)
    for module in (head.modules() if head is not None else ()):
        if module is not head and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return one


def over_seeds(histories: Sequence[Sequence[dict]]) -> list[dict]:
    """Per epoch, each number's mean over the seeds that ran that epoch (early stopping may end some sooner),
    with ``<key>_std`` and the 95% interval ``<key>_low`` / ``<key>_high`` for the ``train_loss`` and ``val_*``
    keys, and ``seeds``: how many seeds the epoch has."""
    out = []
    for epoch in sorted({r["epoch"] for h in histories for r in h}):
        rows = [r for h in histories for r in h if r["epoch"] == epoch]
        record: dict[str, Any] = {"epoch": epoch, "seeds": len(rows)}
        for key in rows[0]:
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
            if key in ("epoch", "restored") or len(values) != len(rows):
                continue
            if key.startswith("val_") or key == "train_loss":
                spread = Spread.of(values)
                record.update({key: spread.mean, f"{key}_std": spread.std, f"{key}_low": spread.low,
                               f"{key}_high": spread.high})
            else:
                record[key] = statistics.fmean(values)
        out.append(record)
    return out


def _summary(runs: list[dict]) -> dict[str, Spread]:
    keys = [k for k in runs[0]["metrics"] if all(k in r["metrics"] for r in runs)]
    return {k: Spread.of([r["metrics"][k] for r in runs]) for k in keys}


def _selection(runs: list[dict]) -> tuple[str, bool]:
    best = runs[0]["best"]
    if best is None:  # no validation data: the seeds are ranked by training loss
        return "train_loss", False
    return f"val_{best['metric']}", bool(best.get("higher_is_better", True))


def _best_seed(runs: list[dict], metric: str, higher: bool) -> int:
    """The seed with the best kept value of ``metric``; ties go to the lower validation loss, then the earlier."""
    return min(runs, key=_rank(metric, higher))["seed"]


def _rank(metric: str, higher: bool) -> Callable[[dict], tuple]:
    """A run's sort key, best first: its kept ``metric``, then its validation loss (the earlier run wins ties)."""
    def key(run):
        value = run["metrics"].get(metric, math.nan)
        loss = run["metrics"].get("val_loss", math.inf)
        return (-value if higher else value, loss)
    return key


def _drop_all_but_best(models: dict, runs: list[dict]) -> None:
    metric, higher = _selection(runs)
    best = _best_seed(runs, metric, higher)
    for seed in [s for s in models if s != best]:
        del models[seed]


def _save(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    from transferkit.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp))


def _load(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    from transferkit.errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the seed's run is recorded as done in seeds.json but its weights "
                              "are gone; remove that seed's entry from seeds.json (or the run directory) to train "
                              "it again.")
    load_model(model, str(path), strict=False)


def _record(root: Path, runs: list[dict]) -> None:
    from transferkit.files import write_json_atomic

    write_json_atomic(root / "seeds.json", {"runs": runs})


def _done(root: Path) -> dict[int, dict]:
    from transferkit.files import read_json_record

    record = read_json_record(root / "seeds.json") or {}
    return {run["seed"]: run for run in record.get("runs", [])}


def _write_curves(root: Path, history: list[dict]) -> None:
    import csv
    import io

    from transferkit.files import write_atomic

    keys = list(dict.fromkeys(k for r in history for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    write_atomic(root / "seeds.csv", text.getvalue())


# --------------------------------------------------------------------------------------------- comparing methods

@dataclass
class Comparison:
    """What :func:`compare` measured.

    Attributes:
        metric: the compared figure (``accuracy``...: on ``test`` when given, else the validation value each run kept).
        seeds: the seeds every method ran.
        scores: method → its score per seed, in seed order.
        higher_is_better: the metric's direction.
        results: method → its :class:`SeedsResult`.
    """

    metric: str
    seeds: list[int]
    scores: dict[str, list[float]]
    higher_is_better: bool
    results: dict[str, SeedsResult] = field(default_factory=dict, repr=False)

    def paired(self, a: str, b: str) -> dict[str, Any]:
        """``b − a`` seed by seed: the mean difference, its 95% interval, the paired t-test's two-sided p-value
        (``nan`` with fewer than two seeds or no variation), and how many seeds ``b`` won, tied and lost."""
        from scipy import stats

        diffs = [y - x for x, y in zip(self.scores[a], self.scores[b])]
        spread = Spread.of(diffs)
        sign = 1 if self.higher_is_better else -1
        p = math.nan
        if len(diffs) > 1 and any(d != diffs[0] for d in diffs):
            p = float(stats.ttest_rel(self.scores[b], self.scores[a]).pvalue)
        return {"difference": spread, "p_value": p, "wins": sum(sign * d > 0 for d in diffs),
                "ties": sum(d == 0 for d in diffs), "losses": sum(sign * d < 0 for d in diffs)}

    def table(self) -> str:
        """Each method's mean ± std, and its paired difference from the first method."""
        names = list(self.scores)
        lines = [f"| method | {self.metric} (mean ± std, {len(self.seeds)} seeds) | difference vs {names[0]} | "
                 "95% interval | paired t-test p | wins/ties/losses |", "|---|---|---|---|---|---|"]
        for name in names:
            spread = Spread.of(self.scores[name])
            std = "" if math.isnan(spread.std) else f" ± {spread.std:.4f}"
            if name == names[0]:
                lines.append(f"| {name} | {spread.mean:.4f}{std} | | | | |")
                continue
            p = self.paired(names[0], name)
            d = p["difference"]
            interval = "" if math.isnan(d.std) else f"[{d.low:+.4f}, {d.high:+.4f}]"
            lines.append(f"| {name} | {spread.mean:.4f}{std} | {d.mean:+.4f} | {interval} | "
                         f"{'' if math.isnan(p['p_value']) else format(p['p_value'], '.3g')} | "
                         f"{p['wins']}/{p['ties']}/{p['losses']} |")
        return "\n".join(lines)


def compare(methods: dict[str, tuple[Callable[[], nn.Module], Any]], train: Any, val: Any = None, *,
            test: Any = None, seeds: Iterable[int] = range(5), metric: str | None = None) -> Comparison:
    """Run each method over the same seeds and data; paired differences tell whether one beats another.

    Args:
        methods: name → ``(build, trainer)``: ``build()`` returns a fresh model (called after each seed is set),
            ``trainer`` the method's settings (its ``seeds`` are replaced by ``seeds``). The first method is the
            reference the others are compared with.
        train: training data, the same for every method and seed.
        val: validation data that selects each run's epoch (or ``None``).
        test: data each run's kept model is scored on; without it the compared figure is the validation value
            each run kept (then it selected on it too: optimistic, say so when you report it).
        seeds: the seeds every method runs.
        metric: the figure compared (``"accuracy"``, ``"macro_f1"``, ``"loss"``...); default the selection
            metric of the first method's runs.
    """
    from .selection import custom_metrics, resolve

    if not methods:
        raise ConfigError("compare needs at least one method: {name: (build, trainer)}.")
    seeds = check(list(seeds), "all")
    results: dict[str, SeedsResult] = {}
    scores: dict[str, list[float]] = {}
    chosen, higher = metric, True
    for name, (build, trainer) in methods.items():
        runner = dataclasses.replace(trainer, seeds=seeds, keep="all")
        runner.fit(build, train, val)
        result = runner.seeds_result
        results[name] = result
        if chosen is None:
            chosen = result.metric.removeprefix("val_")
        if chosen == result.metric.removeprefix("val_"):
            higher = result.higher_is_better
        else:  # another metric than the one that selected: its direction, as the task declares it
            higher = resolve(chosen, as_task(result.models[seeds[0]]), custom_metrics(trainer.metrics))[1]
        if test is not None:
            scores[name] = [runner.evaluate(result.models[s], test)[chosen] for s in seeds]
        else:
            key = chosen if chosen == "train_loss" else f"val_{chosen}"
            scores[name] = [run["metrics"][key] for run in result.runs]
        result.models = {}  # the scores are taken; the models would only hold memory
    return Comparison(metric=chosen, seeds=seeds, scores=scores, higher_is_better=higher, results=results)
