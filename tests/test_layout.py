"""Where things live: data readers in ``transferkit.data``, word-vector trainers beside their backbones, and
the old ``transferkit.tasks.*`` paths re-exporting the very same objects."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import transferkit

PACKAGE = Path(transferkit.__file__).parent

# old path -> (new home, names that must be the same object at both)
MOVED = {
    "transferkit.tasks.corpus": ("transferkit.data.corpus", ["LineCorpus", "open_corpus", "count_words",
                                                             "check_vocabulary", "utf8_lines", "corpus_tokenizer"]),
    "transferkit.tasks.text_corpus": ("transferkit.data.text_corpus", ["TextCorpus", "SentencePairs", "CorpusError"]),
    "transferkit.tasks.vision_data": ("transferkit.data.images", ["ImageFolderCorpus", "unlabelled_images"]),
    "transferkit.tasks.word_vectors": ("transferkit.backbones.word_vectors.training",
                                       ["train_word2vec", "train_fasttext", "train_glove", "build_cooccurrence",
                                        "fit_glove", "default_workers", "MAX_SENTENCE"]),
    "transferkit.tasks.glove": ("transferkit.backbones.word_vectors.glove_training",
                                ["Cooccurrence", "GloveModel", "build_cooccurrence", "fit_glove", "train_glove"]),
}

# every name `from transferkit.data import X` gave when data.py was one module
DATA_NAMES = ["IMAGE_SUFFIXES", "COLUMN_HINT", "LabelledData", "load_labelled", "load_inputs", "first", "is_array",
              "as_table", "find_column", "clean_label", "label_type", "class_names", "infer_label_names", "label_ids",
              "looks_like_image_path", "check_inputs", "preprocess_named", "stratified_split"]

WORD_VECTOR_NAMES = ["TOKEN_PATTERN", "POOLINGS", "PAD", "WordTokenizer", "WordVectorEncoder", "from_vectors",
                     "check_pooling", "sniff_format", "FORMATS", "FASTTEXT_MAGIC", "save_assets", "word2vec", "glove",
                     "fasttext", "glove_6b_50d", "_check_texts", "_is_binary_word2vec"]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_task_paths_re_export_the_moved_objects(old):
    new, names = MOVED[old]
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), f"{old}.{name} is not {new}.{name}"
    assert set(names) <= set(old_module.__all__)


def test_pixel_helpers_keep_their_old_path():
    from transferkit.tasks import pixels, vision, vision_data

    assert vision_data.Pixels is pixels.Pixels is vision.Pixels and vision_data.probe is pixels.probe


def test_transferkit_data_keeps_every_name_it_had():
    import transferkit.data as data

    assert [n for n in DATA_NAMES if not hasattr(data, n)] == []
    assert data.LabelledData is transferkit.LabelledData and data.load_labelled is transferkit.load_labelled
    assert data.LineCorpus is importlib.import_module("transferkit.data.corpus").LineCorpus


def test_word_vector_backbones_keep_their_import_path():
    import transferkit.backbones.word_vectors as wv
    from transferkit.backbones.word_vectors import source

    assert [n for n in WORD_VECTOR_NAMES if not hasattr(wv, n)] == []
    assert wv.from_vectors is source.from_vectors and callable(wv.glove)  # the source, not the trainer module
    assert "glove" in transferkit.list_backbones("glove:*")[0]


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports at import time (not inside functions), absolute, e.g. ``transferkit.errors``."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)  # a/b/__init__.py -> a.b.__init__
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level)[0] + "." if node.level else ""
            found.add(base + (node.module or ""))
    return found


def test_data_imports_point_down():
    """``transferkit.data`` sits below backbones, heads, tasks and the trainer: it imports none of them."""
    above = ("transferkit.backbones", "transferkit.tasks", "transferkit.heads", "transferkit.model",
             "transferkit.trainer", "transferkit.cli", "transferkit.zoo")
    files = sorted((PACKAGE / "data").glob("*.py"))
    assert len(files) >= 8
    wrong = {f.name: sorted(m for m in _module_level_imports(f) if m.startswith(above)) for f in files}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_tasks_hold_no_data_readers_or_trainers():
    """What is left under ``tasks/`` with the old names is only re-exports: no function or class defined there."""
    for name in ("corpus", "text_corpus", "vision_data", "word_vectors", "glove"):
        tree = ast.parse((PACKAGE / "tasks" / f"{name}.py").read_text(encoding="utf-8"))
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], f"tasks/{name}.py defines {defined}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The transferkit modules ``path`` imports anywhere in it (module level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "transferkit":
                found.add(target)
    return found


def test_no_import_cycles():
    """Imports point down (STYLE: "No import cycles"), lazy imports inside functions included."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}
    # A package's __init__ re-exporting its own modules is not a cycle through them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and files[t].name == "__init__.py")}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []
