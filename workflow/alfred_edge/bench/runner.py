"""Runs one job (a cell, the roofline, a capacity search) in a child process and turns
every outcome into a row: the child's own status, or what its exit says (SIGKILL →
oom_killed, our timeout → timeout, our RAM limit → oom). This process never imports torch,
so its own start costs nothing and its memory never counts in the child's peak.

The child's peak RSS comes from the kernel: VmHWM inside the child, and os.wait4's
ru_maxrss here when the child could not report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from alfred_edge import atomic
from alfred_edge.bench import environment, memory, schema
from alfred_edge.variants import EAGER_PROVIDER, stored_bytes

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # workflow/: holds alfred_edge
POLL_S = 0.01
TERM_GRACE_S = 5.0


@dataclass
class ChildExit:
    exit_code: int | None
    result: dict | None
    maxrss_mb: float | None
    wall_s: float
    cpu_s: float | None = None           # user + system CPU time of the child (wait4 rusage)
    ended_by: str | None = None          # "timeout" | "ram_limit" | None
    peak_seen_mb: float = 0.0
    progress: list[dict] = field(default_factory=list)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def run_child(kind: str, spec: dict, timeout_s: float, ram_limit_mb: float | None) -> ChildExit:
    """Start the child, watch its time and RSS, reap it with wait4 (its ru_maxrss). The child
    runs with spec["python"] where given (config bench.python: a board's Python beside its
    PyTorch, when Snakemake itself runs on another), else with this interpreter."""
    with tempfile.TemporaryDirectory(prefix="alfred-bench-") as tmp:
        spec = dict(spec, progress_path=str(Path(tmp) / "progress.jsonl"))
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        stderr = sys.stderr if _has_fileno(sys.stderr) else None
        start = time.perf_counter()
        python = spec.get("python") or sys.executable
        proc = subprocess.Popen([python, "-m", "alfred_edge.bench.child", kind, str(spec_path), str(result_path)],
                                env=child_env(spec["threads"]), stdout=stderr, stderr=stderr)
        status, rusage, ended_by, peak_seen = _watch(proc, timeout_s, ram_limit_mb)
        wall = time.perf_counter() - start
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        progress_path = Path(spec["progress_path"])
        progress = [json.loads(line) for line in progress_path.read_text().splitlines()] if progress_path.exists() else []
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return ChildExit(code, result, memory.maxrss_mb(rusage.ru_maxrss), wall, rusage.ru_utime + rusage.ru_stime,
                     ended_by, peak_seen, progress)


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _watch(proc: subprocess.Popen, timeout_s: float, ram_limit_mb: float | None):
    """Poll until the child exits; end it (SIGTERM, then SIGKILL) at the timeout or when its
    RSS passes the limit. The RSS is sampled every 10 ms, so a spike shorter than that can
    pass unseen; the child's own VmHWM still records it."""
    ps = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout_s
    ended_by, peak_seen, term_at = None, 0.0, None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status  # reaped here (wait4 gives ru_maxrss); Popen must not wait again
            return status, rusage, ended_by, peak_seen
        if ram_limit_mb is not None:
            try:
                rss = ps.memory_info().rss / memory.MB
            except psutil.Error:
                rss = 0.0
            peak_seen = max(peak_seen, rss)
            if rss > ram_limit_mb and ended_by is None:
                ended_by = "ram_limit"
        if ended_by is None and time.monotonic() > deadline:
            ended_by = "timeout"
        if ended_by and term_at is None:
            proc.send_signal(signal.SIGTERM)
            term_at = time.monotonic()
        elif term_at is not None and time.monotonic() - term_at > TERM_GRACE_S:
            proc.kill()
        time.sleep(POLL_S if ram_limit_mb is not None else 0.05)


def exit_columns(child: ChildExit, timeout_s: float, ram_limit_mb: float | None) -> dict:
    """Status and error from the child's exit, over whatever the child reported."""
    cols = dict(child.result or {})
    cols["exit_code"] = child.exit_code
    cols["cpu_time_s"] = child.cpu_s
    if child.ended_by == "timeout":
        cols.update(status="timeout", error=f"no result within the job's timeout of {timeout_s:g} s; the harness ended it")
    elif child.ended_by == "ram_limit":
        cols.update(status="oom", error=f"resident memory passed the harness's limit of {ram_limit_mb:.0f} MB "
                                        f"(seen {child.peak_seen_mb:.0f} MB); the harness ended it")
    elif child.exit_code == -signal.SIGKILL:
        cols.update(status="oom_killed", error="the process was killed by SIGKILL, most likely by the kernel's "
                                               "out-of-memory killer (on a Jetson CPU and GPU share the RAM)")
    elif child.result is None:
        cols.update(status="error", error=f"the measuring process exited with code {child.exit_code} without a result "
                                          "(see the job's log)")
    elif cols.get("status") == "ok" and ram_limit_mb is not None and (cols.get("peak_memory_mb") or 0.0) > ram_limit_mb:
        # what the harness could not watch live: GPU-side memory, or an RSS spike between its polls
        cols.update(status="oom", error=f"peak memory {cols['peak_memory_mb']:.0f} MB ({cols['memory_method']}) "
                                        f"passed the harness's limit of {ram_limit_mb:.0f} MB")
    if cols.get("peak_rss_mb") is None and child.maxrss_mb:
        cols["peak_rss_mb"] = child.maxrss_mb
    return cols


