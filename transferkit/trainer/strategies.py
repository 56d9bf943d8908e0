"""Fine-tuning strategies: which parts of a backbone learn, when, and how fast.

Choose one by name (``get_strategy("lp_ft")``) or build one (``lp_ft(probe_epochs=2)``). Every strategy
works with every backbone, because backbones split themselves into ordered layer groups
(:meth:`transferkit.Backbone.layer_groups`: embeddings or stem first, the last block last).

Which one when:

* ``"full"`` — every parameter learns from the first step. The default, and the strongest when the
  labelled data is plentiful and close to the pretraining data.
* ``"linear_probe"`` — the backbone stays frozen; only the head learns. Cheapest, cannot overfit the
  backbone, and the right choice for very small data, for word vectors you want to keep intact, or as a
  baseline that tells how much fine-tuning adds.
* ``"gradual_unfreeze"`` — epoch 1 trains the head only, then one more layer group from the top every
  ``every`` epochs until all learn (ULMFiT: Howard & Ruder 2018, "Universal Language Model Fine-tuning
  for Text Classification", arXiv 1801.06146). Guards pretrained lower layers against the large,
  noisy gradients of a fresh head ("catastrophic forgetting"); useful for small text datasets.
* ``"lp_ft"`` — linear probe for ``probe_epochs``, then full fine-tuning (Kumar et al. 2022,
  "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", arXiv 2202.10054).
  A head that already fits keeps fine-tuning from distorting the features; it helps most when the test
  data may drift from the training data.
* ``"lp_ft_balanced"`` — LP-FT whose probe stage uses a class-balanced loss (the two-stage fine-tuning of
  ValizadehAslani et al. 2022, "Two-Stage Fine-Tuning: A Novel Strategy for Learning Class-Imbalanced
  Data", arXiv 2207.10858), so the head learns rare classes before the backbone moves. For imbalanced
  labels. The weights are the "effective number of samples" weights of Cui et al. 2019 ("Class-Balanced
  Loss Based on Effective Number of Samples", arXiv 1901.05555). It needs a task with class weights
  (the ``class_counts`` / ``set_class_weights`` hooks of :class:`~transferkit.tasks.protocol.ClassWeighted`,
  as :class:`~transferkit.tasks.ClassificationTask` has).
* ``"llrd"`` — full fine-tuning with layer-wise learning-rate decay 0.8: the top group learns at ``lr``,
  each group below at 0.8 times the one above (ULMFiT's discriminative fine-tuning; the layer-wise decay
  of ELECTRA, Clark et al. 2020, arXiv 2003.10555, and BEiT). Any strategy takes a decay through
  ``param_groups(..., lr_decay=...)``.

The trainer calls :meth:`Strategy.prepare` once, :meth:`Strategy.param_groups` to build the optimiser
over *all* parameters (frozen ones included, since they may be unfrozen later), :meth:`Strategy.apply`
at the start of every epoch after ``task.train()``, and :meth:`Strategy.finish` after the last epoch.
A strategy never unfreezes what the user froze before training (``backbone.freeze()``): it decides
when the groups the user left trainable learn.

Parameter-efficient fine-tuning (:mod:`transferkit.backbones.adapters`) is a strategy too, and composes with the
ones above: ``"lora"``, ``"dora"``, ``"ia3"``, ``"prompt_tuning"``, ``"prefix_tuning"``, ``"bottleneck"``,
``"bitfit"`` and
``"norm_tuning"`` add that adapter to the backbone when training starts (unless it has one already: then they
train it), and follow the schedule of the strategy named by ``schedule`` (default ``"full"``):
``get_strategy("lora", r=16, schedule="lp_ft")`` probes the head first, then trains the head and the LoRA
weights. The backbone's own weights stay frozen; the head always learns. Adapters learn at their own rate, the
option ``lr`` of the PEFT strategies (default :data:`ADAPTER_LR`, 1e-3; ``lr_decay`` still applies below the top
group), not at the trainer's ``lr``, which is meant for full fine-tuning of pretrained weights (5e-5) and is far too
slow for freshly initialised adapters. 1e-3 is the rate of peft's classification examples and within the LoRA
paper's range for RoBERTa; the head's rate is no safe default: on few-shot MNIST with EfficientNet-Lite0, LoRA at the
head's 1e-2 diverged (validation accuracy 0.117) where 1e-3 reached 0.817 (``benchmarks/peft_fewshot.py``).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from transferkit.errors import ConfigError, OptionError
from transferkit.registry import Registry

# The learning rate of PEFT adapters unless a strategy says otherwise (see the module docstring).
ADAPTER_LR = 1e-3

STRATEGIES: Registry[Callable[..., "Strategy"]] = Registry(
    "fine-tuning strategy", hint="(CLI: --strategy NAME)", normalise=lambda s: str(s).strip().lower().replace("-", "_"))


@dataclass
class Strategy:
    """A fine-tuning plan: how many top layer groups learn in each epoch, learning rates per group.

    Attributes:
        name: registry name, for logs.
        schedule: ``epoch (1-based) -> top``: how many top layer groups of the backbone learn in that
            epoch; ``None`` for all, ``0`` for the head only.
        lr_decay: layer-wise learning-rate decay; ``None`` gives every backbone group the same rate.
        balanced_epochs: epochs ``1..balanced_epochs`` weight the loss by class-balanced weights.
        beta: the effective-number hyper-parameter of the class-balanced weights (Cui et al. 2019);
            0 gives equal weights, values towards 1 approach inverse class frequency.
    """

    name: str
    schedule: Callable[[int], int | None]
    lr_decay: float | None = None
    balanced_epochs: int = 0
    beta: float = 0.999
    # A PEFT adapter added in prepare(): (method, options) for transferkit.backbones.adapters.add_adapter.
    adapter: tuple[str, dict] | None = None
    # The adapters' learning rate (None: ADAPTER_LR) when the backbone has adapters.
    adapter_lr: float | None = None
    # Filled by prepare(): the class-balanced weights; the task's own weights and the backbone's own
    # trainable_top, which apply() never exceeds and finish() restores.
    weights: torch.Tensor | None = field(default=None, init=False, repr=False)
    _task_weights: Any = field(default=None, init=False, repr=False)
    _start_top: int | None = field(default=None, init=False, repr=False)

    def param_groups(self, task: nn.Module, lr: float, head_lr: float | None = None, weight_decay: float = 0.0,
                     lr_decay: float | None = None) -> list[dict]:
        """Optimiser parameter groups over every parameter of ``task``.

        Backbone group ``i`` of ``n`` gets ``lr * lr_decay ** (n - 1 - i)`` (``lr`` without decay);
        everything else in the task (the head) gets ``head_lr or lr``. Biases and norm weights
        (``ndim < 2``) get no weight decay. Frozen parameters are included: they get no gradient, so
        the optimiser skips them until they are unfrozen.

        Args:
            lr_decay: overrides the strategy's own ``lr_decay`` when given.

        Returns:
            dicts with ``params``, ``lr``, ``weight_decay`` and ``name`` (for logs), no empty ones.
        """
        decay = self.lr_decay if lr_decay is None else lr_decay
        if decay is not None and not 0 < decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1] (1 = no decay), got {decay!r}: choose e.g. 0.8.")
        backbone = find_backbone(task)
        named: list[tuple[str, float, list[nn.Parameter]]] = []
        seen: set[int] = set()
        if backbone is not None:
            groups = backbone.layer_groups()
            # Adapters learn at their own rate (the module docstring says why).
            top = lr
            if backbone.config.get("adapters") is not None:
                top = self.adapter_lr if self.adapter_lr is not None else ADAPTER_LR
            for i, group in enumerate(groups):
                rate = top * decay ** (len(groups) - 1 - i) if decay is not None else top
                named.append((f"backbone.{group.name}", rate, group.params))
                seen.update(id(p) for p in group.params)
        head = [p for p in task.parameters() if id(p) not in seen]
        named.append(("head", head_lr or lr, head))
        out = []
        for name, rate, params in named:
            for suffix, ps, wd in (("", [p for p in params if p.ndim >= 2], weight_decay),
                                   (".no_decay", [p for p in params if p.ndim < 2], 0.0)):
                if ps:
                    out.append({"params": ps, "lr": rate, "weight_decay": wd, "name": name + suffix})
        return out

    def prepare(self, task: nn.Module, train_examples: Any) -> None:
        """Record what the user left trainable; count classes for the class-balanced stage, if any.

        A backbone frozen before training (``backbone.freeze()``, ``trainable=False``,
        ``set_trainable(k)``) stays so: :meth:`apply` never unfreezes more than it allowed.

        Raises:
            ConfigError: a class-balanced strategy on a task without class weights (not classification),
                or on streamed training data, whose classes cannot be counted first.
        """
        backbone = find_backbone(task)
        if self.adapter is not None:
            add_strategy_adapter(backbone, *self.adapter, strategy=self.name)
        self._start_top = backbone.trainable_top if backbone is not None else None
        if not self.balanced_epochs:
            return
        if not all(callable(getattr(task, hook, None)) for hook in ("class_counts", "set_class_weights")):
            raise ConfigError(f"strategy {self.name!r} needs a classification task: it weights the loss by class, "
                              f"and {type(task).__name__} has no class weights (no class_counts/set_class_weights "
                              "hooks, see transferkit.tasks.protocol.ClassWeighted). Choose strategy 'lp_ft'.")
        if not hasattr(train_examples, "__len__"):
            raise ConfigError(f"strategy {self.name!r} counts the classes of the training data; it cannot "
                              "do so for streamed data. Choose strategy 'lp_ft', or give the data as a list.")
        self._task_weights = getattr(task, "class_weights", None)
        self.weights = class_balanced_weights(task.class_counts(train_examples), self.beta)

    def apply(self, task: nn.Module, epoch: int) -> None:
        """Set what learns in ``epoch`` (1-based): trainable top groups and the loss's class weights.

        Raises:
            ConfigError: nothing in the task would learn in ``epoch`` (say a linear probe of a head that has
                no parameters of its own, its output layer tied to the backbone's embeddings).
        """
        backbone = find_backbone(task)
        if backbone is not None:
            top, limit = self.schedule(epoch), self._start_top
            if limit is not None:
                top = limit if top is None else min(top, limit)
            backbone.set_trainable(top)
            if not any(p.requires_grad for p in task.parameters()):
                backbone.set_trainable(self._start_top)  # the model as the user gave it
                stage = {0: "the head alone", None: "every layer group"}.get(top, f"the top {top} layer group(s)")
                raise ConfigError(
                    f"epoch {epoch} of strategy {self.name!r} trains {stage}, and nothing in {type(task).__name__} "
                    "would learn: the head has no trainable parameters of its own (its output layer may be tied to "
                    "the backbone's embeddings, as Generation(tie_to_embeddings=True) is) and the rest is frozen. "
                    "Choose strategy 'full' or 'llrd', give the head its own output layer "
                    "(Generation(tie_to_embeddings=False)), or unfreeze the backbone.")
        if self.balanced_epochs:
            if self.weights is None:
                raise RuntimeError(f"strategy {self.name!r}: call prepare(task, examples) before apply().")
            task.set_class_weights(self.weights if epoch <= self.balanced_epochs else self._task_weights)

    def finish(self, task: nn.Module) -> None:
        """Give the task back as :meth:`prepare` found it: the backbone's trainable groups, class weights."""
        backbone = find_backbone(task)
        if backbone is not None:
            backbone.set_trainable(self._start_top)
        if self.balanced_epochs:
            task.set_class_weights(self._task_weights)


def class_balanced_weights(counts: list[int], beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights ``(1 - beta) / (1 - beta ** n_c)``, normalised to mean 1 over present classes.

    The inverse "effective number of samples" of Cui et al. 2019 ("Class-Balanced Loss Based on
    Effective Number of Samples", arXiv 1901.05555). Classes without examples get weight 0.
    """
    if not 0 <= beta < 1:
        raise ConfigError(f"beta must be in [0, 1), got {beta!r}: 0 gives equal class weights, values near 1 "
                          "(e.g. 0.999) approach inverse class frequency.")
    n = torch.tensor(counts, dtype=torch.float64)
    present = n > 0
    if not present.any():
        raise ValueError("no class has any example")
    weights = torch.zeros_like(n)
    weights[present] = (1 - beta) / (1 - beta ** n[present])
    weights[present] /= weights[present].mean()
    return weights.float()


def add_strategy_adapter(backbone, method: str, options: dict, strategy: str) -> None:
    """The adapter of a PEFT strategy, unless the backbone has adapters of that method already (then those train).

    Raises:
        ConfigError: a task without a backbone, or a backbone whose adapters are of another method.
    """
    from transferkit.backbones.adapters import canonical

    if backbone is None:
        raise ConfigError(f"strategy {strategy!r} adds a PEFT adapter to the backbone, and the task has none.")
    record = backbone.config.get("adapters")
    wanted = canonical(method)
    if record is None:
        backbone.add_adapter(method, **options)
    elif record["method"] != wanted:
        raise ConfigError(f"strategy {strategy!r} trains a {wanted!r} adapter, and the backbone already has "
                          f"{record['method']!r} adapters ({', '.join(record['specs'])}): choose strategy "
                          f"{record['method']!r} (or 'full') to train them, or load the base again.")


def find_backbone(task: nn.Module):
    """``task.model.backbone`` (a classification task), ``task.backbone`` (pretext tasks), or None."""
    for owner in (getattr(task, "model", None), task):
        backbone = getattr(owner, "backbone", None)
        if backbone is not None and hasattr(backbone, "set_trainable"):
            return backbone
    return None


# --- the registry -----------------------------------------------------------------------------------

def register_strategy(name: str):
    """Decorator registering a builder ``fn(**options) -> Strategy`` under ``name``; refuses duplicates."""
    return STRATEGIES.register(name)


def list_strategies() -> list[str]:
    """Names :func:`get_strategy` accepts."""
    return STRATEGIES.names()


def get_strategy(spec: str | Strategy, **options: Any) -> Strategy:
    """A strategy by name (``"lp_ft"``, or ``"lp-ft"``), built with ``options``; a Strategy as is.

    Raises:
        ConfigError: the name is unknown (a ``ValueError``); the message lists close matches and every name.
        OptionError: an option the strategy does not take (a ``TypeError``); the message lists its options.
    """
    if isinstance(spec, Strategy):
        if options:
            raise OptionError(f"options {sorted(options)} are for strategy names; a Strategy instance is used "
                              "as it is: pass its name instead, or build it with the options yourself.")
        return spec
    key = STRATEGIES.normalise(spec)
    builder = STRATEGIES.get(key)
    valid = list(inspect.signature(builder).parameters)
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise OptionError(f"strategy {key!r} does not take the option {name!r}.{hint} Its options: "
                              f"{', '.join(valid) or '(none)'}.")
    return builder(**options)


@register_strategy("full")
def full(lr_decay: float | None = None) -> Strategy:
    """Every parameter learns from the first epoch."""
    return Strategy("full", lambda epoch: None, lr_decay=lr_decay)


@register_strategy("linear_probe")
def linear_probe() -> Strategy:
    """The backbone stays frozen (eval mode, no gradients); only the head learns."""
    return Strategy("linear_probe", lambda epoch: 0)


@register_strategy("gradual_unfreeze")
def gradual_unfreeze(every: int = 1, lr_decay: float | None = None) -> Strategy:
    """Head only in epoch 1, then one more layer group from the top every ``every`` epochs (ULMFiT).

    With ``every=1``: epoch 1 head, epoch 2 head + last group, epoch 3 + the group below... until all.
    """
    if every < 1:
        raise ConfigError(f"every must be a whole number of epochs >= 1, got {every!r}.")
    return Strategy("gradual_unfreeze", lambda epoch: (epoch - 1) // every, lr_decay=lr_decay)


@register_strategy("lp_ft")
def lp_ft(probe_epochs: int = 1, balanced: bool = False, beta: float = 0.999,
          lr_decay: float | None = None) -> Strategy:
    """Linear probe for ``probe_epochs`` epochs, then full fine-tuning (Kumar et al. 2022).

    Args:
        balanced: weight the probe stage's loss with class-balanced weights (ValizadehAslani et al. 2022).
        beta: see :func:`class_balanced_weights`.
    """
    if probe_epochs < 0:
        raise ConfigError(f"probe_epochs must be a whole number of epochs >= 0, got {probe_epochs!r}.")
    return Strategy("lp_ft_balanced" if balanced else "lp_ft", lambda epoch: 0 if epoch <= probe_epochs else None,
                    lr_decay=lr_decay, balanced_epochs=probe_epochs if balanced else 0, beta=beta)


@register_strategy("lp_ft_balanced")
def lp_ft_balanced(probe_epochs: int = 1, beta: float = 0.999, lr_decay: float | None = None) -> Strategy:
    """LP-FT whose probe stage uses class-balanced loss weights: two-stage fine-tuning for imbalanced labels."""
    return lp_ft(probe_epochs, balanced=True, beta=beta, lr_decay=lr_decay)


@register_strategy("llrd")
def llrd(lr_decay: float = 0.8) -> Strategy:
    """Full fine-tuning, each layer group learning ``lr_decay`` times as fast as the one above it."""
    return Strategy("llrd", lambda epoch: None, lr_decay=lr_decay)


# --- parameter-efficient fine-tuning: an adapter, on the schedule of another strategy ---------------------------

def with_adapter(method: str, options: dict, schedule: "str | Strategy" = "full", lr: float = ADAPTER_LR
                 ) -> Strategy:
    """The strategy ``schedule`` (a name or a Strategy) training a ``method`` adapter at rate ``lr`` instead of the
    whole backbone."""
    import dataclasses

    base = get_strategy(schedule)
    if base.adapter is not None:
        raise ConfigError(f"schedule {base.name!r} already adds a {base.adapter[0]!r} adapter: name a strategy "
                          "without one (full, lp_ft, gradual_unfreeze, llrd...).")
    if not lr > 0:
        raise ConfigError(f"the adapters' learning rate must be > 0, got {lr!r}.")
    name = method if base.name == "full" else f"{method}+{base.name}"
    return dataclasses.replace(base, name=name, adapter=(method, options), adapter_lr=float(lr))


@register_strategy("lora")
def lora(r: int = 8, alpha: float = 16, dropout: float = 0.0, dora: bool = False, rslora: bool = False,
         target_modules: list[str] | None = None, schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """LoRA (Hu et al. 2021, arXiv 2106.09685): rank-``r`` updates of the target modules, scaled ``alpha / r``
    (``alpha / sqrt(r)`` with ``rslora``); ``dora`` decomposes weights into magnitude and direction (DoRA)."""
    return with_adapter("lora", {"r": r, "alpha": alpha, "dropout": dropout, "dora": dora, "rslora": rslora,
                                 "target_modules": target_modules}, schedule, lr)


@register_strategy("dora")
def dora(r: int = 8, alpha: float = 16, dropout: float = 0.0, rslora: bool = False,
         target_modules: list[str] | None = None, schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """DoRA (Liu et al. 2024, arXiv 2402.09353): LoRA on the direction of each weight, a learnt magnitude."""
    return with_adapter("lora", {"r": r, "alpha": alpha, "dropout": dropout, "dora": True, "rslora": rslora,
                                 "target_modules": target_modules}, schedule, lr)


@register_strategy("ia3")
def ia3(target_modules: list[str] | None = None, feedforward_modules: list[str] | None = None,
        schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """(IA)^3 (Liu et al. 2022, arXiv 2205.05638): learnt rescaling of the target modules' activations."""
    return with_adapter("ia3", {"target_modules": target_modules, "feedforward_modules": feedforward_modules},
                        schedule, lr)


@register_strategy("prompt_tuning")
def prompt_tuning(num_virtual_tokens: int = 20, schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """Prompt tuning (Lester et al. 2021, arXiv 2104.08691): learnt embeddings before every text."""
    return with_adapter("prompt_tuning", {"num_virtual_tokens": num_virtual_tokens}, schedule, lr)


@register_strategy("prefix_tuning")
def prefix_tuning(num_virtual_tokens: int = 20, schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """Prefix tuning (Li & Liang 2021, arXiv 2101.00190): learnt keys and values before every attention layer's."""
    return with_adapter("prefix_tuning", {"num_virtual_tokens": num_virtual_tokens}, schedule, lr)


@register_strategy("bottleneck")
def bottleneck(size: int = 64, target_modules: list[str] | None = None, schedule: str = "full",
               lr: float = ADAPTER_LR) -> Strategy:
    """Houlsby bottleneck adapters (Houlsby et al. 2019, arXiv 1902.00751) of width ``size``."""
    return with_adapter("bottleneck", {"size": size, "target_modules": target_modules}, schedule, lr)


@register_strategy("bitfit")
def bitfit(schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only the backbone's biases learn."""
    return with_adapter("bitfit", {}, schedule, lr)


@register_strategy("norm_tuning")
def norm_tuning(schedule: str = "full", lr: float = ADAPTER_LR) -> Strategy:
    """Only the backbone's normalisation layers learn (LayerNorm tuning; BatchNorm-only training)."""
    return with_adapter("norm_tuning", {}, schedule, lr)
