"""Results store reading, score matrices and rliable aggregates, on small synthetic results stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from bench import leaderboard as lb
from bench.results import scan_runs

REPS = 200
TASKS = {"hopper": ("gym", "return"), "lift": ("robomimic", "success_rate")}
# final scores (score scale) per (algo, task): one value per seed; the eval before the last one is 0.1 lower
FINAL = {
    ("dppo", "hopper"): [0.80, 0.70, 0.90],
    ("dppo", "lift"): [0.60, 0.90, 0.75],
    ("ppo", "hopper"): [0.50, 0.65, 0.40],
    ("ppo", "lift"): [0.30, 0.55, 0.20],
}
PRETRAINED = 0.25
BUILTINS = ("iqm", "mean", "median", "optimality_gap")  # the leaderboard's default columns, in order


def write_run(root: Path, task: str, algo: str, seed: int, final: float, *, complete: bool = True,
              preset: str = "small", iterations=(0, 5, 10)) -> Path:
    suite, metric = TASKS[task]
    d = root / "runs" / task / algo / f"seed{seed}"
    d.mkdir(parents=True)
    scores = [PRETRAINED] + [final - 0.1 * (len(iterations) - 1 - i) for i in range(1, len(iterations))]
    rows = []
    for i, (it, s) in enumerate(zip(iterations, scores)):
        rows.append({"iteration": it, "env_steps": it * 1000 + seed, "return_mean": 3000 * s,
                     "return_std": 10.0, "score_mean": 100 * s if suite == "gym" else float("nan"),
                     "success_rate": s if metric == "success_rate" else 0.0, "episode_len": 100.0,
                     "n_episodes": 10, "eval_s": 0.1})
    pd.DataFrame(rows).to_csv(d / "eval.csv", index=False)
    pd.DataFrame([{"iteration": 1, "env_steps": 1000}]).to_csv(d / "metrics.csv", index=False)
    (d / "config.json").write_text(json.dumps({"config": {"task": task, "algorithm": algo, "seed": seed,
                                                          "preset": preset}, "command": "bench run"}))
    if complete:
        (d / "summary.json").write_text(json.dumps({
            "complete": True, "task": task, "algorithm": algo, "seed": seed, "preset": preset, "suite": suite,
            "metric": metric, "iterations": iterations[-1], "env_steps": iterations[-1] * 1000,
            "final_score": 100 * final if suite == "gym" else float("nan"),
            "final_success_rate": final if metric == "success_rate" else 0.0}))
    return d


def make_store(root: Path, final=FINAL) -> Path:
    for (algo, task), vals in final.items():
        for seed, v in enumerate(vals):
            write_run(root, task, algo, seed, v)
    return root


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "res")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """(score matrices, leaderboard with reps=REPS, seed=3) of the standard store; computed once."""
    records, _ = scan_runs(make_store(tmp_path_factory.mktemp("board") / "res"))
    sm = lb.score_matrices(records)
    return sm, lb.leaderboard(sm, reps=REPS, seed=3)


def test_scan_reads_complete_runs_and_scores(store):
    records, warnings = scan_runs(store)
    assert warnings == []
    assert len(records) == 12
    r = next(r for r in records if (r.algo, r.task, r.seed) == ("dppo", "hopper", 2))
    assert (r.suite, r.metric, r.preset) == ("gym", "return", "small")
    assert list(r.eval.columns[:2]) == ["iteration", "env_steps"]
    assert r.final_score() == pytest.approx(0.90)  # D4RL score 90 -> 0.9
    assert r.pretrained_score() == pytest.approx(PRETRAINED)
    lift = next(r for r in records if (r.algo, r.task, r.seed) == ("ppo", "lift", 1))
    assert (lift.suite, lift.metric) == ("robomimic", "success_rate")
    assert lift.final_score() == pytest.approx(0.55)  # success rate


def test_last_n(store):
    records, _ = scan_runs(store)
    r = next(r for r in records if (r.algo, r.task, r.seed) == ("dppo", "hopper", 0))
    assert r.final_score(1) == pytest.approx(0.80)
    assert r.final_score(2) == pytest.approx((0.80 + 0.70) / 2)
    assert r.final_score(3) == pytest.approx((0.80 + 0.70 + PRETRAINED) / 3)
    assert r.final_score(99) == pytest.approx((0.80 + 0.70 + PRETRAINED) / 3)
    sm = lb.score_matrices(records, last_n=2)
    assert sm.tasks == ["hopper", "lift"]
    expected = np.array([[(v + v - 0.1) / 2 for v in FINAL[("dppo", t)]] for t in sm.tasks]).T
    np.testing.assert_allclose(sm.scores["dppo"], expected)
    with pytest.raises(ValueError):
        lb.score_matrices(records, last_n=0)


def test_incomplete_corrupt_and_foreign_entries(store):
    write_run(store, "hopper", "dppo", 7, 0.5, complete=False)  # incomplete: no summary.json
    bad_json = write_run(store, "hopper", "ppo", 8, 0.5)
    (bad_json / "summary.json").write_text("{not json")
    no_eval = write_run(store, "lift", "ppo", 9, 0.5)
    (no_eval / "eval.csv").unlink()
    bad_csv = write_run(store, "lift", "dppo", 10, 0.5)
    (bad_csv / "eval.csv").write_text("garbage\n\x00\x01,\n")
    (store / "runs" / "README.txt").write_text("not a task")
    (store / "runs" / "hopper" / "notes.md").write_text("x")
    (store / "runs" / "hopper" / "dppo" / "not-a-seed").mkdir()
    (store / "runs" / "hopper" / "dppo" / "seed99.txt").write_text("x")
    (store / "leaderboard.csv").write_text("foreign")

    res = scan_runs(store, with_counts=True)
    assert len(res.records) == 12 and res.n_incomplete == 1
    records, warnings = scan_runs(store)
    assert len(records) == 12
    assert {(r.algo, r.task, r.seed) for r in records} == {(a, t, s) for (a, t) in FINAL for s in range(3)}
    corrupt = [w for w in warnings if w.startswith("skipped corrupt run")]
    assert len(corrupt) == 3, warnings
    assert any("seed8" in w and "JSONDecodeError" in w for w in corrupt)
    assert any("seed9" in w and "eval.csv is missing" in w for w in corrupt)
    assert any("seed10" in w for w in corrupt)
    assert any("1 incomplete run" in w for w in warnings)
    assert scan_runs(store.parent / "nowhere")[0] == []


def test_fewer_seeds_messages(tmp_path):
    final = dict(FINAL)
    final[("ppo", "lift")] = [0.3]
    records, _ = scan_runs(make_store(tmp_path / "res", final))
    sm = lb.score_matrices(records)
    assert "ppo on lift: 1 of 3 seeds" in sm.messages
    assert sum("of 3 seeds" in m for m in sm.messages) == 1
    # the common minimum is used for every algorithm, lowest seeds first
    assert sm.n_seeds == 1
    assert {a: s.shape for a, s in sm.scores.items()} == {"dppo": (1, 2), "ppo": (1, 2)}
    np.testing.assert_allclose(sm.scores["dppo"], [[0.80, 0.60]])
    _, _, messages = lb.score_matrices(records, n_seeds=5)
    assert "dppo on hopper: 3 of 5 seeds" in messages and "ppo on lift: 1 of 5 seeds" in messages
    # an algorithm missing a task entirely is left out, with a message
    sm = lb.score_matrices(records, tasks=["hopper", "lift", "can"])
    assert sm.scores == {} and sm.tasks == ["hopper", "lift", "can"]
    assert "no complete run on can" in sm.messages
    assert "dppo has no complete run on can; left out of the leaderboard" in sm.messages
    # filters
    sm = lb.score_matrices(records, tasks=["lift"], algos=["dppo"])
    assert list(sm.scores) == ["dppo"] and sm.scores["dppo"].shape == (3, 1) and sm.messages == []
    assert lb.score_matrices(records, preset="large").scores == {}


def _direct(scores, reps, seed):
    from rliable import library as rly
    from rliable import metrics

    def agg(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x)])

    np.random.seed(seed)
    return rly.get_interval_estimates(scores, agg, reps=reps)


def test_leaderboard_equals_rliable_direct(board):
    from rliable import library as rly
    from rliable import metrics

    sm, df = board
    assert sm.messages == []
    assert sm.scores["dppo"].shape == (3, 2)
    assert list(df["scope"]) == ["all", "all", "gym", "gym", "robomimic", "robomimic"]
    for scope, cols in (("all", [0, 1]), ("gym", [0]), ("robomimic", [1])):
        sub = {a: sm.scores[a][:, cols] for a in ("dppo", "ppo")}
        point, ci = _direct(sub, REPS, 3)
        for a in sub:
            row = df[(df.scope == scope) & (df.algorithm == a)].iloc[0]
            for j, m in enumerate(BUILTINS):
                assert row[m] == pytest.approx(point[a][j], abs=1e-12)
                assert row[f"{m}_lo"] == pytest.approx(ci[a][0][j], abs=1e-12)
                assert row[f"{m}_hi"] == pytest.approx(ci[a][1][j], abs=1e-12)
        np.random.seed(3)
        p, pci = rly.get_interval_estimates({"ppo,dppo": (sub["ppo"], sub["dppo"])},
                                            metrics.probability_of_improvement, reps=REPS)
        row = df[(df.scope == scope) & (df.algorithm == "ppo")].iloc[0]
        assert row["p_improve"] == pytest.approx(float(np.ravel(p["ppo,dppo"])[0]), abs=1e-12)
        assert row["p_improve_lo"] == pytest.approx(float(np.ravel(pci["ppo,dppo"][0])[0]), abs=1e-12)
        assert row["p_improve_hi"] == pytest.approx(float(np.ravel(pci["ppo,dppo"][1])[0]), abs=1e-12)
        assert np.isnan(df[(df.scope == scope) & (df.algorithm == "dppo")].iloc[0]["p_improve"])

    # hand checks on the "all" scope: IQM = 25%-trimmed mean of the 6 scores, mean, P(ppo > dppo)
    all_dppo = df[(df.scope == "all") & (df.algorithm == "dppo")].iloc[0]
    dppo_scores = np.array([FINAL[("dppo", "hopper")], FINAL[("dppo", "lift")]]).T
    assert all_dppo["iqm"] == pytest.approx(trim_mean(dppo_scores.ravel(), 0.25))
    assert all_dppo["mean"] == pytest.approx(dppo_scores.mean())
    assert all_dppo["median"] == pytest.approx(np.median(dppo_scores.mean(axis=0)))  # of per-task means
    assert all_dppo["optimality_gap"] == pytest.approx(np.mean(1 - np.minimum(dppo_scores, 1)))
    assert all_dppo["pretrained_mean"] == pytest.approx(PRETRAINED)
    assert all_dppo["iqm_lo"] <= all_dppo["iqm"] <= all_dppo["iqm_hi"]
    ppo_all = df[(df.scope == "all") & (df.algorithm == "ppo")].iloc[0]
    # every ppo score on hopper/lift is below every dppo score except ppo lift 0.55 vs dppo lift 0.60
    assert ppo_all["p_improve"] == pytest.approx(0.0)


def test_bootstrap_is_reproducible(board):
    sm, df = board
    np.random.rand(17)  # disturb the global RNG: the leaderboard must not depend on its state
    point, ci = lb.interval_estimates(sm.scores, reps=REPS, seed=3)
    np.random.rand(5)
    point2, ci2 = lb.interval_estimates(sm.scores, reps=REPS, seed=3)
    for a in sm.scores:
        np.testing.assert_array_equal(ci[a], ci2[a])
        np.testing.assert_array_equal(point[a], point2[a])
        row = df[(df.scope == "all") & (df.algorithm == a)].iloc[0]
        np.testing.assert_array_equal([row[f"{m}_lo"] for m in BUILTINS], ci[a][0])
        np.testing.assert_array_equal([row[f"{m}_hi"] for m in BUILTINS], ci[a][1])
    p1 = lb.probability_of_improvement(sm.scores["dppo"], sm.scores["ppo"], reps=REPS, seed=3)
    np.random.rand(3)
    assert lb.probability_of_improvement(sm.scores["dppo"], sm.scores["ppo"], reps=REPS, seed=3) == p1
    _, ci3 = lb.interval_estimates(sm.scores, reps=REPS, seed=4)
    assert not all(np.array_equal(ci[a], ci3[a]) for a in sm.scores)


def test_write_leaderboard_and_tables(board, tmp_path):
    from rich.console import Console

    _, df = board
    csv_path, md_path = lb.write_leaderboard(df, tmp_path / "out")
    back = pd.read_csv(csv_path)
    assert list(back.columns) == list(df.columns) and len(back) == 6
    assert list(df.columns) == ["scope", "algorithm", "n_tasks", "n_seeds", "pretrained_mean",
                                *(c for m in BUILTINS for c in (m, f"{m}_lo", f"{m}_hi")),
                                "p_improve", "p_improve_lo", "p_improve_hi"]
    np.testing.assert_allclose(back["iqm"], df["iqm"])
    md = md_path.read_text()
    assert md.count("\n| all |") == 2 and "IQM (95% CI)" in md and "P(> dppo)" in md
    assert "(rliable). Optimality gap: lower is better.\n" in md
    assert not list((tmp_path / "out").glob(".*tmp"))
    table = lb.rich_table(df)
    assert table.row_count == 6
    console = Console(record=True, width=250)
    console.print(table)
    assert "robomimic" in console.export_text()


def test_per_task_table_means_over_the_same_seeds(tmp_path):
    # summaries carry the per-run wall/CPU seconds; the table averages them over the leaderboard's seeds
    root = make_store(tmp_path / "res", {("dppo", "hopper"): [0.8, 0.6], ("ppo", "hopper"): [0.5, 0.7]})
    for algo, walls in (("dppo", (100.0, 300.0)), ("ppo", (50.0, 70.0))):
        for seed, wall in enumerate(walls):
            p = root / "runs" / "hopper" / algo / f"seed{seed}" / "summary.json"
            p.write_text(json.dumps(json.loads(p.read_text()) | {"wall_s": wall, "cpu_s": wall / 2,
                                                                 "final_return": 1000.0 * (seed + 1)}))
    records, _ = scan_runs(root)
    sm = lb.score_matrices(records)
    t = lb.per_task_table(records, sm).set_index("algorithm")
    # dppo: finals 0.8, 0.6 -> mean 0.7, population std 0.1; pre-trained 0.25 both; wall (100+300)/2 = 200
    assert t.loc["dppo", "final_score"] == pytest.approx(0.7) and t.loc["dppo", "final_score_std"] == pytest.approx(0.1)
    assert t.loc["dppo", "pretrained_score"] == pytest.approx(0.25) and t.loc["dppo", "seeds"] == "0,1"
    assert t.loc["dppo", "wall_s_per_run"] == 200 and t.loc["dppo", "cpu_s_per_run"] == 100
    assert t.loc["ppo", "final_return"] == 1500 and t.loc["ppo", "env_steps_per_run"] == 10_000
    md = lb.write_leaderboard(lb.leaderboard(sm, reps=REPS), tmp_path / "out", tasks=t.reset_index())[1].read_text()
    assert "## Per task" in md and "| hopper | dppo | 0,1 | 0.250 ± 0.000 | 0.700 ± 0.100 |" in md
    assert (tmp_path / "out" / "leaderboard_tasks.csv").exists()


# ---------------------------------------------------------------------------------------------------
# Scores are read exactly or the run is skipped (never a fallback to raw returns)


def _edit_eval(run_dir: Path, col: str, row: int, value) -> None:
    df = pd.read_csv(run_dir / "eval.csv")
    df[col] = df[col].astype(object)
    df.loc[row, col] = value
    df.to_csv(run_dir / "eval.csv", index=False)


@pytest.mark.parametrize("value", ["n/a", "", "inf", "0.9x"])
def test_gym_run_with_a_bad_score_cell_is_skipped_not_scored_by_returns(store, value):
    bad = store / "runs" / "hopper" / "dppo" / "seed1"
    _edit_eval(bad, "score_mean", 1, value)  # a middle row: the final score itself is intact
    records, warnings = scan_runs(store)
    assert ("dppo", "hopper", 1) not in {(r.algo, r.task, r.seed) for r in records}
    assert len(records) == 11
    (w,) = [w for w in warnings if "seed1" in w]
    assert w.startswith("skipped corrupt run runs/hopper/dppo/seed1") and "score_mean" in w and "row 2" in w
    # no run anywhere is scored on the return scale (3000 * score)
    assert all(abs(r.final_score()) <= 1.0 for r in records)


def test_gym_run_without_score_mean_is_skipped(store):
    bad = store / "runs" / "hopper" / "ppo" / "seed0"
    pd.read_csv(bad / "eval.csv").drop(columns="score_mean").to_csv(bad / "eval.csv", index=False)
    records, warnings = scan_runs(store)
    assert len(records) == 11 and any("seed0" in w and "lacks column(s) score_mean" in w for w in warnings)


@pytest.mark.parametrize("col, value", [("success_rate", "abc"), ("iteration", "x"), ("iteration", 2.5),
                                        ("env_steps", "")])
def test_other_unreadable_cells_skip_the_run(store, col, value):
    bad = store / "runs" / "lift" / "ppo" / "seed2"
    _edit_eval(bad, col, 0, value)
    records, warnings = scan_runs(store)
    assert len(records) == 11 and any("lift/ppo/seed2" in w and col in w for w in warnings), warnings


def _non_gym_return_run(root: Path, scores, returns) -> Path:
    d = root / "runs" / "point_reach" / "dppo" / "seed0"
    d.mkdir(parents=True)
    pd.DataFrame({"iteration": [0, 5], "env_steps": [0, 500], "return_mean": returns,
                  "score_mean": scores, "success_rate": [0.0, 0.0]}).to_csv(d / "eval.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"task": "point_reach", "algorithm": "dppo", "seed": 0,
                                                "suite": "toy", "metric": "return"}))
    return d


def test_non_gym_return_task_uses_raw_returns_only_without_any_scores(tmp_path):
    _non_gym_return_run(tmp_path, [np.nan, np.nan], [-20.0, -7.5])  # no reference scores: all empty
    (r,), warnings = scan_runs(tmp_path)
    assert warnings == [] and r.final_score() == pytest.approx(-7.5)
    scored = tmp_path / "scored"
    _non_gym_return_run(scored, [10.0, 80.0], [-20.0, -7.5])
    assert scan_runs(scored)[0][0].final_score() == pytest.approx(0.8)
    partial = tmp_path / "partial"
    _non_gym_return_run(partial, [10.0, np.nan], [-20.0, -7.5])  # scored in some rows only: not guessed
    records, warnings = scan_runs(partial)
    assert records == [] and any("missing or non-finite score_mean" in w for w in warnings)


def test_unknown_metric_is_skipped(store):
    d = store / "runs" / "hopper" / "dppo" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps(dict(summary, metric="reward")))
    records, warnings = scan_runs(store)
    assert len(records) == 11 and any("metric 'reward'; valid: return, success_rate" in w for w in warnings)
