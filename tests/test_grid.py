"""Grids of runs (bench/grid.py): spec and validation, local executor with skip/resume after a kill,
failure reporting, and the Ray executor on a real local Ray head. Real CLI subprocesses, smoke preset."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.errors import BenchError
from bench.grid import (GridRun, expand_grid, grid_status, load_grid_file, parse_seeds, run_grid, run_state)

REPO = Path(__file__).resolve().parents[1]


class Events:
    def __init__(self):
        self.items = []

    def __call__(self, kind, run, info):
        self.items.append((kind, run.run_id, info))

    def kinds(self, kind):
        return [(rid, info) for k, rid, info in self.items if k == kind]


def _iterations(run, root):
    with open(run.run_dir(root) / "metrics.csv", newline="") as f:
        return [int(float(r["iteration"])) for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------ spec, no runs


@pytest.mark.parametrize("text,expected", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("0-2,7", [0, 1, 2, 7]),
                                           (" 3 , 1-2 ,3", [1, 2, 3]), ("5", [5])])
def test_parse_seeds(text, expected):
    assert parse_seeds(text) == expected
    assert parse_seeds([4, 1, 4]) == [1, 4]


@pytest.mark.parametrize("bad", ["4-1", "a", "1-", "", "-3", "1,,2", "1-2-3", [], [-1], ["1"]])
def test_parse_seeds_malformed(bad):
    with pytest.raises(BenchError, match="seeds are non-negative integers and ranges"):
        parse_seeds(bad)


def test_expand_grid_deterministic(tmp_path):
    runs = expand_grid(["dppo"], ["hopper", "walker2d"], "1,0", "smoke", {"train.n_iterations": "3"})
    assert [r.run_id for r in runs] == ["hopper/dppo/seed0", "hopper/dppo/seed1",
                                        "walker2d/dppo/seed0", "walker2d/dppo/seed1"]
    r = runs[0]
    assert r == GridRun("dppo", "hopper", 0, "smoke", (("train.n_iterations", "3"),))
    assert hash(r) == hash(GridRun("dppo", "hopper", 0, "smoke", (("train.n_iterations", "3"),)))
    assert r.run_dir(tmp_path) == tmp_path / "runs" / "hopper" / "dppo" / "seed0"
    assert r.log_path(tmp_path) == tmp_path / "logs" / "hopper_dppo_seed0.log"
    cmd = r.command(tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "bench.cli"]
    assert cmd[-2:] == ["--set", "train.n_iterations=3"] and "--resume" in cmd and "--quiet" not in cmd
    assert [s["state"] for s in grid_status(runs, tmp_path)] == ["pending"] * 4
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,match", [
    ((["nope"], ["hopper"], "0", "smoke", {}), "unknown algorithm 'nope'"),
    ((["dppo"], ["nope"], "0", "smoke", {}), "unknown task"),
    ((["dppo"], ["hopper"], "0", "huge", {}), "unknown preset 'huge'"),
    ((["dppo"], ["hopper"], "0", "smoke", {"train.nope": "1"}), "unknown config key 'train.nope'"),
    ((["dppo"], ["hopper"], "0", "smoke", {"train.n_iterations": "x"}), "expected an integer"),
    ((["dppo"], ["hopper"], "0", "smoke", {"seed": "3"}), "cannot change seed"),
    (([], ["hopper"], "0", "smoke", {}), "no algos"),
])
def test_expand_grid_validation(args, match, tmp_path):
    with pytest.raises(BenchError, match=match):
        expand_grid(*args)
    assert not any(tmp_path.iterdir())


def test_grid_file(tmp_path):
    f = tmp_path / "grid.toml"
    f.write_text(textwrap.dedent("""
        algos = ["dppo"]
        tasks = ["hopper"]
        seeds = "0-1"
        preset = "smoke"
        workers = 2
        executor = "local"
        [set]
        "train.n_iterations" = 3
        eval.every = 1
        torch_threads = 1
    """))
    g = load_grid_file(f)
    assert [r.run_id for r in g["runs"]] == ["hopper/dppo/seed0", "hopper/dppo/seed1"]
    assert dict(g["runs"][0].overrides) == {"train.n_iterations": "3", "eval.every": "1", "torch_threads": "1"}
    assert g["workers"] == 2 and g["executor"] == "local"

    f.write_text('algos = ["dppo"]\ntasks = ["hopper"]\nseeds = [0]\nworkerz = 2\n')
    with pytest.raises(BenchError, match=r"unknown key\(s\) 'workerz'.*valid keys: algos, tasks, seeds"):
        load_grid_file(f)
    f.write_text('algos = ["dppo"]\ntasks = ["hopper"]\nseeds = "2-1"\n')
    with pytest.raises(BenchError, match="goes backwards"):
        load_grid_file(f)
    f.write_text('algos = ["dppo"]\ntasks = ["hopper"]\nseeds = [0]\n[set]\n"algo.nope" = 1\n')
    with pytest.raises(BenchError, match="unknown config key 'algo.nope'"):
        load_grid_file(f)
    f.write_text('algos = ["dppo"\n')
    with pytest.raises(BenchError, match="not valid TOML"):
        load_grid_file(f)
    with pytest.raises(BenchError, match="not found"):
        load_grid_file(tmp_path / "missing.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


def test_bad_executor_and_workers(tmp_path):
    runs = expand_grid(["dppo"], ["hopper"], "0", "smoke", {})
    with pytest.raises(BenchError, match="unknown executor"):
        run_grid(runs, tmp_path, executor="slurm")
    with pytest.raises(BenchError, match="bad workers"):
        run_grid(runs, tmp_path, workers=0)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------- local executor


@pytest.mark.slow
def test_local_grid_then_rerun_skips(tmp_path):
    root = tmp_path / "res"
    runs = expand_grid(["dppo"], ["hopper"], "0-1", "smoke", {})
    ev = Events()
    s = run_grid(runs, root, workers=2, on_event=ev)
    assert (s["completed"], s["failed"], s["skipped_complete"]) == (2, 0, 0), s
    assert sorted(rid for rid, _ in ev.kinds("start")) == [r.run_id for r in runs]
    assert sorted(rid for rid, _ in ev.kinds("done")) == [r.run_id for r in runs]
    for rid, info in ev.kinds("done"):
        assert info["exit_code"] == 0 and info["wall_s"] > 0 and Path(info["log"]).exists()
    for r in runs:
        assert run_state(r, root) == "complete"
        assert (root / "logs" / f"hopper_dppo_seed{r.seed}.log").exists()
    assert all(st["state"] == "complete" and st["iteration"] == 2 for st in grid_status(runs, root))

    ev2 = Events()
    s2 = run_grid(runs, root, workers=2, on_event=ev2)
    assert (s2["completed"], s2["failed"], s2["skipped_complete"]) == (0, 0, 2)
    assert [k for k, _, _ in ev2.items] == ["skip", "skip"]
    assert all(info["reason"] == "complete" for _, info in ev2.kinds("skip"))


@pytest.mark.slow
def test_kill_grid_and_resume(tmp_path):
    root = tmp_path / "res"
    sets = {"train.n_iterations": "12", "train.n_steps": "24", "eval.every": "4"}
    runs = expand_grid(["dppo"], ["hopper"], "0-1", "smoke", sets)
    driver = textwrap.dedent(f"""
        from bench.grid import expand_grid, run_grid
        runs = expand_grid(["dppo"], ["hopper"], "0-1", "smoke", {sets!r})
        run_grid(runs, {str(root)!r}, workers=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            if any((r.run_dir(root) / "checkpoints" / "last.pt").exists() for r in runs):
                break
            assert proc.poll() is None, "grid exited before any checkpoint"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 150 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)
    states = {r.run_id: run_state(r, root) for r in runs}
    unfinished = [r for r in runs if states[r.run_id] != "complete"]
    assert unfinished, states
    assert all(not (r.run_dir(root) / "summary.json").exists() for r in unfinished)

    ev = Events()
    s = run_grid(runs, root, workers=2, on_event=ev)
    assert s["failed"] == 0 and s["completed"] == len(unfinished), s
    assert sorted(rid for rid, _ in ev.kinds("start")) == sorted(r.run_id for r in unfinished)
    assert ev.kinds("progress"), "no progress events"
    for rid, info in ev.kinds("progress"):
        assert 1 <= info["iteration"] <= 12 and info["n_iterations"] == 12 and info["env_steps"] > 0
    for r in runs:
        assert run_state(r, root) == "complete"
        assert json.loads((r.run_dir(root) / "summary.json").read_text())["iterations"] == 12
        assert _iterations(r, root) == list(range(1, 13))
    resumed = [r for r in unfinished if "resuming" in r.log_path(root).read_text()]
    assert resumed, "".join(r.log_path(root).read_text() for r in unfinished)[-3000:]

    ev2 = Events()
    run_grid(runs, root, workers=2, on_event=ev2)
    assert [k for k, _, _ in ev2.items] == ["skip", "skip"]


