"""The host profile recorded in every row: machine, CPU, RAM, torch build, Jetson board and
power mode, git commit. Cheap, and torch is read only when the caller has imported it (the
parent of a cell never imports torch; the measuring child passes it in)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from alfred_edge.bench import power

REPO_ROOT = Path(__file__).resolve().parents[3]


def host_name(configured: str | None = None) -> str:
    """config bench.host, or this machine's name ("auto" or empty = the machine's)."""
    name = configured if configured not in (None, "", "auto") else socket.gethostname().split(".")[0]
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "host"


NVIDIA_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu")  # desktop, Jetson


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA GPU device node exists: a quick check that needs no torch import
    (where one exists, a cell still checks torch.cuda.is_available())."""
    return any(os.path.exists(node) for node in NVIDIA_DEVICE_NODES)


def bench_devices(configured) -> list[str]:
    """config bench.devices: a list as given, or "auto": cpu, plus cuda where this host has
    an NVIDIA GPU."""
    if configured == "auto":
        return ["cpu", "cuda"] if has_nvidia_gpu() else ["cpu"]
    return list(configured)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip().strip("\x00") or None
    except OSError:
        return None


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def settings_digest(settings: dict) -> tuple[str, str]:
    """(digest, canonical JSON) of the settings a job used."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def jetson_info() -> dict:
    """Board model, L4T release, nvpmodel mode and jetson_clocks: from jtop when its service
    answers, else from /proc/device-tree/model and /etc/nv_tegra_release."""
    if not power.is_jetson():
        return {}
    info = {"jetson_model": _read("/proc/device-tree/model"), "jetson_l4t": _read("/etc/nv_tegra_release")}
    if info["jetson_l4t"]:
        info["jetson_l4t"] = info["jetson_l4t"].splitlines()[0].lstrip("# ")
    try:
        from jtop import jtop

        with jtop() as jetson:
            info["jetson_model"] = jetson.board.get("hardware", {}).get("Model") or info["jetson_model"]
            info["jetson_power_mode"] = str(jetson.nvpmodel) if jetson.nvpmodel is not None else None
            info["jetson_clocks"] = bool(jetson.jetson_clocks.status == "running") if jetson.jetson_clocks else None
    except Exception:  # jtop absent, service down, or a field this jtop version lacks
        pass
    return info


def torch_version_without_import() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def host_profile(host: str, torch_module=None) -> dict:
    """Shared environment columns (results.schema.yaml). With torch_module, also its build,
    threads and quantized engine."""
    profile = {
        "host": host,
        "platform": platform.machine(),
        "os": platform.platform(),
        "python_version": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "ram_total_mb": psutil.virtual_memory().total / 1e6,
        "torch_version": torch_version_without_import(),
        "git_commit": git_commit(),
        **jetson_info(),
    }
    if torch_module is not None:
        torch = torch_module
        profile.update({
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "quantized_engine": torch.backends.quantized.engine,
        })
    return profile


def device_name(device: str, torch_module=None) -> str | None:
    if device == "cpu":
        return cpu_model()
    if torch_module is not None and torch_module.cuda.is_available():
        return torch_module.cuda.get_device_name(0)
    return None


