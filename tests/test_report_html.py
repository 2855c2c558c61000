"""reports/summary.html: opened in headless Chromium with the network cut off (no console
errors, every image decoded, nothing fetched, screenshots of the page and of each section at
a desktop's and a phone's width), text from the data escaped, two hosts side by side, the
findings read back from the tables, figures drawn to be read, and every section still
sensible when its data is missing."""
from __future__ import annotations

import dataclasses
import gc
import html as html_module
import os
import re
import signal
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alfred_edge.atomic import write_parquet
from alfred_edge.report import aggregate, discover, html, inputs, plots, tables
from alfred_edge.report import synthetic as fx

SIDE_BY_SIDE_JS = """(() => {
  const cards = Array.from(document.querySelectorAll('#headline ~ .hosts .host-card'));
  return cards.map(c => { const r = c.getBoundingClientRect();
    return {title: c.querySelector('h3').textContent, top: Math.round(r.top), left: Math.round(r.left)}; });
})()"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's binary; installed with apt (Debian's `chromium` package) when missing."""
    from report_browser import find_chromium

    binary = find_chromium()
    if binary is None:
        if os.geteuid() != 0:
            pytest.fail("chromium is not installed and the tests are not root: run `apt-get install -y chromium`")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
        binary = find_chromium()
        if binary is None:
            pytest.fail("apt-get installed chromium but no chromium binary is on PATH")
    return binary


def build_report(root: Path, hosts, models_tables: bool = True, storage: bool = True, capacity: bool = True,
                 workers: int = 2) -> Path:
    """Benchmark files of `hosts` → results.parquet → summary.html, as the two rules do (the
    figures drawn in `workers` processes, as the summary rule draws them)."""
    bench = root / "reports" / "bench"
    for seed, host in enumerate(hosts):
        fx.write_host(bench, host, seed=seed)
    for path in [] if capacity else discover.bench_files(bench, "capacity"):
        path.unlink()
    evals, trains, steps = fx.write_model_tables(root / "models") if models_tables else ([], [], [])
    write_parquet(aggregate.aggregate(discover.bench_files(bench), bench, evals), root / "reports" / "results.parquet")
    write_parquet(aggregate.aggregate_capacity(discover.bench_files(bench, "capacity"), bench),
                  root / "reports" / "capacity.parquet")
    plan = root / "reports" / "storage_plan.md"
    if storage:
        plan.write_text(fx.STORAGE_PLAN)
    report = html.ReportInputs(
        cells=aggregate.read_results(root / "reports" / "results.parquet"),
        capacity=aggregate.read_results(root / "reports" / "capacity.parquet"),
        quantization=inputs.read_eval_tables(evals), training=inputs.read_training(trains),
        training_steps=inputs.read_training(steps), storage_plan_text=inputs.read_storage_plan(plan),
        storage_stages=inputs.storage_stages(STORAGE_PLAN_FIGURES if storage else None), storage_budget_gb=16.0,
        ram_budgets_gb={"jetson-4gb": 4.0, "jetson-8gb": 8.0, "host": "auto"},
    )
    page = root / "reports" / "summary.html"
    html.write_summary(report, page, root / "reports" / "plots", workers=workers)
    return page


# The storage plan rule's parse-time figures (data.smk get_storage_plan), the part the bars read.
STORAGE_PLAN_FIGURES = {"dtype": "float16", "reserved": {"models/lstm": 4e6, "models/transformer": 2e6, "reports": 1e4},
                        "splits": {"train": {"raw_bytes": 7e6, "store_bytes": {"float16": 3e6}}}}


