"""The statistics registry: every registered statistic against hand computations and the contract, plugins
through entry points, the leaderboard built from the registry, and the worked example of
docs/adding-a-statistic.md run from the page itself."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import leaderboard as lb
from bench import statistics as stats
from bench.results import scan_runs
from core.errors import BenchError
from tests.test_leaderboard import BUILTINS, make_store

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-statistic.md"

# 4 runs x 3 tasks. Sorted, the 12 scores are 0, .2, .3, .4, .5, .5, .6, .7, .8, .9, 1.0, 1.4 (sum 7.3);
# task means are 1.2/4, 2.6/4, 3.5/4.
M4x3 = np.array([[0.2, 0.9, 1.4],
                 [0.4, 0.5, 0.3],
                 [0.0, 0.7, 1.0],
                 [0.6, 0.5, 0.8]])
# 2 runs x 3 tasks: task means .25, .35, 1.15.
M2x3 = np.array([[0.1, 0.2, 0.3],
                 [0.4, 0.5, 2.0]])
HAND = {  # name -> [(scores, value computed by hand)]
    # 25% trimmed: drop 3 of 12 at each end -> (.4 + .5 + .5 + .6 + .7 + .8) / 6; of 6, drop 1 at each end
    "iqm": [(M4x3, 3.5 / 6), (M2x3, (0.2 + 0.3 + 0.4 + 0.5) / 4)],
    "mean": [(M4x3, (1.2 / 4 + 2.6 / 4 + 3.5 / 4) / 3), (M2x3, (0.25 + 0.35 + 1.15) / 3)],
    # median of the task means, not of all scores (that would be .55 for M4x3)
    "median": [(M4x3, 2.6 / 4), (M2x3, 0.35)],
    # 1.4 and 2.0 clip to 1: 1 - (7.3 - 0.4) / 12; 1 - (0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 1.0) / 6
    "optimality_gap": [(M4x3, 1 - 6.9 / 12), (M2x3, 1 - 2.5 / 6)],
}


@pytest.fixture
def registry(monkeypatch):
    """The registry module with a private copy of its table: registrations vanish after the test."""
    monkeypatch.setattr(stats.REGISTRY, "entries", dict(stats.REGISTRY.entries))
    return stats


@pytest.mark.parametrize("name", list(stats.REGISTRY.entries))
def test_statistic_matches_hand_computation(name):
    assert name in HAND, f"statistic {name!r} has no hand-computed case in HAND"
    fn = stats.get_statistic(name).fn
    for scores, expected in HAND[name]:
        assert float(fn(scores)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", list(stats.REGISTRY.entries))
def test_statistic_contract(name):
    s = stats.get_statistic(name)
    assert s.name == name and s.label and isinstance(s.higher_is_better, bool)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 5), (7, 3)]:
        scores = rng.uniform(-0.2, 1.3, size=shape)
        np.random.seed(5)
        value = s.fn(scores)
        next_draw = np.random.rand()
        np.random.seed(5)
        assert next_draw == np.random.rand(), "a statistic must not draw from NumPy's global RNG"
        assert np.ndim(value) == 0 and np.isfinite(value), (shape, value)
        # tasks are unordered, and so are runs within a task
        shuffled = rng.permuted(scores[:, rng.permutation(shape[1])], axis=0)
        assert float(s.fn(shuffled)) == pytest.approx(float(value), abs=1e-12)


def test_register_get_and_bad_names(registry):
    @registry.register_statistic("worst", label="Worst", higher_is_better=False)
    def worst(scores):
        return float(np.min(scores))

    assert worst(M2x3) == 0.1  # the decorator returns the function itself
    assert registry.get_statistic("worst") == registry.Statistic("worst", "Worst", worst, False)
    assert registry.list_statistics()[:5] == [*BUILTINS, "worst"]
    registry.register_statistic("worst", label="Worst", higher_is_better=False)(worst)  # same function: fine
    with pytest.raises(ValueError, match="already registered"):
        registry.register_statistic("worst")(lambda scores: 0.0)
    for bad in ("", "a,b", "a b"):
        with pytest.raises(ValueError, match="commas or spaces"):
            registry.register_statistic(bad)
    with pytest.raises(BenchError, match=r"unknown statistic 'nope'; valid statistics: iqm, mean, median, "
                                         r"optimality_gap, worst$"):
        registry.get_statistic("nope")
    assert [s.name for s in registry.get_statistics(["worst", "iqm"])] == ["worst", "iqm"]


@pytest.fixture
def stat_plugin(tmp_path, monkeypatch, registry):
    """A fake installed distribution with two `dppo_bench.statistics` entry points, one of them broken."""
    site = tmp_path / "site"
    site.mkdir()
    # undecorated: registered under the entry point's name
    (site / "stat_plugin_demo.py").write_text(
        "import numpy as np\n\n\ndef worst_run(scores):\n    return float(np.min(scores.mean(axis=1)))\n")
    info = site / "stat_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stat_plugin_demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{stats.ENTRY_POINT_GROUP}]\nworst_run = stat_plugin_demo:worst_run\n"
                                           "broken = no_such_module_here:f\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield registry
    sys.modules.pop("stat_plugin_demo", None)
    importlib.invalidate_caches()


def test_entry_point_statistic(stat_plugin):
    assert stats.ENTRY_POINT_GROUP == "dppo_bench.statistics"
    assert stat_plugin.list_statistics() == [*BUILTINS, "broken", "worst_run"]
    assert "stat_plugin_demo" not in sys.modules  # listed without importing it
    s = stat_plugin.get_statistic("worst_run")
    assert (s.name, s.label, s.higher_is_better) == ("worst_run", "worst_run", True)
    assert s.fn(M4x3) == pytest.approx((0.4 + 0.5 + 0.3) / 3)  # run 2 has the lowest mean over tasks
    assert stat_plugin.get_statistic("worst_run") is s
    with pytest.raises(BenchError, match="cannot load statistic 'broken'"):
        stat_plugin.get_statistic("broken")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return scan_runs(make_store(tmp_path_factory.mktemp("stats") / "res"))[0]


def test_leaderboard_columns_come_from_the_registry(registry, records, tmp_path):
    sm = lb.score_matrices(records)
    before = lb.leaderboard(sm, reps=100, seed=1)

    @registry.register_statistic("worst", label="Worst score", higher_is_better=False)
    def worst(scores):
        return float(np.min(scores))

    after = lb.leaderboard(sm, reps=100, seed=1)
    # the statistics share one bootstrap: the built-ins' numbers do not move
    pd.testing.assert_frame_equal(after[before.columns], before)
    assert list(after.columns[-6:]) == ["worst", "worst_lo", "worst_hi", "p_improve", "p_improve_lo",
                                        "p_improve_hi"]
    ppo = after[after.algorithm == "ppo"].set_index("scope")["worst"]
    assert ppo.to_dict() == {"all": 0.2, "gym": 0.4, "robomimic": 0.2}  # min of FINAL's ppo scores
    md = lb.write_leaderboard(after, tmp_path)[1].read_text()
    assert "| Worst score (95% CI) |" in md and "Optimality gap, Worst score: lower is better." in md
    assert [s.name for s in lb.table_statistics(pd.read_csv(tmp_path / "leaderboard.csv"))] == [*BUILTINS, "worst"]

    only = lb.leaderboard(sm, reps=100, seed=1, statistics=["worst"])
    assert [s.name for s in lb.table_statistics(only)] == ["worst"] and "iqm" not in only.columns
    with pytest.raises(BenchError, match="unknown statistic 'nope'"):
        lb.leaderboard(sm, reps=100, statistics=["nope"])


def test_doc_worked_example_appears_in_bench_leaderboard(registry, cli, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "the page should hold exactly one Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - the page is ours; running it is the point
    s = registry.get_statistic("above_0.5")
    assert s.fn is namespace["fraction_above_half"] and s.label == "P(score > 0.5)"
    assert s.fn(np.array([[0.2, 0.9], [0.6, 0.5]])) == 0.5  # the value the page computes by hand

    root = make_store(tmp_path / "results")
    code, _, err = cli("leaderboard", "--root", root, "--reps", "100")
    assert code == 0, err
    df = pd.read_csv(root / "leaderboard.csv").set_index(["scope", "algorithm"])
    # dppo's six final scores all exceed 0.5; of ppo's, .65 and .55 do (hopper seed 0 is exactly 0.5)
    assert df.loc[("all", "dppo"), "above_0.5"] == 1.0
    assert df.loc[("all", "ppo"), "above_0.5"] == pytest.approx(2 / 6)
    assert df.loc[("gym", "ppo"), "above_0.5"] == pytest.approx(1 / 3)
    assert {"above_0.5_lo", "above_0.5_hi"} <= set(df.columns)
    assert "| P(score > 0.5) (95% CI) |" in (root / "leaderboard.md").read_text()
