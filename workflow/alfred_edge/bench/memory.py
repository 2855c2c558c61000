"""Memory: the process's resident memory and its kernel high-water mark, its GPU-side
memory (nvmap on a Jetson, CUDA's reserved memory elsewhere), a sampled peak where the
kernel's cannot be reset, the leak fit of a trace, and the cell's tracker of them all
(MemoryTracker).

MB here means 1e6 bytes, as everywhere in the results."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np
import psutil

from alfred_edge.bench.harness import LoopResult, Tracker

MB = 1e6
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
LEAK_MIN_POINTS = 4
LEAK_DROP_FRACTION = 0.2      # allocator and cache growth settle during the first iterations
LEAK_RHO = 0.8
LEAK_MIN_GROWTH_MB = 16.0
LEAK_GROWTH_FRACTION = 0.05


def rss_mb() -> float:
    """Resident memory of this process now: one pread of /proc/self/statm, kept open (opening
    it each time costs several times more, and a trace reads it after every iteration,
    inside the timed latencies)."""
    try:
        return int(os.pread(_statm_fd(), 128, 0).split()[1]) * _PAGE / MB
    except OSError:
        return psutil.Process().memory_info().rss / MB


_STATM: tuple[int, int] | None = None  # (pid, descriptor)


def _statm_fd() -> int:
    """/proc/self/statm opened once per process: a forked child opens its own (the parent's
    descriptor names the parent's memory)."""
    global _STATM
    if _STATM is None or _STATM[0] != os.getpid():
        _STATM = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY))
    return _STATM[1]


def hwm_mb() -> float | None:
    """The kernel's resident high-water mark (VmHWM) of this process; None off Linux."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: '5' into /proc/self/clear_refs).
    False where the kernel refuses, and the caller falls back to sampling."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        return False
    return True


# A Jetson's per-process GPU memory, as jetson-stats reads it: one line per nvmap client,
# "CLIENT PROCESS PID SIZEK", each followed by indented lines of its allocations and, at the
# end, a "total" line. Readable by root only (debugfs).
NVMAP_MAPS = "/sys/kernel/debug/nvmap/iovmm/maps"
_NVMAP_CLIENT = re.compile(r"^(?P<client>\S+)\s+(?P<process>.*?)\s+(?P<pid>\d+)\s+(?P<size_kb>\d+)K\s*$")


def nvmap_mb(pid: int, maps_path: str = NVMAP_MAPS) -> float | None:
    """nvmap memory of process `pid`: the sum of its clients' sizes in the iovmm maps (on a
    Jetson, CUDA's allocations are nvmap memory, which VmRSS does not count). None where the
    file cannot be read: not a Jetson, or not root."""
    try:
        text = Path(maps_path).read_text()
    except OSError:
        return None
    kib = sum(int(match["size_kb"]) for match in map(_NVMAP_CLIENT.match, text.splitlines())
              if match and int(match["pid"]) == pid)
    return kib * 1024 / MB


class DeviceMemory:
    """The GPU-side memory of this process, which a RAM budget counts beside its RSS (on a
    Jetson CPU and GPU share the RAM). `method` names how it is read, as the rows record it:
        rss                 a cpu job: none
        rss+nvmap           its nvmap memory (a Jetson, as root): CUDA context, torch's
                            cache, cuDNN, everything the driver mapped for it
        rss+cuda_reserved   what torch's CUDA allocator holds (torch.cuda.memory_reserved):
                            a desktop GPU, or a Jetson whose nvmap maps need root
    peak_mb() is the peak since reset_peak(); nvmap has no peak, so it is read at that
    moment: torch's caching allocator keeps what it reserved, so the reading does not fall
    below the region's peak before then."""

    def __init__(self, torch_module, device: str, maps_path: str | None = None):
        self._torch = torch_module
        self._maps_path = maps_path or NVMAP_MAPS
        if device != "cuda":
            self.method = "rss"
        elif nvmap_mb(os.getpid(), self._maps_path) is not None:
            self.method = "rss+nvmap"
        else:
            self.method = "rss+cuda_reserved"

    def reset_peak(self) -> None:
        if self.method == "rss+cuda_reserved":
            self._torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if self.method == "rss+nvmap":
            return nvmap_mb(os.getpid(), self._maps_path)
        if self.method == "rss+cuda_reserved":
            return self._torch.cuda.max_memory_reserved() / MB
        return None


def maxrss_mb(ru_maxrss: int) -> float:
    """ru_maxrss in MB: KiB on Linux, bytes on macOS."""
    return ru_maxrss * (1 if psutil.MACOS else 1024) / MB


