"""The linear-chain CRF of the NER head (``TokenClassification(crf=True)``): log-partition, path scores,
marginals and Viterbi equal to brute force over every tag sequence (with masks, open ends and the scheme's
hard constraints), finite gradients, the loss falling and the Trainer training it, truncated sentences, the
entity metrics unchanged, and save → load identical predictions with the transitions saved."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.errors import ConfigError, InputError, LabelError
from transferkit.heads import head_from_config
from transferkit.heads.crf import CRF
from transferkit.heads.token_classification import TokenClassification
from transferkit.tasks.token_classification import EntityMetrics, word_level

from test_ner import VOCAB, tagged, valid, word_vectors


def random_crf(head: TokenClassification | None, num_tags: int = 4, seed: int = 0) -> CRF:
    """The CRF of a head's scheme (or, without a head, random constraints), with random scores."""
    g = torch.Generator().manual_seed(seed)
    if head is not None:
        crf = CRF(head.num_classes, *head.transitions())
    else:
        allowed = torch.rand(num_tags, num_tags, generator=g) > 0.3
        may_start = torch.tensor([True, False] * (num_tags // 2))
        crf = CRF(num_tags, allowed, may_start, torch.rand(num_tags, generator=g) > 0.4)
        crf.may_end[0] = True
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return crf.requires_grad_(False)  # the marginals differentiate the emissions only


@torch.no_grad()
def brute(crf: CRF, emissions: torch.Tensor, keep: list[bool], ended: bool) -> dict[tuple, float]:
    """The score of every sequence of tags over the kept positions that the constraints allow."""
    positions = [t for t, k in enumerate(keep) if k]
    out = {}
    for seq in itertools.product(range(crf.num_tags), repeat=len(positions)):
        if not seq:
            out[seq] = 0.0
            continue
        ok = bool(crf.may_start[seq[0]]) and (not ended or bool(crf.may_end[seq[-1]]))
        ok = ok and all(bool(crf.allowed[a, b]) for a, b in itertools.pairwise(seq))
        if not ok:
            continue
        s = float(crf.start_scores[seq[0]]) + sum(float(emissions[t, y]) for t, y in zip(positions, seq))
        s += sum(float(crf.transitions[a, b]) for a, b in itertools.pairwise(seq))
        out[seq] = s + (float(crf.end_scores[seq[-1]]) if ended else 0.0)
    return out


CASES = [("BIO", ["A"]), ("BIOES", ["A"]), (None, None)]  # 3, 5 and 4 tags


@pytest.mark.parametrize("scheme, types", CASES, ids=["BIO", "BIOES", "random-constraints"])
def test_partition_score_marginals_and_viterbi_equal_brute_force(scheme, types):
    head = TokenClassification(types, scheme=scheme) if scheme else None
    crf = random_crf(head)
    n = crf.num_tags
    torch.manual_seed(1)
    emissions = torch.randn(5, 4, n) * 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    ended = torch.tensor([True, True, False, False, True])
    log_z = crf.log_partition(emissions, mask, ended).detach()
    paths = crf.decode(emissions, mask, ended)
    marginals = crf.marginals(emissions, mask, ended)
    for b in range(len(emissions)):
        scores = brute(crf, emissions[b], mask[b].tolist(), bool(ended[b]))
        assert scores, "some sequence must be valid"
        assert float(log_z[b]) == pytest.approx(math.log(sum(math.exp(s) for s in scores.values())), abs=1e-4)
        best = max(scores, key=scores.get)
        assert tuple(paths[b]) == best
        gold = torch.zeros(4, dtype=torch.long)
        gold[mask[b]] = torch.tensor(best, dtype=torch.long)
        assert float(crf.score(emissions[b:b + 1], gold[None], mask[b:b + 1], ended[b:b + 1])[0]) == pytest.approx(
            scores[best], abs=1e-4)
        positions = [t for t, k in enumerate(mask[b].tolist()) if k]
        expected = torch.zeros(4, n)
        total = sum(math.exp(s) for s in scores.values())
        for seq, s in scores.items():
            for t, y in zip(positions, seq):
                expected[t, y] += math.exp(s) / total
        assert torch.allclose(marginals[b], expected, atol=1e-4)
    assert paths[-1] == [] and float(log_z[-1]) == 0.0  # a row with no kept position


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_decoding_with_learnt_transitions_is_valid(scheme):
    head = TokenClassification(["A", "B"], scheme=scheme, crf=True, in_features=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.crf_layer.parameters():
            p.copy_(torch.randn(p.shape) * 3)
    outputs = torch.randn(16, 5, head.num_classes) * 3
    for tags in head.predict(outputs):
        assert valid(tags, scheme), tags
    # the plain argmax would start with I-A; the decoder does not, even with a transition score pulling there
    outputs = torch.full((1, 2, head.num_classes), -9.0)
    outputs[0, :, head.index["I-A"]] = 9.0
    with torch.no_grad():
        head.crf_layer.start_scores[head.index["I-A"]] = 50.0
    assert valid(head.predict(outputs)[0], scheme)
    scores = head.scores(outputs)
    assert scores.shape == outputs.shape and torch.allclose(scores.sum(-1), torch.ones(1, 2))
    assert float(scores[0, 0, head.index["I-A"]]) == 0.0  # forbidden first tag: probability 0


def test_gradients_flow_and_stay_finite():
    head = TokenClassification(["A"], scheme="BIOES", crf=True, in_features=4)
    crf = head.crf_layer
    emissions = torch.randn(3, 5, head.num_classes, requires_grad=True)
    tags = torch.tensor([[0, 1, 2, 3, 0], [4, 0, 1, 3, 0], [1, 2, 2, 0, 0]])  # O B I E O / S O B E / B I I (cut)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ended = torch.tensor([True, True, False])
    assert [head.labels[i] for i in tags[0]] == ["O", "B-A", "I-A", "E-A", "O"]
    loss = crf.nll(emissions, tags, mask, ended)
    assert bool((loss > 0).all())
    loss.sum().backward()
    for grad in (emissions.grad, crf.transitions.grad, crf.start_scores.grad, crf.end_scores.grad):
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert float(crf.transitions.grad[~crf.allowed].abs().sum()) == 0.0  # forbidden transitions: no gradient
    assert float(emissions.grad[1, 4].abs().sum()) == 0.0  # a masked position
    # the third sentence is cut inside an entity: valid only because its end is open
    with pytest.raises(LabelError, match="constraints forbid"):
        crf.nll(emissions, tags, mask, torch.tensor([True, True, True]))
    # a tag no sequence can reach keeps the gradient finite (no NaN from logsumexp over -inf)
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[:, 2] = False
    lonely = CRF(3, allowed, torch.tensor([True, True, False]))
    x = torch.randn(2, 4, 3, requires_grad=True)
    lonely.nll(x, torch.zeros(2, 4, dtype=torch.long)).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(lonely.transitions.grad).all())


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="crf must be True or False"):
        TokenClassification(["A"], crf="yes")
    with pytest.raises(ConfigError, match="allow no sequence"):
        CRF(2, may_start=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(InputError, match="emissions"):
        CRF(3).log_partition(torch.zeros(2, 3))
    with pytest.raises(LabelError, match="tag ids"):
        CRF(3).nll(torch.zeros(1, 2, 3), torch.tensor([[0, 7]]))


def test_word_level_reads_first_subtokens():
    logits = torch.arange(2 * 6 * 2, dtype=torch.float).reshape(2, 6, 2)
    word_ids = torch.tensor([[-1, 0, 0, 2, 3, -1], [-1, 0, 1, 1, -1, -1]])  # word 1 of row 0 has no token
    emissions, present = word_level(logits, word_ids, [5, 2])
    assert present.tolist() == [[True, False, True, True, False], [True, True, False, False, False]]
    assert torch.equal(emissions[0, 2], logits[0, 3]) and torch.equal(emissions[1, 1], logits[1, 2])
    assert float(emissions[0, 1].abs().sum()) == 0.0
    head = TokenClassification(["A"], crf=True, in_features=2)
    _, mask, ended = head.word_emissions(torch.zeros(2, 6, 3), word_ids, [5, 2])
    assert mask.tolist() == [[True] * 4 + [False], [True, True, False, False, False]]  # the gap is kept
    assert ended.tolist() == [False, True]  # row 0 lost its last word


def test_entity_metrics_path_is_unchanged():
    from seqeval.metrics import f1_score

    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    pred = [["B-PER", "O", "O"], ["O", "B-LOC"]]
    word_ids = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, -1, -1]])
    results = []
    for crf in (False, True):
        head = TokenClassification(["PER", "LOC"], crf=crf, in_features=4)
        logits = torch.full((2, 6, head.num_classes), -5.0)
        for b, tags in enumerate(pred):
            for w, tag in enumerate(tags):
                logits[b, 2 * w, head.index[tag]] = 5.0
        word_tags = torch.tensor([[head.index[t] for t in gold[0]], [head.index[t] for t in gold[1]] + [-1]])
        metrics = EntityMetrics(head)
        metrics.update({"word_ids": word_ids, "word_tags": word_tags},
                       {"logits": logits, "loss": torch.tensor(1.0), "num_items": torch.tensor(5)})
        results.append(metrics.compute()["f1"])
        if crf:  # learnt transitions change the decoded tags; the metric is seqeval's of what is decoded
            with torch.no_grad():
                head.crf_layer.transitions[head.index["B-PER"], head.index["I-PER"]] = 20.0
            decoded = [tags for tags, _ in head.tag_words(logits, word_ids, [3, 2])]
            assert decoded[0] == ["B-PER", "I-PER", "O"]
            metrics = EntityMetrics(head)
            metrics.update({"word_ids": word_ids, "word_tags": word_tags},
                           {"logits": logits, "loss": torch.tensor(1.0), "num_items": torch.tensor(5)})
            assert metrics.compute()["f1"] == f1_score(gold, decoded) == 1.0
    assert results == [f1_score(gold, pred)] * 2 == [0.5, 0.5]


