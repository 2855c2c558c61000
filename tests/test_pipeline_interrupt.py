"""Interruption: a preprocess, a train and a bench job killed (SIGKILL) part-way. Never a
partial file taken as complete; the rerun completes, and where the stage is deterministic
its outputs equal the uninterrupted run's (the session's finished run).

Each test works in its own copy of the finished run. "Part-way" is made deterministic
where timing cannot be: the job is made to block on a named pipe put in place of one of
the files it reads in the middle of its work, then killed."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tree_digest
from test_pipeline_reruns import HOST, PROFILE, finished_run, run_env, snakemake  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def copy_run(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest, symlinks=True)  # copy2: mtimes kept, so nothing looks updated
    return dest


def descendants(pid: int) -> list[int]:
    """Every process below pid (Snakemake's job processes and theirs)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snakemake", *PROFILE, "--cores", "2", *args], cwd=workdir,
                            env=run_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def job_process(proc: subprocess.Popen, marker: str) -> int | None:
    return next((pid for pid in descendants(proc.pid) if marker in cmdline(pid)), None)


def kill_tree(pid: int) -> None:
    """SIGKILL pid and every process under it."""
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def kill_all(proc: subprocess.Popen) -> None:
    """Snakemake and every job process under it killed, as a crash or power loss would."""
    kill_tree(proc.pid)
    proc.wait(timeout=30)


def blocking_pipe(path: Path) -> tuple[bytes, os.stat_result]:
    """Replace path by a named pipe (a reader's open() blocks); returns what to restore."""
    data, stat = path.read_bytes(), path.stat()
    path.unlink()
    os.mkfifo(path)
    return data, stat


def restore(path: Path, saved: tuple[bytes, os.stat_result]) -> None:
    data, stat = saved
    path.unlink()
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def rerun(workdir: Path, *targets: str) -> str:
    """After a crash: unlock, then run; with --rerun-incomplete only where Snakemake asks."""
    snakemake(workdir, "--unlock", "--cores", "2", *targets)
    done = subprocess.run([sys.executable, "-m", "snakemake", *PROFILE, "--cores", "2", *targets], cwd=workdir,
                          env=run_env(workdir), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        assert "--rerun-incomplete" in output, output[-4000:]
        output += snakemake(workdir, "--cores", "2", "--rerun-incomplete", *targets)
    return output


def test_killed_preprocess_leaves_no_store_and_reruns_to_the_same_bytes(finished_run, tmp_path):
    work = copy_run(finished_run, tmp_path / "run")
    store = work / "data/store/valid_seen"
    shutil.rmtree(store)
    subset = json.loads((work / "data/subset/valid_seen.json").read_text())["trajectories"]
    last = work / "data/raw/synthetic/json_feat/valid_seen" / subset[-1]["task"] / "feat_conv.pt"
    saved = blocking_pipe(last)
    proc = start(work, "data/store/valid_seen")
    try:
        # the store's temporary folder exists and the job waits on the last trajectory's features
        temporary = wait_for(lambda: list(store.parent.glob(".valid_seen.tmp-*")), "the temporary store", proc)
        wait_for(lambda: job_process(proc, "preprocess.py"), "the preprocess job", proc)
        time.sleep(0.5)
    finally:
        kill_all(proc)
        restore(last, saved)
    assert not store.exists()                            # nothing under the target's name
    assert (temporary[0] / "frames.npy").is_file()       # it was part-way: frames were being written
    rerun(work, "data/store/valid_seen")
    assert tree_digest(store) == tree_digest(finished_run / "data/store/valid_seen")
    assert not list(store.parent.glob(".valid_seen.tmp-*"))  # the rerun removed the leftover


def test_killed_training_is_not_taken_as_complete_and_reruns_to_the_same_model(finished_run, tmp_path):
    work = copy_run(finished_run, tmp_path / "run")
    outputs = [work / "models/lstm/fp32.pt", work / "models/lstm/train_metrics.parquet"]
    for path in outputs:
        path.unlink()
    # valid_unseen is evaluated after the epoch's training steps: its frames block the job there
    frames = work / "data/store/valid_unseen/frames.npy"
    store_mtime = frames.parent.stat().st_mtime_ns
    saved = blocking_pipe(frames)
    proc = start(work, "models/lstm/train_metrics.parquet")
    try:
        wait_for(lambda: "epoch 1/1" in _text(work / "logs/train/lstm.log"), "a training step", proc)
        pid = wait_for(lambda: job_process(proc, "train.py"), "the train job", proc)
        time.sleep(0.5)
        kill_tree(pid)  # the job only: Snakemake sees it fail
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            kill_all(proc)
        restore(frames, saved)
        os.utime(frames.parent, ns=(store_mtime, store_mtime))
    assert proc.returncode != 0 and "Error in rule train" in output
    assert not any(path.exists() for path in outputs)
    assert "Nothing to be done" not in snakemake(work, "-n", "models/lstm/train_metrics.parquet")
    snakemake(work, "--cores", "2", "models/lstm/train_metrics.parquet")
    rerun_metrics = pd.read_parquet(outputs[1]).drop(columns=["train_seconds", "eval_seconds"])
    first_metrics = pd.read_parquet(finished_run / "models/lstm/train_metrics.parquet")
    pd.testing.assert_frame_equal(rerun_metrics, first_metrics.drop(columns=["train_seconds", "eval_seconds"]))
    rerun_weights = torch.load(outputs[0], weights_only=False)["state_dict"]
    first_weights = torch.load(finished_run / "models/lstm/fp32.pt", weights_only=False)["state_dict"]
    assert rerun_weights.keys() == first_weights.keys()
    assert all(torch.equal(rerun_weights[k], first_weights[k]) for k in first_weights)


def test_killed_benchmark_leaves_no_cell_and_the_rerun_completes(finished_run, tmp_path):
    work = copy_run(finished_run, tmp_path / "run")
    cell = work / f"reports/bench/{HOST}/cells/transformer/fp32/cpu/mmap/eager.torch/b1.parquet"
    cell.unlink()
    proc = start(work, str(cell.relative_to(work)))
    try:
        # the measuring child runs: the cell is part-way through its measurement
        wait_for(lambda: job_process(proc, "alfred_edge.bench.child"), "the benchmark child", proc)
    finally:
        kill_all(proc)
    assert not cell.exists()
    assert not list(cell.parent.glob(".b1.parquet.tmp-*"))  # the atomic write had not begun
    rerun(work, str(cell.relative_to(work)))
    row = pd.read_parquet(cell).iloc[0]
    first = pd.read_parquet(finished_run / cell.relative_to(work)).iloc[0]
    assert row["status"] == first["status"] == "ok"
    for column in ("model", "variant", "batch_size", "device", "features"):
        assert row[column] == first[column]


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
