"""Goal (issue 22): the fastest way to run a decoder step, measured at ALFRED's lstm size (the
cost-only model: random weights, config/alfred.yaml's sizes) on this machine. Printed, not
asserted (the machine is shared and noisy):

- the best backend's fp32 batch-1 step <= 1.2 x the weight-streaming bound (the bytes a step
  reads / the copy bandwidth bench/roofline.py measures, with config/config.yaml's
  bench.roofline settings);
- the best int8 step with the mask decoder <= 0.35 x the eager fp32 step at batch 1 and
  <= 0.45 x at batch 8.

One decoder step (after step 0, teacher-forced) of: eager fp32, ONNX Runtime fp32, eager
int8_dynamic and int8_static (torch.ao), ONNX Runtime int8_dynamic and int8_static (the static
ones calibrated on random episodes: the timing does not depend on the ranges), without a mask
and with a mask for every row (with_mask=True), at batch 1 and 8. The configurations take turns
round by round; each round times `--steps` steps of each, and the figure is the median over
rounds of each round's median step. This VM's memory bandwidth moves from minute to minute
(other guests), so each round also measures the copy bandwidth, the roofline's way, just before its steps: the
fp32 step's ratio to the bound is taken round by round, and the figure is the median of
those ratios. Also the mask decoder alone, in ALFRED's form (upsampling, transposed
convolutions, BatchNorm) and in the inference form the model now runs (folded), eager fp32.

    python benchmarks/backend_step_speed.py [--rounds 7] [--steps 20] [--threads 2]

Quick form: --rounds 3 --steps 10 (about 4 minutes, most of it exporting and quantizing).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.nn import functional as F

from alfred_edge.backends.onnxruntime_model import OnnxRuntimeModel
from alfred_edge.bench import roofline
from alfred_edge.models import build_model, model_record
from alfred_edge.quantize import make_variant
from alfred_edge.quantize.conversions import CONVERSIONS, quiet_quantization_warnings
from alfred_edge.quantize.onnx_variants import build_graphs
from host_load import host_load, last_level_cache
from untrained_models import REPO, alfred_lstm_sizes

BATCHES = (1, 8)
LANG_LENGTH = 40  # tokens of an ALFRED goal and instructions, about
VOCAB = {"word": [f"w{i}" for i in range(2400)], "action_low": [f"a{i}" for i in range(15)]}  # ALFRED's sizes


def random_batch(batch: int, steps: int, seed: int) -> dict:
    """An episode batch in the loader's format (random values)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "lang": torch.randint(3, len(VOCAB["word"]), (batch, LANG_LENGTH), generator=g),
        "lang_lengths": torch.full((batch,), LANG_LENGTH),
        "frames": torch.rand(batch, steps, 512, 7, 7, generator=g),
        "frame_lengths": torch.full((batch,), steps),
        "actions": torch.randint(3, len(VOCAB["action_low"]), (batch, steps), generator=g),
        "valid_interact": torch.rand(batch, steps, generator=g) < 0.3,
    }


def build_backends(model, folder: Path) -> dict:
    """{name: model with the eager interface}."""
    header = model_record(model)
    calibration = [random_batch(4, 6, seed) for seed in range(2)]
    with quiet_quantization_warnings():
        models = {"eager fp32": model, "eager int8_dynamic": make_variant(model, "int8_dynamic"),
                  "eager int8_static": CONVERSIONS["int8_static"].build(model, calibration)}
    for precision in ("fp32", "int8_dynamic", "int8_static"):
        started = time.perf_counter()
        build_graphs(model, precision, folder / precision, header, calibration)
        models[f"onnxruntime {precision}"] = OnnxRuntimeModel(folder / precision, header)
        print(f"  onnxruntime {precision}: built in {time.perf_counter() - started:.1f} s")
    return models


@torch.inference_mode()
def step_times(models: dict, rounds: int, steps: int, roofline_settings: dict) -> tuple[dict, list]:
    """({(name, batch, with_mask): [each round's median step (ms)]}, [each round's copy
    bandwidth (GB/s), measured before its steps])."""
    cases = {}
    for batch in BATCHES:
        episode = random_batch(batch, 2, seed=batch)
        for name, model in models.items():
            state = model.encode(episode["lang"], episode["lang_lengths"])
            _, _, state = model.step(state, episode["frames"][:, 0])
            cases.update({(name, batch, mask): (model, state, episode) for mask in (False, True)})
    medians, bandwidths = {key: [] for key in cases}, []
    for _ in range(rounds + 1):  # the first round warms up
        bandwidths.append(roofline.copy_bandwidth(torch, "cpu", roofline_settings["copy_mb"],
                                                  roofline_settings["seconds"]))
        for key, (model, state, episode) in cases.items():
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                model.step(state, episode["frames"][:, 1], episode["actions"][:, 0], with_mask=key[2])
                times.append(time.perf_counter() - start)
            medians[key].append(statistics.median(times) * 1e3)
    return {key: values[1:] for key, values in medians.items()}, bandwidths[1:]


