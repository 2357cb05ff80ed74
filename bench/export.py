"""`bench export`: a run's fine-tuned policy as one self-contained file (TorchScript or ONNX) plus a JSON card.

The file holds everything between the env's raw observation and the raw actions the harness executes:
observation normalisation, the algorithm's deterministic evaluation `act` (for diffusion policies the
whole denoising chain: frozen and fine-tuned denoisers, DDPM with std 0 at the last step and a 1e-3 floor
elsewhere, or DDIM with eta 0), the chunk's first Ta actions clipped to [-1, 1], and their
un-normalisation. It is made by tracing the harness's own `algo.act(obs, deterministic=True, ...)`
(the path `bench eval` runs), not a re-implementation.

Noise. The harness's evaluation draws standard-normal noise from a seeded `torch.Generator` (DDPM: the
initial x_K and one draw per step but the last; DDIM: x_K only). A seeded generator cannot be carried into
TorchScript or ONNX, so the exported module takes those draws as its second input, `noise`
(n_draws, k*B, Tp, Da), and clips them as the harness does. Drawing them in order with
`torch.randn((k*B, Tp, Da), generator=g)` from the evaluation's generator reproduces the harness's
actions; any N(0, 1) draws give a valid sample of the same policy. A policy whose evaluation draws nothing
(a Gaussian policy's mean) takes `obs` only. The card says which.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from algorithms.diffusion import DenoisingChain, DiffusionPolicy, NoiseFeed
from core.atomic import atomic_path, atomic_write_json
from core.errors import BenchError
from core.runstore import RunStore
from envs.vector import NORM_EPS

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
CARD_FORMAT = 1


class ExportedPolicy(nn.Module):
    """raw obs (B, obs_dim) [+ noise (n_draws, k*B, Tp, Da)] -> raw action chunk (B, Ta, act_dim)."""

    def __init__(self, algo, norm, act_steps: int):
        super().__init__()
        self.algo, self.act_steps = algo, act_steps
        for name in ("obs_min", "obs_max", "act_min", "act_max"):
            self.register_buffer(name, torch.as_tensor(getattr(norm, name), dtype=torch.float32))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # envs.vector.Normalizer's formulas, in torch: in the observation's precision, then float32, as the
        # harness (TorchScript takes float64 observations too, and then matches it bit for bit)
        x = (2 * (obs - self.obs_min) / (self.obs_max - self.obs_min + NORM_EPS) - 1).to(torch.float32)
        chunk = self.algo.act(x, deterministic=True, generator=NoiseFeed(noise)).actions
        a = chunk[:, : self.act_steps].clamp(-1, 1)
        return (a + 1) / 2 * (self.act_max - self.act_min + NORM_EPS) + self.act_min


class ExportedPolicyNoNoise(ExportedPolicy):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs, None)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BenchError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise BenchError("--format onnx needs the onnx package (pip install onnx onnxruntime; onnxruntime "
                             "checks the file), or use --format torchscript") from None
    return fmt


def check_run_dir(path: Path) -> RunStore:
    path = Path(path)
    if not path.is_dir():
        raise BenchError(f"{path} is not a run directory (expected RESULTS/runs/TASK/ALGO/seedN with "
                         f"checkpoints/last.pt)")
    store = RunStore(path)
    if not store.checkpoint.exists():
        raise BenchError(f"run {path} has no checkpoint ({store.checkpoint} is missing): it has not finished an "
                         f"iteration yet, or it is not a run directory")
    return store


def noise_draws(algo, obs_dim: int) -> list[tuple[int, ...]]:
    """The shapes of the standard-normal draws one deterministic `act` makes for one observation."""
    feed = NoiseFeed()
    try:
        with torch.no_grad():
            algo.act(torch.zeros(1, obs_dim), deterministic=True, generator=feed)
    except TypeError as e:  # e.g. torch.multinomial(..., generator=feed)
        hint = "; runs with algo.eval_mode=argmax draw none" if hasattr(algo.cfg, "eval_mode") else ""
        raise BenchError(f"cannot export {type(algo).__name__}: its deterministic evaluation draws random numbers "
                         f"other than standard-normal noise ({e}){hint}") from None
    if len(set(feed.shapes)) > 1:
        raise BenchError(f"cannot export {type(algo).__name__}: its evaluation draws noise of several shapes "
                         f"{sorted(set(feed.shapes))}")
    return feed.shapes


def _scores(store: RunStore) -> dict:
    """The pre-trained (iteration 0) and final evaluations of the run's eval.csv."""
    import pandas as pd

    if not store.evals.exists():
        return {"pretrained": None, "final": None}
    ev = pd.read_csv(store.evals)
    ev = ev[[c for c in ("iteration", "env_steps", "return_mean", "return_std", "score_mean", "success_rate",
                         "episode_len", "n_episodes") if c in ev.columns]]
    rows = [{k: None if v != v else getattr(v, "item", lambda: v)() for k, v in r.items()}  # NaN -> None
            for r in ev.to_dict(orient="records")]
    first = [r for r in rows if r.get("iteration") == 0]
    return {"pretrained": first[0] if first else None, "final": rows[-1] if rows else None}


