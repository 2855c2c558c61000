"""Deterministic subsets, stratified by task type within each split.

Every trajectory gets a place in one order: within its stratum (split, task type) the
trajectories are ranked by a seeded hash of their task path, and the whole list is sorted
by (rank + 0.5) / stratum size, so that any prefix holds each stratum in proportion. A
split's subset is the first `count` trajectories of that split in this order, so a count
decides it fully; the modes only decide the count:
    all       every trajectory
    count     min(n, available)
    fraction  round(f * available) (at least 1)
    budget    the longest prefix of the order over all splits whose store fits the budget
"""
from __future__ import annotations

import hashlib
from collections import defaultdict

from alfred_edge.data.store import planned_store_bytes


def _hash(seed: int, task: str) -> str:
    return hashlib.sha1(f"{seed}:{task}".encode()).hexdigest()


def stratified_order(rows: list[dict], seed: int) -> list[dict]:
    strata: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        strata[(row["split"], row["task_type"])].append(row)
    keyed = []
    for (split, task_type), members in strata.items():
        hashed = sorted((_hash(seed, r["task"]), i) for i, r in enumerate(members))
        for rank, (digest, i) in enumerate(hashed):
            keyed.append(((rank + 0.5) / len(members), split, task_type, digest, members[i]))
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:-1])]


def trajectory_store_bytes(row: dict, dtype: str) -> int:
    return 0 if row["problem"] else planned_store_bytes(row["n_frames"], 1, dtype) - planned_store_bytes(0, 0, dtype)


def split_counts(rows: list[dict], splits: list[str], subset_cfg: dict, dtype: str,
                 store_budget_bytes: int, order: list[dict] | None = None) -> dict[str, int]:
    """How many trajectories each split's subset holds, for the configured mode (`order`:
    stratified_order of these rows, when already computed)."""
    available = {s: sum(r["split"] == s for r in rows) for s in splits}
    mode = subset_cfg["mode"]
    if mode == "all":
        return available
    if mode in ("count", "fraction"):
        counts = {}
        for split in splits:
            value = subset_cfg.get(split)
            if value is None:
                counts[split] = available[split]
            elif mode == "count":
                if value != int(value):
                    raise ValueError(f"data.subset.{split}: {value} is not a whole number (mode: count)")
                counts[split] = min(int(value), available[split])
            else:
                if not 0 < value <= 1:
                    raise ValueError(f"data.subset.{split}: {value} is not a fraction in (0, 1] (mode: fraction)")
                counts[split] = min(available[split], max(1, round(value * available[split])))
        return counts
    counts, used = dict.fromkeys(splits, 0), planned_store_bytes(0, 0, dtype) * len(splits)
    if order is None:
        order = stratified_order([r for r in rows if r["split"] in splits], subset_cfg.get("seed", 0))
    for row in order:
        used += trajectory_store_bytes(row, dtype)
        if used > store_budget_bytes:
            break
        counts[row["split"]] += 1
    return counts


def select(rows: list[dict], split: str, count: int, seed: int) -> list[dict]:
    """The first `count` trajectories of `split` in the stratified order."""
    return stratified_order([r for r in rows if r["split"] == split], seed)[:count]


def subset_document(rows: list[dict], split: str, count: int, seed: int) -> dict:
    """The content of data/subset/<split>.json. Trajectories whose files the manifest found
missing stay in (with their `problem`): preprocess rejects them naming the file."""
    chosen = select(rows, split, count, seed)
    keep = ["task", "task_type", "repeat_idx", "n_frames", "feat_bytes", "json_bytes", "problem"]
    return {
        "split": split, "count": count, "available": sum(r["split"] == split for r in rows), "seed": seed,
        "trajectories": [{k: r[k] for k in keep} for r in chosen],
    }
