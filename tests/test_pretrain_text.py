"""Text pretraining: BERT masking, NSP/SOP pairs, causal LM, tokenizer training and extension, bad corpora.

Tiny random models (hidden 32, 2 layers) on tiny corpora; the whole file runs in well under a minute on CPU.
"""

from __future__ import annotations

import re

import pytest
import torch

import transferkit as tk
from transferkit.errors import DataError, TransferkitError
from transferkit.tasks.text import (CausalLM, CorpusError, MaskedLM, NextSentencePrediction, SentencePairs,
                                    TextCorpus)
from transferkit.tokenization import extend_tokenizer, new_text_backbone, train_tokenizer

from conftest import SENTENCES

DOCS = [  # documents for NSP/SOP: blank lines between them, one sentence per line
    ["the cat sat on the mat", "then the cat slept", "the mat was warm"],
    ["stocks fell as markets closed", "investors sold stocks today", "the market may rally tomorrow"],
    ["the striker scored a late goal", "the team won the match", "fans cheered in the final minute"],
    ["a dog played in the park", "the dog chased a ball"],
]
NEW_DOMAIN = [  # a "new domain" for tokenizer extension: words the tiny vocabularies split into pieces
    "the goalkeeper saved a penalty", "the goalkeeper and the defenders celebrated",
    "penalty shootouts decide tournaments", "defenders blocked the penalty", "tournaments need goalkeepers",
] * 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and two threads on a busy 2-core machine are ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpora")
    files = {"lines": "\n".join(SENTENCES) + "\n",
             "docs": "\n\n".join("\n".join(d) for d in DOCS) + "\n",
             "new": "\n".join(NEW_DOMAIN) + "\n"}
    out = {}
    for name, text in files.items():
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
        out[name] = str(root / f"{name}.txt")
    return out


