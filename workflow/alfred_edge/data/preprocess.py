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
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from alfred_edge import atomic
from alfred_edge.data import store
from alfred_edge.data.budget import reservation
from alfred_edge.data.dataset import FRAME_SHAPE
from alfred_edge.data.tokenize import tokenize
from alfred_edge.data.vocab import ACTION_STOP, GOAL, NON_INTERACT, PAD, STOP_WORD, index, load_vocab
from alfred_edge.joblog import JobError

log = logging.getLogger("alfred_edge.data.preprocess")


class BadInput(JobError):
    """One trajectory cannot be used: `path` names the file (or folder), `reason` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


UNKNOWN_WORDS_LISTED = 100  # meta.json names this many of a split's words the vocabulary lacks


def read_traj(json_path: Path) -> dict:
    """Parse and check a train/valid traj_data.json (raises BadInput): the keys preprocessing
    reads, with the types it needs."""
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
            _expect(json_path, f"plan.low_actions[{i}].high_idx", low["high_idx"], int)
            action = _expect(json_path, f"plan.low_actions[{i}].discrete_action.action",
                             low["discrete_action"]["action"], str)
            if not action.startswith(NON_INTERACT):
                low["discrete_action"]["args"]["mask"], low["discrete_action"]["args"]["bbox"]
        for i, high in enumerate(highs):
            _expect(json_path, f"plan.high_pddl[{i}].discrete_action.action", high["discrete_action"]["action"], str)
            _expect(json_path, f"plan.high_pddl[{i}].high_idx", high["high_idx"], int)
        highs[-1]["planner_action"]["action"]
        for r, ann in enumerate(anns):
            _expect(json_path, f"turk_annotations.anns[{r}].task_desc", ann["task_desc"], str)
            for d, desc in enumerate(_expect(json_path, f"turk_annotations.anns[{r}].high_descs", ann["high_descs"], list)):
                _expect(json_path, f"turk_annotations.anns[{r}].high_descs[{d}]", desc, str)
    except (KeyError, TypeError, IndexError) as err:
        raise BadInput(json_path, f"lacks key {err} (in plan.low_actions/high_pddl or turk_annotations)") from None
    if not lows:
        raise BadInput(json_path, "plan.low_actions is empty")
    return traj


def _expect(json_path: Path, where: str, value, kind: type):
    """value if it is a `kind` (a bool is no int), else BadInput naming the key."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(json_path, f"{where} is {value!r}, not {'an integer' if kind is int else 'a ' + kind.__name__}")
    return value


def mask_runs(mask, json_path: Path, step: int) -> np.ndarray:
    """ALFRED's run-length mask [[start, length], ...] over the 300x300 frame as int32 [n, 2]
    (raises BadInput when it is not one)."""
    try:
        runs = np.array(mask)
    except ValueError:  # ragged lists
        runs = None
    if not (runs is not None and runs.ndim == 2 and runs.shape[1] == 2 and len(runs) and runs.dtype.kind in "iu"
            and (runs[:, 0] >= 0).all() and (runs[:, 1] >= 1).all() and (runs.sum(1) <= store.MASK_SIZE ** 2).all()):
        raise BadInput(json_path, f"plan.low_actions[{step}]'s mask is not run-length pairs [start, length] "
                                  f"within {store.MASK_SIZE}x{store.MASK_SIZE} pixels")
    return runs.astype(np.int32)


def bbox_corners(bbox, json_path: Path, step: int) -> list[int]:
    """[x1, y1, x2, y2]; ALFRED's 'NULL' corners are -1, as its preprocessing reads them."""
    corners = [-1 if v == "NULL" else v for v in bbox] if isinstance(bbox, list) else None
    if corners is None or len(corners) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and -1 <= v <= store.MASK_SIZE for v in corners):
        raise BadInput(json_path, f"plan.low_actions[{step}]'s bbox is {bbox!r}, not [x1, y1, x2, y2] in pixels")
    return [int(v) for v in corners]


