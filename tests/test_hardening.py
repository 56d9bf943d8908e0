"""Every bad or unusual input of the hardening review (issue 9), one row each, through the CLI and the API.

Each case builds its input in ``tmp_path`` and says what must happen: a named ``TransferkitError`` subclass
with a message fragment (API), exit code 1 with one clean ``transferkit: error:`` line (CLI), or a correct
result. The deeper tests of each area live beside it (test_saving, test_data_containers, test_images,
test_loading_errors, test_trainer_selection); this table is the user's view over all of them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit import errors
from transferkit.cli import main

from conftest import SENTENCES

TOPICS = ["animals"] * 3 + ["markets"] * 3 + ["sport"] * 3
VISION = ["--backbone", "timm:test_resnet", "--option", "weights=none", "--option", "image_size=32"]


# --- inputs a user would have -------------------------------------------------------------------------

def write_csv(path: Path, rows, header=("text", "label"), bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f).writerows([header] + list(rows))
    return path


def topic_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", [(s, TOPICS[i % 9]) for i, s in enumerate(SENTENCES)])


def image_folder(tmp_path: Path, n: int = 4) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def tiny_text_model(assets) -> tk.TransferModel:
    return tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(2))


def saved_model(tmp_path: Path, assets, name: str = "model") -> Path:
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"),
                             tk.heads.Classification(labels=["a", "b"]))
    return model.save_pretrained(tmp_path / name)


def finetune(*args: str) -> list[str]:
    return ["finetune", "--epochs", "1", "--no-progress", *args]


# --- the table ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """``run(tmp_path, assets)`` returns an argv for the CLI or does the API call itself."""

    id: str
    run: Callable
    error: type | None = None  # API: the error class; CLI: exit code 1 and one error line
    message: str = ""  # fragment of the error message (a regular expression for the API)
    check: Callable | None = None  # the correct result: check(tmp_path, result_or_captured_output)

    @property
    def cli(self) -> bool:
        return self.id.startswith("cli-")


def _keep_user_dir(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("my thesis")
    return tmp_path / "thesis"


def _thesis_intact(tmp_path, _):
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "my thesis"
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == ["chapter1.tex"]
    assert not (tmp_path / "thesis.run").exists()  # refused before training


def _plain_file(tmp_path):
    (tmp_path / "out").write_text("data")
    return tmp_path / "out"


def _file_intact(tmp_path, _):
    assert (tmp_path / "out").read_text() == "data"


def _cwd(tmp_path):
    os.chdir(tmp_path)
    return "."


def _jsonl_ints(tmp_path):
    rows = [{"text": s, "label": 5 if i % 2 else 7} for i, s in enumerate(SENTENCES[:20])]
    path = tmp_path / "ints.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _two_int_classes(tmp_path, _):
    head = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert head["num_classes"] == 2 and [str(x) for x in head["labels"]] == ["5", "7"]
    model = tk.TransferModel.from_pretrained(tmp_path / "m")
    assert set(model.predict(["the cat sat", "stocks fell"])) <= {5, 7}  # ints back, as given


def _empty_label_csv(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("text,label\nthe cat sat,animals\nthe dog ran,\nstocks fell\nthe goal,sport\n")
    return path


def _bom_csv(tmp_path):
    return write_csv(tmp_path / "excel.csv", [(s, TOPICS[i % 9]) for i, s in enumerate(SENTENCES)], bom=True)


def _saved(tmp_path, _):
    assert (tmp_path / "m" / "model.safetensors").is_file()


def _junk_weights(tmp_path, assets):
    path = saved_model(tmp_path, assets)
    (path / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return path


def _truncated_weights(tmp_path, assets):
    path = saved_model(tmp_path, assets)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    return path


def _drop_tokenizer_files(directory: Path) -> None:
    for file in directory.iterdir():
        if file.name.startswith(("tokenizer", "vocab", "special_tokens")):
            file.unlink()


def _bert_without_tokenizer(tmp_path, assets):
    model = tk.TransferModel(tk.load_backbone(f"hf:{assets['bert']}"), tk.heads.Classification(labels=["a", "b"]))
    path = model.save_pretrained(tmp_path / "bert-model")
    _drop_tokenizer_files(path / "backbone")
    return path


def _hf_dir_without_tokenizer(tmp_path, assets):
    path = tmp_path / "hf-model"
    shutil.copytree(assets["bert"], path)
    _drop_tokenizer_files(path)
    return path


def _pickled_hf_dir(tmp_path, assets):
    path = tmp_path / "pickled"
    shutil.copytree(assets["bert"], path)
    (path / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2), "payload": Path("not-a-tensor")}, path / "pytorch_model.bin")
    return path


def _glove_file(tmp_path, assets):
    return assets["glove"]


def _sixteen_bit_png(tmp_path):
    arr = np.full((16, 16), 32768, dtype=np.uint16)  # mid-grey at 16 bits
    Image.fromarray(arr).save(tmp_path / "grey16.png")
    return tmp_path / "grey16.png"


def _mid_grey(tmp_path, x):
    assert x.shape == (3, 16, 16)
    assert x.mean().item() == pytest.approx(0.5, abs=0.01)  # not saturated at 1.0


def _bomb(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels is then over twice the limit
    return tmp_path / "bomb.png"


def _bad_image_folder(tmp_path):
    root = image_folder(tmp_path)
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _lists_zoo_and_offline_names(tmp_path, out):
    assert "zoo:" in out and "timm:tf_efficientnet_lite0" in out


def _readable_lr(tmp_path, out):
    assert "lr=3e-05" in out and "lr=0.0000" not in out


CASES = [
    # data loss: nothing the library did not write is removed or overwritten
    Case("cli-output-dir-with-user-files", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(topic_csv(t)), "--output", str(_keep_user_dir(t))),
        errors.OutputExistsError, "--overwrite", _thesis_intact),
    Case("api-save-into-dir-with-user-files", lambda t, a: tiny_text_model(a).save_pretrained(_keep_user_dir(t)),
         errors.OutputExistsError, "not a transferkit model", _thesis_intact),
    Case("cli-output-is-a-file", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(topic_csv(t)), "--output", str(_plain_file(t))),
        errors.OutputExistsError, "is a file", _file_intact),
    Case("api-save-onto-a-file", lambda t, a: tiny_text_model(a).save_pretrained(_plain_file(t), overwrite=True),
         errors.OutputExistsError, "is a file", _file_intact),
    Case("cli-output-dot", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(topic_csv(t)), "--output", _cwd(t)),
        errors.OutputError, "current directory"),
    Case("api-save-to-dot", lambda t, a: tiny_text_model(a).save_pretrained(_cwd(t)),
         errors.OutputError, "current directory"),
    # silently wrong results
    Case("cli-jsonl-integer-labels-are-two-classes", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(_jsonl_ints(t)), "--output", str(t / "m")),
        check=_two_int_classes),
    Case("cli-empty-label-and-short-row", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(_empty_label_csv(t)), "--output", str(t / "m")),
        errors.LabelError, "line 3"),
    Case("api-empty-label-and-short-row", lambda t, a: tk.load_labelled(_empty_label_csv(t)),
         errors.LabelError, r"lines? 3.*4|holes\.csv"),
    Case("cli-text-backbone-on-image-folder", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(image_folder(t)), "--output", str(t / "m")),
        errors.ModalityError, "text backbone"),
    Case("api-text-backbone-on-image-paths", lambda t, a: tk.Trainer(epochs=1, progress=False).fit(
        tiny_text_model(a), tk.load_labelled(image_folder(t))), errors.ModalityError, "image"),
    Case("api-image-backbone-on-text", lambda t, a: tk.Trainer(epochs=1, progress=False).fit(
        tk.TransferModel(tk.load_backbone("timm:test_resnet", weights=None, image_size=32), tk.heads.Classification(3)),
        list(zip(SENTENCES, [0, 1, 2] * 30))), errors.ModalityError, "text"),
    Case("cli-tokenizer-files-deleted", lambda t, a: ["predict", "--model", str(_bert_without_tokenizer(t, a)), "x"],
         errors.TokenizerError, "tokenizer"),
    Case("api-tokenizer-files-deleted", lambda t, a: tk.TransferModel.from_pretrained(_bert_without_tokenizer(t, a)),
         errors.TokenizerError, "tokenizer"),
    Case("api-hf-dir-without-tokenizer", lambda t, a: tk.load_backbone(f"hf:{_hf_dir_without_tokenizer(t, a)}"),
         errors.TokenizerError, "tokenizer"),
    Case("api-16-bit-png", lambda t, a: __import__("transferkit.backbones.images", fromlist=["to_tensor"]).to_tensor(
        str(_sixteen_bit_png(t))), check=_mid_grey),
    # raw tracebacks become named errors
    Case("cli-junk-model-safetensors", lambda t, a: ["predict", "--model", str(_junk_weights(t, a)), "x"],
         errors.TransferkitError, "model.safetensors"),
    Case("api-truncated-model-safetensors", lambda t, a: tk.TransferModel.from_pretrained(_truncated_weights(t, a)),
         errors.TransferkitError, "model.safetensors"),
    Case("cli-option-typo", lambda t, a: finetune(
        "--backbone", "timm:test_resnet", "--option", "weights=none", "--option", "imagesize=32",
        "--data", str(image_folder(t)), "--output", str(t / "m")), errors.OptionError, "image_size"),
    Case("api-option-typo", lambda t, a: tk.load_backbone("timm:test_resnet", weights=None, imagesize=32),
         errors.OptionError, "image_size"),
    Case("cli-strategy-typo", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(topic_csv(t)), "--output", str(t / "m"),
        "--strategy", "lpft"), errors.ConfigError, "lp_ft"),
    Case("api-strategy-typo", lambda t, a: tk.Trainer(strategy="lpft", progress=False).fit(
        tiny_text_model(a), list(zip(SENTENCES, [0, 1] * 45))), errors.ConfigError, "lp_ft"),
    Case("api-word2vec-source-on-glove-file", lambda t, a: tk.load_backbone(f"word2vec:{_glove_file(t, a)}"),
         errors.FileFormatError, "glove:"),
    Case("api-glove-source-on-word2vec-file", lambda t, a: tk.load_backbone(f"glove:{a['word2vec_txt']}"),
         errors.FileFormatError, "word2vec:"),
    Case("api-glove-source-on-word2vec-binary", lambda t, a: tk.load_backbone(f"glove:{a['word2vec_bin']}"),
         errors.FileFormatError, "word2vec:"),
    Case("api-fasttext-source-on-word2vec-binary", lambda t, a: tk.load_backbone(f"fasttext:{a['word2vec_bin']}"),
         errors.FileFormatError, "word2vec:"),
    Case("cli-pickled-pytorch-model-bin", lambda t, a: finetune(
        "--backbone", f"hf:{_pickled_hf_dir(t, a)}", "--data", str(topic_csv(t)), "--output", str(t / "m")),
        errors.UnsafeWeightsError, "safetensors"),
    Case("api-pickled-pytorch-model-bin", lambda t, a: tk.load_backbone(f"hf:{_pickled_hf_dir(t, a)}"),
         errors.UnsafeWeightsError, "safetensors"),
    Case("cli-excel-csv-with-bom", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(_bom_csv(t)), "--output", str(t / "m")), check=_saved),
    Case("api-offline-hub-id", lambda t, a: tk.load_backbone("hf:bert-base-uncased"),
         errors.OfflineError, "HF_HUB_OFFLINE"),
    Case("cli-offline-hub-id", lambda t, a: finetune(
        "--backbone", "hf:bert-base-uncased", "--data", str(topic_csv(t)), "--output", str(t / "m")),
        errors.OfflineError, "offline"),
    # unclear errors: the user's file, before training
    Case("cli-bad-image-fails-before-epoch-1", lambda t, a: finetune(
        *VISION, "--data", str(_bad_image_folder(t)), "--output", str(t / "m")), errors.ImageError, "broken.png"),
    Case("api-bad-image-named-in-fit", lambda t, a: tk.Trainer(epochs=1, progress=False).fit(
        tk.TransferModel(tk.load_backbone("timm:test_resnet", weights=None, image_size=32), tk.heads.Classification(2)),
        tk.load_labelled(_bad_image_folder(t))), errors.ImageError, "broken.png"),
    # docs and listings
    Case("cli-backbones-lists-zoo-and-offline-names", lambda t, a: ["backbones"], check=_lists_zoo_and_offline_names),
    Case("cli-small-learning-rates-print-readably", lambda t, a: finetune(
        "--backbone", f"glove:{a['glove']}", "--data", str(topic_csv(t)), "--output", str(t / "m"), "--lr", "3e-5"),
        check=_readable_lr),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, assets, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cases that chdir are undone after the test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case.cli:
        code = main(case.run(tmp_path, assets))
        out, err = capsys.readouterr()
        if case.error is None:
            assert code == 0, err
            if case.check:
                case.check(tmp_path, out)
            return
        assert code == 1, f"expected a clean error, got exit {code}: {out}{err}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("transferkit: error:") and case.message in lines[-1], err
        assert "Traceback" not in err
    elif case.error is None:
        result = case.run(tmp_path, assets)
        case.check(tmp_path, result)
        return
    else:
        with pytest.raises(case.error, match=case.message):
            case.run(tmp_path, assets)
    if case.check:
        case.check(tmp_path, None)


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    from transferkit.backbones.images import to_tensor

    path = _bomb(tmp_path, monkeypatch)
    with pytest.raises(errors.ImageError, match="bomb.png"):
        to_tensor(str(path))


def test_broken_pipe_ends_quietly(tmp_path):
    """`transferkit backbones 'timm:*' | head -1`: no traceback, exit 0."""
    script = ("import subprocess, sys; "
              "p = subprocess.Popen([sys.executable, '-m', 'transferkit', 'backbones', 'timm:*'], "
              "stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
              "p.stdout.readline(); p.stdout.close(); err = p.stderr.read(); code = p.wait(); "
              "print(code, err.decode().strip() or 'quiet')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.stdout.split() == ["0", "quiet"], result.stdout + result.stderr


def test_help_says_what_output_does(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "OUTPUT.run" in text and "refused" in text


def test_dataframe_fit_and_predict_use_the_rows(assets):
    pd = pytest.importorskip("pandas")  # the test extra installs it; the library does not need it
    frame = pd.DataFrame({"text": SENTENCES[:50], "label": [TOPICS[i % 9] for i in range(50)]})
    model = tk.TransferModel(tk.load_backbone(f"glove:{assets['glove']}"), tk.heads.Classification(3))
    tk.Trainer(epochs=1, progress=False).fit(model, frame)
    assert model.head.labels == ["animals", "markets", "sport"]  # not the column names
    predictions = model.predict(frame)
    assert len(predictions) == 50 and set(predictions) <= {"animals", "markets", "sport"}


def test_second_finetune_on_the_same_output_is_refused(assets, tmp_path, capsys):
    """Two runs with one --output: the second is refused while the first holds the lock, never mixed."""
    from transferkit.files import output_lock

    out = tmp_path / "m"
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the first run: holds the output's lock until told to stop
        try:
            with output_lock(out):
                os.write(ready_w, b"x")
                os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        os.read(ready_r, 1)
        code = main(finetune("--backbone", f"glove:{assets['glove']}", "--data", str(topic_csv(tmp_path)),
                             "--output", str(out)))
        err = capsys.readouterr().err
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
    assert code == 1 and f"pid {pid}" in err and "being written by another process" in err
    assert not out.exists() and not (tmp_path / "m.run").exists()
    assert main(finetune("--backbone", f"glove:{assets['glove']}", "--data", str(topic_csv(tmp_path)),
                         "--output", str(out))) == 0  # once the first run is over, the path is free
