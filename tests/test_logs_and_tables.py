"""Logs that work everywhere and tables that survive a pipe.

The real CLI runs in a subprocess with stderr redirected to a file (as under SLURM or nohup) or stdout a
pipe (`bench tasks | cat`): progress must arrive as plain lines, one per iteration, and no name or number
may be cut. `--json` outputs must parse and hold every row.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from tests.test_leaderboard import make_store

BENCH = [sys.executable, "-m", "bench.cli"]
RUN_LINE = re.compile(r"^\d\d:\d\d:\d\d dppo/point_reach/seed0 iteration (\d+)/(\d+) \| env steps (\d+) \| "
                      r"train return (\S+) \| eval (-?[\d.]+) \(score [-\d.]+, success [\d.]+\) at itr (\d+) \| "
                      r"(\d+) steps/s \| elapsed \S+ \| ETA \S+$")


def _env(**extra):
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    env.pop("DPPO_BENCH_LOG_EVERY", None)
    env["COLUMNS"] = "80"  # what truncated the tables before; must not matter when not a terminal
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_to_file(args, err_path: Path, **env):
    with open(err_path, "w") as err:
        r = subprocess.run(BENCH + [str(a) for a in args], stdout=subprocess.PIPE, stderr=err, text=True,
                           env=_env(**env), timeout=600)
    return r, err_path.read_text()


def _plain(text: str):
    assert "\x1b[" not in text, "escape codes in a file"
    assert "━" not in text and "╸" not in text, "a progress bar in a file"
    assert "Traceback" not in text


def test_run_logs_one_plain_line_per_iteration_to_a_file(tmp_path):
    # a fresh cache: data making and pre-training log too
    r, err = _run_to_file(["run", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path / "res",
                           "--log-every", "0", "--set", "train.n_iterations=3"], tmp_path / "stderr.txt",
                          DPPO_BENCH_CACHE=tmp_path / "cache")
    assert r.returncode == 0, err
    _plain(err)
    lines = err.splitlines()
    assert any(re.search(r"pre-training update 50/50 \| loss \d+\.\d{4} \| .* \| elapsed \S+ \| ETA 0s$", x)
               for x in lines), err
    matches = [RUN_LINE.match(x) for x in lines if " iteration " in x]
    assert all(matches), err
    its = [(int(m[1]), int(m[2])) for m in matches]
    assert its == [(0, 3), (1, 3), (2, 3), (3, 3)], err  # the start and one line per iteration
    steps = [int(m[3]) for m in matches]
    assert steps[0] == 0 and steps == sorted(steps) and steps[-1] > 0
    assert matches[0][4] == "-" and all(m[4] != "-" for m in matches[1:])  # train return once there is one
    assert matches[-1][0].endswith("ETA 0s")
    ev = pd.read_csv(tmp_path / "res" / "runs" / "point_reach" / "dppo" / "seed0" / "eval.csv")
    assert float(matches[-1][5]) == pytest.approx(ev["return_mean"].iloc[-1], abs=0.051)
    assert int(matches[-1][6]) == int(ev["iteration"].iloc[-1])
    assert "dppo/point_reach/seed0" in r.stdout and "…" not in r.stdout  # the summary table, uncut


def test_run_lines_are_throttled_by_the_environment_variable(tmp_path):
    r, err = _run_to_file(["run", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path,
                           "--set", "train.n_iterations=4"], tmp_path / "stderr.txt", DPPO_BENCH_LOG_EVERY=3600)
    assert r.returncode == 0, err
    _plain(err)
    its = [int(m[1]) for m in map(RUN_LINE.match, err.splitlines()) if m]
    assert its == [0, 1, 4], err  # start, first and last iteration; the others within the hour are skipped


def test_log_every_bad_values_are_one_line_errors(cli, monkeypatch, tmp_path):
    for args, env, needle in ((["--log-every", "-1"], None, "--log-every"),
                              (["--log-every", "nan"], None, "--log-every"),
                              ([], "soon", "DPPO_BENCH_LOG_EVERY")):
        if env is None:
            monkeypatch.delenv("DPPO_BENCH_LOG_EVERY", raising=False)
        else:
            monkeypatch.setenv("DPPO_BENCH_LOG_EVERY", env)
        code, out, err = cli("run", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path, *args)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
        assert not any(tmp_path.iterdir())
    monkeypatch.setenv("DPPO_BENCH_LOG_EVERY", "1")
    code, out, err = cli("grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0", "--root", tmp_path,
                         "--log-every", "-5")
    assert code == 2 and err.startswith("error: --log-every") and not any(tmp_path.iterdir()), err


def test_progress_is_a_live_bar_on_a_terminal_and_lines_elsewhere():
    from bench.progress import GridLog, PretrainProgress, RunProgress

    tty = Console(file=io.StringIO(), force_terminal=True, width=120)
    assert RunProgress(tty, "x", 0).live and PretrainProgress(tty).live
    buf = io.StringIO()
    plain = Console(file=buf, force_terminal=False)
    p = RunProgress(plain, "a/b/seed0", 0)
    assert not p.live
    p.start(2, 0, 0, None)
    p.update(1, 10, {"train_return": 1.5}, {"iteration": 1, "return_mean": 2.0, "success_rate": 0.5,
                                            "score_mean": float("nan")})
    p.stop()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "iteration 1/2 | env steps 10 | train return 1.5 | eval 2.00 (success 0.50) at itr 1" \
        in lines[1], lines
    buf.truncate(0), buf.seek(0)
    pre = PretrainProgress(plain, batch_size=64, log_every=0)
    for step in (100, 200, 300):
        pre(step, 300, 0.5)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and "update 300/300 | loss 0.5000 |" in lines[-1] and "samples/s" in lines[-1], lines
    buf.truncate(0), buf.seek(0)
    g = GridLog(plain, log_every=3600)
    row = {"run_id": "hopper/dppo/seed0", "state": "running", "started": 1.0, "iteration": 1, "n_iterations": 4,
           "env_steps": 100}
    info = {"metrics": {"train_return": 1.5, "env_steps_per_s": 250.0},
            "eval": {"iteration": 1, "return_mean": 2.0, "success_rate": 0.5, "score_mean": float("nan")}}
    g.event("start", row, {"log": "x.log"})
    for it in (1, 2, 3, 4):  # throttled per run: one progress line within the hour, and the last iteration's
        g.event("progress", dict(row, iteration=it), info)
    g.event("done", row, {"wall_s": 12.0})
    lines = buf.getvalue().splitlines()
    assert [x.split(" ", 2)[2].split(" ")[0] for x in lines] == ["start", "hopper/dppo/seed0", "hopper/dppo/seed0",
                                                                   "done"], lines
    assert "iteration 1/4 | env steps 100 | train return 1.5 | eval 2.00 (success 0.50) at itr 1 | 250 steps/s | " \
        in lines[1] and "iteration 4/4" in lines[2], lines


def test_grid_logs_plain_event_lines_when_not_a_terminal(tmp_path):
    args = ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0", "--preset", "smoke",
            "--root", tmp_path / "res", "--log-every", "0"]
    r, err = _run_to_file(args, tmp_path / "grid1.txt")
    assert r.returncode == 0, err
    _plain(err)
    for needle in ("grid: 1 runs, 0 complete, 1 to run, 1 worker",
                   "grid: start point_reach/dppo/seed0 (log ", "grid: done point_reach/dppo/seed0 in "):
        assert needle in err, (needle, err)
    assert all(re.match(r"^\d\d:\d\d:\d\d grid: ", x) for x in err.splitlines()), err
    assert "grid: 1 runs, 0 already complete, 1 completed, 0 failed" in r.stdout
    # the run's progress, forwarded from its CSVs with the fields of `bench run`'s lines ...
    assert re.search(r"grid: point_reach/dppo/seed0 iteration 2/2 \| env steps \d+ \| train return \S+ \| "
                     r"eval -?[\d.]+ \(score [-\d.]+, success [\d.]+\) at itr 2 \| \d+ steps/s \| ", err), err
    # ... and the run's own plain lines in its log
    log = (tmp_path / "res" / "logs" / "point_reach_dppo_seed0.log").read_text()
    assert "\x1b[" not in log and "Traceback" not in log, log  # (the summary table on stdout has box lines)
    assert [int(m[1]) for m in map(RUN_LINE.match, log.splitlines()) if m] == [0, 1, 2], log
    r, err = _run_to_file(args, tmp_path / "grid2.txt")
    assert r.returncode == 0 and "grid: skip point_reach/dppo/seed0 (complete)" in err, err
    _plain(err)


@pytest.mark.slow
def test_grid_runs_log_their_progress_every_log_every_seconds(tmp_path):
    from bench.grid import expand_grid, run_grid

    runs = expand_grid(["dppo"], ["point_reach"], "0", "smoke", {"train.n_iterations": "4", "torch_threads": "1"})
    cmd = runs[0].cli_args(tmp_path)
    assert "--quiet" not in cmd and "--log-every" not in cmd  # the run's default: $DPPO_BENCH_LOG_EVERY or 10 s
    env = {"DPPO_BENCH_LOG_EVERY": os.environ.pop("DPPO_BENCH_LOG_EVERY", None)}
    try:
        s = run_grid(runs, tmp_path, log_every=0)
    finally:
        os.environ.update({k: v for k, v in env.items() if v is not None})
    log = runs[0].log_path(tmp_path).read_text()
    assert s["completed"] == 1, log
    assert "--log-every 0 " in log  # the command in the log's header
    # every iteration: the 10 s default would leave out 2 and 3 of this second-long run
    assert [int(m[1]) for m in map(RUN_LINE.match, log.splitlines()) if m] == [0, 1, 2, 3, 4], log


def test_listing_tables_survive_a_pipe():
    from algorithms.registry import list_algorithms
    from envs.tasks import list_tasks

    names = [t.name for t in list_tasks()]
    assert {"one_leg_low", "one_leg_med", "halfcheetah"} <= set(names)
    for cmd, expected in (("tasks", names + [t.env_id for t in list_tasks()]), ("algos", list_algorithms())):
        r = subprocess.run(BENCH + [cmd], capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        assert "…" not in r.stdout, r.stdout
        cells = {c.strip() for line in r.stdout.splitlines() for c in line.split("│")}
        missing = [n for n in expected if n not in cells]
        assert not missing, (missing, r.stdout)


def test_listing_json():
    from algorithms.registry import list_algorithms
    from envs.tasks import list_tasks

    r = subprocess.run(BENCH + ["tasks", "--json"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)
    assert [t["name"] for t in tasks] == [t.name for t in list_tasks()]
    lift = next(t for t in tasks if t["name"] == "lift")
    assert lift["suite"] == "robomimic" and lift["metric"] == "success_rate" and isinstance(lift["obs_dim"], int)
    assert set(lift) == {"name", "suite", "env_id", "obs_dim", "act_dim", "max_episode_steps", "horizon_steps",
                         "act_steps", "metric"}
    r = subprocess.run(BENCH + ["algos", "--json"], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    algos = json.loads(r.stdout)
    assert [a["name"] for a in algos] == list_algorithms()
    dppo = next(a for a in algos if a["name"] == "dppo")
    assert dppo == {"name": "dppo", "policy_kind": "diffusion", "module": "algorithms.dppo", "error": None}


def _same(a, b):
    if isinstance(b, float) and math.isnan(b):
        return a is None
    if isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return str(a) == str(b) or a == b


def test_leaderboard_json(cli, tmp_path):
    root = make_store(tmp_path / "res")
    code, out, err = cli("leaderboard", "--root", root, "--reps", "100", "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout is the JSON document alone; strict JSON (NaN is null)
    assert set(doc) == {"leaderboard", "tasks", "csv", "markdown", "tasks_csv"}
    for key, path in (("leaderboard", root / "leaderboard.csv"), ("tasks", root / "leaderboard_tasks.csv")):
        df = pd.read_csv(path, keep_default_na=True, dtype={"seeds": str} if key == "tasks" else None)
        assert len(doc[key]) == len(df) > 0
        for got, want in zip(doc[key], df.to_dict(orient="records")):
            assert list(got) == list(want)
            assert all(_same(got[k], want[k]) for k in want), (got, want)
    assert {(r["scope"], r["algorithm"]) for r in doc["leaderboard"]} == \
        {(s, a) for s in ("all", "gym", "robomimic") for a in ("dppo", "ppo")}
    assert {(r["task"], r["algorithm"]) for r in doc["tasks"]} == \
        {(t, a) for t in ("hopper", "lift") for a in ("dppo", "ppo")}
    assert doc["csv"] == str(root / "leaderboard.csv") and "wrote" in err
    code, out, _ = cli("leaderboard", "--root", root, "--reps", "100")
    assert code == 0 and "Leaderboard" in out and "…" not in out
