"""Tagged sentences for token classification (NER): CoNLL files, JSONL with character spans, Python lists.

Formats (:func:`load_tagged` reads them all; every sentence keeps its *origin* for messages):

* **CoNLL** (``.conll``, ``.txt``, ``.bio``, ``.iob``, ``.tsv`` without a header): one token per line in
  whitespace-separated columns, the token first and its tag last (the CoNLL-2003 layout ``EU NNP B-NP
  B-ORG`` and the two-column ``EU B-ORG`` both work), a blank line between sentences; ``-DOCSTART-`` lines
  are skipped. Origins are ``"FILE line N"`` of a sentence's first token.
* **JSONL with spans**: one object per line, ``{"text": "Alice met Bob", "entities": [{"start": 0, "end":
  5, "label": "PER"}, ...]}`` with character offsets (``end`` exclusive). The text is split into words by
  a regular expression (:data:`WORD_PATTERN`: runs of letters/digits, or one punctuation mark) and every
  span must start and end on word boundaries and not overlap another. A line may instead hold
  ``{"tokens": [...], "tags": [...]}``.
* **Python**: a list of ``(words, tags)`` pairs, of dicts like the JSONL lines, or a table (DataFrame,
  dict of columns, ``datasets.Dataset``) with a ``tokens`` and a ``tags`` column of lists.

Tags are ``O`` or ``P-TYPE`` with the prefix ``P`` one of ``B`` (begin), ``I`` (inside), ``E`` (end),
``S`` (single) — the BIO (IOB2, Ramshaw & Marcus 1995) and BIOES (Ratinov & Roth 2009) schemes. Entities
are read from tags as ``seqeval``'s default mode reads them (the CoNLL-2000 ``conlleval`` chunk rules), so
an ``I-`` without a ``B-`` (IOB1 data such as the original CoNLL-2003) starts an entity;
:func:`encode_tags` writes entities back in either scheme, which is how BIO ↔ BIOES conversion works
(:func:`convert_tags`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from transferkit.errors import DataError, LabelError

from .common import first, short
from .readers import as_table, find_column, json_lines

WORD_PATTERN = r"\w+(?:'\w+)?|[^\w\s]"
SCHEMES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
CONLL_SUFFIXES = (".conll", ".conllu", ".txt", ".bio", ".iob", ".iob2", ".bioes", ".tsv", ".tab")


@dataclass
class TaggedSentence:
    """One sentence: its words, one tag per word, where it came from and (from raw text) word offsets."""

    words: list[str]
    tags: list[str]
    origin: str = "item 0"
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)


# --- tags and entities -----------------------------------------------------------------------------------

def check_scheme(scheme: str) -> str:
    """``"BIO"`` or ``"BIOES"`` (any case); anything else is a :class:`~transferkit.errors.ConfigError`."""
    from transferkit.errors import ConfigError

    name = str(scheme).upper()
    if name not in SCHEMES:
        raise ConfigError(f"unknown tagging scheme {scheme!r}; use one of {sorted(SCHEMES)}.")
    return name


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` → ``("B", "PER")``; ``"O"`` → ``("O", "")``. Raises ValueError for anything else."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[0], tag[2:]
    raise ValueError(tag)


def check_tags(tags: Sequence[Any], origin: str) -> list[str]:
    """The tags as strings, each ``O`` or ``B-/I-/E-/S-TYPE``.

    Raises:
        LabelError: a tag is not a string or has an unknown prefix, naming the sentence and the word.
    """
    out, bad = [], []
    for i, tag in enumerate(tags):
        text = tag.strip() if isinstance(tag, str) else tag
        try:
            split_tag(text)
        except (ValueError, TypeError):
            bad.append(f"word {i + 1} ({tag!r})")
        out.append(text)
    if bad:
        raise LabelError(f"{origin}: {len(bad)} tag(s) are not O or B-/I-/E-/S-TYPE (BIO or BIOES): {first(bad)}. "
                         "Write tags like B-PER, I-PER, O (integer tag ids need the tag names instead).")
    return out


def entities_from_tags(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, first word, last word)`` (inclusive) of one sentence's tags.

    The chunk rules of CoNLL-2000's ``conlleval`` as ``seqeval.metrics.sequence_labeling.get_entities``
    implements them (its default mode): a chunk ends before ``B``/``S``/``O`` or a type change and after
    ``E``/``S``; it starts at ``B``/``S``, at an ``I``/``E`` after ``O``/``E``/``S``, or at a type change.
    """
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = split_tag(tag)
        kind = kind or "_"
        if _ends(prev_tag, prefix, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, prefix, prev_type, kind):
            begin = i
        prev_tag, prev_type = prefix, kind
    return chunks


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    return (prev in "ES" or prev in "BI" and tag in "BSO") or (prev != "O" and prev_type != kind)


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    return tag in "BS" or (prev in "OES" and tag in "IE") or (tag != "O" and prev_type != kind)


