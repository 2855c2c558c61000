"""Power samplers on recorded readings: jtop's power dict, a jtop service that keeps another
client's interval, NVML on a host with two GPUs, RAPL counters that wrap, and the reasons
recorded where nothing can be read."""
import functools
import sys
import time
import types

import pytest
import torch

from alfred_edge.bench import power

# jtop 4.x on an Orin NX (VDD_IN rail present) and on an AGX Orin (no input rail: tot = sum).
JTOP_ORIN_NX = {
    "rail": {"VDD_CPU_GPU_CV": {"online": True, "type": "INA3221", "volt": 4984, "curr": 600, "power": 2990, "avg": 3100},
             "VDD_SOC": {"online": True, "type": "INA3221", "volt": 4984, "curr": 320, "power": 1594, "avg": 1600}},
    "tot": {"online": True, "type": "INA3221", "name": "VDD_IN", "volt": 4984, "curr": 1500, "power": 7476, "avg": 7000},
}
JTOP_AGX_ORIN = {
    "rail": {"VDD_GPU_SOC": {"online": True, "type": "INA3221", "volt": 5000, "curr": 800, "power": 4000, "avg": 4100},
             "VDD_CPU_CV": {"online": True, "type": "INA3221", "volt": 5000, "curr": 400, "power": 2000, "avg": 2100}},
    "tot": {"power": 6000, "avg": 6200},
}


def test_jtop_power_reads_tot_in_watts_never_avg_and_names_the_scope():
    assert power.jtop_power(JTOP_ORIN_NX) == (7.476, "jetson_vdd_in")
    assert power.jtop_power(JTOP_AGX_ORIN) == (6.0, "jetson_rails_sum")


def test_power_readings_integrate_with_the_trapezoid_rule():
    class Recorded(power.Sampler):
        method, scope, kind = "jtop", "jetson_vdd_in", "power"

    readings = [(0.0, 5.0), (1.0, 7.0), (3.0, 7.0)]  # 6 J + 14 J
    window = Recorded(interval_s=1.0).window(readings)
    assert window.energy_j == pytest.approx(20.0)
    assert window.mean_power_w == pytest.approx(20.0 / 3.0)
    assert window.samples == 3


