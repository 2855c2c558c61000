"""reports/summary.html: one self-contained page (figures as base64 PNG data URIs, inline
CSS, no script, a Content-Security-Policy that forbids fetching anything) rendered from
templates/summary.html.j2 with autoescaping, so text from the data (host names, file names,
error messages) is shown as text. The key figures are also written as PNG and SVG files."""
from __future__ import annotations

import base64
import datetime as dt
import gc
import logging
import multiprocessing
import multiprocessing.connection
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2
import pandas as pd

from alfred_edge.atomic import atomic_path, write_text
from alfred_edge.bench import schema as bench_schema
from alfred_edge.report import aggregate, findings, inputs as report_inputs, plots, tables
from alfred_edge.variants import COST_ONLY

log = logging.getLogger("alfred_edge.report")

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAME = "summary.html.j2"
# Written as SVG too (beside the PNG), for papers and slides, while the figure stays small:
# an SVG holds one element per point, so a sweep of thousands of cells is PNG only.
KEY_FIGURES = {"latency", "ram", "accuracy"}
SVG_MAX_CELLS = 2000


def empty_table(name: str) -> pd.DataFrame:
    return bench_schema.arrow_schema(name).empty_table().to_pandas()


@dataclass
class ReportInputs:
    """Everything the page shows; each part may be empty, and the page says so."""

    cells: pd.DataFrame
    capacity: pd.DataFrame = field(default_factory=lambda: empty_table("capacity"))
    quantization: pd.DataFrame = field(default_factory=pd.DataFrame)
    training: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (model, epoch)
    training_steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (model, logged step)
    storage_plan_text: str = ""
    storage_stages: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["stage", "size_gb"]))
    storage_budget_gb: float | None = None
    ram_budgets_gb: dict = field(default_factory=dict)


@dataclass
class Figure:
    name: str
    title: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()

    @property
    def anchor(self) -> str:
        return f"figure-{self.name}"


def series_columns() -> list[str]:
    """The columns that tell apart the lines of one model on one host and device: the variant,
    the backend, then the results table's other key columns (features, and any the key gains)."""
    others = [c for c in aggregate.key_columns() if c not in ("host", "device", "model", "variant", "batch_size")]
    return ["variant", *dict.fromkeys([tables.BACKEND, *others])]


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every {{ }} is HTML-escaped unless marked safe (nothing is)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def figure_makers(inputs: ReportInputs, fits: pd.DataFrame, budgets: pd.DataFrame) -> dict:
    """{name: (title, make)}: make() draws the figure, or returns None without data. Slowest
    first (most panels and text), for run_jobs."""
    cells, series = inputs.cells, series_columns()

    def of_cells(draw):
        return lambda: None if cells.empty else draw(cells, series)

    return {
        "ram": ("Peak RAM against batch", of_cells(lambda c, s: plots.ram_figure(c, s, fits, budgets))),
        "latency": ("Latency against batch", of_cells(plots.latency_figure)),
        "sample_latency": ("Latency per sample", of_cells(plots.sample_latency_figure)),
        "accuracy": ("Accuracy against latency", of_cells(plots.accuracy_figure)),
        "size": ("Accuracy against file size", of_cells(plots.size_figure)),
        "energy": ("Energy per sample", of_cells(plots.energy_figure)),
        "roofline": ("Roofline efficiency", of_cells(plots.roofline_figure)),
        "training": ("Training curves", lambda: plots.training_figure(inputs.training, inputs.training_steps)),
        "storage": ("Storage plan", lambda: plots.storage_figure(inputs.storage_stages, inputs.storage_budget_gb)),
    }


def run_jobs(jobs: dict, workers: int = 1) -> dict:
    """{name: job()} for each job. With workers > 1, each job runs in a process forked for
    it alone, at most `workers` at a time (matplotlib and pandas use one core each), started
    in the order given: slow ones first keep the last to finish a short one. A fresh fork per
    job starts from this process's state: the tables reach it without pickling."""
    if workers <= 1:
        return {name: job() for name, job in jobs.items()}
    context = multiprocessing.get_context("fork")
    pending, running, made = list(jobs), {}, {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                name = pending.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_run_and_send, args=(jobs[name], sender), daemon=True)
                process.start()
                sender.close()
                running[receiver] = (name, process)
            for receiver in multiprocessing.connection.wait(list(running)):
                name, process = running.pop(receiver)
                made[name] = _received(name, receiver, process)
    finally:
        for _, process in running.values():  # a job failed: the others are not waited for
            process.kill()
            process.join()
    return {name: made[name] for name in jobs}


def _run_and_send(job, sender) -> None:
    """In the forked process: job()'s value, or its error's traceback, sent to the page
    process. No garbage is collected: a matplotlib figure of many panels is a great many
    objects in reference cycles, which the collector would walk again and again while the
    figure is made, to free nothing; all of it goes when the process ends."""
    gc.disable()
    try:
        outcome = (True, job())
    except BaseException:
        outcome = (False, traceback.format_exc())
    sender.send(outcome)


