"""Experiment trackers (bench/trackers.py) on real smoke runs: TensorBoard events read back with TensorBoard's own
reader equal metrics.csv and eval.csv, a resumed run repeats no step, and a W&B offline run lands in the run
directory with the same rows."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.config import build_run_config, to_dict
from bench.runner import run
from core.runstore import RunStore

SMOKE = {"train.n_iterations": 3, "torch_threads": 1}


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _series(ea, tag):
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def _numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _assert_mirrors(ea, kind: str, df: pd.DataFrame):
    """Every numeric column of the CSV is the scalar `kind/<column>`, one value per row at step = env steps."""
    cols = _numeric_columns(df)
    assert {t for t in ea.Tags()["scalars"] if t.startswith(kind + "/")} == {f"{kind}/{c}" for c in cols}
    for c in cols:
        got = _series(ea, f"{kind}/{c}")
        assert [s for s, _ in got] == df["env_steps"].tolist(), c
        for (_, v), want in zip(got, df[c]):
            assert (math.isnan(v) and math.isnan(want)) or v == pytest.approx(want, rel=1e-6, abs=1e-30), (c, v, want)


class StopAfter:
    """Run progress that interrupts the run after iteration `n` (past its last checkpoint), as Ctrl-C would."""

    def __init__(self, n: int):
        self.n = n

    def start(self, *args):
        pass

    def update(self, iteration, *args):
        if iteration == self.n:
            raise KeyboardInterrupt


def test_tensorboard_events_equal_the_csvs_and_hold_the_config(cli, tmp_path):
    code, _, err = cli("run", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path, "--quiet",
                       *[f"--set={k}={v}" for k, v in SMOKE.items()])
    assert code == 0, err
    d = RunStore.of(tmp_path, "point_reach", "dppo", 0).dir
    ea = _events(d)
    metrics, evals = pd.read_csv(d / "metrics.csv"), pd.read_csv(d / "eval.csv")
    assert len(metrics) == 3 and len(evals) == 4
    _assert_mirrors(ea, "train", metrics)
    _assert_mirrors(ea, "eval", evals)
    text = ea.Tensors("config/text_summary")
    assert len(text) == 1 and text[0].step == 0
    shown = "\n".join(line[4:] for line in text[0].tensor_proto.string_val[0].decode().splitlines())
    assert json.loads(shown) == json.loads((d / "config.json").read_text())["config"]


def test_tensorboard_off(tmp_path, monkeypatch):
    cfg = build_run_config("point_reach", "dppo", 0, "smoke", {**SMOKE, "log.tensorboard": "false"})
    run(cfg, tmp_path / "off", log=lambda m: None)
    assert not (RunStore.of(tmp_path / "off", "point_reach", "dppo", 0).dir / "tensorboard").exists()
    # the package missing: the run goes on, with one line saying so
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    lines = []
    run(build_run_config("point_reach", "dppo", 0, "smoke", SMOKE), tmp_path / "missing", log=lines.append)
    d = RunStore.of(tmp_path / "missing", "point_reach", "dppo", 0).dir
    assert (d / "summary.json").exists() and not (d / "tensorboard").exists()
    assert [x for x in lines if "TensorBoard" in x] == [(
        "TensorBoard logging is off: the tensorboard package is not installed (pip install tensorboard, or the tb "
        "extra; --set log.tensorboard=false hides this line)")]


@pytest.mark.parametrize("tensorboard_at_start", [True, False])
def test_resumed_run_repeats_no_step(tmp_path, tensorboard_at_start):
    """Interrupted after iteration 3 (checkpoint at 2), resumed to 4: TensorBoard holds each iteration once, with
    the resumed run's values (the interrupted process's row 3 is purged); a run started without TensorBoard
    gets the rows from before the resume."""
    over = {**SMOKE, "train.n_iterations": 4, "train.checkpoint_every": 2}
    first = build_run_config("point_reach", "dppo", 0, "smoke",
                             {**over, "log.tensorboard": str(tensorboard_at_start).lower()})
    with pytest.raises(KeyboardInterrupt):
        run(first, tmp_path, log=lambda m: None, progress=StopAfter(3))
    d = RunStore.of(tmp_path, "point_reach", "dppo", 0).dir
    stale_wall_s = pd.read_csv(d / "metrics.csv")["wall_s"].iloc[2]
    assert (d / "tensorboard").exists() == tensorboard_at_start
    run(build_run_config("point_reach", "dppo", 0, "smoke", over), tmp_path, resume=True, log=lambda m: None)
    metrics, evals = pd.read_csv(d / "metrics.csv"), pd.read_csv(d / "eval.csv")
    assert metrics["iteration"].tolist() == [1, 2, 3, 4] and metrics["wall_s"].iloc[2] != stale_wall_s
    ea = _events(d)
    _assert_mirrors(ea, "train", metrics)
    _assert_mirrors(ea, "eval", evals)
    assert len(ea.Tensors("config/text_summary")) == 1
    assert len(glob.glob(str(d / "tensorboard" / "events.out.tfevents.*"))) == (2 if tensorboard_at_start else 1)


# ------------------------------------------------------------------------------------------ W&B


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's LevelDB-log framing (a 7-byte file header; 32 KiB blocks of chunks,
    each a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last) around protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_run_lands_in_the_run_directory(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'dppo-bench[wandb]' (in the test extra)")
    env = dict(os.environ, WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    for key in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        env.pop(key, None)
    sets = [f"--set={k}={v}" for k, v in {**SMOKE, "log.wandb": "true", "log.tensorboard": "false",
                                          "log.wandb_project": "bench-test"}.items()]
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "point_reach", "--preset", "smoke",
                        "--out", str(tmp_path), "--quiet", *sets], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    d = RunStore.of(tmp_path, "point_reach", "dppo", 0).dir
    run_id = (d / "wandb" / "run_id").read_text().strip()
    files = list((d / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, sorted(p.name for p in (d / "wandb").iterdir())
    assert f"W&B offline run {run_id}: upload with `wandb sync {files[0].parent}`" in r.stderr.replace("\n", "")
    records = _wandb_records(files[0])
    started = next(x.run for x in records if x.WhichOneof("record_type") == "run")
    assert (started.run_id, started.project, started.display_name, started.run_group) == (
        run_id, "bench-test", "point_reach/dppo/seed0", "point_reach/dppo")
    config = {u.key: json.loads(u.value_json) for u in started.config.update}
    cfg = to_dict(build_run_config("point_reach", "dppo", 0, "smoke",
                                   {**SMOKE, "log.wandb": "true", "log.tensorboard": "false",
                                    "log.wandb_project": "bench-test"}))
    assert {k: config[k] for k in cfg} == cfg
    history: dict[int, dict] = {}
    for x in records:
        if x.WhichOneof("record_type") == "history":
            history.setdefault(x.history.step.num, {}).update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in x.history.item})
    metrics, evals = pd.read_csv(d / "metrics.csv"), pd.read_csv(d / "eval.csv")
    assert sorted(history) == sorted(set(evals["env_steps"]) | set(metrics["env_steps"]))
    for kind, df in (("train", metrics), ("eval", evals)):
        for _, row in df.iterrows():
            logged = history[int(row["env_steps"])]
            for c in _numeric_columns(df):
                want = row[c]
                got = logged[f"{kind}/{c}"]
                if math.isnan(want):  # W&B writes NaN as the JSON token NaN
                    assert math.isnan(got), (c, got)
                else:
                    assert got == pytest.approx(want, rel=1e-12), (c, got, want)
