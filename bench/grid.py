"""Grids of runs: algorithms x tasks x seeds with one preset and shared overrides.

A grid is expanded (and every cell's config validated) before anything runs; then each cell that is
not complete runs as its own `bench run ... --resume` command (at most `workers` at once) on a
grid executor: "local" child processes, one Ray task per run on a Ray cluster, or a plugin; executors,
their protocol and their options are in bench/executors.py.

Status of a run: complete iff `<run_dir>/summary.json` exists (the runner writes it last, atomically);
incomplete if the run directory exists without it; pending if there is no run directory. A rerun of a
grid skips complete runs and resumes incomplete ones from their own checkpoints (`--resume` starts
fresh when there is no checkpoint), so a grid killed at any moment is continued by running it again.

A run is never executed twice at the same time: before launching a run the grid takes a non-blocking
exclusive `flock` on `<root>/locks/<task>_<algo>_seed<k>.lock` and holds it until the run ends. The
local executor also passes the lock's file descriptor to the child process, so the lock stays held
while the child lives even if the grid process itself is killed. A run whose lock is held elsewhere is
skipped with a "running elsewhere" event.

Logs: each run's stdout/stderr is appended to `<root>/logs/<task>_<algo>_seed<k>.log`: a file, so the run
writes its plain progress lines there (pre-training, then one per iteration, at most one per `log_every`
seconds, as `bench run --log-every`).

Events: `on_event(kind, run, info)` with kind one of
  "skip"     info: {"reason": "complete" | "running elsewhere", "run_dir", "log"}
  "start"    info: {"log", "run_dir", "command", "attempt_start" (unix time)}
  "progress" info: {"iteration", "env_steps", "n_iterations", "elapsed_s", "metrics" (the last row of
             metrics.csv), "eval" (the last row of eval.csv, or None), "log"} (when metrics.csv changes)
  "done"     info: {"log", "exit_code": 0, "wall_s", "run_dir"}
  "fail"     info: {"log", "exit_code", "wall_s", "run_dir", "tail" (last lines of the log)}
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import os
import re
import subprocess
import sys
import time
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any, Callable, Iterable

from bench import executors
from bench.config import flatten
from core.errors import BenchError
from core.runstore import RunStore

SEEDS_SYNTAX = "seeds are non-negative integers and ranges, e.g. '0-4', '0,2,5' or '0-2,7'"
GRID_FILE_KEYS = ("algos", "tasks", "seeds", "preset", "set", "workers", "executor", "executors")
TAIL_LINES = 20

EventCallback = Callable[[str, "GridRun", dict], None]


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One cell of a grid. `overrides` is a tuple of (key, value-string) pairs, as given to `--set`;
    `log_every` the run's `--log-every` (None: its default, $DPPO_BENCH_LOG_EVERY or 10 s)."""

    algo: str
    task: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, str], ...] = ()
    log_every: float | None = None

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.algo}/seed{self.seed}"

    @property
    def file_stem(self) -> str:
        """Name used for the run's log and lock files: <task>_<algo>_seed<k>."""
        return f"{_safe(self.task)}_{_safe(self.algo)}_seed{self.seed}"

    @property
    def overrides_dict(self) -> dict[str, str]:
        return dict(self.overrides)

    def store(self, root: Path | str) -> RunStore:
        return RunStore.of(root, self.task, self.algo, self.seed)

    def run_dir(self, root: Path | str) -> Path:
        return self.store(root).dir

    def log_path(self, root: Path | str) -> Path:
        return Path(root) / "logs" / f"{self.file_stem}.log"

    def lock_path(self, root: Path | str) -> Path:
        return Path(root) / "locks" / f"{self.file_stem}.lock"

    def cli_args(self, root: Path | str) -> list[str]:
        """Arguments after the Python executable: `-m bench.cli run ... --resume [--log-every S] --set k=v ...`.
        Not --quiet: the run's stderr is its log file, where progress comes as plain lines."""
        args = ["-m", "bench.cli", "run", "--algo", self.algo, "--task", self.task, "--seed", str(self.seed),
                "--preset", self.preset, "--out", str(root), "--resume"]
        if self.log_every is not None:
            args += ["--log-every", f"{self.log_every:g}"]
        for k, v in self.overrides:
            args += ["--set", f"{k}={v}"]
        return args

    def command(self, root: Path | str) -> list[str]:
        return [sys.executable, *self.cli_args(root)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# ----------------------------------------------------------------------------------------------- spec


def parse_seeds(seeds: str | int | Iterable[int]) -> list[int]:
    """'0-4' | '0,2,5' | '0-2,7' | [0, 2] -> sorted unique ints; anything malformed is a BenchError."""
    if isinstance(seeds, bool):
        raise BenchError(f"bad seeds {seeds!r}; {SEEDS_SYNTAX}")
    if isinstance(seeds, int):
        seeds = [seeds]
    if isinstance(seeds, str):
        text = seeds.strip()
        if not text:
            raise BenchError(f"empty seeds; {SEEDS_SYNTAX}")
        out: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not m:
                raise BenchError(f"bad seeds {seeds!r}: cannot parse {part!r}; {SEEDS_SYNTAX}")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise BenchError(f"bad seeds {seeds!r}: range {part!r} goes backwards; {SEEDS_SYNTAX}")
            out.update(range(lo, hi + 1))
        return sorted(out)
    try:
        items = list(seeds)
    except TypeError:
        raise BenchError(f"bad seeds {seeds!r}; {SEEDS_SYNTAX}") from None
    if not items:
        raise BenchError(f"empty seeds; {SEEDS_SYNTAX}")
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise BenchError(f"bad seed {s!r} in {items!r}; {SEEDS_SYNTAX}")
    return sorted(set(items))


def _value_str(key: str, v: Any) -> str:
    """A TOML/Python override value as the string `--set` would carry."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return ",".join(_value_str(key, x) for x in v)
    raise BenchError(f"bad value {v!r} for {key}; expected a string, number, boolean or list")


def _names(kind: str, items: Any) -> list[str]:
    if isinstance(items, str):
        items = [x for x in items.split(",")]
    if not isinstance(items, (list, tuple)):
        raise BenchError(f"{kind} must be a list of names, got {items!r}")
    out: list[str] = []
    for x in items:
        if not isinstance(x, str) or not x.strip():
            raise BenchError(f"bad {kind[:-1]} name {x!r} in {kind}")
        if x.strip() not in out:
            out.append(x.strip())
    if not out:
        raise BenchError(f"no {kind} given; a grid needs at least one")
    return out


def expand_grid(algos: list[str], tasks: list[str], seeds: str | list[int], preset: str = "small",
                overrides: dict[str, Any] | None = None) -> list[GridRun]:
    """All (task, algo, seed) cells in a deterministic order (task, algo, seed), each validated with
    bench.config.build_run_config; any unknown algorithm/task/preset/key or bad value raises BenchError
    before anything runs or is written."""
    from bench.config import build_run_config

    algos = _names("algos", algos)
    tasks = _names("tasks", tasks)
    seed_list = parse_seeds(seeds)
    if not isinstance(preset, str) or not preset:
        raise BenchError(f"bad preset {preset!r}")
    ov = tuple((str(k).strip(), _value_str(str(k), v)) for k, v in (overrides or {}).items())
    runs = []
    for task in tasks:
        for algo in algos:
            for seed in seed_list:
                run = GridRun(algo=algo, task=task, seed=seed, preset=preset, overrides=ov)
                try:
                    build_run_config(task, algo, seed, preset, dict(ov))
                except BenchError as e:
                    raise BenchError(f"grid cell {run.run_id}: {e}") from None
                runs.append(run)
    return runs


def load_grid_file(path: Path | str) -> dict:
    """Read a TOML grid file -> {"runs": [GridRun], "workers": int|None, "executor": str|None,
    "executors": {name: {option: value}}, ...}.

    Keys: algos (list), tasks (list), seeds ("0-4" or a list), preset (default "small"), set (table of
    overrides, dotted keys quoted or as nested tables), workers (int), executor (a registered executor's
    name), executors (a table per executor of its options, e.g. [executors.ray] address = "auto", plus
    `workers` for that executor; see executor_settings).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"grid file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"cannot read grid file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"grid file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(GRID_FILE_KEYS))
    if unknown:
        raise BenchError(f"unknown key(s) {', '.join(map(repr, unknown))} in grid file {path}; "
                         f"valid keys: {', '.join(GRID_FILE_KEYS)}")
    missing = [k for k in ("algos", "tasks", "seeds") if k not in data]
    if missing:
        raise BenchError(f"grid file {path} lacks {', '.join(missing)}; valid keys: {', '.join(GRID_FILE_KEYS)}")
    sets = data.get("set", {})
    if not isinstance(sets, dict):
        raise BenchError(f"'set' in grid file {path} must be a table of config overrides, e.g. "
                         f"set = {{ \"train.n_iterations\" = 50 }}")
    overrides = flatten(sets)
    workers = data.get("workers")
    _check_workers(workers, f" in grid file {path}")
    executor = data.get("executor")
    if executor is not None:
        if not isinstance(executor, str):
            raise BenchError(f"bad executor {executor!r} in grid file {path}; valid executors: "
                             f"{', '.join(executors.list_executors())}")
        executors.get_executor(executor)
    tables = data.get("executors", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise BenchError(f"'executors' in grid file {path} must hold one table of options per executor, "
                         f"e.g. executors.ray.address = \"auto\"")
    for name, table in tables.items():
        executor_settings(name, table)
    preset = data.get("preset", "small")
    runs = expand_grid(data["algos"], data["tasks"], data["seeds"], preset, overrides)
    return {"runs": runs, "algos": data["algos"], "tasks": data["tasks"], "seeds": data["seeds"],
            "preset": preset, "overrides": overrides, "workers": workers, "executor": executor,
            "executors": tables}


def _check_workers(workers: Any, where: str = "") -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise BenchError(f"bad workers {workers!r}{where}; expected a positive integer")


def executor_settings(name: str, table: dict | None = None) -> tuple[int | None, dict]:
    """An `[executors.<name>]` table -> (its `workers` or None, the executor's options). `workers` is the
    grid's (at most that many runs at once, for this executor); the rest must be the executor's options.
    An unknown executor or option is a BenchError naming the valid ones."""
    options = dict(table or {})
    workers = options.pop("workers", None)
    _check_workers(workers, f" in executors.{name}")  # no [brackets]: the CLI prints errors as rich markup
    executors.check_options(name, options)
    return workers, options


# --------------------------------------------------------------------------------------------- status


def run_state(run: GridRun, root: Path | str) -> str:
    """'complete' (summary.json exists) | 'incomplete' (run dir without summary) | 'pending' (no dir)."""
    return run.store(root).state()


def last_metrics(run: GridRun, root: Path | str) -> dict | None:
    """The last row of <run_dir>/metrics.csv as {"iteration", "env_steps", ...}, or None."""
    return _last_row(run.store(root).metrics)


def last_eval(run: GridRun, root: Path | str) -> dict | None:
    """The last row of <run_dir>/eval.csv as {"iteration", "env_steps", "return_mean", ...}, or None."""
    return _last_row(run.store(root).evals)


def _last_row(path: Path) -> dict | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return None
    if not rows:
        return None
    row = rows[-1]
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k is None:
            continue
        if v == "":  # pandas writes NaN (no finished episode, no normalised score) as an empty cell
            out[k] = float("nan")
            continue
        try:
            fv = float(v)
            out[k] = int(fv) if k in ("iteration", "env_steps") else fv
        except (TypeError, ValueError):
            out[k] = v
    return out


def _lock_held(run: GridRun, root: Path | str) -> bool:
    path = run.lock_path(root)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases our probe lock if we got it
    return False


def _n_iterations(run: GridRun) -> int | None:
    from bench.config import build_run_config

    try:
        return build_run_config(run.task, run.algo, run.seed, run.preset, run.overrides_dict).train.n_iterations
    except BenchError:
        return None


def grid_status(runs: list[GridRun], root: Path | str) -> list[dict]:
    """One dict per run: run_id, algo, task, seed, state ('complete' | 'running' | 'incomplete' |
    'pending'), iteration, n_iterations, env_steps, run_dir, log."""
    root = Path(root)
    out = []
    for run in runs:
        state = run_state(run, root)
        if state != "complete" and _lock_held(run, root):
            state = "running"
        m = last_metrics(run, root) or {}
        out.append({"run_id": run.run_id, "algo": run.algo, "task": run.task, "seed": run.seed, "state": state,
                    "iteration": m.get("iteration"), "n_iterations": _n_iterations(run),
                    "env_steps": m.get("env_steps"), "run_dir": str(run.run_dir(root)),
                    "log": str(run.log_path(root))})
    return out


# ------------------------------------------------------------------------------------------ execution


def _try_lock(run: GridRun, root: Path) -> int | None:
    """Non-blocking exclusive flock on the run's lock file; the fd, or None if held elsewhere."""
    path = run.lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def log_tail(path: Path | str, n: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64_000))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])