def _received(name: str, receiver, process):
    """A job's value from its process; its error, or its death, raised here with its name."""
    try:
        succeeded, value = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the process making the report's {name} ended without a result "
                           f"(exit code {process.exitcode})") from None
    process.join()
    if not succeeded:
        raise RuntimeError(f"making the report's {name} failed:\n{value}")
    return value


def drawing(make, with_svg: bool):
    """A job drawing one figure: (PNG, SVG or None), or None where make() has no data."""
    def draw() -> tuple[bytes, bytes | None] | None:
        fig = make()
        if fig is None:
            return None
        try:
            return plots.render(fig, with_svg)
        finally:
            plots.close(fig)
    return draw


def save_figures(drawn: dict, titles: dict, plots_dir: Path | None) -> dict:
    """Figures of the drawn images (None: no data, left out); PNG (and SVG where drawn) into plots_dir."""
    figures = {}
    for name, images in drawn.items():
        if images is None:
            continue
        png, svg = images
        figures[name] = Figure(name, titles[name], png)
        if plots_dir is not None:
            (plots_dir / f"{name}.png").write_bytes(png)
            if svg is not None:
                (plots_dir / f"{name}.svg").write_bytes(svg)
    return figures


def records(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """A DataFrame as (header, rows of formatted strings) for the generic table macro."""
    return list(map(str, frame.columns)), [[tables.fmt(v) for v in row] for row in frame.itertuples(index=False)]


def page_tables(inputs: ReportInputs, budgets: pd.DataFrame) -> dict:
    """Everything the template shows but the figures."""
    cells = inputs.cells
    hosts, environment_rows = tables.environments(cells)
    checked, leak_rows = tables.leaks(cells)
    training = inputs.training
    last_epochs = (training.sort_values("epoch").groupby("model").tail(1).sort_values("model")
                   if not training.empty and "epoch" in training else pd.DataFrame())
    return {
        "hosts": hosts,
        "counts": cells["status"].value_counts().sort_index().to_dict(),
        "cell_count": len(cells),
        "findings": findings.findings(cells, series_columns(), inputs.capacity, inputs.quantization, budgets,
                                      tables.power_reasons(cells)),
        "headline": tables.headline(cells, budgets),
        "budgets": [{"host": b.host, "budget": b.budget, "mb": tables.fmt(b.budget_mb)} for b in budgets.itertuples()],
        "capacity": tables.capacity_rows(inputs.capacity),  # (budget names, rows)
        "power_hosts": tables.power_by_host(cells),
        "power_cells": tables.power_cells(cells),
        "quantization": tables.quantization(inputs.quantization, findings.BASELINE),
        "cost_only_models": tables.cost_only_models(cells),
        "cost_only_reason": COST_ONLY,
        "quantization_all": records(inputs.quantization),
        "roofline": tables.roofline(cells),
        "leak_checked": checked,
        "leaks": leak_rows,
        "training": tables.by_metric(last_epochs, "model"),
        "storage_plan": report_inputs.markdown_blocks(inputs.storage_plan_text),
        "failures": tables.failures(cells),
        "environment": environment_rows,
    }


TABLES_JOB = "page tables"  # beside the figures' names


def context(inputs: ReportInputs, plots_dir: Path | None, workers: int = 1) -> dict:
    """The template's variables: the tables and the figures made side by side in `workers`
    processes (the figures' PNG and SVG files written into plots_dir). Rows without a backend
    (files written before backends were recorded) are of the default one."""
    inputs = replace(inputs, cells=tables.with_backend(inputs.cells),
                     quantization=tables.with_backend(inputs.quantization))
    budgets = tables.budgets_per_host(inputs.cells, inputs.capacity, inputs.ram_budgets_gb)
    makers = figure_makers(inputs, tables.ram_fits(inputs.capacity), budgets)
    with_svg = plots_dir is not None and len(inputs.cells) <= SVG_MAX_CELLS
    jobs = {name: drawing(make, with_svg and name in KEY_FIGURES) for name, (_, make) in makers.items()}
    made = run_jobs({TABLES_JOB: lambda: page_tables(inputs, budgets), **jobs}, workers)
    figures = save_figures({name: made[name] for name in jobs}, {name: title for name, (title, _) in makers.items()},
                           plots_dir)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"generated": generated, "figures": figures, **made[TABLES_JOB]}


def render(inputs: ReportInputs, plots_dir: Path | None = None, workers: int = 1) -> str:
    """The page's HTML; with plots_dir, the figures are also written there."""
    return environment().get_template(TEMPLATE_NAME).render(**context(inputs, plots_dir, workers))


def write_summary(inputs: ReportInputs, html_path: str | Path, plots_dir: str | Path, workers: int = 1) -> None:
    """Write the page and the plot files, each atomically (the plots as one folder); the
    tables and figures are made in `workers` processes."""
    with atomic_path(plots_dir, directory=True) as tmp_plots:
        page = render(inputs, tmp_plots, workers)
        write_text(html_path, page)
