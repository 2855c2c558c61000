"""The compact store of one split, `data/store/<split>/` (written by `preprocess`):

    frames.npy            [n_frames, 512, 7, 7] float16 | uint8 | float32, every selected
                          trajectory's frames back to back (np.load(..., mmap_mode="r"))
    scales.npy            uint8 only: [n_trajectories, 512] float32, frame = uint8 * scale
                          (per trajectory and channel: the channel's max / 255)
    trajectories.parquet  one row per trajectory: traj_idx, task, task_type, frame_offset,
                          n_frames, n_low_actions
    annotations.parquet   one row per (trajectory, annotation), see ANNOTATION_COLUMNS
    rejected.parquet      trajectories left out: split, task, path, reason
    meta.json             split, dtype, counts, byte sizes, vocab digest, the words the
                          vocabulary lacks (read as <<pad>>)

Reading one trajectory touches only its rows of the memory map."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from alfred_edge.data.dataset import FRAME_SHAPE

MASK_SIZE = 300  # ALFRED's frames and interaction masks are 300x300
FRAME_VALUES = math.prod(FRAME_SHAPE)
FRAMES, SCALES, META = "frames.npy", "scales.npy", "meta.json"
TRAJECTORIES, ANNOTATIONS, REJECTED = "trajectories.parquet", "annotations.parquet", "rejected.parquet"
DTYPES = {"float16": np.float16, "uint8": np.uint8, "float32": np.float32}
# Per-row columns of annotations.parquet (lists are stored flat):
ANNOTATION_COLUMNS = {
    "traj_idx": "row of trajectories.parquet",
    "task": "task path relative to the split folder",
    "repeat_idx": "annotation index (turk_annotations.anns[repeat_idx])",
    "lang_goal": "word ids of the goal, ending in <<goal>>",
    "lang_instr": "word ids of all instructions back to back, ending in <<stop>>",
    "instr_lengths": "number of ids per instruction (the last, 1, is <<stop>>)",
    "actions": "action_low ids per step, ending in <<stop>> (length n_frames)",
    "high_idx": "subgoal index per step, aligned with the instructions as ALFRED merges them (preprocess.subgoal_of_steps)",
    "valid_interact": "True where the step is an interaction (has a mask)",
    "mask_rle": "ALFRED run-length masks of the interaction steps, flat [start, length] pairs",
    "mask_pairs": "number of (start, length) pairs per interaction step",
    "bboxes": "[x1, y1, x2, y2] per interaction step, flat",
}
NPY_HEADER_BYTES = 128  # fixed, so the header can be rewritten once the frame count is known
# Bytes the tables take per trajectory, beyond its frames: a planning estimate, mostly the
# run-length masks once per annotation, set above what ALFRED's sample takes so that the
# plan errs on the safe side.
TABLE_BYTES_PER_TRAJECTORY = 16 * 1024


def frame_bytes(dtype: str) -> int:
    return FRAME_VALUES * np.dtype(DTYPES[dtype]).itemsize


def planned_store_bytes(n_frames: int, n_trajectories: int, dtype: str) -> int:
    """Bytes a split's store takes: frames, scales (uint8) and tables (estimated)."""
    scales = n_trajectories * FRAME_SHAPE[0] * 4 if dtype == "uint8" else 0
    return NPY_HEADER_BYTES + n_frames * frame_bytes(dtype) + scales + n_trajectories * TABLE_BYTES_PER_TRAJECTORY


def npy_header(dtype: str, n_frames: int) -> bytes:
    """A version 1.0 .npy header of exactly NPY_HEADER_BYTES bytes."""
    descr = np.lib.format.dtype_to_descr(np.dtype(DTYPES[dtype]))
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, (n_frames, *FRAME_SHAPE))
    body_len = NPY_HEADER_BYTES - 10
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise ValueError(f"npy header too long for {n_frames} frames")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + text.encode("latin1")


def open_frames(store_dir: str | Path) -> np.ndarray:
    return np.load(Path(store_dir) / FRAMES, mmap_mode="r")


def read_meta(store_dir: str | Path) -> dict:
    return json.loads((Path(store_dir) / META).read_text())


def dequantize(frames: np.ndarray, scale: np.ndarray | None):
    """Stored frames [n,512,7,7] (e.g. a slice of the memory map) -> a new float32 torch
    tensor; `scale` [512] for uint8 stores. Converts with torch, whose float16 -> float32
    conversion is the faster one."""
    import warnings

    import torch

    with warnings.catch_warnings():  # a read-only memory map: copied by .to() before any write
        warnings.simplefilter("ignore", UserWarning)
        out = torch.from_numpy(frames).to(torch.float32, copy=True)
    if scale is not None:
        out.mul_(torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32))[None, :, None, None])
    return out


def quantize_uint8(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n,512,7,7] (non-negative) -> (uint8 frames, float32 scale [512])."""
    peak = frames.max(axis=(0, 2, 3))
    scale = np.where(peak > 0, peak / 255.0, 1.0).astype(np.float32)
    q = np.rint(frames / scale[None, :, None, None])
    return np.clip(q, 0, 255).astype(np.uint8), scale
