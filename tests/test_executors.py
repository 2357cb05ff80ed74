"""Grid executors (bench/executors.py): every registered executor passes the same protocol checks; the
Ray executor runs a grid on a two-node cluster with its runs pinned to the worker node; the worked
example of docs/adding-an-executor.md, installed as an entry-point plugin, passes the protocol checks
and runs a grid. Real processes and a real local Ray cluster, smoke preset, tiny tasks."""

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import executors
from bench.executors import list_executors, make_executor
from bench.grid import expand_grid, load_grid_file, run_grid, run_state
from core.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding-an-executor.md"

# Options the contract test gives each registered executor (from the test's fixtures). An executor
# registered without an entry here fails the contract test rather than being left out.
CONTRACT_OPTIONS = {
    "local": lambda request: {},
    "ray": lambda request: {"address": request.getfixturevalue("ray_cluster")["address"]},
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lock(run, root):
    path = run.lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.2)


def check_protocol(name, options, root, while_running=None):
    """submit / poll / cancel / close on one good, one failing and one long run of the tiny tasks."""
    root = Path(root).resolve()
    ok = expand_grid(["dppo"], ["bimodal_bandit"], "0", "smoke", {})[0]
    bad = expand_grid(["dppo"], ["bimodal_bandit"], "1", "smoke", {"data.source": str(root / "nonexistent.hdf5")})[0]
    long = expand_grid(["dppo"], ["point_reach"], "0", "smoke", {"train.n_iterations": "100000"})[0]
    ex = make_executor(name, root, options)
    fds = []
    try:
        t = time.time()
        assert ex.poll([], 0.2) == {}
        assert time.time() - t < 5
        handles = {}
        for run in (ok, bad, long):
            fds.append(_lock(run, root))
            run.log_path(root).parent.mkdir(parents=True, exist_ok=True)
            handles[run] = ex.submit(run, run.log_path(root), fds[-1])
        assert len(set(handles.values())) == 3, "handles must be distinct and hashable"
        t = time.time()
        ex.poll(list(handles.values()), 0.2)
        assert time.time() - t < 10, "poll overran its timeout"

        codes = {}
        deadline = time.time() + 240
        while len(codes) < 2 and time.time() < deadline:
            for h, code in ex.poll([handles[ok], handles[bad]], 1.0).items():
                codes[h] = code
        assert codes.get(handles[ok]) == 0, (codes, ok.log_path(root).read_text()[-3000:])
        assert run_state(ok, root) == "complete"
        assert codes.get(handles[bad], 0) != 0, codes
        assert "nonexistent.hdf5" in bad.log_path(root).read_text()
        assert run_state(bad, root) != "complete"

        metrics = long.store(root).metrics
        _wait_for(metrics.exists, 180, "the long run wrote no metrics")
        assert handles[long] not in ex.poll([handles[long]], 0.1)
        if while_running:
            while_running(ex, handles[long])
        ex.cancel([handles[long]])
        time.sleep(2)  # rows already being written land
        before = metrics.stat().st_mtime_ns
        time.sleep(3)
        assert metrics.stat().st_mtime_ns == before, "the cancelled run kept running"
        assert run_state(long, root) != "complete"
        for fd in fds:
            os.close(fd)
        fds.clear()
        fd = _lock(long, root)  # raises if a child of the cancelled run still holds the lock
        os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)
        ex.close()


