"""Files the harness writes (core/atomic.py): permissions follow the umask, and the temporary files of
killed writers are removed by the documented rule without touching a live writer's; plus one-line
messages for bad datasets before pre-training, through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from core import atomic
from core.atomic import (atomic_path, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text,
                         remove_stale_temp_files)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield lambda m: os.umask(m)
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


# ---------------------------------------------------------------------------------------------------
# Permissions


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_atomic_writer_respects_the_umask(tmp_path, umask, mask, expected):
    from envs.datasets import TransitionDataset, write_d4rl_hdf5
    from envs.robomimic_data import Demo, write_robomimic_hdf5

    umask(mask)
    out = tmp_path / "new_dir"
    atomic_write_text(out / "a.txt", "x")
    atomic_write_json(out / "b.json", {"a": 1})
    atomic_write_csv(out / "c.csv", [{"a": 1}])
    atomic_torch_save(out / "d.pt", {"a": 1})
    n = 6
    ds = TransitionDataset(np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), np.zeros(n, np.float32),
                           np.zeros(n, bool), np.zeros(n, bool))
    write_d4rl_hdf5(out / "e.hdf5", ds, sidecar={"checksum": ds.checksum})
    demo = Demo({"k": np.zeros((4, 2))}, np.zeros((3, 1)), np.zeros(3), np.zeros((3, 2)))
    write_robomimic_hdf5(out / "f.hdf5", [demo], {"env_name": "Lift"}, {"train": ["demo_0"], "valid": []})
    files = sorted(out.iterdir())
    assert [p.name for p in files] == ["a.txt", "b.json", "c.csv", "d.pt", "e.hdf5", "e.json", "f.hdf5"]
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(expected) for p in files}
    assert _mode(out) == 0o777 & ~mask  # the directory made for them too


def test_overwriting_keeps_following_the_umask(tmp_path, umask):
    p = tmp_path / "r.json"
    umask(0o077)
    atomic_write_json(p, 1)
    umask(0o022)
    atomic_write_json(p, 2)
    assert _mode(p) == 0o644 and p.read_text().strip() == "2"


def test_failed_write_leaves_nothing(tmp_path):
    atomic_write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "keep.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "old"


# ---------------------------------------------------------------------------------------------------
# Stale temporary files


def _old(p: Path) -> Path:
    os.utime(p, (1_000_000, 1_000_000))
    return p


def test_only_old_unlocked_files_of_the_pattern_are_removed(tmp_path):
    stale = tmp_path / ".eval.csv.ab12_xyz.tmp"
    stale.write_text("x")
    _old(stale)
    fd, mk = tempfile.mkstemp(dir=tmp_path, prefix=".last.pt.", suffix=".tmp")  # the old writer's names
    os.close(fd)
    _old(Path(mk))
    young = tmp_path / ".eval.csv.young123.tmp"
    young.write_text("x")
    keep = {"eval.csv", ".eval.csv.tmp", "eval.csv.ab12_xyz.tmp", ".eval.csv.AB12_XYZ.tmp", ".x.abc.tmp",
            "notes.tmp"}
    for name in keep:
        (tmp_path / name).write_text("x")
        _old(tmp_path / name)
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    _old(tmp_path / ".dir.abcdefgh.tmp")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, Path(mk).name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep | {young.name, ".dir.abcdefgh.tmp"})
    # the age threshold is a parameter; a missing directory is not an error
    assert [p.name for p in remove_stale_temp_files(tmp_path, min_age_s=0)] == [young.name]
    assert remove_stale_temp_files(tmp_path / "nope") == []


def test_recursive_cleanup_of_a_run_directory(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    a = tmp_path / ".metrics.csv.q1w2e3r4.tmp"
    b = ck / ".last.pt.q1w2e3r4.tmp"
    for p in (a, b):
        p.write_bytes(b"partial checkpoint")
        _old(p)
    assert remove_stale_temp_files(tmp_path) == [a]
    assert remove_stale_temp_files(tmp_path, recursive=True) == [b]


def test_a_write_in_progress_in_this_process_is_kept(tmp_path):
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
        _old(tmp)
        assert remove_stale_temp_files(tmp_path, min_age_s=0) == [] and tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


WRITER = textwrap.dedent("""
    import fcntl, os, sys, time
    from pathlib import Path
    if sys.argv[2] == "posix":
        del fcntl.F_OFD_SETLK  # the fallback lock
    from core.atomic import atomic_path
    with atomic_path(Path(sys.argv[1])) as tmp:
        if sys.argv[2] == "ofd":
            tmp.write_bytes(b"partial")  # a library opening and closing the file keeps an OFD lock
        os.utime(tmp, (1_000_000, 1_000_000))  # looks ancient: only the lock says its writer is alive
        print(tmp, flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("kind", ["ofd", "posix"])
def test_a_live_writer_in_another_process_keeps_its_file_until_it_is_killed(tmp_path, kind):
    target = tmp_path / "policy.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.parent == tmp_path and tmp.exists(), tmp
        assert remove_stale_temp_files(tmp_path, min_age_s=0) == []
        assert tmp.exists()
        os.kill(proc.pid, signal.SIGKILL)  # the writer dies mid-write: its temp file is litter now
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert tmp.exists() and not target.exists()
    assert remove_stale_temp_files(tmp_path) == [tmp]
    assert list(tmp_path.iterdir()) == []


def test_a_file_whose_lock_cannot_be_tested_is_kept_for_a_day(tmp_path, monkeypatch):
    p = tmp_path / ".a.json.abcdefgh.tmp"
    p.write_text("x")
    os.utime(p, (os.path.getmtime(p) - 3600,) * 2)  # an hour old
    monkeypatch.setattr(atomic, "_writer_alive", lambda path: None)
    assert remove_stale_temp_files(tmp_path) == []
    _old(p)
    assert remove_stale_temp_files(tmp_path) == [p]


# ---------------------------------------------------------------------------------------------------
# Bad datasets are one-line errors before pre-training (through the CLI)


def _d4rl(path: Path, n: int, obs=None) -> Path:
    with h5py.File(path, "w") as f:
        f["observations"] = obs if obs is not None else np.zeros((n, 11), np.float32)
        f["actions"] = np.zeros((n, 3), np.float32)
        f["rewards"] = np.zeros(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.zeros(n, bool)
    return path


def _one_line_error(code, err, needle):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len([l for l in lines if l.startswith("error:")]) == 1 and needle in err, err


@pytest.mark.parametrize("case, needle", [
    ("text", "observations holds |S1 values (text, objects or records), not numbers"),
    ("short", "has no action chunk of"),
    ("dir", "is a directory, not a dataset file"),
])
def test_bad_datasets_stop_bench_pretrain_with_one_line(cli, tmp_path, monkeypatch, case, needle):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    if case == "text":
        source = _d4rl(tmp_path / "text.hdf5", 12, np.array([[b"x"] * 11] * 12))
    elif case == "short":
        source = _d4rl(tmp_path / "short.hdf5", 2)
    else:
        source = tmp_path / "data"
        source.mkdir()
    code, _, err = cli("pretrain", "--task", "hopper", "--preset", "smoke", "--set", f"data.source={source}")
    _one_line_error(code, err, needle)
    assert not (tmp_path / "cache" / "pretrained").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_the_remake_command_a_corrupt_toy_dataset_names_works(cli, tmp_path, monkeypatch):
    """`bench data make TASK --force`, which the corrupt-dataset message names, remakes a toy task's data."""
    import json

    from core.errors import BenchError
    from envs.datasets import DataConfig, load_dataset

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    code, out, err = cli("data", "make", "point_reach", "--n-transitions", "200")
    assert code == 0, err
    (path,) = (tmp_path / "cache" / "data" / "point_reach").glob("*.hdf5")
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(dict(meta, checksum="0" * 64)))
    data = DataConfig(n_transitions=200)
    with pytest.raises(BenchError, match=r"corrupt \(checksum mismatch\); remake it with "
                                         r"`bench data make point_reach --force`"):
        load_dataset("point_reach", "builtin", 200, 0, make_missing=False, data=data)
    code, out, err = cli("data", "make", "point_reach", "--n-transitions", "200", "--force")
    assert code == 0, err
    assert load_dataset("point_reach", "builtin", 200, 0, make_missing=False, data=data).checksum == meta["checksum"]
