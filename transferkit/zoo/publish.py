"""Publish a ``save_pretrained`` directory as a zoo entry, so that a team can host its own zoo.

``publish(model_dir, root, name="team/bert.sentiment-v1")`` copies the directory's files under
``ROOT/files/team/bert.sentiment-v1/`` (hashing them while copying), and adds an entry with each file's
size and sha256 to ``ROOT/catalogue.json``. File URLs in that catalogue are relative, so ROOT can be used
in place (``add_catalogue(ROOT)``), copied to a shared disk, or served by any static file server
(``add_catalogue("https://models.example.org/zoo/catalogue.json")``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from transferkit import files as safe_files
from transferkit.zoo.catalogue import ZooEntry, entry_from_raw
from transferkit.zoo.errors import PublishError
from transferkit.zoo.schema import MODALITIES, NAME_RE, SCHEMA_VERSION, validate_entry

_WEIGHT_FILES = ("config.json", "model.safetensors", "README.md")


def _copy_hashed(src: Path, dest: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _files_of(model_dir: Path) -> list[str]:
    out = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise PublishError(f"{path} is a link or a special file; publish copies regular files only")
        if path.is_file():
            out.append(rel)
    return out


def _card(raw: dict[str, Any], files: list[dict[str, Any]]) -> str:
    rows = "\n".join(f"| `{f['path']}` | {f['size']} | `{f['sha256']}` |" for f in files)
    return (f"# {raw['name']}\n\n{raw['description']}\n\n- Modality: {raw['modality']}\n"
            f"- Licence: {raw['licence']}\n- Citation: {raw['citation']}\n\n"
            f"Load it with `transferkit.load_backbone(\"zoo:{raw['name']}\")`.\n\n"
            f"| File | Bytes | sha256 |\n|---|---|---|\n{rows}\n")


@contextlib.contextmanager
def _root_lock(root: Path):
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".catalogue.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_config(model_dir: Path) -> dict[str, Any]:
    if not (model_dir / "config.json").is_file():
        raise PublishError(f"{model_dir} has no config.json; publish a directory written by save_pretrained")
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise PublishError(f"{model_dir / 'config.json'} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise PublishError(f"{model_dir / 'config.json'} must hold a JSON object")
    return config


def publish(model_dir: str | os.PathLike, root: str | os.PathLike, *, name: str, licence: str = "unspecified",
            citation: str = "", description: str = "", modality: str | None = None,
            metrics: dict[str, Any] | None = None, overwrite: bool = False) -> ZooEntry:
    """Turn a ``save_pretrained`` directory into a catalogue entry plus verified files under ``root``.

    Args:
        model_dir: directory with ``config.json``, ``model.safetensors``, ``README.md`` and preprocessing
            assets (copied as they are; links and special files are refused).
        root: the zoo root (a local or shared directory, or one a file server serves).
        name: the entry's name, ``family/arch.tag``.
        licence: licence of the weights (SPDX identifier where possible).
        citation: how to cite the model.
        description: one line saying what the model is.
        modality: ``word_vectors``, ``text`` or ``vision``; read from ``config["backbone"]["modality"]``
            when not given.
        metrics: reported metrics; ``config["metrics"]`` when not given.
        overwrite: replace an entry of the same name instead of refusing.

    Returns:
        The new entry, as :func:`~transferkit.zoo.info` would return it after ``add_catalogue(root)``.

    Raises:
        PublishError: bad name, no ``config.json``, unknown modality, name already published.
    """
    model_dir, root = Path(model_dir), Path(root)
    if not NAME_RE.match(name):
        raise PublishError(f"name {name!r} must look like 'family/arch.tag' (lowercase, digits, -_.)")
    config = _read_config(model_dir)
    backbone = config.get("backbone") if isinstance(config.get("backbone"), dict) else {}
    modality = modality or backbone.get("modality")
    if modality not in MODALITIES:
        raise PublishError(f"modality {modality!r} is not one of {MODALITIES}; config.json has no "
                           "backbone.modality, pass modality=...")
    relatives = _files_of(model_dir)
    # What the backbone needs to preprocess inputs travels with the entry, as far as config.json says.
    found = config.get("preprocess") or backbone.get("preprocess")
    preprocess = {"preprocess": found} if isinstance(found, dict) else {}
    family, _, leaf = name.partition("/")
    catalogue_path = root / "catalogue.json"
    with _root_lock(root):
        data: dict[str, Any] = {"schema": SCHEMA_VERSION, "model": []}
        if catalogue_path.is_file():
            data = json.loads(catalogue_path.read_text(encoding="utf-8"))
        if any(e.get("name") == name for e in data.get("model", [])) and not overwrite:
            raise PublishError(f"{name!r} is already published in {catalogue_path}; pass overwrite=True "
                               "(--overwrite) to replace it, or choose a new tag")
        dest = root / "files" / family / leaf
        safe_files.clean_stale(dest, locked=True)  # the root lock is held: leftovers are a killed publish's
        # The entry's files are staged beside ``dest`` and swapped in crash-safely, modes following the umask.
        with safe_files.replacing_dir(dest) as staging:
            files = []
            for rel in relatives:
                digest, size = _copy_hashed(model_dir / rel, staging / rel)
                files.append({"path": rel, "size": size, "sha256": digest})
            raw: dict[str, Any] = {
                "name": name, "modality": modality, "source": "transferkit", "layout": "directory",
                "description": description or f"{backbone.get('source') or 'transferkit'} model published "
                                              "with transferkit",
                "licence": licence, "citation": citation or "unpublished (team zoo)", "integrity": "sha256",
                "card": "README.md",
                "preprocessing": {"assets": [r for r in relatives if r not in _WEIGHT_FILES], **preprocess},
                "recipe": {"backbone": backbone, **({"training": config["training"]}
                                                    if isinstance(config.get("training"), dict) else {})},
                "metrics": metrics if metrics is not None else (config.get("metrics") or {}),
            }
            if "README.md" not in relatives:
                (staging / "README.md").write_text(_card(raw, files), encoding="utf-8")
                files.append({"path": "README.md", "size": (staging / "README.md").stat().st_size,
                              "sha256": hashlib.sha256((staging / "README.md").read_bytes()).hexdigest()})
            raw["files"] = [{**f, "urls": [quote(f"files/{family}/{leaf}/{f['path']}")]} for f in files]
            problems = validate_entry(raw)
            if problems:
                raise PublishError(f"{name}: the entry would be invalid: " + "; ".join(problems))
        data["model"] = [e for e in data.get("model", []) if e.get("name") != name] + [raw]
        safe_files.write_json_atomic(catalogue_path, data)
    return entry_from_raw(raw, base=catalogue_path.resolve().as_uri(), origin=str(catalogue_path))
