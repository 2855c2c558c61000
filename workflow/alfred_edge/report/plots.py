"""The report's figures (matplotlib, Agg backend), drawn to be read at the page's width: small
multiples with one row per host · device and one column per model, the variants of a model as
lines with one colour each in every panel, one legend above the panels; matplotlib's shared
axes and constrained layout. Each function returns a Figure, or None when it has nothing to
draw; render() turns a Figure into PNG and SVG bytes."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker as ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alfred_edge.report.tables import BACKEND, pareto_front  # noqa: E402
from alfred_edge.variants import VARIANTS  # noqa: E402

# A figure as wide as the page's content (summary.html.j2: 1400 px less the padding) at DPI:
# shown at 100 % zoom, one pixel of the PNG is one pixel of the screen and its text is 10 pt.
WIDTH_IN, DPI = 13.3, 100
MIN_WIDTH_IN = 9.5  # a figure of one column: narrower, still 950 pixels wide
PANEL_WIDTH_IN = 6.65
ROW_HEIGHT_IN = 3.0
HEADER_IN = 0.9  # the title and the legend above the panels
DASHES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]
OTHER_COLOURS = ["#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PLAIN = ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, 20, 300: no mathtext powers


def render(fig, with_svg: bool) -> tuple[bytes, bytes | None]:
    """The figure as PNG and, with_svg, as SVG. Laid out once for both: each savefig would
    otherwise run constrained layout again (a dry-run draw) before its own."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    files = []
    for form in ("png", "svg") if with_svg else ("png",):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=form, dpi=DPI)
        files.append(buffer.getvalue())
    return files[0], files[1] if with_svg else None


def close(fig) -> None:
    plt.close(fig)


def text(value, width: int = 40) -> str:
    """Text from the data in a figure: shortened, and $ escaped so that matplotlib does not
    read it as mathtext."""
    value = str(value)
    return (value if len(value) <= width else value[: width - 1] + "…").replace("$", r"\$")


def panel_title(host: str, device: str, model: str) -> str:
    return " · ".join([text(host, 32), device, text(model, 24)])


class Styles:
    """Per series, the same in every panel of a figure: the variant's colour, and a line style
    per value of the other series columns (series: variant, then features and whatever else
    tells the results table's cells apart), solid for the most common; labels name a value only
    where it is not the most common."""

    def __init__(self, rows: pd.DataFrame, series: list[str]):
        self.others = series[1:]
        variants = sorted(rows["variant"].unique(), key=variant_order)
        extra = iter(OTHER_COLOURS * len(variants))
        self.colour = {v: VARIANTS[v].colour if v in VARIANTS else next(extra) for v in variants}
        combos = list(rows.value_counts(self.others, sort=True).index) if self.others else [()]
        self.common = combos[0]
        self.dash = {combo: DASHES[index % len(DASHES)] for index, combo in enumerate(combos)}
        self.marker = {combo: MARKERS[index % len(MARKERS)] for index, combo in enumerate(combos)}

    def legend(self, lines: bool) -> list[Line2D]:
        """Handles: a variant's colour each, then, where there are several, each other combination
        of values (named by the columns in which they differ) with its line style and marker."""
        line = {"lw": 1.5} if lines else {"ls": "none"}
        handles = [Line2D([], [], color=colour, marker="o", label=variant, **line) for variant, colour in self.colour.items()]
        if len(self.dash) > 1:
            differ = [i for i in range(len(self.others)) if len({combo[i] for combo in self.dash}) > 1]
            handles += [Line2D([], [], color="#555", marker=self.marker[combo], label=" · ".join(str(combo[i]) for i in differ),
                               **({"ls": self.dash[combo], "lw": 1.5} if lines else {"ls": "none"}))
                        for combo in self.dash]
        return handles

    def of(self, variant: str, combo: tuple) -> dict:
        names = [str(value) for value, common in zip(combo, self.common) if value != common]
        return {"color": self.colour[variant], "ls": self.dash[combo], "marker": self.marker[combo],
                "label": " · ".join([variant, *names])}


def variant_order(variant: str) -> tuple:
    """The registry's order (fp32 first), then others by name."""
    names = list(VARIANTS)
    return (names.index(variant), "") if variant in names else (len(names), variant)


def series_groups(rows: pd.DataFrame, series: list[str], columns: list[str]) -> dict:
    """{(host, device, model): [(variant, other series values, rows by batch), …]} in one groupby."""
    rows = rows[["host", "device", "model", *series, "batch_size", *columns]].sort_values("batch_size", kind="stable")
    panels = {}
    for (host, device, model, variant, *values), line in rows.groupby(["host", "device", "model", *series], sort=True):
        panels.setdefault((host, device, model), []).append((variant, tuple(values), line))
    for lines in panels.values():
        lines.sort(key=lambda entry: (variant_order(entry[0]), entry[1]))
    return panels


def width(columns: int) -> float:
    """A figure's width in inches for `columns` panels side by side."""
    return min(WIDTH_IN, max(MIN_WIDTH_IN, PANEL_WIDTH_IN * columns))


def small_multiples(panels, ylabel: str, sharey: bool = True, xlabel: str = "batch size"):
    """A grid of one row per host · device and one column per model (both from the `panels`
    keys), titled, with a grid; -> (figure, {(host, device, model): axes})."""
    rows = sorted({(host, device) for host, device, _ in panels})
    models = sorted({model for _, _, model in panels})
    fig, grid = plt.subplots(len(rows), len(models), figsize=(width(len(models)), HEADER_IN + ROW_HEIGHT_IN * len(rows)),
                             sharex=True, sharey=sharey, squeeze=False, layout="constrained")
    axes = {}
    for (host, device), row in zip(rows, grid):
        for model, ax in zip(models, row):
            # Placed, not left to matplotlib, which for each panel's title and axis label would
            # measure every panel sharing the axis (the figure's slowest step): the titles sit above
            # the axes and the axis labels are the figure's (supxlabel, supylabel).
            ax.set_title(panel_title(host, device, model), fontsize=10, y=1.0)
            ax.xaxis.set_label_coords(0.5, 0.0)
            ax.yaxis.set_label_coords(0.0, 0.5)
            ax.grid(True, alpha=0.3)
            axes[(host, device, model)] = ax
            if (host, device, model) not in panels:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777")
    fig.supxlabel(xlabel, fontsize=10)
    fig.supylabel(ylabel, fontsize=10)
    return fig, axes


def finish(fig, title: str, styles: Styles, lines: bool = True) -> None:
    """Above the panels, the title over one legend: each variant's colour, then (where the
    series have other columns, e.g. a second backend) each other value's line style and
    marker in grey; as the legend's own title, which constrained layout places with it (a
    suptitle beside an outside legend overlaps it)."""
    handles = styles.legend(lines)
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 8), frameon=False, fontsize=10,
               title=title, title_fontproperties={"size": 12})


def batch_axis(ax, batches) -> None:
    """Batch sizes on a log2 axis: each labelled in a short sweep, else the powers of 2."""
    ax.set_xscale("log", base=2)
    batches = sorted({int(b) for b in batches})
    locator = ticker.FixedLocator(batches) if len(batches) <= 6 else ticker.LogLocator(base=2, numticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def log_axis(axis) -> None:
    """A log axis ticked at 1-2-5 (at most six ticks) with plain labels; no minor ticks, which
    would cost as much as the rest of a figure of many panels."""
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5), numticks=6))
    axis.set_major_formatter(PLAIN)
    axis.set_minor_locator(ticker.NullLocator())


def ok_rows(cells: pd.DataFrame, column: str, series: list[str]) -> pd.DataFrame:
    """The ok cells with a value of `column`; a series value missing (an older board's file
    lacks the column, or has it empty) reads "–"."""
    rows = cells[(cells["status"] == "ok") & cells[column].notna()]
    return rows.assign(**{c: rows[c].astype(object).fillna("–") if c in rows else "–" for c in series})


def lines_figure(cells, series, column, title, ylabel, log_y=True, band=None):
    """`column` against batch, one line per series; with band (two columns, where the table
    has them), shaded between them."""
    rows = ok_rows(cells, column, series)
    if rows.empty:
        return None
    band = band if band and all(c in rows for c in band) else None
    panels = series_groups(rows, series, [column, *(band or [])])
    styles = Styles(rows, series)
    fig, axes = small_multiples(panels, ylabel)
    for key, lines in panels.items():
        ax = axes[key]
        for variant, combo, line in lines:
            style = styles.of(variant, combo)
            x, y = line["batch_size"].to_numpy(float), line[column].to_numpy(float)
            ax.plot(x, y, ms=4 if len(x) <= 16 else 0, lw=1.5, **style)
            if band:
                low, high = (line[c].to_numpy(float) for c in band)
                ax.fill_between(x, low, high, color=style["color"], alpha=0.15, lw=0)
    for ax in axes.values():
        batch_axis(ax, rows["batch_size"])
        if log_y:
            ax.set_yscale("log")
            log_axis(ax.yaxis)
    finish(fig, title, styles)
    return fig


def latency_figure(cells, series):
    return lines_figure(cells, series, "latency_p50_ms", "Latency of one batch of episodes: p50, shaded over its 95 % "
                        "interval where recorded", "ms per batch", band=("latency_p50_ci_low_ms", "latency_p50_ci_high_ms"))


def sample_latency_figure(cells, series):
    return lines_figure(cells, series, "sample_latency_p50_ms",
                        "Latency per sample (p50 / batch size; throughput = 1000 / this)", "ms per sample")


def energy_figure(cells, series):
    return lines_figure(cells, series, "energy_per_sample_j",
                        "Energy per sample (hosts without power readings are left out: see the table)", "J per sample")


def roofline_figure(cells, series):
    return lines_figure(cells, series, "roofline_fraction", "Roofline efficiency: achieved fraction of the bound",
                        "fraction of the bound", log_y=False)


def ram_figure(cells, series, fits: pd.DataFrame, budgets: pd.DataFrame):
    """Peak memory (RSS, plus GPU memory on cuda) against batch: measured points, the fitted
    line of each series (the capacity rows' fit_intercept_mb, fit_slope_mb_per_sample; keyed by
    the series columns they have) over the batches measured, each panel's y axis scaled to its
    data so that the slope shows; the host's RAM budgets (host, budget, budget_mb) drawn where
    they fall inside it and named above it otherwise."""
    rows = ok_rows(cells, "peak_memory_mb", series)
    if rows.empty:
        return None
    panels = series_groups(rows, series, ["peak_memory_mb"])
    styles = Styles(rows, series)
    fit_key = ["host", "device", "model", *[c for c in series if c in fits]]
    fitted = {tuple(key): line for key, line in
              zip(fits[fit_key].itertuples(index=False), fits[["fit_intercept_mb", "fit_slope_mb_per_sample"]].to_numpy())}
    fig, axes = small_multiples(panels, "peak memory (MB)", sharey=False)
    for (host, device, model), lines in panels.items():
        ax = axes[(host, device, model)]
        for variant, combo, line in lines:
            style = styles.of(variant, combo)
            ax.plot(line["batch_size"], line["peak_memory_mb"], ms=5, **style | {"ls": "none"})
            values = dict(zip(series[1:], combo)) | {"variant": variant}
            fit = fitted.get((host, device, model, *[values[c] for c in fit_key[3:]]))
            if fit is not None:
                xs = np.geomspace(line["batch_size"].min(), line["batch_size"].max(), 16)
                ax.plot(xs, fit[0] + fit[1] * xs, color=style["color"], lw=1, ls="--")
        ax.margins(y=0.15)
        draw_budgets(ax, budgets[budgets["host"] == host])
        batch_axis(ax, rows["batch_size"])
    finish(fig, "Peak memory against batch: measured (points), fitted line (dashed), RAM budgets", styles, lines=False)
    return fig


def draw_budgets(ax, budgets: pd.DataFrame) -> None:
    low, high = ax.get_ylim()
    above = []
    for budget in budgets.sort_values("budget_mb").itertuples():
        if budget.budget_mb > high:
            above.append(f"{text(budget.budget, 20)} {budget.budget_mb / 1e3:.3g} GB")
        elif budget.budget_mb >= low:
            ax.axhline(budget.budget_mb, color="#444", lw=0.8, ls=":")
            ax.annotate(f" {text(budget.budget, 20)}", (0, budget.budget_mb), xycoords=("axes fraction", "data"),
                        fontsize=8, va="bottom", color="#444")
    if above:
        ax.text(0.01, 0.97, "budgets above: " + ", ".join(above), transform=ax.transAxes, va="top", fontsize=8,
                color="#444")
    ax.set_ylim(low, high)


def accuracy_figure(cells, series):
    """Per model and host · device: valid_seen accuracy against latency per sample at batch 1,
    one labelled point per series (variant, backend, …), the Pareto front marked."""
    rows = ok_rows(cells, "accuracy_valid_seen", series)
    rows = rows[(rows["batch_size"] == 1) & rows["sample_latency_p50_ms"].notna()]
    if rows.empty:
        return None
    panels = series_groups(rows, series, ["sample_latency_p50_ms", "accuracy_valid_seen"])
    styles = Styles(rows, series)
    fig, axes = small_multiples(panels, "action accuracy, valid_seen (%)", sharey=False, xlabel="ms per sample at batch 1")
    for key, lines in panels.items():
        tradeoff_panel(axes[key], pd.concat([line for *_, line in lines]), "sample_latency_p50_ms", styles, series)
    finish(fig, f"Accuracy against latency per sample at batch 1 ({FRONT})", styles, lines=False)
    return fig


