"""The catalogue schema: which keys an entry has and what makes an entry valid.

A catalogue is TOML or JSON holding ``schema = 1`` and a list ``model`` of entries. :func:`validate_entry`
returns every problem of one raw entry (an empty list means valid) so that a catalogue author sees all
mistakes at once, and the built-in catalogue is checked by the same function in the test suite.
"""

from __future__ import annotations

import re
from typing import Any

SCHEMA_VERSION = 1
MODALITIES = ("word_vectors", "text", "vision")
# The spec prefixes load_backbone understands; "transferkit" means a save_pretrained directory.
SOURCES = ("word2vec", "glove", "fasttext", "hf", "timm", "torchvision", "transferkit")
INTEGRITY = ("sha256", "hub-pinned", "unverified")
ARCHIVES = ("", "zip", "tar")
# Formats that are pickles (or can hold pickles): a Hub entry must never fetch them, because loading
# them runs code. Safetensors, JSON and text are the only weights and assets the zoo fetches from the Hub.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".joblib", ".npz")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REVISION_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

_ENTRY_KEYS = {"name", "modality", "source", "arch", "description", "homepage", "licence", "citation",
               "integrity", "integrity_note", "layout", "backbone_options", "preprocessing", "recipe",
               "metrics", "metrics_source", "files", "hub", "card"}
_REQUIRED_STR = ("name", "modality", "source", "description", "licence", "citation", "integrity")
_REQUIRED_TABLES = ("preprocessing", "recipe", "metrics")
_FILE_KEYS = {"path", "urls", "size", "sha256", "archive", "member", "member_sha256"}
_HUB_KEYS = {"repo_id", "revision", "files", "weights", "weights_sha256", "weights_size"}


def is_safe_relative(path: str) -> bool:
    """True for a relative POSIX path with no ``..``, no drive, no backslash and no empty name."""
    if not path or "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _check_sha(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, str) or (value and not SHA256_RE.match(value)):
        problems.append(f"{where} must be a full lowercase sha256 (64 hex characters) or \"\" when "
                        f"unknown, not {value!r}")


def _check_file(i: int, raw: Any, problems: list[str]) -> None:
    where = f"files[{i}]"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a table")
        return
    for key in sorted(set(raw) - _FILE_KEYS):
        problems.append(f"{where}: unknown key {key!r} (known: {sorted(_FILE_KEYS)})")
    path = raw.get("path")
    # An archive unpacked whole may land at the entry's root (path = "").
    extract_all = bool(raw.get("archive")) and not raw.get("member")
    if not isinstance(path, str) or not (is_safe_relative(path) or (extract_all and path == "")):
        problems.append(f"{where}.path must be a relative path inside the entry directory, not {path!r}")
    urls = raw.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        problems.append(f"{where}.urls must be a non-empty list of URLs (mirrors, tried in order)")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        problems.append(f"{where}.size must be a positive number of bytes, or left out when unknown")
    _check_sha(raw.get("sha256", ""), f"{where}.sha256", problems)
    archive = raw.get("archive", "")
    if archive not in ARCHIVES:
        problems.append(f"{where}.archive must be one of {ARCHIVES}, not {archive!r}")
    member = raw.get("member", "")
    if not isinstance(member, str) or (member and not is_safe_relative(member)):
        problems.append(f"{where}.member must be a relative path inside the archive, not {member!r}")
    if member and not archive:
        problems.append(f"{where}.member needs archive = \"zip\" or \"tar\"")
    _check_sha(raw.get("member_sha256", ""), f"{where}.member_sha256", problems)
    if raw.get("member_sha256") and not member:
        problems.append(f"{where}.member_sha256 needs a member")


