"""Progress output that works everywhere: a live rich bar on a terminal, plain lines otherwise.

When stderr is a terminal, `bench run` and pre-training show a live rich progress bar. When it is not (a
file, a pipe: SLURM, `nohup`, a Ray worker, CI), a live bar would only render at the end, so they write one
plain line per iteration (pre-training: per 100 updates) instead, but at most one line per LOG_EVERY
seconds (`--log-every SECONDS` or the environment variable DPPO_BENCH_LOG_EVERY; default 10; 0 = every
iteration); the first and the last iteration always get their line. A line of `bench run`:

    12:03:04 dppo/lift/seed0 iteration 3/50 | env steps 12000 | train return 12.3 | eval 0.40 (success 0.40) at itr 0 | 1234 steps/s | elapsed 35s | ETA 9m40s

`LogConsole` is a rich Console that never cuts table cells or wraps lines when its output is not a terminal
(it renders as wide as needed), so `bench tasks | cat` and log files keep every name and number.
"""

from __future__ import annotations

import math
import os
import time

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from core.errors import BenchError

LOG_EVERY_ENV = "DPPO_BENCH_LOG_EVERY"
DEFAULT_LOG_EVERY_S = 10.0
WIDE = 10_000  # the width of a console that is not a terminal: tables are measured, never cut