def test_crf_head_trains_predicts_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = tk.TransferModel(word_vectors(), TokenClassification(scheme="BIOES", crf=True))
    train, val = tagged(80), tagged(20, seed=1)
    history = tk.Trainer(epochs=6, lr=0.05, batch_size=8, progress=False).fit(model, train, val)
    head = model.head
    assert head.config["crf"] is True
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], history
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"], history
    assert history[-1]["val_f1"] > 0.9
    allowed = head.crf_layer.allowed
    learnt = head.crf_layer.transitions.detach()
    assert float(learnt[allowed].abs().max()) > 0.1  # the transitions were learnt
    # what BIOES data teaches: B-TIME is followed by E-TIME (the pair "final minute")
    b, e, i = head.index["B-TIME"], head.index["E-TIME"], head.index["I-TIME"]
    assert float(learnt[b, e]) > float(learnt[b, i])
    words = [["the", "cat", "sat", "on", "the", "final", "minute"], ["stocks"]]
    tags = model.predict(words)
    assert tags == [["O", "S-ANI", "O", "O", "O", "B-TIME", "E-TIME"], ["S-FIN"]]
    spans = model.predict("the dog won the final minute")
    assert [(s["entity"], s["text"]) for s in spans] == [("ANI", "dog"), ("TIME", "final minute")]
    assert all(0 < s["score"] <= 1 for s in spans)
    model.save_pretrained(tmp_path / "ner")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ner" / "model.safetensors"))
    assert torch.equal(saved["head.crf_layer.transitions"], learnt)
    loaded = tk.TransferModel.from_pretrained(tmp_path / "ner")
    assert loaded.head.config == head.config and loaded.head.crf_layer is not None
    assert torch.equal(loaded.head.crf_layer.allowed, allowed)
    assert loaded.predict(words) == tags
    assert loaded.predict("the dog won the final minute") == spans


