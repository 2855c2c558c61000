"""reports/summary.html: opened in headless Chromium with the network cut off (no console
errors, every image decoded, nothing fetched, a screenshot), text from the data escaped,
two hosts side by side, and every section still sensible when its data is missing."""
from __future__ import annotations

import dataclasses
import gc
import os
import re
import signal
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
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
    evals, trains = fx.write_model_tables(root / "models") if models_tables else ([], [])
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
        storage_plan_text=inputs.read_storage_plan(plan), storage_budget_gb=16.0,
        ram_budgets_gb={"jetson-4gb": 4.0, "jetson-8gb": 8.0, "host": "auto"},
    )
    page = root / "reports" / "summary.html"
    html.write_summary(report, page, root / "reports" / "plots", workers=workers)
    return page


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
        "environment_hosts": "Array.from(document.querySelectorAll('#environment + table tr:first-child th'))"
                             ".map(th => th.textContent)",
    }
    with Browser(chromium) as browser:
        page = browser.open(two_host_page, screenshot=screenshot, checks=checks)
    print(f"screenshot: {screenshot}")
    return page


def test_page_renders_offline_without_console_errors(opened, two_host_page, screenshot):
    assert opened.console_errors == []
    assert len(opened.images) >= 8  # latency, per sample, throughput, RAM, energy, accuracy, roofline, training
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


def test_figure_panels_put_hosts_side_by_side(two_host_page):
    cells = aggregate.read_results(two_host_page.parent / "results.parquet")
    fig = plots.latency_figure(cells)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [plots.panel_title(h, d) for h, d in
                                                  [(fx.LAPTOP.name, "cpu"), (fx.JETSON.name, "cpu"), (fx.JETSON.name, "cuda")]]
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 1
    assert all(ax.get_yscale() == "log" for ax in panels)
    # Ticks inside the shared y range, labelled as plain numbers (no mathtext), on the first panel only.
    low, high = panels[0].get_ylim()
    ticks = panels[0].get_yticks()
    assert 2 <= len(ticks) <= 6 and all(low <= t <= high for t in ticks)
    assert all(label.get_text() and "$" not in label.get_text() for label in panels[0].get_yticklabels())
    assert len(panels[1].get_yticks()) == 0
    assert len({ax.get_ylim() for ax in panels}) == len({ax.get_xlim() for ax in panels}) == 1
    plots.close(fig)


def test_shared_axes_are_labelled_on_the_outer_panels_and_every_panel_has_grid_lines():
    """Six panels in rows of four: y ticks on the first panel of each row, x ticks on the
    lowest panel of each column (the second row's two, the first row's last two)."""
    rows = [{"host": f"host-{index}", "device": "cpu", "model": "lstm", "variant": "fp32", "features": "mmap",
             "batch_size": batch, "status": "ok", "throughput_samples_per_s": (index + 1) * batch}
            for index in range(6) for batch in (1, 2, 4)]
    fig = plots.throughput_figure(pd.DataFrame(rows))
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [i for i, ax in enumerate(panels) if len(ax.get_yticks())] == [0, 4]
    assert [i for i, ax in enumerate(panels) if len(ax.get_xticks())] == [2, 3, 4, 5]
    # An axis without ticks is not drawn at all (it would still lay out its empty label).
    assert [i for i, ax in enumerate(panels) if ax.yaxis.get_visible()] == [0, 4]
    assert [i for i, ax in enumerate(panels) if ax.xaxis.get_visible()] == [2, 3, 4, 5]
    assert [label.get_text() for label in panels[4].get_xticklabels()] == ["1", "2", "4"]
    assert [ax.get_xlabel() for ax in panels] == ["", "", "batch", "batch", "batch", "batch"]
    assert len({ax.get_ylim() for ax in panels}) == 1
    for ax in panels:  # vertical lines at the batches, horizontal ones at the y ticks of the first panel
        grids = [c for c in ax.collections if c.get_transform() in (ax.get_xaxis_transform(), ax.get_yaxis_transform())]
        assert [len(c.get_segments()) for c in grids] == [3, len(panels[0].get_yticks())]
    plots.close(fig)


def test_the_legend_lists_series_by_model_then_variant():
    """Whichever panel shows a series first: here the second host's panel brings lstm bf16."""
    rows = [{"host": host, "device": "cpu", "model": model, "variant": variant, "features": "mmap",
             "batch_size": batch, "status": "ok", "sample_latency_p50_ms": 10.0 * batch}
            for host, series in (("a-host", [("transformer", "fp32"), ("lstm", "fp32")]),
                                 ("b-host", [("lstm", "bf16"), ("lstm", "fp32")]))
            for model, variant in series for batch in (1, 2)]
    fig = plots.sample_latency_figure(pd.DataFrame(rows))
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["lstm bf16", "lstm fp32", "transformer fp32"]
    plots.close(fig)


@pytest.mark.parametrize("low, high, base, expected", [
    (12, 6000, 10, [30, 100, 300, 1000, 3000]),  # 1-2-5 would give 8: 1-3 steps
    (3, 40, 10, [5, 10, 20]),
    (0.5, 20, 10, [0.5, 1, 2, 5, 10, 20]),
    (1, 10 ** 6, 10, [1, 100, 10 ** 4, 10 ** 6]),  # too many powers: every other one
    (150, 180, 10, [150, 160, 170, 180]),  # no power of ten inside: evenly spaced
    (1, 256, 2, [1, 4, 16, 64, 256]),
])
def test_log_ticks_stay_inside_the_range_and_few(low, high, base, expected):
    assert plots.log_ticks(low, high, base) == pytest.approx(expected)


def test_plot_files_are_written_beside_the_page(two_host_page):
    plot_dir = two_host_page.parent / "plots"
    names = {path.name for path in plot_dir.iterdir()}
    assert {f"{key}.png" for key in ("latency", "sample_latency", "throughput", "ram", "energy", "accuracy",
                                     "roofline", "training")} <= names
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


def test_prepare_runs_once_the_first_job_has_forked_and_the_rest_inherit_what_it_made():
    state = {"prepared": False}
    jobs = {name: lambda: state["prepared"] for name in "abc"}
    made = html.run_jobs(jobs, workers=2, prepare=lambda: state.update(prepared=True))
    assert made == {"a": False, "b": True, "c": True} and state["prepared"]


def test_a_spare_grid_serves_the_first_figure_of_its_size_and_is_closed_if_untaken():
    before = set(plt.get_fignums())
    with plots.spare_grids():
        plots.make_spare_grid(3)
        (spare,) = set(plt.get_fignums()) - before
        fig, axes = plots.panel_grid(3)
        assert fig.number == spare and len(axes) == 3
        again, _ = plots.panel_grid(3)
        assert again is not fig  # taken once: the next grid is new
        plots.close(fig)
        plots.close(again)
        plots.make_spare_grid(2)
        assert len(plt.get_fignums()) == len(before) + 1
    assert set(plt.get_fignums()) == before


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
    first, second = tables.headline(cells, budgets)
    assert first["fastest"]["budgets"] == first["throughput"]["budgets"] == "8gb, 16gb"
    assert second["fastest"]["budgets"] == "RAM not measured" and "throughput" not in second


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
