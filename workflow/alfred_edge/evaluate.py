"""Losses and metrics of a model on a store split, shared by training (per epoch) and the
quantize stage (per variant):

    evaluate(model, "data/store", device) -> {"valid_seen/action_acc": ..., ...}

Per split:
    loss_action  ALFRED's action loss: cross-entropy per step, pad steps zeroed, mean over B*T
    loss_mask    ALFRED's weighted mask BCE on interaction steps (mean over object pixels
                 + mean over background pixels), mean over batches
    loss         loss_action + loss_mask (+ the progress-monitor losses when the model has them),
                 teacher-forced
    free_loss    (with free_loss=True: training's validation) the same losses with the model's
                 own argmax fed back as the previous action: ALFRED's validation loss (eval
                 mode), by which it keeps best_seen.pth. It decodes the masks of the
                 free-running pass too, which the other metrics do not need.
    action_acc   teacher-forced accuracy of the next action over real steps (incl. <<stop>>)
    action_f1, action_em
                 ALFRED's action-sequence F1 / exact match (SQuAD-style token overlap), from
                 free-running decoding on the expert's frames (previous action = own argmax),
                 the prediction cut at its first <<pad>> / <<stop>>, against the expert's
                 actions without <<stop>>, averaged over annotations
    mask_iou     IoU of (sigmoid > 0.5) with the expert's mask, teacher-forced, averaged over
                 interaction steps
"""
from __future__ import annotations

import collections
from pathlib import Path

import torch
from torch.nn import functional as F

from alfred_edge.data.dataset import VALID_SPLITS

PAD = 0
ACTION_STOP = 2  # <<stop>> in action_low (ALFRED's index; alfred_edge.data.vocab.ACTION_STOP)
MAX_SUBGOALS = 25  # ALFRED's normaliser of the subgoal-progress target


def action_loss(logits, actions):
    """logits [B,T,V], actions [B,T] (0 = pad) -> ALFRED's loss (pads in the denominator)."""
    loss = F.cross_entropy(logits.flatten(0, 1), actions.flatten(), reduction="none")
    return (loss * (actions.flatten() != PAD)).mean()


def weighted_mask_loss(mask_logits, gt):
    """mask_logits [N,1,P,P], gt [N,P,P] in {0,1} -> mean BCE over object pixels + mean BCE
    over background pixels (ALFRED's weighted_mask_loss; guarded against empty masks)."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    gt = gt.unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(mask_logits, gt, reduction="none")
    inside = (bce * gt).sum() / gt.sum().clamp(min=1)
    outside = (bce * (1 - gt)).sum() / (1 - gt).sum().clamp(min=1)
    return inside + outside


def progress_targets(batch):
    """ALFRED's progress-monitor targets: subgoal index / 25 and (t+1)/T per real step."""
    lengths = batch["frame_lengths"].unsqueeze(1).float()
    steps = torch.arange(batch["actions"].shape[1], device=lengths.device).unsqueeze(0)
    return batch["high_idx"].float() / MAX_SUBGOALS, (steps + 1).float() / lengths


def gt_masks(batch, pframe, device):
    """The expert's masks of the interaction steps [N,P,P] float, resized to the model's P."""
    from alfred_edge.data.loader import decode_masks

    masks = decode_masks(batch).to(device)
    if masks.shape[0] and masks.shape[-1] != pframe:
        masks = F.interpolate(masks.unsqueeze(1), size=(pframe, pframe), mode="nearest").squeeze(1)
    return masks


def compute_losses(model, out, batch, masks, weights) -> dict:
    """The weighted training losses of a forward output; weights: action, mask, subgoal, progress."""
    losses = {
        "loss_action": weights["action"] * action_loss(out["action_logits"], batch["actions"]),
        "loss_mask": weights["mask"] * weighted_mask_loss(out["mask_logits"], masks),
    }
    if "subgoal" in out:
        real = (batch["actions"] != PAD).float()
        subgoal, progress = progress_targets(batch)
        for key, target in (("subgoal", subgoal), ("progress", progress)):
            mse = ((out[key] - target) ** 2 * real).sum() / real.sum()
            losses[f"loss_{key}"] = weights[key] * mse
    losses["loss"] = sum(losses.values())
    return losses


def sequence_f1(pred, gold) -> float:
    """SQuAD-style token F1 between two action sequences (as ALFRED's compute_f1)."""
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def cut_sequence(ids) -> list:
    """ALFRED's extract_preds: up to the first <<pad>> or <<stop>>."""
    out = []
    for i in ids:
        if i in (PAD, ACTION_STOP):
            break
        out.append(i)
    return out


