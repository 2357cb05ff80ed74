"""The task and suite registry: a contract every registered task meets, entry-point suites, and
docs/adding-a-task.md's example run as written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import envs.tasks as tasks
from bench.config import build_run_config
from core.errors import BenchError
from doc_examples import load_example
from envs.datasets import DataConfig


@pytest.mark.parametrize("name", [t.name for t in tasks.list_tasks()])
def test_every_task_is_consistent_and_has_every_preset(name):
    t = tasks.get_task(name)
    assert t.obs_dim > 0 and t.act_dim > 0 and t.max_episode_steps > 0
    assert 1 <= t.act_steps <= t.horizon_steps and t.metric in ("return", "success_rate")
    assert callable(t.make_env) and t.suite in tasks.list_suites()
    for preset in ("smoke", "small", "paper"):  # every preset composes and resolves for every task
        cfg = build_run_config(name, "dppo", 0, preset)
        assert (cfg.env.horizon_steps, cfg.env.act_steps) == (t.horizon_steps, t.act_steps)
        assert cfg.env.max_episode_steps >= 1


def test_builtin_suites_are_the_envs_task_modules():
    assert set(tasks._builtin_suites()) == {"gym", "robomimic", "furniture", "toy"}
    assert tasks.list_suites() == ["furniture", "gym", "robomimic", "toy"]


@pytest.fixture
def isolated_registry(monkeypatch):
    for name in ("_TASKS", "_SUITES"):
        monkeypatch.setattr(tasks, name, dict(getattr(tasks, name)))
    monkeypatch.setattr(tasks, "_LOADED", set(tasks._LOADED))
    yield
    sys.modules.pop("doc_classic_tasks", None)


def test_doc_example_registers_and_makes_its_data(isolated_registry):
    module = load_example("adding-a-task.md", "doc_classic_tasks")
    t = tasks.get_task("pendulum_swingup")
    assert t.suite == "classic" and "classic" in tasks.list_suites()
    cfg = build_run_config("pendulum_swingup", "dppo", 0, "smoke")
    assert cfg.env.n_envs == 2 and cfg.data.n_transitions == 2_000 and cfg.pretrain.activation == "Mish"
    ds = t.builtin_dataset("pendulum_swingup", DataConfig(n_transitions=1_000, seed=3), True, print)
    assert ds.observations.shape == (1_000, 3) and ds.actions.shape == (1_000, 1)
    assert (np.flatnonzero(ds.timeouts) + 1).tolist()[:4] == [200, 400, 600, 800]
    again = t.builtin_dataset("pendulum_swingup", DataConfig(n_transitions=1_000, seed=3), True, print)
    assert again.checksum == ds.checksum  # seeded
    # the scripted controller swings up: well above random torques (about -1200 per episode)
    env = module.make_pendulum_env("Pendulum-v1", 200)
    obs, _ = env.reset(seed=0)
    total = 0.0
    for _ in range(200):
        obs, r, *_ = env.step(module.swing_up(obs[None])[0])
        total += r
    assert total > -300


@pytest.mark.slow
def test_doc_example_runs_end_to_end(isolated_registry, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    load_example("adding-a-task.md", "doc_classic_tasks")
    code, out, err = cli("run", "--algo", "dppo", "--task", "pendulum_swingup", "--preset", "smoke",
                         "--out", tmp_path / "results", "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "results/runs/pendulum_swingup/dppo/seed0/summary.json").read_text())
    assert summary["suite"] == "classic" and summary["iterations"] == 2 and summary["env_steps"] > 0


def test_entry_point_suite_is_loaded_on_demand(isolated_registry, tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "ep_suite_demo").mkdir(parents=True)
    (pkg / "ep_suite_demo" / "__init__.py").write_text(
        "from envs.tasks import TaskSpec, register_task\n"
        "register_task(TaskSpec(name='ep_demo_task', suite='epdemo', env_id='x', obs_dim=2, act_dim=1,"
        " max_episode_steps=5, make_env=lambda env_id, n: None))\n")
    info = pkg / "ep_suite_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-suite-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{tasks.ENTRY_POINT_GROUP}]\nepdemo = ep_suite_demo\n")
    monkeypatch.syspath_prepend(str(pkg))
    assert tasks.get_task("ep_demo_task").suite == "epdemo"
    assert "ep_demo_task" in [t.name for t in tasks.list_tasks()]
    sys.modules.pop("ep_suite_demo", None)


def test_broken_entry_point_suite_is_one_line(isolated_registry, tmp_path, monkeypatch):
    info = tmp_path / "broken_suite-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-suite\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{tasks.ENTRY_POINT_GROUP}]\nbroken = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="cannot load task suite 'broken'"):
        tasks.get_task("not_a_task")
