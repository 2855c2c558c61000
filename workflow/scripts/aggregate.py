"""aggregate rule: every host's benchmark files + eval tables -> reports/results.parquet
and reports/capacity.parquet."""
import os

# polars sizes its thread pool when first imported: the rule's threads, not every core.
os.environ["POLARS_MAX_THREADS"] = str(snakemake.threads)  # noqa: F821 (snakemake is injected)

from alfred_edge.atomic import write_parquet  # noqa: E402
from alfred_edge.joblog import job_logging  # noqa: E402
from alfred_edge.report import aggregate  # noqa: E402

with job_logging(snakemake) as log:  # noqa: F821
    params, inputs, outputs = snakemake.params, snakemake.input, snakemake.output  # noqa: F821
    results = aggregate.aggregate(inputs.cells, params.bench_dir, inputs.evals, params.cache)
    capacity = aggregate.aggregate_capacity(inputs.capacity, params.bench_dir)
    write_parquet(results, outputs.results)
    write_parquet(capacity, outputs.capacity)
    log.info("%d cells from %d files, %d capacity rows", results.num_rows, len(inputs.cells), capacity.num_rows)