def size_figure(cells, series):
    """Per model: valid_seen accuracy against the size of the model's file, one labelled point
    per variant and backend (a file is the same on every host), the Pareto front marked."""
    series = [c for c in series if c in ("variant", BACKEND)]  # the others (features) read the same file
    rows = ok_rows(cells, "accuracy_valid_seen", series)
    rows = rows[rows["model_file_mb"].notna()].drop_duplicates(["model", *series])
    if rows.empty:
        return None
    models = sorted(rows["model"].unique())
    fig, grid = plt.subplots(1, len(models), figsize=(width(len(models)), HEADER_IN + ROW_HEIGHT_IN), squeeze=False,
                             layout="constrained")
    styles = Styles(rows, series)
    for model, ax in zip(models, grid[0]):
        tradeoff_panel(ax, rows[rows["model"] == model], "model_file_mb", styles, series)
        ax.set_title(text(model, 24), fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.supxlabel("model file (MB)", fontsize=10)
    fig.supylabel("action accuracy, valid_seen (%)", fontsize=10)
    finish(fig, f"Accuracy against file size ({FRONT})", styles, lines=False)
    return fig


FRONT = "filled, named and joined: the Pareto front, which no other point beats on both; hollow: beaten"


def tradeoff_panel(ax, points: pd.DataFrame, cost: str, styles: Styles, series: list[str]) -> None:
    """Accuracy (%) against `cost` on a log axis, a point per row; the points of the Pareto
    front filled, named and joined by a step line, the others hollow (the legend tells them)."""
    front = pareto_front(points, cost)
    ax.plot(front[cost], front["accuracy_valid_seen"] * 100, color="#999", lw=3, alpha=0.5, zorder=1,
            drawstyle="steps-post")
    for index, point in points.iterrows():
        style = styles.of(point["variant"], tuple(point[c] for c in series[1:]))
        x, y = point[cost], point["accuracy_valid_seen"] * 100
        if index in front.index:
            ax.plot(x, y, ms=7, zorder=3, **style | {"ls": "none"})
            ax.annotate(style["label"], (x, y), xytext=(5, 3), textcoords="offset points", fontsize=8)
        else:
            ax.plot(x, y, ms=6, zorder=2, mfc="none", **style | {"ls": "none"})
    ax.set_xscale("log")
    log_axis(ax.xaxis)
    ax.margins(x=0.12, y=0.1)  # room for the names right of the points


def training_figure(epochs: pd.DataFrame, steps: pd.DataFrame):
    """Per model: the training loss at every logged step and the validation loss after each
    epoch (top), the validation action accuracy after each epoch (bottom), against the epochs
    done; a model without a step log (trained before it was written) shows its epochs only."""
    if epochs.empty or "epoch" not in epochs:
        return None
    models = sorted(epochs["model"].unique())
    fig, grid = plt.subplots(2, len(models), figsize=(width(len(models)), HEADER_IN + 2 * ROW_HEIGHT_IN),
                             sharex="col", squeeze=False, layout="constrained")
    for (top, bottom), model in zip(grid.T, models):
        done = epochs[epochs["model"] == model].sort_values("epoch")
        logged = steps[steps["model"] == model] if "model" in steps else steps
        if not logged.empty:
            progress = logged["epoch"] - 1 + logged["step"] / logged["steps_in_epoch"]
            top.plot(progress, logged["train/loss"], lw=1.5, marker=".", ms=4, label="train (mean since the last point)")
        elif "train/loss" in done:
            top.plot(done["epoch"], done["train/loss"], marker="o", label="train (per epoch: no step log)")
        for column in (c for c in done.columns if c.endswith("/loss") and c != "train/loss"):
            top.plot(done["epoch"], done[column], marker="s", ms=6, ls="--", label=column)
        for column in (c for c in done.columns if c.endswith("/action_acc")):
            bottom.plot(done["epoch"], done[column] * 100, marker="s", ms=6, label=column)
        top.set_title(text(model), fontsize=11)
        top.set_ylabel("loss")
        bottom.set_ylabel("action accuracy (%)")
        bottom.set_xlabel("epochs done")
        bottom.set_xlim(left=0)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle("Training: loss at each logged step and after each epoch, validation accuracy", fontsize=12)
    return fig


def storage_figure(stages: pd.DataFrame, budget_gb: float | None):
    """Bars of the planned size of each stage (raw → store → models → total), each labelled
    with its size, against the budget: on a log axis, as the stages span several powers of
    ten below the budget (a linear one would draw all but the largest as no bar at all)."""
    if stages.empty:
        return None
    fig, ax = plt.subplots(figsize=(MIN_WIDTH_IN, 0.8 + 0.42 * len(stages)), layout="constrained")
    sizes = stages["size_gb"].clip(lower=1e-6)
    start = sizes.min() / 10  # where the bars start: a log axis has no 0
    ax.set_xscale("log")
    bars = ax.barh(stages["stage"], sizes - start, left=start, color="#4c72b0")
    ax.bar_label(bars, [f" {size:.3g} GB" for size in stages["size_gb"]], fontsize=9)
    if budget_gb:
        ax.axvline(budget_gb, color="#c44", ls="--", lw=1)
        ax.annotate(f"budget {budget_gb:g} GB ", (budget_gb, 1.0), xycoords=("data", "axes fraction"), ha="right",
                    va="top", color="#c44", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(start, max(sizes.max(), budget_gb or 0) * 4)
    ax.set_xlabel("GB (1e9 bytes), log scale")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Storage plan against the budget", fontsize=12)
    return fig
