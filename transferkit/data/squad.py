"""Question-answering data: SQuAD JSON, JSONL and Python dicts, with answers checked at their offsets.

The forms read by :func:`load_squad` (Rajpurkar et al. 2016, arXiv:1606.05250; v2 with unanswerable
questions: Rajpurkar et al. 2018, arXiv:1806.03822):

* a SQuAD file (``.json``) or the same structure as a dict::

      {"data": [{"title": ..., "paragraphs": [{"context": "...",
                 "qas": [{"id": "q1", "question": "...", "answers": [{"text": "...", "answer_start": 7}],
                          "is_impossible": false}]}]}]}

* JSONL (``.jsonl``), one question per line: ``{"id"?, "question", "context", "answers"}``;
* a list of such dicts, or a table (DataFrame, dict of columns, ``datasets.Dataset``) with those columns.

``answers`` is a list of ``{"text", "answer_start"}`` or, as the Hugging Face ``squad`` datasets hold it,
``{"text": [...], "answer_start": [...]}``. A question with no answer (``answers`` empty, or
``"is_impossible": true``) is unanswerable (SQuAD v2). Every answer must be found at its character offset:
``context[answer_start: answer_start + len(text)] == text``, else a :class:`~transferkit.errors.LabelError`
names the question (its id and where it is) — a shifted offset would silently train on the wrong span.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from transferkit.errors import DataError, LabelError

from .common import first, short
from .readers import as_table, json_lines


@dataclass
class QAExample:
    """One question about one context.

    Attributes:
        id: the question id (SQuAD's ``id``; ``item i`` / ``line n`` when the data gives none).
        question, context: the texts.
        answers: ``(text, start)`` pairs, ``start`` a character offset into ``context``; empty when the
            question is unanswerable.
        origin: where it is in the user's data (``"dev.json data[0].paragraphs[2].qas[1]"``, ``"x.jsonl line 4"``).
    """

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    origin: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.answers)

    @property
    def where(self) -> str:
        """The question named for a message: its id and origin."""
        if not self.origin or self.origin == self.id:  # no id of its own: where it is names it
            return self.origin or f"question {self.id!r}"
        return f"question {self.id!r} ({self.origin})"


def load_squad(source: Any) -> list[QAExample]:
    """Questions with their contexts and answers, from any form in the module docstring.

    Raises:
        DataError: the source is empty, unreadable or of an unknown form, or a question lacks its
            question or context text (naming it).
        LabelError: an answer's text is not at its ``answer_start`` in the context, an offset is not a
            whole number, or an ``is_impossible`` question has answers (naming the question).
    """
    if isinstance(source, QAExample):
        return [source]
    if isinstance(source, (str, os.PathLike)):
        examples = _file(Path(source))
    elif isinstance(source, dict) and "data" in source and not as_table_like(source):
        examples = _squad(source, "the SQuAD dict")
    else:
        table = as_table(source) if not isinstance(source, (list, tuple)) else None
        if table is not None:
            _, columns, get, origins = table
            rows = [dict(zip(columns, values)) for values in zip(*(get(c) for c in columns))]
            origins = origins or [f"row {i}" for i in range(len(rows))]
        elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, dict)):
            rows = list(source)
            origins = [f"item {i}" for i in range(len(rows))]
        else:
            raise DataError(_FORMS + f" Got {short(source)}.")
        examples = [e if isinstance(e, QAExample) else _row(e, o) for e, o in zip(rows, origins)]
    if not examples:
        raise DataError(f"the QA data {_describe(source)} holds no question: give at least one.")
    _check_ids(examples)
    return examples


_FORMS = ("QA data is a SQuAD JSON file or dict ({'data': [{'paragraphs': [{'context', 'qas': [...]}]}]}), a JSONL "
          "file with question/context/answers per line, a list of such dicts, or a table with those columns.")


def as_table_like(source: dict) -> bool:
    """A dict of columns (``{"question": [...], "context": [...], ...}``) rather than a SQuAD dict."""
    return "question" in source and "context" in source


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def _file(path: Path) -> list[QAExample]:
    if not path.is_file():
        raise DataError(f"data path {str(path)!r} does not exist (or is not a file).")
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8-sig") as f:
            if suffix == ".json":
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from e
                if not isinstance(data, dict) or "data" not in data:
                    raise DataError(f"{path} is not a SQuAD file: it needs a top-level {{'data': [...]}}. " + _FORMS)
                return _squad(data, str(path))
            if suffix in (".jsonl", ".ndjson"):
                rows = []
                for n, row in json_lines(f, path):
                    rows.append(_row(row, f"{path} line {n}"))
                return rows
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8.") from e
    raise DataError(f"{path}: unknown file type {suffix!r} for QA data; use a SQuAD .json or a .jsonl file.")


def _squad(data: dict, name: str) -> list[QAExample]:
    articles = data.get("data")
    if not isinstance(articles, list):
        raise DataError(f"{name}: 'data' must be a list of articles, got {short(articles)}.")
    out = []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{name} data[{a}] has no 'paragraphs' list.")
        for p, paragraph in enumerate(paragraphs):
            where = f"{name} data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{where} needs 'context' and a 'qas' list.")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise DataError(f"{where}.qas[{q}] is {short(qa)}, not a question object.")
                out.append(_row({**qa, "context": paragraph.get("context")}, f"{where}.qas[{q}]"))
    return out


def _row(row: Any, origin: str) -> QAExample:
    if not isinstance(row, dict):
        raise DataError(f"{origin} is {short(row)}, not a question. " + _FORMS)
    qid = row.get("id")
    qid = origin if qid is None or str(qid).strip() == "" else str(qid)
    label = f"question {qid!r} ({origin})" if qid != origin else origin
    texts = {}
    for key in ("question", "context"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{label}: {key!r} is {'missing' if value is None else short(value)}; every question "
                            "needs a non-empty question and context text.")
        texts[key] = value
    answers = _answers(row.get("answers"), label)
    impossible = row.get("is_impossible", False)
    if impossible is True and answers:
        raise LabelError(f"{label} is marked is_impossible but has {len(answers)} answer(s): drop the answers, or "
                         "the is_impossible flag (SQuAD v2 keeps plausible_answers apart).")
    context = texts["context"]
    bad = [f"{text!r} at {start} (the context there reads {context[start: start + len(text)]!r})"
           for text, start in answers if context[start: start + len(text)] != text]
    if bad:
        raise LabelError(f"{label}: answer text not at its answer_start in the context: {first(bad, 3)}. Fix "
                         "answer_start (a character offset into the context, 0-based) or the answer text.")
    return QAExample(qid, texts["question"], context, answers, origin)


def _answers(value: Any, label: str) -> list[tuple[str, int]]:
    if value is None:
        return []
    if isinstance(value, dict):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, (list, tuple)) or not isinstance(starts, (list, tuple)) or len(texts) != len(starts):
            raise LabelError(f"{label}: answers {short(value)} needs lists 'text' and 'answer_start' of equal length.")
        value = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise LabelError(f"{label}: answers must be a list of {{'text', 'answer_start'}}, got {short(value)}.")
    out = []
    for i, answer in enumerate(value):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if hasattr(start, "item"):
            start = start.item()
        if not isinstance(text, str) or not text:
            raise LabelError(f"{label}: answer {i} has no text ({short(answer)}); an unanswerable question has "
                             "an empty answers list.")
        if isinstance(start, float) and start.is_integer():
            start = int(start)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise LabelError(f"{label}: answer {i} ({text!r}) has answer_start {start!r}; it must be a character "
                             "offset into the context (a whole number from 0).")
        out.append((text, start))
    return out


def _check_ids(examples: list[QAExample]) -> None:
    seen: dict[str, str] = {}
    repeated = []
    for e in examples:
        if e.id in seen:
            repeated.append(f"{e.id!r} ({seen[e.id]} and {e.origin})")
        seen.setdefault(e.id, e.origin)
    if repeated:
        raise DataError(f"question ids must be unique (predictions are matched to questions by id): repeated "
                        f"{first(repeated, 5)}.")
