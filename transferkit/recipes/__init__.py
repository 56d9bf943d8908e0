"""Recipes: the demo and the experiments, entry points that compose library parts (after torchtune's recipes).

Library modules (backbones, heads, tasks, trainer, zoo, data...) never import this package; the CLI and
``benchmarks/`` do. Code is repeated here rather than abstracted when that keeps a recipe readable.

* :mod:`transferkit.recipes.demo`: ``transferkit demo``, pretrained vs random init vs a classical baseline.
* :mod:`transferkit.recipes.vision_gain`: rotation pretraining on unlabelled digits vs random init.
* :mod:`transferkit.recipes.datasets`: the real data sets they read, offline (20 Newsgroups, MNIST, digits).
* :mod:`transferkit.recipes.fewshot`: few-labels draws and the scikit-learn baselines they share.
"""
