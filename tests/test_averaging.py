"""Weight averaging: the moving average of the weights (Trainer(ema=...)) and greedy model soups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.errors import CheckpointError, ConfigError
from transferkit.trainer.averaging import Ema, average, greedy_soup

from conftest import TOPIC_PAIRS, write_labelled_csv

PAIRS = TOPIC_PAIRS
TRAIN, VAL = PAIRS[:45], PAIRS[45:63]


def _model(assets):
    torch.manual_seed(0)
    return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3, hidden=8))


def _trainer(**kw):
    return tk.Trainer(**{"epochs": 3, "lr": 0.02, "batch_size": 8, "progress": False, "loggers": (), **kw})


def test_the_decay_warms_up_and_the_average_follows_the_formula():
    ema = Ema(0.99)
    assert [ema.rate(s) for s in (1, 2, 90, 1000)] == [2 / 11, 3 / 12, 0.91, 0.99]  # min(decay, (1 + step) / (10 + step))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    net[0].bias.requires_grad_(False)  # frozen: not averaged
    ema.update(net, 0)
    assert "0.bias" not in ema.shadow and {"0.weight", "1.running_mean", "1.num_batches_tracked"} <= set(ema.shadow)
    expected = net[0].weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():
            net[0].weight.add_(torch.randn_like(net[0].weight))
            net[1].num_batches_tracked += 1
        ema.update(net, step)
        d = ema.rate(step)
        expected = d * expected + (1 - d) * net[0].weight.detach()
    assert torch.allclose(ema.shadow["0.weight"], expected)
    assert int(ema.shadow["1.num_batches_tracked"]) == 3  # a count: copied, not averaged
    net[0].bias.requires_grad_(True)  # starts to learn: joins the average at its value
    ema.update(net, 4)
    assert torch.equal(ema.shadow["0.bias"], net[0].bias.detach())
    live = net[0].weight.detach().clone()
    with ema.applied(net):
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
    assert torch.equal(net[0].weight, live)  # the live weights come back


def test_a_bad_decay_is_refused():
    for bad in (1.0, 0.0, 1, "0.9", -0.5):
        with pytest.raises(ConfigError, match="ema is the decay of the moving average"):
            tk.Trainer(ema=bad)


def test_fit_leaves_the_average_and_validates_on_it(assets):
    model = _model(assets)
    seen = []
    head = model.head

    def record(trainer, state):
        seen.append({k: v.detach().clone() for k, v in head.state_dict().items()})

    history = _trainer(ema=0.9, callbacks={"on_step_end": [record]}).fit(model, TRAIN)  # no validation: the average
    ema = Ema(0.9)
    expected = None
    for step, weights in enumerate(seen, 1):
        d = ema.rate(step)
        expected = weights if expected is None else {k: d * expected[k] + (1 - d) * weights[k] for k in weights}
    for k, v in head.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert not all(torch.allclose(v, seen[-1][k]) for k, v in head.state_dict().items())  # not the last step's
    assert len(history) == 3
    # With validation, the reported figures are the averaged weights' figures, and the best epoch's average stays.
    model = _model(assets)
    trainer = _trainer(ema=0.9)
    history = trainer.fit(model, TRAIN, VAL)
    best = next(r for r in history if r.get("restored"))
    assert trainer.evaluate(model, VAL)["loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    plain = _trainer().fit(_model(assets), TRAIN, VAL)
    assert [r["val_loss"] for r in plain] != [r["val_loss"] for r in history]


class Stop(Exception):
    pass


def _run(assets, out, resume=False, stop_at=None):
    def stop(trainer, state):
        if state["step"] == stop_at:
            raise Stop

    model = _model(assets)
    trainer = _trainer(epochs=4, ema=0.8, output_dir=str(out), save_every=2, callbacks={"on_step_end": [stop]})
    history = trainer.fit(model, TRAIN, VAL, resume=resume)
    return model, [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_a_run_with_ema_resumes_exactly(assets, tmp_path):
    full, full_history = _run(assets, tmp_path / "full")
    with pytest.raises(Stop):
        _run(assets, tmp_path / "cut", stop_at=14)  # in epoch 3 (6 steps an epoch)
    assert (tmp_path / "cut" / "checkpoint" / "ema.safetensors").is_file()
    model, history = _run(assets, tmp_path / "cut", resume=True)
    assert history == full_history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), full.state_dict().values()))


def test_resuming_with_ema_a_checkpoint_written_without_it_is_refused(assets, tmp_path):
    _trainer(epochs=1, output_dir=str(tmp_path)).fit(_model(assets), TRAIN)
    with pytest.raises(CheckpointError, match="it has no ema.safetensors"):
        _trainer(epochs=2, ema=0.9, output_dir=str(tmp_path)).fit(_model(assets), TRAIN, resume=True)


def _linear(value: float) -> nn.Linear:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(value)
    return net


def test_greedy_soup_adds_a_model_only_when_the_average_scores_at_least_as_well():
    # The score peaks at weight 1; own scores rank 1.4 (-0.4), 0.4 (-0.6), 3.0 (-2).
    score = lambda m: -abs(m.weight.item() - 1.0)  # noqa: E731
    models = [_linear(3.0), _linear(1.4), _linear(0.4)]
    soup = greedy_soup(models, score)
    assert soup.scores == pytest.approx([-2.0, -0.4, -0.6])
    # Best first (1.4); with 0.4: mean 0.9, score -0.1, joins; with 3.0: mean 1.6, score -0.6, refused.
    assert soup.ingredients == [1, 2] and [t[2] for t in soup.tried] == [True, False]
    assert soup.model.weight.item() == pytest.approx(0.9) and soup.score == pytest.approx(-0.1)
    assert [m.weight.item() for m in models] == pytest.approx([3.0, 1.4, 0.4])  # the ingredients are untouched
    lower = greedy_soup(models, lambda m: abs(m.weight.item() - 1.0), higher_is_better=False)
    assert lower.ingredients == [1, 2]
    assert torch.allclose(average(models)["weight"], torch.tensor([[1.6]]))
    with pytest.raises(ConfigError, match="not the same architecture"):
        greedy_soup([_linear(1.0), nn.Linear(2, 1)], score)


def test_keep_soup_averages_the_seeds_that_help_on_validation(assets):
    model = _model(assets)
    trainer = _trainer(seeds=[0, 1, 2], keep="soup")
    trainer.fit(model, TRAIN, VAL)
    result = trainer.seeds_result
    soup = result.soup
    assert soup.model is model and soup.ingredients[0] == result.seeds.index(result.best_seed)
    value = _trainer().evaluate(model, VAL)["accuracy"]
    assert value == pytest.approx(soup.score) and value >= max(r["metrics"]["val_accuracy"] for r in result.runs)
    assert trainer.best["soup"] == [result.seeds[i] for i in soup.ingredients]
    with pytest.raises(ConfigError, match="keep='soup' chooses which seeds"):
        _trainer(seeds=[0, 1], keep="soup").fit(_model(assets), TRAIN)


def test_finetune_soup_and_ema_save_the_averaged_model(assets, tmp_path, capsys):
    import json

    from transferkit.cli import main

    write_labelled_csv(tmp_path / "train.csv", PAIRS[:54])
    out = tmp_path / "m"
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(out), "--epochs", "2", "--seeds", "3", "--soup", "--ema", "0.9",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "kept the greedy soup of seeds" in printed
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["soup_seeds"] and set(metrics["soup_seeds"]) <= {0, 1, 2}
    assert (tmp_path / "m.run" / "seed-0" / "checkpoint" / "ema.safetensors").is_file()
    assert tk.TransferModel.from_pretrained(out).predict(["stocks fell"])
    assert main(["finetune", "--backbone", f"glove:{assets['glove']}", "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "x"), "--soup", "--no-progress"]) == 1
    assert "--soup averages the models of several seeds" in capsys.readouterr().err


def test_soup_ingredients_start_from_the_model_given(assets):
    model = _model(assets)
    start = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainer = _trainer(seeds=[0, 1], keep="soup", epochs=1, lr=0.0)  # nothing learns: each ingredient is the start
    trainer.fit(model, TRAIN, VAL)
    for one in trainer.seeds_result.models.values():
        assert all(torch.equal(v, start[k]) for k, v in one.head.state_dict().items())
