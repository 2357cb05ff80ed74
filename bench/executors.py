"""Grid executors: where and how the cells of a grid run. `bench/grid.py` decides which cells run and
when (skip, lock, at most `workers` at once, events); an executor only starts, watches and stops them.

The protocol (docs/adding-an-executor.md has a worked example):

    @register_executor("name")
    class MyExecutor:
        def __init__(self, root: Path, *, option=default, ...): ...
        def submit(self, run: GridRun, log: Path, lock_fd: int) -> handle: ...
        def poll(self, handles: list, timeout: float) -> dict[handle, int]: ...
        def cancel(self, handles: list) -> None: ...
        def close(self) -> None: ...

- `__init__(root, **options)`: `root` is the absolute results root; the keyword-only parameters are the
  executor's options, given in the grid file's `[executors.<name>]` table (`--address`, `--num-cpus`,
  `--num-gpus` go to any executor with an option of that name). Raise BenchError for bad values or an
  unreachable backend here: it is called before any run starts.
- `submit` starts `run` without waiting for it: the command is `python *run.cli_args(root)`, with
  stdout and stderr appended to `log` (its header is already written). `lock_fd` is the run's exclusive
  flock; if the run is a local process, pass it to the child (`pass_fds`) so the lock lives as long as
  the run, even if the grid is killed. Return a hashable handle.
- `poll` waits at most `timeout` seconds for any of `handles` to end and returns {handle: exit code}
  for the ended ones (empty if none). A run failed by the backend itself (a node died) gets a nonzero
  code, with the reason appended to its log: the grid reports the log's tail.
- `cancel` stops the given runs (the grid was interrupted or crashed) and returns once they are ended
  or ending; their handles are not polled again.
- `close` releases the backend (connections); called once, last, also after errors.

Registering: `@register_executor("name")` on a class in this module, or from another package through the
entry-point group `dppo_bench.executors` (`name = "package.module:Class"`), loaded only when asked for.
`--executor package.module:Class` also works without an entry point.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Protocol

from core.errors import BenchError
from core.registry import Registry

if TYPE_CHECKING:
    from bench.grid import GridRun

ENTRY_POINT_GROUP = "dppo_bench.executors"


class Executor(Protocol):
    def submit(self, run: GridRun, log: Path, lock_fd: int) -> Hashable: ...

    def poll(self, handles: list, timeout: float) -> dict[Hashable, int]: ...

    def cancel(self, handles: list) -> None: ...

    def close(self) -> None: ...


def _check_executor(name: str, cls) -> None:
    missing = [m for m in ("submit", "poll", "cancel", "close") if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise BenchError(f"cannot load executor {name!r}: it lacks {', '.join(missing) or 'a class'} "
                         f"(see docs/adding-an-executor.md)")


REGISTRY = Registry("executor", ENTRY_POINT_GROUP, check=_check_executor)
register_executor = REGISTRY.register
list_executors = REGISTRY.names


def get_executor(name: str) -> type:
    """A registered name, an entry point's name, or `package.module:Class` (not registered)."""
    if ":" in name and name not in REGISTRY.entries:
        return REGISTRY.load(name, name)
    return REGISTRY.get(name)


