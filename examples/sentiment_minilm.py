"""Movie-review sentiment: fine-tune MiniLM on 120 real labelled sentences, save, reload, predict.

    HF_HUB_OFFLINE=1 .venv/bin/python examples/sentiment_minilm.py      # after `make assets`; ~50 s

Data: gensim's copy of the Pang & Lee polarity sentences (`__label__pos text...`). Trains on 120 (30 more for early stopping), tests on 50,
saves the model and reloads it to predict new sentences.
"""

import importlib.util
import random
from pathlib import Path

import transferkit as tk

root = Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
corpus = root / "test" / "test_data" / "pang_lee_polarity.cor"
lines = corpus.read_text(encoding="latin-1").splitlines()  # the file is Latin-1, not UTF-8
pairs = [(text, label.removeprefix("__label__")) for label, _, text in (line.partition(" ") for line in lines)]
random.Random(0).shuffle(pairs)
train, val, test = pairs[:120], pairs[120:150], pairs[150:]

tk.seed_everything(0)
backbone = tk.load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=64)
model = tk.TransferModel(backbone, tk.heads.Classification(labels=["neg", "pos"]))
# Early stopping on the validation loss; the best epoch's weights are restored.
trainer = tk.Trainer(epochs=6, lr=5e-5, head_lr=1e-3, batch_size=16, metric="loss", patience=2, progress=False)
trainer.fit(model, train, val)
print("held-out:", {k: round(v, 3) for k, v in trainer.evaluate(model, test).items()})

model.save_pretrained("runs/sentiment-minilm")
reloaded = tk.TransferModel.from_pretrained("runs/sentiment-minilm")
print(reloaded.predict(["a warm , funny and moving film", "tedious , flat and far too long"]))
