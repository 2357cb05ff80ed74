"""Atomic file writes, and the removal of the temporary files a killed writer leaves behind.

Everything is written to a temporary file `.NAME.XXXXXXXX.tmp` in the same directory (8 random characters
of ``[a-z0-9_]``), fsynced and renamed into place, so a reader (or a resumed run) never sees a half-written
file.

Permissions
-----------
The temporary file is created with mode ``0o666`` filtered by the process umask (and any default ACL of
the directory), exactly as ``open(path, "w")`` would create the file: umask 0o022 gives 0644, umask
0o077 gives 0600. (``tempfile.mkstemp`` would make every result private, 0600, whatever the umask.)

Stale temporary files
---------------------
A writer killed with SIGKILL (or by a power cut) cannot remove its temporary file.
`remove_stale_temp_files(directory)` removes such leftovers; callers run it when they start using a
directory (the dataset and pre-training caches do; a run calls it on its run directory). A temporary file
is removed only when all of these hold:

1. its name has this module's pattern (``.<name>.<8 chars of [a-z0-9_]>.tmp``) and it is a regular file;
2. this process is not writing it (writes in progress in this process are tracked);
3. no process holds its writer's lock: every writer holds an exclusive record lock on its temporary
   file from creating it until it is renamed (an open-file-description lock, ``F_OFD_SETLK``, on Linux;
   a POSIX ``fcntl.lockf`` lock elsewhere); the kernel (and an NFS server) drops the lock when the writer
   exits in any way, SIGKILL included, so an unlocked temporary file has no writer;
4. it was last modified at least ``min_age_s`` (default `STALE_AFTER_S`, 60 s) ago. This covers the
   instant between creating and locking the file, the short gaps of the POSIX fallback (a library
   closing the file drops a POSIX lock until the writer takes it again for fsync and rename), and clock
   skew between an NFS client and server.

Where the lock cannot be tested (a filesystem without record locks, an unreadable file), a temporary file
is removed only when it is older than `UNLOCKABLE_STALE_AFTER_S` (one day). A concurrent writer in another
process therefore never loses its temporary file; a file kept because it is too young is removed by a
later start.

A block of `atomic_path` that writes with h5py must open the file with ``locking=False``: HDF5's own
whole-file lock would conflict with the writer lock on NFS (nothing else reads a temporary file).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import random
import re
import string
import time
from pathlib import Path

STALE_AFTER_S = 60.0
UNLOCKABLE_STALE_AFTER_S = 24 * 3600.0
_RANDOM_CHARS = string.ascii_lowercase + string.digits + "_"
TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_ACTIVE: set[str] = set()  # temporary files this process is writing now
_LOCK_BUSY = (errno.EACCES, errno.EAGAIN)


class _Flock(ctypes.Structure):  # struct flock of 64-bit Linux (what F_OFD_SETLK takes)
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short), ("l_start", ctypes.c_int64),
                ("l_len", ctypes.c_int64), ("l_pid", ctypes.c_int)]


def _lock(fd: int) -> str | None:
    """Take the exclusive writer lock on `fd`: an open-file-description lock where the kernel has them
    (kept until `fd` is closed, even when a library opens and closes the file by path), else a POSIX
    record lock (dropped when this process closes any descriptor of the file). Returns "ofd", "posix",
    or None on a filesystem without record locks."""
    if hasattr(fcntl, "F_OFD_SETLK") and ctypes.sizeof(_Flock) == 32:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, bytes(_Flock(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)))
            return "ofd"
        except OSError:
            pass
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "posix"
    except OSError:
        return None


def _create_temp(path: Path) -> tuple[str, int]:
    """Create `.NAME.XXXXXXXX.tmp` beside `path` (O_EXCL, mode 0o666 & ~umask), open read-write."""
    rng = random.SystemRandom()
    for _ in range(100):
        name = f".{path.name}.{''.join(rng.choice(_RANDOM_CHARS) for _ in range(8))}.tmp"
        tmp = os.path.join(path.parent, name)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(errno.EEXIST, f"no free temporary file name beside {path}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`.

    The temporary file exists (empty, locked, mode 0o666 & ~umask) when the block starts; the block writes
    it by path (truncating it is fine). On an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path)
    _ACTIVE.add(os.path.abspath(tmp))
    fd2 = None
    try:
        kind = _lock(fd)
        yield Path(tmp)
        fd2 = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        if kind != "ofd":  # a library that closed `tmp` dropped this process's POSIX lock: take it again
            _lock(fd2)
        os.fsync(fd2)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        for f in (fd2, fd):
            if f is not None:
                os.close(f)
        _ACTIVE.discard(os.path.abspath(tmp))
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def atomic_torch_save(path: Path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------------
# Stale temporary files


def is_temp_name(name: str) -> bool:
    """Whether `name` has the pattern of this module's temporary files."""
    return bool(TEMP_RE.match(name))


def _writer_alive(path: str) -> bool | None:
    """True: a process holds the writer lock; False: none does; None: cannot tell."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        try:  # a shared lock conflicts with the writer's exclusive one; needs only read access
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return True if e.errno in _LOCK_BUSY else None
        return False
    finally:
        os.close(fd)  # drops the probe lock


def remove_stale_temp_files(directory: Path | str, *, min_age_s: float = STALE_AFTER_S,
                            recursive: bool = False) -> list[Path]:
    """Remove the temporary files of killed writers in `directory` (and its subdirectories with
    `recursive`), by the rule in the module docstring; returns the removed paths. A missing directory or
    a file that cannot be removed is not an error."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    walker = os.walk(directory) if recursive else [(str(directory), [], os.listdir(directory))]
    now = time.time()
    for root, _dirs, files in walker:
        for name in files:
            if not is_temp_name(name):
                continue
            p = os.path.join(root, name)
            if os.path.abspath(p) in _ACTIVE:
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            age = now - st.st_mtime
            if age < min_age_s:
                continue
            alive = _writer_alive(p)
            if alive or (alive is None and age < max(min_age_s, UNLOCKABLE_STALE_AFTER_S)):
                continue
            try:
                os.unlink(p)
            except OSError:
                continue
            removed.append(Path(p))
    return removed
