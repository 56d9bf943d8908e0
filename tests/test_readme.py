"""The README's `Use` example runs offline as written (with the assets `make test` installs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def use_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Use", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.assets
def test_use_example_runs_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(use_example(), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "['pos']"
    assert (tmp_path / "runs" / "sentiment" / "model.safetensors").is_file()