@pytest.mark.slow
def test_failed_run_reported_others_complete(tmp_path):
    root = tmp_path / "res"
    bad = expand_grid(["dppo"], ["hopper"], "0", "smoke", {"data.source": str(tmp_path / "nonexistent.hdf5")})
    good = expand_grid(["dppo"], ["hopper"], "1", "smoke", {})
    ev = Events()
    s = run_grid(bad + good, root, workers=2, on_event=ev)
    assert (s["completed"], s["failed"]) == (1, 1), s
    (f,) = s["failed_runs"]
    assert f["run_id"] == "hopper/dppo/seed0" and f["exit_code"] == 2
    assert f["log"] == str(root / "logs" / "hopper_dppo_seed0.log")
    assert "nonexistent.hdf5" in f["tail"] and "error" in f["tail"]
    (rid, info), = ev.kinds("fail")
    assert rid == "hopper/dppo/seed0" and info["exit_code"] == 2 and "nonexistent.hdf5" in info["tail"]
    assert run_state(good[0], root) == "complete"
    assert run_state(bad[0], root) == "pending"


def test_running_elsewhere_is_skipped(tmp_path):
    root = tmp_path / "res"
    runs = expand_grid(["dppo"], ["hopper"], "0", "smoke", {})
    lock = runs[0].lock_path(root)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(lock)!r}, "w"); fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        ev = Events()
        s = run_grid(runs, root, workers=1, on_event=ev)
        assert s["running_elsewhere"] == 1 and s["completed"] == 0
        assert [(k, info.get("reason")) for k, _, info in ev.items] == [("skip", "running elsewhere")]
        assert grid_status(runs, root)[0]["state"] == "running"
        assert not runs[0].run_dir(root).exists()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------------------------ Ray


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_unreachable_fails_fast(tmp_path):
    runs = expand_grid(["dppo"], ["hopper"], "0", "smoke", {})
    t = time.time()
    with pytest.raises(BenchError, match="cannot reach the Ray cluster at 127.0.0.1"):
        run_grid(runs, tmp_path / "res", executor="ray", options={"address": f"127.0.0.1:{_free_port()}"})
    assert time.time() - t < 10
    assert not (tmp_path / "res").exists()


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_ray_executor(tmp_path_factory, monkeypatch):
    pytest.importorskip("ray")
    import ray._private.ray_constants as ray_constants

    # Keep the whole cluster on loopback: otherwise Ray swaps 127.0.0.1 for the machine's own network
    # address (its multi-node mode). `ray start` and the workers read the variable from the environment;
    # this process imported ray already, so its constant is set directly.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    base = tmp_path_factory.mktemp("rg")
    root, temp = base / "res", base / "ray"
    port = _free_port()
    env = dict(os.environ, RAY_TMPDIR=str(temp))
    # `ray start` in a new session: the head's daemons stay in its process group, so the test stops
    # exactly the processes it started (killpg) instead of `ray stop`, which kills every Ray on the machine.
    head_log = open(base / "ray_start.log", "w")  # a file, not a pipe: Ray's daemons inherit it
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, cwd=REPO, start_new_session=True,
                            stdout=head_log, stderr=subprocess.STDOUT)
    try:
        assert head.wait(timeout=180) == 0, (base / "ray_start.log").read_text()[-2000:]
        runs = expand_grid(["dppo"], ["hopper"], "0", "smoke", {})
        ev = Events()
        s = run_grid(runs, root, workers=2, executor="ray", options={"address": f"127.0.0.1:{port}", "num_cpus": 1},
                     on_event=ev)
        assert (s["completed"], s["failed"]) == (1, 0), (s, runs[0].log_path(root).read_text()[-3000:])
        assert run_state(runs[0], root) == "complete"
        assert [k for k, _, _ in ev.items if k != "progress"] == ["start", "done"]
        assert (root / ".ray").is_dir()
        s2 = run_grid(runs, root, executor="ray", options={"address": f"127.0.0.1:{port}"}, on_event=ev)
        assert s2["skipped_complete"] == 1 and s2["completed"] == 0
    finally:
        if head.poll() is None:
            head.kill()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        head.wait()
        head_log.close()
