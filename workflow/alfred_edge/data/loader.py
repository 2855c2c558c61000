"""Training batches from a store (see store.py).

    ds = StoreDataset("data/store/train")      # one item per (trajectory, annotation)
    batch = collate([ds[i] for i in range(8)])
    masks = decode_masks(batch)                # [N_interact, 300, 300], on demand

Batch keys (B items, L = longest language, T = longest trajectory incl. the stop frame):
    lang            [B, L] long   goal ids ... <<goal>>, instruction ids ..., <<stop>>; 0 = pad
    lang_lengths    [B]    long
    frames          [B, T, 512, 7, 7] float32, zero after frame_lengths
    frame_lengths   [B]    long   = number of actions incl. <<stop>>
    actions         [B, T] long   action_low ids ending in <<stop>>, 0 (<<pad>>) after
    valid_interact  [B, T] bool   interaction steps (each has a mask and a bbox)
    high_idx        [B, T] long   subgoal index per step, 0 after
    bboxes          [N_interact, 4] long  [x1, y1, x2, y2] in 300x300 pixels, in the order of
                                  batch["valid_interact"].nonzero() (item, then step)
    mask_rle        list of N_interact int32 arrays [n_runs, 2] (ALFRED's run-length codes),
                                  same order; decode_masks(batch) -> [N_interact, 300, 300]
    task            list of B task paths;  repeat_idx [B] long
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from alfred_edge.data import store
from alfred_edge.data.store import MASK_SIZE


def read_annotations(path: Path, first: int | None = None) -> pa.Table:
    """annotations.parquet, whole or only its first `first` rows. Those are read page by page,
    so the memory they take follows the rows kept, not the file: a benchmark of batch B holds
    the same RAM whatever the store's size (a whole read grows pyarrow's allocator with the
    table, several times its size)."""
    if first is None:
        return pq.read_table(path)
    parquet = pq.ParquetFile(path)
    batch = next(parquet.iter_batches(batch_size=first, use_threads=False), None)
    return parquet.schema_arrow.empty_table() if batch is None else pa.Table.from_batches([batch])


class StoreDataset(Dataset):
    """One split's store; items are annotations, frames come from the memory map.
    `annotations` is a pyarrow Table (rows are read one at a time), `trajectories` a dict of
    columns: pyarrow alone, as the standalone benchmark runner on a board has no pandas.
    With `first`, only the first `first` annotations are read (see read_annotations)."""

    def __init__(self, store_dir: str | Path, first: int | None = None):
        self.store_dir = Path(store_dir)
        if not (self.store_dir / store.META).exists():
            raise FileNotFoundError(f"{self.store_dir}: not a store (no {store.META}); run the preprocess rule")
        self.meta = store.read_meta(self.store_dir)
        self.trajectories = pq.read_table(self.store_dir / store.TRAJECTORIES).to_pydict()
        self.annotations = read_annotations(self.store_dir / store.ANNOTATIONS, first)
        self._offsets = np.asarray(self.trajectories["frame_offset"], dtype=np.int64)
        self._lengths = np.asarray(self.trajectories["n_frames"], dtype=np.int64)
        self._frames = None  # opened lazily, so that DataLoader workers open their own map
        self._scales = None

    def __len__(self) -> int:
        return self.annotations.num_rows

    def trajectory_frames(self, traj_idx: int) -> torch.Tensor:
        """float32 [n_frames, 512, 7, 7] of one trajectory (reads only its rows)."""
        if self._frames is None:
            self._frames = store.open_frames(self.store_dir)
        if self._scales is None and self.meta["dtype"] == "uint8":
            self._scales = np.load(self.store_dir / store.SCALES, mmap_mode="r")
        start = int(self._offsets[traj_idx])
        rows = self._frames[start:start + int(self._lengths[traj_idx])]
        scale = None if self._scales is None else np.asarray(self._scales[traj_idx])
        return store.dequantize(rows, scale)

    def __getitem__(self, i: int) -> dict:
        row = self.annotations.slice(i, 1).to_pylist()[0]
        pairs = np.asarray(row["mask_pairs"], dtype=np.int64)
        runs = np.asarray(row["mask_rle"], dtype=np.int32).reshape(-1, 2)
        return {
            "lang": torch.from_numpy(np.concatenate([row["lang_goal"], row["lang_instr"]]).astype(np.int64)),
            "frames": self.trajectory_frames(int(row["traj_idx"])),
            "actions": torch.as_tensor(np.asarray(row["actions"], dtype=np.int64)),
            "valid_interact": torch.as_tensor(np.asarray(row["valid_interact"], dtype=bool)),
            "high_idx": torch.as_tensor(np.asarray(row["high_idx"], dtype=np.int64)),
            "bboxes": torch.as_tensor(np.asarray(row["bboxes"], dtype=np.int64).reshape(-1, 4)),
            "mask_rle": np.split(runs, np.cumsum(pairs)[:-1]) if len(pairs) else [],
            "task": row["task"],
            "repeat_idx": int(row["repeat_idx"]),
        }


def _pad(seqs: list[torch.Tensor], length: int) -> torch.Tensor:
    """[B, length, ...], zero after each sequence (only the padding is zero-filled: a full
    torch.zeros of a frames batch costs as much as the copy)."""
    out = torch.empty((len(seqs), length) + tuple(seqs[0].shape[1:]), dtype=seqs[0].dtype)
    for b, seq in enumerate(seqs):
        out[b, :len(seq)] = seq
        out[b, len(seq):] = 0
    return out


def collate(items: list[dict]) -> dict:
    lang_lengths = torch.tensor([len(it["lang"]) for it in items])
    frame_lengths = torch.tensor([len(it["actions"]) for it in items])
    T = int(frame_lengths.max())
    return {
        "lang": _pad([it["lang"] for it in items], int(lang_lengths.max())),
        "lang_lengths": lang_lengths,
        "frames": _pad([it["frames"] for it in items], T),
        "frame_lengths": frame_lengths,
        "actions": _pad([it["actions"] for it in items], T),
        "valid_interact": _pad([it["valid_interact"] for it in items], T),
        "high_idx": _pad([it["high_idx"] for it in items], T),
        "bboxes": torch.cat([it["bboxes"] for it in items]) if items else torch.zeros(0, 4, dtype=torch.long),
        "mask_rle": [rle for it in items for rle in it["mask_rle"]],
        "task": [it["task"] for it in items],
        "repeat_idx": torch.tensor([it["repeat_idx"] for it in items]),
    }


def decode_rle(rle: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """ALFRED's decompress_mask: [[start, length], ...] over the row-major size x size image -> bool [size, size]."""
    flat = np.zeros(size * size, dtype=bool)
    for start, length in np.asarray(rle).reshape(-1, 2):
        flat[start:start + length] = True
    return flat.reshape(size, size)


def decode_masks(batch: dict) -> torch.Tensor:
    """float32 [N_interact, 300, 300] in the order of batch["valid_interact"].nonzero()."""
    if not batch["mask_rle"]:
        return torch.zeros(0, MASK_SIZE, MASK_SIZE)
    return torch.from_numpy(np.stack([decode_rle(rle) for rle in batch["mask_rle"]]).astype(np.float32))
