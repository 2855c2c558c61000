"""Goals: int8_dynamic's file <= 0.30x fp32's for the lstm and <= 0.40x for the transformer,
with teacher-forced accuracy on valid_seen within 1 point of fp32 for both (issue 4's
figures): each variant's file size and accuracy next to fp32, measured side by side in one run.

    python benchmarks/quantized_size_accuracy.py                      # trained models of the pipeline
    python benchmarks/quantized_size_accuracy.py --random-alfred-size # quick form: file sizes only, no training

The first form needs models/<model>/fp32.pt and data/store (run
`snakemake --cores 4 models/lstm/fp32.pt models/transformer/fp32.pt` first); it runs the
quantize job's own code (alfred_edge.quantize.quantize_job) into a temporary folder, so
the pipeline's files are left alone. The second builds an ALFRED-size lstm (45.9 M
parameters, 2,360 words) and the default transformer with random weights: file-size ratios
do not depend on training.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

from alfred_edge import quantize as Q
from alfred_edge.models import vocab_sizes
from alfred_edge.models.sizes import parameter_count
from host_load import host_load
from alfred_edge.data.dataset import VALID_SPLITS as SPLITS
from untrained_models import alfred_lstm_sizes, build_models

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"lstm": 0.30, "transformer": 0.40}  # int8 file / fp32 file


def trained(models, models_dir: Path, store: Path, variants, batch: int) -> bool:
    ok = True
    for name in models:
        fp32 = models_dir / name / "fp32.pt"
        if not fp32.is_file():
            print(f"{fp32} is missing: run `snakemake --cores 4 {fp32}` first")
            ok = False
            continue
        print(f"\n{name}: {fp32} ({fp32.stat().st_size / 1e6:.1f} MB), store {store}")
        print(f"{'variant':14} {'status':11} {'MB':>8} {'ratio':>6} {'acc seen':>9} {'Δ pts':>7} "
              f"{'acc unseen':>10} {'Δ pts':>7} {'F1 seen':>8} {'IoU seen':>8} {'s':>6}")
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for variant in ["fp32", *[v for v in variants if v != "fp32"]]:
                started = time.perf_counter()
                variant_path = None if variant == "fp32" else Path(tmp) / f"{variant}.pt"
                row = Q.quantize_job(fp32, variant, store, SPLITS, variant_path, Path(tmp) / f"{variant}.parquet", batch)
                row["seconds"] = time.perf_counter() - started
                rows[variant] = row
                base = rows["fp32"]
                d_seen = 100 * (row["accuracy_valid_seen"] - base["accuracy_valid_seen"])
                d_unseen = 100 * (row["accuracy_valid_unseen"] - base["accuracy_valid_unseen"])
                print(f"{variant:14} {row['status']:11} {row['file_size_mb']:8.2f} {row['size_ratio']:6.3f} "
                      f"{row['accuracy_valid_seen']:9.4f} {d_seen:+7.2f} {row['accuracy_valid_unseen']:10.4f} "
                      f"{d_unseen:+7.2f} {row['action_f1_valid_seen']:8.4f} {row['mask_iou_valid_seen']:8.4f} "
                      f"{row['seconds']:6.1f}" + (f"  ({row['reason']})" if row["reason"] else ""))
        int8 = rows.get("int8_dynamic")
        if int8 is not None and name in LIMITS:
            d = abs(100 * (int8["accuracy_valid_seen"] - rows["fp32"]["accuracy_valid_seen"]))
            size_ok, acc_ok = int8["size_ratio"] <= LIMITS[name], d <= 1.0
            print(f"acceptance {name} int8_dynamic: file {int8['size_ratio']:.3f}x fp32 (<= {LIMITS[name]}: "
                  f"{'yes' if size_ok else 'NO'}), valid_seen accuracy {d:.2f} points from fp32 "
                  f"(<= 1: {'yes' if acc_ok else 'NO'})")
            ok &= size_ok and acc_ok
    return ok


def random_sizes() -> bool:
    """File sizes of every variant of ALFRED's lstm and of the default transformer, untrained."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]
    ok = True
    for name, config, n_words in (("lstm", alfred_lstm_sizes(), 2360), ("transformer", default["transformer"], 100),
                                  ("transformer", default["transformer"], 2360)):
        vocab = {"word": [f"w{i}" for i in range(n_words)], "action_low": [f"a{i}" for i in range(15)]}
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            out = build_models({name: config}, Q.VARIANTS, vocab, Path(tmp)) / name
            sizes = {variant: (out / f"{variant}.pt").stat().st_size for variant in Q.VARIANTS
                     if not Q.read_variant_file(out / f"{variant}.pt").get("unavailable")}
        n_params = parameter_count(name, config, vocab_sizes(vocab))
        print(f"{name} ({n_params / 1e6:.2f} M parameters, {n_words} words): " + ", ".join(
            f"{v} {b / 1e6:.2f} MB ({b / sizes['fp32']:.3f}x)" for v, b in sizes.items()))
        if n_words == 2360 and name == "lstm" or n_words == 100:
            ratio = sizes["int8_dynamic"] / sizes["fp32"]
            print(f"  int8 file ratio {ratio:.3f} <= {LIMITS[name]}: {'yes' if ratio <= LIMITS[name] else 'NO'}")
            ok &= ratio <= LIMITS[name]
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer"])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--store", type=Path, default=Path("data/store"))
    parser.add_argument("--variants", nargs="+", default=list(Q.VARIANTS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-alfred-size", action="store_true", help="file sizes only, random weights")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*(deprecated|TypedStorage).*")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, quantized engine {Q.choose_engine()}, {args.threads} threads, {host_load()}")
    if args.random_alfred_size:
        ok = random_sizes()
    else:
        ok = trained(args.models, args.models_dir, args.store, args.variants, args.batch)
    print("\nall acceptance figures met" if ok else "\nsome acceptance figures NOT met")
    print(f"{host_load()} (after the run)")


if __name__ == "__main__":
    main()
