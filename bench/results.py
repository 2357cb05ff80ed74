"""Reading the results store written by `bench run`.

Layout: `<root>/runs/<task>/<algo>/seed<k>/` with `summary.json` (present only when the run is
complete), `config.json`, `eval.csv` and `metrics.csv`.

Scores
------
Every evaluation row gets one scalar *score* on a common scale where higher is better:

* Gym tasks (suite ``"gym"``, metric ``"return"``): the D4RL-normalised score divided by 100, i.e.
  ``score_mean / 100`` from ``eval.csv`` (0 = random policy, 1.0 = D4RL expert).
* robomimic / furniture tasks (metric ``"success_rate"``): the success rate in [0, 1].
* Any other task with metric ``"return"`` uses ``score_mean / 100`` when that column holds numbers,
  and the raw ``return_mean`` only when the task has no reference scores (``score_mean`` absent, or
  empty in every row).

Scores are read exactly or not at all: a cell of the column a run is scored by that is not a finite
number (text, empty, inf), a ``score_mean`` filled in some rows only, or a Gym run without
``score_mean`` makes the run corrupt (skipped with a warning) -- a run is never scored by raw returns
because one cell is bad. The same holds for the ``iteration`` and ``env_steps`` columns (integers).

The *final* score of a run is the mean score of its last ``last_n`` evaluations (default ``last_n=1``:
the final evaluation alone; a larger ``last_n`` smooths evaluation noise). The *pre-trained* score is
the score of the iteration-0 evaluation (the policy before fine-tuning); it is NaN if the run has no
iteration-0 evaluation.

`scan_runs` never raises on a bad run directory: incomplete runs (no ``summary.json``) are skipped and
counted, corrupt runs (unparseable JSON/CSV, missing or empty ``eval.csv``, missing columns, cells
that are not exact numbers, an unknown metric) are skipped with a warning, and files or directories that do not fit the layout are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.runstore import RunStore, runs_root

_SEED_RE = re.compile(r"^seed(\d+)$")
_REQUIRED_EVAL_COLUMNS = ("iteration", "env_steps")
_METRICS = ("return", "success_rate")


@dataclass
class RunRecord:
    """One complete run: identity, settings and its evaluation curve (one row per evaluation)."""

    task: str
    algo: str
    seed: int
    preset: str
    suite: str
    metric: str
    eval: pd.DataFrame
    path: Path | None = None
    summary: dict = field(default_factory=dict, repr=False)

    def scores(self) -> np.ndarray:
        """Score of every evaluation row (see the module docstring), in row order."""
        return eval_scores(self.eval, self.metric, self.suite)

    def final_score(self, last_n: int = 1) -> float:
        """Mean score of the last `last_n` evaluations (`last_n=1`: the final evaluation)."""
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        s = self.scores()
        if len(s) == 0:
            return float("nan")
        return float(np.mean(s[-last_n:]))

    def pretrained_score(self) -> float:
        """Score of the iteration-0 evaluation (the pre-trained policy); NaN if there is none."""
        it = self.eval["iteration"].to_numpy()
        s = self.scores()
        idx = np.flatnonzero(it == 0)
        return float(s[idx[0]]) if len(idx) else float("nan")


@dataclass
class ScanResult:
    records: list[RunRecord]
    warnings: list[str]
    n_incomplete: int = 0


def _numeric(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    """Column `col` as floats; ValueError naming the first cell that is neither a number nor empty."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & num.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{where} has a non-numeric {col} {raw.iloc[i]!r} (row {i + 1})")
    return num.to_numpy(dtype=float)


def _all_finite(values: np.ndarray, col: str, where: str) -> np.ndarray:
    if len(values) and not np.all(np.isfinite(values)):
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{where} has a missing or non-finite {col} ({values[i]}, row {i + 1})")
    return values


def eval_scores(df: pd.DataFrame, metric: str, suite: str = "", where: str = "eval.csv") -> np.ndarray:
    """Per-row score of an eval table (see the module docstring): the success rate for metric
    "success_rate", else score_mean / 100, or return_mean for a non-Gym task whose score_mean column is
    absent or empty in every row. A cell that is not an exact finite number in the column used -- or a
    score_mean column filled in some rows only -- is a ValueError: the scores are never mixed or guessed."""
    if metric == "success_rate":
        return _all_finite(_numeric(df, "success_rate", where), "success_rate", where)
    score = _numeric(df, "score_mean", where) if "score_mean" in df.columns else None
    if suite == "gym" or (score is not None and np.isfinite(score).any()):
        if score is None:
            raise ValueError(f"{where} lacks column score_mean (a Gym run is scored by it)")
        return _all_finite(score, "score_mean", where) / 100.0
    if "return_mean" not in df.columns:
        raise ValueError(f"{where} lacks column return_mean (score_mean is empty)")
    return _all_finite(_numeric(df, "return_mean", where), "return_mean", where)


