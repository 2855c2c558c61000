"""A short fine-tune of a structurally changed model (alfred_edge.quantize.structure) on the
train store, with training's losses: a few batches of Adam that let the kept weights take
over what the removed ones did.

    finetune(model, "data/store/train", {"steps": 20, "batch": 8, "lr": 1e-4, "seed": 0,
                                         "mask_steps_per_batch": 8})
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from alfred_edge.evaluate import DEFAULT_WEIGHTS, compute_losses, gt_masks, split_loader, to_device
from alfred_edge.train import sample_mask_steps

log = logging.getLogger(__name__)


def finetune(model, train_store, settings: dict) -> None:
    """Train `model` in place for settings["steps"] batches of the train store (cycled,
    shuffled with the seed), then leave it in eval mode."""
    if train_store is None:
        raise ValueError("a fine-tune needs the train store")
    torch.manual_seed(settings["seed"])
    shuffle = torch.Generator().manual_seed(settings["seed"])
    loader = split_loader(Path(train_store), settings["batch"], shuffle=True, generator=shuffle)
    if len(loader.dataset) == 0:
        raise ValueError(f"{train_store}: the training store has no annotations")
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    model.train()
    done, losses = 0, []
    while done < settings["steps"]:
        for batch in loader:
            batch = to_device(batch, "cpu")
            steps, keep = sample_mask_steps(batch["valid_interact"], settings.get("mask_steps_per_batch"), shuffle)
            out = model(batch, mask_steps=steps)
            masks = gt_masks(batch, model.config["pframe"], "cpu")[keep]
            loss = compute_losses(model, out, batch, masks, DEFAULT_WEIGHTS)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            done += 1
            if done == settings["steps"]:
                break
    log.info("fine-tuned %d batches: loss %.4f -> %.4f", done, losses[0], losses[-1])
    model.eval()
