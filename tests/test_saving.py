"""Saving never destroys what transferkit did not write: refusals, crash-safe replace under SIGKILL, locks, umask.

The kill and lock tests fork the test process (a real child process, killed with a real SIGKILL at a step
named through the test hook ``transferkit.files._on_step``): a fork costs milliseconds where a fresh
interpreter importing torch costs seconds.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import stat
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit import errors, files
from transferkit.backbones.word_vectors import from_vectors
from transferkit.saving import check_output, load_saved_backbone, save_pretrained
from transferkit.trainer import checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill and lock tests fork a child process")

VOCAB = ["the", "cat", "sat", "on", "mat"]


def backbone(value: float):
    """A five-word backbone whose every vector component is ``value``: what a saved copy holds is readable."""
    return from_vectors(VOCAB, np.full((len(VOCAB), 4), value, np.float32), source="glove", name="t")


def value_of(directory) -> float:
    """The value a saved backbone was built with (loading it checks it is complete)."""
    state = load_saved_backbone(directory).state_dict()
    return float(next(v for k, v in state.items() if k.endswith("embeddings.weight"))[1, 0])


def leftovers(directory: Path) -> list[str]:
    """What the library left beside ``directory``: temporary and old copies, lock files."""
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}."))


def in_child(fn, timeout: float = 60.0) -> int:
    """Run ``fn`` in a forked child; returns its wait status (a child that hangs is killed and fails)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child process hung")
        time.sleep(0.005)


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def exit_code(status: int) -> int:
    assert os.WIFEXITED(status), f"the child did not exit normally (status {status})"
    return os.WEXITSTATUS(status)


def kill_at(step: str, *, fallback: bool):
    """A child's body: save value 2.0, SIGKILLed at ``step`` (the exchange path, or the fallback forced)."""
    def body(target: Path):
        if fallback:
            files._exchange = lambda a, b: False
        files._on_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
        save_pretrained(target, backbone(2.0))
    return body


def exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return files._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


# ------------------------------------------------------------------------------------------ refusals

