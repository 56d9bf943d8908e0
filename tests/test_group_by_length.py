"""``Trainer(group_by_length=True)``: batches of similar length, still shuffled every epoch, still exact.

The order (``distributed.grouped_permutation``) is tested as a function of the lengths; the lengths
(``tasks.protocol.example_lengths``) for every text head; the Trainer for less padding, exact resume and the
errors where there is nothing to group.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import IterableDataset

import transferkit as tk
from test_heads_conformance import CASES, backbone, images
from test_heads_resume import Stop, assert_equal_weights, weights, without_seconds
from transferkit.errors import ConfigError
from transferkit.tasks import ClassificationTask
from transferkit.tasks.protocol import example_lengths
from transferkit.trainer.distributed import grouped_permutation, permutation


def padded(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> int:
    """Positions a run over ``order`` computes: each batch padded to its longest example."""
    return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=400), st.integers(1, 16), st.integers(0, 3),
       st.integers(1, 4))
def test_the_grouped_order_is_a_repeatable_permutation_with_the_longest_batch_first(lengths, batch_size, seed,
                                                                                     epoch):
    lengths = np.asarray(lengths)
    order = grouped_permutation(lengths, batch_size, seed, epoch)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert np.array_equal(order, grouped_permutation(lengths, batch_size, seed, epoch))
    full = len(lengths) // batch_size * batch_size
    if full:  # the longest example of every full batch opens the epoch; the smaller batch stays last
        assert lengths[order[:batch_size]].max() == lengths[order[:full]].max()
        last = permutation(len(lengths), seed, epoch)[(len(lengths) - 1) // (50 * batch_size) * 50 * batch_size:]
        rest = order[full:]
        others = np.setdiff1d(last, rest)
        if len(rest) and len(others):  # the smaller batch: the shortest examples of the last mega-batch
            assert lengths[rest].max() <= lengths[others].min()


def test_grouping_cuts_padding_and_still_reshuffles_every_epoch():
    lengths = np.random.default_rng(0).integers(4, 64, 2000)
    grouped = [grouped_permutation(lengths, 16, seed=0, epoch=e) for e in (1, 2)]
    assert not np.array_equal(*grouped)
    plain = padded(permutation(2000, 0, 1), lengths, 16)
    assert padded(grouped[0], lengths, 16) < 0.7 * plain  # random lengths 4-63: ~40% less
    # Batches differ between epochs too, not only their order.
    first = {frozenset(grouped[0][i:i + 16].tolist()) for i in range(0, 2000, 16)}
    second = {frozenset(grouped[1][i:i + 16].tolist()) for i in range(0, 2000, 16)}
    assert len(first & second) < 0.1 * len(first)


def text_task(head_type: str, family: str, assets):
    torch.manual_seed(0)
    model = tk.TransferModel(backbone(family, assets), CASES[head_type][0]())
    task = model.head.task(model)
    return task, task.examples(CASES[head_type][1][family]())


TEXT = [("classification", "hf"), ("token_classification", "hf"), ("token_classification", "word_vectors"),
        ("pair", "hf"), ("qa", "hf"), ("generation", "t5"), ("generation", "gpt2"), ("regression", "hf")]


@pytest.mark.parametrize("head_type, family", TEXT, ids=[f"{h}-{f}" for h, f in TEXT])
def test_every_text_head_has_lengths_the_tokens_of_its_examples(head_type, family, assets):
    task, examples = text_task(head_type, family, assets)
    lengths = example_lengths(task, examples[:12])
    assert lengths.shape == (12,) and (lengths > 0).all()
    batch = task.collate(examples[:1])
    own = int(batch["inputs"]["attention_mask"].sum()) + int(batch.get("decoder", {}).get(
        "attention_mask", torch.zeros(1)).sum())
    assert lengths[0] == own


def test_a_pair_counts_both_texts(assets):
    model = tk.TransferModel(backbone("hf", assets), tk.heads.Pair(mode="bi"))
    task = model.head.task(model)
    examples = task.examples(CASES["pair"][1]["hf"]())[:4]
    single = ClassificationTask(tk.TransferModel(backbone("hf", assets), tk.heads.Classification(labels=["x", "y"])))
    one = example_lengths(single, [(a, 0) for a, _, _ in examples])
    two = example_lengths(single, [(b, 0) for _, b, _ in examples])
    assert np.array_equal(example_lengths(task, examples), one + two)


def varied_tagging() -> list:
    """Tagged sentences of 2 to 30 words, so batches differ in length."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "ran", "to", "market", "stocks", "fell", "team", "won", "goal"]
    kinds = {"cat": "ANI", "stocks": "FIN", "market": "FIN", "team": "SPO", "goal": "SPO"}
    sentences = []
    for _ in range(48):
        s = list(rng.choice(words, int(rng.integers(2, 31))))
        sentences.append((s, [f"B-{kinds[w]}" if w in kinds else "O" for w in s]))
    return sentences


def run(assets, group: bool, out=None, stop_at=None, resume=False):
    torch.manual_seed(0)
    model = tk.TransferModel(backbone("hf", assets), tk.heads.TokenClassification())
    task = model.head.task(model)
    widths = []
    collate = task.collate

    def recording(examples):
        batch = collate(examples)
        widths.append(batch["inputs"]["input_ids"].numel())
        return batch
    task.collate = recording

    def stop(trainer, state):
        if state["step"] == stop_at:
            raise Stop
    data = varied_tagging()
    trainer = tk.Trainer(epochs=2, batch_size=8, lr=3e-3, head_lr=0.05, seed=1, group_by_length=group,
                         output_dir=out and str(out), save_every=stop_at, loggers=(), progress=False,
                         callbacks={"on_step_end": [stop]})
    history = trainer.fit(task, data[:40], data[40:], resume=resume)
    return model, history, widths


def test_grouped_training_pads_less_and_resumes_bit_for_bit(assets, tmp_path):
    model, history, grouped = run(assets, True)
    _, _, plain = run(assets, False)
    steps = history[0]["step"]
    # The training batches are the first `steps` collations of each epoch (validation follows).
    assert sum(grouped[:steps]) < 0.85 * sum(plain[:steps])
    with pytest.raises(Stop):
        run(assets, True, tmp_path / "cut", stop_at=steps + 2)
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == steps + 2
    resumed, resumed_history, _ = run(assets, True, tmp_path / "cut", resume=True)
    assert_equal_weights(weights(resumed), weights(model))
    assert without_seconds(resumed_history) == without_seconds(history)


def test_nothing_to_group_is_a_config_error(assets):
    model = tk.TransferModel(backbone("vision", assets), tk.heads.Classification(labels=["dark", "light"]))
    with pytest.raises(ConfigError, match="no attention_mask"):
        tk.Trainer(epochs=1, group_by_length=True, progress=False).fit(model, images()[:8])

    class Stream(IterableDataset):
        def __iter__(self):
            yield from CASES["classification"][1]["hf"]()

    task, _ = text_task("classification", "hf", assets)
    task.examples = lambda data: data
    with pytest.raises(ConfigError, match="streamed"):
        tk.Trainer(epochs=1, max_steps=1, group_by_length=True, progress=False).fit(task, Stream())
