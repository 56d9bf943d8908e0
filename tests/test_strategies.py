"""Layer groups, partial freezing and fine-tuning strategies, on tiny random-weight backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.backbones.layers import split_blocks
from transferkit.errors import AdapterError, ConfigError
from transferkit.tasks import ClassificationTask
from transferkit.trainer import strategies as st

from conftest import raw_batch

EXTRA_SPECS = {
    "timm-resnet": ("timm:test_resnet", {"weights": None, "image_size": 32}),
    "torchvision-resnet": ("torchvision:resnet18", {"weights": None, "image_size": 32}),
}
ALL_SPECS = ["word2vec", "word2vec-text", "glove", "fasttext", "hf", "timm", "timm-vit", "timm-stage", "torchvision",
             *EXTRA_SPECS]


def load(tiny_specs, key: str) -> tk.Backbone:
    spec, options = {**tiny_specs, **EXTRA_SPECS}[key]
    torch.manual_seed(0)
    return tk.load_backbone(spec, **options)


def classifier(backbone: tk.Backbone, num_classes: int = 3) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(tk.TransferModel(backbone, tk.heads.Classification(num_classes)))


def batch_for(task: ClassificationTask, n: int = 4) -> dict:
    return task.collate([(x, i % 3) for i, x in enumerate(raw_batch(task.model.backbone.modality, n))])


def names(groups) -> list[str]:
    return [g.name for g in groups]


# --- layer groups -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ALL_SPECS)
def test_groups_partition_the_parameters_in_order(tiny_specs, key):
    backbone = load(tiny_specs, key)
    groups = backbone.layer_groups()
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in backbone.parameters()}, "a parameter is in no group"
    assert all(g.params for g in groups)
    # Input → output: each group starts later in registration order than the one before it.
    order = {id(p): i for i, p in enumerate(backbone.parameters())}
    starts = [min(order[id(p)] for p in g.params) for g in groups]
    assert starts == sorted(starts)
    if backbone.config["source"] in ("word2vec", "glove", "fasttext"):
        assert names(groups) == ["embeddings"]
    else:
        assert len(groups) >= 3


def test_group_names_per_source(tiny_specs):
    bert = load(tiny_specs, "hf")
    assert names(bert.layer_groups()) == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert any(p is bert.encoder.model.pooler.dense.weight for p in bert.layer_groups()[-1].params)
    assert names(load(tiny_specs, "timm-resnet").layer_groups()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert names(load(tiny_specs, "torchvision-resnet").layer_groups()) == ["stem", "layer1", "layer2", "layer3",
                                                                            "layer4"]
    vit = load(tiny_specs, "timm-vit")
    groups = vit.layer_groups()
    assert groups[0].name == "stem" and groups[-1].name == f"blocks.{len(vit.encoder.model.blocks) - 1}"
    stem = {id(p) for p in groups[0].params}
    assert id(vit.encoder.model.cls_token) in stem and id(vit.encoder.model.pos_embed) in stem
    assert id(vit.encoder.model.norm.weight) in {id(p) for p in groups[-1].params}
    eff = load(tiny_specs, "timm").layer_groups()
    assert eff[0].name == "stem" and eff[1].name == "blocks.0"
    assert id(load(tiny_specs, "timm").encoder.model.conv_head.weight) not in {id(p) for p in eff[0].params}
    assert names(load(tiny_specs, "torchvision").layer_groups())[:2] == ["features.0", "features.1"]


def test_gpt2_layout_final_norm_joins_the_last_block():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16,
                                 bos_token_id=0, eos_token_id=0))
    groups = split_blocks(model, first="embeddings")
    assert names(groups) == ["embeddings", "h.0", "h.1"]
    assert {id(model.wte.weight), id(model.wpe.weight)} <= {id(p) for p in groups[0].params}
    assert id(model.ln_f.weight) in {id(p) for p in groups[-1].params}


def test_a_network_without_blocks_is_split_into_its_children():
    groups = split_blocks(nn.Linear(3, 2))
    assert names(groups) == ["all"] and len(groups[0].params) == 2
    net = nn.Module()
    net.conv1, net.act, net.mixed_a, net.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)
    groups = split_blocks(net)
    assert names(groups) == ["conv1", "mixed_a", "fc"] and groups[0].modules == [net.conv1, net.act]


# --- freezing ---------------------------------------------------------------------------------------

def test_set_trainable_freezes_gradients_and_batchnorm_of_lower_groups(tiny_specs):
    backbone = load(tiny_specs, "timm-resnet")
    groups = backbone.layer_groups()
    backbone.set_trainable(1).train()
    frozen_ids = {id(p) for g in groups[:-1] for p in g.params}
    assert all(p.requires_grad == (id(p) not in frozen_ids) for p in backbone.parameters())
    bn = {name: m for name, m in backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}
    before = {name: m.running_mean.clone() for name, m in bn.items()}
    out = backbone(**backbone.preprocess(raw_batch("image", 4)))
    out.pooled.square().sum().backward()
    for name, m in bn.items():
        moved = not torch.equal(m.running_mean, before[name])
        assert moved == (".layer4." in name), name
        assert m.training == (".layer4." in name), name
    for p in backbone.parameters():
        assert (p.grad is not None) == (id(p) not in frozen_ids)
    assert backbone.trainable_top == 1 and not backbone.frozen


def test_frozen_groups_keep_dropout_off_when_the_model_trains(tiny_specs):
    backbone = load(tiny_specs, "hf")
    model = tk.TransferModel(backbone, tk.heads.Classification(2))
    backbone.set_trainable(1)
    model.train()  # a parent's train() reaches the backbone's override
    bert = backbone.encoder.model
    assert not bert.embeddings.dropout.training and not bert.encoder.layer[0].training
    assert bert.encoder.layer[1].training and model.head.training
    model.eval()
    assert not bert.encoder.layer[1].training
    backbone.set_trainable(None)
    model.train()
    assert bert.embeddings.dropout.training and all(p.requires_grad for p in backbone.parameters())


def test_freeze_is_set_trainable_zero(tiny_specs):
    backbone = load(tiny_specs, "hf")
    assert backbone.freeze().frozen and backbone.trainable_top == 0
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.train().encoder.training
    assert not backbone.unfreeze().frozen and backbone.trainable_top is None
    backbone.set_trainable(99)  # more groups than there are: everything
    assert backbone.trainable_top is None and all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError):
        backbone.set_trainable(-1)


# --- parameter groups -------------------------------------------------------------------------------

def test_param_groups_follow_layerwise_decay_exactly(tiny_specs):
    task = classifier(load(tiny_specs, "hf"))
    task.model.backbone.freeze()  # frozen parameters are still handed to the optimiser
    groups = st.get_strategy("full").param_groups(task, lr=1e-3, head_lr=1e-2, weight_decay=0.1, lr_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone.embeddings"]["lr"] == 1e-3 * 0.5 ** 2
    assert by_name["backbone.encoder.layer.0"]["lr"] == 1e-3 * 0.5
    assert by_name["backbone.encoder.layer.1"]["lr"] == 1e-3
    assert by_name["head"]["lr"] == by_name["head.no_decay"]["lr"] == 1e-2
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] == 0.1) for p in g["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in task.parameters()}
    flat = st.get_strategy("full").param_groups(task, lr=1e-3)  # no decay, no head_lr: one rate
    assert {g["lr"] for g in flat} == {1e-3}
    torch.optim.AdamW(groups)  # accepted as is


def test_llrd_carries_its_own_decay_and_the_trainer_overrides_it(tiny_specs):
    task = classifier(load(tiny_specs, "hf"))
    strategy = st.get_strategy("llrd")
    assert strategy.lr_decay == 0.8
    lrs = [g["lr"] for g in strategy.param_groups(task, lr=1.0) if g["name"].startswith("backbone.encoder.layer.0")]
    assert lrs and all(lr == pytest.approx(0.8) for lr in lrs)
    lrs = [g["lr"] for g in strategy.param_groups(task, lr=1.0, lr_decay=0.5) if g["name"] == "backbone.embeddings"]
    assert lrs == [0.25]


def test_a_task_without_backbone_is_all_head():
    task = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = st.full().param_groups(task, lr=0.1, head_lr=0.5)
    assert {g["name"] for g in groups} == {"head", "head.no_decay"} and {g["lr"] for g in groups} == {0.5}
    st.linear_probe().apply(task, 1)  # nothing to freeze: no error


# --- schedules --------------------------------------------------------------------------------------

def tops(strategy, task, epochs: int) -> list:
    out = []
    for epoch in range(1, epochs + 1):
        task.train()
        strategy.apply(task, epoch)
        out.append(task.model.backbone.trainable_top)
    return out


def test_schedules_per_epoch(tiny_specs):
    task = classifier(load(tiny_specs, "timm-resnet"))  # 5 groups
    assert tops(st.get_strategy("full"), task, 3) == [None] * 3
    assert tops(st.get_strategy("linear_probe"), task, 3) == [0] * 3
    assert tops(st.get_strategy("gradual_unfreeze"), task, 7) == [0, 1, 2, 3, 4, None, None]
    assert tops(st.gradual_unfreeze(every=2), task, 5) == [0, 0, 1, 1, 2]
    assert tops(st.get_strategy("lp-ft"), task, 3) == [0, None, None]
    assert tops(st.lp_ft(probe_epochs=2), task, 3) == [0, 0, None]
    st.linear_probe().apply(task, 1)
    assert not task.model.backbone.encoder.training and task.model.head.training


# --- class-balanced first stage ---------------------------------------------------------------------

def test_class_balanced_weights():
    w = st.class_balanced_weights([90, 10, 0], beta=0.999)
    assert w[2] == 0 and w[:2].mean() == pytest.approx(1.0)
    effective = [(1 - 0.999 ** n) / (1 - 0.999) for n in (90, 10)]
    assert float(w[1] / w[0]) == pytest.approx(effective[0] / effective[1], rel=1e-5)
    assert torch.allclose(st.class_balanced_weights([90, 10], beta=0.0), torch.ones(2))
    assert float(w[1] / w[0]) == pytest.approx(9.0, rel=0.05)  # close to inverse frequency for small counts


def test_balanced_lp_ft_weights_the_probe_stage_only(tiny_specs):
    task = classifier(load(tiny_specs, "glove"))
    examples = [("the cat", 0)] * 6 + [("stocks rose", 1)] * 3 + [("a goal", 2)]
    strategy = st.get_strategy("lp_ft_balanced", probe_epochs=2)
    strategy.prepare(task, examples)
    torch.testing.assert_close(strategy.weights, st.class_balanced_weights([6, 3, 1]))
    weights = []
    for epoch in (1, 2, 3):
        task.train()
        strategy.apply(task, epoch)
        weights.append(task.class_weights)
    assert weights[0] is strategy.weights and weights[1] is strategy.weights and weights[2] is None
    assert float(strategy.weights[2]) > float(strategy.weights[0])
    task.class_weights = strategy.weights
    strategy.finish(task)  # the task's own weights (none) come back
    assert task.class_weights is None
    # The weights enter the training loss, not the evaluation loss.
    batch = task.collate(examples)
    task.class_weights = torch.tensor([0.0, 0.0, 1.0])
    weighted = task(batch)["loss"]
    task.class_weights = None
    plain = task(batch)["loss"]
    task.eval()
    task.class_weights = torch.tensor([0.0, 0.0, 1.0])
    assert not torch.isclose(weighted, plain) and torch.isclose(task(batch)["loss"], plain)


def test_balanced_needs_labelled_examples(tiny_specs):
    with pytest.raises(ValueError, match="class id"):
        st.lp_ft(balanced=True).prepare(classifier(load(tiny_specs, "glove")), ["just text", "more text"])
    with pytest.raises(ConfigError, match="'lp_ft_balanced' needs a classification task.*Linear has no class"):
        st.lp_ft(balanced=True).prepare(nn.Linear(2, 2), [("x", 0)])


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="linear_probe") as err:
        st.get_strategy("linear-prob")
    assert all(name in str(err.value) for name in ("full", "gradual_unfreeze", "lp_ft", "lp_ft_balanced", "llrd"))
    strategy = st.lp_ft()
    assert st.get_strategy(strategy) is strategy
    assert st.get_strategy("LP-FT-Balanced").balanced_epochs == 1
    with pytest.raises(ValueError, match="already registered"):
        st.register_strategy("full")(st.full)


# --- a few real optimiser steps ---------------------------------------------------------------------

def step(task, optimizer, batch) -> None:
    loss = task(batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def test_lp_ft_trains_head_first_then_everything(tiny_specs):
    task = classifier(load(tiny_specs, "timm-resnet"))
    strategy = st.get_strategy("lp_ft")
    optimizer = torch.optim.AdamW(strategy.param_groups(task, lr=1e-2, head_lr=1e-2, weight_decay=0.1))
    batch = batch_for(task)
    backbone = task.model.backbone
    task.train()
    strategy.apply(task, 1)
    before = snapshot(backbone)
    head_before = snapshot(task.model.head)
    step(task, optimizer, batch)
    assert not changed(before, backbone), "the probe stage moved the backbone (weights or BatchNorm statistics)"
    assert changed(head_before, task.model.head)
    task.train()
    strategy.apply(task, 2)
    step(task, optimizer, batch)
    moved = changed(before, backbone)
    assert any(k.endswith("running_mean") for k in moved) and any("stem" in k or "conv1" in k for k in moved)


def test_gradual_unfreeze_moves_only_the_top_group(tiny_specs):
    task = classifier(load(tiny_specs, "hf"))
    strategy = st.gradual_unfreeze()
    optimizer = torch.optim.AdamW(strategy.param_groups(task, lr=1e-2, weight_decay=0.1, lr_decay=0.9))
    batch = batch_for(task)
    backbone = task.model.backbone
    before = snapshot(backbone)
    for epoch in (1, 2):
        task.train()
        strategy.apply(task, epoch)
        step(task, optimizer, batch)
        if epoch == 1:
            assert not changed(before, backbone)
    moved = changed(before, backbone)
    assert moved and all(".encoder.layer.1." in k or ".pooler." in k for k in moved)


def test_a_strategy_never_unfreezes_what_the_user_froze(tiny_specs):
    task = classifier(load(tiny_specs, "timm-resnet"))
    backbone = task.model.backbone
    backbone.set_trainable(2)  # the user's choice before training
    strategy = st.get_strategy("full")
    strategy.prepare(task, [])
    assert tops(strategy, task, 2) == [2, 2]
    gradual = st.gradual_unfreeze()
    gradual.prepare(task, [])
    assert tops(gradual, task, 4) == [0, 1, 2, 2]
    backbone.freeze()
    probe_then_full = st.lp_ft()
    probe_then_full.prepare(task, [])
    assert tops(probe_then_full, task, 2) == [0, 0]
    backbone.unfreeze()
    probe = st.linear_probe()
    probe.prepare(task, [])
    assert tops(probe, task, 1) == [0]
    probe.finish(task)  # gives the backbone back as prepare() found it
    assert backbone.trainable_top is None and all(p.requires_grad for p in backbone.parameters())


def test_strategies_through_the_trainer(assets):
    """The trainer applies a strategy each epoch: gradual unfreezing grows the trainable part, a linear probe
    keeps the backbone frozen, the others train it all by the last epoch; every strategy learns."""
    import transferkit as tk
    from conftest import SENTENCES

    topic = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b", 6: "c", 7: "c", 8: "c"}
    pairs = [(s, topic[i % 9]) for i, s in enumerate(SENTENCES)]
    for name in ("gradual_unfreeze", "lp_ft_balanced", "llrd", "linear_probe"):
        torch.manual_seed(0)
        model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(3))
        seen = []

        def record(trainer, state, model=model):
            trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
            seen.append((trainable, model.backbone.encoder.training))

        history = tk.Trainer(epochs=3, batch_size=8, lr=1e-3, head_lr=1e-2, strategy=name, progress=False,
                             callbacks={"on_step_end": [record]}).fit(
            model, pairs[:40], pairs[40:60])
        per_epoch = [seen[i * 5][0] for i in range(3)]  # 40 examples / 8 = 5 steps an epoch
        total = sum(p.numel() for p in model.backbone.parameters())
        if name == "gradual_unfreeze":
            assert per_epoch[0] == 0 < per_epoch[1] < per_epoch[2] < total
        elif name == "linear_probe":
            assert per_epoch == [0, 0, 0]
        else:
            assert per_epoch[-1] == total
        assert history[-1]["train_loss"] < history[0]["train_loss"]
        # Afterwards the backbone is as it was before fit: trainable.
        assert all(p.requires_grad for p in model.backbone.parameters())


# --- every strategy for every head ------------------------------------------------------------------

def _head_cases():
    from test_heads_conformance import CASES

    return CASES


# One backbone family per head (the first of its conformance case): strategies act on the backbone's layer
# groups and the task's hooks, so what differs between heads is which parameters are the head's and
# whether the task takes class weights.
HEAD_TYPES = list(_head_cases())
CLASS_WEIGHTED = {"classification", "pair"}  # one class per example: class-balanced weights apply


def _strategy_params():
    params = []
    for head in HEAD_TYPES:
        for name in st.list_strategies():
            params.append(pytest.param(head, name, id=f"{head}-{name}"))
    return params


@pytest.mark.parametrize("head_type, name", _strategy_params())
def test_every_strategy_trains_every_head(head_type, name, assets):
    """Each registered strategy trains each head; the loss falls. A class-balanced strategy on a task without
    class weights, and a head-only epoch of a head without parameters of its own, are refused when fit starts."""
    from test_heads_conformance import backbone

    make_head, families, _ = _head_cases()[head_type]
    strategy = st.get_strategy(name)
    method = strategy.adapter[0] if strategy.adapter is not None else None
    # A PEFT strategy runs on the first family of the head that can take its adapter.
    usable = [f for f in families if method is None or _takes(f, method)] or list(families)
    family, data = usable[0], families[usable[0]]
    data = data()[:24]
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(family, assets), make_head())
    if method is not None and not _takes(family, method):  # prompt tuning of a vision network, say
        with pytest.raises(AdapterError):
            tk.Trainer(epochs=1, strategy=name, progress=False).fit(model, data)
        assert all(p.requires_grad for p in model.backbone.parameters())
        return
    # Adapters learn at the head's rate: a gentler one than a lone head's 0.05 for the deep random networks.
    head_lr = 0.01 if method is not None and family != "word_vectors" else 0.05
    trainer = tk.Trainer(epochs=3, batch_size=8, lr=0.05 if family == "word_vectors" else 3e-3, head_lr=head_lr,
                         strategy=name, progress=False)
    if strategy.balanced_epochs and head_type not in CLASS_WEIGHTED:
        with pytest.raises(ConfigError, match=f"strategy {name!r} needs a classification task"):
            trainer.fit(model, data)
        return
    if getattr(model.head, "tie_to_embeddings", False) and strategy.schedule(1) == 0:  # no parameters of its own
        with pytest.raises(ConfigError, match=r"epoch 1 of strategy .* trains the head alone.*tie_to_embeddings=False"):
            trainer.fit(model, data)
        assert all(p.requires_grad for p in model.backbone.parameters())  # left as it was given
        return
    history = trainer.fit(model, data)
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    if method is not None:  # the model keeps its adapter, which alone learns in the backbone
        from transferkit.backbones.adapters import trainable_names

        assert model.adapter_names == ["default"]
        learning = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
        assert learning and learning == trainable_names(model.backbone)
        return
    assert all(p.requires_grad for p in model.backbone.parameters())  # given back as fit found it


def _takes(family: str, method: str) -> bool:
    """Whether a conformance family's backbone can take a PEFT method (word vectors have no biases, norms or
    linear layers; prompt tuning is for language models)."""
    if family == "word_vectors":
        return method in ("lora", "bottleneck")
    if method == "prefix_tuning":  # through the attention cache, which T5's encoder does not keep
        return family in ("hf", "gpt2")
    return method != "prompt_tuning" or family in ("hf", "gpt2", "t5")


def test_a_linear_probe_trains_an_untied_generation_head(assets):
    from test_heads_conformance import backbone, continuations

    torch.manual_seed(0)
    model = tk.TransferModel(backbone("gpt2", assets), tk.heads.Generation(max_new_tokens=4, tie_to_embeddings=False))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    history = tk.Trainer(epochs=3, batch_size=8, lr=0.05, strategy="linear_probe", progress=False).fit(
        model, continuations()[:24])
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())


def test_accumulation_under_class_balanced_weights_makes_the_update_of_the_whole_batch(assets):
    from test_heads_conformance import classes

    data = [row for i, row in enumerate(classes()) if row[1] == "animals" or i % 4 == 0][:24]  # imbalanced
    results = []
    for accumulate in (1, 4):
        torch.manual_seed(0)
        model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"),
                                 tk.heads.Classification(labels=["animals", "markets", "sport"]))
        tk.Trainer(epochs=1, batch_size=8, accumulate=accumulate, lr=0.1, optimizer="sgd", strategy="lp_ft_balanced",
                   progress=False).fit(model, data)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-4, atol=1e-6)