def mask_ious(mask_logits, gt) -> torch.Tensor:
    """[N,1,P,P] logits, [N,P,P] gt -> IoU per step [N] (1 where both masks are empty)."""
    pred = mask_logits.squeeze(1) > 0
    gt = gt > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def to_device(batch, device, dtype=torch.float32):
    """Tensors to `device`; frames also to the model's float dtype (fp16/bf16 variants)."""
    out = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["frames"] = out["frames"].to(dtype)
    return out


def float_dtype(model):
    """The dtype the model takes frames in (a quantized model keeps float convolutions; a model
    run by ONNX Runtime, which holds no torch parameters, takes float32)."""
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else ()
    return next((p.dtype for p in parameters if p.is_floating_point()), torch.float32)


DEFAULT_WEIGHTS = {"action": 1.0, "mask": 1.0, "subgoal": 0.0, "progress": 0.0}


def float_outputs(out: dict) -> dict:
    """A forward output with its logits in float32 (fp16/bf16 variants), for the losses."""
    return {**out, "action_logits": out["action_logits"].float(), "mask_logits": out["mask_logits"].float()}


@torch.no_grad()
def evaluate_loader(model, loader, device, weights=None, progress=None, free_loss=False) -> dict:
    """Every metric above over one split's DataLoader (model in eval mode)."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    model.eval()
    dtype = float_dtype(model)
    sums = collections.defaultdict(float)
    n_batches = correct = steps = 0
    f1s, ems, ious = [], [], []
    for batch in loader:
        batch = to_device(batch, device, dtype)
        masks = gt_masks(batch, model.config["pframe"], device)
        out = float_outputs(model(batch, teacher_forcing=True))
        for key, value in compute_losses(model, out, batch, masks, weights).items():
            sums[key] += float(value)
        logits = out["action_logits"]
        n_batches += 1
        real = batch["actions"] != PAD
        correct += int(((logits.argmax(-1) == batch["actions"]) & real).sum())
        steps += int(real.sum())
        ious.append(mask_ious(out["mask_logits"], masks).cpu())
        mask_steps = None if free_loss else torch.zeros_like(batch["valid_interact"])  # None: at valid_interact
        free = float_outputs(model(batch, teacher_forcing=False, mask_steps=mask_steps))
        if free_loss:
            sums["free_loss"] += float(compute_losses(model, free, batch, masks, weights)["loss"])
        for pred, gold in zip(free["action_logits"].argmax(-1).tolist(), batch["actions"].tolist()):
            pred, gold = cut_sequence(pred), cut_sequence(gold)
            f1s.append(sequence_f1(pred, gold))
            ems.append(float(pred == gold))
        if progress is not None:
            progress.update(1)
    if n_batches == 0:
        raise ValueError("evaluation split has no annotations")
    metrics = {key: value / n_batches for key, value in sums.items()}
    ious = torch.cat(ious)
    metrics.update(
        action_acc=correct / max(steps, 1),
        action_f1=sum(f1s) / len(f1s),
        action_em=sum(ems) / len(ems),
        mask_iou=float(ious.mean()) if len(ious) else float("nan"),
        n_annotations=len(f1s),
    )
    return metrics


def split_loader(store_split_dir, batch_size, shuffle=False, generator=None):
    """A DataLoader over one split's store, batches padded by the data package's collate."""
    from torch.utils.data import DataLoader

    from alfred_edge.data.loader import StoreDataset, collate

    dataset = StoreDataset(store_split_dir)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def evaluate(model, store_dir, device="cpu", splits=VALID_SPLITS, batch_size=8, weights=None) -> dict:
    """Metrics of `model` on each split of the store (data/store): {"<split>/<metric>": value}.
    The model must have been trained on the store's vocabulary (checked: vocab.json)."""
    from alfred_edge.models import check_vocab

    store_dir = Path(store_dir)
    check_vocab(model, store_dir / "vocab.json", source=f"model {model.name!r}")
    out = {}
    for split in splits:
        loader = split_loader(store_dir / split, batch_size)
        if len(loader.dataset) == 0:
            raise ValueError(f"{store_dir / split}: the store split has no annotations to evaluate")
        for key, value in evaluate_loader(model, loader, device, weights).items():
            out[f"{split}/{key}"] = value
    return out
