"""The report's figures (matplotlib, Agg backend): one panel per host/device, panels in
host order so that hosts stand side by side, one line per (model, variant) with the same
colour and marker in every panel. Each function returns a Figure, or None when it has
no data to draw; `render_png`/`render_svg` turn a Figure into bytes."""
from __future__ import annotations

import io
import math
import textwrap
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alfred_edge.variants import VARIANTS  # noqa: E402

MAX_COLUMNS = 4
PANEL_SIZE = (4.2, 3.2)
DEFAULT_FEATURES = "mmap"  # series read another way are labelled with it
MODEL_MARKERS = {"lstm": "o", "transformer": "s"}
OTHER_MARKERS = "^vD<>ph*"
GRID_STYLE = {"colors": "#b0b0b0", "linewidths": 0.8, "alpha": 0.3}  # matplotlib's grid, as ax.grid(alpha=0.3) draws it
OTHER_COLOURS = ["#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def render_png(fig, dpi: int = 80) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render_svg(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def close(fig) -> None:
    plt.close(fig)


class Styles:
    """A fixed colour per variant and marker per model, shared by every panel of a figure."""

    def __init__(self, series: pd.DataFrame):
        variants = sorted(series["variant"].dropna().unique())
        models = sorted(series["model"].dropna().unique())
        extra_colours = iter(OTHER_COLOURS * (1 + len(variants) // len(OTHER_COLOURS)))
        extra_markers = iter(OTHER_MARKERS * (1 + len(models) // len(OTHER_MARKERS)))
        self.colour = {v: VARIANTS[v].colour if v in VARIANTS else next(extra_colours) for v in variants}
        self.marker = {m: MODEL_MARKERS.get(m) or next(extra_markers) for m in models}
        self.variants = variants

    def kwargs(self, model: str, variant: str, features: str | None = None) -> dict:
        return {"color": self.colour[variant], "marker": self.marker[model], "label": series_label(model, variant, features)}

    def line_kwargs(self, model: str, variant: str, features: str | None = None) -> dict:
        """A line: dashed where the features were read into RAM instead of memory-mapped."""
        return {**self.kwargs(model, variant, features), "ls": "-" if features in (None, DEFAULT_FEATURES) else "--"}


def series_label(model: str, variant: str, features: str | None) -> str:
    suffix = "" if features in (None, DEFAULT_FEATURES) or pd.isna(features) else f" [{features}]"
    return f"{model} {variant}{suffix}"


def panel_keys(cells: pd.DataFrame) -> list[tuple[str, str]]:
    """(host, device) pairs, host-major, so the panels of one host sit together."""
    pairs = cells[["host", "device"]].dropna().drop_duplicates()
    return sorted(map(tuple, pairs.itertuples(index=False)))


def panel_title(host: str, device: str, width: int = 44) -> str:
    """Host names come from the data: shortened, and with $ escaped so that matplotlib
    does not read them as mathtext."""
    title = f"{host} · {device}"
    title = title if len(title) <= width else title[: width - 1] + "…"
    return title.replace("$", r"\$")


_SPARE_GRIDS: dict = {}  # panel count -> a grid made ahead (make_spare_grid), taken by panel_grid


def make_spare_grid(count: int) -> None:
    """A grid of `count` panels made ahead, for the next panel_grid(count) to take. Made
    before the figures' processes fork, each inherits its own unused copy: the Axes of a
    grid of many panels are much of a figure's cost, paid so once instead of in every figure."""
    if count:
        _SPARE_GRIDS[count] = new_panel_grid(count)


@contextmanager
def spare_grids():
    """Within: spare grids may be made; those left untaken are closed at the end."""
    try:
        yield
    finally:
        for fig, _ in _SPARE_GRIDS.values():
            close(fig)
        _SPARE_GRIDS.clear()


def panel_count(cells: pd.DataFrame) -> int:
    """The panels a figure of every ok cell has: one per host/device."""
    return len(panel_keys(cells[cells["status"] == "ok"]))


def panel_grid(count: int):
    """A grid of `count` panels: the spare one of that count if not yet taken, else a new one."""
    return _SPARE_GRIDS.pop(count, None) or new_panel_grid(count)


def new_panel_grid(count: int, size=PANEL_SIZE):
    """A grid of `count` panels. Their axes are not shared by matplotlib: with dozens of
    panels, every shared autoscale touches every sibling (quadratic in the panels);
    finish() gives them one range instead."""
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    fig = plt.figure(figsize=(size[0] * columns, size[1] * rows + 0.7))
    grid = fig.add_gridspec(rows, columns)
    # Only the panels drawn on: a hidden Axes costs as much to make as a shown one.
    return fig, [fig.add_subplot(grid[index // columns, index % columns]) for index in range(count)]


def share_range(axes, axis: str) -> None:
    """One x or y range over the panels: the union of their own."""
    lows, highs = zip(*(getattr(ax, f"get_{axis}lim")() for ax in axes))
    for ax in axes:
        getattr(ax, f"set_{axis}lim")(min(lows), max(highs))


def log_ticks(low: float, high: float, base: int, most: int = 6) -> list[float]:
    """Tick positions for a log axis from low to high. Base 10: 1-2-5, else 1-3, else 1 times
    the powers of ten, the first of these giving 3 to `most` ticks; base 2: the powers of 2.
    Where too many, every k-th; where fewer than two, evenly spaced values. Fixed ticks with
    plain labels: the default locator makes ticks beyond the view and mathtext labels, which
    a figure of many panels pays for on every panel."""
    exponents = range(math.floor(math.log(low, base)), math.ceil(math.log(high, base)) + 1)
    steps = ((1, 2, 5), (1, 3), (1,)) if base == 10 else ((1,),)
    for multipliers in steps:
        ticks = [m * float(base) ** e for e in exponents for m in multipliers]
        ticks = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if 3 <= len(ticks) <= most:
            return ticks
    if len(ticks) > most:
        return ticks[:: math.ceil(len(ticks) / most)]
    if len(ticks) < 2:
        ticks = [float(t) for t in matplotlib.ticker.MaxNLocator(3).tick_values(low, high) if low <= t <= high and t > 0]
    return ticks


def axis_ticks(ax, axis: str) -> list[float]:
    """Tick positions inside the axis's range: log_ticks on a log axis, else at most 4 round values."""
    low, high = getattr(ax, f"get_{axis}lim")()
    if getattr(ax, f"get_{axis}scale")() == "log":
        return log_ticks(low, high, getattr(ax, f"{axis}axis").get_transform().base)
    values = matplotlib.ticker.MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    return [float(t) for t in values if low <= t <= high]


def grid_and_ticks(ax, axis: str, ticks, labelled: bool) -> None:
    """Grid lines at `ticks` (one collection), and ticks labelled as plain numbers (no
    mathtext) where `labelled`; elsewhere no axis drawn at all: a matplotlib Tick is five
    artists, made and drawn on every panel, and an axis left visible without ticks still
    places its (empty) label by its siblings' tick labels."""
    if labelled:
        getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())
        getattr(ax, f"set_{axis}ticks")(ticks, [f"{t:g}" for t in ticks])
    else:
        getattr(ax, f"{axis}axis").set_major_locator(matplotlib.ticker.NullLocator())
        getattr(ax, f"{axis}axis").set_visible(False)
    if axis == "x":
        segments, transform = [[(t, 0), (t, 1)] for t in ticks], ax.get_xaxis_transform()
    else:
        segments, transform = [[(0, t), (1, t)] for t in ticks], ax.get_yaxis_transform()
    ax.add_collection(LineCollection(segments, transform=transform, zorder=0.5, **GRID_STYLE), autolim=False)


def finish(fig, axes, title: str, xlabel: str, ylabel: str, same_y: bool = True, x_ticks=None) -> None:
    """Title, shared legend and margins. The panels that hold data share one y range (same_y)
    and, given x_ticks, one x range with those ticks; a shared axis is labelled on the outer
    panels only (y on the first panel of each row, x on the lowest of each column), as
    sharex/sharey do; every panel gets grid lines. Axis names once: y on the first panel,
    x under the lowest panel of each column."""
    drawn = [index for index, ax in enumerate(axes) if ax.has_data()]
    for index in set(range(len(axes))) - set(drawn):  # a panel holding only a note
        axes[index].set_xticks([])
        axes[index].set_yticks([])
    if drawn:
        if same_y:
            share_range([axes[index] for index in drawn], "y")
        if x_ticks is not None:
            share_range([axes[index] for index in drawn], "x")
        lowest_in_column = {index % MAX_COLUMNS: index for index in drawn}  # the last of each column wins
        first_in_row = {}
        for index in drawn:
            first_in_row.setdefault(index // MAX_COLUMNS, index)
        x_labelled = set(lowest_in_column.values()) if x_ticks is not None else set(drawn)
        y_labelled = set(first_in_row.values()) if same_y else set(drawn)
        for index in drawn:
            ax = axes[index]
            grid_and_ticks(ax, "x", axis_ticks(ax, "x") if x_ticks is None else x_ticks, index in x_labelled)
            grid_and_ticks(ax, "y", axis_ticks(ax, "y"), index in y_labelled)
        for index in lowest_in_column.values():
            axes[index].set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    # In the top margin, above the panel titles; wrapped to the figure's width (~10 characters an inch).
    title = wrap(title, int(fig.get_figwidth() * 10))
    fig.suptitle(title, fontsize=12, y=1 - 0.08 / fig.get_figheight())
    first_handle = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            first_handle.setdefault(label, handle)
    labels = sorted(first_handle)  # by model, then variant, whichever panel shows a series first
    handles = [first_handle[label] for label in labels]
    # As many legend columns as fit the figure's width (about 1.7 inches each).
    columns = max(1, min(len(labels), int(fig.get_figwidth() / 1.7)))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    rows = math.ceil(len(axes) / MAX_COLUMNS)
    bottom = min(0.45, (0.55 + 0.2 * math.ceil(len(labels) / columns)) / fig.get_figheight()) if labels else 0.08
    fig.subplots_adjust(left=min(0.15, 0.75 / fig.get_figwidth()), right=0.98, top=1 - (0.5 + 0.2 * title.count("\n")) / fig.get_figheight(), bottom=bottom,
                        wspace=0.12 if same_y else 0.3, hspace=0.45 if rows > 1 else 0.2)  # room for y labels on every panel


def ok_cells(cells: pd.DataFrame, column: str) -> pd.DataFrame:
    return cells[(cells["status"] == "ok") & cells[column].notna()]


def marker_size(points: int) -> float:
    """Markers on short lines only: on a long sweep they hide the line and slow the drawing."""
    return 4 if points <= 16 else 0


SERIES_KEY = ["host", "device", "model", "variant", "features"]


def panels_of(rows: pd.DataFrame, columns: list[str]) -> dict:
    """{(host, device): [(model, variant, features, rows by batch), …]} from one groupby (not
    one per panel), in host order; the rows hold batch_size and `columns` only."""
    rows = rows[SERIES_KEY + ["batch_size", *columns]].fillna({"features": DEFAULT_FEATURES})
    panels = {}
    for (host, device, model, variant, features), line in rows.sort_values("batch_size", kind="stable").groupby(
        SERIES_KEY, sort=True
    ):
        panels.setdefault((host, device), []).append((model, variant, features, line))
    return panels


def batch_ticks(batches) -> list[int]:
    """The batch axis's ticks: each batch of a short sweep, else powers of 2."""
    ticks = sorted(set(int(b) for b in batches))
    return ticks if len(ticks) <= 10 else [int(t) for t in log_ticks(ticks[0], ticks[-1], 2)]


def whisker_line(x, low, high) -> tuple[np.ndarray, np.ndarray]:
    """Vertical segments from low to high at each x, as one path broken by NaN (a collection
    transforms each segment on its own, which on a log axis costs far more than one path)."""
    keep = np.isfinite(high)
    x, low, high = x[keep], low[keep], high[keep]
    gap = np.full_like(x, np.nan)
    return np.column_stack([x, x, gap]).ravel(), np.column_stack([low, high, gap]).ravel()


def one_line(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Lines of one style (x, y) as one path broken by NaN: one artist per style and panel,
    not per line, whose fixed cost outweighs drawing the line."""
    gap = np.array([np.nan])
    return tuple(np.concatenate([piece for part in parts for piece in (part[axis], gap)]) for axis in (0, 1))


def per_panel_lines(cells, column, title, ylabel, whiskers=False):
    """One panel per host/device with `column` against batch (log-log), one line per
    model/variant; with whiskers, from p50 to p90 (thick) and on to p99 (thin)."""
    rows = ok_cells(cells, column)
    panels = panels_of(rows, [column, "latency_p90_ms", "latency_p99_ms"] if whiskers else [column])
    if not panels:
        return None
    styles = Styles(rows)
    fig, axes = panel_grid(len(panels))
    for ax, ((host, device), series) in zip(axes, panels.items()):
        whisker_parts = {}  # (variant, line width) -> [(x, y)], drawn as one line each
        for index, (model, variant, features, line) in enumerate(series):
            # A small horizontal offset per line keeps whiskers of equal batches apart.
            x = line["batch_size"].to_numpy(float) * 2 ** ((index - 2) * 0.03)
            y = line[column].to_numpy(float)
            ax.plot(x, y, ms=marker_size(len(x)), lw=1.2, **styles.line_kwargs(model, variant, features))
            if whiskers:
                p90, p99 = (line[name].to_numpy(float) for name in ("latency_p90_ms", "latency_p99_ms"))
                whisker_parts.setdefault((variant, 1.2), []).append(whisker_line(x, y, p90))
                whisker_parts.setdefault((variant, 0.6), []).append(whisker_line(x, np.fmax(y, p90), p99))
        for (variant, width), parts in whisker_parts.items():
            ax.plot(*one_line(parts), color=styles.colour[variant], lw=width)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(panel_title(host, device), fontsize=10, y=1.0)  # a fixed y skips a costly layout pass
    finish(fig, axes, title, "batch", ylabel, x_ticks=batch_ticks(rows["batch_size"]))
    return fig


def latency_figure(cells):
    return per_panel_lines(
        cells, "latency_p50_ms", "Episode latency per batch: p50, whiskers to p90 (thick) and p99 (thin)",
        "latency per batch (ms)", whiskers=True,
    )


def sample_latency_figure(cells):
    return per_panel_lines(cells, "sample_latency_p50_ms", "Latency per sample (p50 / batch)", "ms per sample")


def throughput_figure(cells):
    return per_panel_lines(cells, "throughput_samples_per_s", "Throughput", "samples / s")


def roofline_figure(cells):
    return per_panel_lines(
        cells, "roofline_fraction", "Roofline efficiency (achieved fraction of the bound)", "fraction of bound"
    )


def energy_figure(cells, reasons: dict[str, str]):
    """Energy per sample against batch; a host without power figures gets its reason in the panel."""
    keys = panel_keys(cells[cells["status"] == "ok"])
    if not keys:
        return None
    rows = ok_cells(cells, "energy_per_sample_j")
    panels = panels_of(rows, ["energy_per_sample_j"])
    styles = Styles(cells[cells["status"] == "ok"])
    fig, axes = panel_grid(len(keys))
    for ax, (host, device) in zip(axes, keys):
        series = panels.get((host, device))
        ax.set_title(panel_title(host, device), fontsize=10, y=1.0)  # a fixed y skips a costly layout pass
        if not series:
            reason = reasons.get(host) or "no power readings"
            ax.text(0.5, 0.5, "power not measured:\n" + wrap(reason, 40), ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="#555")
            continue
        for model, variant, features, line in series:
            ax.plot(line["batch_size"], line["energy_per_sample_j"], ms=marker_size(len(line)), lw=1.2,
                    **styles.line_kwargs(model, variant, features))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    finish(fig, axes, "Energy per sample", "batch", "J per sample", x_ticks=batch_ticks(rows["batch_size"]))
    return fig


def wrap(text: str, width: int) -> str:
    """At most four lines of `width` characters, $ escaped (text from the data is not mathtext)."""
    return "\n".join(textwrap.wrap(str(text), width)[:4]).replace("$", r"\$")


def ram_figure(cells, fits: pd.DataFrame, budgets: pd.DataFrame):
    """Peak memory (RSS, plus GPU memory on cuda) against batch, the fitted line of each series (from the capacity rows:
    host, device, model, variant, features, fit_slope_mb_per_sample, fit_intercept_mb) and
    the RAM budgets of each host (host, budget, budget_mb)."""
    rows = ok_cells(cells, "peak_memory_mb")
    panels = panels_of(rows, ["peak_memory_mb"])
    if not panels:
        return None
    styles = Styles(rows)
    lines_of = {tuple(fit[:5]): fit[5:] for fit in fits[
        ["host", "device", "model", "variant", "features", "fit_intercept_mb", "fit_slope_mb_per_sample"]
    ].itertuples(index=False)}
    fig, axes = panel_grid(len(panels))
    for ax, ((host, device), series) in zip(axes, panels.items()):
        largest_batch = max(float(line["batch_size"].max()) for *_, line in series)
        xs = np.geomspace(1.0, largest_batch, 24)  # straight lines curve on a log axis
        fitted = {}  # variant -> [(x, y)], drawn as one line each
        for model, variant, features, line in series:
            ax.plot(line["batch_size"], line["peak_memory_mb"], ls="none", ms=4, **styles.kwargs(model, variant, features))
            if (host, device, model, variant, features) in lines_of:
                intercept, slope = lines_of[(host, device, model, variant, features)]
                fitted.setdefault(variant, []).append((xs, intercept + slope * xs))
        for variant, parts in fitted.items():
            ax.plot(*one_line(parts), color=styles.colour[variant], lw=0.9, ls="--")
        peak = max(float(line["peak_memory_mb"].max()) for *_, line in series)
        draw_budgets(ax, budgets[budgets["host"] == host], peak)
        ax.set_xscale("log", base=2)
        ax.set_title(panel_title(host, device), fontsize=10, y=1.0)  # a fixed y skips a costly layout pass
    finish(fig, axes, "Peak RAM against batch: measured (points), fitted (dashed), budgets (dotted)", "batch",
           "peak memory (MB)", same_y=False, x_ticks=batch_ticks(rows["batch_size"]))
    return fig


def draw_budgets(ax, budgets: pd.DataFrame, peak_mb: float) -> None:
    """Budget lines up to the smallest budget above the data; larger ones named in a note,
    so that a 24 GB host does not flatten a 700 MB curve."""
    budgets = budgets.sort_values("budget_mb")
    above = budgets[budgets["budget_mb"] > peak_mb]
    top = max(peak_mb * 1.25, above["budget_mb"].iloc[0] * 1.08 if len(above) else 0.0)
    for budget in budgets.itertuples():
        if budget.budget_mb <= top:
            ax.axhline(budget.budget_mb, color="#444", lw=0.8, ls=":")
            ax.text(1, budget.budget_mb, f" {budget.budget}", fontsize=7, va="bottom", color="#444")
    off_scale = [f"{b.budget} {b.budget_mb / 1e3:.3g} GB" for b in budgets.itertuples() if b.budget_mb > top]
    if off_scale:
        ax.text(0.98, 0.97, "off scale: " + ", ".join(off_scale), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="#444")
    ax.set_ylim(0, top)


def accuracy_figure(cells):
    """Accuracy against batch-1 latency per sample, marker area ∝ file size, per host/device.
    Points are told apart by colour (variant) and marker (model), as the lines of the other
    figures are: a variant's name beside each point overlapped its neighbours', and was text
    to lay out for every point."""
    rows = ok_cells(cells, "accuracy_valid_seen")
    rows = rows.loc[(rows["batch_size"] == 1) & rows["sample_latency_p50_ms"].notna(),
                    SERIES_KEY + ["model_file_mb", "sample_latency_p50_ms", "accuracy_valid_seen"]]
    if rows.empty:
        return None
    styles = Styles(rows)
    groups = rows.groupby(["host", "device"], sort=True)
    fig, axes = panel_grid(groups.ngroups)
    largest = float(rows["model_file_mb"].max()) if rows["model_file_mb"].notna().any() else 1.0
    for ax, ((host, device), panel) in zip(axes, groups):
        for row in panel.itertuples():
            size = 30 + 300 * (row.model_file_mb / largest if pd.notna(row.model_file_mb) else 0)
            ax.plot(row.sample_latency_p50_ms, row.accuracy_valid_seen * 100, ls="none", ms=math.sqrt(size), alpha=0.7,
                    **styles.kwargs(row.model, row.variant, row.features))
        ax.set_xlim(left=0)
        ax.set_title(panel_title(host, device), fontsize=10, y=1.0)
    finish(fig, axes, "Accuracy against latency (marker area ∝ file size)", "ms per sample at batch 1",
           "action accuracy, valid_seen (%)")
    return fig


def training_figure(curves: pd.DataFrame):
    """Per model: the loss columns and the accuracy-like columns against epoch."""
    if curves.empty or "epoch" not in curves:
        return None
    models = sorted(curves["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 6.2), squeeze=False)
    for column_index, model in enumerate(models):
        rows = curves[curves["model"] == model].sort_values("epoch")
        numeric = [c for c in rows.columns if c not in ("epoch", "model", "seconds")
                   and pd.api.types.is_numeric_dtype(rows[c]) and rows[c].notna().any()]
        losses = [c for c in numeric if "loss" in c]
        scores = [c for c in numeric if c not in losses and rows[c].between(0, 1).all()]
        for ax, columns, label in ((axes[0, column_index], losses, "loss"), (axes[1, column_index], scores, "score")):
            for column in columns:
                ax.plot(rows["epoch"], rows[column], marker="o", ms=3, label=column)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if columns:
                ax.legend(fontsize=7)
        axes[0, column_index].set_title(model, y=1.0)
    fig.suptitle("Training curves")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.09, hspace=0.35, wspace=0.25)
    return fig


def storage_figure(stages: pd.DataFrame, budget_gb: float | None):
    """Bars of the planned size of each stage (raw → subset → store → …) against the budget."""
    if stages.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(stages["stage"], stages["size_gb"], color="#4c72b0")
    if budget_gb:
        ax.axvline(budget_gb, color="#c44", ls="--", lw=1)
        ax.text(budget_gb, -0.6, f" budget {budget_gb:g} GB", color="#c44", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GB (1e9 bytes)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Storage plan against the budget")
    fig.subplots_adjust(left=0.2, right=0.97, top=0.87, bottom=0.16)
    return fig
