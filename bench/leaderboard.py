"""Leaderboard: score matrices, rliable aggregates with bootstrap CIs, and tables.

Scores are the per-run final scores of `bench.results` (Gym: D4RL-normalised score / 100, so 1.0 =
expert; robomimic/furniture: success rate), the final score being the mean of the last `last_n`
evaluations (default 1: the final evaluation).

Unequal seed counts
-------------------
rliable needs, per algorithm, a NaN-free matrix of shape (n_runs, n_tasks). `score_matrices` uses one
common number of seeds for every (algorithm, task) cell: the minimum seed count over all cells (or
`n_seeds`, if given and smaller), taking the lowest-numbered seeds of each cell. Every algorithm is
therefore aggregated over the same number of runs per task. Each cell with fewer seeds than requested
(`n_seeds`, or else the largest count found in any cell) is reported as a message such as
``"dppo on walker2d: 1 of 3 seeds"``. An algorithm with no complete run on one of the tasks is left out
of the matrices (with a message) rather than padded with NaNs.

Aggregates
----------
The statistics of `bench.statistics` (default: every registered one; built-ins IQM, mean, median and
optimality gap with gamma = 1) with stratified-bootstrap percentile 95% CIs (`rly.get_interval_estimates`,
`reps` default 2000) over all tasks ("all") and over the tasks of each suite; the probability of
improvement P(algo > baseline) of each algorithm over the baseline ("dppo").
Reproducibility: with rliable 1.2.0 and arch 7, `random_state` does not make the bootstrap
reproducible (it draws from NumPy's global RNG), so `np.random.seed(seed)` is called immediately before
each rliable call: one call per scope with all algorithms (in the matrices' key order) and all chosen
statistics in one function (`aggregate_metrics`), so they share the resamples and adding a statistic
leaves the others' CIs unchanged; and one call per (scope, algorithm) pair for the probability of
improvement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.statistics import Statistic, get_statistic, get_statistics
from core.atomic import atomic_write_text

DEFAULT_REPS = 2000
DEFAULT_SEED = 0


@dataclass
class ScoreMatrices:
    """`scores[algo]` is an (n_seeds, n_tasks) array with columns in `tasks` order.

    Iterating yields `(scores, tasks, messages)`, so `scores, tasks, messages = score_matrices(...)`.
    `pretrained[algo]` holds the iteration-0 scores of the same runs, `seeds[algo][task]` the seeds
    used, `suites[task]` the suite of each task.
    """

    scores: dict[str, np.ndarray]
    tasks: list[str]
    messages: list[str]
    pretrained: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    suites: dict[str, str] = field(default_factory=dict)
    n_seeds: int = 0

    def __iter__(self):
        return iter((self.scores, self.tasks, self.messages))


def score_matrices(records, tasks=None, algos=None, preset=None, last_n: int = 1,
                   n_seeds: int | None = None) -> ScoreMatrices:
    """Final-score matrices per algorithm from `bench.results.RunRecord`s (see the module docstring).

    `tasks`/`algos` select and order tasks/algorithms (default: all found, sorted), `preset` keeps only
    runs of that preset, `last_n` averages the last evaluations, `n_seeds` caps the seeds per cell.
    """
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    recs = [r for r in records if preset is None or r.preset == preset]
    messages: list[str] = []
    presets = sorted({r.preset for r in recs})
    if preset is None and len(presets) > 1:
        messages.append(f"runs mix presets {', '.join(presets)}; pass a preset to compare like with like")
    task_list = list(tasks) if tasks is not None else sorted({r.task for r in recs})
    algo_list = list(algos) if algos is not None else sorted({r.algo for r in recs})
    cells: dict[tuple[str, str], list] = {}
    for r in recs:
        if r.task in task_list and r.algo in algo_list:
            cells.setdefault((r.algo, r.task), []).append(r)
    for cell in cells.values():
        cell.sort(key=lambda r: r.seed)
    suites = {}
    for r in recs:
        suites.setdefault(r.task, r.suite)
    kept_algos = []
    for a in algo_list:
        missing = [t for t in task_list if not cells.get((a, t))]
        if missing:
            if len(missing) < len(task_list):
                messages.append(f"{a} has no complete run on {', '.join(missing)}; left out of the leaderboard")
            elif algos is not None:
                messages.append(f"{a} has no complete run; left out of the leaderboard")
            continue
        kept_algos.append(a)
    for t in task_list:
        if not any(cells.get((a, t)) for a in algo_list):
            messages.append(f"no complete run on {t}")
    counts = {(a, t): len(cells[(a, t)]) for a in kept_algos for t in task_list}
    if not counts:
        return ScoreMatrices({}, task_list, messages, {}, {}, suites, 0)
    wanted = n_seeds if n_seeds is not None else max(counts.values())
    common = min(min(counts.values()), wanted)
    for (a, t), c in counts.items():
        if c < wanted:
            messages.append(f"{a} on {t}: {c} of {wanted} seeds")
    if common < wanted:
        messages.append(f"using the common minimum of {common} seed(s) per task for every algorithm")
    scores, pre, seeds = {}, {}, {}
    for a in kept_algos:
        sel = {t: cells[(a, t)][:common] for t in task_list}
        scores[a] = np.array([[sel[t][i].final_score(last_n) for t in task_list] for i in range(common)], float)
        pre[a] = np.array([[sel[t][i].pretrained_score() for t in task_list] for i in range(common)], float)
        seeds[a] = {t: [r.seed for r in sel[t]] for t in task_list}
    return ScoreMatrices(scores, task_list, messages, pre, seeds, suites, common)


def aggregate_metrics(scores: np.ndarray, statistics: list[Statistic]) -> np.ndarray:
    """Each statistic of an (n_runs, n_tasks) matrix, in order."""
    return np.array([s.fn(scores) for s in statistics], dtype=float)


def interval_estimates(scores: dict[str, np.ndarray], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                       statistics: list[Statistic] | None = None):
    """`(point, interval)` from `rly.get_interval_estimates` of `aggregate_metrics` (default statistics:
    `get_statistics()`); `point[algo][j]` is statistic j."""
    from rliable import library as rly

    statistics = get_statistics() if statistics is None else statistics
    np.random.seed(seed)
    return rly.get_interval_estimates(scores, lambda x: aggregate_metrics(x, statistics), reps=reps)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = DEFAULT_REPS,
                               seed: int = DEFAULT_SEED) -> tuple[float, float, float]:
    """P(X > Y) with its stratified-bootstrap 95% CI: `(point, lo, hi)`."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    point, ci = rly.get_interval_estimates({"x,y": (x, y)}, metrics.probability_of_improvement, reps=reps)
    return float(np.asarray(point["x,y"]).reshape(-1)[0]), float(ci["x,y"][0].reshape(-1)[0]), \
        float(ci["x,y"][1].reshape(-1)[0])


