"""Word-vector file formats: sniff a file's first bytes before gensim reads it.

A GloVe file given as ``word2vec:``, a word2vec file given as ``glove:``, a pickle, an archive or junk is a
:class:`~transferkit.errors.FileFormatError` that says what the file looks like and which source reads it;
gensim's own errors on a damaged file become one too.
"""

from __future__ import annotations

import bz2
import gzip
import re
import struct
from typing import Any

from transferkit.errors import FileFormatError

FASTTEXT_MAGIC = 793712314  # first int32 of a Facebook fastText .bin (FASTTEXT_FILEFORMAT_MAGIC)
_SNIFF_BYTES = 1 << 16
# What each format is called in messages, and the source that reads it.
FORMATS = {
    "word2vec-binary": ("a word2vec binary file (header 'COUNT DIM', then binary floats)", "word2vec"),
    "word2vec-text": ("a word2vec text file (header line 'COUNT DIM'; fastText .vec files are this format)",
                      "word2vec"),
    "glove": ("a GloVe text file (no header)", "glove"),
    "fasttext": ("a Facebook fastText .bin model", "fasttext"),
    "fasttext-old": ("a Facebook fastText .bin model (old format, no magic number)", "fasttext"),
}


def sniff_format(path: str) -> str:
    """The word-vector format of ``path`` from its first 64 KiB: a key of :data:`FORMATS`.

    word2vec binary: a ``COUNT DIM`` header, then ``word`` + ``DIM`` binary floats; word2vec text: the
    header, then lines of ``DIM + 1`` fields; GloVe: no header, lines of a constant field count whose
    fields after the first are numbers; fastText ``.bin``: the int32 magic 793712314 at the start.
    ``.gz``/``.bz2`` files are sniffed decompressed (gensim reads them by extension).

    Raises:
        FileFormatError: the file is empty, junk, not UTF-8 text, an archive or a pickle; the message
            says what it looks like and what to do.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    compressed = {".gz": (head[:2] == b"\x1f\x8b", gzip.open, "gzip"), ".bz2": (head[:3] == b"BZh", bz2.open, "bzip2")}
    for suffix, (is_it, open_compressed, kind) in compressed.items():
        if path.endswith(suffix) != is_it:
            raise _format_error(path, f"its name ends in {suffix} but it is not {kind}-compressed" if not is_it else
                                f"it is {kind}-compressed but its name does not end in {suffix}",
                                f"rename it (gensim decompresses by the {suffix} suffix), or decompress it")
        if is_it:
            try:
                with open_compressed(path, "rb") as f:
                    head = f.read(_SNIFF_BYTES)
            except (OSError, EOFError, ValueError) as e:
                raise _format_error(path, f"it is a damaged {kind} file ({e})", "download it again") from e
    return _sniff_head(path, head)


def _sniff_head(path: str, head: bytes) -> str:
    if not head.strip():
        raise _format_error(path, "it is empty", "download it again, or check the path")
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == FASTTEXT_MAGIC:
        return "fasttext"
    if b"\x00" in head[:48] and _looks_like_old_fasttext(head):
        return "fasttext-old"
    if head.startswith(b"PK\x03\x04"):
        raise _format_error(path, "it is a zip archive", "unzip it and pass the vectors file inside")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise _format_error(path, "it is a Python pickle (e.g. gensim's KeyedVectors.save), which transferkit "
                                  "never unpickles", "in a trusted environment load it with gensim and write it "
                                  "with save_word2vec_format(PATH, binary=True), then use word2vec:PATH")
    complete = head if len(head) < _SNIFF_BYTES else head[: head.rfind(b"\n") + 1] or head
    first, _, rest = complete.partition(b"\n")
    header = re.fullmatch(rb"\s*(\d+)\s+(\d+)\s*", first)
    if header:
        return _sniff_word2vec(path, int(header.group(2)), rest, head.partition(b"\n")[2])
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _format_error(path, f"it is not UTF-8 text (byte 0x{complete[e.start]:02x} at offset {e.start}) "
                                  "and has no word2vec or fastText header",
                            "give a word2vec/GloVe/fastText file; a text file in another encoding must be "
                            "re-encoded as UTF-8 first (e.g. `iconv -f latin1 -t utf-8`)") from None
    lines = [line.rstrip() for line in text.splitlines() if line.strip()][:5]
    counts = {len(line.split(" ")) for line in lines}
    if len(counts) == 1 and counts.pop() >= 2 and all(_numbers(line.split(" ")[1:]) for line in lines):
        return "glove"
    raise _format_error(path, f"it is text but not word vectors (first line: {lines[0][:60]!r})",
                        "give a word2vec, GloVe or fastText vectors file")


def _sniff_word2vec(path: str, dim: int, text_rest: bytes, raw_rest: bytes) -> str:
    line = text_rest.partition(b"\n")[0]
    try:
        fields = line.decode("utf-8").rstrip().split(" ")
    except UnicodeDecodeError:
        fields = []
    if dim > 0 and len(fields) == dim + 1 and _numbers(fields[1:]):
        return "word2vec-text"
    space = raw_rest.find(b" ")
    if dim > 0 and 0 < space <= 1000 and _is_text(raw_rest[:space]) and not _is_text(raw_rest[space + 1:4096]):
        return "word2vec-binary"
    if dim > 0 and not raw_rest.strip():
        raise _format_error(path, "it has a word2vec header but no vectors after it",
                            "the file is truncated: download it again")
    raise _format_error(path, f"it starts with a word2vec header ('COUNT {dim}') but the lines after it are "
                              f"neither text lines of {dim + 1} fields nor binary vectors",
                        "the file may be truncated or damaged: download it again")


def _is_text(chunk: bytes) -> bool:
    """UTF-8 without NUL bytes (a multi-byte character cut at the end of the chunk still counts)."""
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(chunk) - 3 and b"\x00" not in chunk
    return b"\x00" not in chunk


def _numbers(fields: list[str]) -> bool:
    try:
        [float(x) for x in fields]
    except ValueError:
        return False
    return bool(fields)


def _looks_like_old_fasttext(head: bytes) -> bool:
    """The header of a fastText .bin from before the magic number: dim, ws, epoch, ..., loss, model."""
    if len(head) < 48:
        return False
    dim, ws, epoch, min_count, neg, word_ngrams, loss, model, bucket, minn, maxn, _ = struct.unpack("<12i", head[:48])
    return 0 < dim <= 100_000 and loss in (1, 2, 3) and model in (1, 2, 3) and 0 <= minn <= maxn <= 100


def _format_error(path: str, what: str, todo: str) -> FileFormatError:
    return FileFormatError(f"{path}: {what}: {todo}.")


def _check_format(path: str, source: str) -> str:
    """Sniff ``path`` and raise :class:`FileFormatError` unless ``source`` reads that format."""
    kind = sniff_format(path)
    description, reader = FORMATS[kind]
    if reader != source:
        note = " (out-of-vocabulary words get subword vectors only from the .bin model)" if source == "fasttext" else ""
        raise FileFormatError(f"{source}:{path}: this looks like {description}, not a {source} file: use "
                              f"{reader}:{path}{note}.")
    return kind


def _read_with_gensim(path: str, kind: str, read, *args: Any, **kwargs: Any):
    """Call a gensim reader, turning its errors on a damaged file into :class:`FileFormatError`."""
    try:
        return read(path, *args, **kwargs)
    except (ValueError, EOFError, NotImplementedError, IndexError, KeyError, struct.error, OverflowError,
            AssertionError, gzip.BadGzipFile) as e:  # gensim asserts on some damaged fastText files
        raise FileFormatError(
            f"{path}: cannot read it as {FORMATS[kind][0]} ({type(e).__name__}: {e}). The file is probably "
            "truncated or damaged (or not UTF-8 text): download it again or re-encode it as UTF-8.") from e


def _is_binary_word2vec(path: str) -> bool:
    return sniff_format(path) == "word2vec-binary"