def test_truncated_sentences_train_and_decode_validly():
    """A sentence cut inside an entity by the backbone's length limit: its gold prefix is trained with an
    open end (no LabelError, finite loss) and its predicted tags stay valid."""
    vectors = np.random.default_rng(0).normal(size=(len(VOCAB), 8)).astype(np.float32)
    backbone = from_vectors(VOCAB, vectors, source="glove", name="cut", max_tokens=4)
    torch.manual_seed(0)
    model = tk.TransferModel(backbone, TokenClassification(["TIME", "ANI"], scheme="BIOES", crf=True))
    data = [(["the", "cat", "sat", "final", "minute"], ["O", "S-ANI", "O", "B-TIME", "E-TIME"]),
            (["the", "dog"], ["O", "S-ANI"])] * 4
    task = model.task()
    batch = task.collate(task.examples(data))
    loss = task(batch)["loss"]
    assert bool(torch.isfinite(loss)) and float(loss.detach()) > 0
    loss.backward()
    assert bool(torch.isfinite(model.head.crf_layer.transitions.grad).all())
    history = tk.Trainer(epochs=3, lr=0.05, batch_size=4, progress=False).fit(model, data, data)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    for tags in model.predict([words for words, _ in data[:2]]):
        assert valid(tags, "BIOES"), tags


def test_config_without_crf_loads_as_before():
    head = TokenClassification(["PER"], crf=True)
    assert head_from_config(head.config).crf is True
    old = {k: v for k, v in head.config.items() if k != "crf"}  # a model saved before the option existed
    again = head_from_config(old)
    assert again.crf is False and again.config["crf"] is False
    plain = tk.TransferModel(word_vectors(), TokenClassification(["PER"]))
    assert not any("crf" in k for k in plain.state_dict())

