"""Algorithm registry (built-ins, "module:Class", entry-point plugins) and the layered, typed run config."""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path

import pytest

import algorithms.registry as registry
from algorithms.base import Algorithm
from algorithms.dppo import DPPO, DPPOConfig
from algorithms.registry import get_algorithm, list_algorithms, register_algorithm
from bench import config as C
from bench import presets as P
from bench.config import (RunConfig, build_run_config, parse_set_options, run_config_from_dict, to_dict,
                          valid_keys)
from core.errors import BenchError

TESTS_DIR = Path(__file__).resolve().parent
PLUGIN_SRC = TESTS_DIR / "plugin_pkg" / "bench_plugin_demo"


@pytest.fixture
def clean_registry():
    """Drop whatever a test adds to the registry (and the plugin modules it imported)."""
    before = dict(registry._REGISTRY)
    mods = set(sys.modules)
    yield registry._REGISTRY
    for name in set(registry._REGISTRY) - set(before):
        registry._REGISTRY.pop(name)
    for name in set(sys.modules) - mods:
        if name.split(".")[0] in ("bench_plugin_demo", "plugin_pkg"):
            sys.modules.pop(name)


# ---------------------------------------------------------------------------------------------------
# Registry


def test_builtin_dppo():
    assert "dppo" in list_algorithms()
    assert list_algorithms() == sorted(list_algorithms())
    assert get_algorithm("dppo") is DPPO
    assert DPPO.name == "dppo" and DPPO.Config is DPPOConfig


def test_unknown_algorithm_lists_valid_ones():
    with pytest.raises(BenchError, match=r"unknown algorithm 'nope'; valid algorithms: .*dppo") as e:
        get_algorithm("nope")
    for name in list_algorithms():
        assert name in str(e.value)


def test_register_rejects_a_second_class_under_a_taken_name(clean_registry):
    class Other(Algorithm):
        pass

    with pytest.raises(ValueError, match="'dppo' is already registered by algorithms.dppo"):
        register_algorithm("dppo")(Other)
    assert get_algorithm("dppo") is DPPO
    assert register_algorithm("dppo")(DPPO) is DPPO  # re-registering the same class is fine

    register_algorithm("tmp_algo")(Other)
    assert Other.name == "tmp_algo" and get_algorithm("tmp_algo") is Other
    assert "tmp_algo" in list_algorithms()


