"""One small trainer for every task, on a laptop CPU, one GPU or many.

It trains a *task* and knows nothing else about it: the Task protocol of :mod:`transferkit.tasks.protocol`
(examples, collate, ``forward(batch) -> {"loss", ...}``, streaming metrics that say whether higher is
better, a default selection metric). A :class:`~transferkit.TransferModel` is wrapped in the task its head
names (``head.task(model)``; a :class:`~transferkit.tasks.ClassificationTask` for heads that name none).
The loop below reads top to bottom; each
feature is a small helper beside it: :mod:`.precision` (bf16/fp16 autocast, loss scaling), :mod:`.optim`
(AdamW/SGD, warm-up + linear/cosine schedules), :mod:`.strategies` (linear probe, gradual unfreezing,
layer-wise LR decay, LP-FT), :mod:`.distributed` (data order, DDP), :mod:`.checkpoint` (exact resume),
:mod:`.report` (CSV, TensorBoard, PNG report), :mod:`.selection` (the selection metric, custom metrics).

Callbacks: ``callbacks={"on_epoch_end": [fn, ...]}``; each ``fn(trainer, state)`` is called with a dict
``state``. Events: ``on_train_start``, ``on_step_end``, ``on_epoch_end``, ``on_train_end``. Callbacks
observe; they do not steer the loop.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from transferkit.errors import CheckpointError, ConfigError, DataError

from . import adversarial, averaging, checkpoint, distributed, sharding
from .common import as_task, batch_len, seed_everything, to_device
from .optim import build_optimizer, build_scheduler
from .precision import Precision
from .run import Run
from .seeds import check as check_seeds
from .selection import custom_metrics, custom_values, resolve

EVENTS = ("on_train_start", "on_step_end", "on_epoch_end", "on_train_end")


@dataclass
class Trainer:
    """Fine-tune a model or train a task.

    Attributes:
        epochs: passes over the training data (early stopping or ``max_steps`` may end sooner).
        batch_size: examples per optimiser step, over all processes and accumulation steps together, so
            changing ``accumulate`` or the number of processes does not change the updates.
        accumulate: micro-batches per optimiser step (gradient accumulation): memory for
            ``batch_size / accumulate`` examples at a time, the update of the whole batch. Losses are
            weighted by the items they average over (tokens for language modelling, examples otherwise),
            so the accumulated gradient equals the large batch's.
        lr: learning rate of the backbone (and the head unless ``head_lr`` is set).
        head_lr: learning rate of the head (and of pretext heads); a fresh head usually wants a larger
            one than a pretrained backbone (e.g. ``lr=5e-5, head_lr=1e-3``).
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"sgd"`` (Nesterov momentum 0.9).
        weight_decay: applied to matrices only (not biases or norms).
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay after warm-up.
        warmup: warm-up steps (int) or fraction of all steps (float below 1).
        max_grad_norm: gradient-norm clipping; ``None`` disables it.
        precision: ``"fp32"``, ``"bf16"`` (CUDA or CPU autocast), ``"fp16"`` (CUDA, with loss scaling) or
            ``"auto"`` (bf16 on a GPU that supports it, else fp32).
        strategy: fine-tuning strategy by name — ``"full"``, ``"linear_probe"``, ``"gradual_unfreeze"``,
            ``"llrd"``, ``"lp_ft"``, ``"lp_ft_balanced"`` — or a ``Strategy`` (see :mod:`.strategies`).
        lr_decay: layer-wise learning-rate decay: the top backbone layer group gets ``lr``, each lower
            one ``lr_decay`` times the one above; combines with any strategy. ``None``: same lr throughout.
        metric: validation metric that selects the best epoch: any metric the task reports (classification:
            ``"accuracy"``, ``"macro_f1"``, ``"loss"``; language models also ``"perplexity"``) or a name in
            ``metrics``; ``None`` (default) takes the task's ``default_metric`` (classification:
            accuracy; pretext tasks: loss). Whether higher is better comes from the task. A name the
            task does not report is refused when ``fit`` starts, with the list of those it does. Epochs
            that tie on it (the same value exactly, as accuracy on a small validation set often does)
            are told apart by validation loss, the lower winning; if the loss ties too the earlier epoch
            is kept. An epoch that wins only by the tie-break is an improvement: its weights are kept
            and it resets ``patience``.
        metrics: extra validation metrics for any task, ``name → fn`` (higher is better) or
            ``name → (fn, "min")`` (lower is better); reported as ``val_<name>``. ``fn`` receives what
            the task's metrics object gives custom metrics (:mod:`.selection`): for classification the
            confusion matrix, ``confusion[i, j]`` examples of class ``i`` predicted as ``j`` (a NumPy
            array), accumulated batch by batch, so any metric of it (balanced accuracy, MCC, Cohen's
            kappa, per-class recall...) is exact; for other tasks the metrics object itself after
            ``compute()``.
        patience: stop after this many epochs without improvement; ``None`` trains all epochs. With
            validation data the best epoch's weights are restored either way: :attr:`best` says which
            and why, and that epoch's history record gets ``"restored": True``.
        max_steps: stop after this many optimiser steps (needed for a schedule over a streamed corpus).
        seed: seeds Python, NumPy, torch and the data order, so a CPU run is repeatable.
        device: ``"cuda"`` when available, else ``"cpu"``, unless given (under ``torchrun`` each process
            takes ``cuda:LOCAL_RANK``).
        eval_batch_size: batch size for evaluation.
        num_workers: DataLoader worker processes (preprocessing runs there).
        group_by_length: batch examples of similar length together (text tasks), so batches carry less
            padding and an epoch runs faster; the order is still a new shuffle every epoch (mega-batches
            of 50 batches sorted by length, the batches shuffled, the longest first), repeatable for a
            seed, so exact resume and DDP hold. The lengths come from the task (:mod:`..tasks.protocol`).
            Transformers' ``group_by_length``; off by default, as there.
        output_dir: where checkpoints, ``metrics.csv`` and the report go; ``None`` writes nothing.
        save_every: also checkpoint every this many optimiser steps (a checkpoint is written at the end
            of every ``checkpoint_every``-th epoch and of the last when ``output_dir`` is set).
        checkpoint_every: checkpoint at the end of every this many epochs (and always of the last one); a
            resume starts from the latest. More than 1 for runs of many short epochs (a tiny labelled set
            trained for a floor of steps), where writing weights and optimiser state every epoch costs more
            than the epoch.
        loggers: with ``output_dir``: any of ``"csv"``, ``"tensorboard"``, ``"report"`` (PNG curves at the end,
            and the task's own report files: classification's confusion matrix).
        compile: ``torch.compile`` the task's forward pass: ``True`` or a backend name.
        channels_last: channels-last memory format for convolutional image backbones; ``None`` turns it
            on for CUDA.
        fsdp: under ``torchrun`` with several processes, shard parameters, gradients and optimiser state across
            them (PyTorch FSDP2, :mod:`.sharding`) instead of replicating the model (DDP); for models that do not
            fit one device. One process ignores it.
        progress: show a progress bar.
        callbacks: event name → list of ``fn(trainer, state)``.
        seeds: train once per seed (:mod:`.seeds`): ``fit`` then returns each epoch's mean over seeds with
            ``<key>_std`` and the 95% interval ``<key>_low``/``<key>_high``, and :attr:`seeds_result` has each
            seed's run and the mean ± std and interval of every metric at the epochs kept. ``fit`` takes a model
            (each seed trains a copy with a head initialised from the seed) or a callable returning a fresh
            model (called after seeding, so random backbones differ too). ``None``: one run with ``seed``.
        keep: with ``seeds``: ``"best"`` keeps the seed best on validation (its weights end up in the model
            given to ``fit``), ``"all"`` every seed's model (``seeds_result.models``), ``"soup"`` the greedy soup of
            the seeds' models on validation (:mod:`.averaging`; ``seeds_result.soup`` says which seeds joined).
        ema: keep an exponential moving average of the learning weights with this decay (e.g. ``0.999``;
            :mod:`.averaging`): validation, the best epoch and the weights ``fit`` leaves are the averaged ones.
            ``None``: no average. Not with ``fsdp``.
        adversarial: also train on adversarially perturbed inputs (input embeddings or pixels): a method's name,
            ``"fgm"``, ``"pgd"``, ``"freelb"`` or ``"smart"``, or an :class:`~transferkit.trainer.adversarial.Adversarial`
            with its settings (see :mod:`.adversarial`). ``None``: no perturbation. Not with ``fsdp`` or ``compile``.

    After :meth:`fit`, ``trainer.best`` is the epoch whose weights were restored, or ``None`` without
    validation data: ``{"epoch": 7, "metric": "accuracy", "value": 0.5, "val_loss": 0.675, "reason":
    "highest val_accuracy (0.5000), tied with epochs 1-6, 8-20; lowest val_loss among them (0.6750)"}``.
    """

    epochs: int = 3
    batch_size: int = 16
    accumulate: int = 1
    lr: float = 5e-5
    head_lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "constant"
    warmup: float = 0
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    strategy: Any = "full"
    lr_decay: float | None = None
    metric: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    patience: int | None = None
    max_steps: int | None = None
    seed: int = 0
    device: str | None = None
    eval_batch_size: int = 64
    num_workers: int = 0
    group_by_length: bool = False
    fsdp: bool = False
    output_dir: str | None = None
    save_every: int | None = None
    checkpoint_every: int = 1
    loggers: tuple[str, ...] = ("csv", "report")
    compile: bool | str = False
    channels_last: bool | None = None
    progress: bool = True
    callbacks: dict[str, list[Callable]] = field(default_factory=dict)
    seeds: list[int] | None = None
    keep: str = "best"
    ema: float | None = None
    adversarial: Any = None
    # Not settings (no annotation, so not fields): set by fit(), see the class docstring.
    best = None
    seeds_result = None

    def __post_init__(self):
        unknown = set(self.callbacks) - set(EVENTS)
        if unknown:
            raise ValueError(f"unknown callback events {sorted(unknown)}; events are {EVENTS}")
        custom_metrics(self.metrics)  # the forms; the names are checked against the task's in fit
        check_seeds(self.seeds, self.keep)
        averaging.check_decay(self.ema)
        self.adversarial = adversarial.get_adversarial(self.adversarial)
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every is a number of epochs, 1 or more; got {self.checkpoint_every!r}.")
        if self.accumulate < 1 or self.batch_size < self.accumulate:
            raise ValueError(f"need 1 <= accumulate <= batch_size, got accumulate={self.accumulate}, "
                             f"batch_size={self.batch_size}")

    def fit(self, model: nn.Module, train: Any, val: Any = None, resume: bool = False) -> list[dict]:
        """Train ``model`` (a TransferModel or a task) on ``train``; evaluate on ``val`` after each epoch.

        Args:
            model: what to train; modified in place (best validation weights restored at the end).
            train: labelled data in any form :func:`transferkit.data.load_labelled` reads (for tasks, what
                ``task.examples`` reads).
            val: held-out data for evaluation and early stopping, or ``None``.
            resume: continue from the checkpoint in ``output_dir`` if there is one. On CPU with
                ``num_workers=0`` the result is bitwise equal to an uninterrupted run.

        Returns:
            One dict per epoch: ``epoch``, ``step``, ``train_loss``, ``lr``, ``seconds`` and ``val_*`` metrics.
        """
        if self.seeds is not None:
            from .seeds import fit_seeds

            return fit_seeds(self, model, train, val, resume)
        world, device = distributed.setup(self.device)
        if self.output_dir is None or not world.main:
            return self._fit(model, train, val, resume, world, device)
        from transferkit.files import claim_run_dir, output_lock

        # The run directory is transferkit's alone: never one holding the user's files, never two runs at once.
        with output_lock(self.output_dir):
            claim_run_dir(self.output_dir, resume=resume)
            return self._fit(model, train, val, resume, world, device)

    def _fit(self, model: nn.Module, train: Any, val: Any, resume: bool, world: distributed.World,
             device: torch.device) -> list[dict]:
        from .strategies import get_strategy

        self.best = None
        task = as_task(model)
        seed_everything(self.seed)
        train_examples = task.examples(train)
        val_examples = task.examples(val) if val is not None else None
        if hasattr(train_examples, "__len__") and len(train_examples) == 0:
            raise DataError("the training data is empty.")
        if hasattr(task, "prepare"):  # the task's own set-up on the training data (a prototype head's prototypes)
            task.prepare(train_examples)
        lengths = self._lengths(task, train_examples)
        custom = custom_metrics(self.metrics)
        # The selection metric and its direction, from the task (checked even without validation data
        # when the user named one, so a typo is never silent).
        metric, higher = resolve(self.metric, task, custom) if val is not None or self.metric else ("loss", False)
        strategy = get_strategy(self.strategy)
        strategy.prepare(task, train_examples)
        precision = Precision(self.precision, device)
        given = task  # under FSDP a sharded copy trains; its full weights come back into `given` at the end
        sharded = self._shards(world)
        if sharded and self.ema is not None:
            raise ConfigError("ema does not work with fsdp yet (the average would have to be sharded too): train "
                              "with ema=None, or without fsdp.")
        if self.adversarial is not None and (sharded or self.compile):
            raise ConfigError("adversarial training does not work with fsdp or compile yet (it perturbs the inputs "
                              "through module hooks): train with adversarial=None, or without fsdp and compile.")
        ema = averaging.Ema(self.ema) if self.ema is not None else None
        if sharded:
            task = sharding.shard(task, device)
        task.to(device)
        channels_last = self._channels_last(task, device)
        if channels_last:
            task.to(memory_format=torch.channels_last)
        groups = strategy.param_groups(task, lr=self.lr, head_lr=self.head_lr, weight_decay=self.weight_decay,
                                       lr_decay=self.lr_decay)
        optimizer = build_optimizer(self.optimizer, groups, self.lr, device)
        # Gradients left from before fit would join the first step's, move frozen parameters and give
        # them optimiser state.
        optimizer.zero_grad(set_to_none=True)
        steps = None if isinstance(train_examples, IterableDataset) else distributed.steps_per_epoch(
            len(train_examples), self.batch_size, self.accumulate, world)
        total = self.max_steps or (steps * self.epochs if steps else None)
        scheduler = build_scheduler(optimizer, self.schedule, self.warmup, total)
        run = Run()
        output = Path(self.output_dir) if self.output_dir else None
        saved = checkpoint.find(output) if resume and output else None
        if resume and output is None:
            raise ValueError("resume=True needs output_dir, where the checkpoint is.")
        if saved is not None:
            state, run.best_state = sharding.load_checkpoint(saved, task, optimizer, world) if sharded else \
                checkpoint.load(saved, task, optimizer)
            if state.get("best_keys") is not None:  # the best epoch was the saved one: see _save
                weights = task.state_dict()
                run.best_state = {k: weights[k].detach().clone() for k in state["best_keys"]}
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(checkpoint.load_extra(saved, averaging.FILE), task)
            precision.load_state_dict(state["scaler"])
            run.load(state)
            run.restore_metrics(task)  # the best epoch's metrics, for the task's report
        callbacks = self._callbacks(output, world)
        self._emit(callbacks, "on_train_start", {"epochs": self.epochs, "steps_per_epoch": steps,
                                                 "output_dir": self.output_dir})
        stop = run.step >= (self.max_steps or math.inf)
        for epoch in range(run.epoch, self.epochs + 1):
            if stop:
                break
            run.start_epoch(epoch)
            task.train()
            strategy.apply(task, epoch)
            run.cover(task)
            forward = self._forward(task, world)
            # Once the data is at the saved position, the random state is restored too.
            ready = (lambda path=saved, state=state: checkpoint.restore_rng(path, state)) if saved else None
            saved = None
            data = self._steps(task, train_examples, epoch, run.epoch_step, world, device, ready, lengths)
            for batches in self._bar(data, f"epoch {epoch}/{self.epochs}", world, steps, run.epoch_step):
                lr = self._lr(optimizer)  # the rate this step used
                loss, items = self._step(forward, batches, optimizer, precision, task, world, device, channels_last)
                scheduler.step()
                run.step, run.epoch_step = run.step + 1, run.epoch_step + 1
                if ema is not None:
                    ema.update(task, run.step)
                run.loss_sum, run.items = run.loss_sum + loss * items, run.items + items
                if output is not None and (world.main or sharded) and self.save_every and \
                        run.step % self.save_every == 0:
                    self._save(output, task, optimizer, scheduler, precision, run, False, world, ema)
                self._emit(callbacks, "on_step_end", {"epoch": epoch, "step": run.step, "loss": loss, "lr": lr})
                stop = run.step >= (self.max_steps or math.inf)
                if stop:
                    break
            record = {"epoch": epoch, "step": run.step,
                      "train_loss": distributed.all_sum(run.loss_sum, world, device) /
                      max(1.0, distributed.all_sum(run.items, world, device)),
                      "lr": self._lr(optimizer), "seconds": run.seconds()}
            if val_examples is not None:
                with ema.applied(task) if ema is not None else contextlib.nullcontext():  # the averaged weights
                    values, metrics = self._evaluate(task, val_examples, device, precision, channels_last, custom)
                    run.judge(values, metric, higher, task, metrics)
                record.update({f"val_{k}": v for k, v in values.items()})
            run.history.append(record)
            self._emit(callbacks, "on_epoch_end", {"epoch": epoch, "step": run.step, "metrics": record,
                                                   "seconds": record["seconds"]})
            ending = epoch == self.epochs or stop or (self.patience is not None and run.stale > self.patience)
            if output is not None and (world.main or sharded) and (ending or epoch % self.checkpoint_every == 0):
                self._save(output, task, optimizer, scheduler, precision, run, True, world, ema)  # sharded: by all
            if self.patience is not None and run.stale > self.patience:
                break
        strategy.finish(task)  # gives back the trainable parts the backbone had before fit
        if ema is not None and run.best_state is None:  # without validation the average is what fit leaves
            ema.copy_to(task)
        if run.best_epoch is not None:
            from .report import describe_best

            self.best = describe_best(run.history, run.best_epoch, metric, higher)
            next(r for r in run.history if r["epoch"] == run.best_epoch)["restored"] = True
        if run.best_state is not None:
            # The best weights leave out parameters that never learned in this run: they have not moved.
            unexpected = task.load_state_dict(run.best_state, strict=False).unexpected_keys
            if unexpected:
                raise CheckpointError(f"the best epoch's weights hold {unexpected[:3]}, which this model does "
                                      "not have; resume with the model the run started with, or resume=False.")
        if task is not given:
            given.load_state_dict(sharding.full_state(task))
            task = given
        task.eval()
        # best_metrics: the restored epoch's metrics object; the report logger asks it for the task's
        # own files (classification: confusion.png).
        self._emit(callbacks, "on_train_end", {"history": run.history, "best": self.best,
                                               "output_dir": self.output_dir, "best_metrics": run.best_metrics})
        return run.history

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """Metrics of ``model`` on labelled ``data`` (streamed: predictions are not kept), custom ones included."""
        task = as_task(model)
        device = self._device()
        task.to(device)
        custom = custom_metrics(self.metrics)
        return self._evaluate(task, task.examples(data), device, Precision(self.precision, device),
                              self._channels_last(task, device), custom)[0]

    # -- one optimiser step -------------------------------------------------------------------------

    def _step(self, forward, batches: list, optimizer, precision: Precision, task: nn.Module,
              world: distributed.World, device: torch.device, channels_last: bool) -> tuple[float, float]:
        """Forward and backward over the step's micro-batches, then one update; returns (mean loss, items)."""
        weighted = len(batches) > 1 or world.size > 1
        loss_sum, items = torch.zeros((), device=device), 0.0
        for i, batch in enumerate(batches):
            batch = to_device(batch, device, channels_last)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()
            with sync:
                out, n = self._backward(forward, task, batch, precision, weighted)
            loss_sum, items = loss_sum + out["loss"].detach().float() * n, items + n
        value = float(loss_sum) / max(items, 1.0)
        if not math.isfinite(value):  # before the update, so the weights stay usable
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss became {value}: lower the learning rate.")
        precision.unscale(optimizer)
        params = [p for p in task.parameters() if p.grad is not None]
        if weighted:  # DDP averaged over processes: undo that, divide by all items instead
            total = distributed.all_sum(items, world, device)
            torch._foreach_mul_([p.grad for p in params], world.size / max(total, 1.0))
        if self.max_grad_norm is not None and params:
            nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return value, items

    def _backward(self, forward, task, batch, precision: Precision, weighted: bool) -> tuple[dict, float]:
        """Forward and backward of one micro-batch (adversarially, when asked); its outputs and items."""
        def items(out: dict) -> float:
            n = out.get("num_items")
            return float(n) if n is not None else float(batch_len(batch))

        # Weighted by its items, each micro-batch adds its share of the large batch's mean loss.
        if self.adversarial is None:
            with precision.autocast():
                out = forward(batch)
            n = items(out)
            precision.backward(out["loss"] * n if weighted else out["loss"])
            return out, n
        counted: list[float] = []  # the micro-batch's items, from its first pass

        def run(batch):
            with precision.autocast():
                out = forward(batch)
            if not counted:
                counted.append(items(out))
            return out

        quiet = getattr(forward, "no_sync", contextlib.nullcontext)
        out = adversarial.step(self.adversarial, run, task, batch,
                               lambda loss: precision.backward(loss * counted[0] if weighted else loss), quiet)
        return out, counted[0]

    # -- data ---------------------------------------------------------------------------------------

    def _steps(self, task, examples, epoch: int, start: int, world: distributed.World, device: torch.device,
               ready: Callable | None = None, lengths: np.ndarray | None = None) -> Iterator[list]:
        """This process's micro-batches, a list per optimiser step, from step ``start`` of ``epoch``
        (grouped by ``lengths`` when given).

        ``ready()`` is called once the data is positioned, before the first batch is collated.
        """
        ready = ready or (lambda: None)
        pin = device.type == "cuda"
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)  # DataLoader worker seeds
        if hasattr(examples, "set_epoch"):
            examples.set_epoch(epoch)
        if isinstance(examples, IterableDataset):  # streamed: read in order, never held in memory
            per = self.accumulate * world.size
            loader = DataLoader(examples, batch_size=-(-self.batch_size // per), collate_fn=task.collate,
                                num_workers=self.num_workers, pin_memory=pin, generator=generator)
            it = iter(loader)
            for _ in itertools.islice(it, start * per):  # a stream cannot seek: skipped steps are read again
                pass
            ready()
            while True:
                group = list(itertools.islice(it, per))
                if not group or (world.size > 1 and len(group) < per):
                    return
                yield group[world.rank * self.accumulate:(world.rank + 1) * self.accumulate]
        order = distributed.permutation(len(examples), self.seed, epoch) if lengths is None else \
            distributed.grouped_permutation(lengths, self.batch_size, self.seed, epoch)
        plan = list(distributed.micro_batches(order, self.batch_size, self.accumulate, world, start))
        loader = DataLoader(examples, batch_sampler=[m for step in plan for m in step], collate_fn=task.collate,
                            num_workers=self.num_workers, pin_memory=pin, generator=generator)
        it = iter(loader)
        ready()
        for micros in plan:
            yield [next(it) for _ in micros]

    def _lengths(self, task, examples) -> np.ndarray | None:
        """Each training example's length when ``group_by_length`` is on (see :mod:`..tasks.protocol`)."""
        if not self.group_by_length:
            return None
        if isinstance(examples, IterableDataset):
            raise ConfigError("group_by_length needs the training data in memory, and it is streamed "
                              "(an IterableDataset has no lengths to sort); train without group_by_length.")
        from transferkit.tasks.protocol import example_lengths

        return example_lengths(task, examples)

    def _evaluate(self, task: nn.Module, examples, device: torch.device, precision: Precision,
                  channels_last: bool, custom: dict) -> tuple[dict[str, float], Any]:
        """The task's metrics (and the custom ones) on ``examples``, and the metrics object that made them."""
        if hasattr(examples, "__len__") and len(examples) == 0:
            raise DataError("the evaluation data is empty.")
        was_training = task.training
        task.eval()
        metrics = task.metrics()
        loader = DataLoader(examples, batch_size=self.eval_batch_size, collate_fn=task.collate,
                            num_workers=self.num_workers, pin_memory=device.type == "cuda")
        with torch.no_grad():
            for batch in loader:
                batch = to_device(batch, device, channels_last)
                with precision.autocast():
                    metrics.update(batch, task(batch))
        task.train(was_training)
        result = metrics.compute()
        result.update(custom_values(metrics, custom))
        return result, metrics

    # -- small helpers ------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return torch.device(distributed.default_device(self.device))

    def _lr(self, optimizer) -> float:
        """``lr`` as scheduled now (the top backbone group's rate; lower groups are scaled by lr_decay)."""
        group = optimizer.param_groups[0]
        return self.lr * group["lr"] / group["initial_lr"] if group["initial_lr"] else group["lr"]

    def _channels_last(self, task: nn.Module, device: torch.device) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in task.modules())

    def _forward(self, task: nn.Module, world: distributed.World):
        """The callable that runs the forward pass: the task, under DDP and ``torch.compile`` as asked."""
        forward = task
        if self._shards(world):
            forward = sharding.Sharded(task)
        elif world.size > 1:
            # Wrapped again each epoch: a strategy may have changed which parameters train, and DDP
            # registers its gradient hooks at construction.
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a task may leave trainable parameters out of its loss (BERT's pooler
            # under a token-level head); without it DDP waits for their gradients and fails at the next step.
            dev = next(task.parameters()).device
            forward = DistributedDataParallel(task, device_ids=[dev] if dev.type == "cuda" else None,
                                              find_unused_parameters=True)
        if self.compile:
            backend = self.compile if isinstance(self.compile, str) else "inductor"
            compiled = torch.compile(forward, backend=backend)
            if hasattr(forward, "no_sync"):
                compiled.no_sync = forward.no_sync
            forward = compiled
        return forward

    def _shards(self, world: distributed.World) -> bool:
        """Whether this run is sharded (FSDP): asked for, and more than one process to shard across."""
        return self.fsdp and world.size > 1

    def _save(self, output: Path, task, optimizer, scheduler, precision, run: "Run", next_epoch: bool,
              world: distributed.World, ema: averaging.Ema | None = None) -> None:
        position = run.state(next_epoch)
        # At the end of the best epoch its weights are the model's (unless they were averaged): name them instead
        # of a second copy.
        same = next_epoch and run.best_state is not None and run.best_epoch == run.epoch and ema is None
        position["best_keys"] = sorted(run.best_state) if same else None
        state = {**position, "scheduler": scheduler.state_dict(), "scaler": precision.state_dict()}
        if self._shards(world):
            sharding.save_checkpoint(output, task, optimizer, None if same else run.best_state, state, world)
        else:
            checkpoint.save(output, task, optimizer, None if same else run.best_state, state,
                            extra={averaging.FILE: ema.state_dict()} if ema is not None else None)

    def _callbacks(self, output: Path | None, world: distributed.World) -> dict[str, list[Callable]]:
        merged = {event: list(self.callbacks.get(event, [])) for event in EVENTS}
        if output is not None and world.main and self.loggers:
            from .report import loggers

            for event, fns in loggers(self.loggers, output).items():
                merged[event] += fns
        return merged

    def _bar(self, steps, desc: str, world: distributed.World, total: int | None, initial: int):
        if not self.progress or not world.main:
            return steps
        from tqdm.auto import tqdm

        return tqdm(steps, desc=desc, leave=False, total=total, initial=initial)

    def _emit(self, callbacks: dict[str, list[Callable]], event: str, state: dict) -> None:
        for fn in callbacks.get(event, []):
            fn(self, state)