@torch.inference_mode()
def mask_decoder_times(decoder, rounds: int, steps: int) -> dict:
    """{(form, batch): ms} for ALFRED's form and the folded inference form, eager fp32."""
    forms = {"ALFRED's form": lambda x: decoder.dconv1(decoder.trained_form(x)),
             "folded form": lambda x: decoder.dconv1(decoder.inference_form(x))}  # fmt: skip
    inputs = {b: torch.randn(b, 64, 7, 7).contiguous(memory_format=torch.channels_last) for b in BATCHES}
    medians = {(form, b): [] for form in forms for b in BATCHES}
    for _ in range(rounds + 1):
        for (form, b) in medians:
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                F.interpolate(forms[form](inputs[b]), size=(decoder.pframe, decoder.pframe), mode="bilinear")
                times.append(time.perf_counter() - start)
            medians[(form, b)].append(statistics.median(times) * 1e3)
    return {key: statistics.median(values[1:]) for key, values in medians.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each configuration per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"before: {host_load()}; {last_level_cache()}; torch {torch.__version__}, {args.threads} threads")
    torch.manual_seed(0)
    model = build_model("lstm", alfred_lstm_sizes(), VOCAB).eval()
    step_bytes, mask_bytes = roofline.step_weight_bytes(model)
    settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["bench"]["roofline"]
    print(f"fp32 step reads {step_bytes / 1e6:.1f} MB (+{mask_bytes / 1e6:.1f} MB with a mask); bound = those bytes / "
          f"the copy bandwidth of a {settings['copy_mb']} MB buffer, best of {settings['seconds']} s, each round")
    with tempfile.TemporaryDirectory() as tmp:
        models = build_backends(model, Path(tmp))
        per_round, bandwidths = step_times(models, args.rounds, args.steps, settings)
    times = {key: statistics.median(values) for key, values in per_round.items()}
    bounds = [step_bytes / bandwidth / 1e6 for bandwidth in bandwidths]  # ms, round by round
    print(f"copy bandwidth by round: {', '.join(f'{b:.1f}' for b in bandwidths)} GB/s; bound median "
          f"{statistics.median(bounds):.2f} ms ({min(bounds):.2f}-{max(bounds):.2f})")
    masks = mask_decoder_times(model.dec.mask_dec, args.rounds, args.steps)
    print(f"\nOne decoder step, ms (median over {args.rounds} rounds of {args.steps} steps), and x eager fp32:")
    print(f"{'':28s}" + "".join(f"{f'b{b} ' + ('mask' if m else 'no mask'):>22s}" for b in BATCHES for m in (False, True)))
    for name in models:
        cells = "".join(f"{times[(name, b, m)]:9.2f} ({times[(name, b, m)] / times[('eager fp32', b, m)]:5.2f}x)  "
                        for b in BATCHES for m in (False, True))  # fmt: skip
        print(f"{name:28s}{cells}")
    print("\nGoals:")
    ratios = {name: [t / b for t, b in zip(per_round[(name, 1, False)], bounds)] for name in models if name.endswith("fp32")}
    best = min(ratios, key=lambda name: statistics.median(ratios[name]))
    print(f"  best fp32 batch-1 step / bound, median of the rounds' ratios: {statistics.median(ratios[best]):.2f} "
          f"({best}; rounds {', '.join(f'{r:.2f}' for r in ratios[best])}; goal <= 1.2; "
          f"eager fp32 {statistics.median(ratios['eager fp32']):.2f})")
    for batch, goal in ((1, 0.35), (8, 0.45)):
        best = min((times[(n, batch, True)], n) for n in models if "int8" in n)
        print(f"  best int8 step with masks / eager fp32, batch {batch}: {best[0] / times[('eager fp32', batch, True)]:.2f}"
              f" ({best[1]}; goal <= {goal})")
    print("\nThe mask decoder's convolutions alone (eager fp32, ms):")
    for b in BATCHES:
        old, new = masks[("ALFRED's form", b)], masks[("folded form", b)]
        print(f"  batch {b}: ALFRED's form {old:.2f}, folded {new:.2f} ({new / old:.2f}x)")
    print(f"after: {host_load()}")


if __name__ == "__main__":
    main()
