"""`bench`: the command line of dppo-bench (Typer + rich).

Bad input (unknown algorithm/task/preset/key, malformed --set, missing or corrupt files) prints one line
`error: ...` naming the valid choices and exits with code 2, before anything is written.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import rich.markup
import typer
from rich.table import Table

from bench.progress import LogConsole
from core.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and baseline harness for fine-tuning diffusion policies with RL (DPPO).")
data_app = typer.Typer(no_args_is_help=True, help="Offline datasets: make the built-in ones, train behaviour policies.")
app.add_typer(data_app, name="data")
# Not a terminal (a pipe, a file): as wide as the content needs, so no table cell is cut and no line wrapped.
console = LogConsole()
err_console = LogConsole(stderr=True)
LOG_EVERY_HELP = ("when stderr is not a terminal: at most one progress line per this many seconds "
                  "(default: $DPPO_BENCH_LOG_EVERY or 10; 0: every iteration)")
JSON_HELP = "print JSON to stdout instead of a table"


def _print_json(obj) -> None:
    """Strict JSON on stdout (NaN and infinities as null), one document, no rich markup or wrapping."""
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and callable(v.item):  # numpy scalars
            return clean(v.item())
        return v

    sys.stdout.write(json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _fold(table: Table) -> Table:
    """On a narrow terminal, fold long cells onto more lines instead of cutting them with an ellipsis."""
    for column in table.columns:
        column.overflow = "fold"
    return table

SET_HELP = "Config override key=value (repeatable), e.g. --set train.n_iterations=50 --set algo.clip=0.02"


def _config(task: str, algo: str, seed: int, preset: str, sets: list[str]):
    from bench.config import build_run_config, parse_set_options

    return build_run_config(task, algo, seed, preset, parse_set_options(sets or []))


@app.command()
def tasks(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """List the registered tasks."""
    from envs.tasks import list_tasks

    if as_json:
        _print_json([{"name": t.name, "suite": t.suite, "env_id": t.env_id, "obs_dim": t.obs_dim,
                      "act_dim": t.act_dim, "max_episode_steps": t.max_episode_steps,
                      "horizon_steps": t.horizon_steps, "act_steps": t.act_steps, "metric": t.metric}
                     for t in list_tasks()])
        return
    table = Table("task", "suite", "env", "obs", "act", "max steps", "Tp/Ta", "metric")
    for t in list_tasks():
        table.add_row(t.name, t.suite, t.env_id, str(t.obs_dim), str(t.act_dim), str(t.max_episode_steps),
                      f"{t.horizon_steps}/{t.act_steps}", t.metric)
    console.print(_fold(table))


@app.command()
def algos(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """List the registered algorithms (built-in and entry-point plugins)."""
    from algorithms.registry import get_algorithm, list_algorithms

    rows = []
    for name in list_algorithms():
        try:
            cls = get_algorithm(name)
            rows.append({"name": name, "policy_kind": cls.policy_kind, "module": cls.__module__, "error": None})
        except Exception as e:  # a broken plugin must not hide the others
            rows.append({"name": name, "policy_kind": None, "module": None, "error": f"failed to load: {e}"})
    if as_json:
        _print_json(rows)
        return
    table = Table("algorithm", "starts from", "module")
    for r in rows:
        if r["error"] is None:
            table.add_row(r["name"], r["policy_kind"], r["module"])
        else:
            table.add_row(r["name"], "?", f"[red]{rich.markup.escape(r['error'])}")
    console.print(_fold(table))


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
        quiet: bool = typer.Option(False, "--quiet", help="no live progress"),
        log_every: Optional[float] = typer.Option(None, "--log-every", metavar="SECONDS", help=LOG_EVERY_HELP),
        sim: Optional[str] = typer.Option(None, "--sim", help="furniture tasks: mujoco (default) | isaacgym "
                                                              "(the original simulator; same as --set env.sim=...)")):
    """Pre-train (cached) and fine-tune one seeded run; write results under OUT/runs/TASK/ALGO/seedN.

    Progress goes to stderr: a live bar on a terminal, otherwise (a file or pipe: SLURM, nohup, Ray) one plain
    line per iteration, at most one per --log-every seconds."""
    from bench.progress import PretrainProgress, RunProgress, log_every_s
    from bench.runner import run as run_fn

    log_every = log_every_s(log_every)  # a bad value or $DPPO_BENCH_LOG_EVERY errors before anything runs

    if sim is not None:
        from bench.config import parse_set_options

        given = parse_set_options(set_ or []).get("env.sim")
        if given is not None and given != sim:
            raise BenchError(f"--sim {sim} conflicts with --set env.sim={given}; give one of them")
    cfg = _config(task, algo, seed, preset, (set_ or []) + ([f"env.sim={sim}"] if sim is not None else []))
    progress = None if quiet else RunProgress(err_console, f"{algo}/{task}/seed{seed}", log_every)
    pre_bar = None if quiet else PretrainProgress(err_console, batch_size=cfg.pretrain.batch_size,
                                                  log_every=log_every)
    try:
        summary = run_fn(cfg, out, resume=resume, command=shlex.join(["bench"] + sys.argv[1:]),
                         log=lambda m: err_console.print(m, markup=False, highlight=False), progress=progress, pretrain_progress=pre_bar)
    finally:
        for bar in (pre_bar, progress):
            if bar is not None:
                bar.stop()
    _print_summary(summary)


def _pretrain_progress(batch_size: int | None = None):
    """`pretrain_policy`'s progress callback: update, loss, samples/s (updates/s without a batch size),
    elapsed and ETA; a live bar on a terminal, plain lines otherwise. Call `.stop()` when done."""
    from bench.progress import PretrainProgress

    return PretrainProgress(err_console, batch_size=batch_size)


def _print_summary(s: dict):
    table = Table("run", "iterations", "env steps", "wall", "pre-trained", "final")
    if s["metric"] == "success_rate":
        pre, fin = f"{s['pretrained_success_rate']:.2f}", f"{s['final_success_rate']:.2f}"
    else:
        pre = f"{s['pretrained_return']:.1f} (score {s['pretrained_score']:.1f})"
        fin = f"{s['final_return']:.1f} (score {s['final_score']:.1f})"
    table.add_row(f"{s['algorithm']}/{s['task']}/seed{s['seed']}", str(s["iterations"]), f"{s['env_steps']:,}",
                  f"{s['wall_s']:.0f} s", pre, fin)
    console.print(_fold(table))


@app.command()
def pretrain(task: str = typer.Option("hopper", "--task"), algo: str = typer.Option("dppo", "--algo"),
             policy: Optional[str] = typer.Option(None, "--policy",
                                                  help="a registered policy kind: diffusion, gaussian, gmm, ... (default: what --algo starts from)"),
             preset: str = typer.Option("small", "--preset"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
             force: bool = typer.Option(False, "--force", help="retrain even if cached"),
             eval_episodes: Optional[int] = typer.Option(None, "--eval", metavar="N",
                                                         help="then evaluate the pre-trained policy deterministically "
                                                              "over N episodes: the number iteration 0 of `bench run` "
                                                              "records with eval.n_episodes=N and the same --seed"),
             seed: int = typer.Option(0, "--seed", help="the run seed whose evaluation --eval reproduces (eval "
                                                        "seed = eval.seed + seed); pre-training uses pretrain.seed"),
             eval_at: Optional[str] = typer.Option(None, "--eval-at", metavar="U1,U2,...",
                                                   help="with --eval: also evaluate the EMA policy after these "
                                                        "update counts while training (to choose an earlier "
                                                        "checkpoint as the start); needs training (not cached)")):
    """Pre-train a policy for a task (cached by policy kind, task, dataset checksum and config); print its
    throughput and, with --eval N, its deterministic success rate (return and score on Gym) over N episodes."""
    from algorithms.policies import policy_kind_of_run, provided_kind
    from algorithms.registry import get_algorithm
    from bench.pretrain import check_architecture, load_pretrained, pretrain_key, pretrain_policy, pretrained_path
    from bench.runner import resolve_device
    from envs.datasets import load_dataset
    from envs.tasks import get_task

    if eval_episodes is not None and eval_episodes < 1:
        raise BenchError(f"--eval must be >= 1 episodes, got {eval_episodes}")
    cfg = _config(task, algo, seed, preset, set_)
    snapshots = _update_counts(eval_at, cfg.pretrain.n_updates) if eval_at is not None else []
    if snapshots and eval_episodes is None:
        raise BenchError("--eval-at needs --eval N (the number of episodes of each evaluation)")
    kind = policy or policy_kind_of_run(cfg)
    check_architecture(kind, cfg.pretrain)
    if eval_episodes is not None and provided_kind(kind) != get_algorithm(algo).policy_kind:
        raise BenchError(f"--eval evaluates the policy --algo {algo} starts from ({get_algorithm(algo).policy_kind}), "
                         f"not --policy {kind}; give an --algo that starts from a {provided_kind(kind)} policy")
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    spec = get_task(task)
    device = str(resolve_device(cfg.device))
    ds = load_dataset(task, cfg.data.source, cfg.data.n_transitions, cfg.data.seed, log=err_console.print,
                      data=cfg.data)
    cached = not force and pretrained_path(
        task, pretrain_key(task, ds.checksum, cfg.env.horizon_steps, cfg.pretrain, kind), kind).exists()
    if snapshots and cached:
        raise BenchError("--eval-at evaluates checkpoints while training, but this policy is cached; add --force "
                         "to train it again (same seed, same weights)")
    bar = _pretrain_progress(cfg.pretrain.batch_size)
    curve = []

    def on_snapshot(update, ema, norm):
        res = _evaluate_pretrained(cfg, copy.deepcopy(ema), norm, eval_episodes)
        curve.append((update, res))
        err_console.print(f"after {update} updates: {_eval_summary(spec, res)}")

    try:
        path = pretrain_policy(kind, task, spec.obs_dim, spec.act_dim, ds, cfg.env.horizon_steps,
                               cfg.pretrain, device, bar, force, on_snapshot if snapshots else None, snapshots)
    finally:
        bar.stop()
    trained, norm, meta = load_pretrained(path, device)
    facts = [f"final loss {meta['loss_curve'][-1]['loss']:.4f}"] if meta["loss_curve"] else []
    facts.append(f"{meta['wall_s']:.1f} s")
    if "samples_per_s" in meta:  # checkpoints written before throughput was recorded have none
        facts.append(f"{meta['updates_per_s']:,.1f} updates/s, {meta['samples_per_s']:,.0f} samples/s at batch "
                     f"{meta['config']['batch_size']} on {meta.get('device', 'cpu')}")
    if cached:
        facts.append("cached: the figures are from when it was trained")
    console.print(f"pre-trained {kind} policy: {path} ({'; '.join(facts)})")
    if eval_episodes is None:
        return
    res = _evaluate_pretrained(cfg, trained, norm, eval_episodes)
    for update, snapshot in curve:
        console.print(f"after {update} updates: {_eval_summary(spec, snapshot)}")
    console.print(f"pre-trained {_eval_summary(spec, res)}")


def _update_counts(text: str, n_updates: int) -> list[int]:
    """`--eval-at` update counts: positive integers below pretrain.n_updates (the end is always evaluated)."""
    try:
        counts = sorted({int(u) for u in text.split(",") if u.strip()})
    except ValueError:
        raise BenchError(f"--eval-at takes comma-separated update counts, e.g. 10000,20000; got {text!r}") from None
    bad = [u for u in counts if not 1 <= u < n_updates]
    if bad or not counts:
        raise BenchError(f"--eval-at update counts must be between 1 and pretrain.n_updates - 1 = {n_updates - 1} "
                         f"(the final policy is always evaluated); got {text!r}")
    return counts


def _evaluate_pretrained(cfg, policy, norm, n_episodes: int) -> dict:
    """As `bench run` evaluates at iteration 0: seeded, the algorithm built on the pre-trained policy, the
    run's eval envs and eval seed."""
    from bench.runner import RunContext, build_algorithm, evaluate, make_env, seed_everything

    ctx = RunContext.of(cfg)
    seed_everything(cfg.seed)
    algorithm = build_algorithm(ctx, policy)
    env = make_env(ctx, norm, cfg.eval.n_envs)
    try:
        res = evaluate(algorithm, env, n_episodes, cfg.eval.seed + cfg.seed, ctx.device)
    finally:
        env.close()
    res["eval_seed"] = cfg.eval.seed + cfg.seed
    return res


