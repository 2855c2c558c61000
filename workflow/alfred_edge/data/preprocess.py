"""Preprocess one split: the selected trajectories of data/subset/<split>.json -> the store
described in store.py, written atomically (a killed job leaves only a hidden temporary
folder, never data/store/<split>/).

Language and actions follow ALFRED's data/preprocess.py: tokens by `tokenize` (revtok), ids
from the store's vocabulary (a word it lacks is read as <<pad>>, counted per split, see
vocab.py); a NoOp subgoal appended where high_pddl does not end in the planner's End, <<stop>>
appended to the low actions with the last subgoal's index, and where an annotation has one
instruction fewer than subgoals, the last two subgoals' actions merged as ALFRED merges them
(its issue #84). Frames: json_feat's one frame per low action plus the stop frame, or, from
full_2.1.0's one frame per image, ALFRED's selection (the first image of each low action,
then the file's last frame).

Bad input (a traj_data.json that is not JSON or lacks keys, a frame count that is neither
layout, a feat_conv.pt that is missing, truncated, of the wrong shape or holds NaN, a splits
entry whose folder does not exist) is skipped and listed in rejected.parquet with its path and
reason (on_bad_input="skip"), or stops the job naming the file ("fail"). The input tree is
only read."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from alfred_edge import atomic
from alfred_edge.data import store
from alfred_edge.data.tokenize import tokenize
from alfred_edge.data.vocab import ACTION_STOP, GOAL, NON_INTERACT, PAD, STOP_WORD, index, load_vocab

log = logging.getLogger("alfred_edge.data.preprocess")


class BadInput(Exception):
    """One trajectory cannot be used: `path` names the file (or folder), `reason` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


UNKNOWN_WORDS_LISTED = 100  # meta.json names this many of a split's words the vocabulary lacks


class StorageError(RuntimeError):
    pass


