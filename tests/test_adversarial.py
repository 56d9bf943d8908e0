"""Adversarial fine-tuning (Trainer(adversarial=...)): each method's perturbation and gradients against a computation
by hand, on a tiny BERT (input embeddings), word vectors (token vectors) and a tiny EfficientNet (pixels)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.trainer import adversarial
from transferkit.trainer.adversarial import Adversarial, ascent, divergence, project

from conftest import SENTENCES, TOPIC_PAIRS, write_labelled_csv


def _text_task(assets):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(3))
    task = tk.tasks.ClassificationTask(model).eval()  # no dropout: the passes are comparable
    data = (SENTENCES[:4], [0, 1, 2, 0])
    return task, task.collate(task.examples(data))


def _image_task():
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone("timm:test_efficientnet", weights=None, image_size=32),
                             tk.heads.Classification(2))
    task = tk.tasks.ClassificationTask(model).eval()
    images = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    return task, task.collate(task.examples((images, [0, 1, 0, 1])))


def _grads(task) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def _adversarial_grads(task, batch, plan) -> tuple[dict, dict]:
    task.zero_grad(set_to_none=True)
    out = adversarial.step(plan, task, task, batch, lambda loss: loss.backward(), contextlib.nullcontext)
    return out, _grads(task)


@contextlib.contextmanager
def _added(module, delta_of, pre: bool = False):
    """By hand: add ``delta_of(x)`` to the output of ``module`` (or to its ``pixel_values`` input)."""
    if pre:
        handle = module.register_forward_pre_hook(
            lambda m, args, kwargs: (args, {**kwargs, "pixel_values": kwargs["pixel_values"] + delta_of(kwargs["pixel_values"])}),
            with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda m, args, out: out + delta_of(out))
    try:
        yield
    finally:
        handle.remove()


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


def test_fgm_steps_epsilon_along_the_gradient_and_adds_both_losses_gradients(assets):
    task, batch = _text_task(assets)
    table = task.model.backbone.encoder.model.get_input_embeddings()
    # By hand: the clean pass with a zero perturbation whose gradient we read.
    zero = {}
    with _added(table, lambda x: zero.setdefault("d", torch.zeros_like(x, requires_grad=True))):
        task(batch)["loss"].backward()
    g = zero["d"].grad
    delta = 0.5 * g / g.flatten(1).norm(dim=1)[:, None, None]
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((4,), 0.5))  # the stated norm, per example
    with _added(table, lambda x: delta):
        task(batch)["loss"].backward()
    expected = _grads(task)
    task.zero_grad(set_to_none=True)
    clean = task(batch)["loss"].detach()
    out, got = _adversarial_grads(task, batch, Adversarial("fgm", epsilon=0.5))
    assert torch.allclose(out["loss"], clean)  # the logged loss is the clean one
    assert _close(got, expected)


def test_fgm_on_pixels_is_fgsm_epsilon_times_the_sign(assets):
    task, batch = _image_task()
    encoder = task.model.backbone.encoder
    zero = {}
    with _added(encoder, lambda x: zero.setdefault("d", torch.zeros_like(x, requires_grad=True)), pre=True):
        task(batch)["loss"].backward()
    delta = 0.03 * zero["d"].grad.sign()  # the default image ball: L∞, 0.03
    assert delta.abs().amax() == pytest.approx(0.03)
    with _added(encoder, lambda x: delta, pre=True):
        task(batch)["loss"].backward()
    expected = _grads(task)
    _, got = _adversarial_grads(task, batch, Adversarial("fgm"))
    assert _close(got, expected)


def test_pgd_takes_projected_steps_and_trains_on_the_last(assets):
    task, batch = _text_task(assets)
    table = task.model.backbone.encoder.model.get_input_embeddings()
    eps, alpha = 0.5, 0.4

    def unit(g):
        return g / g.flatten(1).norm(dim=1)[:, None, None]

    def clip(d):
        n = d.flatten(1).norm(dim=1)[:, None, None]
        return d * torch.clamp(eps / n, max=1.0)

    zero = {}
    with _added(table, lambda x: zero.setdefault("d", torch.zeros_like(x, requires_grad=True))):
        task(batch)["loss"].backward()
    clean_grads = _grads(task)
    delta = clip(alpha * unit(zero["d"].grad))
    leaf = delta.clone().requires_grad_(True)
    with _added(table, lambda x: leaf):
        (g,) = torch.autograd.grad(task(batch)["loss"], leaf)
    delta = clip(delta + alpha * unit(g))
    assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-6  # two steps of 0.4 stay in the 0.5 ball
    assert delta.flatten(1).norm(dim=1).min() == pytest.approx(eps)
    with _added(table, lambda x: delta):
        task(batch)["loss"].backward()
    expected = _grads(task)
    _, got = _adversarial_grads(task, batch, Adversarial("pgd", epsilon=eps, alpha=alpha, steps=2))
    assert _close(got, expected)
    assert not _close(got, {k: 2 * v for k, v in clean_grads.items()})  # the perturbation changed the gradient


def test_freelb_averages_the_gradients_of_its_adversarial_losses(assets):
    task, batch = _text_task(assets)
    table = task.model.backbone.encoder.model.get_input_embeddings()
    eps, alpha, steps = 1.0, 0.3, 3
    torch.manual_seed(5)
    start = {}

    def first(x):  # the random start: uniform direction, size alpha per example
        if "d" not in start:
            u = torch.empty_like(x).uniform_(-1, 1)
            start["d"] = (u * alpha / u.flatten(1).norm(dim=1)[:, None, None]).requires_grad_(True)
        return start["d"]

    with _added(table, first):
        (task(batch)["loss"] / steps).backward()
    delta, losses = start["d"], []
    for _ in range(steps - 1):
        g = delta.grad
        delta = project(delta.detach() + alpha * g / g.flatten(1).norm(dim=1)[:, None, None], eps, "l2")
        delta.requires_grad_(True)
        with _added(table, lambda x, d=delta: d):
            loss = task(batch)["loss"]
        (loss / steps).backward()
        losses.append(loss.detach())
    expected = _grads(task)
    torch.manual_seed(5)
    out, got = _adversarial_grads(task, batch, Adversarial("freelb", epsilon=eps, alpha=alpha, steps=steps))
    assert _close(got, expected)
    assert len(losses) == 2 and out["loss"].shape == ()  # the logged loss is the mean of the three


def test_smart_divergence_is_the_symmetric_kl_and_zero_at_equal_predictions():
    torch.manual_seed(0)
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    kl = lambda a, b: F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="batchmean")  # noqa: E731
    assert divergence(p, q) == pytest.approx(float(kl(p, q) + kl(q, p)), rel=1e-5)
    assert float(divergence(p, p)) == pytest.approx(0.0, abs=1e-7)
    assert divergence(p, q, "values") == pytest.approx(2 * float(F.mse_loss(p, q)))
    # Multi-label: each output a Bernoulli distribution; summed over outputs, averaged over rows.
    bern = lambda a, b: (torch.sigmoid(b) * (F.logsigmoid(b) - F.logsigmoid(a)) +  # noqa: E731
                         torch.sigmoid(-b) * (F.logsigmoid(-b) - F.logsigmoid(-a))).sum(-1).mean()
    assert divergence(p, q, "independent") == pytest.approx(float(bern(p, q) + bern(q, p)), rel=1e-5)
    p.requires_grad_(True)
    divergence(p, q.clone().requires_grad_(True)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_smart_adds_the_weighted_divergence_at_one_normalised_ascent_step(assets):
    task, batch = _text_task(assets)
    table = task.model.backbone.encoder.model.get_input_embeddings()
    torch.manual_seed(3)
    out = task(batch)
    noise = {}
    with _added(table, lambda x: noise.setdefault("d", (torch.randn_like(x) * 1e-5).requires_grad_(True))):
        (g,) = torch.autograd.grad(divergence(task(batch)["logits"], out["logits"].detach()), noise["d"])
    step = g / g.flatten(1).abs().amax(dim=1)[:, None, None]
    delta = (noise["d"].detach() + 1e-3 * step).clamp(-1e-3, 1e-3)
    with _added(table, lambda x: delta):
        perturbed = task(batch)["logits"]
    (out["loss"] + 2.0 * divergence(perturbed, out["logits"])).backward()
    expected = _grads(task)
    torch.manual_seed(3)
    _, got = _adversarial_grads(task, batch, Adversarial("smart", weight=2.0))
    assert _close(got, expected)


def test_the_ball_helpers_keep_their_norms():
    torch.manual_seed(0)
    g = torch.randn(3, 5, 7) * torch.tensor([1e-3, 1.0, 50.0])[:, None, None]
    assert torch.allclose(ascent(g, "l2").flatten(1).norm(dim=1), torch.ones(3))
    assert torch.equal(ascent(g, "linf"), g.sign())
    big = project(g, 0.5, "l2").flatten(1).norm(dim=1)
    assert big[0] == pytest.approx(float(g[0].norm())) and big[1:].tolist() == pytest.approx([0.5, 0.5])
    assert project(g, 0.2, "linf").abs().max() <= 0.2


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb", "smart"])
def test_every_method_trains_a_word_vector_model(assets, method):
    torch.manual_seed(0)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, hidden=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = tk.Trainer(epochs=2, lr=0.02, batch_size=8, accumulate=2, progress=False, loggers=(),
                         adversarial=method)
    history = trainer.fit(model, TOPIC_PAIRS[:24], TOPIC_PAIRS[45:54])
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    embeddings = "backbone.encoder.embeddings.weight"
    assert not torch.equal(model.state_dict()[embeddings], before[embeddings])  # the vectors learned


def test_adversarial_settings_are_checked_and_unsupported_tasks_refused(assets):
    with pytest.raises(ConfigError, match="Did you mean 'fgm'"):
        tk.Trainer(adversarial="fgn")
    with pytest.raises(ConfigError, match="epsilon must be a positive number"):
        Adversarial("pgd", epsilon=-1)
    with pytest.raises(ConfigError, match="steps must be a whole number"):
        Adversarial("pgd", steps=0)
    with pytest.raises(ConfigError, match="norm is 'l2' or 'linf'"):
        Adversarial("fgm", norm="l1")
    assert Adversarial("pgd").settings("text") == {"method": "pgd", "epsilon": 1.0, "alpha": 0.3, "steps": 3,
                                                   "norm": "l2", "weight": 1.0}
    assert Adversarial("fgm").settings("image")["norm"] == "linf"
    task, batch = _text_task(assets)
    with pytest.raises(ConfigError, match="has no Backbone"):
        adversarial.step(Adversarial(), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), batch, print,
                         contextlib.nullcontext)
    without_logits = lambda b: {"loss": task(b)["loss"]}  # noqa: E731
    with pytest.raises(ConfigError, match="no 'logits'"):
        adversarial.step(Adversarial("smart"), without_logits, task, batch, print, contextlib.nullcontext)
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    with pytest.raises(ConfigError, match="not work with fsdp or compile"):
        tk.Trainer(epochs=1, adversarial="fgm", compile=True, progress=False, loggers=()).fit(model, TOPIC_PAIRS[:8])


def test_a_freelb_run_resumes_exactly(assets, tmp_path):
    class Stop(Exception):
        pass

    def run(out, resume=False, stop_at=None):
        def stop(trainer, state):
            if state["step"] == stop_at:
                raise Stop
        torch.manual_seed(0)
        model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, hidden=8))
        trainer = tk.Trainer(epochs=3, lr=0.02, batch_size=8, progress=False, loggers=(), adversarial="freelb",
                             output_dir=str(out), save_every=2, callbacks={"on_step_end": [stop]})
        history = trainer.fit(model, TOPIC_PAIRS[:40], TOPIC_PAIRS[45:54], resume=resume)
        return model, [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    full, full_history = run(tmp_path / "full")
    with pytest.raises(Stop):
        run(tmp_path / "cut", stop_at=8)
    model, history = run(tmp_path / "cut", resume=True)
    assert history == full_history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), full.state_dict().values()))


def test_finetune_adversarial_from_the_cli_records_its_settings(assets, tmp_path):
    from transferkit.cli import main

    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    write_labelled_csv(train, TOPIC_PAIRS[:30])
    write_labelled_csv(val, TOPIC_PAIRS[45:54])
    out = tmp_path / "run"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(train), "--val", str(val),
                 "--epochs", "1", "--adversarial", "pgd", "--adversarial-epsilon", "0.5", "--output", str(out),
                 "--no-progress"]) == 0
    settings = json.loads((out / "config.json").read_text())["training"]["settings"]
    assert settings["adversarial"] == {"method": "pgd", "epsilon": 0.5, "alpha": None, "steps": None, "norm": None,
                                       "weight": 1.0}
    assert tk.TransferModel.from_pretrained(out).predict(["stocks fell"])
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(train), "--output",
                 str(tmp_path / "x"), "--adversarial-epsilon", "0.5", "--no-progress"]) == 1
