"""``transferkit demo``: transfer learning helping in all three families, on real weights and real data.

For each family the same few labelled examples per class (several seeds) train three models, scored on the
same held-out test set:

* **pretrained**: the real pretrained backbone + a classification head, through the public API;
* **random init**: the same architecture with random weights, trained identically;
* **classical**: scikit-learn logistic regression on TF-IDF (text) or raw pixels (images).

A fourth family, **self-supervised**, needs no assets: a small network pretrained from random weights by
predicting rotations of 1,300 unlabelled scikit-learn digits, against the same network from random
weights, both fine-tuned on 10 labels per class (:func:`transferkit.recipes.vision_gain.rotation_gain`).

Weights and data ship inside registry packages (``make assets``); nothing is downloaded at run time. The
recipe itself is :mod:`transferkit.recipes.demo`.
"""

from __future__ import annotations

import argparse

FAMILY_HELP = ("comma-separated subset of: vectors (GloVe), lm (MiniLM), vision (EfficientNet-Lite0 on MNIST), "
               "selfsup (rotation pretraining on unlabelled digits; needs no assets)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="show transfer helping on real weights and data (offline, a few minutes)",
        description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one seed and smaller test sets (about a minute)")
    p.add_argument("--families", default="vectors,lm,vision,selfsup", help=FAMILY_HELP)
    p.add_argument("--seeds", type=int, help="number of seeds (default 3, or 1 with --quick)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferkit.recipes import demo

    settings = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    if args.seeds:
        settings.seeds = args.seeds
    return demo.run(settings, [f.strip() for f in args.families.split(",") if f.strip()])