def base_columns(spec: dict) -> dict:
    digest, text = environment.settings_digest({k: v for k, v in spec.items() if k != "host"})
    return {
        "schema_version": schema.schema_version(),
        "run_id": uuid.uuid4().hex,
        "host": spec["host"],
        "device": spec["device"],
        "settings_digest": digest,
        "settings_json": text,
    }


def finish(table: str, row: dict, out_path: str | os.PathLike) -> dict:
    return finish_rows(table, [row], out_path)[0]


def finish_rows(table: str, rows: list[dict], out_path: str | os.PathLike) -> list[dict]:
    """Fill the environment columns the child could not (it may never have run), stamp the
    time and write the rows' Parquet file atomically."""
    profile = environment.host_profile(rows[0]["host"])
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        for key, value in profile.items():
            if row.get(key) is None:
                row[key] = value
        if row.get("device_name") is None:
            row["device_name"] = environment.device_name(row["device"])
        row["ts_utc"] = stamp
    atomic.write_parquet(schema.to_arrow(table, rows), out_path, **schema.PARQUET_OPTIONS)
    return rows


def skipped_row(table: str, spec: dict, reason: str, out_path, extra: dict | None = None) -> dict:
    row = {**base_columns(spec), **(extra or {}), "status": "skipped", "error": reason}
    return finish(table, row, out_path)


def cuda_absent_reason(device: str) -> str | None:
    """A quick check that spares a torch import (environment.has_nvidia_gpu)."""
    if device != "cuda" or environment.has_nvidia_gpu():
        return None
    return "device cuda requested but this host has no NVIDIA GPU device (/dev/nvidia*, /dev/nvhost-*)"


# --- jobs --------------------------------------------------------------------------------

CELL_KEYS = ("model", "architecture", "cost_only", "workload", "variant", "features", "backend", "provider", "batch_size",
             "model_path")


def run_cell(spec: dict, out_path: str | os.PathLike, skip_reason: str | None = None,
             reference_actions: list[int] | None = None) -> dict:
    """Measure one cell and write its row. skip_reason (e.g. a smaller batch ran out of
    memory) writes a skipped row without measuring. reference_actions: with the policy
    workload, the actions the fp32 cell chose on the same episodes (its chosen_actions)."""
    keys = {**{k: spec.get(k) for k in CELL_KEYS}, "backend": spec.get("backend", "eager"),
            "provider": spec.get("provider", EAGER_PROVIDER)}
    if spec.get("model_path") and Path(spec["model_path"]).exists():
        keys["model_file_mb"] = stored_bytes(spec["model_path"]) / 1e6
    reason = skip_reason or cuda_absent_reason(spec["device"])
    if reason:
        return skipped_row("cells", spec, reason, out_path, keys)
    child = run_child("cell", spec, spec["timeout_s"], spec.get("ram_limit_mb"))
    row = {**base_columns(spec), **keys, **exit_columns(child, spec["timeout_s"], spec.get("ram_limit_mb")),
           "wall_time_s": child.wall_s, "ram_limit_mb": spec.get("ram_limit_mb")}
    if reference_actions and row.get("chosen_actions"):
        row["action_agreement_fp32"] = action_agreement(row["chosen_actions"], reference_actions)
    return finish("cells", row, out_path)


def action_agreement(actions: list[int], reference: list[int]) -> float | None:
    """The share of steps where two cells chose the same action (null when they decoded
    different episodes or steps, so their lists differ in length)."""
    if len(actions) != len(reference):
        return None
    return sum(a == b for a, b in zip(actions, reference)) / len(actions)


def run_roofline(spec: dict, out_path: str | os.PathLike) -> dict:
    reason = cuda_absent_reason(spec["device"])
    if reason:
        return skipped_row("roofline", spec, reason, out_path)
    child = run_child("roofline", spec, spec["timeout_s"], None)
    row = {**base_columns(spec), **exit_columns(child, spec["timeout_s"], None), "wall_time_s": child.wall_s}
    return finish("roofline", row, out_path)


OOM_STATUSES = ("oom", "oom_killed")


def smaller_batch_oom_reason(previous_cell_files: list[str]) -> str | None:
    """The skip reason when a smaller batch of the same (model, variant, device, features)
    ran out of memory (or was skipped for that): larger ones would too, and near-OOM runs
    can leave a board unstable."""
    import pyarrow.parquet as pq

    for path in previous_cell_files:
        for row in pq.read_table(path, columns=["status", "batch_size", "error"]).to_pylist():
            if row["status"] in OOM_STATUSES:
                return f"batch {row['batch_size']} already ran out of memory ({row['status']}); larger batches are not run"
            if row["status"] == "skipped" and (row["error"] or "").startswith("batch ") and "out of memory" in row["error"]:
                return row["error"]
    return None