def test_module_colon_class(clean_registry, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    cls = get_algorithm("plugin_pkg.my_algo:MyAlgo")
    from plugin_pkg.my_algo import MyAlgo

    assert cls is MyAlgo and issubclass(cls, Algorithm)
    assert get_algorithm("plugin_pkg.my_algo:MyAlgo") is cls  # cached
    cfg = build_run_config("hopper", "plugin_pkg.my_algo:MyAlgo", 0, "smoke", {"algo.width": "16"})
    assert cfg.algo.width == 16 and cfg.algorithm == "plugin_pkg.my_algo:MyAlgo"


@pytest.mark.parametrize("name, why", [
    ("plugin_pkg.my_algo:Nope", "has no attribute 'Nope'"),
    ("no_such_module_xyz:Algo", "No module named 'no_such_module_xyz'"),
])
def test_module_colon_class_errors(clean_registry, monkeypatch, name, why):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    with pytest.raises(BenchError, match=f"cannot load algorithm '{name}': .*{why}"):
        get_algorithm(name)
    assert name not in registry._REGISTRY


def test_module_colon_non_algorithm_is_bench_error(clean_registry):
    with pytest.raises(BenchError):
        get_algorithm("algorithms.base:AlgoContext")


# ---------------------------------------------------------------------------------------------------
# Entry-point plugins


@pytest.fixture
def demo_plugin(tmp_path, monkeypatch, clean_registry):
    """A fake installed distribution `bench_plugin_demo` with a `dppo_bench.algorithms` entry point."""
    site = tmp_path / "site"
    shutil.copytree(PLUGIN_SRC, site / "bench_plugin_demo", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "bench_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench_plugin_demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\ndemo_algo = bench_plugin_demo:DemoAlgo\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert "bench_plugin_demo" not in sys.modules
    yield site
    registry._REGISTRY.pop("demo_algo", None)
    sys.modules.pop("bench_plugin_demo", None)
    importlib.invalidate_caches()


def test_entry_point_plugin_is_listed_without_import(demo_plugin):
    assert registry.ENTRY_POINT_GROUP == "dppo_bench.algorithms"
    names = list_algorithms()
    assert "demo_algo" in names and "dppo" in names
    assert "bench_plugin_demo" not in sys.modules
    assert "demo_algo" not in registry._REGISTRY

    cls = get_algorithm("demo_algo")
    assert "bench_plugin_demo" in sys.modules
    demo = sys.modules["bench_plugin_demo"]
    assert cls is demo.DemoAlgo and issubclass(cls, Algorithm)
    assert cls.name == "demo_algo" and cls.policy_kind == "diffusion"
    assert registry._REGISTRY["demo_algo"] is cls
    assert get_algorithm("demo_algo") is cls


def test_entry_point_plugin_config(demo_plugin):
    cfg = build_run_config("hopper", "demo_algo", 1, "smoke",
                           {"algo.step_size": "0.5", "algo.n_layers": "3", "algo.use_bias": "no"})
    assert type(cfg.algo).__name__ == "DemoConfig"
    assert (cfg.algo.step_size, cfg.algo.n_layers, cfg.algo.use_bias) == (0.5, 3, False)
    with pytest.raises(BenchError, match=r"valid keys in algo: step_size, n_layers, use_bias$"):
        build_run_config("hopper", "demo_algo", 1, "smoke", {"algo.gamma": 0.9})
    assert run_config_from_dict(to_dict(cfg)) == cfg


def test_entry_point_gone_after_cleanup():
    assert "demo_algo" not in list_algorithms()
    assert "bench_plugin_demo" not in sys.modules
    with pytest.raises(BenchError, match="unknown algorithm 'demo_algo'"):
        get_algorithm("demo_algo")


# ---------------------------------------------------------------------------------------------------
# Config


def test_build_small_typed():
    cfg = build_run_config("hopper", "dppo", 0, "small")
    assert isinstance(cfg, RunConfig) and isinstance(cfg.algo, DPPOConfig)
    assert (cfg.task, cfg.algorithm, cfg.seed, cfg.preset) == ("hopper", "dppo", 0, "small")
    assert cfg.train.n_iterations == 60 and type(cfg.train.n_iterations) is int
    assert cfg.pretrain.hidden_dims == (256, 256, 256) and type(cfg.pretrain.hidden_dims) is tuple
    assert cfg.pretrain.lr == 1e-3 and type(cfg.pretrain.lr) is float
    assert cfg.pretrain.activation == "ReLU" and cfg.pretrain.residual is True
    # task-dependent values are resolved from the task: no None meaning "the task's" in a saved config
    assert cfg.env.vector == "sync" and (cfg.env.max_episode_steps, cfg.env.horizon_steps, cfg.env.act_steps) == (1000, 4, 4)
    assert cfg.data.source == "builtin" and cfg.data.n_transitions == 200_000
    assert cfg.algo.batch_size == 2500 and cfg.algo.lr_warmup_itr == 2  # DPPO's own small preset
    assert cfg.algo.target_kl == 1.0  # the original Gym fine-tuning configs


def test_layers_apply_in_order():
    smoke = build_run_config("hopper", "dppo", 0, "smoke")
    small = build_run_config("hopper", "dppo", 0, "small")
    assert smoke.train.n_iterations == 2 and small.train.n_iterations == 60
    # preset beats the suite default (gym: pretrain.batch_size 128)
    assert smoke.pretrain.batch_size == 64 and small.pretrain.batch_size == 256
    assert build_run_config("hopper", "dppo", 0, "paper").pretrain.batch_size == 128
    # --set beats the preset; strings from the command line are coerced
    over = build_run_config("hopper", "dppo", 0, "smoke", {"train.n_iterations": "7"})
    assert over.train.n_iterations == 7 and type(over.train.n_iterations) is int
    # the algorithm's preset beats the harness preset layer, --set beats both
    assert smoke.algo.batch_size == 64
    assert build_run_config("hopper", "dppo", 0, "smoke", {"algo.batch_size": "128"}).algo.batch_size == 128


def test_all_five_layers_in_order(monkeypatch):
    """suite defaults < algorithm suite defaults < preset < algorithm preset < --set, on one key."""
    key = "algo.gae_lambda"
    monkeypatch.setitem(P.SUITE_DEFAULTS["gym"], key, 0.1)
    assert build_run_config("hopper", "dppo", 0, "small").algo.gae_lambda == 0.1
    monkeypatch.setitem(P.ALGORITHM_DEFAULTS["dppo"], "gym", {key: 0.2})
    assert build_run_config("hopper", "dppo", 0, "small").algo.gae_lambda == 0.2
    monkeypatch.setitem(P.HARNESS_PRESETS["small"]["gym"], key, 0.3)
    assert build_run_config("hopper", "dppo", 0, "small").algo.gae_lambda == 0.3
    assert build_run_config("hopper", "dppo", 0, "smoke").algo.gae_lambda == 0.2  # other preset
    monkeypatch.setitem(P.ALGORITHM_PRESETS["dppo"]["small"]["gym"], key, 0.4)
    assert build_run_config("hopper", "dppo", 0, "small").algo.gae_lambda == 0.4
    assert build_run_config("hopper", "dppo", 0, "small", {key: "0.5"}).algo.gae_lambda == 0.5


def test_layers_are_not_mutated_by_builds():
    layers = lambda: tuple(repr(x) for x in (P.HARNESS_PRESETS, P.SUITE_DEFAULTS, P.ALGORITHM_PRESETS,  # noqa: E731
                                              P.ALGORITHM_DEFAULTS))
    before = layers()
    build_run_config("hopper", "dppo", 0, "smoke", {"pretrain.hidden_dims": "8,8"})
    assert layers() == before
    assert RunConfig().pretrain.hidden_dims == (512, 512, 512)


@pytest.mark.parametrize("key, value, expected", [
    ("pretrain.hidden_dims", "64,64,64", (64, 64, 64)),
    ("pretrain.hidden_dims", "(32, 16)", (32, 16)),
    ("pretrain.hidden_dims", [8, 8], (8, 8)),
    ("algo.critic_hidden", "128", (128,)),
    ("pretrain.residual", "false", False),
    ("pretrain.residual", "True", True),
    ("pretrain.residual", "0", False),
    ("algo.norm_adv", False, False),
    ("algo.target_kl", "none", None),
    ("algo.target_kl", "None", None),
    ("algo.target_kl", "0.05", 0.05),
    ("algo.target_kl", 1, 1.0),
    ("pretrain.denoised_clip", "null", None),
    ("env.max_episode_steps", "200", 200),
    ("env.max_episode_steps", "none", 1000),  # none: the task's, resolved
    ("env.vector", "async", "async"),
    ("data.n_transitions", "1_000", 1000),
    ("data.n_transitions", "2e3", 2000),
    ("data.n_transitions", 3000.0, 3000),
    ("pretrain.lr", "3e-4", 3e-4),
    ("pretrain.lr", 1, 1.0),
    ("data.source", "minari:mujoco/hopper/medium-v0", "minari:mujoco/hopper/medium-v0"),
    ("device", "cuda:1", "cuda:1"),
])
def test_coercion(key, value, expected):
    cfg = build_run_config("hopper", "dppo", 0, "smoke", {key: value})
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    assert obj == expected and type(obj) is type(expected)


def test_literal_validation():
    with pytest.raises(BenchError, match=r"bad value 'bogus' for env\.vector; valid values: sync, async"):
        build_run_config("hopper", "dppo", 0, "smoke", {"env.vector": "bogus"})
    with pytest.raises(BenchError, match="valid values: ReLU, Mish, GELU, Tanh, ELU"):
        build_run_config("hopper", "dppo", 0, "smoke", {"pretrain.activation": "relu"})
    with pytest.raises(BenchError, match="valid values: mean, sum"):
        build_run_config("hopper", "dppo", 0, "smoke", {"algo.logprob_reduction": "max"})


def test_unknown_top_level_key_names_valid_keys():
    with pytest.raises(BenchError, match=r"unknown config key 'bogus' \(--set\); valid keys in the config: ") as e:
        build_run_config("hopper", "dppo", 0, "smoke", {"bogus": 1})
    msg = str(e.value)
    for k in ("task", "seed", "env.n_envs", "train.n_iterations", "algo.gamma", "eval.seed"):
        assert k in msg


@pytest.mark.parametrize("key, section, names", [
    ("train.bogus", "train", ["train.n_iterations", "train.n_steps", "train.checkpoint_every"]),
    ("env.nenvs", "env", ["env.n_envs", "env.vector"]),
    ("algo.lr", "algo", ["algo.actor_lr", "algo.critic_lr", "algo.target_kl"]),
])
def test_unknown_key_in_section_names_valid_keys(key, section, names):
    with pytest.raises(BenchError, match=rf"unknown config key '{key}' \(--set\); valid keys in {section}: ") as e:
        build_run_config("hopper", "dppo", 0, "smoke", {key: "1"})
    for name in names:
        assert name.split(".", 1)[1] in str(e.value)
    assert "pretrain" not in str(e.value)  # only the section's keys


@pytest.mark.parametrize("key, value, why", [
    ("train.n_iterations", "abc", "expected an integer"),
    ("train.n_iterations", "7.5", "expected an integer"),
    ("train.n_iterations", 7.5, "expected an integer"),
    ("train.n_iterations", True, "expected an integer"),
    ("pretrain.lr", "fast", "expected a number"),
    ("pretrain.lr", False, "expected a number"),
    ("pretrain.residual", "maybe", "expected true or false"),
    ("pretrain.residual", 1, "expected true or false"),
    ("pretrain.hidden_dims", 64, "expected a comma-separated list"),
    ("pretrain.hidden_dims", "64,x", "expected an integer"),
    ("data.source", 5, "expected a string"),
    ("algo.target_kl", "big", "expected a number"),
    ("env.max_episode_steps", "lots", "expected an integer"),
    ("device", None, "expected a string"),
])
def test_wrong_types(key, value, why):
    with pytest.raises(BenchError, match=rf"bad value .* for {re.escape(key)}; {why}"):
        build_run_config("hopper", "dppo", 0, "smoke", {key: value})


@pytest.mark.parametrize("key", ["algo", "train", "env"])
def test_setting_a_section_is_error(key):
    with pytest.raises(BenchError, match=rf"config key '{key}' is a section; set one of its keys, e\.g\. {key}\."):
        build_run_config("hopper", "dppo", 0, "smoke", {key: "1"})


@pytest.mark.parametrize("key", ["task", "algorithm", "seed", "preset"])
def test_set_cannot_change_run_identity(key):
    with pytest.raises(BenchError, match=f"--set cannot change {key}; use the --task/--algo/--seed/--preset"):
        build_run_config("hopper", "dppo", 0, "smoke", {key: "x"})


def test_parse_set_options():
    assert parse_set_options(["train.n_iterations=50", " algo.target_kl = none ", "data.source=a=b.hdf5"]) == {
        "train.n_iterations": "50", "algo.target_kl": "none", "data.source": "a=b.hdf5"}
    assert parse_set_options(["data.source="]) == {"data.source": ""}
    assert parse_set_options([]) == {}
    for bad in ("noequals", "=1", " =1"):
        with pytest.raises(BenchError, match=r"malformed --set .*; expected key=value"):
            parse_set_options([bad])


def test_parse_then_build():
    overrides = parse_set_options(["train.n_iterations=7", "pretrain.hidden_dims=64,64,64",
                                   "pretrain.residual=false", "algo.target_kl=none", "env.vector=async"])
    cfg = build_run_config("hopper", "dppo", 3, "smoke", overrides)
    assert cfg.train.n_iterations == 7 and cfg.pretrain.hidden_dims == (64, 64, 64)
    assert cfg.pretrain.residual is False and cfg.algo.target_kl is None and cfg.env.vector == "async"
    assert cfg.seed == 3


@pytest.mark.parametrize("preset", ["smoke", "small", "paper"])
def test_to_dict_round_trip(preset):
    cfg = build_run_config("hopper", "dppo", 5, preset,
                           {"algo.target_kl": "0.02", "env.max_episode_steps": "100", "pretrain.denoised_clip": "none",
                            "algo.critic_hidden": "32,32,32"})
    d = to_dict(cfg)
    assert d["pretrain"]["hidden_dims"] == list(cfg.pretrain.hidden_dims)  # JSON-ready
    back = run_config_from_dict(d)
    assert to_dict(back) == d
    assert back == cfg  # tuples, None and floats come back typed
    assert isinstance(back.algo, DPPOConfig)


def test_run_config_from_dict_validates():
    d = to_dict(build_run_config("hopper", "dppo", 0, "smoke"))
    d["train"]["bogus"] = 1
    with pytest.raises(BenchError, match=r"unknown config key 'train\.bogus' \(saved config\)"):
        run_config_from_dict(d)


def test_unknown_preset_lists_presets():
    with pytest.raises(BenchError, match="unknown preset 'huge'; valid presets: smoke, small, paper"):
        build_run_config("hopper", "dppo", 0, "huge")
    assert C.preset_names() == ["smoke", "small", "paper"]


def test_unknown_task_and_algorithm():
    with pytest.raises(BenchError, match="unknown task 'nope'"):
        build_run_config("nope", "dppo")
    with pytest.raises(BenchError, match="unknown algorithm 'nope'; valid algorithms: .*dppo"):
        build_run_config("hopper", "nope")


def test_valid_keys_cover_every_leaf():
    cfg = build_run_config("hopper", "dppo", 0, "small")
    keys = valid_keys(cfg)
    assert len(keys) == len(set(keys))
    assert {"task", "env.vector", "pretrain.hidden_dims", "algo.gamma", "eval.n_episodes"} <= set(keys)
    assert not any(k in ("env", "algo", "train") for k in keys)
