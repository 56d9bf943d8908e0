"""The built-in zoo catalogue ships inside the wheel, and a missing one is an error, not an empty zoo.

The wheel test builds a wheel from a copy of the source tree, installs it with ``--no-deps --no-index``
into a fresh virtual environment that borrows this environment's installed dependencies through a ``.pth``
file (no network), and checks that ``transferkit zoo list`` there lists every entry of the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from transferkit import zoo
from transferkit.errors import TransferkitError
from transferkit.zoo import catalogue as catalogue_mod

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_CATALOGUES = REPO_ROOT / "transferkit" / "zoo" / "catalogues"


def _source_names() -> set[str]:
    """Entry names read straight from the TOML files of the source tree."""
    files = sorted(SOURCE_CATALOGUES.glob("*.toml"))
    assert files, f"no built-in catalogue in {SOURCE_CATALOGUES}"
    return {raw["name"] for f in files for raw in tomllib.loads(f.read_text())["model"]}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def clean_catalogues(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRANSFERKIT_ZOO_CATALOGUES", raising=False)
    catalogue_mod.reset_catalogues()
    yield
    catalogue_mod.reset_catalogues()


def test_editable_checkout_reads_the_catalogue_as_package_data(clean_catalogues):
    root = catalogue_mod.builtin_catalogue_dir()
    assert Path(str(root)).resolve() == SOURCE_CATALOGUES.resolve()
    assert set(zoo.list_models()) == _source_names()


@pytest.mark.parametrize("layout", ["missing", "no-toml", "no-entries"])
def test_missing_or_empty_builtin_catalogue_is_an_error(clean_catalogues, tmp_path, monkeypatch, layout):
    root = tmp_path / "catalogues"
    if layout != "missing":
        root.mkdir()
        (root / "README.txt").write_text("not a catalogue")
    if layout == "no-entries":
        (root / "empty.toml").write_text("schema = 1\n")
    monkeypatch.setattr(catalogue_mod, "builtin_catalogue_dir", lambda: root)
    with pytest.raises(zoo.CatalogueError, match="built-in zoo catalogue is missing or empty") as raised:
        zoo.list_models()
    assert isinstance(raised.value, TransferkitError)
    assert "reinstall transferkit" in str(raised.value)


def _copy_source(dest: Path) -> Path:
    """Copy what a wheel is built from, so the build writes nothing into the shared checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "transferkit", dest / "transferkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def test_wheel_ships_the_catalogue_and_a_fresh_install_lists_every_entry(tmp_path):
    expected = _source_names()
    src = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--quiet", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("transferkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name for n in zf.namelist() if n.startswith("transferkit/zoo/catalogues/")}
    assert shipped == {f.name for f in SOURCE_CATALOGUES.glob("*.toml")}

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--quiet", str(wheel)])
    # Only after the install: borrow this environment's dependencies. The directory a .pth line adds is
    # not scanned for .pth files, so this environment's editable transferkit finder is not activated,
    # and the new site-packages comes first on sys.path anyway.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_transferkit_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "TRANSFERKIT_ZOO_CATALOGUES", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFERKIT_OFFLINE="1", TRANSFERKIT_HOME=str(tmp_path / "home"))
    probe = "import transferkit, transferkit.zoo.catalogue as c; print(transferkit.__file__); " \
            "print(c.builtin_catalogue_dir())"
    where = _run([str(python), "-c", probe], env=env, cwd=tmp_path)
    module_file, catalogue_dir = where.stdout.split()
    assert Path(module_file).resolve().is_relative_to(site.resolve()), module_file
    assert Path(catalogue_dir).resolve().is_relative_to(site.resolve()), catalogue_dir

    listed = _run([str(venv / "bin" / "transferkit"), "zoo", "list"], env=env, cwd=tmp_path).stdout
    lines = listed.splitlines()
    assert lines[0].split()[0] == "NAME"
    assert {line.split()[0] for line in lines[1:] if line.strip()} == expected
