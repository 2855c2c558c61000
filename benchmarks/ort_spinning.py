"""Why the onnxruntime backend's sessions stop their workers' spinning after each run
(backends/onnxruntime_model.session_options): a decode as a benchmark cell runs it, at
ALFRED's lstm size (random weights) and batch 1: per episode the language encoded, then 8
steps with a mask at every fourth (the default run decodes one at about a fifth of its
steps), with ONNX Runtime's default (workers spin on after a run) and with
session.force_spinning_stop. Each is a fresh process, the two taking turns round by round;
the figures are the medians over rounds of each process's median encode, step and mask step.
Printed, not asserted.

    python benchmarks/ort_spinning.py [--rounds 5] [--episodes 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from host_load import host_load

MODES = ("spinning", "stop spinning")
STEPS = 8


def decode(folder: Path, spinning: bool, episodes: int) -> dict:
    """{encode, step, mask step: median ms} over the second of two passes over the episodes."""
    import onnxruntime as ort

    from alfred_edge.backends.onnx_export import GRAPH_NAMES
    from alfred_edge.backends.onnxruntime_model import OnnxRuntimeModel, session_options
    from backend_step_speed import random_batch

    torch.set_num_threads(2)
    model = OnnxRuntimeModel(folder, json.loads((folder / "header.json").read_text()), threads=2)
    if spinning:  # the model's options with ONNX Runtime's default for this one entry
        options = session_options(ort, 2)
        options.add_session_config_entry("session.force_spinning_stop", "0")
        model.sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                     providers=["CPUExecutionProvider"]) for name in GRAPH_NAMES}
    batches = [random_batch(1, STEPS, seed) for seed in range(episodes)]
    for _ in range(2):  # the first pass warms up
        times = {"encode": [], "step": [], "mask step": []}
        for episode in batches:
            start = time.perf_counter()
            state = model.encode(episode["lang"], episode["lang_lengths"])
            times["encode"].append(time.perf_counter() - start)
            for t in range(STEPS):
                with_mask = t % 4 == 3
                start = time.perf_counter()
                _, _, state = model.step(state, episode["frames"][:, t], episode["actions"][:, t - 1] if t else None,
                                         with_mask=with_mask)
                times["mask step" if with_mask else "step"].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def export(folder: Path) -> None:
    from alfred_edge.models import build_model, model_record
    from alfred_edge.quantize.onnx_variants import build_graphs
    from backend_step_speed import VOCAB
    from untrained_models import alfred_lstm_sizes

    torch.manual_seed(0)
    model = build_model("lstm", alfred_lstm_sizes(), VOCAB).eval()
    build_graphs(model, "fp32", folder, model_record(model))
    (folder / "header.json").write_text(json.dumps(model_record(model)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(decode(Path(args.child[0]), args.child[1] == MODES[0], args.episodes)))
        return
    print(f"before: {host_load()}")
    results = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        export(Path(tmp))
        for _ in range(args.rounds):
            for mode in MODES:
                done = subprocess.run([sys.executable, __file__, "--child", tmp, mode, "--episodes", str(args.episodes)],
                                      capture_output=True, text=True, check=True)
                results[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nms, median over {args.rounds} rounds (each a process's median over {args.episodes} episodes):")
    for mode, rounds in results.items():
        print(f"  {mode:14s}" + "".join(f"  {name} {statistics.median(r[name] for r in rounds):6.2f}"
                                        for name in ("encode", "step", "mask step")))
    ratio = [s["step"] / p["step"] for s, p in zip(results[MODES[1]], results[MODES[0]])]
    print(f"  step, stop spinning / spinning, round by round: {', '.join(f'{r:.2f}' for r in ratio)}")
    print(f"after: {host_load()}")


if __name__ == "__main__":
    main()