def encode_tags(entities: Iterable[tuple[str, int, int]], length: int, scheme: str = "BIO") -> list[str]:
    """Tags of ``length`` words holding ``entities`` ``(type, first, last)`` (inclusive) in ``scheme``."""
    scheme = check_scheme(scheme)
    tags = ["O"] * length
    for kind, start, end in entities:
        if scheme == "BIOES" and start == end:
            tags[start] = f"S-{kind}"
            continue
        tags[start] = f"B-{kind}"
        for i in range(start + 1, end + 1):
            tags[i] = f"I-{kind}"
        if scheme == "BIOES":
            tags[end] = f"E-{kind}"
    return tags


def convert_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """The same entities in ``scheme`` (BIO ↔ BIOES, IOB1 → either); entities read as seqeval reads them."""
    return encode_tags(entities_from_tags(tags), len(tags), scheme)


def scheme_tags(types: Iterable[str], scheme: str = "BIO") -> list[str]:
    """Every tag of ``scheme`` for the entity ``types``: ``O`` first, then each type's prefixes."""
    prefixes = SCHEMES[check_scheme(scheme)]
    return ["O"] + [f"{p}-{t}" for t in sorted(set(types)) for p in prefixes]


# --- words and spans -------------------------------------------------------------------------------------

def split_words(text: str, pattern: str = WORD_PATTERN) -> tuple[list[str], list[tuple[int, int]]]:
    """The words of raw ``text`` and their character ``(start, end)`` offsets (``end`` exclusive)."""
    matches = list(re.finditer(pattern, text))
    return [m.group() for m in matches], [m.span() for m in matches]