def option_names(name: str) -> list[str]:
    """The executor's options: the keyword-only parameters of its constructor."""
    params = inspect.signature(get_executor(name).__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_options(name: str, options: dict) -> None:
    """Unknown executor or option names are a BenchError naming the valid ones (values are checked by
    the executor's constructor)."""
    valid = option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise BenchError(f"unknown option(s) {', '.join(map(repr, unknown))} for executor {name!r}; "
                         f"valid options: {', '.join(valid) or 'none'}")


def make_executor(name: str, root: Path, options: dict | None = None) -> Executor:
    options = dict(options or {})
    check_options(name, options)
    return get_executor(name)(root, **options)


# ---------------------------------------------------------------------------------------------- local


@register_executor("local")
class LocalExecutor:
    """Each run is a child process of the grid; the run's lock fd is passed to it, so the lock lives as
    long as the child even if the grid is killed."""

    def __init__(self, root: Path):
        self.root = root

    def submit(self, run: GridRun, log: Path, lock_fd: int):
        with open(log, "ab") as f:
            return subprocess.Popen(run.command(self.root), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, pass_fds=(lock_fd,))

    def poll(self, handles, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            done = {p: p.returncode for p in handles if p.poll() is not None}
            if done or not handles or time.time() >= deadline:
                return done
            time.sleep(min(0.1, max(0.0, deadline - time.time())))

    def cancel(self, handles) -> None:
        for p in handles:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 10
        for p in handles:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ Ray


@register_executor("ray")
class RayExecutor:
    """One Ray task per run on an existing cluster, running the same `bench run` command with the
    worker's Python.

    The results root must be a path on a filesystem shared by the driver and all worker nodes (the tasks
    write the run directories and logs there; the driver reads them for status). Locks are taken on the
    driver. `DPPO_BENCH_CACHE`, if set on the driver, is forwarded to the tasks (it should be shared
    too). The cluster's session files live in the temp dir its head was started with (`ray start
    --temp-dir=...`); while connecting, the driver sets RAY_TMPDIR to `$RAY_TMPDIR` if set, else
    `<root>/.ray`, so nothing goes to the system temp's default Ray folder or the home folder.

    Options: `address` (the head's host:port, or "auto"), `num_cpus` / `num_gpus` per run (default 1 /
    0), `resources`: custom Ray resources per run, e.g. {worker_node = 1} to pin runs to the nodes
    started with `ray start --resources='{"worker_node": N}'`.
    """

    def __init__(self, root: Path, *, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 resources: dict | None = None):
        if not address:
            raise BenchError("executor 'ray' needs a Ray address: --address HOST:PORT (the head's GCS, e.g. "
                             "127.0.0.1:6379) or 'auto', or executors.ray.address in the grid file")
        if resources is not None and not isinstance(resources, dict):
            raise BenchError(f"bad Ray resources {resources!r}; expected a table, e.g. {{ worker_node = 1 }}")
        for key, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus), *(resources or {}).items()):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BenchError(f"bad Ray resource {key} = {v!r}; expected a non-negative number")
        self.root = root
        self.ray = _ray_connect(address, root)  # fails fast, before anything runs
        opts: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": 0}
        if num_gpus:
            opts["num_gpus"] = num_gpus
        if resources:
            opts["resources"] = dict(resources)
        self.remote = self.ray.remote(**opts)(_ray_task_body)
        self.env_extra = {k: os.environ[k] for k in ("DPPO_BENCH_CACHE",) if k in os.environ}
        self._log_of: dict = {}

    def submit(self, run: GridRun, log: Path, lock_fd: int):
        ref = self.remote.remote(run.cli_args(self.root), str(log), self.env_extra, os.getcwd())
        self._log_of[ref] = log
        return ref

    def poll(self, handles, timeout: float) -> dict:
        if not handles:
            return {}
        ready, _ = self.ray.wait(list(handles), num_returns=len(handles), timeout=timeout)
        out = {}
        for ref in ready:
            try:
                out[ref] = self.ray.get(ref)
                self._log_of.pop(ref, None)
            except Exception as e:  # the task itself failed (its worker or node died): say so in the log
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                with open(self._log_of.pop(ref), "a") as f:
                    f.write(f"Ray task failed: {reason}\n")
                out[ref] = -1
        return out

    def cancel(self, handles) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        if handles:
            self.ray.wait(list(handles), num_returns=len(handles), timeout=10)

    def close(self) -> None:
        try:
            self.ray.shutdown()
        except Exception:  # a cluster that went away cannot be left more cleanly
            pass


def _ray_tmpdir(root: Path) -> str:
    d = os.environ.get("RAY_TMPDIR") or str(Path(root) / ".ray")
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise BenchError(f"bad Ray address {address!r}; expected host:port (e.g. 127.0.0.1:6379) or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise BenchError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start one with "
                         f"`ray start --head` or fix the Ray address") from None


def _ray_connect(address: str, root: Path):
    if address != "auto":
        _check_reachable(address)
    try:
        import ray
    except ImportError:
        raise BenchError("executor 'ray' needs Ray: pip install 'ray[default]'") from None
    # The driver joins an existing cluster, whose session files live in the temp dir its head was started
    # with (`ray start --temp-dir`); ray.init(_temp_dir=...) must not name another one (the driver looks
    # for a node with that temp dir and fails). RAY_TMPDIR is set to a project-owned folder (`$RAY_TMPDIR`
    # if set, else <root>/.ray) only while connecting, so Ray's default lookups never use the system
    # temp's /tmp/ray; with address "auto" the cluster is then found from $RAY_ADDRESS or $RAY_TMPDIR.
    tmp = _ray_tmpdir(root)
    old_env = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, ignore_reinit_error=True)
    except Exception as e:  # ConnectionError, TimeoutError, RuntimeError from ray
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(f"cannot connect to the Ray cluster at {address}: {msg}") from None
    finally:
        if old_env is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_env
    return ray


def _ray_task_body(cli_args: list[str], log: str, env_extra: dict, cwd: str | None) -> int:
    """Runs on a Ray worker: the `bench run` command with the worker's Python; returns its exit code.
    The log names the node, for finding where a run went. The child gets SIGTERM if the worker dies
    (Linux), so a cancelled or orphaned task does not keep running without the driver's lock."""
    import os
    import signal
    import subprocess
    import sys

    import ray

    def _pdeathsig():
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass

    env = dict(os.environ, **env_extra)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"ray node {ray.get_runtime_context().get_node_id()}\n".encode())
        f.flush()
        proc = subprocess.Popen([sys.executable, *cli_args], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, preexec_fn=_pdeathsig,
                                cwd=cwd if cwd and os.path.isdir(cwd) else None)
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
