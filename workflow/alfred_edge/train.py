"""Train one model on the store (rule train):

    train("lstm", model_config, "data/store", "models/lstm/fp32.pt", "models/lstm/train_metrics.parquet",
          steps_path="models/lstm/train_steps.parquet")

ALFRED's recipe: Adam, batches of annotations padded by the loader, the action loss plus the
weighted mask loss on interaction steps (plus the progress-monitor losses when configured),
evaluation on valid_seen and valid_unseen after every epoch (the training loss logged every few
batches as well, so that the report draws a curve of even one epoch), and the epoch with the lowest
valid_seen loss in eval mode (the model's own argmax fed back, evaluate's `free_loss`) kept,
as ALFRED keeps best_seen.pth. Deterministic for a given seed on CPU: the seed fixes the
initial weights, the dropout masks and the shuffling.

With `init_from` and `epochs: 0` nothing is trained: `import_model` writes the ALFRED
checkpoint's weights unchanged as the model file.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch

from alfred_edge import atomic
from alfred_edge.data.dataset import VALID_SPLITS
from alfred_edge.evaluate import DEFAULT_WEIGHTS, compute_losses, evaluate_loader, gt_masks, split_loader, to_device
from alfred_edge.models import build_model, save_model

log = logging.getLogger(__name__)
BEST_BY = "valid_seen/free_loss"
# Points an epoch contributes to the report's training curve: enough that a one-epoch run
# shows the loss falling, few enough that a long epoch's log stays small.
LOGGED_POINTS_PER_EPOCH = 50


def make_model(architecture, model_config, vocab):
    """A fresh model, or with `init_from` (the schema admits it for the lstm only) the lstm of
    an ALFRED checkpoint."""
    if model_config.get("init_from"):
        from alfred_edge.models.alfred_checkpoint import import_alfred_checkpoint
        from alfred_edge.models.sizes import architecture

        dropouts = {k: v for k, v in architecture("lstm", model_config).items() if k.endswith("dropout")}
        return import_alfred_checkpoint(model_config["init_from"], model_config, vocab, overrides=dropouts).train()
    return build_model(architecture, model_config, vocab)


def untrained_model(architecture, model_config, store_dir, model_path) -> None:
    """models/<model>/fp32.pt with random weights (rule untrained_model, a cost-only model):
    its latency, memory and energy are the architecture's at these sizes, whatever the
    weights; the file says cost_only, so that nothing reports an accuracy for it. Seeded, so
    that the file is the same on every run."""
    from alfred_edge.data.vocab import load_vocab

    torch.manual_seed(0)
    model = build_model(architecture, model_config, load_vocab(Path(store_dir) / "vocab.json"))
    save_model(model.eval(), model_path, cost_only=True)


def import_model(model_config, store_dir, model_path) -> None:
    """models/lstm/fp32.pt holding the ALFRED checkpoint `init_from` as it is (rule
    import_checkpoint): its weights and training arguments, for the store's vocabulary,
    which must be the checkpoint's."""
    from alfred_edge.data.vocab import load_vocab
    from alfred_edge.models.alfred_checkpoint import import_alfred_checkpoint

    source = model_config["init_from"]
    model = import_alfred_checkpoint(source, model_config, load_vocab(Path(store_dir) / "vocab.json"))
    save_model(model, model_path, imported_from=str(source))


def sample_mask_steps(interact, k, generator):
    """At most k of the batch's interaction steps (all when k is None): the mask decoder is the
    costliest part of training, so a cheaper schedule supervises a random few per batch.
    -> (steps [B,T] bool, indices of the chosen steps among valid_interact's, row-major)."""
    positions = interact.nonzero()  # [N,2], row-major like the loader's masks
    if k is None or len(positions) <= k:
        return interact, torch.arange(len(positions))
    keep = torch.randperm(len(positions), generator=generator)[:k].sort().values
    steps = torch.zeros_like(interact)
    steps[positions[keep, 0], positions[keep, 1]] = True
    return steps, keep