def spans_to_sentence(text: Any, entities: Any, origin: str, pattern: str = WORD_PATTERN) -> TaggedSentence:
    """A raw text and its character spans as words with BIO tags.

    Raises:
        DataError: the text is empty or not a string, ``entities`` is not a list of
            ``{"start", "end", "label"}``.
        LabelError: a span does not start and end on word boundaries, or overlaps another.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{origin}: the text is {short(text)}; each example needs a non-empty \"text\" string.")
    words, offsets = split_words(text, pattern)
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    if entities is None:
        entities = []
    if not isinstance(entities, (list, tuple)):
        raise DataError(f"{origin}: \"entities\" is {short(entities)}; give a list of "
                        '{"start": ..., "end": ..., "label": ...} (an empty list for none).')
    spans = []
    for n, ent in enumerate(entities):
        try:
            start, end, label = int(ent["start"]), int(ent["end"]), str(ent["label"]).strip()
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{origin}: entity {n} is {short(ent)}; each entity is "
                            '{"start": int, "end": int, "label": str}.') from None
        piece = text[start:end] if 0 <= start < end <= len(text) else None
        if start not in starts or end not in ends or not label or any(c.isspace() for c in label):
            what = (f"[{start}:{end}] ({piece!r})" if piece is not None else f"[{start}:{end}] (outside the text)")
            raise LabelError(f"{origin}: entity {n} {what} labelled {label!r} does not start and end on word "
                             f"boundaries (words: {[text[s:e] for s, e in offsets][:12]}) or has an empty "
                             "label; fix its offsets (end is exclusive) or its label.")
        spans.append((label, starts[start], ends[end], n))
    spans.sort(key=lambda s: s[1])
    for a, b in zip(spans, spans[1:]):
        if b[1] <= a[2]:
            raise LabelError(f"{origin}: entities {a[3]} and {b[3]} overlap ({text[offsets[a[1]][0]:offsets[a[2]][1]]!r}"
                             f" and {text[offsets[b[1]][0]:offsets[b[2]][1]]!r}); flat NER tags hold one entity "
                             "per word: keep one of them.")
    tags = encode_tags([(label, s, e) for label, s, e, _ in spans], len(words))
    return TaggedSentence(words, tags, origin, offsets)


def words_and_tags(words: Any, tags: Any, origin: str) -> TaggedSentence:
    """A pre-split sentence, checked: non-empty string words, one valid tag per word.

    Raises:
        DataError: words are not a non-empty list of non-empty strings.
        LabelError: there are not as many tags as words, or a tag is invalid (naming the word).
    """
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words:
        raise DataError(f"{origin}: the words are {short(words)}; give a non-empty list of words (strings).")
    blank = [f"word {i + 1} ({w!r})" for i, w in enumerate(words) if not isinstance(w, str) or not w.strip()]
    if blank:
        raise DataError(f"{origin}: {first(blank)} are empty or not strings; every word is a non-empty string.")
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise LabelError(f"{origin}: the tags are {short(tags)}; give a list with one tag per word.")
    if len(tags) != len(words):
        raise LabelError(f"{origin}: {len(words)} words but {len(tags)} tags (words {list(words)[:8]}...); "
                         "give exactly one tag per word.")
    return TaggedSentence([w.strip() for w in words], check_tags(tags, origin), origin)


# --- readers ---------------------------------------------------------------------------------------------

def read_conll(path: str | os.PathLike) -> list[TaggedSentence]:
    """Sentences of a CoNLL file (token first, tag last, blank line between sentences).

    Raises:
        DataError: the file is not UTF-8 or a line has a single column (no tag), naming the line.
        LabelError: a tag is invalid, naming the line.
    """
    path = Path(path)
    sentences, words, tags, lines = [], [], [], []

    def flush():
        if words:
            origin = f"{path} line {lines[0]}"
            for tag, n in zip(tags, lines):
                check_tags([tag], f"{path} line {n}")
            sentences.append(TaggedSentence(list(words), list(tags), origin))
        words.clear(), tags.clear(), lines.clear()

    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                columns = line.split()
                if not columns:
                    flush()
                    continue
                if columns[0] == "-DOCSTART-":
                    flush()
                    continue
                if len(columns) < 2:
                    raise DataError(f"{path} line {n}: {line.strip()!r} has one column; CoNLL lines are 'token ... "
                                    "tag' separated by whitespace, with a blank line between sentences.")
                words.append(columns[0]), tags.append(columns[-1]), lines.append(n)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8.") from e
    flush()
    return sentences


def read_jsonl(path: str | os.PathLike, pattern: str = WORD_PATTERN) -> list[TaggedSentence]:
    """Sentences of a JSONL file: ``{"text", "entities"}`` (character spans) or ``{"tokens", "tags"}`` lines."""
    path = Path(path)
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, row in json_lines(f, path):
                out.append(_row(row, f"{path} line {n}", pattern))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8.") from e
    return out


def _row(row: Any, origin: str, pattern: str, words_key: str = "tokens", tags_key: str = "tags") -> TaggedSentence:
    if isinstance(row, dict) and "text" in row and words_key not in row:
        return spans_to_sentence(row["text"], row.get("entities"), origin, pattern)
    if isinstance(row, dict) and words_key in row and tags_key in row:
        return words_and_tags(row[words_key], row[tags_key], origin)
    if isinstance(row, (list, tuple)) and len(row) == 2 and not isinstance(row[0], str):
        return words_and_tags(row[0], row[1], origin)
    raise DataError(f"{origin} is {short(row)}; a tagged example is {{\"text\": ..., \"entities\": [...]}}, "
                    f"{{\"{words_key}\": [...], \"{tags_key}\": [...]}} or a (words, tags) pair.")


def load_tagged(source: Any, *, words_column: str = "tokens", tags_column: str = "tags",
                pattern: str = WORD_PATTERN) -> list[TaggedSentence]:
    """Tagged sentences from any form in the module docstring (checked; tags in the data's own scheme).

    Raises:
        DataError: the source is empty, unreadable or of an unknown form; LabelError: bad tags or spans.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"data path {str(path)!r} does not exist (or is not a file).")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            sentences = read_jsonl(path, pattern)
        elif suffix in CONLL_SUFFIXES or not suffix:
            sentences = read_conll(path)
        else:
            raise DataError(f"{path}: unknown file type {suffix!r} for tagged data; use a CoNLL file (.conll, "
                            ".txt, .bio) or JSONL with spans (.jsonl).")
        if not sentences:
            raise DataError(f"{path} holds no tagged sentence.")
        return sentences
    if isinstance(source, TaggedSentence):
        source = [source]
    table = as_table(source)
    if table is not None:
        what, columns, get, origins = table
        words = get(find_column(columns, words_column, what))
        tags = get(find_column(columns, tags_column, what))
        origins = origins or [f"row {i}" for i in range(len(words))]
        sentences = [words_and_tags(w, t, o) for w, t, o in zip(words, tags, origins)]
    elif isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        sentences = [s if isinstance(s, TaggedSentence) else _row(s, f"item {i}", pattern, words_column, tags_column)
                     for i, s in enumerate(source)]
    else:
        raise DataError(f"tagged data must be a CoNLL or JSONL file, a list of (words, tags) pairs or of dicts, "
                        f"or a table with {words_column!r} and {tags_column!r} columns; got {type(source).__name__}.")
    if not sentences:
        raise DataError("the tagged data is empty: give at least one sentence.")
    return sentences


