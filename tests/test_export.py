"""`bench export`: the exported file, loaded where the project cannot be imported, reproduces the actions a
real deterministic evaluation of the harness executed; its card; bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow

# Run in a fresh interpreter: the project's packages cannot be imported there (an import hook refuses
# them), only torch / onnxruntime and the standard library.
LOADER = r"""
import importlib.abc, json, re, sys
class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bench", "core", "algorithms", "envs"):
            raise ImportError(f"the export must not need the project ({name})")
sys.meta_path.insert(0, NoProject())
import torch
fmt, model_path, data_path, out_path, doc = sys.argv[1:]
card = json.load(open(model_path + ".json"))
data = torch.load(data_path)
noise = card["noise"]
g = torch.Generator().manual_seed(card["evaluation"]["seed"])
if fmt == "torchscript":  # the docs page's load_policy, as written
    exec(re.findall(r"```python\n(.*?)```", open(doc).read(), flags=re.S)[0])
    act, _ = load_policy(model_path)
else:
    import onnxruntime
    sess = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    def act(obs, generator):
        shape = (noise["rows_per_obs"] * len(obs), *noise["draw_shape"][1:])
        eps = torch.stack([torch.randn(shape, generator=generator) for _ in range(noise["draws_per_call"])])
        return torch.as_tensor(sess.run(None, {"obs": obs.numpy(), "noise": eps.numpy()})[0])
actions = [act(obs, g) for obs in data["obs"]]  # one call per chunk, as the evaluation made them
torch.save({"actions": actions, "modules": sorted(sys.modules)}, out_path)
"""
DOC = Path(__file__).resolve().parent.parent / "docs" / "exporting-a-policy.md"


def _smoke_run(out: Path, algo: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "hopper", "--algo", algo, "--preset",
                        "smoke", "--out", str(out), "--quiet", "--set", "torch_threads=1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out / "runs" / "hopper" / algo / "seed0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {a: _smoke_run(root, a) for a in ("dppo", "gaussian_ppo")}


class Tap:
    """Between TaskVectorEnv and its vector env: the raw observations the policy was given and the raw
    actions the harness executed."""

    def __init__(self, inner):
        self.inner, self.obs, self.actions = inner, [], []

    def reset(self, **kw):
        obs, info = self.inner.reset(**kw)
        self.obs.append(obs.copy())
        return obs, info

    def step(self, action):
        self.actions.append(np.array(action))
        out = self.inner.step(action)
        self.obs.append(out[0].copy())
        return out

    def close(self):
        self.inner.close()


def _harness_evaluation(run_dir: Path):
    """The run's final evaluation, as `bench eval` runs it, with its raw inputs and executed actions."""
    from bench.runner import evaluate, load_for_eval, make_env

    ctx, algo, norm, _ = load_for_eval(run_dir)
    cfg = ctx.cfg
    env = make_env(ctx, norm, cfg.eval.n_envs)
    env.env = tap = Tap(env.env)
    res = evaluate(algo, env, cfg.eval.n_episodes, cfg.eval.seed + cfg.seed, ctx.device)
    env.close()
    return res, tap.obs[: len(tap.actions)], tap.actions


@pytest.mark.parametrize("algo,fmt", [("dppo", "torchscript"), ("dppo", "onnx"), ("gaussian_ppo", "torchscript")])
def test_export_reproduces_the_harness_actions_without_the_project(runs, algo, fmt, cli, tmp_path):
    run_dir = runs[algo]
    out = tmp_path / f"policy.{'pt' if fmt == 'torchscript' else 'onnx'}"
    code, stdout, err = cli("export", run_dir, "--format", fmt, "--out", out)
    assert code == 0, err
    assert out.is_file() and Path(f"{out}.json").is_file() and "checked against the harness" in stdout
    res, obs, actions = _harness_evaluation(run_dir)
    final = pd.read_csv(run_dir / "eval.csv").iloc[-1]
    assert res["return_mean"] == pytest.approx(final["return_mean"], rel=1e-9)  # it is the run's evaluation
    assert len(actions) > 3
    data = tmp_path / "obs.pt"
    dtype = torch.float64 if fmt == "torchscript" else torch.float32  # Gym's float64; ONNX takes float32
    torch.save({"obs": [torch.as_tensor(o, dtype=dtype) for o in obs]}, data)
    r = subprocess.run([sys.executable, "-c", LOADER, fmt, str(out), str(data), str(tmp_path / "got.pt"), str(DOC)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "got.pt")
    assert not {m.split(".")[0] for m in got["modules"]} & {"bench", "core", "algorithms", "envs"}
    card = json.loads(Path(f"{out}.json").read_text())
    assert len(got["actions"]) == len(actions)
    for g, a in zip(got["actions"], actions):
        assert g.shape == (len(a), card["act_steps"], card["act_dim"])
        np.testing.assert_allclose(g.numpy(), a, rtol=1e-6 if fmt == "torchscript" else 1e-4, atol=1e-7)
    # DDPM over 10 steps draws x_K and one per step but the last; the Gaussian mean draws nothing
    assert (card["noise"] or {}).get("draws_per_call") == (10 if algo == "dppo" else None)


def test_card_records_the_run(runs, cli, tmp_path):
    run_dir = runs["dppo"]
    code, _, err = cli("export", run_dir)  # default: RUN/export/policy.pt
    assert code == 0, err
    f = run_dir / "export" / "policy.pt"
    card = json.loads((run_dir / "export" / "policy.pt.json").read_text())
    versions = json.loads((run_dir / "versions.json").read_text())
    ev = pd.read_csv(run_dir / "eval.csv")
    assert card["task"] == "hopper" and card["algorithm"] == "dppo" and card["file_format"] == "torchscript"
    assert (card["obs_dim"], card["act_dim"], card["horizon_steps"], card["act_steps"]) == (11, 3, 4, 4)
    assert card["inputs"] == {"obs": ["B", 11], "noise": [10, "B", 4, 3]} and card["output"] == ["B", 4, 3]
    assert card["dataset_checksum"] == versions["dataset_checksum"]
    assert card["scores"]["pretrained"]["return_mean"] == pytest.approx(ev["return_mean"].iloc[0], rel=1e-12)
    assert card["scores"]["final"]["return_mean"] == pytest.approx(ev["return_mean"].iloc[-1], rel=1e-12)
    assert card["scores"]["final"]["iteration"] == 2
    assert card["sampling"]["chain"]["kind"] == "ddpm" and card["versions"]["export"]["torch"] == torch.__version__
    assert card["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    extra = {"card.json": ""}
    torch.jit.load(str(f), _extra_files=extra)
    assert json.loads(extra["card.json"])["task"] == "hopper"  # the card is inside the file too
    assert not list(run_dir.rglob(".*.tmp"))


def test_bad_input_is_one_line_exit_2(runs, cli, tmp_path):
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.json").write_text("{}")
    cases = [((tmp_path / "nope",), "is not a run directory"),
             ((tmp_path / "empty_run",), "has no checkpoint"),
             ((runs["dppo"], "--format", "tflite"), "unknown --format 'tflite'; valid: torchscript, onnx")]
    for args, msg in cases:
        code, out, err = cli("export", *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "empty_run" / "export").exists()
