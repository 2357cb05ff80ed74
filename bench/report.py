"""Figures and a self-contained HTML report of a results store.

`make_report` writes `report.html` (every figure embedded as a base64 PNG; no external URL), plus each
figure as PNG and PDF under `figures/`, and the leaderboard files (`leaderboard.csv`, `leaderboard.md`).
Figures: sample-efficiency curves per task (score vs env steps, mean over seeds with a 95% bootstrap CI
band, one line per algorithm), the leaderboard's aggregate statistics with 95% CIs (`bench.statistics`:
IQM, mean, median, optimality gap and any registered), performance profiles, and the probability of
improvement over the baseline (when there is more than one algorithm), and a frame strip per task where
a run has one (`bench video`: the first evaluation episode). Scores are those of `bench.results` /
`bench.leaderboard`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path

import numpy as np

from bench import leaderboard as lb
from core.atomic import atomic_write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(algos: list[str]) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(algos)}


def _curve(records, seed: int = 0, reps: int = 1000):
    """Mean curve over seeds with a percentile-bootstrap 95% CI: (x env steps, mean, lo, hi).

    Runs are aligned on the evaluation iteration (only iterations that every seed evaluated); x is the
    mean env-step count of that iteration over the seeds.
    """
    common = None
    for r in records:
        its = set(r.eval["iteration"].tolist())
        common = its if common is None else common & its
    its = sorted(common or [])
    if not its:
        return None
    ys, xs = [], []
    for r in records:
        idx = r.eval.set_index("iteration")
        s = dict(zip(r.eval["iteration"], r.scores()))
        ys.append([s[i] for i in its])
        xs.append([float(idx.loc[i, "env_steps"]) for i in its])
    y = np.asarray(ys, float)
    x = np.asarray(xs, float).mean(axis=0)
    mean = y.mean(axis=0)
    if len(y) > 1:
        rng = np.random.default_rng(seed)
        boot = y[rng.integers(0, len(y), size=(reps, len(y)))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    else:
        lo = hi = mean
    return x, mean, lo, hi


def _save(fig, name: str, fig_dir: Path) -> str:
    """Write `name`.png and `name`.pdf into fig_dir; return the PNG as base64."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    png = buf.getvalue()
    (fig_dir / f"{name}.png").write_bytes(png)
    fig.savefig(fig_dir / f"{name}.pdf", bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(png).decode("ascii")


def _video_strips(records, tasks, baseline: str) -> str:
    """One frame strip per task (of its first run with one: the baseline's first, then by algorithm and
    seed), as figures with the PNG embedded."""
    from bench.video import find_strip

    out = []
    for t in tasks:
        runs = sorted((r for r in records if r.task == t and r.path is not None),
                      key=lambda r: (r.algo != baseline, r.algo, r.seed))
        found = next(((r, f) for r in runs for f in [find_strip(r.path)] if f is not None), None)
        if found is None:
            continue
        (r, (png, policy)) = found
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        alt = f"{t}: {r.algo} seed {r.seed}, {policy} policy, frames of its first evaluation episode"
        out.append(f'<figure><img id="strip-{html.escape(t)}" class="strip" alt="{html.escape(alt)}" '
                   f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>')
    return "".join(out)


def make_report(records, out_dir, tasks=None, algos=None, preset=None, last_n: int = 1,
                reps: int = lb.DEFAULT_REPS, seed: int = lb.DEFAULT_SEED, baseline: str = "dppo",
                warnings=(), title: str = "dppo-bench report", statistics: list[str] | None = None) -> Path:
    """Write `out_dir/report.html`, `out_dir/figures/*.png|pdf` and the leaderboard files.

    Returns the path of `report.html`. `records` come from `bench.results.scan_runs`; `warnings` (e.g.
    the scan's) are listed in the page. The probability of improvement is taken over `baseline`, or
    over the first algorithm when `baseline` has no runs. `statistics` names the aggregate statistics
    (default: every registered one).
    """
    from rliable import library as rly
    from rliable import plot_utils

    plt = _plt()
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    sm = lb.score_matrices(records, tasks=tasks, algos=algos, preset=preset, last_n=last_n)
    algo_names = list(sm.scores)
    if baseline not in sm.scores and algo_names:
        baseline = algo_names[0]
    df = lb.leaderboard(sm, reps=reps, seed=seed, baseline=baseline, statistics=statistics)
    lb.write_leaderboard(df, out_dir, baseline=baseline)
    colors = _colors(sorted({r.algo for r in records} | set(algo_names)))
    sections: list[str] = []

    def img(b64: str, name: str, alt: str) -> str:
        return (f'<figure><img id="fig-{html.escape(name)}" class="plot" alt="{html.escape(alt)}" '
                f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>')

    # 1. sample-efficiency curves, one figure per task
    recs = [r for r in records if preset is None or r.preset == preset]
    curve_tasks = list(sm.tasks) if sm.tasks else sorted({r.task for r in recs})
    parts = []
    for t in curve_tasks:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        plotted = False
        for a in sorted({r.algo for r in recs if r.task == t and (algos is None or r.algo in algos)}):
            c = _curve([r for r in recs if r.task == t and r.algo == a], seed=seed)
            if c is None:
                continue
            x, m, lo, hi = c
            n = sum(1 for r in recs if r.task == t and r.algo == a)
            ax.plot(x, m, color=colors.get(a), label=f"{a} ({n} seed{'s' if n != 1 else ''})", marker="o", ms=3)
            ax.fill_between(x, lo, hi, color=colors.get(a), alpha=0.2, linewidth=0)
            plotted = True
        ax.set_xlabel("env steps")
        ax.set_ylabel("score")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        name = f"curve-{t}"
        parts.append(img(_save(fig, name, fig_dir), name, f"{t}: score vs env steps (mean, 95% bootstrap CI)"))
    sections.append('<h2>Sample efficiency</h2>\n<div class="grid">' + "".join(parts) + "</div>")
    strips = _video_strips(recs, curve_tasks, baseline)
    if strips:
        sections.append('<h2>Videos</h2>\n<p class="note">The first evaluation episode of one run per task '
                        "(<code>bench video</code>; the videos are in the run directories).</p>\n" + strips)

    if sm.scores:
        # 2. aggregate statistics (all tasks)
        all_rows = df[df["scope"] == "all"].set_index("algorithm")
        stats = lb.table_statistics(df)
        point = {a: np.array([all_rows.loc[a, m.name] for m in stats]) for a in algo_names}
        ci = {a: np.array([[all_rows.loc[a, f"{m.name}_lo"] for m in stats],
                           [all_rows.loc[a, f"{m.name}_hi"] for m in stats]]) for a in algo_names}
        fig, _ = plot_utils.plot_interval_estimates(
            point, ci, metric_names=[m.label for m in stats], algorithms=algo_names,
            colors={a: colors[a] for a in algo_names}, xlabel="Score",
            row_height=0.45, xlabel_y_coordinate=-0.6 / (0.45 * max(1, len(algo_names))))
        sections.append("<h2>Aggregate metrics (all tasks, 95% stratified-bootstrap CIs)</h2>"
                        + img(_save(fig, "aggregates", fig_dir), "aggregates",
                              f"{', '.join(m.label for m in stats)} with 95% CIs"))

        # 3. performance profiles
        all_scores = np.concatenate([s.ravel() for s in sm.scores.values()])
        hi_tau = max(1.0, float(np.nanmax(all_scores)) * 1.05)
        taus = np.linspace(0.0, hi_tau, 81)
        np.random.seed(seed)
        prof, prof_ci = rly.create_performance_profile(sm.scores, taus, reps=reps)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        plot_utils.plot_performance_profiles(prof, taus, performance_profile_cis=prof_ci, ax=ax,
                                             colors={a: colors[a] for a in algo_names},
                                             xlabel=r"Score ($\tau$)", legend=len(algo_names) > 1)
        sections.append("<h2>Performance profiles</h2>" + img(_save(fig, "profiles", fig_dir), "profiles",
                                                              "Fraction of runs with score > tau (95% CI)"))

        # 4. probability of improvement
        others = [a for a in algo_names if a != baseline]
        if others:
            pe, pci = {}, {}
            for a in others:
                p, lo, hi = lb.probability_of_improvement(sm.scores[a], sm.scores[baseline], reps=reps, seed=seed)
                pe[f"{a},{baseline}"] = np.array(p)
                pci[f"{a},{baseline}"] = np.array([lo, hi])
            fig, ax = plt.subplots(figsize=(4.5, 0.6 + 0.5 * len(others)))
            plot_utils.plot_probability_of_improvement(pe, pci, ax=ax, colors=[colors[a] for a in others],
                                                       xticks=[0.0, 0.25, 0.5, 0.75, 1.0])
            sections.append(f"<h2>Probability of improvement over {html.escape(baseline)}</h2>"
                            + img(_save(fig, "poi", fig_dir), "poi", f"P(algorithm > {baseline}) with 95% CIs"))
        else:
            sections.append('<h2>Probability of improvement</h2><p class="note" id="poi-note">Only one '
                             "algorithm has results; the probability of improvement needs at least two.</p>")
    else:
        sections.append('<p class="note" id="no-aggregates">No algorithm has complete runs on every task; '
                        "no aggregates.</p>")

    table = lb.display_table(df, baseline).to_html(index=False, table_id="leaderboard", border=0,
                                                     classes="leaderboard", escape=True)
    notes = list(sm.messages) + list(warnings)
    notes_html = ('<h2>Notes</h2><ul id="notes">' + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
                  + "</ul>") if notes else ""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.leaderboard {{ border-collapse: collapse; font-size: 0.9em; }}
table.leaderboard th, table.leaderboard td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0.5em; }} img.plot, img.strip {{ max-width: 100%; }} .note {{ color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {when}. Score: Gym = D4RL-normalised score / 100 (1.0 = expert); robomimic/furniture =
success rate. Final score = mean of the last {last_n} evaluation(s). {len(sm.tasks)} task(s),
{len(algo_names)} algorithm(s), {sm.n_seeds} seed(s) per task in the aggregates; bootstrap reps = {reps}.</p>
<h2>Leaderboard</h2>
{table}
{notes_html}
{''.join(sections)}
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