# --- what token tasks feed a preprocessor ----------------------------------------------------------------

def check_token_batch(batch: Any) -> tuple[str, list]:
    """``("text", strings)`` for raw texts or ``("words", word lists)`` for pre-split sentences.

    What ``encode_tokens`` of the text preprocessors (:class:`~transferkit.backbones.hf.HFTokenizer`,
    :class:`~transferkit.backbones.word_vectors.source.WordTokenizer`) accepts.

    Raises:
        InputError: one string instead of a batch, an empty batch, a mix of texts and word lists, an empty
            text or sentence, or a word that is empty or not a string (naming the item).
    """
    from transferkit.errors import InputError

    if isinstance(batch, str):
        raise InputError("encode_tokens takes a batch: a list of texts or a list of word lists, got one string; "
                         "wrap it as [text].")
    items = list(batch)
    if not items:
        raise InputError("encode_tokens got an empty batch: pass at least one text or sentence.")
    if all(isinstance(x, str) for x in items):
        blank = [f"text #{i}" for i, x in enumerate(items) if not x.strip()]
        if blank:
            raise InputError(f"{first(blank)} are empty or only whitespace: remove them or give real text.")
        return "text", items
    for i, words in enumerate(items):
        if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words:
            raise InputError(f"sentence #{i} is {short(words)}: a batch is all texts (strings) or all pre-split "
                             "sentences (non-empty lists of words).")
        bad = [f"word {j + 1} ({w!r})" for j, w in enumerate(words) if not isinstance(w, str) or not w.strip()]
        if bad:
            raise InputError(f"sentence #{i}: {first(bad)} are empty or not strings; each word is a non-empty string.")
    return "words", [list(w) for w in items]
