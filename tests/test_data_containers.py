"""The containers users have are read as their rows, labels follow one rule, and errors name the rows.

Table-driven: each case is a container and either what ``load_labelled`` must read from it or the named
error (class and message) it must raise. Training and prediction cases use a tiny word-vector backbone
and timm's ``test_resnet`` with random weights.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import transferkit as tk
from transferkit.backbones.word_vectors import from_vectors
from transferkit.data import class_names, load_labelled
from transferkit.errors import DataError, InputError, LabelError, ModalityError

TEXTS = ["a fine warm film", "a dull flat film", "fine and warm", "flat and dull"]
LABELS = ["pos", "neg", "pos", "neg"]
VOCAB = sorted({w for t in TEXTS for w in t.split()} | {"great", "bad", "movie"})


def text_model(head=None, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = from_vectors(VOCAB, rng.random((len(VOCAB), 8)), source="glove", name="tiny")
    return tk.TransferModel(backbone, head or tk.heads.Classification(2))


@pytest.fixture(scope="module")
def image_backbone():
    return tk.load_backbone("timm:test_resnet", weights=None, image_size=32)


def fit(model, data, **task):
    trainer = tk.Trainer(epochs=1, progress=False)
    if task:
        from transferkit.tasks import ClassificationTask
        return trainer.fit(ClassificationTask(model, **task), data)
    return trainer.fit(model, data)


class Pairs(Dataset):
    def __len__(self):
        return len(TEXTS)

    def __getitem__(self, i):
        return TEXTS[i], LABELS[i]


def _hf_dataset():
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})


# --- containers read as their rows ------------------------------------------------------------------

CONTAINERS = {
    "DataFrame": (lambda: pd.DataFrame({"text": TEXTS, "label": LABELS}), "row 0"),
    "DataFrame, named columns": (lambda: (pd.DataFrame({"review": TEXTS, "y": LABELS}),
                                          dict(input_column="review", label_column="y")), "row 0"),
    "DataFrame, text_column=": (lambda: (pd.DataFrame({"review": TEXTS, "y": LABELS}),
                                         dict(text_column="review", label_column="y")), "row 0"),
    "DataFrame, index labels": (lambda: pd.DataFrame({"text": TEXTS, "label": LABELS}, index=[10, 11, 12, 13]),
                                "row 10"),
    "dict of columns": (lambda: {"text": TEXTS, "label": LABELS}, "item 0"),
    "(Series, Series)": (lambda: (pd.Series(TEXTS), pd.Series(LABELS)), "item 0"),
    "(array, array)": (lambda: (np.array(TEXTS), np.array(LABELS)), "item 0"),
    "(list, list)": (lambda: (TEXTS, LABELS), "item 0"),
    "N×2 array of pairs": (lambda: np.array(list(zip(TEXTS, LABELS))), "item 0"),
    "list of pairs": (lambda: list(zip(TEXTS, LABELS)), "item 0"),
    "generator of pairs": (lambda: ((t, y) for t, y in zip(TEXTS, LABELS)), "item 0"),
    "list of dicts": (lambda: [{"text": t, "label": y} for t, y in zip(TEXTS, LABELS)], "item 0"),
    "torch Dataset": (lambda: Pairs(), "item 0"),
    "DataLoader(batch_size=4)": (lambda: DataLoader(Pairs(), batch_size=4, shuffle=True), "item 0"),
    "datasets.Dataset": (_hf_dataset, "row 0"),
    "LabelledData": (lambda: tk.LabelledData(TEXTS, LABELS), "item 0"),
}


@pytest.mark.parametrize("name", CONTAINERS)
def test_containers_read_their_rows(name):
    make, origin = CONTAINERS[name]
    source = make()
    options = {}
    if isinstance(source, tuple) and isinstance(source[-1], dict):
        source, options = source
    data = load_labelled(source, **options)
    assert data.inputs == TEXTS and data.labels == LABELS and data.origins[0] == origin
    assert all(type(x) is str for x in data.inputs + data.labels)


@pytest.mark.parametrize("name", ["DataFrame", "dict of columns", "(Series, Series)", "datasets.Dataset",
                                  "DataLoader(batch_size=4)"])
def test_training_on_a_container_uses_its_rows_not_its_column_names(name):
    model = text_model()
    fit(model, CONTAINERS[name][0]())
    assert model.head.labels == ["neg", "pos"]


def test_arrays_of_images_and_numpy_labels(image_backbone):
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), np.uint8)
    labels = np.array([3, 8, 3, 8, 3, 8], dtype=np.int64)
    data = load_labelled((images, labels))
    assert len(data) == 6 and data.inputs[0].shape == (12, 12, 3)
    assert data.labels == [3, 8, 3, 8, 3, 8] and all(type(y) is int for y in data.labels)
    tensors = load_labelled(TensorDataset(torch.rand(4, 3, 9, 9), torch.tensor([0, 1, 0, 1])))
    assert tensors.inputs[0].shape == (3, 9, 9) and tensors.labels == [0, 1, 0, 1]
    model = tk.TransferModel(image_backbone, tk.heads.Classification(labels=class_names(labels)[0]))
    tk.Trainer(epochs=1, batch_size=3, progress=False).fit(model, (images, labels))
    assert model.head.labels == [3, 8] and model.predict(images[0]) in (3, 8)


def test_image_dataframe_with_an_input_column(image_backbone, tmp_path):
    paths = []
    for i in range(4):
        Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    df = pd.DataFrame({"image": paths, "label": ["a", "b", "a", "b"]})
    model = tk.TransferModel(image_backbone, tk.heads.Classification(2))
    fit(model, df, input_column="image")
    assert model.head.input_column == "image"
    assert len(model.predict(df)) == 4  # reads the column it was trained on


REFUSED = [
    ({"a": [1, 2], "b": [3, 4]}, DataError, r"the dict has no column 'text'; its columns are \['a', 'b'\]"),
    ({"text": "hello", "label": "pos"}, DataError, r"read as columns.*list of dicts"),
    ({"text": ["a", "b"], "label": ["x"]}, DataError, r"equal length"),
    (("a great film", "pos"), DataError, r"looks like one \(input, label\) pair"),
    ((("a", 1), ("b", 2)), DataError, r"ambiguous.*list of pairs"),
    (["a great film", "a bad film"], DataError, r"item 0 is a str 'a great film', not an \(input, label\) pair"),
    ([("a", "b", "c")], DataError, r"item 0 is a tuple.*not an \(input, label\) pair"),
    (np.zeros((4, 8)), DataError, r"single array of shape \(4, 8\) has no labels"),
    (42, DataError, r"labelled data must be .*got int"),
    (pd.DataFrame({"text": ["a"], "y": [1]}), DataError, r"the DataFrame has no column 'label'; its columns are"),
    ([{"text": "a"}], DataError, r"item 0 has no column 'label'"),
    ([], DataError, "is empty"),
]


@pytest.mark.parametrize("source, error, message", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_ambiguous_containers_are_refused(source, error, message):
    with pytest.raises(error, match=message):
        load_labelled(source)


def test_a_dataset_dict_asks_for_a_split():
    datasets = pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"several splits \['train'\].*ds\['train'\]"):
        load_labelled(datasets.DatasetDict({"train": _hf_dataset()}))


# --- the label rule ---------------------------------------------------------------------------------

def _csv(tmp_path, text, name="d.csv"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


MISSING = [
    ("empty CSV cell", lambda p: _csv(p, "text,label\nhello,pos\nbye,\nfine,neg\n"), r"1 example.*d\.csv line 3"),
    ("short CSV row", lambda p: _csv(p, "text,label\nhello,pos\nbye\n"), r"d\.csv line 3"),
    ("whitespace label", lambda p: _csv(p, "text,label\nhello,pos\nbye,  \n"), r"d\.csv line 3"),
    ("JSONL without the key", lambda p: _csv(p, '{"text": "a", "label": 1}\n\n{"text": "b"}\n', "d.jsonl"),
     r"d\.jsonl line 3"),
    ("None and ''", lambda p: [("a", "x"), ("b", None), ("c", "")], r"2 example.*item 1, item 2"),
    ("NaN and pd.NA", lambda p: pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, np.nan, pd.NA]},
                                             index=[5, 6, 7]), r"row 6, row 7"),
    ("many", lambda p: [("a", None)] * 12, r"12 example.*item 9 and 2 more"),
]


@pytest.mark.parametrize("case", MISSING, ids=[c[0] for c in MISSING])
def test_missing_labels_name_the_rows(tmp_path, case):
    _, make, message = case
    with pytest.raises(LabelError, match=message):
        load_labelled(make(tmp_path))


def test_labels_that_are_not_class_names():
    with pytest.raises(LabelError, match=r"not class names: item 1 \(0\.5\)"):
        load_labelled([("a", 1.0), ("b", 0.5)])
    with pytest.raises(LabelError, match=r"item 0 \(\['x'\]\)"):
        load_labelled([("a", ["x"])])


@pytest.mark.parametrize("labels, names, kind", [
    ([5, 7, 5], [5, 7], "int"),
    (["5", "7", "5"], ["5", "7"], "str"),
    (np.array([7, 5], dtype=np.int32), [5, 7], "int"),
    ([np.int64(5), 7.0], [5, 7], "int"),
    (["10", "2"], ["2", "10"], "str"),
    (["b", "a", np.str_("c")], ["a", "b", "c"], "str"),
    ([True, False, True], [False, True], "bool"),
    ([1, "x"], ["1", "x"], "str"),
])
def test_class_names(labels, names, kind):
    got_names, got_kind = class_names(labels)
    assert got_names == names and got_kind == kind
    assert [type(n) for n in got_names] == [type(n) for n in names]


def test_jsonl_ints_and_csv_strings_give_the_same_two_classes(tmp_path):
    rows = [("fine warm", 5), ("dull flat", 7), ("warm fine", 5), ("flat dull", 7)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    _csv(tmp_path, "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    from_jsonl = class_names(load_labelled(str(tmp_path / "d.jsonl")).labels)
    from_csv = class_names(load_labelled(str(tmp_path / "d.csv")).labels)
    assert from_jsonl == ([5, 7], "int") and from_csv == (["5", "7"], "str")
    model = text_model(tk.heads.Classification(labels=from_jsonl[0]))
    assert model.head.num_classes == 2  # no phantom classes 0..4 and 6
    fit(model, str(tmp_path / "d.jsonl"))
    assert set(model.predict(["fine", "dull"])) <= {5, 7} and type(model.predict("fine")) is int
    fit(model, str(tmp_path / "d.csv"))  # the same classes, given as strings
    strings = text_model(tk.heads.Classification(labels=from_csv[0]))
    fit(strings, str(tmp_path / "d.csv"))
    assert type(strings.predict("fine")) is str


@pytest.mark.parametrize("labels, head, types", [
    ([0, 1, 0, 1], tk.heads.Classification(2), int),  # class ids of a num_classes head
    (np.array([0, 1, 0, 1]), tk.heads.Classification(2), int),  # numpy ints: exactly like Python ints
    (["pos", "neg", "pos", "neg"], tk.heads.Classification(2), str),
    (np.array(["pos", "neg", "pos", "neg"]), tk.heads.Classification(2), str),
    ([True, False, True, False], tk.heads.Classification(2), bool),
    ([5, 7, 5, 7], tk.heads.Classification(labels=[5, 7]), int),
])
def test_predictions_come_back_in_the_type_of_the_labels(tmp_path, labels, head, types):
    model = text_model(head)
    fit(model, (TEXTS, labels))
    predictions = model.predict(TEXTS)
    assert len(predictions) == 4 and all(type(p) is types for p in predictions)
    model.save_pretrained(tmp_path / "m")
    loaded = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert loaded.predict(TEXTS) == predictions and all(type(p) is types for p in loaded.predict(TEXTS))


def test_old_head_configs_load_as_before():
    old = {"type": "classification", "num_classes": 2, "labels": ["a", "b"], "hidden": None, "dropout": 0.0,
           "in_features": 8}
    head = tk.heads.head_from_config(old)
    assert head.labels == ["a", "b"] and head.label_type == "str" and head.input_column is None


def test_integer_labels_of_a_num_classes_head_are_ids():
    model = text_model(tk.heads.Classification(3))
    with pytest.raises(LabelError, match=r"labels \[5\] are out of range.*num_classes=3 \(at item 1\)"):
        fit(model, [("fine", 0), ("dull", 5)])
    with pytest.raises(LabelError, match=r"\['meh'\] are not among the head's classes \['neg', 'pos'\] \(at item 1\)"):
        fit(text_model(tk.heads.Classification(labels=["neg", "pos"])), [("fine", "pos"), ("dull", "meh")])


# --- prediction inputs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    model = text_model()
    fit(model, pd.DataFrame({"review": TEXTS, "label": LABELS}), input_column="review")
    return model


@pytest.mark.parametrize("make, expected_len", [
    (lambda: pd.DataFrame({"review": TEXTS * 12 + TEXTS[:2], "other": range(50)}), 50),
    (lambda: pd.DataFrame({"text": TEXTS, "other": range(4)}), 4),
    (lambda: pd.Series(TEXTS * 3), 12),
    (lambda: np.array(TEXTS), 4),
    (lambda: (t for t in TEXTS), 4),
    (lambda: tuple(TEXTS), 4),
    (lambda: iter(TEXTS[:3]), 3),
    (lambda: {"review": TEXTS}, 4),
    (lambda: [], 0),
])
def test_predict_collections_give_one_prediction_each(trained, make, expected_len):
    predictions = trained.predict(make())
    assert isinstance(predictions, list) and len(predictions) == expected_len
    assert set(predictions) <= {"neg", "pos"}


def test_predict_a_single_string_gives_one_prediction(trained):
    assert trained.predict("a fine film") in ("neg", "pos")
    assert trained.predict_proba("a fine film").shape == (2,)
    assert trained.predict(np.str_("a fine film")) in ("neg", "pos")


def test_predict_a_dataframe_without_the_column(trained):
    with pytest.raises(InputError, match=r"no column 'review'.*\['sentence', 'n'\].*df\['review'\]"):
        trained.predict(pd.DataFrame({"sentence": TEXTS, "n": range(4)}))


def test_predict_single_images(image_backbone, tmp_path):
    model = tk.TransferModel(image_backbone, tk.heads.Classification(labels=["a", "b"]))
    rgb = np.random.default_rng(0).integers(0, 256, (12, 12, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    for single in (Image.fromarray(rgb), rgb, rgb[..., 0], torch.from_numpy(rgb).permute(2, 0, 1),
                   str(tmp_path / "x.png"), tmp_path / "x.png"):
        assert model.predict(single) in ("a", "b")
    assert len(model.predict(np.stack([rgb] * 5))) == 5
    assert len(model.predict([rgb, str(tmp_path / "x.png")])) == 2


# --- modality ---------------------------------------------------------------------------------------

@pytest.fixture
def image_files(tmp_path):
    paths = []
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / label / f"{i}.png")
            paths.append(str(tmp_path / label / f"{i}.png"))
    return tmp_path, paths


def test_a_text_backbone_refuses_image_files(image_files):
    root, paths = image_files
    model = text_model()
    with pytest.raises(ModalityError, match=r"this is a text backbone; these look like image files: .*cat/0\.png"):
        fit(model, str(root))
    with pytest.raises(ModalityError, match="text backbone; these look like image files"):
        model.predict(paths)
    with pytest.raises(ModalityError, match="text backbone; these look like image files"):
        model.predict(["photos/cat.jpg", "photos/dog.jpg"])  # not on disk, but paths all the same
    with pytest.raises(ModalityError, match=r"text backbone; these look like images: item 0 \(ndarray\)"):
        model.predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ModalityError, match=r"text backbone; these look like images: item 1 \(Image\)"):
        fit(model, [("fine", "a"), (Image.new("RGB", (8, 8)), "b")])
    assert len(model.predict(["look at cat.png now", "fine film"])) == 2  # texts that mention a file


def test_an_image_backbone_refuses_text(image_backbone):
    model = tk.TransferModel(image_backbone, tk.heads.Classification(2))
    refused = r"this is an image backbone.*look like text: item 0 \('a fine warm film'\)"
    with pytest.raises(ModalityError, match=refused):
        fit(model, list(zip(TEXTS, LABELS)))
    with pytest.raises(ModalityError, match="image backbone"):
        model.predict("a great film")


# --- files, BOM, and errors that name the row -------------------------------------------------------

def test_csv_with_a_utf8_bom(tmp_path):
    (tmp_path / "excel.csv").write_bytes("text,label\nfine,pos\ndull,neg\n".encode("utf-8-sig"))
    data = load_labelled(str(tmp_path / "excel.csv"))
    assert data.inputs == ["fine", "dull"] and data.labels == ["pos", "neg"]
    df = pd.DataFrame({"\ufefftext": ["fine", "dull"], "label": ["pos", "neg"]})  # read without utf-8-sig
    assert load_labelled(df).inputs == ["fine", "dull"]


def test_csv_rows_with_extra_fields_are_refused(tmp_path):
    path = _csv(tmp_path, "text,label\nfine,pos\nfine, warm and good,pos\n")
    with pytest.raises(DataError, match=r"line 3 have more fields than the header.*quote"):
        load_labelled(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: _csv(p, "text,label\nfine,pos\ndull,neg\n,pos\n"), r"1 input\(s\) are not: .*d\.csv line 4 \(empty\)"),
    (lambda p: _csv(p, "text,label\nfine,pos\ndull,neg\n  ,pos\n"), r"d\.csv line 4 \(empty\)"),
    (lambda p: _csv(p, '{"text": "fine", "label": 1}\n{"text": "dull", "label": 2}\n{"label": 1}\n', "d.jsonl"),
     r"d\.jsonl line 3 \(missing\)"),
    (lambda p: pd.DataFrame({"text": ["fine", "dull", ""], "label": ["pos", "neg", "pos"]}, index=[10, 11, 12]),
     r"row 12 \(empty\)"),
    (lambda p: pd.DataFrame({"text": ["fine", None, "dull"], "label": ["pos", "neg", "pos"]}),
     r"row 1 \(missing\)"),
    (lambda p: [("fine", "pos"), ("dull", "neg"), (3, "pos")], r"item 2 \(a int 3\)"),
])
def test_bad_texts_fail_before_training_naming_the_row(tmp_path, make, message):
    started = []
    trainer = tk.Trainer(epochs=1, progress=False, callbacks={"on_train_start": [lambda t, s: started.append(1)]})
    with pytest.raises(InputError, match=message):
        trainer.fit(text_model(), make(tmp_path))
    assert not started


def test_a_bad_image_in_a_shuffled_batch_names_its_item(image_backbone):
    good = np.zeros((8, 8, 3), np.uint8)
    data = [(good, "a"), (good, "b")] * 3 + [(np.zeros((8, 8, 4), np.uint8), "a")]
    model = tk.TransferModel(image_backbone, tk.heads.Classification(2))
    with pytest.raises(InputError, match=r"item 6: this image is an array of shape \(8, 8, 4\)"):
        tk.Trainer(epochs=1, batch_size=4, progress=False).fit(model, data)
    with pytest.raises(InputError, match=r"item 40: this image is an array of shape \(8, 8, 4\)"):
        model.predict([good] * 40 + [np.zeros((8, 8, 4), np.uint8)])