def _user_dir(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_bytes(b"my thesis \x00\xff")
    return tmp_path / "thesis"


def _user_dir_intact(tmp_path):
    assert [p.name for p in (tmp_path / "thesis").iterdir()] == ["chapter1.tex"]
    assert (tmp_path / "thesis" / "chapter1.tex").read_bytes() == b"my thesis \x00\xff"


def _plain_file(tmp_path):
    (tmp_path / "out").write_bytes(b"data\n")
    return tmp_path / "out"


def _plain_file_intact(tmp_path):
    assert (tmp_path / "out").read_bytes() == b"data\n"


def _dot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return "."


def _cwd_ancestor(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    return tmp_path / "a"


def _dotdot(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    return ".."


def _home(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _inside_model(tmp_path):
    save_pretrained(tmp_path / "model", backbone(1.0))
    return tmp_path / "model" / "sub"


def _link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return tmp_path / "link"


def _below_a_file(tmp_path):
    (tmp_path / "out").write_bytes(b"data\n")
    return tmp_path / "out" / "model"


REFUSED = [  # (case, make the target, error, part of the message, check afterwards, also with overwrite)
    ("dir-with-user-files", _user_dir, errors.OutputExistsError, "not a transferkit model.*overwrite=True / --overwrite",
     _user_dir_intact, False),
    ("plain-file", _plain_file, errors.OutputExistsError, "is a file", _plain_file_intact, True),
    ("below-a-file", _below_a_file, errors.OutputError, "is a file", _plain_file_intact, True),
    ("dot", _dot, errors.OutputError, "current directory", None, True),
    ("cwd-ancestor", _cwd_ancestor, errors.OutputError, "current directory", None, True),
    ("dotdot", _dotdot, errors.OutputError, "current directory", None, True),
    ("root", lambda t: "/", errors.OutputError, "root", None, True),
    ("home", _home, errors.OutputError, "home directory", None, True),
    ("inside-a-model", _inside_model, errors.OutputError, "inside the transferkit model directory", None, True),
    ("symlink", _link, errors.OutputExistsError, "symbolic link", None, True),
]


@pytest.mark.parametrize("case,make,error,message,check,with_overwrite", REFUSED, ids=[c[0] for c in REFUSED])
def test_unsafe_targets_are_refused_and_left_as_they_were(tmp_path, monkeypatch, case, make, error, message, check,
                                                          with_overwrite):
    target = make(tmp_path, monkeypatch) if make.__code__.co_argcount == 2 else make(tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    for overwrite in (False, True) if with_overwrite else (False,):
        with pytest.raises(error, match=message):
            check_output(target, overwrite=overwrite)
        with pytest.raises(error, match=message):
            save_pretrained(target, backbone(2.0), overwrite=overwrite)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written
    if check is not None:
        check(tmp_path)


def test_refusals_are_named_errors_that_keep_working_with_builtin_excepts(tmp_path):
    assert issubclass(errors.OutputExistsError, FileExistsError) and issubclass(errors.OutputError, OSError)
    with pytest.raises(FileExistsError):
        tk.TransferModel(backbone(1.0), tk.heads.Classification(2)).save_pretrained(_user_dir(tmp_path))


def test_empty_dir_model_dir_and_overwrite_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert save_pretrained(tmp_path / "empty", backbone(1.0)) == tmp_path / "empty"
    assert value_of(tmp_path / "empty") == 1.0
    save_pretrained(tmp_path / "empty", backbone(2.0))  # a transferkit model is replaced without overwrite
    assert value_of(tmp_path / "empty") == 2.0
    target = _user_dir(tmp_path)
    assert check_output(target, overwrite=True) == target  # checks only: nothing changed
    _user_dir_intact(tmp_path)
    save_pretrained(target, backbone(3.0), overwrite=True)  # the whole directory is replaced
    assert value_of(target) == 3.0 and not (target / "chapter1.tex").exists()
    assert leftovers(target) == [] and leftovers(tmp_path / "empty") == []
    nested = tmp_path / "new" / "deeper" / "model"  # missing parents are created
    save_pretrained(nested, backbone(4.0))
    assert value_of(nested) == 4.0


def test_a_failed_save_keeps_the_old_model_and_leaves_no_temporary_directory(tmp_path, monkeypatch):
    target = tmp_path / "model"
    save_pretrained(target, backbone(1.0))
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(target, backbone(2.0))
    assert value_of(target) == 1.0 and leftovers(target) == []


# ------------------------------------------------------------------------------- kills mid-replace

KILLS = [  # (path, step, which model DIR holds afterwards)
    ("exchange", "staged", 1.0), ("exchange", "exchanged", 2.0),
    ("fallback", "staged", 1.0), ("fallback", "moved-aside", 1.0), ("fallback", "renamed", 2.0),
]


@pytest.mark.parametrize("path,step,expected", KILLS, ids=[f"{p}-{s}" for p, s, _ in KILLS])
def test_a_sigkill_at_any_step_of_the_replace_leaves_a_complete_model(tmp_path, path, step, expected):
    if path == "exchange" and not exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    target = tmp_path / "model"
    save_pretrained(target, backbone(1.0))
    status = in_child(lambda: kill_at(step, fallback=path == "fallback")(target))
    assert killed(status), f"the child was not killed at {step!r} (status {status})"
    assert leftovers(target)  # the kill did leave something behind (a temporary or an old copy)
    assert value_of(target) == expected  # after the recovery a load does: a complete model
    save_pretrained(target, backbone(3.0))
    assert value_of(target) == 3.0
    assert leftovers(target) == []  # the next save cleaned what the killed one left


def test_a_kill_during_the_first_save_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "model"
    assert killed(in_child(lambda: kill_at("staged", fallback=False)(target)))
    assert not target.exists()
    with pytest.raises(errors.CheckpointError, match="no config.json"):
        load_saved_backbone(target)
    save_pretrained(target, backbone(3.0))
    assert value_of(target) == 3.0 and leftovers(target) == []


def test_a_model_left_aside_is_restored_by_check_output_and_from_pretrained(tmp_path):
    target = tmp_path / "model"
    model = tk.TransferModel(backbone(1.0), tk.heads.Classification(2))
    model.save_pretrained(target)
    assert killed(in_child(lambda: kill_at("moved-aside", fallback=True)(target)))
    assert not target.exists()
    assert check_output(target) == target and target.is_dir()  # restored
    os.rename(target, tmp_path / f".model.old-999999-{'a' * 8}")  # left aside again
    assert tk.TransferModel.from_pretrained(target).head.num_classes == 2


def test_renameat2_refused_by_the_filesystem_falls_back(tmp_path, monkeypatch):
    def einval(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(files, "_renameat2", einval)
    steps = []
    monkeypatch.setattr(files, "_on_step", steps.append)
    save_pretrained(tmp_path / "m", backbone(1.0))
    save_pretrained(tmp_path / "m", backbone(2.0))
    assert steps == ["staged", "staged", "moved-aside", "renamed"] and value_of(tmp_path / "m") == 2.0


def test_stale_cleanup_touches_only_the_librarys_names_of_dead_processes(tmp_path):
    target = tmp_path / "model"
    save_pretrained(target, backbone(1.0))
    live = tmp_path / f".model.tmp-{os.getppid()}-{'b' * 8}"  # a live process's temporary directory
    mine = [tmp_path / ".model.tmp-mine", tmp_path / ".model.notes", tmp_path / ".other.tmp-1-aaaaaaaa"]
    for p in [live, *mine]:
        p.mkdir()
    dead = tmp_path / f".model.tmp-999999-{'c' * 8}"
    dead.mkdir()
    files.clean_stale(target, locked=False)
    assert live.exists() and all(p.exists() for p in mine) and not dead.exists()
    files.clean_stale(target, locked=True)  # under the lock every leftover of this target is stale
    assert not live.exists() and all(p.exists() for p in mine)


# ------------------------------------------------------------------------------------------- locks

def test_a_second_writer_is_refused_while_the_first_saves_and_the_result_is_one_model(tmp_path):
    target, ready, go = tmp_path / "model", tmp_path / "ready", tmp_path / "go"
    save_pretrained(target, backbone(1.0))

    def slow_writer():
        def wait(step):
            if step == "staged":
                ready.touch()
                deadline = time.monotonic() + 30
                while not go.exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
        files._on_step = wait
        save_pretrained(target, backbone(2.0))

    pid = os.fork()
    if pid == 0:
        try:
            slow_writer()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the first writer never started"
            time.sleep(0.005)
        with pytest.raises(errors.OutputLockedError, match=rf"{re.escape(str(target))}.*pid {pid}"):
            save_pretrained(target, backbone(3.0))
        assert value_of(target) == 1.0  # untouched while the first writer is between steps
    finally:
        go.touch()
        _, status = os.waitpid(pid, 0)
    assert exit_code(status) == 0
    assert value_of(target) == 2.0 and leftovers(target) == []  # the first writer's model, complete


def test_output_lock_is_reentrant_in_its_thread_and_exclusive_elsewhere(tmp_path):
    target = tmp_path / "model"
    with files.output_lock(target):
        save_pretrained(target, backbone(1.0))  # inside a CLI run that holds the lock
        assert files.holds_lock(target)

        def other_process():
            try:
                save_pretrained(target, backbone(2.0))
            except errors.OutputLockedError:
                os._exit(7)

        assert exit_code(in_child(other_process)) == 7
        seen = []
        thread = threading.Thread(target=lambda: seen.append(_try_lock(target)))
        thread.start(), thread.join()
        assert seen == ["locked"]
    assert not files.holds_lock(target) and leftovers(target) == []  # the lock file goes with the lock
    assert value_of(target) == 1.0


def _try_lock(target):
    try:
        with files.output_lock(target):
            return "acquired"
    except errors.OutputLockedError:
        return "locked"


# ---------------------------------------------------------------------------------------- run dirs

def test_run_dirs_are_claimed_only_when_empty_or_transferkits(tmp_path, monkeypatch):
    run = files.claim_run_dir(tmp_path / "run", resume=False)
    assert run == tmp_path / "run" and (run / files.RUN_MARKER).is_file()
    (run / "metrics.csv").write_text("epoch\n")
    assert files.claim_run_dir(run, resume=True) == run  # marked: the trainer rewrites its own files
    legacy = tmp_path / "legacy"  # written before the marker existed: only run files
    (legacy / "checkpoint").mkdir(parents=True)
    (legacy / "steps.csv").write_text("step\n")
    assert files.claim_run_dir(legacy, resume=True) == legacy
    with pytest.raises(errors.OutputExistsError, match="not a transferkit run directory"):
        files.claim_run_dir(_user_dir(tmp_path), resume=False)
    _user_dir_intact(tmp_path)
    with pytest.raises(errors.OutputExistsError, match="is a file"):
        files.claim_run_dir(_plain_file(tmp_path), resume=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.OutputError, match="current directory"):
        files.claim_run_dir(".", resume=False)
    with files.output_lock(run):
        def other_process():
            try:
                with files.output_lock(run):
                    pass
            except errors.OutputLockedError as e:
                os._exit(7 if str(run) in str(e) else 1)
        assert exit_code(in_child(other_process)) == 7


# ------------------------------------------------------------------------------------------- modes

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_saved_models_and_published_zoos_follow_the_umask(tmp_path, mask):
    from transferkit import zoo

    model, root = tmp_path / "model", tmp_path / "zoo"

    def write():
        os.umask(mask)
        save_pretrained(model, backbone(1.0))
        save_pretrained(model, backbone(2.0))  # a replace too
        zoo.publish(model, root, name="team/tiny.t1")
        zoo.publish(model, root, name="team/tiny.t1", overwrite=True)

    assert exit_code(in_child(write)) == 0
    seen = {}
    for top in (model, root):
        for path in [top, *top.rglob("*")]:
            seen[path.relative_to(tmp_path).as_posix()] = stat.S_IMODE(path.stat().st_mode)
            want = (0o777 if path.is_dir() else 0o666) & ~mask
            assert stat.S_IMODE(path.stat().st_mode) == want, f"{path}: {oct(path.stat().st_mode)}"
    assert "zoo/catalogue.json" in seen and "zoo/files/team/tiny.t1/model.safetensors" in seen
    assert seen["zoo/catalogue.json"] == 0o666 & ~mask  # mkstemp alone would make it 0600


def test_atomic_json_files_follow_the_umask(tmp_path):
    path = files.write_json_atomic(tmp_path / "a" / "x.json", {"b": 1, "a": [2]})
    assert json.loads(path.read_text()) == {"a": [2], "b": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files.current_umask()
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


# ---------------------------------------------------------------------------------- damaged weights

def _junk(path: Path) -> None:
    path.write_bytes(b"this is not a safetensors file")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage", [_junk, _truncated], ids=["junk", "truncated"])
def test_damaged_model_weights_are_a_named_error(tmp_path, damage):
    target = tmp_path / "model"
    tk.TransferModel(backbone(1.0), tk.heads.Classification(2)).save_pretrained(target)
    damage(target / "model.safetensors")
    for load in (load_saved_backbone, tk.load_backbone, tk.TransferModel.from_pretrained):
        with pytest.raises(errors.FileFormatError, match=r"model\.safetensors is damaged.*again"):
            load(target)


@pytest.mark.parametrize("damage", [_junk, _truncated], ids=["junk", "truncated"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
def test_damaged_checkpoint_files_are_a_named_error(tmp_path, damage, name):
    task = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(task.parameters())
    task(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = checkpoint.save(tmp_path, task, optimizer, None, {"epoch": 1})
    assert checkpoint.find(tmp_path) == path
    damage(path / name)
    with pytest.raises(errors.CheckpointError, match=rf"{name} is damaged.*start afresh"):
        state, _ = checkpoint.load(path, task, optimizer)
        checkpoint.restore_rng(path, state)


def test_a_checkpoint_left_aside_by_a_kill_is_found_and_the_next_save_cleans_up(tmp_path):
    task = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    path = checkpoint.save(tmp_path, task, optimizer, None, {"epoch": 1})
    os.rename(path, tmp_path / f".checkpoint.old-999999-{'d' * 8}")  # as a kill mid-fallback leaves it
    (tmp_path / f".checkpoint.tmp-999999-{'e' * 8}").mkdir()
    assert checkpoint.find(tmp_path) == path and (path / "state.json").is_file()
    checkpoint.save(tmp_path, task, optimizer, None, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