# ------------------------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head and a separately started worker node on this machine, each with its own custom
    resource and temp dir. Both `ray start`s run in new sessions, so teardown kills exactly their process
    groups (`ray stop` would kill every Ray on the machine). Ray's multi-node mode puts both nodes on the
    machine's own address rather than 127.0.0.1; the cluster still never leaves this host."""
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    base = tmp_path_factory.mktemp("rx")  # short: Ray's socket paths under the temp dir must fit 107 bytes
    port = _free_port()
    started = []

    def start(node, *args):
        temp = base / node
        log = open(base / f"{node}.log", "w")  # a file, not a pipe: Ray's daemons inherit it
        proc = subprocess.Popen([ray_bin, "start", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
                                 f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats", *args],
                                env=dict(os.environ, RAY_TMPDIR=str(temp)), cwd=REPO, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        assert proc.wait(timeout=180) == 0, (base / f"{node}.log").read_text()[-2000:]

    try:
        start("head", "--head", f"--port={port}", "--num-cpus=2", '--resources={"head_node": 1}',
              "--include-dashboard=false", f"--dashboard-port={_free_port()}")
        start("worker", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"worker_node": 2}')
        yield {"address": f"127.0.0.1:{port}", "temp": base / "head"}
    finally:
        for proc, log in reversed(started):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(3)
            log.close()


# ------------------------------------------------------------------------------------------ contract


def test_registry_and_bad_input(cli, tmp_path):
    assert {"local", "ray"} <= set(list_executors())
    with pytest.raises(BenchError, match="unknown executor 'slurm'; valid executors: local, ray"):
        executors.get_executor("slurm")
    with pytest.raises(BenchError, match="cannot load executor 'os:path'"):
        executors.get_executor("os:path")  # not a class with the protocol's methods
    with pytest.raises(BenchError, match="bad Ray resource num_cpus = -1"):  # checked before connecting
        run_grid([], tmp_path / "r", executor="ray", options={"address": "127.0.0.1:1", "num_cpus": -1})

    root = tmp_path / "res"
    grid = tmp_path / "grid.toml"
    head = 'algos = ["dppo"]\ntasks = ["point_reach"]\nseeds = "0"\npreset = "smoke"\n'
    cases = [
        ([], "executor = 'slurm'\n", ["unknown executor 'slurm'", "valid executors: local, ray"]),
        (["--executor", "slurm"], "", ["unknown executor 'slurm'", "valid executors: local, ray"]),
        ([], "[executors.ray]\nadress = 'auto'\n",
         ["unknown option(s) 'adress' for executor 'ray'", "address, num_cpus, num_gpus, resources"]),
        ([], "[executors.nope]\nworkers = 2\n", ["unknown executor 'nope'", "local, ray"]),
        ([], "[executors.local]\nworkers = 0\n", ["bad workers 0 in executors.local"]),
        ([], "executors = 3\n", ["one table of options per executor"]),
        (["--executor", "ray"], "", ["--address"]),
    ]
    for args, extra, needles in cases:
        grid.write_text(head + extra)
        code, _, err = cli("grid", "--file", grid, "--root", root, *args)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error:"), err
        assert all(n in last for n in needles), (needles, last)
    assert not root.exists()


def test_grid_file_executor_tables(tmp_path):
    f = tmp_path / "grid.toml"
    f.write_text('algos = ["dppo"]\ntasks = ["point_reach"]\nseeds = "0"\nworkers = 3\nexecutor = "ray"\n'
                 '[executors.local]\nworkers = 2\n[executors.ray]\naddress = "auto"\n'
                 'resources = { worker_node = 1 }\n')
    g = load_grid_file(f)
    assert g["executor"] == "ray" and g["workers"] == 3
    assert g["executors"] == {"local": {"workers": 2}, "ray": {"address": "auto", "resources": {"worker_node": 1}}}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list_executors())
def test_executor_contract(name, request, tmp_path):
    if name not in CONTRACT_OPTIONS:
        pytest.fail(f"executor {name!r} is registered but has no CONTRACT_OPTIONS in tests/test_executors.py")
    check_protocol(name, CONTRACT_OPTIONS[name](request), tmp_path / "res")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_grid_on_two_nodes_pins_runs_to_the_worker(ray_cluster, tmp_path, monkeypatch):
    import ray

    root = tmp_path / "res"
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent("""
        algos = ["dppo"]
        tasks = ["point_reach", "bimodal_bandit"]
        seeds = "0"
        preset = "smoke"
        executor = "ray"
        [executors.ray]
        workers = 2
        resources = { worker_node = 1 }
    """))
    out = subprocess.run([sys.executable, "-m", "bench.cli", "grid", "--file", grid, "--root", root,
                          "--address", ray_cluster["address"]], cwd=REPO, capture_output=True, text=True,
                         timeout=420)
    runs = load_grid_file(grid)["runs"]
    logs = "".join(r.log_path(root).read_text() for r in runs if r.log_path(root).exists())
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:], logs[-3000:])
    assert "2 completed, 0 failed" in out.stdout, out.stdout
    assert all(run_state(r, root) == "complete" for r in runs)

    monkeypatch.setenv("RAY_TMPDIR", str(ray_cluster["temp"]))
    ray.init(address=ray_cluster["address"], logging_level="ERROR", log_to_driver=False)
    try:
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    (worker,) = [nid for nid, res in nodes.items() if "worker_node" in res]
    assert len(nodes) == 2, nodes
    for r in runs:
        assert f"ray node {worker}" in r.log_path(root).read_text(), r.run_id


# --------------------------------------------------------------------------------- the doc's example


def _doc_example() -> str:
    section = DOC.read_text().split("## A worked example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def nice_plugin(tmp_path):
    """The doc's example as an installed plugin: its module plus a dist-info with the entry point."""
    site = tmp_path / "site"
    dist = site / "nice_executor-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "nice_executor.py").write_text(_doc_example())
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nice-executor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dppo_bench.executors]\nnice = nice_executor:NiceExecutor\n")
    yield site
    sys.modules.pop("nice_executor", None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_doc_example_passes_the_protocol(nice_plugin, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(nice_plugin))
    monkeypatch.setattr(executors.REGISTRY, "entries", dict(executors.REGISTRY.entries))  # the plugin stays in this test
    assert "nice" in list_executors()
    core = min(os.sched_getaffinity(0))
    base_nice = os.getpriority(os.PRIO_PROCESS, 0)

    def lowered(ex, proc):
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, base_nice + 5)
        assert os.sched_getaffinity(proc.pid) == {core}

    check_protocol("nice", {"niceness": 5, "cpus": [core]}, tmp_path / "res", while_running=lowered)
    with pytest.raises(BenchError, match="bad niceness 40"):
        make_executor("nice", tmp_path, {"niceness": 40})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_doc_example_runs_a_grid(nice_plugin, tmp_path):
    root = tmp_path / "res"
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(f"""
        algos = ["dppo"]
        tasks = ["point_reach", "bimodal_bandit"]
        seeds = "0"
        preset = "smoke"
        executor = "nice"
        [executors.nice]
        workers = 2
        niceness = 15
        cpus = [{min(os.sched_getaffinity(0))}]
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(nice_plugin), str(REPO)]))
    out = subprocess.run([sys.executable, "-m", "bench.cli", "grid", "--file", grid, "--root", root], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "2 completed, 0 failed" in out.stdout, out.stdout
    for r in expand_grid(["dppo"], ["point_reach", "bimodal_bandit"], "0", "smoke"):
        assert run_state(r, root) == "complete"
        assert "grid (nice) starts" in r.log_path(root).read_text()
