"""`bench video`: real offscreen MuJoCo rendering of a Gym (hopper) and a robomimic (lift) smoke run's
evaluation episodes; the files decode; the episodes are the harness's; the report embeds the strip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _bench(*args, timeout=600):
    """`bench ARGS` in a fresh process without a display or MUJOCO_GL: the command chooses the backend."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY",
                                                            "WAYLAND_DISPLAY")}
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    for task in ("hopper", "lift"):
        r = _bench("run", "--task", task, "--preset", "smoke", "--out", out, "--quiet", "--set", "torch_threads=1")
        assert r.returncode == 0, r.stderr
    return out


def run_dir(root, task):
    return Path(root) / "runs" / task / "dppo" / "seed0"


def _read(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.stack(list(iio.imiter(path)))


def _check_frames(frames: np.ndarray, n: int, height: int = 240, width: int = 320) -> None:
    assert frames.shape == (n, height, width, 3) and frames.dtype == np.uint8
    assert all(f.std() > 10 for f in frames), "a blank frame"
    assert np.abs(frames[1:].astype(int) - frames[:-1].astype(int)).max(axis=(1, 2, 3)).min() > 0, \
        "two consecutive frames are identical: the scene does not move"


@pytest.fixture(scope="module")
def hopper_video(root):
    r = _bench("video", run_dir(root, "hopper"), "--episodes", 2, "--json")  # as the run's evaluation: 2 on 2 envs
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_hopper_mp4_shows_the_runs_final_evaluation(root, hopper_video):
    d, res = run_dir(root, "hopper"), hopper_video
    video = d / "video" / "final.mp4"
    assert res["video"] == str(video) and res["gl"] in ("egl", "osmesa")
    final = pd.read_csv(d / "eval.csv").iloc[-1]
    assert np.mean(res["returns"]) == pytest.approx(final["return_mean"], rel=1e-9)
    assert res["every"] == 5 and res["fps"] == 25  # 125 Hz control, real time at <= 30 frames/s
    frames = _read(video)
    assert len(frames) == res["frames"] == sum(res["episode_frames"]) and len(res["episode_frames"]) == 2
    # each episode: its reset frame plus one per 5 env steps (smoke episodes end early, when the hopper falls)
    _check_frames(frames, res["frames"])
    from PIL import Image

    strip = Image.open(d / "video" / "final.png")
    assert strip.size[1] == 120 and strip.size[0] > 3 * 160
    assert not list(d.rglob(".*.tmp"))


def test_pretrained_video_shows_the_iteration_0_evaluation(root):
    d = run_dir(root, "hopper")
    r = _bench("video", d, "--episodes", 2, "--pretrained", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    first = pd.read_csv(d / "eval.csv").iloc[0]
    assert res["policy"] == "pre-trained" and res["video"] == str(d / "video" / "pretrained.mp4")
    assert np.mean(res["returns"]) == pytest.approx(first["return_mean"], rel=1e-9)


def test_lift_gif(root, tmp_path):
    d = run_dir(root, "lift")
    out = tmp_path / "lift.gif"
    r = _bench("video", d, "--episodes", 2, "--out", out, "--width", 160, "--height", 128, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["every"] == 1 and res["fps"] == 20  # robosuite's 20 Hz control
    final = pd.read_csv(d / "eval.csv").iloc[-1]
    assert np.mean(res["returns"]) == pytest.approx(final["return_mean"]) and res["success_rate"] == final["success_rate"]
    frames = _read(out)
    # per episode the reset and 40 steps (smoke: env.max_episode_steps 40); robosuite rebuilds its model at
    # every reset, so the second episode renders a new model
    assert res["episode_frames"] == [41, 41] and len(frames) == 82
    _check_frames(frames[..., :3], 82, 128, 160)
    assert (tmp_path / "lift.png").is_file()


def test_report_embeds_one_strip_per_task_with_a_video(root, hopper_video, tmp_path):
    from bench.report import make_report
    from bench.results import scan_runs

    records, _ = scan_runs(root)
    page = make_report(records, tmp_path / "report", reps=50).read_text()
    assert page.count('class="strip"') == 1 and 'id="strip-hopper"' in page  # lift's GIF went elsewhere
    assert 'id="strip-hopper" class="strip" alt="hopper: dppo seed 0, fine-tuned policy' in page
    assert 'src="data:image/png;base64,' in page.split('id="strip-hopper"')[1][:200]


def test_bad_input_is_one_line_exit_2(root, cli, tmp_path):
    d = run_dir(root, "hopper")
    cases = [((tmp_path / "nope",), "is not a run directory"),
             ((d, "--out", tmp_path / "x.avi"), "unknown video format '.avi'; valid: .mp4, .gif"),
             ((d, "--episodes", 0), "--episodes must be >= 1"),
             ((d, "--width", 100), "--width must be a multiple of 16")]
    for args, msg in cases:  # all before any rendering: in this process
        code, out, err = cli("video", *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.avi").exists()
    r = _bench("video", d, "--camera", "top", "--out", tmp_path / "top.mp4")  # known once the env is built
    assert r.returncode == 2 and r.stderr.startswith("error: unknown --camera 'top'; this task's cameras: track, "
                                                     "free") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "top.mp4").exists()
