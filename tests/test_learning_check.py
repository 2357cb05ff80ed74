"""The learning check: every built-in algorithm improves on the tiny `bimodal_bandit` task within its
`small` preset, from the same pre-trained policy kind, with a fixed seed (seconds per algorithm)."""

import json

import pytest

from algorithms.registry import builtin_algorithms

# score points gained over the pre-trained policy (0 = random actions, 100 = always on a mode)
MIN_GAIN = 15.0


@pytest.mark.parametrize("algo", builtin_algorithms())
@pytest.mark.slow
def test_algorithm_improves_on_the_bandit(cli, tmp_path, algo):
    code, _, err = cli("run", "--algo", algo, "--task", "bimodal_bandit", "--out", tmp_path,
                       "--set", "torch_threads=1", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "runs" / "bimodal_bandit" / algo / "seed0" / "summary.json").read_text())
    assert s["final_score"] > s["pretrained_score"] + MIN_GAIN, (s["pretrained_score"], s["final_score"])
