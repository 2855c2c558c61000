"""Reading the other stages' outputs the report shows: the quantization eval tables
(models/<model>/<variant>.eval.parquet), the training logs (models/<model>/train_metrics.parquet,
one row per epoch, and train_steps.parquet, one row per logged step) and the storage plan.
Model and variant come from the paths; a table that is missing or unreadable leaves its part
of the page empty, with a log line."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow.parquet as pq

from alfred_edge.data.dataset import VALID_SPLITS
from alfred_edge.report.tables import DEFAULT_BACKEND

log = logging.getLogger("alfred_edge.report")

# The columns of an eval table (alfred_edge.quantize.eval_table) the page shows, in order.
EVAL_COLUMNS = ["model", "variant", "status", "reason", "file_size_mb", "size_ratio"] + [
    f"{metric}_{split}" for metric in ("accuracy", "action_f1", "action_em", "mask_iou") for split in VALID_SPLITS
] + ["engine", "eval_device"]


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # a damaged or foreign file: the page says the table is missing
        log.warning("could not read %s: %s", path, exc)
        return pd.DataFrame()


def scalar_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Without list or dict columns, which no table cell can show."""
    keep = [c for c in frame.columns if not frame[c].map(lambda v: isinstance(v, (list, dict, tuple))).any()]
    return frame[keep]


def accuracy_by_split(path: str | Path) -> dict:
    """{"accuracy_valid_seen": …, "accuracy_valid_unseen": …} (teacher-forced action
    accuracy) from one eval table; absent where the variant was not evaluated."""
    frame = read_parquet(Path(path))
    result = {}
    for split in VALID_SPLITS:
        column = f"accuracy_{split}"
        if column in frame and frame[column].notna().any():
            result[f"accuracy_{split}"] = float(frame[column].dropna().iloc[0])
    return result


def eval_key(path: Path) -> tuple[str, str, str]:
    """(model, variant, backend) of models/<model>/<variant>[.<backend>].eval.parquet: the eager
    backend's tables have no suffix (variant names hold no dot)."""
    variant, _, backend = path.name.removesuffix(".eval.parquet").partition(".")
    return path.parent.name, variant, backend or DEFAULT_BACKEND


def read_eval_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every eval table's row, in the columns EVAL_COLUMNS it has (model, variant and backend
    from the path)."""
    frames = []
    for path in map(Path, paths):
        frame = read_parquet(path)
        if frame.empty:
            continue
        model, variant, backend = eval_key(path)
        frames.append(frame.assign(model=model, variant=variant, backend=backend))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True, sort=False)
    return table[[c for c in EVAL_COLUMNS if c in table]]


def read_training(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The training logs of every model (train_metrics.parquet or train_steps.parquet), one
    row per epoch or logged step, with the model from the path; metric columns as the
    training stage names them ("train/loss", "valid_seen/action_acc", …)."""
    frames = []
    for path in map(Path, paths):
        frame = scalar_columns(read_parquet(path))
        if frame.empty or "epoch" not in frame:
            continue
        frames.append(frame.drop(columns=[c for c in ("model",) if c in frame]).assign(model=path.parent.name))
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()


def read_storage_plan(path: str | Path | None) -> str:
    """The storage plan's text (Markdown), or "" when there is none."""
    if path is None or not Path(path).exists():
        return ""
    return Path(path).read_text(errors="replace")


INLINE = re.compile(r"(\*\*[^*]+\*\*|`[^`]+`)")


def spans(text: str) -> list[tuple[str, str | None]]:
    """Inline Markdown as (text, style) pieces: **strong**, `code` or plain (None)."""
    pieces = []
    for piece in filter(None, INLINE.split(text)):
        if piece.startswith("**"):
            pieces.append((piece[2:-2], "strong"))
        elif piece.startswith("`"):
            pieces.append((piece[1:-1], "code"))
        else:
            pieces.append((piece, None))
    return pieces


def markdown_blocks(text: str) -> list[dict]:
    """The Markdown the storage plan is written in (headings, paragraphs, pipe tables) as
    blocks for the template, their text as spans() so that the template escapes every piece:
    {"kind": "heading" | "paragraph", "spans": …} or {"kind": "table", "header": [spans],
    "rows": [[spans]]}. The top heading is left out: the page's section names it."""
    blocks, paragraph = [], []

    def end_paragraph():
        if paragraph:
            blocks.append({"kind": "paragraph", "spans": spans(" ".join(paragraph))})
            paragraph.clear()

    for line in map(str.strip, text.splitlines()):
        if line.startswith("|"):
            end_paragraph()
            cells = [spans(cell.strip()) for cell in line.strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", "".join(t for t, _ in cell)) for cell in cells):
                continue  # the rule under the header
            if blocks and blocks[-1]["kind"] == "table" and blocks[-1]["open"]:
                blocks[-1]["rows"].append(cells)
            else:
                blocks.append({"kind": "table", "header": cells, "rows": [], "open": True})
            continue
        if blocks and blocks[-1]["kind"] == "table":
            blocks[-1]["open"] = False
        if line.startswith("#"):
            end_paragraph()
            if not line.startswith("# "):
                blocks.append({"kind": "heading", "spans": spans(line.lstrip("#").strip())})
        elif line:
            paragraph.append(line)
        else:
            end_paragraph()
    end_paragraph()
    return blocks


def storage_stages(plan: dict | None) -> pd.DataFrame:
    """The storage plan (the storage_plan rule's parse-time figures) as bars: the raw
    json_feat selected, the store in its dtype, each model folder and the results, then
    what is written in total, in GB (1e9 bytes)."""
    if not plan:
        return pd.DataFrame(columns=["stage", "size_gb"])
    splits = plan["splits"].values()
    store = sum(split["store_bytes"][plan["dtype"]] for split in splits)
    rows = [("raw json_feat selected (read, not copied)", sum(split["raw_bytes"] for split in splits)),
            (f"store ({plan['dtype']})", store)]
    rows += [(f"{name} (estimate)", size) for name, size in plan["reserved"].items()]
    rows.append(("written in total: store + models + results", store + sum(plan["reserved"].values())))
    return pd.DataFrame([(stage, size / 1e9) for stage, size in rows], columns=["stage", "size_gb"])