def read_traj(json_path: Path) -> dict:
    """Parse and check a train/valid traj_data.json (raises BadInput)."""
    if not json_path.parent.is_dir():
        raise BadInput(json_path.parent, "trajectory folder does not exist (named in the splits file)")
    try:
        traj = json.loads(json_path.read_bytes())
    except FileNotFoundError:
        raise BadInput(json_path, "traj_data.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(json_path, f"not valid JSON ({err})") from None
    try:
        lows, highs, anns = traj["plan"]["low_actions"], traj["plan"]["high_pddl"], traj["turk_annotations"]["anns"]
        for i, low in enumerate(lows):
            low["high_idx"], low["discrete_action"]["action"]
            if not low["discrete_action"]["action"].startswith(NON_INTERACT):
                low["discrete_action"]["args"]["mask"], low["discrete_action"]["args"]["bbox"]
        for high in highs:
            high["discrete_action"]["action"], high["high_idx"]
        highs[-1]["planner_action"]["action"]
        for ann in anns:
            ann["task_desc"], ann["high_descs"]
    except (KeyError, TypeError, IndexError) as err:
        raise BadInput(json_path, f"lacks key {err} (in plan.low_actions/high_pddl or turk_annotations)") from None
    if not lows:
        raise BadInput(json_path, "plan.low_actions is empty")
    return traj


def read_features(feat_path: Path, traj: dict):
    """float32 tensor [len(plan.low_actions)+1, 512, 7, 7], checked (raises BadInput): the
    file as is (json_feat), or ALFRED's frames of a full_2.1.0 file (`full_layout_frames`)."""
    import torch

    if not feat_path.exists():
        raise BadInput(feat_path, "feat_conv.pt is missing")
    try:
        feat = torch.load(feat_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError/EOFError/pickle errors for damaged files
        raise BadInput(feat_path, f"cannot be read (truncated or not a torch file): {type(err).__name__}: {err}") from None
    if not isinstance(feat, torch.Tensor):
        raise BadInput(feat_path, f"holds a {type(feat).__name__}, not a tensor")
    if feat.dim() != 4 or tuple(feat.shape[1:]) != store.FRAME_SHAPE:
        raise BadInput(feat_path, f"has shape {list(feat.shape)}, expected [n_frames, 512, 7, 7]")
    n_steps = len(traj["plan"]["low_actions"]) + 1
    if feat.shape[0] != n_steps:
        feat = feat[full_layout_frames(feat_path, feat.shape[0], traj)]
    low, high = torch.aminmax(feat)  # NaN and +-inf show in these (one fast pass; isfinite is slower)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise BadInput(feat_path, "holds NaN or infinite values")
    return feat.float()


def full_layout_frames(feat_path: Path, n_frames: int, traj: dict) -> list[int]:
    """The frames ALFRED's featurize keeps from a full_2.1.0 feat_conv.pt (one frame per entry
    of `images`, then copies of the last): the first image of each low action, then the file's
    last frame as the stop frame. Raises BadInput when the file fits neither layout: a full
    trajectory's images outnumber its steps (filler frames of smooth moves), and the file has a
    frame for each."""
    n_low = len(traj["plan"]["low_actions"])
    images = traj.get("images") or []
    expected = f"has {n_frames} frames, expected json_feat's len(plan.low_actions)+1 = {n_low + 1}"
    if len(images) <= n_low + 1:
        raise BadInput(feat_path, f"{expected} (its images list no filler frames, so it is no full_2.1.0 file)")
    if n_frames < len(images):
        raise BadInput(feat_path, f"{expected} or full_2.1.0's one per entry of images (at least {len(images)})")
    first = {}
    for i, image in enumerate(images):
        first.setdefault(image.get("low_idx") if isinstance(image, dict) else None, i)
    missing = [t for t in range(n_low) if t not in first]
    if missing:
        raise BadInput(feat_path, f"has {n_frames} frames (full_2.1.0 layout) but images name no frame "
                                  f"for low actions {missing[:5]}")
    return [first[t] for t in range(n_low)] + [n_frames - 1]


def to_store_dtype(feat, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 tensor -> (frames in the store dtype, per-channel scale for uint8 else None)."""
    import torch

    if dtype == "uint8":
        return store.quantize_uint8(feat.numpy())
    return feat.to(getattr(torch, dtype)).contiguous().numpy(), None


def _words(text: str, word_index: dict[str, int], unknown: list[str]) -> list[int]:
    """Word ids of `text`; words the vocabulary lacks are read as <<pad>> and added to `unknown`."""
    ids = []
    for word in tokenize(text):
        if word not in word_index:
            unknown.append(word)
        ids.append(word_index.get(word, PAD))
    return ids


def subgoal_of_steps(traj: dict, n_instructions: int, json_path: Path) -> np.ndarray:
    """The subgoal index of every step (low actions, then <<stop>>) as ALFRED's preprocessing
    aligns them with an annotation of `n_instructions` instructions: high_pddl ends in a NoOp
    subgoal (appended where the planner's End is missing), <<stop>> takes the last subgoal's
    index, and where there is one subgoal more than instructions (plus <<stop>>) the
    second-to-last subgoal's actions join the one before it, while <<stop>> keeps the last
    index (ALFRED's issue #84: e.g. ...11, 11, 12, 12, 13 -> ...11, 11, 11, 11, 13).
    (ALFRED's progress-monitor target reads the indices before this merge, `low_to_high_idx`;
    the store keeps the merged ones, which align the actions with the instructions.)"""
    lows, highs = traj["plan"]["low_actions"], traj["plan"]["high_pddl"]
    n_subgoals = len(highs) + (highs[-1]["planner_action"]["action"] != "End")
    steps = [low["high_idx"] for low in lows] + [n_subgoals - 1]
    if any(not isinstance(h, int) or not 0 <= h < n_subgoals for h in steps):
        raise BadInput(json_path, f"a low action's high_idx lies outside the {n_subgoals} subgoals")
    if any(b < a for a, b in zip(steps, steps[1:])):
        raise BadInput(json_path, "the low actions' high_idx decrease (ALFRED groups actions by subgoal)")
    extra = n_subgoals - (n_instructions + 1)
    if extra not in (0, 1):
        raise BadInput(json_path, f"{n_subgoals} subgoals for {n_instructions} instructions (ALFRED allows one extra)")
    steps = np.array(steps, dtype=np.int16)
    if extra:
        merged, before = n_subgoals - 2, n_subgoals - 3
        if not (steps == before).any():
            raise BadInput(json_path, f"subgoal {before} has no actions to merge subgoal {merged} into")
        steps[steps == merged] = before
    return steps


def annotation_rows(traj: dict, repeat_idx: list[int], vocab: dict, traj_idx: int, task: str,
                    json_path: Path, unknown_words: list[str]) -> list[dict]:
    """One row per annotation (columns: store.ANNOTATION_COLUMNS), numbered as ALFRED's
    preprocessing numbers it; words the vocabulary lacks are appended to `unknown_words`."""
    word_index, action_index = index(vocab["word"]), index(vocab["action_low"])
    lows = traj["plan"]["low_actions"]
    names = [low["discrete_action"]["action"] for low in lows]
    unknown = sorted(set(names) - set(action_index))
    if unknown:
        raise BadInput(json_path, f"low actions {unknown} are not in the training vocabulary")
    actions = [action_index[n] for n in names] + [ACTION_STOP]
    interact = [not n.startswith(NON_INTERACT) for n in names] + [False]
    args = [low["discrete_action"]["args"] for low, keep in zip(lows, interact) if keep]
    runs = [np.asarray(a["mask"], dtype=np.int32).reshape(-1, 2) for a in args]
    stop_word = word_index[STOP_WORD]
    anns = traj["turk_annotations"]["anns"]
    rows = []
    for r in repeat_idx:
        if r >= len(anns):
            raise BadInput(json_path, f"the splits file names annotation {r}, the file has {len(anns)}")
        ann = anns[r]
        instr = [_words(d, word_index, unknown_words) for d in ann["high_descs"]] + [[stop_word]]
        rows.append({
            "traj_idx": traj_idx, "task": task, "repeat_idx": r,
            "lang_goal": np.array(_words(ann["task_desc"], word_index, unknown_words) + [GOAL], dtype=np.int32),
            "lang_instr": np.array([w for ws in instr for w in ws], dtype=np.int32),
            "instr_lengths": np.array([len(ws) for ws in instr], dtype=np.int32),
            "actions": np.array(actions, dtype=np.int16),
            "high_idx": subgoal_of_steps(traj, len(ann["high_descs"]), json_path),
            "valid_interact": np.array(interact, dtype=bool),
            "mask_rle": np.concatenate(runs).reshape(-1) if runs else np.zeros(0, np.int32),
            "mask_pairs": np.array([len(x) for x in runs], dtype=np.int32),
            "bboxes": np.array([a["bbox"] for a in args], dtype=np.int16).reshape(-1),
        })
    return rows


def check_storage(out_dir: Path, planned_bytes: int, budget_bytes: int) -> None:
    """Refuse (before writing anything) when this store plus the other stores already
    written would exceed the budget, or when the file system lacks the space."""
    parent = out_dir.parent
    others = sum(f.stat().st_size for d in parent.glob("*") if d.is_dir() and d.name != out_dir.name
                 and not d.name.startswith(".") for f in d.rglob("*") if f.is_file()) if parent.exists() else 0
    if others + planned_bytes > budget_bytes:
        raise StorageError(
            f"{out_dir}: the store needs {planned_bytes / 1e9:.2f} GB and the other stores take "
            f"{others / 1e9:.2f} GB, over storage.budget_gb = {budget_bytes / 1e9:.2f} GB; lower "
            f"data.subset (or use data.subset.mode: budget, or data.store_dtype: uint8). See reports/storage_plan.md")
    probe = parent if parent.exists() else Path(".")
    free = shutil.disk_usage(probe).free
    if planned_bytes > free:
        raise StorageError(f"{out_dir}: the store needs {planned_bytes / 1e9:.2f} GB, the file system "
                           f"holding {probe.resolve()} has {free / 1e9:.2f} GB free")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary folders a killed run of this job left beside its target."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _read_ahead(load, entries: list[dict], workers: int = 2, depth: int = 4):
    """Yield (entry, future of load(entry)) in order, with up to `depth` loads running ahead
    on `workers` threads (two threads measured twice as fast as one, benchmarks/bench_data.py)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for entry in entries:
            pending.append((entry, pool.submit(load, entry)))
            if len(pending) > depth:
                yield pending.popleft()
        while pending:
            yield pending.popleft()


def preprocess_split(split: str, subset_path: Path, vocab_path: Path, root: Path, out_dir: Path,
                     dtype: str, on_bad_input: str, planned_bytes: int, budget_bytes: int,
                     progress: bool = True) -> dict:
    """Write data/store/<split>/; returns its meta.json content."""
    from tqdm import tqdm

    subset = json.loads(Path(subset_path).read_text())
    vocab = load_vocab(vocab_path)
    out_dir, root = Path(out_dir), Path(root)
    check_storage(out_dir, planned_bytes, budget_bytes)
    if out_dir.parent.exists():
        _remove_stale_temporaries(out_dir)

    def load(entry: dict):
        """Everything one trajectory contributes (run ahead in threads: reading and
        converting release the GIL, so the next files load while this one is written)."""
        folder = root / split / entry["task"]
        traj = read_traj(folder / "traj_data.json")
        unknown = []
        rows = annotation_rows(traj, entry["repeat_idx"], vocab, -1, entry["task"], folder / "traj_data.json", unknown)
        feat = read_features(folder / "feat_conv.pt", traj)
        return rows, unknown, *to_store_dtype(feat, dtype), (folder / "feat_conv.pt").stat().st_size

    trajectories, annotations, rejected, unknown_words = [], [], [], []
    n_frames, raw_bytes, scales = 0, 0, []
    with atomic.atomic_path(out_dir, directory=True) as tmp, open(tmp / store.FRAMES, "wb") as frames_file:
        frames_file.write(store.npy_header(dtype, 0))
        loaded = _read_ahead(load, subset["trajectories"])
        for entry, result in tqdm(loaded, total=len(subset["trajectories"]), desc=f"preprocess {split}",
                                  unit="traj", disable=not progress):
            try:
                rows, unknown, frames, scale, feat_bytes = result.result()
            except BadInput as bad:
                if on_bad_input == "fail":
                    raise
                rejected.append({"split": split, "task": entry["task"], "path": str(bad.path), "reason": bad.reason})
                continue
            frames_file.write(memoryview(frames).cast("B"))
            if scale is not None:
                scales.append(scale)
            for row in rows:
                row["traj_idx"] = len(trajectories)
            trajectories.append({"traj_idx": len(trajectories), "task": entry["task"],
                                 "task_type": entry["task_type"], "frame_offset": n_frames,
                                 "n_frames": len(frames), "n_low_actions": len(frames) - 1})
            annotations += rows
            unknown_words += unknown
            n_frames += len(frames)
            raw_bytes += feat_bytes
        frames_file.seek(0)
        frames_file.write(store.npy_header(dtype, n_frames))
        frames_file.close()
        if dtype == "uint8":
            np.save(tmp / store.SCALES, np.stack(scales) if scales else np.zeros((0, 512), np.float32))
        atomic.write_parquet(pd.DataFrame(trajectories, columns=["traj_idx", "task", "task_type", "frame_offset",
                                                                 "n_frames", "n_low_actions"]), tmp / store.TRAJECTORIES)
        atomic.write_parquet(pd.DataFrame(annotations, columns=list(store.ANNOTATION_COLUMNS)), tmp / store.ANNOTATIONS)
        atomic.write_parquet(pd.DataFrame(rejected, columns=["split", "task", "path", "reason"]), tmp / store.REJECTED)
        meta = {
            "split": split, "dtype": dtype, "frame_shape": list(store.FRAME_SHAPE),
            "n_trajectories": len(trajectories), "n_annotations": len(annotations), "n_frames": n_frames,
            "n_rejected": len(rejected), "raw_feature_bytes": raw_bytes,
            "frames_bytes": (tmp / store.FRAMES).stat().st_size,
            "vocab_sha256": hashlib.sha256(Path(vocab_path).read_bytes()).hexdigest(),
            "vocab_sizes": {kind: len(tokens) for kind, tokens in vocab.items()},
            "n_word_tokens": sum(len(r["lang_goal"]) + len(r["lang_instr"]) for r in annotations),
            "n_unknown_word_tokens": len(unknown_words),
            "unknown_words": sorted(set(unknown_words))[:UNKNOWN_WORDS_LISTED],
        }
        atomic.write_text(tmp / store.META, json.dumps(meta, indent=1))
    if rejected:
        log.warning("%s: %d trajectories rejected (listed in %s)", split, len(rejected), out_dir / store.REJECTED)
    if unknown_words:
        log.warning("%s: %d of %d word tokens (%d distinct words, e.g. %s) are not in %s and are read as <<pad>>",
                    split, len(unknown_words), meta["n_word_tokens"], len(set(unknown_words)),
                    meta["unknown_words"][:5], vocab_path)
    log.info("%s: %d trajectories, %d annotations, %d frames (%s)", split, len(trajectories),
             len(annotations), n_frames, dtype)
    return meta