def _load_run(run: RunStore, task: str, algo: str, seed: int) -> RunRecord:
    summary = json.loads(run.summary.read_text())
    if not isinstance(summary, dict):
        raise TypeError(f"{run.summary.name} is not a JSON object")
    cfg: dict = {}
    if run.config.exists():
        raw = json.loads(run.config.read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"{run.config.name} is not a JSON object")
        cfg = raw.get("config", {}) or {}
        if not isinstance(cfg, dict):
            raise TypeError(f"{run.config.name}: 'config' is not a JSON object")
    evals = run.evals.name
    if not run.evals.exists():
        raise ValueError(f"{evals} is missing")
    df = pd.read_csv(run.evals)
    if len(df) == 0:
        raise ValueError(f"{evals} has no rows")
    metric = str(summary.get("metric") or cfg.get("metric") or "return")
    if metric not in _METRICS:
        raise ValueError(f"{run.summary.name} has metric {metric!r}; valid: {', '.join(_METRICS)}")
    suite = str(summary.get("suite", cfg.get("suite", "")) or "unknown")
    if metric == "success_rate":
        needed = ["success_rate"]
    elif suite == "gym":
        needed = ["score_mean"]  # a Gym run is scored by its D4RL score only, never by raw returns
    else:
        needed = [] if "score_mean" in df.columns else ["return_mean"]
    missing = [c for c in (*_REQUIRED_EVAL_COLUMNS, *needed) if c not in df.columns]
    if missing:
        raise ValueError(f"{evals} lacks column(s) {', '.join(missing)}")
    for col in _REQUIRED_EVAL_COLUMNS:
        values = _all_finite(_numeric(df, col, evals), col, evals)
        if not np.all(values == np.round(values)):
            raise ValueError(f"{evals} has a non-integer {col}")
        df[col] = values.astype(np.int64)
    df = df.sort_values("iteration", kind="stable").reset_index(drop=True)
    eval_scores(df, metric, suite, evals)  # raises (the run is skipped) unless every score reads exactly
    # the checked columns as numbers, so everything downstream reads exactly what was scored
    for col in ("success_rate", "score_mean", "return_mean"):
        if col in df.columns:
            num = pd.to_numeric(df[col], errors="coerce")
            if not (df[col].notna() & num.isna()).any():
                df[col] = num.astype(float)
    return RunRecord(
        task=str(summary.get("task", task)),
        algo=str(summary.get("algorithm", algo)),
        seed=int(summary.get("seed", seed)),
        preset=str(summary.get("preset", cfg.get("preset", ""))),
        suite=suite,
        metric=metric,
        eval=df,
        path=run.dir,
        summary=summary,
    )


def scan_runs(root, *, with_counts: bool = False):
    """Read every complete run under `<root>/runs/`.

    Returns `(records, warnings)`: the list of `RunRecord` sorted by (task, algo, seed) and a list of
    human-readable warning strings (one per corrupt run directory, plus one line counting the
    incomplete runs that were skipped, if any). With `with_counts=True` returns a `ScanResult` instead
    (same content, plus `n_incomplete`). Never raises on bad run directories; a missing root gives no
    records and a warning.
    """
    root = Path(root)
    records: list[RunRecord] = []
    warnings: list[str] = []
    n_incomplete = 0
    runs = runs_root(root)
    if not runs.is_dir():
        warnings.append(f"no results store at {runs}")
    else:
        for task_dir in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for algo_dir in sorted(p for p in task_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for seed_dir in sorted(algo_dir.iterdir()):
                    m = _SEED_RE.match(seed_dir.name)
                    if not m or not seed_dir.is_dir():
                        continue
                    run = RunStore(seed_dir)
                    if not run.complete():
                        n_incomplete += 1
                        continue
                    try:
                        records.append(_load_run(run, task_dir.name, algo_dir.name, int(m.group(1))))
                    except Exception as e:  # noqa: BLE001 - a corrupt run must never crash the scan
                        rel = seed_dir.relative_to(root) if seed_dir.is_relative_to(root) else seed_dir
                        warnings.append(f"skipped corrupt run {rel}: {type(e).__name__}: {e}")
    if n_incomplete:
        warnings.append(f"skipped {n_incomplete} incomplete run(s) (no {RunStore(runs).summary.name})")
    records.sort(key=lambda r: (r.task, r.algo, r.seed))
    if with_counts:
        return ScanResult(records, warnings, n_incomplete)
    return records, warnings