def _rapl_tree(tmp_path, value_uj, max_uj=1_000_000):
    domain = tmp_path / "intel-rapl:0"
    (domain / "intel-rapl:0:0").mkdir(parents=True)  # a subzone: inside the package figure
    (domain / "name").write_text("package-0\n")
    (domain / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (domain / "energy_uj").write_text(f"{value_uj}\n")
    (domain / "intel-rapl:0:0" / "energy_uj").write_text("123\n")
    return domain / "energy_uj"


def test_rapl_counts_a_wrap_around(tmp_path):
    counter = _rapl_tree(tmp_path, 900_000)
    sampler = power.RaplSampler(interval_s=0.1, root=str(tmp_path))
    counter.write_text("950000\n")
    assert sampler.read() == pytest.approx(0.05)
    counter.write_text("20000\n")  # wrapped at 1e6 µJ: +50 000 + 20 000
    assert sampler.read() == pytest.approx(0.12)


def test_counter_delta_without_a_range_refuses_to_guess():
    assert power.counter_delta(10, 25, None) == 15
    assert power.counter_delta(900, 100, 1000) == 200
    with pytest.raises(ValueError, match="went back"):
        power.counter_delta(900, 100, None)


def test_absent_rapl_is_unavailable_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(power, "RaplSampler", functools.partial(power.RaplSampler, root=str(tmp_path)))
    monkeypatch.setattr(power, "is_jetson", lambda: False)
    sampler = power.choose_sampler("cpu", 0.1)
    assert isinstance(sampler, power.NoSampler)
    assert "jtop: not a Jetson" in sampler.reason
    assert f"rapl: OSError: no RAPL package domain under {tmp_path}" in sampler.reason
    cols = power.power_columns(sampler, None, None, iterations=5, batch_size=2)
    assert cols == {"power_method": "none", "power_unavailable_reason": sampler.reason}


def test_power_columns_from_windows():
    class Counter(power.Sampler):
        method, scope, kind = "rapl", "cpu_package", "energy"

    sampler = Counter(interval_s=0.5)
    idle = power.Window(energy_j=10.0, duration_s=5.0, samples=11)     # 2 W idle
    loop = power.Window(energy_j=60.0, duration_s=10.0, samples=21)    # 6 W busy
    cols = power.power_columns(sampler, idle, loop, iterations=5, batch_size=4)
    assert cols["idle_power_w"] == pytest.approx(2.0)
    assert cols["mean_power_w"] == pytest.approx(6.0)
    assert cols["energy_per_sample_j"] == pytest.approx(3.0)
    assert cols["energy_per_sample_above_idle_j"] == pytest.approx((60 - 20) / 20)
    assert cols["flag_power_low_samples"] is True


class ServiceAtAnotherInterval:
    """A jtop client whose service runs at the interval of a client started before it (1 s,
    whatever this one asks), publishing its updates when the test says."""

    def __init__(self, interval):
        self.interval_user, self.interval = interval, 1.0
        self.power = JTOP_ORIN_NX
        self._observers = set()

    def start(self):
        pass

    def close(self):
        pass

    def attach(self, observer):
        self._observers.add(observer)

    def detach(self, observer):
        self._observers.discard(observer)

    def publish(self, power_dict):
        self.power = power_dict
        for observer in list(self._observers):
            observer(self)


def test_jtop_records_the_service_interval_and_counts_each_update_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=ServiceAtAnotherInterval))
    monkeypatch.setattr(power, "is_jetson", lambda: True)
    sampler = power.choose_sampler("cpu", 0.05)
    assert isinstance(sampler, power.JtopSampler)
    busier = {**JTOP_ORIN_NX, "tot": {**JTOP_ORIN_NX["tot"], "power": 9000}}

    def body():  # 0.6 s: one update of the service, read by a 0.05 s poll a dozen times
        time.sleep(0.3)
        sampler._jetson.publish(busier)
        time.sleep(0.3)

    _, window = sampler.measure(body)
    cols = power.power_columns(sampler, None, window, iterations=10, batch_size=1)
    assert cols["power_sample_interval_s"] == 1.0
    assert cols["power_samples"] == 2 and cols["flag_power_low_samples"] is True
    assert 7.476 < cols["mean_power_w"] < 9.0 and window.duration_s == pytest.approx(0.6, abs=0.1)
    assert not sampler._jetson._observers  # detached after the window


class TwoGpus:
    """NVML on a host with two GPUs: NVML's index 0 is not the GPU torch runs on (as with
    CUDA_VISIBLE_DEVICES=1, where torch's device 0 is the second board)."""

    ENERGY_MJ = [1_000, 250_000]

    def __init__(self):
        self.by_uuid = {b"GPU-aaaaaaaa-0000-0000-0000-000000000000": 0, b"GPU-bbbbbbbb-1111-1111-1111-111111111111": 1}
        self.by_bus = {b"00000000:17:00.0": 0, b"00000000:65:00.0": 1}

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return self.by_uuid[uuid]

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        return self.by_bus[bus_id]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.ENERGY_MJ[handle]


@pytest.mark.parametrize("properties", [
    types.SimpleNamespace(name="GPU B", uuid="bbbbbbbb-1111-1111-1111-111111111111"),
    types.SimpleNamespace(name="GPU B", pci_domain_id=0, pci_bus_id=0x65, pci_device_id=0),  # a torch without uuid
])
def test_nvml_reads_the_gpu_torch_runs_on_not_nvml_index_0(monkeypatch, tmp_path, properties):
    monkeypatch.setitem(sys.modules, "pynvml", TwoGpus())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    assert power.NvmlSampler(0.1).read() == 250.0


def test_nvml_without_a_way_to_tell_the_gpus_apart_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", TwoGpus())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(name="GPU B"))
    monkeypatch.setattr(power, "RaplSampler", functools.partial(power.RaplSampler, root=str(tmp_path)))
    monkeypatch.setattr(power, "is_jetson", lambda: False)
    sampler = power.choose_sampler("cuda", 0.1)
    assert isinstance(sampler, power.NoSampler)
    assert "nvml: LookupError: torch gives neither the UUID nor the PCI bus id of GPU B" in sampler.reason
