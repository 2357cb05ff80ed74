"""The worked plugin example (examples/dppo-bench-ddpo): installed as a real distribution with an entry
point, listed by `bench algos`, and run end to end by `bench run` in a fresh process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dppo-bench-ddpo"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("plugin_site")
    src = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("plugin_src") / EXAMPLE.name)  # builds write in-tree
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    assert (site / "bench_ddpo" / "__init__.py").exists()
    return site


def bench(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugin_is_listed(plugin_site):
    out = bench(plugin_site, "algos")
    assert out.returncode == 0, out.stderr
    assert "ddpo" in out.stdout


@pytest.mark.slow
def test_plugin_runs_and_learns_the_bandit(plugin_site, tmp_path):
    out = bench(plugin_site, "run", "--algo", "ddpo", "--task", "bimodal_bandit", "--out", tmp_path,
                "--set", "torch_threads=1", "--quiet")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "runs" / "bimodal_bandit" / "ddpo" / "seed0" / "summary.json").read_text())
    assert summary["algorithm"] == "ddpo"
    assert summary["final_score"] > summary["pretrained_score"] + 20, summary