@pytest.fixture(scope="module")
def bert():
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary of the test sentences (plus a few ``##`` pieces).

    Built here rather than from ``conftest``'s checkpoint, whose ``BertTokenizerFast(vocab_file=...)`` gets an
    empty vocabulary under transformers 5 (it takes ``vocab=`` now).
    """
    from transformers import AutoModel, BertConfig, BertTokenizerFast

    from transferkit.backbones.hf import from_model

    words = sorted({w for s in SENTENCES + DOCS[0] + DOCS[3] for w in s.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ed", "##ing"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    return from_model(AutoModel.from_config(config), tok, name="tiny-bert", max_length=32)


@pytest.fixture(scope="module")
def gpt2(corpora):
    tok = train_tokenizer(corpora["lines"], kind="bpe", vocab_size=300, min_frequency=1)
    return new_text_backbone(tok, arch="gpt2", hidden=32, layers=2, heads=2, max_length=32, seed=0)


# --- masked language modelling ---------------------------------------------------------------------------

def test_mlm_masking_statistics(bert):
    torch.manual_seed(0)
    task = MaskedLM(bert)
    assert bert.preprocessor.tokenizer.tokenize("the cats") == ["the", "cat", "##s"]
    texts = SENTENCES * 10  # 900 texts, about 5000 maskable tokens
    batch = task.collate(texts)
    original = bert.preprocess(texts)["input_ids"]
    ids, labels = batch["inputs"]["input_ids"], batch["labels"]
    tok = bert.preprocessor.tokenizer
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    candidates = ~special
    selected = labels != -100
    assert not (selected & special).any()  # [CLS], [SEP], [PAD] are never selected
    assert torch.equal(ids[special], original[special])
    assert torch.equal(labels[selected], original[selected])  # labels are the original ids, -100 elsewhere
    assert torch.equal(ids[~selected], original[~selected])  # unselected tokens are untouched
    frac = selected.sum() / candidates.sum()
    assert 0.13 < frac < 0.17
    n = selected.sum()
    masked = (ids == tok.mask_token_id) & selected
    changed = selected & ~masked & (ids != original)
    kept = selected & (ids == original)
    assert 0.76 < masked.sum() / n < 0.84
    assert 0.07 < changed.sum() / n < 0.13  # random tokens (a few random draws equal the original)
    assert 0.07 < kept.sum() / n < 0.14


def test_mlm_masks_are_dynamic(bert):
    torch.manual_seed(0)
    task = MaskedLM(bert)
    first, second = task.collate(SENTENCES[:20]), task.collate(SENTENCES[:20])
    assert not torch.equal(first["labels"], second["labels"])


def test_whole_word_masking_masks_every_piece_of_a_word(bert):
    torch.manual_seed(0)
    tok = bert.preprocessor.tokenizer
    texts = ["the cats played and the dogs sat", "stocks rallied as investors played"] * 100
    assert "##s" in tok.tokenize("cats")  # the tiny vocabulary splits these words into pieces
    batch = MaskedLM(bert, whole_word=True).collate(texts)
    selected = batch["labels"] != -100
    ids = bert.preprocess(texts)["input_ids"]
    pieces = [[t.startswith("##") for t in tok.convert_ids_to_tokens(row)] for row in ids.tolist()]
    whole_words = 0
    for row, flags in enumerate(pieces):
        for j, continuation in enumerate(flags):
            if continuation:  # a "##" piece is selected exactly when its word's first piece is
                assert selected[row, j] == selected[row, j - 1]
                whole_words += bool(selected[row, j])
    assert whole_words > 10


def test_mlm_loss_falls_then_save_load_and_fine_tune(bert, corpora, tmp_path):
    task = MaskedLM(bert, mask_prob=0.3)
    assert task.examples(corpora["lines"]).__class__ is TextCorpus
    history = tk.Trainer(epochs=6, lr=3e-3, batch_size=16, progress=False).fit(task, corpora["lines"],
                                                                                 corpora["lines"])
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert {"val_loss", "val_accuracy"} <= set(history[-1])
    # The decoder is tied: it reads the backbone's embedding matrix, it has no copy of its own.
    assert all("word_embeddings" not in name for name, _ in task.head.named_parameters())
    task.backbone.save_pretrained(tmp_path / "domain-bert")
    loaded = tk.load_backbone(str(tmp_path / "domain-bert"))
    texts = SENTENCES[:4]
    assert torch.allclose(task.backbone.eval().encode(texts), loaded.eval().encode(texts), atol=1e-5)
    pairs = [("the cat sat", "cat"), ("a cat played", "cat"), ("stocks fell", "stocks"),
             ("the stocks rose", "stocks")] * 4
    model = tk.TransferModel(loaded, tk.heads.Classification(labels=["cat", "stocks"]))
    tk.Trainer(epochs=8, lr=3e-3, batch_size=8, progress=False).fit(model, pairs)
    assert model.predict(["the cat sat", "the stocks fell"]) == ["cat", "stocks"]


# --- sentence pairs ----------------------------------------------------------------------------------------

def _position(sentence):
    return next((d, i) for d, doc in enumerate(DOCS) for i, s in enumerate(doc) if s == sentence)


@pytest.mark.parametrize("order", [False, True])
def test_sentence_pair_labels(corpora, order):
    pairs = SentencePairs(corpora["docs"], order=order, seed=0)
    seen = []
    for _ in range(20):  # each pass draws new pairs
        epoch = list(pairs)
        assert len(epoch) == sum(len(d) - 1 for d in DOCS)
        seen.append(epoch)
        for a, b, label in epoch:
            (da, ia), (db, ib) = _position(a), _position(b)
            if label == 0:  # b really follows a
                assert (db, ib) == (da, ia + 1)
            elif order:  # swapped consecutive sentences
                assert (db, ib) == (da, ia - 1)
            else:  # a random sentence from another document
                assert db != da
    labels = [y for epoch in seen for _, _, y in epoch]
    assert 0.35 < sum(labels) / len(labels) < 0.65
    assert seen[0] != seen[1]


def test_nsp_with_mlm_trains(bert, corpora):
    task = NextSentencePrediction(bert, mlm=True)
    batch = task.collate(list(task.examples(corpora["docs"])))
    tok = bert.preprocessor.tokenizer
    assert (batch["inputs"]["token_type_ids"] == 1).any()  # segment B is marked
    assert (batch["inputs"]["input_ids"] == tok.sep_token_id).sum(1).eq(2).all()  # [CLS] A [SEP] B [SEP]
    history = tk.Trainer(epochs=2, lr=1e-3, batch_size=4, progress=False).fit(task, corpora["docs"],
                                                                                corpora["docs"])
    assert {"val_loss", "val_accuracy", "val_mlm_accuracy"} <= set(history[-1])
    with pytest.raises(CorpusError, match="at least two"):
        NextSentencePrediction(bert).examples(corpora["lines"])  # one sentence per document


# --- causal language modelling ---------------------------------------------------------------------------

def test_clm_labels_are_inputs_with_padding_ignored(gpt2):
    task = CausalLM(gpt2)
    batch = task.collate(["the cat sat on the mat", "a goal"])
    ids, mask, labels = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"], batch["labels"]
    tok = gpt2.preprocessor.tokenizer
    assert mask[1, -1] == 0 and mask[:, 0].all()  # padded on the right
    assert torch.equal(labels[mask == 1], ids[mask == 1]) and (labels[mask == 0] == -100).all()
    assert ids[0, mask[0].sum() - 1] == tok.eos_token_id  # end of text appended, and predicted
    out = task(batch)
    assert int(out["count"]) == int(mask[:, 1:].sum())  # every real token but the first is a target


def test_clm_loss_falls_and_generation_is_seeded(gpt2, corpora):
    task = CausalLM(gpt2)
    history = tk.Trainer(epochs=6, lr=3e-3, batch_size=16, progress=False).fit(task, corpora["lines"])
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    greedy = task.generate("the cat", max_new_tokens=8, temperature=0)
    assert isinstance(greedy, str) and greedy.startswith("the cat") and len(greedy) > len("the cat")
    assert greedy == task.generate("the cat", max_new_tokens=8, temperature=0)
    sampled = [task.generate("the", max_new_tokens=8, temperature=1.0, top_k=5, seed=s) for s in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1] and len(set(sampled)) >= 2


def test_clm_works_with_a_llama_style_model(gpt2):
    from transformers import AutoModel, LlamaConfig

    from transferkit.backbones.hf import from_model

    tok = gpt2.preprocessor.tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    llama = from_model(AutoModel.from_config(config), tok, name="tiny-llama", pooling="last")
    task = CausalLM(llama)
    loss = task(task.collate(SENTENCES[:4]))["loss"]
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(len(tok))).item()) < 1.0
    assert task.generate("the", max_new_tokens=4, temperature=0).startswith("the")


# --- tokenizers --------------------------------------------------------------------------------------------

def test_trained_tokenizers_round_trip(corpora, tmp_path):
    from transformers import AutoTokenizer

    wp = train_tokenizer(corpora["lines"], kind="wordpiece", vocab_size=200, min_frequency=1)
    assert wp.convert_ids_to_tokens(wp("the cat")["input_ids"]) == ["[CLS]", "the", "cat", "[SEP]"]
    assert wp.mask_token == "[MASK]" and wp.pad_token_id == 0
    bpe = train_tokenizer(corpora["lines"], kind="bpe", vocab_size=300, min_frequency=1)
    assert bpe.decode(bpe("the cat sat")["input_ids"]) == "the cat sat"
    for tok in (wp, bpe):
        tok.save_pretrained(tmp_path / "tok")
        again = AutoTokenizer.from_pretrained(tmp_path / "tok")
        assert again("the striker scored")["input_ids"] == tok("the striker scored")["input_ids"]


def _words(path):
    with open(path, encoding="utf-8") as f:
        return sorted({w for line in f for w in re.findall(r"\w+", line.lower())})


def test_extend_tokenizer_keeps_old_segmentation(corpora, tmp_path):
    old_tok = train_tokenizer(corpora["lines"], kind="wordpiece", vocab_size=80, min_frequency=1)
    old = new_text_backbone(old_tok, arch="bert", hidden=32, layers=1, heads=2, max_length=32, seed=0)
    new = extend_tokenizer(old, corpora["new"], num_new=10, keep=corpora["lines"])
    tok = new.preprocessor.tokenizer
    added = list(tok.added_tokens_encoder.keys() - old_tok.added_tokens_encoder.keys())
    assert 0 < len(added) <= 10 and "penalty" in added
    # Words of the old corpus and of the old vocabulary segment exactly as before...
    old_words = _words(corpora["lines"]) + [w for w in old_tok.get_vocab() if w.isalpha()]
    assert [old_tok.tokenize(w) for w in old_words] == [tok.tokenize(w) for w in old_words]
    assert old_tok.tokenize("the cat sat") == tok.tokenize("the cat sat")
    # ... an added word inside a longer word is not matched ...
    assert tok.tokenize("penaltyx") == old_tok.tokenize("penaltyx")
    # ... and the new corpus takes fewer tokens.
    count = lambda t: sum(len(t.tokenize(s)) for s in NEW_DOMAIN)  # noqa: E731
    assert count(tok) < 0.85 * count(old_tok)
    # A new word starts as the mean embedding of its old pieces; old rows are unchanged.
    emb, old_emb = new.encoder.model.get_input_embeddings().weight, old.encoder.model.get_input_embeddings().weight
    pieces = old_tok.convert_tokens_to_ids(old_tok.tokenize("penalty"))
    assert torch.allclose(emb[tok.convert_tokens_to_ids("penalty")], old_emb[pieces].mean(0))
    assert torch.equal(emb[: len(old_tok)], old_emb) and emb.shape[0] == len(tok) == len(old_tok) + len(added)
    # The extended backbone saves and loads with its tokenizer; the masked LM trains on it.
    new.save_pretrained(tmp_path / "extended")
    loaded = tk.load_backbone(str(tmp_path / "extended"))
    lt = loaded.preprocessor.tokenizer
    assert [lt.tokenize(s) for s in NEW_DOMAIN[:5]] == [tok.tokenize(s) for s in NEW_DOMAIN[:5]]
    assert lt.tokenize("penaltyx") == old_tok.tokenize("penaltyx")
    assert torch.equal(loaded.encoder.model.get_input_embeddings().weight, emb)
    assert torch.isfinite(MaskedLM(loaded)(MaskedLM(loaded).collate(NEW_DOMAIN[:4]))["loss"])


# --- bad corpora -------------------------------------------------------------------------------------------

def test_bad_corpora_are_refused_clearly(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        TextCorpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"\n  \n\n")
    for name in ("empty.txt", "blank.txt"):
        with pytest.raises(CorpusError, match="empty"):
            TextCorpus(tmp_path / name)
    (tmp_path / "latin1.txt").write_bytes(b"fine line\nna\xefve caf\xe9\n")
    with pytest.raises(CorpusError, match=r"line 2 .*byte 0xef at byte offset 12"):
        TextCorpus(tmp_path / "latin1.txt")
    with pytest.raises(CorpusError, match="line 2"):  # unchecked: the same error while streaming
        list(TextCorpus(tmp_path / "latin1.txt", check=False))
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        train_tokenizer(tmp_path / "latin1.txt")
    err = CorpusError("x")
    assert isinstance(err, DataError) and isinstance(err, TransferkitError)


def test_text_corpus_streams_lines_and_shuffles(corpora):
    corpus = TextCorpus(corpora["docs"])
    assert list(corpus) == [s for d in DOCS for s in d]  # blank lines skipped
    assert list(corpus.documents()) == DOCS
    shuffled = TextCorpus(corpora["lines"], shuffle_buffer=20, seed=0)
    a, b = list(shuffled), list(shuffled)
    assert sorted(a) == sorted(SENTENCES) and a != SENTENCES and a != b