def _log_header(log: Path, run: GridRun, cmd: list[str], where: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.write(f"\n===== {stamp} grid ({where}) starts {run.run_id}: {subprocess.list2cmdline(cmd)}\n")


class _Active:
    def __init__(self, run: GridRun, lock_fd: int, t0: float, handle: Any):
        self.run, self.lock_fd, self.t0, self.handle = run, lock_fd, t0, handle
        self.last_progress: tuple | None = None
        self.n_iterations = _n_iterations(run)


def run_grid(runs: list[GridRun], root: Path | str, workers: int = 1, executor: str = "local",
             options: dict | None = None, on_event: EventCallback | None = None, poll_s: float = 0.5,
             progress_every_s: float = 2.0, log_every: float | None = None) -> dict:
    """Run every incomplete run of the grid (at most `workers` at once) on the named executor, made with
    `options` (bench/executors.py); each run logs progress at most every `log_every` seconds (None: the
    runs' default); returns a summary dict: {"total", "skipped_complete",
    "running_elsewhere", "completed", "failed", "failed_runs": [{"run_id", "log", "exit_code", "tail"}],
    "wall_s"}. A failed run does not stop the others."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BenchError(f"bad workers {workers!r}; expected a positive integer")
    root = Path(root).resolve()
    backend = executors.make_executor(executor, root, options)  # fails fast, before anything runs
    emit = on_event or (lambda kind, run, info: None)
    if log_every is not None:
        runs = [dataclasses.replace(r, log_every=log_every) for r in runs]
    t_start = time.time()
    summary = {"total": len(runs), "skipped_complete": 0, "running_elsewhere": 0, "completed": 0, "failed": 0,
               "failed_runs": [], "wall_s": 0.0}
    try:
        queue: list[GridRun] = []
        for run in runs:
            if run_state(run, root) == "complete":
                summary["skipped_complete"] += 1
                emit("skip", run, {"reason": "complete", "run_dir": str(run.run_dir(root)),
                                   "log": str(run.log_path(root))})
            else:
                queue.append(run)
        _schedule(queue, root, workers, emit, summary, poll_s, progress_every_s, backend, executor)
    finally:
        backend.close()
    summary["wall_s"] = time.time() - t_start
    return summary


def _schedule(queue, root, workers, emit, summary, poll_s, progress_every_s, backend, where) -> None:
    active: list[_Active] = []
    queue = list(queue)
    last_progress = 0.0
    try:
        while queue or active:
            while queue and len(active) < workers:
                run = queue.pop(0)
                if run_state(run, root) == "complete":  # finished by someone else meanwhile
                    summary["skipped_complete"] += 1
                    emit("skip", run, {"reason": "complete", "run_dir": str(run.run_dir(root)),
                                       "log": str(run.log_path(root))})
                    continue
                fd = _try_lock(run, root)
                if fd is None:
                    summary["running_elsewhere"] += 1
                    emit("skip", run, {"reason": "running elsewhere", "run_dir": str(run.run_dir(root)),
                                       "log": str(run.log_path(root))})
                    continue
                if run_state(run, root) == "complete":  # completed between the check and the lock
                    os.close(fd)
                    summary["skipped_complete"] += 1
                    emit("skip", run, {"reason": "complete", "run_dir": str(run.run_dir(root)),
                                       "log": str(run.log_path(root))})
                    continue
                log = run.log_path(root)
                cmd = run.command(root)
                try:
                    _log_header(log, run, cmd, where)
                    t0 = time.time()
                    handle = backend.submit(run, log, fd)
                except BaseException:
                    os.close(fd)
                    raise
                active.append(_Active(run, fd, t0, handle))
                emit("start", run, {"log": str(log), "run_dir": str(run.run_dir(root)), "command": cmd,
                                    "attempt_start": t0})
            finished = backend.poll([a.handle for a in active], poll_s)
            for a in list(active):
                if a.handle not in finished:
                    continue
                code = finished[a.handle]
                active.remove(a)
                os.close(a.lock_fd)
                _emit_progress(a, root, emit, force=False)
                info = {"log": str(a.run.log_path(root)), "exit_code": code, "wall_s": time.time() - a.t0,
                        "run_dir": str(a.run.run_dir(root))}
                if code == 0 and run_state(a.run, root) == "complete":
                    summary["completed"] += 1
                    emit("done", a.run, info)
                else:
                    info["tail"] = log_tail(a.run.log_path(root))
                    summary["failed"] += 1
                    summary["failed_runs"].append({"run_id": a.run.run_id, "log": info["log"],
                                                   "exit_code": code, "tail": info["tail"]})
                    emit("fail", a.run, info)
            if time.time() - last_progress >= progress_every_s:
                last_progress = time.time()
                for a in active:
                    _emit_progress(a, root, emit, force=False)
    except BaseException:
        backend.cancel([a.handle for a in active])
        for a in active:
            os.close(a.lock_fd)
        raise


def _emit_progress(a: _Active, root: Path, emit, force: bool) -> None:
    m = last_metrics(a.run, root)
    if not m:
        return
    ev = last_eval(a.run, root)
    # an evaluation lands after its iteration's metrics row: it is progress too
    key = (m.get("iteration"), m.get("env_steps"), (ev or {}).get("iteration"))
    if key == a.last_progress and not force:
        return
    a.last_progress = key
    emit("progress", a.run, {"iteration": m.get("iteration"), "env_steps": m.get("env_steps"),
                             "n_iterations": a.n_iterations, "elapsed_s": time.time() - a.t0,
                             "metrics": m, "eval": ev, "log": str(a.run.log_path(root))})
