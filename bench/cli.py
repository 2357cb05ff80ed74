"""`bench`: the command line of dppo-bench (Typer + rich).

Bad input (unknown algorithm/task/preset/key, malformed --set, missing or corrupt files) prints one line
`error: ...` naming the valid choices and exits with code 2, before anything is written.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and baseline harness for fine-tuning diffusion policies with RL (DPPO).")
data_app = typer.Typer(no_args_is_help=True, help="Offline datasets: make the built-in ones, train behaviour policies.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

SET_HELP = "Config override key=value (repeatable), e.g. --set train.n_iterations=50 --set algo.clip=0.02"


def _config(task: str, algo: str, seed: int, preset: str, sets: list[str]):
    from bench.config import build_run_config, parse_set_options

    return build_run_config(task, algo, seed, preset, parse_set_options(sets or []))


@app.command()
def tasks():
    """List the registered tasks."""
    from envs.tasks import list_tasks

    table = Table("task", "suite", "env", "obs", "act", "max steps", "Tp/Ta", "metric")
    for t in list_tasks():
        table.add_row(t.name, t.suite, t.env_id, str(t.obs_dim), str(t.act_dim), str(t.max_episode_steps),
                      f"{t.horizon_steps}/{t.act_steps}", t.metric)
    console.print(table)


@app.command()
def algos():
    """List the registered algorithms (built-in and entry-point plugins)."""
    from algorithms.registry import get_algorithm, list_algorithms

    table = Table("algorithm", "starts from", "module")
    for name in list_algorithms():
        try:
            cls = get_algorithm(name)
            table.add_row(name, cls.policy_kind, cls.__module__)
        except Exception as e:  # a broken plugin must not hide the others
            table.add_row(name, "?", f"[red]failed to load: {e}")
    console.print(table)


@app.command()
def config(algo: str = typer.Option("dppo", "--algo"), task: str = typer.Option("hopper", "--task"),
           seed: int = typer.Option(0, "--seed"), preset: str = typer.Option("small", "--preset"),
           set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP)):
    """Print the resolved config of a run (task + algorithm defaults + preset + overrides) as JSON."""
    from bench.config import to_dict

    console.print_json(json.dumps(to_dict(_config(task, algo, seed, preset, set_))))


@app.command()
def run(algo: str = typer.Option("dppo", "--algo", help="algorithm name (see `bench algos`)"),
        task: str = typer.Option("hopper", "--task", help="task name (see `bench tasks`)"),
        seed: int = typer.Option(0, "--seed"),
        preset: str = typer.Option("small", "--preset", help="smoke | small | paper"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
        out: Path = typer.Option(Path("results"), "--out", help="results root"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint"),
        quiet: bool = typer.Option(False, "--quiet", help="no live progress")):
    """Pre-train (cached) and fine-tune one seeded run; write results under OUT/runs/TASK/ALGO/seedN."""
    from bench.progress import RunProgress
    from bench.runner import run as run_fn

    cfg = _config(task, algo, seed, preset, set_)
    progress = None if quiet else RunProgress(err_console, f"{algo}/{task}/seed{seed}")
    pre_bar = None if quiet else _pretrain_progress()
    try:
        summary = run_fn(cfg, out, resume=resume, command=shlex.join(["bench"] + sys.argv[1:]),
                         log=lambda m: err_console.print(m), progress=progress, pretrain_progress=pre_bar)
    finally:
        if progress and progress.task is not None:
            progress.stop()
    _print_summary(summary)


def _pretrain_progress():
    state = {"last": 0}

    def cb(step, total, loss):
        if step - state["last"] >= max(total // 20, 100) or step == total:
            state["last"] = step
            err_console.print(f"pre-training: update {step}/{total}, loss {loss:.4f}")

    return cb


def _print_summary(s: dict):
    table = Table("run", "iterations", "env steps", "wall", "pre-trained", "final")
    if s["metric"] == "success_rate":
        pre, fin = f"{s['pretrained_success_rate']:.2f}", f"{s['final_success_rate']:.2f}"
    else:
        pre = f"{s['pretrained_return']:.1f} (score {s['pretrained_score']:.1f})"
        fin = f"{s['final_return']:.1f} (score {s['final_score']:.1f})"
    table.add_row(f"{s['algorithm']}/{s['task']}/seed{s['seed']}", str(s["iterations"]), f"{s['env_steps']:,}",
                  f"{s['wall_s']:.0f} s", pre, fin)
    console.print(table)


@app.command()
def pretrain(task: str = typer.Option("hopper", "--task"), algo: str = typer.Option("dppo", "--algo"),
             preset: str = typer.Option("small", "--preset"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
             force: bool = typer.Option(False, "--force", help="retrain even if cached")):
    """Pre-train the diffusion policy for a task (cached by task, dataset checksum and config)."""
    from bench.pretrain import load_pretrained, pretrain_diffusion
    from bench.runner import resolve_device
    from envs.datasets import load_dataset
    from envs.tasks import get_task

    cfg = _config(task, algo, 0, preset, set_)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    spec = get_task(task)
    ds = load_dataset(task, cfg.data.source, cfg.data.n_transitions, cfg.data.seed, log=err_console.print)
    path = pretrain_diffusion(task, spec.obs_dim, spec.act_dim, ds, cfg.env.horizon_steps or spec.horizon_steps,
                              cfg.pretrain, str(resolve_device(cfg.device)), _pretrain_progress(), force)
    _, _, meta = load_pretrained(path)
    console.print(f"pre-trained policy: {path} (final loss {meta['loss_curve'][-1]['loss']:.4f}, "
                  f"{meta['wall_s']:.0f} s)" if meta["loss_curve"] else f"pre-trained policy: {path}")


@app.command("eval")
def eval_(path: Path = typer.Argument(..., help="a run directory or a checkpoint file"),
          episodes: Optional[int] = typer.Option(None, "--episodes"), seed: Optional[int] = typer.Option(None, "--seed"),
          device: str = typer.Option("cpu", "--device")):
    """Evaluate a run's fine-tuned policy (deterministic), printing return, score and success rate."""
    from bench.runner import eval_checkpoint

    res = eval_checkpoint(path, episodes, seed, device)
    res.pop("returns")
    console.print_json(json.dumps(res))