def _scopes(sm: ScoreMatrices) -> list[tuple[str, list[int]]]:
    scopes = [("all", list(range(len(sm.tasks))))]
    for suite in sorted({sm.suites.get(t, "unknown") for t in sm.tasks}):
        scopes.append((suite, [i for i, t in enumerate(sm.tasks) if sm.suites.get(t, "unknown") == suite]))
    return scopes


def leaderboard(sm: ScoreMatrices, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                baseline: str = "dppo", statistics: list[str] | None = None) -> pd.DataFrame:
    """One row per (scope, algorithm): scope is "all" or a suite name.

    Columns: scope, algorithm, n_tasks, n_seeds, pretrained_mean, then for each statistic named in
    `statistics` (default: all registered, `bench.statistics.list_statistics()`) the point estimate and
    `<name>_lo`/`<name>_hi` (95% CI), then `p_improve`, `p_improve_lo`, `p_improve_hi`
    (P(algorithm > baseline); NaN for the baseline itself or when it is absent).
    """
    stats = get_statistics(statistics)
    cols = ["scope", "algorithm", "n_tasks", "n_seeds", "pretrained_mean"]
    for m in stats:
        cols += [m.name, f"{m.name}_lo", f"{m.name}_hi"]
    cols += ["p_improve", "p_improve_lo", "p_improve_hi"]
    rows = []
    if not sm.scores:
        return pd.DataFrame(rows, columns=cols)
    for scope, idx in _scopes(sm):
        sub = {a: s[:, idx] for a, s in sm.scores.items()}
        point, ci = interval_estimates(sub, reps=reps, seed=seed, statistics=stats)
        for a, a_scores in sub.items():
            row = {"scope": scope, "algorithm": a, "n_tasks": len(idx), "n_seeds": a_scores.shape[0],
                   "pretrained_mean": float(np.nanmean(sm.pretrained[a][:, idx])) if a in sm.pretrained
                   and np.isfinite(sm.pretrained[a][:, idx]).any() else float("nan")}
            for j, m in enumerate(stats):
                row[m.name] = float(point[a][j])
                row[f"{m.name}_lo"] = float(ci[a][0][j])
                row[f"{m.name}_hi"] = float(ci[a][1][j])
            if baseline in sub and a != baseline:
                row["p_improve"], row["p_improve_lo"], row["p_improve_hi"] = probability_of_improvement(
                    a_scores, sub[baseline], reps=reps, seed=seed)
            else:
                row["p_improve"] = row["p_improve_lo"] = row["p_improve_hi"] = float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def per_task_table(records, sm: ScoreMatrices, last_n: int = 1) -> pd.DataFrame:
    """One row per (task, algorithm) of the leaderboard's runs (the same seeds): the score before and after
    fine-tuning (mean and std over seeds), the raw return, and per-run env steps, wall and CPU seconds."""
    by_key = {(r.algo, r.task, r.seed): r for r in records}
    rows = []
    for t in sm.tasks:
        for a in sm.scores:
            runs = [by_key[(a, t, s)] for s in sm.seeds[a][t] if (a, t, s) in by_key]
            pre = np.array([r.pretrained_score() for r in runs])
            fin = np.array([r.final_score(last_n) for r in runs])

            def per_run(key):
                vals = [r.summary.get(key) for r in runs]
                return float(np.mean(vals)) if vals and None not in vals else float("nan")

            rows.append({"task": t, "algorithm": a, "seeds": ",".join(str(r.seed) for r in runs),
                         "pretrained_score": pre.mean(), "pretrained_score_std": pre.std(),
                         "final_score": fin.mean(), "final_score_std": fin.std(),
                         "pretrained_return": per_run("pretrained_return"), "final_return": per_run("final_return"),
                         "env_steps_per_run": per_run("env_steps"), "wall_s_per_run": per_run("wall_s"),
                         "cpu_s_per_run": per_run("cpu_s")})
    return pd.DataFrame(rows)