def _versions(store: RunStore, state: dict) -> tuple[dict, dict]:
    recorded = {}
    if store.versions.exists():
        try:
            recorded = json.loads(store.versions.read_text())
        except ValueError:
            recorded = {}
    try:
        ours = importlib.metadata.version("dppo-bench")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was not pip-installed
        ours = None
    now = {"torch": torch.__version__, "dppo_bench": ours}
    run = recorded.get("versions", {})
    data = {"dataset_checksum": state.get("dataset_checksum") or recorded.get("dataset_checksum"),
            "dataset_source": recorded.get("dataset_source"),
            "pretrained_key": state.get("pretrained_key") or (recorded.get("pretrained") or {}).get("key")}
    return {"export": now, "run": run}, data


def _sampling(algo) -> dict:
    """How the traced evaluation samples (what the card documents), read from the algorithm's config."""
    cfg = algo.cfg
    out = {"deterministic": True}
    chains = [getattr(algo, "eval_chain", None), getattr(algo, "chain", None)]
    chains += [m.ddpm for m in vars(algo).values() if isinstance(m, DiffusionPolicy)]
    plan = next((c.plan for c in chains if isinstance(c, DenoisingChain)), None)
    if plan is not None:
        out["chain"] = ({"kind": "ddim", "steps": plan.ddim_steps, "eta": plan.ddim_eta} if plan.ddim_steps is not None else
                        {"kind": "ddpm", "steps": plan.n_train_steps,
                         "std": "posterior std floored at 1e-3; 0 at the last step"})
    for k in ("randn_clip", "clip_initial_noise", "ft_denoising_steps", "n_candidates", "eval_mode"):
        if hasattr(cfg, k):
            out[k] = getattr(cfg, k)
    return out


def _trace(module: nn.Module, example: tuple, check: tuple):
    with warnings.catch_warnings():
        # the chain's schedule (a buffer) decides which steps draw noise: constant per export, so the
        # tracer's "converting a tensor to a Python boolean" warnings are expected; the trace is checked
        # against eager calls at another batch size below and after loading
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            return torch.jit.trace(module, example, check_inputs=[check])
        except torch.jit.TracingCheckError as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BenchError(f"cannot export: the traced policy differs from the eager one at another batch size "
                             f"({msg})") from None


def _card(ctx, algo, state, store: RunStore, fmt: str, draws: list) -> dict:
    task, cfg = ctx.task, ctx.cfg
    rows = (f"{draws[0][0]}*B" if draws[0][0] != 1 else "B") if draws else None
    versions, data = _versions(store, state)
    return {
        "card_format": CARD_FORMAT, "file_format": fmt, "task": cfg.task, "suite": task.suite,
        "algorithm": cfg.algorithm, "seed": cfg.seed, "preset": cfg.preset, "iteration": state["iteration"],
        "env_steps": state["env_steps"], "obs_dim": task.obs_dim, "act_dim": task.act_dim,
        "horizon_steps": cfg.env.horizon_steps, "act_steps": cfg.env.act_steps,
        "inputs": {"obs": ["B", task.obs_dim], **({"noise": [len(draws), rows, *draws[0][1:]]} if draws else {})},
        "output": ["B", cfg.env.act_steps, task.act_dim],
        "noise": None if not draws else {
            "draws_per_call": len(draws), "draw_shape": [rows, *draws[0][1:]], "rows_per_obs": draws[0][0],
            "distribution": "standard normal, unclipped (the module clips as the harness does)",
            "reproduce_harness": "g = torch.Generator().manual_seed(evaluation.seed); for every call, in "
                                 "order: noise = torch.stack([torch.randn(draw_shape, generator=g) for _ in "
                                 "range(draws_per_call)])"},
        "evaluation": {"seed": cfg.eval.seed + cfg.seed, "n_envs": cfg.eval.n_envs,
                       "n_episodes": cfg.eval.n_episodes, "max_episode_steps": cfg.env.max_episode_steps,
                       "env_id": task.env_id},
        "sampling": _sampling(algo),
        "normalization": {"obs": "2 * (obs - obs_min) / (obs_max - obs_min + 1e-6) - 1",
                          "action": "(a + 1) / 2 * (act_max - act_min + 1e-6) + act_min, a = the chunk's first "
                                    "act_steps actions clipped to [-1, 1]"},
        "scores": _scores(store), **data, "versions": versions,
    }


