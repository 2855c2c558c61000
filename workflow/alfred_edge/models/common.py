"""Input checks and small helpers shared by both models. The batch size always comes from the
caller's tensors; these checks turn a mismatch into a message that says which tensor is off."""
from __future__ import annotations

import torch

from alfred_edge.data.dataset import FRAME_SHAPE

FRAME_DIMS = ",".join(map(str, FRAME_SHAPE))  # as the messages write a shape
BATCH_KEYS = ("lang", "lang_lengths", "frames", "frame_lengths", "actions", "valid_interact")


def check_encode_inputs(lang, lang_lengths) -> int:
    """lang [B,L] long, lang_lengths [B] with 1 <= length <= L. Returns B."""
    if lang.dim() != 2:
        raise ValueError(f"lang must be [B,L] token ids, got shape {tuple(lang.shape)}")
    if lang_lengths.dim() != 1 or lang_lengths.shape[0] != lang.shape[0]:
        raise ValueError(
            f"batch size mismatch: lang has {lang.shape[0]} rows but lang_lengths has shape {tuple(lang_lengths.shape)}"
        )
    if lang.shape[0] == 0:
        raise ValueError("empty batch: lang has 0 rows")
    lengths = lang_lengths.cpu()
    if int(lengths.min()) < 1 or int(lengths.max()) > lang.shape[1]:
        raise ValueError(f"lang_lengths must lie in [1, {lang.shape[1]}], got {lengths.tolist()}")
    return lang.shape[0]


def check_step_inputs(state, frames_t, prev_action) -> None:
    batch = state["batch"]
    if tuple(frames_t.shape) != (batch, *FRAME_SHAPE):
        raise ValueError(
            f"frames_t must be [B,{FRAME_DIMS}] with B = {batch} (the batch given to encode), got {tuple(frames_t.shape)}"
        )
    if prev_action is None:
        return
    if state["t"] == 0:
        raise ValueError("step 0 starts from the learned `go` input: pass prev_action=None at the first step")
    if tuple(prev_action.shape) != (batch,):
        raise ValueError(f"prev_action must be [B] with B = {batch}, got shape {tuple(prev_action.shape)}")


def next_input_actions(state, prev_action):
    """The actions fed to the decoder at this step: None at step 0 (use `go`), the caller's
    prev_action when given (teacher forcing), else the model's own last argmax."""
    if state["t"] == 0:
        return None
    return state["last"] if prev_action is None else prev_action


def step_masks(mask_dec, cont_t, action_t, with_mask):
    """The step's mask logits. with_mask True: every row [B,1,P,P]; False: None; a function
    of the step's action logits [B,V] giving the rows to decode, a bool [B]: those rows, in
    row order [n,1,P,P] (e.g. the rows whose chosen action interacts, as ALFRED's agent uses a
    mask only with an interaction action, or the rows where the expert interacts)."""
    if with_mask is True:
        return mask_dec(cont_t)
    if with_mask is False:
        return None
    return mask_dec(cont_t[with_mask(action_t)])


def chosen_interactions(interaction_actions):
    """with_mask for a step: the rows whose chosen action (argmax) is one of the interaction
    actions (a bool [V] over the action vocabulary)."""
    return lambda action_logits: interaction_actions[action_logits.argmax(1)]


def check_batch(batch) -> int:
    """A loader batch (see workflow/README.md): every tensor agrees on B, and the per-step
    tensors on T. Returns B."""
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it needs {list(BATCH_KEYS)}")
    sizes = {key: batch[key].shape[0] for key in BATCH_KEYS}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch size mismatch between tensors: {sizes}")
    frames, actions, interact = batch["frames"], batch["actions"], batch["valid_interact"]
    if frames.dim() != 5 or tuple(frames.shape[2:]) != FRAME_SHAPE:
        raise ValueError(f"frames must be [B,T,{FRAME_DIMS}], got {tuple(frames.shape)}")
    if actions.shape != frames.shape[:2] or interact.shape != frames.shape[:2]:
        raise ValueError(
            f"frames {tuple(frames.shape[:2])}, actions {tuple(actions.shape)} and valid_interact "
            f"{tuple(interact.shape)} must agree on [B,T]"
        )
    return sizes["lang"]


def gather_steps(x, steps):
    """x [B,T,...], steps [B,T] bool -> x at the selected steps [N,...], row-major (b, t)."""
    return x[steps.bool()]


def encode_frames(vis_encoder, frames):
    """frames [B,T,512,7,7] -> vis_encoder features [B,T,F], in one call over the whole batch.
    Padding frames (zeros) are encoded too, as ALFRED's decoder encodes every step's frame: the
    outputs at padded steps, which no loss reads, then equal ALFRED's as well."""
    B, T = frames.shape[:2]
    return vis_encoder(frames.flatten(0, 1)).unflatten(0, (B, T))


def pad_mask(lengths, max_len: int):
    """lengths [B] -> [B,max_len] bool, True on real positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