def read_features(feat_path: Path, traj: dict):
    """(float32 tensor [len(plan.low_actions)+1, 512, 7, 7], the file's dtype), checked
    (raises BadInput): the file as is (json_feat), or ALFRED's frames of a full_2.1.0 file
    (`full_layout_frames`). Other float dtypes are converted; integer ones are refused."""
    import torch

    if not feat_path.exists():
        raise BadInput(feat_path, "feat_conv.pt is missing")
    try:
        feat = torch.load(feat_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError/EOFError/pickle errors for damaged files
        raise BadInput(feat_path, f"cannot be read (truncated or not a torch file): {type(err).__name__}: {err}") from None
    if not isinstance(feat, torch.Tensor):
        raise BadInput(feat_path, f"holds a {type(feat).__name__}, not a tensor")
    if not feat.is_floating_point():
        raise BadInput(feat_path, f"holds {str(feat.dtype).removeprefix('torch.')} values, expected float32 features")
    if feat.dim() != 4 or tuple(feat.shape[1:]) != FRAME_SHAPE:
        raise BadInput(feat_path, f"has shape {list(feat.shape)}, expected [n_frames, {', '.join(map(str, FRAME_SHAPE))}]")
    n_steps = len(traj["plan"]["low_actions"]) + 1
    if feat.shape[0] != n_steps:
        feat = feat[full_layout_frames(feat_path, feat.shape[0], traj)]
    low, high = torch.aminmax(feat.detach())  # NaN and +-inf show in these (one fast pass; isfinite is slower)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise BadInput(feat_path, "holds NaN or infinite values")
    return feat.detach().float(), str(feat.dtype).removeprefix("torch.")


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


def to_store_dtype(feat, dtype: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """float32 tensor -> (frames in the store dtype, per-channel scale for uint8 else None,
    values clipped: the negative ones, which uint8 cannot hold)."""
    import torch

    if dtype == "uint8":
        return *store.quantize_uint8(feat.numpy()), int((feat < 0).sum())
    return feat.to(getattr(torch, dtype)).contiguous().numpy(), None, 0


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
        raise BadInput(json_path, f"low actions {unknown} are not in the store's vocabulary (vocab.json)")
    actions = [action_index[n] for n in names] + [ACTION_STOP]
    interact = [not n.startswith(NON_INTERACT) for n in names] + [False]
    steps = [t for t, keep in enumerate(interact) if keep]
    args = [lows[t]["discrete_action"]["args"] for t in steps]
    runs = [mask_runs(a["mask"], json_path, t) for a, t in zip(args, steps)]
    bboxes = [bbox_corners(a["bbox"], json_path, t) for a, t in zip(args, steps)]
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
            "bboxes": np.array(bboxes, dtype=np.int16).reshape(-1),
        })
    return rows


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary folders a killed run of this job left beside its target."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _read_ahead(load, entries: list[dict], workers: int = 2, depth: int = 4):
    """Yield (entry, future of load(entry)) in order, with up to `depth` loads running ahead
    on `workers` threads: reading a file and torch's decoding of it release the GIL, so two
    threads overlap one file's read with another's decoding."""
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
    """Write data/store/<split>/; returns its meta.json content. Raises BadInput (fail), or
    JobError when the split has no trajectory to store."""
    subset = json.loads(Path(subset_path).read_text())
    vocab = load_vocab(vocab_path)
    out_dir, root = Path(out_dir), Path(root)
    if not subset["trajectories"]:
        raise JobError(f"{split}: {subset_path} selects no trajectory (data.subset, or the splits file)")
    with reservation(out_dir, planned_bytes, budget_bytes):
        _remove_stale_temporaries(out_dir)
        meta = _write_store(split, subset, vocab, vocab_path, root, out_dir, dtype, on_bad_input, progress)
    if meta["n_rejected"]:
        log.warning("%s: %d trajectories rejected (listed in %s)", split, meta["n_rejected"], out_dir / store.REJECTED)
    if meta["n_unknown_word_tokens"]:
        log.warning("%s: %d of %d word tokens are not in %s and are read as <<pad>> (e.g. %s)", split,
                    meta["n_unknown_word_tokens"], meta["n_word_tokens"], vocab_path, meta["unknown_words"][:5])
    for source, count in meta["converted_features"].items():
        log.warning("%s: %d feat_conv.pt files hold %s values, converted to float32", split, count, source)
    if meta["uint8_clipped_values"]:
        log.warning("%s: %d negative feature values clipped to 0 in the uint8 store (largest error %.3g); "
                    "data.store_dtype float16 keeps them", split, meta["uint8_clipped_values"], meta["uint8_largest_clip"])
    log.info("%s: %d trajectories, %d annotations, %d frames (%s)", split, meta["n_trajectories"],
             meta["n_annotations"], meta["n_frames"], dtype)
    return meta


