"""Few-labels helpers the recipes share: draw ``shots`` examples per class, take them, score a baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def few_shot(labels: Sequence, shots: int, seed: int, *, sort: bool = True) -> list[int]:
    """``shots`` random indices of each class (all of a class that has fewer), drawn class by class in
    sorted class order with ``numpy.random.default_rng(seed)``.

    Args:
        labels: one label per example.
        shots: examples per class.
        seed: the draw's seed; the same seed gives the same indices.
        sort: return the indices in increasing order (the demo's and the text benchmark's order);
            ``False`` keeps them as drawn, class after class (the digits experiments' order). Both orders
            hold the same indices; the order changes the training batches, so each recipe keeps its own
            to reproduce its documented figures.
    """
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        out += rng.choice(idx, size=min(shots, len(idx)), replace=False).tolist()
    return sorted(out) if sort else out


def subset(data: tuple[Sequence, Sequence], idx: Sequence[int]) -> tuple[list, list]:
    """The (inputs, labels) pair ``data`` restricted to the indices ``idx``, in that order."""
    return [data[0][i] for i in idx], [data[1][i] for i in idx]


def logistic_regression(features_train, y_train, features_test, y_test, C: float = 1.0) -> float:
    """Held-out accuracy of scikit-learn's logistic regression (the classical baseline)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=C).fit(features_train, y_train)
    return float((clf.predict(features_test) == np.asarray(y_test)).mean())


def tfidf_logistic_regression(train: tuple[list, list], test: tuple[list, list]) -> float:
    """Held-out accuracy of TF-IDF (sublinear term frequency) + logistic regression with ``C=10``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True)
    # C=10: sparse TF-IDF features need weaker regularisation than scikit-learn's default.
    return logistic_regression(vec.fit_transform(train[0]), train[1], vec.transform(test[0]), test[1], C=10.0)
