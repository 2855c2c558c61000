# report stage: every host's benchmark files -> reports/results.parquet -> reports/summary.html.
# The aggregation reads this host's benchmark files (outputs of the bench rules) and every
# other host's files present under reports/bench/<host>/ when the workflow is parsed, so a
# file copied in changes the aggregate's input set and reruns only these two rules; the
# page's code (template, figures, tables) is in summary's digest only, so editing it reruns
# summary alone.
from alfred_edge.report import discover as report_discover

REPORT_BENCH_DIR = "reports/bench"


def get_report_bench_files(table):
    """Files of one benchmark table ("cells" or "capacity") for the aggregation."""
    others = [
        str(path)
        for path in report_discover.bench_files(REPORT_BENCH_DIR, table)
        if report_discover.host_of(path, REPORT_BENCH_DIR) != BENCH_HOST
    ]
    return get_bench_outputs(table) + others


def get_report_eval_files():
    return get_quantize_eval_tables()


def get_report_training_files(log):
    """Each trained model's training log: "metrics" (one row per epoch) or "steps" (per logged step)."""
    return expand("models/{model}/train_{log}.parquet", model=TRAINED_MODELS, log=log)


def get_report_ram_budgets():
    """RAM budgets for hosts whose files carry no capacity rows: {name: GB or "auto"}."""
    return dict(sorted(BENCH.get("ram_budgets_gb", {}).items()))


report: "../report/workflow.rst"


rule aggregate:
    input:
        cells=get_report_bench_files("cells"),
        capacity=get_report_bench_files("capacity"),
        evals=get_report_eval_files(),
    output:
        results=report(
            "reports/results.parquet",
            caption="../report/results.rst",
            category="Results",
        ),
        capacity="reports/capacity.parquet",
    log:
        "logs/aggregate/aggregate.log",
    threads: 2  # polars reads thousands of files in parallel threads
    resources:
        disk_mb=1,
    params:
        bench_dir=REPORT_BENCH_DIR,
        # Rows of files already read, by path, size, inode and times: not an output, only saves re-parsing.
        cache="reports/.cache/bench_cells.parquet",
        code=get_code_digest("scripts/aggregate.py"),
    script:
        "../scripts/aggregate.py"


rule summary:
    input:
        results="reports/results.parquet",
        capacity="reports/capacity.parquet",
        evals=get_report_eval_files(),
        training=get_report_training_files("metrics"),
        training_steps=get_report_training_files("steps"),
        storage_plan="reports/storage_plan.md",
    output:
        html=report(
            "reports/summary.html", caption="../report/summary.rst", category="Summary"
        ),
        plots=report(
            directory("reports/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Figures",
        ),
    log:
        "logs/summary/summary.log",
    threads: 2  # the figures and the tables are made in parallel processes
    resources:
        disk_mb=5,
    params:
        storage_plan=get_storage_plan(),
        ram_budgets_gb=get_report_ram_budgets(),
        code=get_code_digest("scripts/summary.py"),
    script:
        "../scripts/summary.py"