class LogConsole(Console):
    """A rich Console that is as wide as its content needs when it does not write to a terminal (a width given
    to it in code still counts; $COLUMNS does not: it is what cut every cell at 80 columns in a pipe)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._given_width = kwargs.get("width") is not None

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if not self._given_width and not self.is_terminal:
            return ConsoleDimensions(WIDE, size.height)
        return size

    @size.setter
    def size(self, new_size) -> None:
        self._given_width = True
        Console.size.fset(self, new_size)

    @property
    def width(self) -> int:
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        self._given_width = True
        Console.width.fset(self, width)


def log_every_s(value: float | None = None) -> float:
    """Seconds between plain progress lines: `value` (a --log-every option), else $DPPO_BENCH_LOG_EVERY, else 10."""
    source = "--log-every"
    if value is None:
        raw = os.environ.get(LOG_EVERY_ENV, "").strip()
        if not raw:
            return DEFAULT_LOG_EVERY_S
        source = LOG_EVERY_ENV
        try:
            value = float(raw)
        except ValueError:
            raise BenchError(f"{LOG_EVERY_ENV} must be a number of seconds >= 0, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BenchError(f"{source} must be a number of seconds >= 0, got {value:g}")
    return float(value)


def _fmt(x, spec=".1f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fmt_duration(s: float | None) -> str:
    """35s, 9m40s, 2h05m; '-' when unknown."""
    if s is None or not math.isfinite(s) or s < 0:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _eval_text(ev: dict | None, with_iteration: bool = False) -> str:
    if ev is None:
        return "-"
    if ev.get("score_mean") is not None and not math.isnan(ev["score_mean"]):
        txt = f"{ev['return_mean']:.1f} (score {ev['score_mean']:.1f}, success {ev['success_rate']:.2f})"
    else:
        txt = f"{ev['return_mean']:.2f} (success {ev['success_rate']:.2f})"
    if with_iteration and ev.get("iteration") is not None:
        txt += f" at itr {ev['iteration']}"
    return txt


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


class RunProgress:
    """Fine-tuning progress of `bench run`: `start`, `update` per iteration, `stop` (idempotent)."""

    def __init__(self, console: Console | None = None, label: str = "run", log_every: float | None = None):
        self.console = console or LogConsole(stderr=True)
        self.label = label
        self.live = self.console.is_terminal
        self.log_every = log_every_s(log_every)
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
        self.task = None
        self.t0 = None
        self.steps0 = 0
        self.itr0 = 0
        self.total = 0
        self.last_line = None

    def start(self, total: int, done: int, env_steps: int, last_eval: dict | None):
        self.t0, self.steps0, self.itr0, self.total = time.time(), env_steps, done, total
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total, completed=done,
                                               info=self._info(env_steps, None, last_eval))
        else:
            self.task = 0
            self._line(done, env_steps, None, last_eval)

    def _sps(self, env_steps):
        return (env_steps - self.steps0) / max(time.time() - self.t0, 1e-9) if self.t0 else 0

    def _info(self, env_steps, row, ev):
        train = _fmt(row.get("train_return")) if row else "-"
        return (f"steps {env_steps:,} | train return {train} | eval {_eval_text(ev)} | "
                f"{self._sps(env_steps):,.0f} steps/s")

    def plain_line(self, iteration: int, env_steps: int, row: dict | None, ev: dict | None) -> str:
        elapsed = time.time() - self.t0
        done = iteration - self.itr0
        eta = elapsed / done * (self.total - iteration) if done > 0 else (0.0 if iteration >= self.total else None)
        train = _fmt(row.get("train_return")) if row else "-"
        return (f"{_stamp()} {self.label} iteration {iteration}/{self.total} | env steps {env_steps} | "
                f"train return {train} | eval {_eval_text(ev, True)} | {self._sps(env_steps):.0f} steps/s | "
                f"elapsed {fmt_duration(elapsed)} | ETA {fmt_duration(eta)}")

    def _line(self, iteration, env_steps, row, ev):
        self.last_line = time.time()
        self.console.print(self.plain_line(iteration, env_steps, row, ev), markup=False, highlight=False,
                           soft_wrap=True)

    def update(self, iteration: int, env_steps: int, row: dict, last_eval: dict | None):
        if self.live:
            self.progress.update(self.task, completed=iteration, info=self._info(env_steps, row, last_eval))
        elif (iteration >= self.total or iteration == self.itr0 + 1 or self.last_line is None
              or time.time() - self.last_line >= self.log_every):
            self._line(iteration, env_steps, row, last_eval)

    def stop(self):
        if self.live and self.task is not None and self.progress.live.is_started:
            self.progress.stop()


class PretrainProgress:
    """Pre-training progress, the `progress(step, total, loss)` callback of `pretrain_policy` (called every
    100 updates): a rich bar on a terminal; otherwise a plain line at most every LOG_EVERY seconds (0: every
    call), the first and the last always, e.g.

        12:00:10 pre-training update 500/5000 | loss 0.1234 | 12800 samples/s | elapsed 5s | ETA 45s
    """

    def __init__(self, console: Console | None = None, label: str = "pre-training", batch_size: int | None = None,
                 log_every: float | None = None):
        self.console = console or LogConsole(stderr=True)
        self.label = label
        self.batch_size = batch_size
        self.live = self.console.is_terminal
        self.log_every = log_every_s(log_every)
        self.progress = None
        self.task = None
        self.t0 = None
        self.step0 = 0
        self.last_line = None

    def _rate(self, step) -> str:
        dt = time.time() - self.t0
        if step <= self.step0 or dt <= 0:
            return "- samples/s" if self.batch_size else "- updates/s"
        per_s = (step - self.step0) / dt
        return f"{per_s * self.batch_size:.0f} samples/s" if self.batch_size else f"{per_s:.1f} updates/s"

    def __call__(self, step: int, total: int, loss: float):
        if self.t0 is None:
            self.t0, self.step0 = time.time(), step
        info = f"loss {loss:.4f} | {self._rate(step)}"
        if self.live:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=self.console, transient=False)
                self.progress.start()
                self.task = self.progress.add_task(self.label, total=total, completed=step, info=info)
            self.progress.update(self.task, completed=step, info=info)
            if step >= total:
                self.stop()
            return
        if step >= total or self.last_line is None or time.time() - self.last_line >= self.log_every:
            elapsed = time.time() - self.t0
            eta = elapsed / (step - self.step0) * (total - step) if step > self.step0 else None
            self.last_line = time.time()
            self.console.print(f"{_stamp()} {self.label} update {step}/{total} | {info} | "
                               f"elapsed {fmt_duration(elapsed)} | ETA {fmt_duration(0.0 if step >= total else eta)}",
                               markup=False, highlight=False, soft_wrap=True)

    def stop(self):
        if self.progress is not None and self.progress.live.is_started:
            self.progress.stop()


class GridLog:
    """`bench grid` events as plain lines (for a stderr that is not a terminal); progress lines of one run (its
    metrics.csv and eval.csv, with the fields of `bench run`'s lines; steps/s: the last iteration's) at most
    every LOG_EVERY seconds (0: each change of its metrics.csv), its first and its last iteration always, e.g.

        12:00:00 grid: 4 runs, 1 complete, 3 to run, 2 workers
        12:00:00 grid: start hopper/dppo/seed0 (log results/logs/hopper_dppo_seed0.log)
        12:00:30 grid: hopper/dppo/seed0 iteration 3/50 | env steps 12000 | train return 812.3 | eval 1040.1 (score 32.6, success 0.00) at itr 0 | 1234 steps/s | elapsed 30s | ETA 7m50s
        12:05:00 grid: done hopper/dppo/seed0 in 300s
        12:05:00 grid: failed walker2d/dppo/seed0 (exit 1), log results/logs/walker2d_dppo_seed0.log
    """

    def __init__(self, console: Console, log_every: float | None = None):
        self.console = console
        self.log_every = log_every_s(log_every)
        self.last: dict[str, float] = {}

    def line(self, text: str):
        self.console.print(f"{_stamp()} grid: {text}", markup=False, highlight=False, soft_wrap=True)

    def header(self, rows: list[dict], workers: int):
        n_complete = sum(1 for r in rows if r.get("state") == "complete")
        self.line(f"{len(rows)} runs, {n_complete} complete, {len(rows) - n_complete} to run, "
                  f"{workers} worker{'s' if workers != 1 else ''}")

    def event(self, kind: str, row: dict, info: dict):
        rid = row["run_id"]
        if kind == "skip":
            self.line(f"skip {rid} ({row.get('state')})")
        elif kind == "start":
            self.line(f"start {rid} (log {info.get('log')})")
        elif kind == "progress":
            now = time.time()
            it, n = row.get("iteration"), row.get("n_iterations")
            if (self.log_every and now - self.last.get(rid, -math.inf) < self.log_every
                    and not (it and n and it >= n)):
                return
            self.last[rid] = now
            elapsed = now - row["started"] if row.get("started") else None
            eta = elapsed / it * (n - it) if elapsed and it and n else None
            m = {k: v for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float))}
            self.line(f"{rid} iteration {it or 0}/{n or '?'} | env steps {row.get('env_steps') or 0} | "
                      f"train return {_fmt(m.get('train_return'))} | eval {_eval_text(info.get('eval'), True)} | "
                      f"{_fmt(m.get('env_steps_per_s'), '.0f')} steps/s | elapsed {fmt_duration(elapsed)} | "
                      f"ETA {fmt_duration(eta)}")
        elif kind == "done":
            self.line(f"done {rid} in {info.get('wall_s', 0):.0f}s")
        elif kind == "fail":
            self.line(f"failed {rid} (exit {info.get('exit_code')}), log {info.get('log')}")
