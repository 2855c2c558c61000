# report stage: every host's benchmark files -> reports/results.parquet -> reports/summary.html.
# Inputs from other hosts are found on disk at parse time (get_report_bench_files, common.smk
# "# --- report ---"), so copying a host's files in reruns only these two rules; the page's
# code (template, figures, tables) is in summary's digest only, so editing it reruns summary alone.


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
        code=get_code_digest(
            "scripts/aggregate.py",
            "alfred_edge/report/aggregate.py",
            "alfred_edge/report/discover.py",
            "alfred_edge/report/inputs.py",
            "alfred_edge/bench/schema.py",
            "schemas/results.schema.yaml",
            "schemas/results_table.schema.yaml",
            "alfred_edge/atomic.py",
        ),
    script:
        "../scripts/aggregate.py"


rule summary:
    input:
        results="reports/results.parquet",
        capacity="reports/capacity.parquet",
        evals=get_report_eval_files(),
        training=get_report_training_files(),
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
        code=get_code_digest(
            "scripts/summary.py",
            "alfred_edge/report",
            "alfred_edge/report/templates/summary.html.j2",
            "alfred_edge/atomic.py",
        ),
    script:
        "../scripts/summary.py"
