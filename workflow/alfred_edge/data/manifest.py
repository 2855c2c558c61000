"""The manifest: one row per trajectory of the configured splits, from the splits file and
the file system only (os.stat; no feature tensor and no JSON is read), so it costs about a
second at ALFRED scale. Frames = feat_conv.pt size // 100,352 (one float32 512x7x7 frame;
the torch container adds less than a frame); low actions = frames - 1, verified when the
trajectory is preprocessed. A full_2.1.0 file holds a frame per image, several per low action,
of which the store keeps one per low action (preprocess.full_layout_frames): for such a tree
the plan overestimates the store."""
from __future__ import annotations

import json
import os
from pathlib import Path

from alfred_edge.data.synthetic import FRAME_BYTES

COLUMNS = ["split", "task", "task_type", "n_annotations", "repeat_idx", "n_frames", "n_low_actions",
           "feat_bytes", "json_bytes", "problem"]


def read_splits(splits_file: str | Path) -> dict[str, list[dict]]:
    """ALFRED's splits file, {split: [{"repeat_idx": int, "task": str}, ...]}, checked entry by
    entry (a ValueError names the file, the split and the entry)."""
    path = Path(splits_file)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"data.splits_file: {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"data.splits_file: {path} is not valid JSON ({err})") from None
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ValueError(f"data.splits_file: {path} is not an ALFRED splits file ({{split: [{{repeat_idx, task}}]}})")
    for split, entries in splits.items():
        for i, entry in enumerate(entries):
            if not (isinstance(entry, dict) and isinstance(entry.get("task"), str) and entry["task"]
                    and isinstance(entry.get("repeat_idx"), int) and not isinstance(entry["repeat_idx"], bool)
                    and entry["repeat_idx"] >= 0):
                raise ValueError(f"data.splits_file: {path}: entry {i} of {split!r} is {entry!r}, expected "
                                 '{"repeat_idx": <annotation number>, "task": "<task folder>/<trial>"}')
    return splits


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def scan_tree(root: str | Path, splits_file: str | Path, splits: list[str]) -> list[dict]:
    """Manifest rows (COLUMNS) of `splits`, in splits-file order."""
    entries = read_splits(splits_file)
    unknown = [s for s in splits if s not in entries]
    if unknown:
        raise ValueError(f"data.splits: {unknown} not in {splits_file} (it has {sorted(entries)})")
    empty = [s for s in splits if not entries[s]]
    if empty:
        raise ValueError(f"data.splits: {empty} have no entries in {splits_file}")
    rows = []
    for split in splits:
        repeats: dict[str, list[int]] = {}
        for entry in entries[split]:
            repeats.setdefault(entry["task"], []).append(entry["repeat_idx"])
        if not any(os.path.isdir(f"{root}/{split}/{task}") for task in repeats):
            raise ValueError(f"data.source: {root}/{split} holds none of the {len(repeats)} trajectories that "
                             f"{splits_file} names for {split!r}")
        for task, repeat_idx in repeats.items():
            folder = f"{root}/{split}/{task}"
            feat, meta = _size(f"{folder}/feat_conv.pt"), _size(f"{folder}/traj_data.json")
            problem = ""
            if feat is None or meta is None:
                problem = ("trajectory folder does not exist (named in the splits file)" if not os.path.isdir(folder)
                           else "feat_conv.pt is missing" if feat is None else "traj_data.json is missing")
            n_frames = (feat or 0) // FRAME_BYTES
            rows.append(dict(split=split, task=task, task_type=task.split("/")[0].split("-")[0],
                             n_annotations=len(repeat_idx), repeat_idx=sorted(repeat_idx), n_frames=n_frames,
                             n_low_actions=max(n_frames - 1, 0), feat_bytes=feat or 0, json_bytes=meta or 0,
                             problem=problem))
    return rows


def split_stamp(root: str | Path, rows: list[dict]) -> str:
    """Digest of what a split's manifest rows were read from: each trajectory's task and
    annotations and the size and modification time of its two files. It changes when a
    trajectory is added, removed, repaired or touched, so that its split's data jobs rerun."""
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        folder = f"{root}/{row['split']}/{row['task']}"
        stats = []
        for name in ("traj_data.json", "feat_conv.pt"):
            try:
                stat = os.stat(f"{folder}/{name}")
                stats.append((stat.st_size, stat.st_mtime_ns))
            except FileNotFoundError:
                stats.append(None)
        digest.update(repr((row["task"], row["repeat_idx"], stats)).encode())
    return digest.hexdigest()[:16]
