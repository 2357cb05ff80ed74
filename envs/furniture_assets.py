"""Furniture-Bench assets without IsaacGym: the furniture meshes come from the `furniture-bench==0.1` wheel
(MIT licence, CLVR lab @ KAIST), downloaded from the package index without its dependencies (they pin gym
0.21 and do not install on a modern Python), checked against a pinned SHA-256, and unpacked into the data
directory with the wheel's licence notice. Nothing from the wheel is imported; only mesh files are read.

Physics does not need them: MuJoCo collides convex shapes, so each part collides through primitives fitted
to its mesh (sizes in `envs.furniture_sim`, checked against the meshes by the tests). The meshes are the
parts' visual geometry.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from core.errors import BenchError
from core.atomic import atomic_write_json
from core.paths import cache_root

WHEEL = "furniture_bench-0.1-py3-none-any.whl"
WHEEL_SHA256 = "22548e226db880dec3dc4993fbcc40b3bbd81357b2f725d53f2c689ff32df0fc"
# what is unpacked: the furniture meshes and URDFs, and the licence
MEMBERS = ("furniture_bench/assets/furniture/mesh/", "furniture_bench/assets/furniture/urdf/",
           "furniture_bench-0.1.dist-info/LICENSE")


def assets_dir() -> Path:
    return cache_root() / "assets" / "furniture-bench-0.1"


def mesh_path(relative: str) -> Path:
    return assets_dir() / "furniture_bench" / "assets" / "furniture" / "mesh" / relative


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(dest: Path) -> Path:
    """`pip download furniture-bench==0.1 --no-deps` into `dest`; a clear error offline."""
    cmd = [sys.executable, "-m", "pip", "download", "furniture-bench==0.1", "--no-deps", "-q", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL
    if result.returncode != 0 or not wheel.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"cannot download the furniture-bench==0.1 wheel for the furniture meshes ({last}); "
                         f"download {WHEEL} by hand and run `bench data assets --wheel PATH`")
    return wheel


def ensure_assets(wheel: str | Path | None = None, log=print) -> Path:
    """The unpacked asset folder, downloading and unpacking the wheel on first use."""
    root = assets_dir()
    if (root / "checksum.json").exists():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(wheel) if wheel else download_wheel(Path(tmp))
        if not path.is_file():
            raise BenchError(f"wheel {path} does not exist")
        digest = _sha256(path)
        if digest != WHEEL_SHA256:
            raise BenchError(f"{path} is not the furniture-bench 0.1 wheel (sha256 {digest[:12]}..., expected "
                             f"{WHEEL_SHA256[:12]}...)")
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.startswith(MEMBERS)]
            zf.extractall(staging, names)
        atomic_write_json(staging / "checksum.json", {"wheel": WHEEL, "sha256": digest, "files": len(names)})
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)  # complete or absent: a killed unpack leaves only the .partial folder
    log(f"furniture assets: {len(names)} files from {WHEEL} in {root}")
    return root
