"""Experiment trackers beside a run's metrics.csv and eval.csv: TensorBoard and Weights & Biases.

The CSVs stay the source of truth (rewritten atomically every iteration); a tracker mirrors their rows for
viewing: every metrics.csv row as scalars `train/<column>`, every eval.csv row as `eval/<column>`, each at
step = the row's env steps (the x-axis that compares algorithms with different env counts and chunk sizes;
`train/iteration` and `eval/iteration` map it back), plus the resolved config (TensorBoard: the text
`config`; W&B: the run's config). In the run directory:

    tensorboard/events.out.tfevents.*   on by default when the tensorboard package is installed
                                        (`tensorboard --logdir results/runs`); `--set log.tensorboard=false`
    wandb/offline-run-*/                `--set log.wandb=true` (offline by default; `wandb sync` uploads)
    wandb/run_id                        the W&B run id that a resumed run continues

Resume: the checkpoint holds the rows up to its iteration. TensorBoard drops what the interrupted process
wrote after it (`purge_step` = the checkpoint's env steps + 1: the reader discards earlier events at or
past that step), so no step appears twice; W&B continues the run of the same id (offline: in a new folder
of that id). A tracker with nothing written yet (off when the run started) gets those rows first. A fresh
start removes both folders, as the runner removes the CSVs of an earlier attempt.
"""

from __future__ import annotations

import json
import numbers
import shutil
import uuid
from pathlib import Path

from bench.config import RunConfig, to_dict
from core.atomic import atomic_write_text
from core.errors import BenchError

TB_DIR = "tensorboard"
WANDB_DIR = "wandb"


def check_wandb_installed() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise BenchError("log.wandb=true needs Weights & Biases, which is not installed: "
                         "pip install 'dppo-bench[wandb]' (or leave log.wandb=false)") from None


def scalars(row: dict) -> dict[str, float]:
    """The numeric values of a metrics or eval row (NaN kept: a row's missing train return is NaN there too)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


class TensorBoardTracker:
    def __init__(self, cfg: RunConfig, directory: Path, resume_step: int | None, history: list):
        from torch.utils.tensorboard import SummaryWriter

        continued = resume_step is not None and any(directory.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(directory), purge_step=resume_step + 1 if continued else None)
        if not continued:
            # indented: a Markdown code block in TensorBoard's text tab
            text = "\n".join("    " + line for line in json.dumps(to_dict(cfg), indent=2).splitlines())
            self.writer.add_text("config", text, 0)
            for kind, row in history:
                self.log(kind, row)
        self.writer.flush()

    def log(self, kind: str, row: dict) -> None:
        step = int(row["env_steps"])
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()  # what a killed run leaves matches its metrics.csv

    def close(self, ok: bool) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, cfg: RunConfig, directory: Path, resume_step: int | None, history: list, log=print):
        import wandb

        id_file = directory / "run_id"
        continued = resume_step is not None and id_file.is_file()
        directory.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if continued else uuid.uuid4().hex[:8]
        if not continued:
            atomic_write_text(id_file, run_id + "\n")
        mode = cfg.log.wandb_mode
        try:
            self.run = wandb.init(
                project=cfg.log.wandb_project, name=f"{cfg.task}/{cfg.algorithm}/seed{cfg.seed}",
                group=f"{cfg.task}/{cfg.algorithm}", tags=[cfg.task, cfg.algorithm, cfg.preset],
                config=to_dict(cfg), dir=str(directory.parent), id=run_id, resume="allow", mode=mode,
                # no capture of stdout/stderr (the progress lines are ours) and no banner
                settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # wandb raises its own errors (no login, no network) from many places
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = "; run `wandb login` or use log.wandb_mode=offline" if mode == "online" else ""
            raise BenchError(f"cannot start the W&B run ({mode}): {msg}{hint}") from None
        folder = Path(self.run.dir).parent
        log(f"W&B {mode} run {run_id}: " + (f"upload with `wandb sync {folder}`" if mode == "offline" else self.run.url))
        if not continued:
            for kind, row in history:
                self.log(kind, row)

    def log(self, kind: str, row: dict) -> None:
        self.run.log({f"{kind}/{k}": v for k, v in scalars(row).items()}, step=int(row["env_steps"]))

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class Trackers:
    """The run's open trackers: `log("train" | "eval", row)` per CSV row, `close(ok)` once."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, kind: str, row: dict) -> None:
        for t in self.trackers:
            t.log(kind, row)

    def close(self, ok: bool = True) -> None:
        for t in self.trackers:
            t.close(ok)
        self.trackers = []


def open_trackers(cfg: RunConfig, run_dir: Path, rows: list[dict], evals: list[dict], resume_step: int | None,
                  log=print) -> Trackers:
    """The trackers `cfg.log` asks for. `resume_step`: None for a fresh start (earlier attempts' tracker folders
    are removed), else the checkpoint's env steps; `rows`, `evals`: the run's rows so far."""
    run_dir = Path(run_dir)
    if resume_step is None:
        for name in (TB_DIR, WANDB_DIR):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    # in step order (an eval after the metrics row of its iteration): TensorBoard's reader drops events whose
    # step goes back
    history = sorted([("train", r) for r in rows] + [("eval", e) for e in evals],
                     key=lambda kr: (kr[1]["env_steps"], kr[0] == "eval"))
    out = []
    if cfg.log.tensorboard:
        try:
            out.append(TensorBoardTracker(cfg, run_dir / TB_DIR, resume_step, history))
        except ImportError:
            # no [brackets]: the CLI prints these lines as rich markup
            log("TensorBoard logging is off: the tensorboard package is not installed (pip install tensorboard, "
                "or the tb extra; --set log.tensorboard=false hides this line)")
    if cfg.log.wandb:
        try:
            out.append(WandbTracker(cfg, run_dir / WANDB_DIR, resume_step, history, log))
        except BaseException:
            Trackers(out).close(False)
            raise
    return Trackers(out)
