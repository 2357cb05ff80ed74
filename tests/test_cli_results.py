"""`bench leaderboard`, `bench report` and `bench grid` through the CLI: outputs and bad input."""

import pytest
import pandas as pd

from tests.test_leaderboard import make_store


@pytest.mark.slow
def test_leaderboard_and_report_commands(cli, tmp_path):
    root = make_store(tmp_path / "results")
    code, out, err = cli("leaderboard", "--root", root, "--reps", "100")
    assert code == 0, err
    df = pd.read_csv(root / "leaderboard.csv")
    assert set(df["algorithm"]) == {"dppo", "ppo"} and set(df["scope"]) == {"all", "gym", "robomimic"}
    assert (root / "leaderboard.md").read_text().count("| dppo") >= 3
    code, out, err = cli("leaderboard", "--root", root, "--reps", "100", "--tasks", "hopper", "--out", tmp_path / "lb")
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "lb" / "leaderboard.csv")["scope"]) == {"all", "gym"}
    code, out, err = cli("report", "--root", root, "--reps", "100")
    assert code == 0, err
    html = (root / "report" / "report.html").read_text()
    assert 'id="leaderboard"' in html and html.count('class="plot"') >= 4
    assert (root / "report" / "figures" / "aggregates.pdf").exists()


def _error(code, err, *needles):
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:"), err
    for n in needles:
        assert n in last, (n, last)


def test_results_commands_bad_input(cli, tmp_path):
    _error(*cli("leaderboard", "--root", tmp_path / "nothing")[::2], "no results under")
    root = make_store(tmp_path / "results")
    _error(*cli("leaderboard", "--root", root, "--tasks", "ant")[::2], "task ant", "hopper, lift")
    _error(*cli("report", "--root", root, "--algos", "sac")[::2], "algorithm sac", "dppo, ppo")
    _error(*cli("leaderboard", "--root", root, "--last", "0")[::2], "positive")
    assert not (root / "leaderboard.csv").exists() and not (root / "report").exists()


def test_grid_bad_input_runs_nothing(cli, tmp_path):
    root = tmp_path / "results"
    for args, needles in [
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "4-1"], ["bad seeds", "0-4"]),
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "x"], ["bad seeds"]),
        (["--algos", "dppo,ppo9", "--tasks", "hopper", "--seeds", "0-1"], ["unknown algorithm 'ppo9'", "dppo"]),
        (["--algos", "dppo", "--tasks", "ant", "--seeds", "0"], ["unknown task 'ant'", "hopper"]),
        (["--algos", "dppo", "--tasks", "hopper"], ["--seeds"]),
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "0", "--preset", "huge"], ["unknown preset"]),
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "0", "--set", "algo.nope=1"], ["algo.nope"]),
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "0", "--executor", "slurm"], ["executor", "local, ray"]),
        (["--algos", "dppo", "--tasks", "hopper", "--seeds", "0", "--executor", "ray"], ["--address"]),
    ]:
        _error(*cli("grid", "--root", root, *args)[::2], *needles)
    assert not root.exists()
