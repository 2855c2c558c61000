"""The storage budget across the preprocess jobs that run at once.

Before it writes, a preprocess job reserves its planned bytes in
data/store/.reservations.json, under an exclusive lock (data/store/.reservations.lock), and
is refused when the stores already on disk, the other jobs' reservations and its own would
pass the budget, or when the file system cannot hold its store beside what the other jobs
have yet to write. The reservation ends with the job: released when it returns or fails,
and dropped by the next job once its process is gone (a job killed on this host). A job of
another host (a cluster node on a shared file system) is taken as running until its split
is preprocessed again."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from alfred_edge.joblog import JobError

RESERVATIONS, LOCK = ".reservations.json", ".reservations.lock"


class StorageError(JobError):
    pass


def size_text(nbytes: float) -> str:
    """Bytes as GB or MB (1e9 / 1e6) with three significant digits: '52.4 MB', '1.23 GB'."""
    return f"{nbytes / 1e9:.3g} GB" if abs(nbytes) >= 1e9 else f"{nbytes / 1e6:.3g} MB"


@contextmanager
def _locked(store_root: Path):
    with open(store_root / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(store_root: Path) -> dict:
    path = store_root / RESERVATIONS
    return json.loads(path.read_text()) if path.exists() else {}


def _write(store_root: Path, reservations: dict) -> None:
    temporary = store_root / f"{RESERVATIONS}.tmp"
    temporary.write_text(json.dumps(reservations, indent=1, sort_keys=True))
    temporary.replace(store_root / RESERVATIONS)


def _running(reservation: dict) -> bool:
    if reservation["host"] != socket.gethostname():
        return True
    try:
        os.kill(reservation["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _stores_on_disk(store_root: Path, exclude: str) -> int:
    """Bytes of the complete stores beside `exclude` (temporary folders are hidden)."""
    return sum(_folder_bytes(d) for d in store_root.iterdir()
               if d.is_dir() and d.name != exclude and not d.name.startswith("."))


def _written(store_root: Path, split: str) -> int:
    """What a running job has written so far (its hidden temporary folder)."""
    return sum(_folder_bytes(d) for d in store_root.glob(f".{split}.tmp-*"))


@contextmanager
def reservation(out_dir: Path, planned_bytes: int, budget_bytes: int):
    """Hold a reservation of planned_bytes for the store out_dir while the block writes it
    (raises StorageError, before anything is written, when it does not fit)."""
    store_root, split = out_dir.parent, out_dir.name
    store_root.mkdir(parents=True, exist_ok=True)
    with _locked(store_root):
        others = {name: r for name, r in _read(store_root).items() if name != split and _running(r)}
        on_disk = _stores_on_disk(store_root, exclude=split)
        reserved = sum(r["bytes"] for r in others.values())
        if on_disk + reserved + planned_bytes > budget_bytes:
            running = f" and the preprocess jobs running now reserve {size_text(reserved)}" if reserved else ""
            raise StorageError(
                f"{out_dir}: the store needs {size_text(planned_bytes)}, the other stores take "
                f"{size_text(on_disk)}{running}: over storage.budget_gb = {size_text(budget_bytes)}; lower "
                "data.subset (or use data.subset.mode: budget, or data.store_dtype: uint8). See reports/storage_plan.md")
        free = shutil.disk_usage(store_root).free
        pending = sum(max(0, r["bytes"] - _written(store_root, name)) for name, r in others.items())
        if planned_bytes + pending > free:
            running = f" of which the preprocess jobs running now have yet to write {size_text(pending)}" if pending else ""
            raise StorageError(f"{out_dir}: the store needs {size_text(planned_bytes)}, the file system holding "
                               f"{store_root.resolve()} has {size_text(free)} free{running}")
        _write(store_root, {**others, split: {"pid": os.getpid(), "host": socket.gethostname(),
                                              "bytes": int(planned_bytes)}})
    try:
        yield
    finally:
        with _locked(store_root):
            _write(store_root, {name: r for name, r in _read(store_root).items()
                                if not (name == split and r["pid"] == os.getpid())})
