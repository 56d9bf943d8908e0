"""Data: labelled examples, text corpora and image folders, read from what users actually have.

Labelled data is (raw inputs, labels, origins). Raw inputs stay raw (strings, image paths, arrays); the
backbone's preprocessor turns each batch into tensors, so the same data works with any backbone of the
right modality. Every example carries its *origin* in the user's data (``"train.csv line 7"``,
``"row 12"``, ``"item 3"``, an image file's path), and every error about an example names it.

Where things are:

* :mod:`~transferkit.data.readers` — :func:`load_labelled` / :func:`load_inputs` over every container
  (CSV/TSV/JSONL files, image folders, DataFrames, dicts of columns, ``datasets.Dataset``, lists of pairs,
  torch datasets and loaders);
* :mod:`~transferkit.data.labels` — the label rule (below);
* :mod:`~transferkit.data.inputs` — raw inputs checked against the backbone's modality;
* :mod:`~transferkit.data.labelled` — :class:`LabelledData` and :func:`stratified_split`;
* unlabelled data for pretraining: :mod:`~transferkit.data.corpus` (token streams for word vectors),
  :mod:`~transferkit.data.text_corpus` (lines and sentence pairs for language models),
  :mod:`~transferkit.data.images` (image folders and lists).

The label rule (the same for CSV, JSONL, lists, numpy, pandas and every other container):

- A missing or empty label (``None``, NaN, ``pd.NA``, ``""``, whitespace, the missing cell of a short CSV
  row) is a :class:`~transferkit.errors.LabelError` naming the rows (first 10 and a count).
- Labels are class names. Strings are stripped of surrounding whitespace; numpy and torch scalars count
  as the Python value they hold; integral floats (``1.0``, as pandas makes of integer columns) are ints;
  other floats are refused (classification needs class names, not measurements).
- Integer labels are class names like any other: JSONL labels 5 and 7 make 2 classes ``[5, 7]``, exactly as
  the CSV strings ``"5"`` and ``"7"`` make 2 classes ``["5", "7"]``. The one exception: a head built with
  ``num_classes=N`` and no ``labels`` treats integer labels as class ids ``0..N-1``.
- Bools are class names too (``[False, True]``), never the ids 0 and 1.
- Predictions come back in the type the labels were given in: all ints give ints, all bools give bools,
  anything else (strings, or a mix of types) gives strings. The head records the type (``label_type``),
  so it survives ``save_pretrained``/``from_pretrained``. Classes are sorted: numbers by value, strings
  made only of digits by their value, other strings alphabetically.
"""

from .common import IMAGE_SUFFIXES, first, is_array
from .corpus import LineCorpus
from .images import ImageFolderCorpus, unlabelled_images
from .inputs import check_inputs, looks_like_image_path, prediction_inputs, preprocess_named
from .labelled import LabelledData, random_split, stratified_split
from .labels import class_names, clean_label, infer_label_names, label_ids, label_type
from .readers import COLUMN_HINT, as_table, find_column, load_inputs, load_labelled, load_raw
from .squad import QAExample, load_squad
from .targets import load_targets
from .text_corpus import CorpusError, SentencePairs, TextCorpus

__all__ = [
    "COLUMN_HINT", "IMAGE_SUFFIXES", "QAExample", "load_squad", "CorpusError", "ImageFolderCorpus", "LabelledData", "LineCorpus",
    "SentencePairs", "TextCorpus", "as_table", "check_inputs", "class_names", "clean_label", "find_column",
    "first", "infer_label_names", "is_array", "label_ids", "label_type", "load_inputs", "load_labelled", "load_raw", "load_targets",
    "looks_like_image_path", "prediction_inputs", "preprocess_named", "random_split", "stratified_split", "unlabelled_images",
]