def load_trajectory(folder: Path, entry: dict, vocab: dict, dtype: str) -> dict:
    """Everything one trajectory contributes to the store; any flaw of its files, foreseen or
    not, is a BadInput naming the file (or the folder)."""
    json_path, feat_path = folder / "traj_data.json", folder / "feat_conv.pt"
    try:
        traj = read_traj(json_path)
        unknown = []
        rows = annotation_rows(traj, entry["repeat_idx"], vocab, -1, entry["task"], json_path, unknown)
        feat, source_dtype = read_features(feat_path, traj)
        frames, scale, clipped = to_store_dtype(feat, dtype)
    except BadInput:
        raise
    except Exception as err:  # a flaw no check above foresaw: still this trajectory's, not the job's
        raise BadInput(folder, f"cannot be preprocessed ({type(err).__name__}: {err})") from err
    return {"rows": rows, "unknown": unknown, "frames": frames, "scale": scale, "source_dtype": source_dtype,
            "clipped": clipped, "largest_clip": float(-feat.min()) if clipped else 0.0,
            "feat_bytes": feat_path.stat().st_size}


def _write_store(split, subset, vocab, vocab_path, root, out_dir, dtype, on_bad_input, progress) -> dict:
    from tqdm import tqdm

    trajectories, annotations, rejected, unknown_words, scales = [], [], [], [], []
    converted, n_frames, raw_bytes, clipped, largest_clip = Counter(), 0, 0, 0, 0.0
    with atomic.atomic_path(out_dir, directory=True) as tmp, open(tmp / store.FRAMES, "wb") as frames_file:
        frames_file.write(store.npy_header(dtype, 0))
        loaded = _read_ahead(lambda entry: load_trajectory(root / split / entry["task"], entry, vocab, dtype),
                             subset["trajectories"])
        for entry, result in tqdm(loaded, total=len(subset["trajectories"]), desc=f"preprocess {split}",
                                  unit="traj", disable=not progress):
            try:
                item = result.result()
            except BadInput as bad:
                if on_bad_input == "fail":
                    raise
                rejected.append({"split": split, "task": entry["task"], "path": str(bad.path), "reason": bad.reason})
                continue
            frames = item["frames"]
            frames_file.write(memoryview(frames).cast("B"))
            if item["scale"] is not None:
                scales.append(item["scale"])
            for row in item["rows"]:
                row["traj_idx"] = len(trajectories)
            trajectories.append({"traj_idx": len(trajectories), "task": entry["task"],
                                 "task_type": entry["task_type"], "frame_offset": n_frames,
                                 "n_frames": len(frames), "n_low_actions": len(frames) - 1})
            annotations += item["rows"]
            unknown_words += item["unknown"]
            if item["source_dtype"] != "float32":
                converted[item["source_dtype"]] += 1
            clipped += item["clipped"]
            largest_clip = max(largest_clip, item["largest_clip"])
            n_frames += len(frames)
            raw_bytes += item["feat_bytes"]
        if not trajectories:
            examples = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:3])
            raise JobError(f"{split}: every one of its {len(rejected)} trajectories was rejected ({examples})")
        frames_file.seek(0)
        frames_file.write(store.npy_header(dtype, n_frames))
        frames_file.close()
        if dtype == "uint8":
            np.save(tmp / store.SCALES, np.stack(scales))
        atomic.write_parquet(pd.DataFrame(trajectories, columns=["traj_idx", "task", "task_type", "frame_offset",
                                                                 "n_frames", "n_low_actions"]), tmp / store.TRAJECTORIES)
        atomic.write_parquet(pd.DataFrame(annotations, columns=list(store.ANNOTATION_COLUMNS)), tmp / store.ANNOTATIONS)
        atomic.write_parquet(pd.DataFrame(rejected, columns=["split", "task", "path", "reason"]), tmp / store.REJECTED)
        meta = {
            "split": split, "dtype": dtype, "frame_shape": list(FRAME_SHAPE),
            "n_trajectories": len(trajectories), "n_annotations": len(annotations), "n_frames": n_frames,
            "n_rejected": len(rejected), "raw_feature_bytes": raw_bytes,
            "frames_bytes": (tmp / store.FRAMES).stat().st_size,
            "vocab_sha256": hashlib.sha256(Path(vocab_path).read_bytes()).hexdigest(),
            "vocab_sizes": {kind: len(tokens) for kind, tokens in vocab.items()},
            "n_word_tokens": sum(len(r["lang_goal"]) + len(r["lang_instr"]) for r in annotations),
            "n_unknown_word_tokens": len(unknown_words),
            "unknown_words": sorted(set(unknown_words))[:UNKNOWN_WORDS_LISTED],
            "converted_features": dict(sorted(converted.items())),
            "uint8_clipped_values": clipped, "uint8_largest_clip": largest_clip,
        }
        atomic.write_text(tmp / store.META, json.dumps(meta, indent=1))
    return meta
