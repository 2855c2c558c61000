"""aggregate rule: every host's benchmark files + eval tables -> reports/results.parquet
and reports/capacity.parquet."""
from alfred_edge.atomic import write_parquet
from alfred_edge.joblog import job_logging
from alfred_edge.report import aggregate

with job_logging(snakemake) as log:  # noqa: F821 (snakemake is injected)
    params, inputs, outputs = snakemake.params, snakemake.input, snakemake.output  # noqa: F821
    workers = snakemake.threads  # noqa: F821
    results = aggregate.aggregate(inputs.cells, params.bench_dir, inputs.evals, params.cache, workers)
    capacity = aggregate.aggregate_capacity(inputs.capacity, params.bench_dir, workers)
    write_parquet(results, outputs.results)
    write_parquet(capacity, outputs.capacity)
    log.info("%d cells from %d files, %d capacity rows", results.num_rows, len(inputs.cells), capacity.num_rows)