def _eval_summary(spec, res: dict) -> str:
    # the means at full precision (as eval.csv stores them): equal to a run's iteration 0, digit for digit
    how = f"{res['n_episodes']} episodes, deterministic, eval seed {res['eval_seed']}"
    if spec.metric == "success_rate":
        wins = round(res["success_rate"] * res["n_episodes"])
        return f"success rate: {res['success_rate']!r} ({wins}/{res['n_episodes']} succeeded; {how})"
    score = "" if res["score_mean"] != res["score_mean"] else f", score {res['score_mean']!r}"
    return f"return: {res['return_mean']!r} (std {res['return_std']:.3g}{score}; {how})"


@app.command("eval")
def eval_(path: Path = typer.Argument(..., help="a run directory or a checkpoint file"),
          episodes: Optional[int] = typer.Option(None, "--episodes"), seed: Optional[int] = typer.Option(None, "--seed"),
          device: str = typer.Option("cpu", "--device")):
    """Evaluate a run's fine-tuned policy (deterministic), printing return, score and success rate."""
    from bench.runner import eval_checkpoint

    res = eval_checkpoint(path, episodes, seed, device)
    res.pop("returns")
    console.print_json(json.dumps(res))


@app.command()
def video(path: Path = typer.Argument(..., help="a run directory"),
          episodes: int = typer.Option(1, "--episodes", help="evaluation episodes, one after another"),
          pretrained: bool = typer.Option(False, "--pretrained", help="the pre-trained policy the run started "
                                                                      "from (its iteration-0 evaluation)"),
          out: Optional[Path] = typer.Option(None, "--out", help="an .mp4 or .gif file (default: "
                                             "RUN/video/final.mp4, or pretrained.mp4 with --pretrained)"),
          fps: Optional[float] = typer.Option(None, "--fps", help="playback frames per second (default: real "
                                              "time)"),
          every: Optional[int] = typer.Option(None, "--every", metavar="K", help="render every K-th env step "
                                              "(default: the fewest for real time at <= 30 frames/s)"),
          width: int = typer.Option(320, "--width"), height: int = typer.Option(240, "--height"),
          camera: Optional[str] = typer.Option(None, "--camera", help="a camera of the task's MuJoCo model, or "
                                               "free (default: track / frontview / agentview, else free)"),
          as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Render deterministic evaluation episodes of a run's fine-tuned policy (the episodes `bench eval
    --episodes N` evaluates) with MuJoCo's offscreen renderer to MP4 or GIF, plus a frame strip PNG of the
    first episode that `bench report` embeds. Without a display MUJOCO_GL defaults to egl (or osmesa)."""
    from bench.video import record

    res = record(path, episodes, pretrained, out, fps, every, width, height, camera)
    if as_json:
        _print_json(res)
        return
    rets = ", ".join(f"{r:.1f}" for r in res["returns"])
    console.print(f"wrote {res['video']} ({res['policy']} {res['algorithm']}/{res['task']}/seed{res['seed']}: "
                  f"{len(res['returns'])} episode(s), returns {rets}, success rate {res['success_rate']:.2f}; "
                  f"{res['frames']} frames {res['width']}x{res['height']} at {res['fps']:g} fps, every "
                  f"{res['every']} env step(s)) and {res['strip']}", highlight=False, soft_wrap=True)


@app.command()
def export(path: Path = typer.Argument(..., help="a run directory"),
           fmt: str = typer.Option("torchscript", "--format", help="torchscript | onnx"),
           out: Optional[Path] = typer.Option(None, "--out", help="the file (default: RUN/export/policy.pt or "
                                              "policy.onnx); its JSON card goes beside it as FILE.json")):
    """Export a run's fine-tuned policy as one self-contained file: raw observation (B, obs_dim) [+ the
    evaluation's noise draws] -> the raw action chunk (B, Ta, act_dim) the harness executes, with
    normalisation and the whole deterministic denoising chain; plus a JSON card (docs/exporting-a-policy.md)."""
    from bench.export import export_policy

    path_, card, checked = export_policy(path, fmt, out)
    console.print(f"wrote {path_} ({fmt}; checked against the harness's actions: {checked}) and {card}",
                  highlight=False, soft_wrap=True)


@data_app.command("make")
def data_make(task: str = typer.Argument(...), n_transitions: Optional[int] = typer.Option(None, "--n-transitions",
              help="Gym/test tasks; default: the preset's data.n_transitions"),
              n_demos: Optional[int] = typer.Option(None, "--n-demos",
                                                    help="robomimic and furniture tasks: successful demos (default: the preset's data.n_demos)"),
              quality: Optional[str] = typer.Option(None, "--quality",
                                                    help="robomimic: ph | mh | better | okay | worse; furniture: ph | mh (default: the preset's)"),
              preset: str = typer.Option("small", "--preset"),
              seed: int = typer.Option(0, "--seed"), force: bool = typer.Option(False, "--force")):
    """Make a task's built-in dataset (cached, checksummed): Gym rolls out the shipped behaviour policy into
    a D4RL-format 'medium' dataset; robomimic and furniture roll out scripted experts into robomimic's hdf5
    layout."""
    import inspect

    from envs.datasets import load_dataset, make_builtin_dataset
    from envs.tasks import get_task

    spec = get_task(task)
    sets = [f"data.seed={seed}"] + [f"data.{k}={v}" for k, v in (("n_transitions", n_transitions),
                                    ("n_demos", n_demos), ("demo_quality", quality)) if v is not None]
    cfg = _config(task, "dppo", 0, preset, sets)
    if spec.builtin_dataset is not None:
        hook_kwargs = {}
        if force:
            if "force" not in inspect.signature(spec.builtin_dataset).parameters:
                raise BenchError(f"task {task!r} cannot remake its built-in dataset with --force; delete it "
                                 f"from the cache instead")
            hook_kwargs["force"] = True
        ds = spec.builtin_dataset(task, cfg.data, True, err_console.print, **hook_kwargs)
        starts, ends = ds.episode_bounds()
        r = ds.episode_returns()
        console.print(f"{ds.source}\n{len(ds.observations)} transitions, {len(r)} episodes (mean length "
                      f"{(ends - starts).mean():.0f}), return mean {r.mean():.2f}, checksum {ds.checksum[:16]}")
        return
    if n_demos is not None or quality is not None:
        raise BenchError(f"--n-demos and --quality apply to robomimic and furniture tasks, not {task!r}")
    n = cfg.data.n_transitions
    if n <= 0:
        raise BenchError(f"--n-transitions must be positive, got {n}")
    path = make_builtin_dataset(task, n, seed, force=force, log=err_console.print)
    ds = load_dataset(task, "builtin", n, seed, make_missing=False)
    r = ds.episode_returns()
    console.print(f"{path}\n{len(ds.observations)} transitions, {len(r)} episodes, return mean {r.mean():.1f} "
                  f"(min {r.min():.1f}, max {r.max():.1f}), checksum {ds.checksum[:16]}")


@data_app.command("assets")
def data_assets(wheel: Optional[Path] = typer.Option(None, "--wheel", help="a downloaded "
                                                     "furniture_bench-0.1-py3-none-any.whl (default: pip download)")):
    """Get the Furniture-Bench meshes (furniture-bench 0.1 wheel, MIT licence) into the cache, checksummed."""
    from envs.furniture_assets import ensure_assets

    console.print(str(ensure_assets(wheel, log=err_console.print)))


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


@app.command()
def grid(algos: Optional[str] = typer.Option(None, "--algos", help="comma-separated, e.g. dppo,idql"),
         tasks: Optional[str] = typer.Option(None, "--tasks", help="comma-separated, e.g. hopper,walker2d"),
         seeds: Optional[str] = typer.Option(None, "--seeds", help="e.g. 0-4 or 0,2,5 or 0-2,7"),
         preset: str = typer.Option("small", "--preset"),
         set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
         file: Optional[Path] = typer.Option(None, "--file", help="TOML grid file (algos, tasks, seeds, preset, set, workers, executor, [executors.NAME] options)"),
         workers: Optional[int] = typer.Option(None, "--workers", help="runs at once (default 1)"),
         root: Path = typer.Option(Path("results"), "--root", help="results root shared by all runs"),
         executor: Optional[str] = typer.Option(None, "--executor", help="local (default), ray, or a plugin (docs/adding-an-executor.md)"),
         address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address, e.g. 10.0.0.1:6379 or auto"),
         num_cpus: Optional[float] = typer.Option(None, "--num-cpus", help="Ray: CPUs per run (default 1)"),
         num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="Ray: GPUs per run (default 0)"),
         status: bool = typer.Option(False, "--status", help="only show the state of every run"),
         log_every: Optional[float] = typer.Option(None, "--log-every", metavar="SECONDS", help=LOG_EVERY_HELP)):
    """Run algorithms x tasks x seeds: skips complete runs, resumes interrupted ones, never runs one twice.

    On a terminal a live table shows every run; otherwise (a file or pipe) one plain line per event (start,
    skip, done, failed) and per run's progress, at most one progress line per run per --log-every seconds."""
    from bench import executors
    from bench import grid as grid_mod
    from bench.config import parse_set_options
    from bench.progress import GridLog, log_every_s

    log_every = log_every_s(log_every)

    spec: dict = {}
    if file is not None:
        if algos or tasks or seeds:
            raise BenchError("give either --file or --algos/--tasks/--seeds, not both")
        spec = grid_mod.load_grid_file(file)
        runs = spec["runs"]
    else:
        missing = [n for n, v in (("--algos", algos), ("--tasks", tasks), ("--seeds", seeds)) if not v]
        if missing:
            raise BenchError(f"bench grid needs {', '.join(missing)} (or --file grid.toml)")
        runs = grid_mod.expand_grid(_split(algos), _split(tasks), seeds, preset, parse_set_options(set_ or []))
    if workers is not None and workers < 1:
        raise BenchError(f"bad --workers {workers}; expected a positive integer (runs at once)")
    executor = executor or spec.get("executor") or "local"
    table_workers, options = grid_mod.executor_settings(executor, spec.get("executors", {}).get(executor))
    workers = workers if workers is not None else (table_workers or spec.get("workers") or 1)
    # The flags override the file's options of any executor that has an option of that name.
    flags = {"address": address, "num_cpus": num_cpus, "num_gpus": num_gpus}
    accepted = executors.option_names(executor)
    options.update({k: v for k, v in flags.items() if v is not None and k in accepted})
    if status:
        if root.exists() and not root.is_dir():
            raise BenchError(f"--root {root} is a file, not a directory; give a directory")
        console.print(_grid_table(grid_mod.grid_status(runs, root)))
        return
    from bench.runner import check_out_root

    check_out_root(root, root / "locks", "--root")  # before any run starts or a lock or log is written
    from rich.live import Live

    states = {r.run_id: row for r, row in zip(runs, grid_mod.grid_status(runs, root))}
    failures = []
    plain = None if err_console.is_terminal else GridLog(err_console, log_every)
    if plain:
        plain.header(list(states.values()), workers)

    def on_event(kind, run, info):
        row = states[run.run_id]
        if kind == "skip":
            row["state"] = "complete" if info["reason"] == "complete" else "running elsewhere"
        elif kind == "start":
            row.update(state="running", started=time.time())
        elif kind == "progress":
            row.update(iteration=info.get("iteration"), env_steps=info.get("env_steps"),
                       n_iterations=info.get("n_iterations"))
        elif kind == "done":
            row["state"] = "complete"
        elif kind == "fail":
            row["state"] = f"failed (exit {info['exit_code']})"
            failures.append((run, info))
        if plain:
            plain.event(kind, row, info)
            return
        if not live.is_started:  # at the first event: an executor that cannot start errors without a table
            live.start()
        live.update(_grid_table(list(states.values())))

    live = Live(_grid_table(list(states.values())), console=err_console, refresh_per_second=2)
    try:
        result = grid_mod.run_grid(runs, root, workers=workers, executor=executor, options=options,
                                   on_event=on_event, log_every=log_every)
    finally:
        if live.is_started:
            live.stop()
    for run, info in failures:
        err_console.print(f"[red]failed:[/red] {run.run_id} (exit {info['exit_code']}), log {info['log']}:\n{info.get('tail', '')}",
                          highlight=False)
    console.print(f"grid: {result['total']} runs, {result['skipped_complete']} already complete, "
                  f"{result['completed']} completed, {result['failed']} failed, "
                  f"{result['running_elsewhere']} running elsewhere, {result['wall_s']:.0f} s")
    if result["failed"]:
        raise typer.Exit(1)


def _grid_table(rows: list[dict]):
    table = _fold(Table("run", "state", "iteration", "env steps", "elapsed", "ETA"))
    for row in rows:
        it, n = row.get("iteration"), row.get("n_iterations")
        elapsed = time.time() - row["started"] if row.get("started") else None
        eta = "-"
        if elapsed and it and n and row.get("state") == "running":
            eta = f"{elapsed / it * (n - it):.0f} s"
        table.add_row(row["run_id"], str(row.get("state", "")), f"{it or 0}/{n or '?'}",
                      f"{row.get('env_steps') or 0:,}", f"{elapsed:.0f} s" if elapsed else "-", eta)
    return table


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _records(root: Path, tasks: Optional[str], algos: Optional[str]):
    """Complete runs under ROOT; filters must name tasks/algorithms that have runs there."""
    from bench.results import scan_runs

    if not (root / "runs").is_dir():
        raise BenchError(f"no results under {root} (expected {root / 'runs'}); run `bench run` or `bench grid` first")
    records, warnings = scan_runs(root)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if not records:
        raise BenchError(f"no complete runs under {root / 'runs'}")
    for kind, wanted, have in (("task", _split(tasks), {r.task for r in records}),
                               ("algorithm", _split(algos), {r.algo for r in records})):
        unknown = sorted(set(wanted or []) - have)
        if unknown:
            raise BenchError(f"no complete runs for {kind} {', '.join(unknown)} under {root}; "
                             f"{kind}s with runs: {', '.join(sorted(have))}")
    return records, warnings


ROOT_OPT = typer.Option(Path("results"), "--root", help="results root (holds runs/)")
TASKS_OPT = typer.Option(None, "--tasks", help="comma-separated tasks (default: all with runs)")
ALGOS_OPT = typer.Option(None, "--algos", help="comma-separated algorithms (default: all with runs)")
PRESET_OPT = typer.Option(None, "--preset", help="only runs of this preset")
LAST_OPT = typer.Option(1, "--last", help="final score = mean of the last N evaluations")
SEEDS_OPT = typer.Option(None, "--seeds", help="seeds per cell (default: the most found; fewer is reported)")
REPS_OPT = typer.Option(2000, "--reps", help="bootstrap repetitions")


@app.command()
def leaderboard(root: Path = ROOT_OPT, tasks: Optional[str] = TASKS_OPT, algos: Optional[str] = ALGOS_OPT,
                preset: Optional[str] = PRESET_OPT, last: int = LAST_OPT, seeds: Optional[int] = SEEDS_OPT,
                reps: int = REPS_OPT, out: Optional[Path] = typer.Option(None, "--out", help="default: ROOT"),
                as_json: bool = typer.Option(False, "--json", help="print JSON to stdout instead of the table: "
                                             "{leaderboard: the rows of leaderboard.csv, tasks: the rows of "
                                             "leaderboard_tasks.csv, csv, markdown, tasks_csv}")):
    """Aggregate final scores with rliable (IQM, mean, median, optimality gap, 95% CIs, P(improvement))."""
    from bench import leaderboard as lb

    if last < 1 or reps < 1 or (seeds is not None and seeds < 1):
        raise BenchError("--last, --reps and --seeds must be positive")
    records, _ = _records(root, tasks, algos)
    sm = lb.score_matrices(records, _split(tasks), _split(algos), preset, last, seeds)
    for m in sm.messages:
        err_console.print(f"[yellow]note:[/yellow] {m}", highlight=False, soft_wrap=True)
    if not sm.scores:
        raise BenchError("no (algorithm, task) cell has complete runs after filtering")
    df = lb.leaderboard(sm, reps=reps)
    per_task = lb.per_task_table(records, sm, last)
    if not as_json:
        console.print(_fold(lb.rich_table(df)))
    csv_path, md_path = lb.write_leaderboard(df, out or root, tasks=per_task)
    if as_json:
        err_console.print(f"wrote {csv_path} and {md_path}", markup=False, highlight=False, soft_wrap=True)
        _print_json({"leaderboard": df.to_dict(orient="records"), "tasks": per_task.to_dict(orient="records"),
                     "csv": str(csv_path), "markdown": str(md_path),
                     "tasks_csv": str(csv_path.parent / "leaderboard_tasks.csv")})
        return
    console.print(f"wrote {csv_path} and {md_path}")


@app.command()
def report(root: Path = ROOT_OPT, tasks: Optional[str] = TASKS_OPT, algos: Optional[str] = ALGOS_OPT,
           preset: Optional[str] = PRESET_OPT, last: int = LAST_OPT, reps: int = REPS_OPT,
           out: Optional[Path] = typer.Option(None, "--out", help="default: ROOT/report")):
    """Self-contained HTML report (curves, aggregate intervals, profiles, P(improvement), leaderboard)
    plus PNG/PDF figures."""
    from bench.report import make_report

    if last < 1 or reps < 1:
        raise BenchError("--last and --reps must be positive")
    records, warnings = _records(root, tasks, algos)
    path = make_report(records, out or root / "report", _split(tasks), _split(algos), preset, last, reps,
                       warnings=warnings)
    console.print(f"wrote {path}")


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
        # escaped: a message naming e.g. `[executors.local]` must print its brackets
        err_console.print(f"[red]error:[/red] {rich.markup.escape(str(e))}", highlight=False, soft_wrap=True)
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