class PeakSampler:
    """Polls the RSS of a process in a thread and keeps the maximum: the fallback where the
    kernel's high-water mark cannot be reset. It can miss spikes shorter than `interval_s`."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.005):
        self._process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / MB)
            except psutil.Error:
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class InferencePeak:
    """Peak RSS of a code region (between start() and stop(), or a with block): exact
    through clear_refs + VmHWM where Linux allows it, else sampled. `method` says which."""

    def start(self) -> None:
        self._sampler = None
        self.method = "clear_refs" if reset_hwm() and hwm_mb() is not None else "sampled"
        if self.method == "sampled":
            self._sampler = PeakSampler().__enter__()
        self.peak_mb = None

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(None, None, None)
            self.peak_mb = max(self._sampler.peak_mb, rss_mb())
        else:
            self.peak_mb = hwm_mb()

    def __enter__(self) -> "InferencePeak":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class MemoryTracker(Tracker):
    """A cell's memory over its timed loop: the RSS peak of the loop and of the whole process
    (the load, cold batch and warm-up before it included), the RSS trace read after every
    iteration (and CUDA's allocated memory on cuda) with its leak fit, and the GPU-side
    memory (DeviceMemory) that a RAM budget counts beside the RSS."""

    def __init__(self, torch_module, device: str):
        self._torch = torch_module
        self._cuda = device == "cuda"
        self.device_memory = DeviceMemory(torch_module, device)
        self.rss_trace: list[float] = []
        self.cuda_trace: list[float] = []
        self.peak = InferencePeak()

    def start(self) -> None:
        self._hwm_before = hwm_mb()
        self._device_before = self.device_memory.peak_mb()  # the load, cold batch and warm-up
        if self._cuda:
            self._torch.cuda.reset_peak_memory_stats()
        self.peak.start()

    def sample(self) -> None:
        self.rss_trace.append(rss_mb())
        if self._cuda:
            self.cuda_trace.append(self._torch.cuda.memory_allocated() / MB)

    def stop(self, loop: LoopResult | None) -> None:
        self.peak.stop()
        self._columns = memory_columns(self.peak, self._hwm_before, self.rss_trace, self.cuda_trace,
                                       self._torch if self._cuda else None)
        self._columns.update(total_memory_columns(self._columns["peak_rss_mb"], self.device_memory, self._device_before))

    def columns(self) -> dict:
        return self._columns


def memory_columns(peak: InferencePeak, hwm_before, rss_trace, cuda_trace, torch_cuda) -> dict:
    """peak_rss_mb: the whole-life high-water mark (VmHWM before the reset, max the window's)."""
    whole = hwm_mb() if peak.method == "sampled" else max(hwm_before or 0.0, peak.peak_mb or 0.0)
    rss_leak = leak_fit(rss_trace)
    cols = {
        "peak_rss_mb": whole or None,
        "peak_rss_inference_mb": peak.peak_mb,
        "peak_rss_inference_method": peak.method,
        "rss_trace_mb": rss_trace,
        "cuda_trace_mb": cuda_trace,
        "leak_rss_slope_mb_per_iter": rss_leak["slope_mb_per_iter"],
        "leak_rho": rss_leak["rho"],
        "leak_flag": rss_leak["flag"],
    }
    if torch_cuda is not None:
        cuda_leak = leak_fit(cuda_trace, strict=True)
        cols.update({
            "cuda_peak_allocated_mb": torch_cuda.cuda.max_memory_allocated() / MB,
            "cuda_peak_reserved_mb": torch_cuda.cuda.max_memory_reserved() / MB,
            "leak_cuda_slope_mb_per_iter": cuda_leak["slope_mb_per_iter"],
        })
        if cuda_leak["flag"] is not None and rss_leak["flag"] is not None:
            cols["leak_flag"] = rss_leak["flag"] or cuda_leak["flag"]
    return cols


def total_memory_columns(peak_rss_mb: float | None, device_memory: DeviceMemory, device_before_mb: float | None) -> dict:
    """The whole-life peak of the process's GPU-side memory (before and during the timed
    loop) and peak_memory_mb, the RSS and GPU peaks added: what a board's RAM must hold.
    The two peaks may fall at different moments, so their sum bounds the need from above."""
    device_peaks = [mb for mb in (device_before_mb, device_memory.peak_mb()) if mb is not None]
    device_peak = max(device_peaks) if device_peaks else None
    total = None if peak_rss_mb is None else peak_rss_mb + (device_peak or 0.0)
    return {"peak_device_memory_mb": device_peak, "peak_memory_mb": total, "memory_method": device_memory.method}


def theil_sen_slope(y) -> float:
    """Median of the pairwise slopes of y against its index: robust to a few outliers."""
    y = np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(y), k=1)
    return float(np.median((y[j] - y[i]) / (j - i)))


def spearman_rho(y) -> float:
    """Spearman rank correlation of y with its index (ties averaged); 0 for a constant y."""
    y = np.asarray(y, dtype=float)
    ranks = _average_ranks(y)
    x = np.arange(len(y), dtype=float)
    if np.ptp(ranks) == 0:
        return 0.0
    return float(np.corrcoef(x, ranks)[0, 1])


def _average_ranks(y: np.ndarray) -> np.ndarray:
    order = np.argsort(y, kind="stable")
    ranks = np.empty(len(y))
    ranks[order] = np.arange(len(y), dtype=float)
    for value in np.unique(y):
        tied = y == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def leak_fit(trace_mb, strict: bool = False) -> dict:
    """Slope (MB/iteration), Spearman rho and leak flag of a memory trace after dropping its
    first 20 %. RSS rule: growth over the trace > max(5 % of RSS, 16 MB) with rho > 0.8.
    strict (CUDA allocated memory): any positive slope with rho > 0.8.
    Values are None with fewer than LEAK_MIN_POINTS points left."""
    trace = np.asarray(trace_mb, dtype=float)
    kept = trace[int(len(trace) * LEAK_DROP_FRACTION):]
    if len(kept) < LEAK_MIN_POINTS:
        return {"slope_mb_per_iter": None, "rho": None, "flag": None}
    slope, rho = theil_sen_slope(kept), spearman_rho(kept)
    if strict:
        flag = slope > 0 and rho > LEAK_RHO
    else:
        growth = slope * len(trace)
        flag = growth > max(LEAK_GROWTH_FRACTION * float(np.median(kept)), LEAK_MIN_GROWTH_MB) and rho > LEAK_RHO
    return {"slope_mb_per_iter": slope, "rho": rho, "flag": bool(flag)}