def log_interval(batches_per_epoch: int) -> int:
    """Batches between two logged training losses: about LOGGED_POINTS_PER_EPOCH per epoch."""
    return max(1, math.ceil(batches_per_epoch / LOGGED_POINTS_PER_EPOCH))


def train(architecture, model_config, store_dir, model_path, metrics_path, device="cpu", progress=True,
          steps_path=None) -> dict:
    """Train, write model_path (fp32.pt), metrics_path (one row per epoch) and, given
    steps_path, the training losses every log_interval() batches, each the mean over those
    batches (one row per logged step); returns a summary."""
    from tqdm import tqdm

    from alfred_edge.data.loader import StoreDataset
    from alfred_edge.data.vocab import load_vocab

    hp = model_config["train"]
    weights = {**DEFAULT_WEIGHTS, **hp.get("loss_weights", {})}
    store_dir = Path(store_dir)
    vocab = load_vocab(store_dir / "vocab.json")
    torch.manual_seed(hp["seed"])
    model = make_model(architecture, model_config, vocab).to(device)
    if len(StoreDataset(store_dir / "train")) == 0:
        raise ValueError(f"{store_dir / 'train'}: the training store has no annotations (check its rejected.parquet)")
    shuffle = torch.Generator().manual_seed(hp["seed"])
    mask_sampler = torch.Generator().manual_seed(hp["seed"])
    train_loader = split_loader(store_dir / "train", hp["batch"], shuffle=True, generator=shuffle)
    valid = {split: split_loader(store_dir / split, hp["batch"]) for split in VALID_SPLITS
             if (store_dir / split).exists()}  # fmt: skip
    if "valid_seen" not in valid or len(valid["valid_seen"].dataset) == 0:
        raise ValueError(f"{store_dir / 'valid_seen'}: needed (non-empty) to choose the best epoch")
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])

    rows, step_rows, best, started = [], [], None, time.perf_counter()
    interval, samples = log_interval(len(train_loader)), 0
    for epoch in range(1, hp["epochs"] + 1):
        epoch_start = time.perf_counter()
        model.train()
        running, n, window = 0.0, 0, {}
        bar = tqdm(train_loader, desc=f"train {architecture} epoch {epoch}/{hp['epochs']}", unit="batch", disable=not progress)
        for batch in bar:
            batch = to_device(batch, device)
            steps, keep = sample_mask_steps(batch["valid_interact"], hp.get("mask_steps_per_batch"), mask_sampler)
            out = model(batch, mask_steps=steps)
            masks = gt_masks(batch, model.config["pframe"], device)[keep.to(device)]
            losses = compute_losses(model, out, batch, masks, weights)
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            values = {key: value.item() for key, value in losses.items()}
            running, n, samples = running + values["loss"], n + 1, samples + len(batch["lang_lengths"])
            bar.set_postfix(loss=f"{running / n:.4f}")
            for key, value in values.items():
                window.setdefault(key, []).append(value)
            if n % interval == 0 or n == len(train_loader):
                step_rows.append({"epoch": epoch, "step": n, "steps_in_epoch": len(train_loader), "samples": samples,
                                  **{f"train/{key}": sum(v) / len(v) for key, v in window.items()},
                                  "seconds": time.perf_counter() - started})
                window = {}
        row = {"epoch": epoch, "train/loss": running / n, "train_seconds": time.perf_counter() - epoch_start}
        eval_start = time.perf_counter()
        for split, loader in valid.items():
            metrics = evaluate_loader(model, loader, device, weights, free_loss=True)
            row.update({f"{split}/{k}": v for k, v in metrics.items()})
        row["eval_seconds"] = time.perf_counter() - eval_start
        rows.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if best is None or row[BEST_BY] < best[0][BEST_BY]:
            best = (row, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    save_model(model.cpu(), model_path, best_epoch=best[0]["epoch"])
    atomic.write_parquet(pd.DataFrame(rows), metrics_path)
    if steps_path is not None:
        atomic.write_parquet(pd.DataFrame(step_rows), steps_path)
    return {"best_epoch": best[0]["epoch"], "seconds": time.perf_counter() - started, **best[0]}