def per_task_markdown(df: pd.DataFrame) -> str:
    cols = ["task", "algorithm", "seeds", "pre-trained score", "final score", "pre-trained return", "final return",
            "env steps / run", "wall s / run", "CPU s / run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [r["task"], r["algorithm"], r["seeds"], f"{r['pretrained_score']:.3f} ± {r['pretrained_score_std']:.3f}",
                 f"{r['final_score']:.3f} ± {r['final_score_std']:.3f}", f"{r['pretrained_return']:.1f}",
                 f"{r['final_return']:.1f}", f"{r['env_steps_per_run']:,.0f}", f"{r['wall_s_per_run']:.0f}",
                 "–" if not np.isfinite(r["cpu_s_per_run"]) else f"{r['cpu_s_per_run']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: float, lo: float | None = None, hi: float | None = None) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if lo is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def table_statistics(df: pd.DataFrame) -> list[Statistic]:
    """The statistics a leaderboard frame holds (columns `name`, `name_lo`, `name_hi`), in column order."""
    return [get_statistic(c) for c in df.columns
            if c != "p_improve" and f"{c}_lo" in df.columns and f"{c}_hi" in df.columns]


def display_table(df: pd.DataFrame, baseline: str = "dppo") -> pd.DataFrame:
    """The leaderboard as strings ("0.712 [0.650, 0.780]") for Markdown, HTML and the terminal."""
    out = pd.DataFrame({
        "scope": df["scope"], "algorithm": df["algorithm"],
        "tasks": df["n_tasks"].astype(int).astype(str), "seeds": df["n_seeds"].astype(int).astype(str),
        "pre-trained mean": [_fmt(v) for v in df["pretrained_mean"]],
    })
    for m in table_statistics(df):
        out[f"{m.label} (95% CI)"] = [_fmt(r[m.name], r[f"{m.name}_lo"], r[f"{m.name}_hi"]) for _, r in df.iterrows()]
    if df["p_improve"].notna().any():
        out[f"P(> {baseline}) (95% CI)"] = [_fmt(r["p_improve"], r["p_improve_lo"], r["p_improve_hi"])
                                            for _, r in df.iterrows()]
    return out


def to_markdown(df: pd.DataFrame, baseline: str = "dppo") -> str:
    """A GitHub-flavoured Markdown table of `display_table(df)` (no extra dependency)."""
    t = display_table(df, baseline)
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "|".join("---" for _ in t.columns) + "|"]
    for _, r in t.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(df: pd.DataFrame, out_dir, baseline: str = "dppo",
                      tasks: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write `leaderboard.csv` (raw numbers) and `leaderboard.md` into `out_dir`, atomically; with `tasks`
    (`per_task_table`) also `leaderboard_tasks.csv` and a per-task section in the Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "leaderboard.csv", out_dir / "leaderboard.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    lower = [m.label for m in table_statistics(df) if not m.higher_is_better]
    note = ("Scores: Gym = D4RL-normalised score / 100 (1.0 = expert); robomimic/furniture = success rate. "
            "Point estimates with stratified-bootstrap 95% CIs (rliable)."
            + (f" {', '.join(lower)}: lower is better." if lower else "") + "\n\n")
    md = "# Leaderboard\n\n" + note + to_markdown(df, baseline)
    if tasks is not None:
        atomic_write_text(out_dir / "leaderboard_tasks.csv", tasks.to_csv(index=False))
        md += ("\n## Per task\n\nScores as above, mean ± std over seeds; returns are means; the CPU time is the "
               "run process's own (not async env workers').\n\n" + per_task_markdown(tasks))
    atomic_write_text(md_path, md)
    return csv_path, md_path


def rich_table(df: pd.DataFrame, baseline: str = "dppo", title: str = "Leaderboard"):
    """The leaderboard as a `rich.table.Table`."""
    from rich.table import Table

    t = display_table(df, baseline)
    table = Table(*t.columns, title=title)
    for _, r in t.iterrows():
        table.add_row(*(str(v) for v in r))
    return table