def _check_hub(raw: Any, problems: list[str]) -> None:
    if not isinstance(raw, dict):
        problems.append("hub must be a table")
        return
    for key in sorted(set(raw) - _HUB_KEYS):
        problems.append(f"hub: unknown key {key!r} (known: {sorted(_HUB_KEYS)})")
    if not isinstance(raw.get("repo_id"), str) or not REPO_RE.match(raw["repo_id"]):
        problems.append(f"hub.repo_id must look like 'org/name', not {raw.get('repo_id')!r}")
    revision = raw.get("revision", "")
    if not isinstance(revision, str) or (revision and not REVISION_RE.match(revision)):
        problems.append(f"hub.revision must be a full 40-hex commit hash or \"\" (unpinned), not {revision!r}")
    files = raw.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        problems.append("hub.files must be a non-empty list of file names or glob patterns to fetch")
        files = []
    for pattern in files:
        if pattern.lower().endswith(PICKLE_SUFFIXES) or pattern in ("*", "**"):
            problems.append(f"hub.files: {pattern!r} would fetch pickled weights; list safetensors and "
                            "text assets only")
    weights = raw.get("weights", "model.safetensors")
    if not isinstance(weights, str) or not weights.endswith(".safetensors"):
        problems.append(f"hub.weights must name the .safetensors weights file, not {weights!r}")
    _check_sha(raw.get("weights_sha256", ""), "hub.weights_sha256", problems)
    size = raw.get("weights_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        problems.append("hub.weights_size must be a positive number of bytes, or left out when unknown")


def _file_verifiable(raw: dict) -> bool:
    return bool(SHA256_RE.match(str(raw.get("sha256", ""))) or SHA256_RE.match(str(raw.get("member_sha256", ""))))


def _check_integrity(raw: dict, problems: list[str]) -> None:
    integrity = raw.get("integrity")
    files = raw.get("files") if isinstance(raw.get("files"), list) else []
    hub = raw.get("hub") if isinstance(raw.get("hub"), dict) else None
    pinned = bool(hub and REVISION_RE.match(str(hub.get("revision", ""))))
    complete = bool(files) and all(isinstance(f, dict) and _file_verifiable(f) for f in files)
    if integrity not in INTEGRITY:
        problems.append(f"integrity must be one of {INTEGRITY}, not {integrity!r}")
    elif integrity == "sha256" and not complete:
        problems.append("integrity = \"sha256\" needs a full sha256 (or member_sha256) for every file")
    elif integrity == "hub-pinned" and not pinned:
        problems.append("integrity = \"hub-pinned\" needs a hub table with a 40-hex revision")
    elif integrity == "unverified" and (complete or pinned):
        problems.append("integrity = \"unverified\" but every file has a checksum (or the Hub revision is "
                        "pinned): say \"sha256\" or \"hub-pinned\"")


def validate_entry(raw: Any) -> list[str]:
    """Every problem of one raw catalogue entry, as readable sentences; ``[]`` when it is valid.

    Args:
        raw: one element of a catalogue's ``model`` list, as parsed from TOML or JSON.

    Returns:
        The problems found, each prefixed by nothing but the key it is about.
    """
    if not isinstance(raw, dict):
        return ["an entry must be a table"]
    problems: list[str] = []
    for key in sorted(set(raw) - _ENTRY_KEYS):
        problems.append(f"unknown key {key!r}")
    for key in _REQUIRED_STR:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            problems.append(f"{key} is required (a non-empty string)")
    for key in (*_REQUIRED_TABLES, "backbone_options"):
        if key in _REQUIRED_TABLES and key not in raw:
            problems.append(f"{key} is required (a table, {{}} when there is nothing to say)")
        elif key in raw and not isinstance(raw[key], dict):
            problems.append(f"{key} must be a table")
    if isinstance(raw.get("name"), str) and not NAME_RE.match(raw["name"]):
        problems.append(f"name {raw['name']!r} must look like 'family/arch.tag' (lowercase, digits, -_.)")
    if raw.get("modality") not in MODALITIES:
        problems.append(f"modality must be one of {MODALITIES}, not {raw.get('modality')!r}")
    if raw.get("source") not in SOURCES:
        problems.append(f"source must be one of {SOURCES}, not {raw.get('source')!r}")
    if raw.get("source") in ("timm", "torchvision") and not raw.get("arch"):
        problems.append("arch is required for timm and torchvision entries (e.g. 'resnet50.a1_in1k')")
    if raw.get("layout", "") not in ("", "file", "directory"):
        problems.append(f"layout must be 'file' or 'directory', not {raw.get('layout')!r}")
    has_files, has_hub = "files" in raw, "hub" in raw
    if has_files == has_hub:
        problems.append("an entry has either files (direct URLs) or hub (a Hugging Face repository), "
                        "exactly one of them")
    if has_files:
        if not isinstance(raw["files"], list) or not raw["files"]:
            problems.append("files must be a non-empty list")
        else:
            for i, f in enumerate(raw["files"]):
                _check_file(i, f, problems)
            paths = [f.get("path") for f in raw["files"] if isinstance(f, dict)]
            if len(paths) != len(set(paths)):
                problems.append("two files have the same path")
            if raw.get("layout") == "file" and len(raw["files"]) != 1:
                problems.append("layout = 'file' needs exactly one file")
    if has_hub:
        _check_hub(raw["hub"], problems)
    _check_integrity(raw, problems)
    if raw.get("layout") == "file" and raw.get("files") and isinstance(raw["files"][0], dict) \
            and raw["files"][0].get("archive") and not raw["files"][0].get("member"):
        problems.append("layout = 'file' with an archive needs the member to point at")
    card = raw.get("card", "")
    if not isinstance(card, str) or (card and not is_safe_relative(card)):
        problems.append("card must be a relative path to the model card inside the entry")
    return problems


def entry_label(raw: Any, index: int) -> str:
    """How to refer to an entry in an error message: its name if it has one, else its position."""
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return repr(raw["name"])
    return f"model[{index}]"