@pytest.fixture(scope="module")
def two_host_page(tmp_path_factory) -> Path:
    return build_report(tmp_path_factory.mktemp("report"), [fx.LAPTOP, fx.JETSON])


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory) -> Path:
    """Where the screenshot goes: $REPORT_SCREENSHOT_DIR, else pytest's temporary folder."""
    folder = Path(os.environ.get("REPORT_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshot"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "summary.png"


@pytest.fixture(scope="module")
def opened(chromium, two_host_page, screenshot):
    from report_browser import Browser

    checks = {
        "title": "document.title",
        "scripts": "document.scripts.length",
        "bold": "document.querySelectorAll('b').length",
        "text": "document.body.innerText",
        "cards": SIDE_BY_SIDE_JS,
        "environment_hosts": "Array.from(document.querySelectorAll('#environment + .scroll tr:first-child th'))"
                             ".map(th => th.textContent)",
    }
    with Browser(chromium) as browser:
        page = browser.open(two_host_page, screenshot=screenshot, checks=checks)
    print(f"screenshot: {screenshot}")
    return page


def test_page_renders_offline_without_console_errors(opened, two_host_page, screenshot):
    assert opened.console_errors == []
    assert len(opened.images) == 9  # latency, per sample, RAM, energy, accuracy, file size, roofline, training, storage
    undecoded = [image for image in opened.images if not (image["complete"] and image["width"] > 0)]
    assert undecoded == []
    # The page itself, then only its embedded images: nothing was fetched from anywhere.
    assert opened.requests[0] == two_host_page.resolve().as_uri()
    assert all(url.startswith("data:image/png;base64,") for url in opened.requests[1:])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000


def test_html_from_the_data_is_shown_as_text(opened, two_host_page):
    assert opened.title == "alfred-edge summary"  # the injected scripts did not run
    assert opened.values["scripts"] == 0 and opened.values["bold"] == 0
    text = opened.values["text"]
    assert fx.JETSON.name in text  # the host name, tags and all, as text
    assert fx.EVIL_ERROR in text
    source = two_host_page.read_text()
    assert "<b>evil" not in source and "<script>" not in source and "<img src=x" not in source
    assert "orin-&lt;b&gt;evil&lt;/b&gt;&lt;script&gt;" in source


def test_two_hosts_side_by_side(opened):
    cards = opened.values["cards"]
    titles = [card["title"] for card in cards]
    assert titles == [f"{fx.LAPTOP.name} · cpu", f"{fx.JETSON.name} · cpu", f"{fx.JETSON.name} · cuda"]
    assert len({card["top"] for card in cards}) == 1  # one row
    assert cards[0]["left"] < cards[1]["left"] < cards[2]["left"]
    assert opened.values["environment_hosts"][1:] == [fx.LAPTOP.name, fx.JETSON.name]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def findings(page: Path) -> list[str]:
    """The findings' sentences as the page shows them."""
    source = page.read_text()
    section = source[source.index('<h2 id="findings">'):source.index('<h2 id="headline">')]
    return [" ".join(html_module.unescape(item).split()) for item in re.findall(r"<li>(.*?)</li>", section, re.S)]


def sentence(sentences: list[str], start: str) -> str:
    (found,) = [s for s in sentences if s.startswith(start)]
    return found


def test_every_figure_is_drawn_at_least_900_pixels_wide_and_no_markdown_is_left_raw(two_host_page):
    plot_dir = two_host_page.parent / "plots"
    widths = {path.name: png_size(path.read_bytes())[0] for path in plot_dir.glob("*.png")}
    assert len(widths) == 9 and min(widths.values()) >= 900, widths
    source = two_host_page.read_text()
    assert "<pre" not in source and "|---" not in source and "**" not in source


def test_one_panel_per_host_device_and_model_the_variants_as_lines(two_host_page):
    cells = results(two_host_page.parent / "results.parquet")
    fig = plots.sample_latency_figure(cells, html.series_columns())
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles == [plots.panel_title(host, device, model) for host, device in
                      [(fx.LAPTOP.name, "cpu"), (fx.JETSON.name, "cpu"), (fx.JETSON.name, "cuda")]
                      for model in ("lstm", "transformer")]
    first = panels(fig)[0]
    assert [line.get_label() for line in first.get_lines()] == list(fx.LAPTOP.variants)  # the registry's order
    # Hosts in rows, models in columns; one y range and one x range (shared axes), log scales
    # labelled as plain numbers, tick labels on the outer panels only.
    assert len({round(ax.get_position().y0, 3) for ax in panels(fig)}) == 3
    assert len({ax.get_ylim() for ax in panels(fig)}) == len({ax.get_xlim() for ax in panels(fig)}) == 1
    fig.draw_without_rendering()
    assert all(ax.get_yscale() == "log" and ax.get_xscale() == "log" for ax in panels(fig))
    assert [label.get_text() for label in panels(fig)[-1].get_xticklabels()] == ["1", "2", "4", "8"]
    assert all("$" not in label.get_text() for label in first.get_yticklabels())
    shown = [bool([t for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]) for ax in panels(fig)]
    assert shown == [True, False] * 3
    assert [text.get_text() for text in fig.legends[0].get_texts()] == list(fx.LAPTOP.variants)
    plots.close(fig)


def test_the_ram_figure_is_scaled_to_the_data_and_names_the_budgets_above_it(two_host_page):
    reports = two_host_page.parent
    cells, capacity = results(reports / "results.parquet"), aggregate.read_results(reports / "capacity.parquet")
    budgets = tables.budgets_per_host(cells, capacity, {})
    fig = plots.ram_figure(cells, html.series_columns(), tables.ram_fits(capacity), budgets)
    ok = cells[cells["status"] == "ok"]
    for ax in panels(fig):
        host, device, model = (part.strip() for part in ax.get_title().split("·"))
        peaks = ok[(ok["device"] == device) & (ok["model"] == model) & (ok["host"].str.startswith(host.rstrip("…")))]
        low, high = ax.get_ylim()
        assert low <= peaks["peak_memory_mb"].min() and peaks["peak_memory_mb"].max() <= high < 1.5 * peaks["peak_memory_mb"].max()
        note = [t.get_text() for t in ax.texts if t.get_text().startswith("budgets above")]
        assert note and "jetson-4gb 4 GB" in note[0]
        assert len(ax.get_lines()) == 2 * len(set(peaks["variant"]))  # points and fitted line per variant
    plots.close(fig)


def test_the_training_figure_draws_every_logged_step(two_host_page, tmp_path):
    _, epochs, steps = fx.write_model_tables(tmp_path)
    fig = plots.training_figure(inputs.read_training(epochs), inputs.read_training(steps))
    loss_panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in loss_panels] == ["lstm", "transformer"]
    for ax in loss_panels:
        train_line = next(line for line in ax.get_lines() if line.get_label().startswith("train"))
        x = train_line.get_xdata()
        assert len(x) == 90 and x[0] == pytest.approx(1 / 30) and x[-1] == pytest.approx(3.0)
    plots.close(fig)
    # A model trained before the step log existed: its epochs, said so.
    fig = plots.training_figure(inputs.read_training(epochs), pd.DataFrame())
    assert fig.axes[0].get_lines()[0].get_label() == "train (per epoch: no step log)"
    plots.close(fig)


def test_a_second_backend_tells_lines_apart_and_rows_without_one_are_eager():
    """Its lines are dashed and labelled where the value is not the most common; a row whose
    file has no backend (an older board's) is of the eager backend."""
    rows = [{"host": "h", "device": "cpu", "model": "lstm", "variant": variant, "features": "mmap", "backend": backend,
             "batch_size": batch, "status": "ok", "sample_latency_p50_ms": 10.0 * batch}
            for variant in ("fp32", "int8_dynamic") for backend in (None, "eager", "onnxruntime") for batch in (1, 2)]
    cells = tables.with_backend(pd.DataFrame(rows[0:2] + rows[4:6] + rows[8:12]))  # fp32's eager rows without a backend
    fig = plots.sample_latency_figure(cells, html.series_columns())
    styles = {line.get_label(): line.get_linestyle() for line in panels(fig)[0].get_lines()}
    assert styles == {"fp32": "-", "fp32 · onnxruntime": "--", "int8_dynamic": "-", "int8_dynamic · onnxruntime": "--"}
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["fp32", "int8_dynamic", "eager", "onnxruntime"]  # variants by colour, backends by line style
    plots.close(fig)
    assert list(tables.with_backend(pd.DataFrame({"variant": ["fp32"]}))["backend"]) == ["eager"]


def results(path: Path) -> pd.DataFrame:
    """results.parquet as the page reads it (rows without a backend are eager's)."""
    return tables.with_backend(aggregate.read_results(path))


def test_the_findings_state_what_fits_each_budget_and_what_int8_costs_and_buys(two_host_page):
    """Read back from results.parquet and capacity.parquet: per model, the largest batch of fp32
    under each budget, and int8_dynamic's accuracy change and speed-up against fp32."""
    reports = two_host_page.parent
    cells, capacity = aggregate.read_results(reports / "results.parquet"), aggregate.read_results(reports / "capacity.parquet")
    sentences = findings(two_host_page)
    ok = cells[(cells["status"] == "ok") & (cells["features"] == "mmap")]
    for model in ("lstm", "transformer"):
        fp32 = capacity[(capacity["model"] == model) & (capacity["variant"] == "fp32") & (capacity["host"] == fx.LAPTOP.name)]
        budgets = fp32.sort_values("budget_mb")
        fits = sentence(sentences, f"{model} fp32 on {fx.LAPTOP.name} · cpu, the largest batch")
        for row in budgets.itertuples():
            assert f"{row.budget_name} {int(row.predicted_max_batch):,}" in fits, (row.budget_name, fits)
        assert f"measured {int(budgets['measured_max_batch'].dropna().iloc[0]):,}" in fits

        at1 = ok[(ok["model"] == model) & (ok["batch_size"] == 1) & (ok["host"] == fx.LAPTOP.name)].set_index("variant")
        change = (at1.at["int8_dynamic", "accuracy_valid_seen"] - at1.at["fp32", "accuracy_valid_seen"]) * 100
        speedup = at1.at["fp32", "sample_latency_p50_ms"] / at1.at["int8_dynamic", "sample_latency_p50_ms"]
        compressed = sentence(sentences, f"{model} int8_dynamic against fp32:")
        assert f"accuracy {at1.at['int8_dynamic', 'accuracy_valid_seen'] * 100:.3g} % ({change:+.2f} points)" in compressed
        assert f"{speedup:.2f}× as fast on {fx.LAPTOP.name} · cpu" in compressed


def test_a_sentence_names_a_cell_of_another_series_by_that_value():
    """E.g. the one cell reading features from RAM beside the memory-mapped sweep."""
    from alfred_edge.report.findings import other_series_named

    rows = pd.DataFrame({"variant": ["fp32", "fp32", "int8_dynamic"], "features": ["mmap", "ram", "mmap"]})
    assert list(other_series_named(rows, ["variant", "features"])["variant"]) == ["fp32", "fp32 · ram", "int8_dynamic"]


def test_the_findings_say_why_a_number_is_missing(two_host_page):
    sentences = findings(two_host_page)
    cells = aggregate.read_results(two_host_page.parent / "results.parquet")
    (reason,) = cells.loc[cells["host"] == fx.LAPTOP.name, "power_unavailable_reason"].dropna().unique()
    assert sentence(sentences, f"lstm fp32 on {fx.LAPTOP.name} · cpu: ").endswith(f"energy not measured ({reason}).")
    assert "mean power 5.2 → 5.2 W" in sentence(sentences, f"lstm fp32 on {fx.JETSON.name} · cpu: ")
    assert sentence(sentences, "transformer bf16 against fp32:").startswith(
        "transformer bf16 against fp32: no accuracy (unavailable: bf16 <LSTMCell> not supported & emulated)")


def test_the_storage_plan_is_shown_as_tables_its_text_escaped(tmp_path):
    plan = "# Storage plan\n\nSource: `<b>x</b>`; **fits**.\n\n## Total\n\n| | GB |\n|---|---|\n| store | **0.5** |\n"
    page = html.render(html.ReportInputs(cells=fx_cells(tmp_path), storage_plan_text=plan))
    section = page[page.index('<h2 id="storage">'):page.index('<h2 id="failures">')]
    assert "<h3>Total</h3>" in section and "Storage plan</h3>" not in section
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>; <strong>fits</strong>." in section
    assert re.search(r"<tr><th></th><th>GB</th></tr>\s*<tr><td>store</td><td><strong>0.5</strong></td></tr>", section)


def fx_cells(tmp_path) -> pd.DataFrame:
    bench = tmp_path / "bench"
    fx.write_host(bench, dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32",), batches=(1, 2)))
    return aggregate.aggregate(discover.bench_files(bench), bench).to_pandas(types_mapper=aggregate.nullable_type)


def test_the_quantization_table_gives_the_accuracy_change_against_eager_fp32():
    evals = tables.with_backend(pd.DataFrame({
        "model": ["lstm", "lstm", "lstm", "transformer", "big"], "variant": ["int8_dynamic", "fp32", "fp32", "fp16", "fp32"],
        "backend": [None, None, "onnxruntime", None, None], "status": ["ok"] * 5,
        "accuracy_valid_seen": [0.913, 0.9, 0.899, 0.8, None], "reason": ["", "", "", "", "untrained: cost only"]}))
    header, rows = tables.quantization(evals, "fp32")
    assert header == ["model", "variant", "backend", "status", "accuracy valid_seen %", "reason",
                      "Δ valid_seen vs fp32 (points)"]
    assert rows == [["lstm", "int8_dynamic", "eager", "ok", "91.3", "", "+1.30"],
                    ["lstm", "fp32", "eager", "ok", "90", "", "+0.00"],
                    ["lstm", "fp32", "onnxruntime", "ok", "89.9", "", "-0.10"],
                    ["transformer", "fp16", "eager", "ok", "80", "", "–"],
                    ["big", "fp32", "eager", "ok", "untrained: cost only", "untrained: cost only", "–"]]


def test_the_page_fits_a_phone_and_each_section_is_captured_at_both_widths(chromium, two_host_page, screenshot):
    """At a phone's width nothing but a table's own box scrolls sideways; a screenshot of each
    section at 1400 and 390 px goes beside the page's."""
    from report_browser import PHONE_WIDTH, Browser

    widths = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    figures = "Array.from(document.images).map(i => Math.round(i.getBoundingClientRect().width))"
    for width, prefix in ((1400, "desktop"), (PHONE_WIDTH, "phone")):
        with Browser(chromium) as browser:
            page = browser.open(two_host_page, checks={"widths": widths, "figures": figures}, width=width)
            shots = browser.section_screenshots(screenshot.parent, prefix)
        assert page.console_errors == []
        scroll_width, client_width = page.values["widths"]
        assert scroll_width == client_width <= width
        assert all(0 < figure <= client_width for figure in page.values["figures"])
        assert [path.name for path in shots] == [f"{prefix}-{section}.png" for section in SECTIONS]
        assert all(path.stat().st_size > 2000 for path in shots)


SECTIONS = ["findings", "headline", "latency", "ram", "power", "quantization", "roofline", "leaks", "training",
            "storage", "failures", "environment"]


def test_plot_files_are_written_beside_the_page(two_host_page):
    plot_dir = two_host_page.parent / "plots"
    names = {path.name for path in plot_dir.iterdir()}
    assert {f"{key}.png" for key in ("latency", "sample_latency", "ram", "energy", "accuracy", "size", "roofline",
                                     "training", "storage")} <= names
    assert {f"{key}.svg" for key in html.KEY_FIGURES} <= names
    assert (plot_dir / "latency.svg").read_text().lstrip().startswith("<?xml")


def test_a_page_made_in_worker_processes_equals_one_made_in_one(two_host_page, tmp_path):
    serial = build_report(tmp_path, [fx.LAPTOP, fx.JETSON], workers=1)
    parallel_plots, serial_plots = two_host_page.parent / "plots", serial.parent / "plots"
    names = sorted(p.name for p in parallel_plots.iterdir())
    assert names == sorted(p.name for p in serial_plots.iterdir()) and "latency.png" in names
    for name in (n for n in names if n.endswith(".png")):
        assert (parallel_plots / name).read_bytes() == (serial_plots / name).read_bytes(), name
    # The tables too (made in a worker beside the figures): the pages differ in their time at most.
    pages = [re.sub(r"Generated [^·]*·", "", page.read_text()) for page in (two_host_page, serial)]
    assert pages[0] == pages[1] and "samples/s" in pages[0]  # the headline's throughput


def test_the_figure_workers_collect_no_garbage_and_the_page_process_still_does():
    assert html.run_jobs({"a": gc.isenabled, "b": gc.isenabled}, workers=2) == {"a": False, "b": False}
    assert gc.isenabled()


def test_each_job_runs_in_a_process_of_its_own_and_comes_back_in_order():
    pids = html.run_jobs({name: os.getpid for name in "cba"}, workers=2)
    assert list(pids) == ["c", "b", "a"]
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()


@pytest.mark.parametrize("job, message", [
    (lambda: 1 / 0, "failed:.*ZeroDivisionError"),
    (lambda: os._exit(3), "without a result \\(exit code 3\\)"),
    (lambda: os.kill(os.getpid(), signal.SIGKILL), "without a result \\(exit code -9\\)"),
])
def test_a_job_that_fails_or_dies_is_an_error_naming_it(job, message):
    with pytest.raises(RuntimeError, match=message) as error:
        html.run_jobs({"fine": lambda: 1, "broken part": job}, workers=2)
    assert "broken part" in str(error.value)


def test_sections_say_why_their_data_is_missing(tmp_path):
    """One host, no power, no capacity rows, no eval or training tables, no storage plan."""
    bare = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32",), batches=(1,))
    page = build_report(tmp_path, [bare], models_tables=False, storage=False, capacity=False)
    text = page.read_text()
    assert "rapl: /sys/class/powercap/intel-rapl:0/energy_uj permission denied" in text
    assert "No host measured power" in text
    assert "No capacity rows" in text and "No quantization tables" in text
    assert "jetson-4gb, jetson-8gb, host" in text  # budgets from the config when a host has no capacity rows
    assert "No training metrics" in text and "No storage plan" in text
    assert "No leak flagged in 1 checked cells" in text


def test_an_older_boards_rows_are_shown_with_the_columns_they_have(tmp_path):
    """A board whose harness wrote no features, memory or power columns: its latency is drawn
    and stated beside a current host's, and the findings say what it lacks."""
    bench = tmp_path / "bench"
    fx.write_host(bench, dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32", "int8_dynamic"), batches=(1, 2)))
    for variant, batch in [(v, b) for v in ("fp32", "int8_dynamic") for b in (1, 2)]:
        path = bench / "old-board" / "cells" / f"{variant}-b{batch}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        latency = (50.0 if variant == "fp32" else 20.0) * (1 + batch)
        pq.write_table(pa.table({"host": ["old-board"], "device": ["cpu"], "model": ["lstm"], "variant": [variant],
                                 "batch_size": [batch], "status": ["ok"], "latency_p50_ms": [latency],
                                 "sample_latency_p50_ms": [latency / batch]}), path)
    cells = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas(types_mapper=aggregate.nullable_type)
    page = tmp_path / "summary.html"
    page.write_text(html.render(html.ReportInputs(cells=cells, ram_budgets_gb={"jetson-4gb": 4.0})))
    cells = tables.with_backend(cells)
    sentences = findings(page)
    assert sentence(sentences, "lstm fp32 on old-board · cpu: 100 ms per sample at batch 1, 75 at batch 2")
    compressed = sentence(sentences, "lstm int8_dynamic against fp32: no accuracy (no eval table)")
    assert "2.50× as fast on old-board · cpu (40 against 100 ms)" in compressed
    assert sentence(sentences, "lstm on old-board · cpu: no capacity rows, and no peak memory of fp32")
    fig = plots.sample_latency_figure(cells, html.series_columns())
    assert [ax.get_title() for ax in panels(fig)] == ["laptop · cpu · lstm", "old-board · cpu · lstm"]
    assert {line.get_label() for line in panels(fig)[1].get_lines()} == {"fp32 · –", "int8_dynamic · –"}
    plots.close(fig)


def test_environment_rows_join_each_hosts_distinct_values_and_span_its_times():
    cells = pd.DataFrame({column: pd.array([None] * 4, dtype="string") for column in tables.ENVIRONMENT_COLUMNS})
    cells["host"] = pd.array(["a", "a", "a", "b"], dtype="string")
    cells["torch_version"] = pd.array(["2.13.0", "2.12.0", "2.13.0", None], dtype="string")
    cells["ts_utc"] = pd.array(["2026-01-02T00:00Z", "2026-01-01T00:00Z", "2026-01-03T00:00Z", None], dtype="string")
    hosts, rows = tables.environments(cells)
    values = {row["field"]: row["values"] for row in rows}
    assert hosts == ["a", "b"]
    assert values["torch_version"] == ["2.12.0, 2.13.0", "–"]
    assert values["ts_utc"] == ["2026-01-01T00:00Z … 2026-01-03T00:00Z", "–"]
    assert values["cpu_model"] == ["–", "–"]


def test_the_headline_names_the_budgets_of_its_host_a_cell_fits():
    cells = pd.DataFrame({
        "host": ["a", "b"], "device": ["cpu", "cpu"], "device_name": ["x", "y"], "status": ["ok", "ok"],
        "model": ["lstm", "lstm"], "variant": ["fp32", "fp32"], "batch_size": [1, 1],
        "sample_latency_p50_ms": [5.0, 6.0], "throughput_samples_per_s": [200.0, None],
        "accuracy_valid_seen": [None, None], "peak_memory_mb": [5000.0, None],
    })
    budgets = pd.DataFrame({"host": ["a", "a", "a", "b"], "budget": ["4gb", "8gb", "16gb", "b-32gb"],
                            "budget_mb": [4000.0, 8000.0, 16000.0, 32000.0]})
    first, second = tables.headline(tables.with_backend(cells), budgets)
    assert first["fastest"]["budgets"] == first["throughput"]["budgets"] == "8gb, 16gb"
    assert second["fastest"]["budgets"] == "RAM not measured" and second["throughput"] is None


def test_a_page_with_no_successful_cell(tmp_path):
    bench = tmp_path / "bench"
    host = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32",), batches=(1, 2))
    fx.write_host(bench, host)
    cells = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas(types_mapper=aggregate.nullable_type)
    cells["status"] = "timeout"
    cells["error"] = "no iteration finished within 600 s"
    page = html.render(html.ReportInputs(cells=cells))
    assert "No benchmark cell finished successfully" in page
    assert "no iteration finished within 600 s" in page
    assert "<img" not in page


def test_an_empty_results_table_renders(tmp_path):
    empty = aggregate.aggregate([], tmp_path).to_pandas(types_mapper=aggregate.nullable_type)
    page = html.render(html.ReportInputs(cells=empty))
    assert "0 benchmark cells" in page and "No benchmark results" in page
    assert isinstance(empty, pd.DataFrame) and empty.empty


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """The runtimes issue's variants on two backends beside a cost-only model: (results, its page)."""
    cells, evals = fx.runtime_results(fx.LAPTOP)
    page = tmp_path_factory.mktemp("runtimes") / "summary.html"
    html.write_summary(html.ReportInputs(cells=cells, quantization=evals, ram_budgets_gb={"jetson-4gb": 4.0}), page,
                       page.parent / "plots")
    return cells, page


def beaten(points: pd.DataFrame, cost: str) -> set:
    """The points another point beats: no costlier, no less accurate, better on one."""
    return {i for i, p in points.iterrows() if any(
        q[cost] <= p[cost] and q["accuracy_valid_seen"] >= p["accuracy_valid_seen"]
        and (q[cost] < p[cost] or q["accuracy_valid_seen"] > p["accuracy_valid_seen"]) for _, q in points.iterrows())}


@pytest.mark.parametrize("figure, cost", [(plots.accuracy_figure, "sample_latency_p50_ms"),
                                          (plots.size_figure, "model_file_mb")])
def test_the_tradeoff_view_has_a_point_per_variant_and_backend_and_fills_the_pareto_front(runtimes, figure, cost):
    cells, _ = runtimes
    fig = figure(tables.with_backend(cells), html.series_columns())
    trained = sorted(set(cells["model"]) - {fx.COST_ONLY_MODEL})
    assert [ax.get_title().split(" · ")[-1] for ax in panels(fig)] == trained  # the cost-only model has no accuracy
    for ax, model in zip(panels(fig), trained):
        points = cells[(cells["model"] == model) & (cells["batch_size"] == 1)].reset_index(drop=True)
        assert len(points) == 12  # 6 variants × 2 backends
        marks = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
        drawn = {(round(float(line.get_xdata()[0]), 6), round(float(line.get_ydata()[0]), 6)): line.get_markerfacecolor()
                 for line in marks}
        expected = {(round(float(p[cost]), 6), round(float(p["accuracy_valid_seen"]) * 100, 6)): i
                    for i, p in points.iterrows()}
        assert drawn.keys() == expected.keys()
        hollow = {expected[xy] for xy, face in drawn.items() if face == "none"}
        assert hollow == beaten(points, cost) and 0 < len(hollow) < len(points)
        named = {text.get_text() for text in ax.texts}  # the front's points, by variant and (not eager) backend
        assert named == {p.variant if p.backend == "eager" else f"{p.variant} · {p.backend} · {p.provider}"
                         for i, p in points.iterrows() if i not in hollow}
    plots.close(fig)


def test_a_cost_only_model_shows_its_cost_and_says_untrained_where_an_accuracy_would_be(runtimes):
    cells, page = runtimes
    source, sentences = page.read_text(), findings(page)
    model = fx.COST_ONLY_MODEL
    headline = source[source.index('<h2 id="headline">'):source.index('<h2 id="latency">')]
    at1 = cells[(cells["model"] == model) & (cells["batch_size"] == 1)]
    fastest = at1.loc[at1["sample_latency_p50_ms"].idxmin()]
    assert (f"<td>{model} {fastest['variant']} · {fastest['backend']} · {fastest['provider']} (untrained: cost only)</td>"
            f"<td>{tables.fmt(fastest['sample_latency_p50_ms'])} ms per sample, "
            f"{tables.fmt(fastest['peak_memory_mb'])} MB peak; no accuracy (untrained: cost only)</td>") in headline
    assert sentence(sentences, f"{model} int8_dynamic against fp32: no accuracy (untrained: cost only)")
    fp32 = at1[(at1["variant"] == "fp32") & (at1["backend"] == "eager")].iloc[0]
    side_by_side = sentence(sentences, "On laptop · cpu at batch 1 (fp32): ")
    assert (f"{model} {tables.fmt(fp32['sample_latency_p50_ms'])} ms per sample (" in side_by_side
            and f"{tables.fmt(fp32['peak_memory_mb'])} MB peak, 460 MB file, no accuracy (untrained: cost only)" in side_by_side)
    quantization = source[source.index('<h2 id="quantization">'):source.index('<h2 id="roofline">')]
    assert f"Left out, as they have no accuracy ({model}): untrained: cost only" in quantization
    row = re.search(rf"<tr><td>{model}</td><td>fp32</td><td>eager</td>(.*?)</tr>", quantization).group(1)
    assert row.count("<td>untrained: cost only</td>") == 3  # both accuracies and the reason
    assert "untrained: cost only" not in re.sub(r"<h2 id=.(quantization|headline|findings).*?(?=<h2)", "", source, flags=re.S)


def test_the_findings_compare_each_backend_with_eager_fp32(runtimes):
    cells, page = runtimes
    at1 = cells[(cells["model"] == "lstm") & (cells["batch_size"] == 1)].set_index(["variant", "backend"])
    speedup = at1.at[("fp32", "eager"), "sample_latency_p50_ms"] / at1.at[("fp32", "onnxruntime"), "sample_latency_p50_ms"]
    found = sentence(findings(page), "lstm fp32 · onnxruntime · cpu against fp32:")
    assert found.startswith("lstm fp32 · onnxruntime · cpu against fp32: accuracy 93 % (+0.00 points), file 18.8 MB (1.02×)")
    assert f"{speedup:.2f}× as fast on laptop · cpu" in found


def test_a_runtime_whose_evaluation_failed_says_why_on_each_provider(tmp_path):
    """An onnxruntime variant benchmarked on the cpu provider whose evaluation failed: its
    finding gives the eval row's reason (the eval row names no provider; the cell does)."""
    cells, evals = fx.runtime_results(fx.LAPTOP, variants=("fp32", "int8_dynamic"))
    failed = (evals["model"] == "lstm") & (evals["variant"] == "int8_dynamic") & (evals["backend"] == "onnxruntime")
    evals.loc[failed, ["status", "reason", "accuracy_valid_seen"]] = ["failed", "evaluation failed: boom", None]
    runs = (cells["model"] == "lstm") & (cells["variant"] == "int8_dynamic") & (cells["backend"] == "onnxruntime")
    cells.loc[runs, ["accuracy_valid_seen", "accuracy_valid_unseen"]] = None
    page = tmp_path / "summary.html"
    html.write_summary(html.ReportInputs(cells=cells, quantization=evals, ram_budgets_gb={"jetson-4gb": 4.0}), page,
                       tmp_path / "plots")
    provider = cells.loc[runs, "provider"].iloc[0]
    found = sentence(findings(page), f"lstm int8_dynamic · onnxruntime · {provider} against fp32: ")
    assert "no accuracy (failed: evaluation failed: boom)" in found


@pytest.mark.parametrize("ram, says", [((40.0, 38.0, 43.0), "they agree within their intervals"),
                                       ((30.0, 29.0, 31.0), "they differ beyond their intervals")])
def test_the_findings_say_whether_the_store_and_ram_cells_agree_and_why_they_may_not(ram, says):
    from alfred_edge.report.findings import store_against_ram

    rows = pd.DataFrame([
        {"model": "lstm", "variant": "fp32", "batch_size": 1, "latency_p50_ms": 42.0, "latency_p50_ci_low_ms": 40.0,
         "latency_p50_ci_high_ms": 45.0},
        {"model": "lstm", "variant": "fp32 · ram", "batch_size": 1, "latency_p50_ms": ram[0],
         "latency_p50_ci_low_ms": ram[1], "latency_p50_ci_high_ms": ram[2]}])
    text = store_against_ram("laptop · cpu", rows)
    assert text.startswith("On laptop · cpu, fp32 with the frames read into RAM and from the memory-mapped store (")
    assert "it is the host's speed between the two cells" in text
    assert f"lstm at batch 1: {ram[0]:g} ms [{ram[1]:g}–{ram[2]:g}] from RAM against 42 [40–45] from the store: {says}." \
        in text
    assert store_against_ram("laptop · cpu", rows.drop(columns="latency_p50_ci_low_ms")) is None  # an older board's rows
