"""summary rule: reports/results.parquet (+ capacity, eval tables, training metrics, storage
plan) -> reports/summary.html and reports/plots/."""
from alfred_edge.joblog import job_logging
from alfred_edge.report import aggregate, html, inputs as report_inputs

with job_logging(snakemake) as log:  # noqa: F821 (snakemake is injected)
    params, inputs, outputs = snakemake.params, snakemake.input, snakemake.output  # noqa: F821
    report = html.ReportInputs(
        cells=aggregate.read_results(inputs.results),
        capacity=aggregate.read_results(inputs.capacity),
        quantization=report_inputs.read_eval_tables(inputs.evals),
        training=report_inputs.read_training(inputs.training),
        training_steps=report_inputs.read_training(inputs.training_steps),
        storage_plan_text=report_inputs.read_storage_plan(inputs.storage_plan),
        storage_stages=report_inputs.storage_stages(params.storage_plan),
        storage_budget_gb=params.storage_plan["budget_bytes"] / 1e9,
        ram_budgets_gb=dict(params.ram_budgets_gb),
    )
    html.write_summary(report, outputs.html, outputs.plots, workers=snakemake.threads)  # noqa: F821
    log.info("wrote %s (%d cells) and %s", outputs.html, len(report.cells), outputs.plots)