def _example_inputs(norm, obs_dim: int, draws: list, batch: int, seed: int) -> tuple:
    obs = np.random.default_rng(seed).uniform(norm.obs_min, norm.obs_max, (batch, obs_dim))
    if not draws:
        return (torch.as_tensor(obs, dtype=torch.float32),)
    g = torch.Generator().manual_seed(seed)
    shape = (draws[0][0] * batch, *draws[0][1:])
    return torch.as_tensor(obs, dtype=torch.float32), torch.stack([torch.randn(shape, generator=g) for _ in draws])


def export_policy(run_dir: Path, fmt: str, out: Path | None = None) -> tuple[Path, Path, str]:
    """Write the run's fine-tuned policy as `fmt` (default RUN/export/policy.pt|.onnx) and its card (the
    path with .json appended); returns (file, card, how the file was checked)."""
    from bench.runner import load_for_eval

    check_format(fmt)
    store = check_run_dir(run_dir)
    out = Path(out) if out is not None else store.dir / "export" / f"policy{FORMATS[fmt]}"
    if out.is_dir():
        raise BenchError(f"--out {out} is a directory; give a file path")
    ctx, algo, norm, state = load_for_eval(store.dir, "cpu")
    for part in vars(algo).values():  # the weights become constants of the trace
        if isinstance(part, nn.Module):
            part.requires_grad_(False).eval()
    draws = noise_draws(algo, ctx.task.obs_dim)
    wrapper = (ExportedPolicy if draws else ExportedPolicyNoNoise)(algo, norm, ctx.cfg.env.act_steps)
    example, check = (_example_inputs(norm, ctx.task.obs_dim, draws, b, seed) for b, seed in ((3, 0), (2, 1)))
    with torch.no_grad():
        expected = wrapper(*check)
    card = _card(ctx, algo, state, store, fmt, draws)
    traced = _trace(wrapper, example, check)
    if fmt == "torchscript":
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"card.json": json.dumps(card)})
        got, checked = torch.jit.load(str(out))(*check), "loaded with torch.jit.load"
    else:
        got, checked = _export_onnx(traced, example, out, bool(draws), check)
    if got is not None and not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
        out.unlink(missing_ok=True)
        raise BenchError(f"the exported {fmt} policy does not reproduce the harness's actions (max difference "
                         f"{(got - expected).abs().max().item():.3g}); nothing was kept")
    card["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    card_path = out.with_name(out.name + ".json")
    atomic_write_json(card_path, card)
    return out, card_path, checked


def _export_onnx(traced, example: tuple, out: Path, with_noise: bool, check: tuple):
    """ONNX from the TorchScript trace (torch.onnx's TorchScript-based exporter: the torch.export-based one
    cannot export the chain, whose steps depend on its schedule's values); checked with onnxruntime when it
    is installed. Returns (outputs on `check` or None, how it was checked)."""
    names = ["obs", "noise"] if with_noise else ["obs"]
    dims = {"obs": {0: "batch"}, "actions": {0: "batch"}} | ({"noise": {1: "noise_rows"}} if with_noise else {})
    try:
        with atomic_path(out) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore")  # the TorchScript-based exporter's deprecation notices
            torch.onnx.export(traced, example, str(tmp), input_names=names, output_names=["actions"],
                              dynamic_axes=dims, dynamo=False)
    except Exception as e:  # noqa: BLE001 (an exporter that cannot do it: one line, nothing written)
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise BenchError(f"torch.onnx could not export this policy ({msg}); use --format torchscript") from None
    try:
        import onnxruntime
    except ImportError:
        return None, "not run (pip install onnxruntime to check it)"
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: t.numpy() for n, t in zip(names, check)})[0]
    return torch.as_tensor(got), f"run with onnxruntime {onnxruntime.__version__}"
