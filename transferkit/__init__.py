"""transferkit: transfer learning across word vectors, transformer language models and vision networks.

One Backbone/Head API and one Trainer::

    import transferkit as tk
    backbone = tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
    model = tk.TransferModel(backbone, tk.heads.Classification(labels=["neg", "pos"]))
    tk.Trainer(epochs=3).fit(model, train_pairs, val_pairs)
    model.predict(["a fine film"])

Heavy libraries (transformers, timm, torchvision, gensim) are imported only when a backbone of theirs
is asked for.
"""

__version__ = "0.1.0"

from transferkit import heads, tasks
from transferkit.backbones import Backbone, Features, list_backbones, load_backbone, register_backbone
from transferkit.data import LabelledData, load_labelled
from transferkit.errors import TransferkitError
from transferkit.model import TransferModel
from transferkit.trainer import Trainer, seed_everything

__all__ = [
    "Backbone",
    "Features",
    "LabelledData",
    "Trainer",
    "TransferModel",
    "TransferkitError",
    "heads",
    "list_backbones",
    "load_backbone",
    "load_labelled",
    "register_backbone",
    "seed_everything",
    "tasks",
]
