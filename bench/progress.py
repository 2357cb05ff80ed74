"""Live progress for `bench run` (rich): iteration, env steps, returns, steps/s, ETA."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(x, spec=".1f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class RunProgress:
    def __init__(self, console: Console | None = None, label: str = "run"):
        self.label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self.task = None
        self.t0 = None
        self.steps0 = 0

    def start(self, total: int, done: int, env_steps: int, last_eval: dict | None):
        self.progress.start()
        self.t0, self.steps0 = time.time(), env_steps
        self.task = self.progress.add_task(self.label, total=total, completed=done,
                                           info=self._info(env_steps, None, last_eval))

    def _info(self, env_steps, row, ev):
        sps = (env_steps - self.steps0) / max(time.time() - self.t0, 1e-9) if self.t0 else 0
        train = _fmt(row.get("train_return")) if row else "-"
        if ev is None:
            ev_txt = "-"
        elif ev.get("score_mean") is not None and not math.isnan(ev["score_mean"]):
            ev_txt = f"{ev['return_mean']:.1f} (score {ev['score_mean']:.1f}, success {ev['success_rate']:.2f})"
        else:
            ev_txt = f"{ev['return_mean']:.2f} (success {ev['success_rate']:.2f})"
        return f"steps {env_steps:,} | train return {train} | eval {ev_txt} | {sps:,.0f} steps/s"

    def update(self, iteration: int, env_steps: int, row: dict, last_eval: dict | None):
        self.progress.update(self.task, completed=iteration, info=self._info(env_steps, row, last_eval))

    def stop(self):
        self.progress.stop()
