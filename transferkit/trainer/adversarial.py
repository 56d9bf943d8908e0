"""Adversarial fine-tuning: also train on inputs nudged the way that hurts the loss most.

A small labelled set is easy to fit exactly; a model that also has to be right a small step away from each
example (in the direction its own gradient says is worst) learns a smoother function and overfits less. The step is
taken on what the backbone reads first: the **input embeddings** of a text backbone (the output of a transformer's
embedding table, a word-vector backbone's token vectors) and the **normalised pixels** of an image backbone. Any
backbone and any task work, since only the task's own loss (and, for SMART, its ``logits``) is used.

``Trainer(adversarial="fgm")`` or ``Trainer(adversarial=Adversarial("pgd", epsilon=0.5))``; CLI ``--adversarial``.

* ``"fgm"`` — the fast gradient method (Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods for
  Semi-Supervised Text Classification", arXiv 1605.07725; FGSM of Goodfellow et al. 2015, arXiv 1412.6572, for
  images): ``δ = ε·g/‖g‖₂`` per example (text) or ``ε·sign(g)`` (images, the L∞ ball), ``g`` the gradient of the
  loss at the clean input; the weights get the gradient of ``L(x) + weight·L(x + δ)``. Two forward/backward passes.
* ``"pgd"`` — projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks", arXiv 1706.06083): ``steps`` ascent steps of size ``alpha``, each projected back into the ε-ball, then
  ``L(x) + weight·L(x + δ)``. ``steps + 1`` passes.
* ``"freelb"`` — FreeLB (Zhu et al. 2020, "FreeLB: Enhanced Adversarial Training for Natural Language
  Understanding", arXiv 1909.11764): a random start inside the ball, ``steps`` ascent steps, and the weights get the
  *mean* of the gradients of all ``steps`` adversarial losses (each ascent's backward pass gives the weights'
  gradient for free). No clean pass; ``steps`` passes.
* ``"smart"`` — SMART's smoothness-inducing regulariser (Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning
  for Pre-trained Natural Language Models through Principled Regularized Optimization", arXiv 1911.03437):
  ``L(x) + weight·ℓ(f(x), f(x + δ))`` with ``δ`` one normalised ascent step on ``ℓ`` from ``N(0, σ²)``, ``σ = 1e-5``;
  ``ℓ`` is the symmetric KL divergence of the predicted distributions (per output for multi-label, squared error for
  regression: the task's ``logits_kind``), each side's target detached as in the authors' MT-DNN code. Needs a task whose outputs hold ``logits``.
  The paper's Bregman proximal-point update (a momentum teacher) is not part of it; ``Trainer(ema=...)`` is the
  closest thing here. Three passes.

Defaults (``None`` below): text perturbations are measured in the L2 norm per example with ``epsilon = 1`` (the usual
FGM/PGD setting for BERT-style models), image perturbations in the L∞ norm with ``epsilon = 0.03`` in normalised
pixel units (about 2/255 of the pixel range at ImageNet's std); ``alpha = 0.3·epsilon``; ``steps = 3`` for PGD and
FreeLB. SMART's ball is L∞ with ``epsilon = alpha = 1e-3``. The cost is the passes above: ``benchmarks/adversarial.py``
measures the seconds per step beside plain fine-tuning. ``train_loss`` in the history is the clean loss (FreeLB: the
mean of its adversarial losses). Not with ``fsdp`` or ``compile`` (the perturbation is added by module hooks).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError
from transferkit.registry import Registry


@dataclass(frozen=True)
class Method:
    """What a method does by default: its step function and its settings when the user gives none."""

    step: Callable
    steps: int
    norm: str | None  # None: by modality (text l2, images linf)
    epsilon: float | None  # None: by modality


METHODS: Registry[Method] = Registry("adversarial method", hint="(CLI: --adversarial NAME)",
                                     normalise=lambda s: str(s).strip().lower())
EPSILON = {"text": 1.0, "image": 0.03}  # see the module docstring
NORM = {"text": "l2", "image": "linf"}
SMART_SIGMA = 1e-5  # the std of SMART's random start (the paper's σ)


@dataclass
class Adversarial:
    """An adversarial-training plan (see the module docstring for each method and its defaults).

    Attributes:
        method: ``"fgm"``, ``"pgd"``, ``"freelb"`` or ``"smart"``.
        epsilon: radius of the ball the perturbation stays in, per example; ``None``: the method's default.
        alpha: size of one ascent step (PGD, FreeLB, SMART; FGM steps ``epsilon`` at once); ``None``: ``0.3·epsilon``.
        steps: ascent steps (PGD, FreeLB); ``None``: 3.
        norm: ``"l2"`` or ``"linf"``; ``None``: L2 for text, L∞ for images (SMART: L∞).
        weight: weight of the adversarial term in the loss (SMART's λ); FreeLB has no clean term and ignores it.
    """

    method: str = "fgm"
    epsilon: float | None = None
    alpha: float | None = None
    steps: int | None = None
    norm: str | None = None
    weight: float = 1.0

    def __post_init__(self):
        self.method = METHODS.normalise(self.method)
        METHODS.get(self.method)  # an unknown name fails here, with the close matches
        for name in ("epsilon", "alpha"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"adversarial {name} must be a positive number (or None for the default); got {value!r}.")
        if self.steps is not None and not (isinstance(self.steps, int) and not isinstance(self.steps, bool)
                                           and self.steps >= 1):
            raise ConfigError(f"adversarial steps must be a whole number, 1 or more; got {self.steps!r}.")
        if self.norm not in (None, "l2", "linf"):
            raise ConfigError(f"adversarial norm is 'l2' or 'linf' (or None: by modality); got {self.norm!r}.")
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0):
            raise ConfigError(f"adversarial weight must be a number 0 or more; got {self.weight!r}.")

    def settings(self, modality: str) -> dict[str, Any]:
        """Every setting with the defaults for ``modality`` filled in (what a run records)."""
        method = METHODS.get(self.method)
        epsilon = self.epsilon or method.epsilon or EPSILON[modality]
        steps = 1 if self.method in ("fgm", "smart") else (self.steps or method.steps)
        alpha = epsilon if self.method == "fgm" else (self.alpha or (method.epsilon or 0.3 * epsilon))
        return {"method": self.method, "epsilon": float(epsilon), "alpha": float(alpha), "steps": int(steps),
                "norm": self.norm or method.norm or NORM[modality], "weight": float(self.weight)}

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def get_adversarial(spec: Any) -> Adversarial | None:
    """``None``, a method's name or an :class:`Adversarial` → an :class:`Adversarial` (or ``None``)."""
    if spec is None or isinstance(spec, Adversarial):
        return spec
    if isinstance(spec, str):
        return Adversarial(spec)
    raise ConfigError(f"adversarial is a method's name ({', '.join(METHODS)}), an Adversarial(...) or None; "
                      f"got {spec!r}.")


# -- where the perturbation goes ------------------------------------------------------------------------


class Site:
    """Adds the perturbation to what the backbone reads first, through module hooks, while :meth:`installed`.

    ``deltas`` holds one tensor per backbone call of a forward pass (a pair task calls its backbone twice), each
    shaped like what it perturbs; :meth:`run` sets them for its pass, or makes new ones as the pass reaches them.
    """

    def __init__(self, task: nn.Module):
        from transferkit.backbones.base import Backbone

        backbone = next((m for m in task.modules() if isinstance(m, Backbone)), None)
        if backbone is None:
            raise ConfigError(f"adversarial training perturbs a backbone's inputs, and {type(task).__name__} has no "
                              "Backbone; train it with adversarial=None.")
        self.modality = backbone.modality
        self.logits_kind = getattr(task, "logits_kind", "categorical")  # for SMART's divergence
        self.backbone = backbone
        self.deltas: list[torch.Tensor] = []
        self._make: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like
        self._calls = 0

    def installed(self):
        from transferkit.backbones.base import input_hook

        return input_hook(self.backbone, self._add)

    def _add(self, x: torch.Tensor) -> torch.Tensor:
        if self._calls == len(self.deltas):
            self.deltas.append(self._make(x.detach().float()))
        delta = self.deltas[self._calls]
        self._calls += 1
        return x + delta.to(x.dtype)

    def run(self, forward, batch, deltas: list[torch.Tensor] | None = None,
            make: Callable[[torch.Tensor], torch.Tensor] | None = None, grad: bool = False) -> dict:
        """One forward pass with ``deltas`` (or new ones from ``make(x)``, zeros by default); ``grad``: they are
        leaves whose gradient the pass's backward fills."""
        self._calls = 0
        self.deltas = [d.detach().requires_grad_(grad) for d in deltas] if deltas is not None else []
        self._make = (lambda x: (make or torch.zeros_like)(x).requires_grad_(grad))
        out = forward(batch)
        if not self.deltas:
            raise ConfigError(f"adversarial training found nothing to perturb: the task's forward pass never ran its "
                              f"{self.modality} backbone's encoder; train it with adversarial=None.")
        return out


# -- the geometry of the ball ----------------------------------------------------------------------------


def _per_example(x: torch.Tensor, norm: str) -> torch.Tensor:
    """The norm of each example's slice of ``x`` (first dimension), shaped to broadcast against ``x``."""
    flat = x.reshape(x.shape[0], -1)
    n = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
    return n.reshape(-1, *([1] * (x.dim() - 1)))


def ascent(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit size: ``g/‖g‖₂`` per example, or ``sign(g)`` (L∞)."""
    return g / _per_example(g, "l2").clamp_min(1e-12) if norm == "l2" else g.sign()


def project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """``delta`` moved back into the ball of radius ``epsilon`` (per example)."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / _per_example(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)


def _random_start(radius: float, norm: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A uniform random direction of size ``radius`` per example (FreeLB's start)."""
    def make(x: torch.Tensor) -> torch.Tensor:
        u = torch.empty_like(x).uniform_(-1, 1)
        return u * radius if norm == "linf" else u * (radius / _per_example(u, "l2").clamp_min(1e-12))
    return make


# -- the methods ------------------------------------------------------------------------------------------


def step(plan: Adversarial, forward, task: nn.Module, batch, backward: Callable[[torch.Tensor], None],
         quiet: Callable[[], Any]) -> dict:
    """Forward and backward passes of one micro-batch under ``plan``; returns the outputs that go to the loss log.

    Args:
        forward: the (possibly DDP-wrapped) task's forward.
        backward: ``backward(loss)`` adds the gradient of ``loss`` (weighted for accumulation, scaled for fp16).
        quiet: a context in which a backward pass does not synchronise processes (DDP's ``no_sync``); every pass
            but the last runs in it, so the processes exchange the summed gradient once.
    """
    site = Site(task)
    settings = plan.settings(site.modality)
    with site.installed():
        return METHODS.get(plan.method).step(site, settings, forward, batch, backward, quiet)


def _pgd(site: Site, s: dict, forward, batch, backward, quiet) -> dict:
    with quiet():
        out = site.run(forward, batch, grad=True)
        backward(out["loss"])  # the clean loss's gradient, for the weights and for the first ascent
    deltas = [project(s["alpha"] * ascent(d.grad, s["norm"]), s["epsilon"], s["norm"]) for d in site.deltas]
    for _ in range(s["steps"] - 1):
        with quiet():
            loss = site.run(forward, batch, deltas, grad=True)["loss"]
            grads = torch.autograd.grad(loss, site.deltas)  # the perturbation's gradient only
        deltas = [project(d + s["alpha"] * ascent(g, s["norm"]), s["epsilon"], s["norm"])
                  for d, g in zip(deltas, grads)]
    backward(s["weight"] * site.run(forward, batch, deltas)["loss"])
    return out


def _freelb(site: Site, s: dict, forward, batch, backward, quiet) -> dict:
    losses, out, deltas = [], None, None
    for k in range(s["steps"]):
        last = k == s["steps"] - 1
        with contextlib.nullcontext() if last else quiet():
            now = site.run(forward, batch, deltas, make=_random_start(s["alpha"], s["norm"]), grad=True)
            backward(now["loss"] / s["steps"])  # the weights' gradient: the mean over the steps
        out, losses = out or now, losses + [now["loss"].detach()]
        if not last:
            deltas = [project(d.detach() + s["alpha"] * ascent(d.grad, s["norm"]), s["epsilon"], s["norm"])
                      for d in site.deltas]
    return {**out, "loss": torch.stack(losses).mean()}


def divergence(p: torch.Tensor, q: torch.Tensor, kind: str = "categorical") -> torch.Tensor:
    """SMART's ``ℓ`` between logits ``p`` and ``q``: symmetric, each direction with its target detached (as in the
    authors' MT-DNN code), averaged over the rows.

    Args:
        kind: what the logits are (the task's optional ``logits_kind``, :mod:`transferkit.tasks.protocol`):
            ``"categorical"`` — the KL divergence of the softmax distributions over the last dimension both ways;
            ``"independent"`` — a sigmoid per output (multi-label): the Bernoulli KL divergences, summed over the
            outputs; ``"values"`` — regression outputs: the squared error both ways.
    """
    p, q = p.float(), q.float()
    if kind == "values":
        return F.mse_loss(p, q.detach()) + F.mse_loss(q, p.detach())
    if kind == "independent":  # each output a two-way distribution: [log σ(x), log σ(-x)]
        p, q = torch.stack([F.logsigmoid(p), F.logsigmoid(-p)], -1), torch.stack([F.logsigmoid(q), F.logsigmoid(-q)], -1)
    elif kind == "categorical":
        p, q = F.log_softmax(p, -1), F.log_softmax(q, -1)
    else:
        raise ConfigError(f"logits_kind is 'categorical', 'independent' or 'values'; the task says {kind!r}.")

    def kl(a, b):  # KL(b ‖ a) of log-probabilities, the gradient into a only
        b = b.detach()
        return (b.exp() * (b - a)).sum(-1)

    rows = lambda t: t.reshape(t.shape[0], -1).sum(-1).mean()  # noqa: E731
    return rows(kl(p, q)) + rows(kl(q, p))


def _logits(out: dict) -> torch.Tensor:
    if "logits" not in out:
        raise ConfigError("SMART compares the predictions on clean and perturbed inputs, and this task's outputs hold "
                          f"no 'logits' (they hold {sorted(out)}); choose fgm, pgd or freelb.")
    return out["logits"]


def _smart(site: Site, s: dict, forward, batch, backward, quiet) -> dict:
    with quiet():
        out = site.run(forward, batch)
        clean = _logits(out)
        noisy = site.run(forward, batch, make=lambda x: torch.randn_like(x) * SMART_SIGMA, grad=True)
        grads = torch.autograd.grad(divergence(_logits(noisy), clean.detach(), site.logits_kind), site.deltas)
    deltas = [project(d.detach() + s["alpha"] * g / _per_example(g, "linf").clamp_min(1e-12), s["epsilon"], "linf")
              for d, g in zip(site.deltas, grads)]
    adversarial = _logits(site.run(forward, batch, deltas))
    backward(out["loss"] + s["weight"] * divergence(adversarial, clean, site.logits_kind))
    return out


METHODS.register("fgm", Method(_pgd, steps=1, norm=None, epsilon=None))
METHODS.register("pgd", Method(_pgd, steps=3, norm=None, epsilon=None))
METHODS.register("freelb", Method(_freelb, steps=3, norm=None, epsilon=None))
METHODS.register("smart", Method(_smart, steps=1, norm="linf", epsilon=1e-3))
