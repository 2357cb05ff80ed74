import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Datasets and pre-trained policies of the test session go to one temp cache, shared by tests."""
    old = os.environ.get("DPPO_BENCH_CACHE")
    os.environ["DPPO_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["DPPO_BENCH_CACHE"])
    if old is None:
        os.environ.pop("DPPO_BENCH_CACHE", None)
    else:
        os.environ["DPPO_BENCH_CACHE"] = old


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `bench ARGS...` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from bench.cli import main

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke
