"""Power samplers, chosen by what the host has: jetson-stats (jtop) on a Jetson, then
NVIDIA's NVML energy counter (cuda cells), then Intel/AMD RAPL, else none with the reason.
Never an estimate: where nothing can be read, the energy columns stay empty.

Each sampler reads either power (W, integrated with the trapezoid rule on our own
monotonic stamps) or a cumulative energy counter (J, differences summed with wrap-around
correction) in a polling thread while a window is open. PowerTracker measures a cell's
loop with one, after the idle power."""
from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alfred_edge.bench.harness import LoopResult, Tracker

LOW_SAMPLES = 30
JETSON_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass
class Window:
    energy_j: float
    duration_s: float
    samples: int

    @property
    def mean_power_w(self) -> float | None:
        return self.energy_j / self.duration_s if self.duration_s > 0 else None


def integrate_power(times_s, watts) -> float:
    """Trapezoid rule over (time, power) readings → joules."""
    return sum((t1 - t0) * (w0 + w1) / 2 for t0, t1, w0, w1 in zip(times_s, times_s[1:], watts, watts[1:]))


def counter_delta(previous: float, current: float, wrap_at: float | None) -> float:
    """Increase of a cumulative counter between two reads; a decrease is one wrap-around at
    `wrap_at` (RAPL's max_energy_range_uj). Polling faster than a wrap period keeps it to one."""
    if current >= previous:
        return current - previous
    if wrap_at is None:
        raise ValueError(f"energy counter went back ({previous} -> {current}) and has no wrap range")
    return wrap_at - previous + current


class Sampler:
    """Base: subclasses define method, scope, kind ("power" or "energy") and read()."""

    method = "none"
    scope = None
    kind = "power"
    wrap_at = None   # for energy counters, in the unit read() returns

    def __init__(self, interval_s: float):
        self.interval_s = interval_s

    def read(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def start(self) -> None:
        """Open a window: read() every interval_s in a thread until stop()."""
        self._readings: list[tuple[float, float]] = []
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self._readings.append((time.monotonic(), self.read()))
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> Window | None:
        """Close the window opened by start(): its readings, with one more at its end."""
        self._stop.set()
        self._thread.join()
        self._readings.append((time.monotonic(), self.read()))
        return self.window(self._readings)

    def measure(self, body) -> tuple[object, Window | None]:
        """Run body() inside a window; return (body's result, the window)."""
        self.start()
        try:
            result = body()
        finally:
            window = self.stop()
        return result, window

    def window(self, readings: list[tuple[float, float]], distinct: int | None = None) -> Window:
        """The window of (time, value) readings; `distinct`: how many of them were fresh
        (default: all)."""
        times = [t for t, _ in readings]
        values = [v for _, v in readings]
        if self.kind == "power":
            energy = integrate_power(times, values)
        else:
            energy = sum(counter_delta(a, b, self.wrap_at) for a, b in zip(values, values[1:]))
        return Window(energy_j=energy, duration_s=times[-1] - times[0],
                      samples=len(readings) if distinct is None else distinct)


class NoSampler(Sampler):
    """Nothing can be read here: its windows are None, and it keeps the reason."""

    def __init__(self, reason: str):
        super().__init__(interval_s=0.0)
        self.reason = reason

    def start(self) -> None:
        pass

    def stop(self) -> None:
        return None


# --- jtop (Jetson) -----------------------------------------------------------------------


def jtop_power(power: dict) -> tuple[float, str]:
    """(watts, scope) from jtop's `power` dict: `tot` in mW is the VDD_IN / POM_5V_IN rail
    where the board has one (it then carries volt/curr), else the sum of the rails
    (AGX Orin). Never jtop's `avg`: an EMA that resets when clients disconnect."""
    total = power["tot"]
    name = total.get("name", "")
    scope = "jetson_vdd_in" if name in JETSON_INPUT_RAILS or "curr" in total else "jetson_rails_sum"
    return total["power"] / 1000.0, scope


class JtopSampler(Sampler):
    """jtop's readings as its service publishes them. The service samples at the interval
    of its first client (another jtop, its GUI, may hold it), so the interval asked for may
    not be the one served: interval_s is the service's (jetson.interval), and each update
    is recorded as it arrives (jtop calls attached observers on every one), so a reading is
    counted once however long it is held."""

    method = "jtop"

    def __init__(self, interval_s: float):
        super().__init__(interval_s)
        from jtop import jtop  # AGPL-3.0: imported only when present, never required

        self._jetson = jtop(interval=interval_s)
        self._jetson.start()
        self.interval_s = float(self._jetson.interval)
        _, self.scope = jtop_power(self._jetson.power)

    def read(self) -> float:
        return jtop_power(self._jetson.power)[0]

    def start(self) -> None:
        """A window of the reading held at its start, every update while it is open, and the
        reading held at its end (the last update again, or the start's: not a fresh one)."""
        self._updates: list[tuple[float, float]] = []
        self._opening = (time.monotonic(), self.read())
        self._jetson.attach(self._on_update)

    def _on_update(self, jetson) -> None:
        self._updates.append((time.monotonic(), jtop_power(jetson.power)[0]))

    def stop(self) -> Window:
        self._jetson.detach(self._on_update)
        readings = [self._opening, *self._updates, (time.monotonic(), self.read())]
        return self.window(readings, distinct=1 + len(self._updates))

    def close(self) -> None:
        self._jetson.close()


# --- NVML (discrete NVIDIA GPU) ----------------------------------------------------------


class NvmlSampler(Sampler):
    """The energy counter of the GPU torch runs the cell on (its current CUDA device)."""

    method = "nvml"
    scope = "gpu_board"
    kind = "energy"

    def __init__(self, interval_s: float):
        super().__init__(interval_s)
        import pynvml  # nvidia-ml-py
        import torch  # this sampler runs in the measuring child, which has imported it

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = nvml_handle(pynvml, torch.cuda.get_device_properties(torch.cuda.current_device()))
        self.read()  # raises NVMLError_NotSupported before Volta

    def read(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0  # mJ → J


def nvml_handle(nvml, properties):
    """NVML's handle of the GPU whose torch.cuda properties are given: by its UUID, else by
    its PCI bus id. NVML numbers every GPU of the host its own way, ignoring
    CUDA_VISIBLE_DEVICES and CUDA's order, so an index can name another GPU. (Bytes: older
    nvidia-ml-py releases take no str there.)"""
    uuid = getattr(properties, "uuid", None)
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}".encode())
    if getattr(properties, "pci_bus_id", None) is not None:
        return nvml.nvmlDeviceGetHandleByPciBusId(
            f"{properties.pci_domain_id:08x}:{properties.pci_bus_id:02x}:{properties.pci_device_id:02x}.0".encode())
    raise LookupError(f"torch gives neither the UUID nor the PCI bus id of {properties.name}, "
                      "so its NVML device cannot be told from the others")


# --- RAPL (Intel/AMD CPU package) --------------------------------------------------------


class RaplSampler(Sampler):
    """Sum of the package domains' energy_uj (subzones such as core/dram are inside the
    package figure, so they are not added). Needs read access (root since CVE-2020-8694)."""

    method = "rapl"
    scope = "cpu_package"
    kind = "energy"

    def __init__(self, interval_s: float, root: str = "/sys/class/powercap"):
        super().__init__(interval_s)
        domains = sorted(p for p in glob.glob(os.path.join(root, "intel-rapl:*"))
                         if os.path.basename(p).count(":") == 1)
        if not domains:
            raise OSError(f"no RAPL package domain under {root} (not exposed on this host)")
        self._files = [Path(d) / "energy_uj" for d in domains]
        ranges = [int((Path(d) / "max_energy_range_uj").read_text()) for d in domains]
        self._ranges_uj = ranges
        self._last_uj = [self._read_uj(f) for f in self._files]  # PermissionError when not root
        self._total_j = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def _read_uj(path: Path) -> int:
        return int(path.read_text())

    def read(self) -> float:
        """Cumulative joules since the sampler started, each domain unwrapped on every read."""
        with self._lock:
            for i, path in enumerate(self._files):
                now = self._read_uj(path)
                self._total_j += counter_delta(self._last_uj[i], now, self._ranges_uj[i]) / 1e6
                self._last_uj[i] = now
            return self._total_j


# --- choice ------------------------------------------------------------------------------


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release") or os.path.exists("/usr/lib/aarch64-linux-gnu/tegra")


def choose_sampler(device: str, interval_s: float) -> Sampler:
    """The first sampler that works here; NoSampler with every reason otherwise."""
    reasons = []
    candidates = [("jtop", JtopSampler)] if is_jetson() else []
    reasons += [] if candidates else ["jtop: not a Jetson"]
    if device == "cuda":
        candidates.append(("nvml", NvmlSampler))
    else:
        reasons.append("nvml: cpu cell (NVML measures the GPU board only)")
    candidates.append(("rapl", RaplSampler))
    for name, cls in candidates:
        try:
            return cls(interval_s)
        except Exception as exc:  # ImportError, JtopException, NVMLError, OSError, PermissionError
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
    return NoSampler("; ".join(reasons))


class PowerTracker(Tracker):
    """A cell's power and energy over its timed loop, with the sampler that works here
    (choose_sampler): `settings` {"interval_s", "idle_s"}; when a sampler works and idle_s
    > 0, the idle power is measured (idle_s of sleep) just before the loop's window opens."""

    def __init__(self, device: str, settings: dict, batch_size: int):
        self.sampler = choose_sampler(device, settings["interval_s"])
        self.idle_s, self.batch_size = settings["idle_s"], batch_size
        self.idle = None

    def start(self) -> None:
        if not isinstance(self.sampler, NoSampler) and self.idle_s > 0:
            _, self.idle = self.sampler.measure(lambda: time.sleep(self.idle_s))
        self.sampler.start()

    def stop(self, loop: LoopResult | None) -> None:
        self.window = self.sampler.stop()
        self.sampler.close()
        self.iterations = 0 if loop is None else len(loop.latencies_s)

    def columns(self) -> dict:
        return power_columns(self.sampler, self.idle, self.window, self.iterations, self.batch_size)


def power_columns(sampler: Sampler, idle: Window | None, loop: Window | None,
                  iterations: int, batch_size: int) -> dict:
    """The power columns of a cell row."""
    if isinstance(sampler, NoSampler) or loop is None:
        return {"power_method": "none", "power_unavailable_reason": getattr(sampler, "reason", None)}
    samples_total = iterations * batch_size
    idle_w = idle.mean_power_w if idle is not None else None
    above_idle = None
    if idle_w is not None:
        above_idle = (loop.energy_j - idle_w * loop.duration_s) / samples_total
    return {
        "power_method": sampler.method,
        "power_scope": sampler.scope,
        "power_sample_interval_s": sampler.interval_s,
        "power_samples": loop.samples,
        "idle_power_w": idle_w,
        "mean_power_w": loop.mean_power_w,
        "energy_j": loop.energy_j,
        "energy_per_sample_j": loop.energy_j / samples_total,
        "energy_per_sample_above_idle_j": above_idle,
        "flag_power_low_samples": loop.samples < LOW_SAMPLES,
    }
