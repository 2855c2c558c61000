"""Goal: a decoder step costs the same late in an episode as early (the transformer with its
key/value cache: step 64 <= 1.5x step 1; issue 3's figures), printed, not asserted (the
machine is shared and noisy).

1. Step cost against the step index: the transformer with its KV cache, the same model
   without the cache, and the lstm, at the config's sizes. Each episode decodes 64 steps; the
   step-1 and step-64 times are medians over episodes, the models taking turns episode by
   episode.
2. Training: with --train, trains both models as configured on a store (default data/store)
   and prints wall time and teacher-forced accuracy; otherwise prints the figures recorded in
   models/{model}/train_metrics.parquet by the pipeline.

    python benchmarks/step_cost.py [--episodes 7] [--batch 1] [--threads 2] [--train]

Quick form: --episodes 2.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from alfred_edge.models import build_model
from host_load import host_load

ROOT = Path(__file__).resolve().parents[1]
STEPS = 64


def synthetic_vocab(n_words=100, n_actions=15):
    return {"word": [f"w{i}" for i in range(n_words)], "action_low": [f"a{i}" for i in range(n_actions)]}


@torch.no_grad()
def step_times(models: dict, batch, episodes, lang_len=40) -> dict:
    """{name: per step index, the median wall time of model.step over `episodes` episodes}.
    The models take turns episode by episode, so that a change in the machine's load falls
    on all of them."""
    g = torch.Generator().manual_seed(0)
    lang = torch.randint(3, 100, (batch, lang_len), generator=g)
    lengths = torch.full((batch,), lang_len)
    frames = torch.rand(STEPS, batch, 512, 7, 7, generator=g)
    times = {name: [[] for _ in range(STEPS)] for name in models}
    for _ in range(episodes + 1):  # the first episode warms up
        for name, model in models.items():
            state = model.encode(lang, lengths)
            for t in range(STEPS):
                start = time.perf_counter()
                _, _, state = model.step(state, frames[t])
                times[name][t].append(time.perf_counter() - start)
    return {name: [statistics.median(ts[1:]) for ts in per_step] for name, per_step in times.items()}


def bench_steps(config, args):
    vocab = synthetic_vocab()
    torch.manual_seed(0)
    models = {
        "transformer (kv cache)": build_model("transformer", config["transformer"], vocab).eval(),
        "transformer (no cache)": build_model("transformer", {**config["transformer"], "kv_cache": False}, vocab).eval(),
        "lstm": build_model("lstm", config["lstm"], vocab).eval(),
    }
    print(f"step cost, batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.episodes} episodes, "
          f"the models in turn; {host_load()} (before)")
    print(f"{'model':<24} {'step 1 ms':>10} {'step 16 ms':>11} {'step 64 ms':>11} {'64 / 1':>7}")
    for name, t in step_times(models, args.batch, args.episodes).items():
        print(f"{name:<24} {t[0] * 1e3:10.2f} {t[15] * 1e3:11.2f} {t[-1] * 1e3:11.2f} {t[-1] / t[0]:7.2f}"
              + ("  (goal <= 1.5)" if name == "transformer (kv cache)" else ""))
    print(f"{host_load()} (after)")


def bench_training(config, args):
    from alfred_edge.train import train

    print(f"training on {args.store} ({torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as out:
        for name in ("lstm", "transformer"):
            start = time.perf_counter()
            summary = train(name, config[name], args.store, Path(out) / f"{name}.pt", Path(out) / f"{name}.parquet",
                            progress=False)
            print(f"  {name:<12} {time.perf_counter() - start:7.1f} s wall, best epoch {summary['best_epoch']}, "
                  f"valid_seen action_acc {summary['valid_seen/action_acc']:.4f}, "
                  f"mask_iou {summary['valid_seen/mask_iou']:.3f}  ({host_load()})")


def recorded_training():
    import pandas as pd

    for name in ("lstm", "transformer"):
        path = ROOT / "models" / name / "train_metrics.parquet"
        if not path.exists():
            print(f"  {name}: no {path.relative_to(ROOT)} (run the pipeline, or pass --train)")
            continue
        m = pd.read_parquet(path)
        print(f"  {name:<12} train {m['train_seconds'].sum():6.1f} s + eval {m['eval_seconds'].sum():6.1f} s over "
              f"{len(m)} epochs; valid_seen action_acc by epoch {[round(a, 4) for a in m['valid_seen/action_acc']]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=ROOT / "config" / "config.yaml")
    parser.add_argument("--episodes", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="train both models now and time them")
    parser.add_argument("--store", default=ROOT / "data" / "store")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())["models"]
    bench_steps(config, args)
    if args.train:
        bench_training(config, args)
    else:
        print("training times recorded by the pipeline:")
        recorded_training()


if __name__ == "__main__":
    main()