@data_app.command("make")
def data_make(task: str = typer.Argument(...), n_transitions: Optional[int] = typer.Option(None, "--n-transitions",
              help="default: the preset's data.n_transitions"), preset: str = typer.Option("small", "--preset"),
              seed: int = typer.Option(0, "--seed"), force: bool = typer.Option(False, "--force")):
    """Roll out the shipped behaviour policy into a D4RL-format 'medium' dataset (cached, checksummed)."""
    from envs.datasets import load_dataset, make_builtin_dataset

    cfg = _config(task, "dppo", 0, preset, [])
    n = n_transitions or cfg.data.n_transitions
    if n <= 0:
        raise BenchError(f"--n-transitions must be positive, got {n}")
    path = make_builtin_dataset(task, n, seed, force=force, log=err_console.print)
    ds = load_dataset(task, "builtin", n, seed, make_missing=False)
    r = ds.episode_returns()
    console.print(f"{path}\n{len(ds.observations)} transitions, {len(r)} episodes, return mean {r.mean():.1f} "
                  f"(min {r.min():.1f}, max {r.max():.1f}), checksum {ds.checksum[:16]}")


@data_app.command("train-behavior")
def data_train_behavior(task: str = typer.Argument(...), steps: int = typer.Option(250_000, "--steps"),
                        seed: int = typer.Option(0, "--seed"),
                        threads: int = typer.Option(1, "--threads", help="torch threads (the shipped policies used 1)"),
                        out: Path = typer.Option(None, "--out", help="default: envs/behavior_policies")):
    """Train the SAC behaviour policy whose rollouts make the built-in dataset (long: tens of minutes)."""
    import torch

    from envs.behavior import POLICY_DIR, SACConfig, train_behavior_policy
    from envs.tasks import get_task

    get_task(task)
    torch.set_num_threads(threads)
    best = train_behavior_policy(task, SACConfig(total_steps=steps, seed=seed), out or POLICY_DIR,
                                 log=err_console.print)
    console.print(best)


@app.command("bench")
def bench_cmd(envs: int = typer.Option(40, "--envs"), chunks: int = typer.Option(50, "--chunks"),
              threads: int = typer.Option(0, "--threads", help="torch threads (0: default)")):
    """Speed benchmark: DPPO rollout efficiency vs random actions, and update throughput."""
    from bench.benchmark import run_benchmark

    for line in run_benchmark(n_envs=envs, n_chunks=chunks, threads=threads):
        console.print(line)


def main():
    try:
        app(standalone_mode=False)
    except BenchError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with --resume")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # Click usage errors (Typer vendors Click)
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
