"""Benchmark harness: one cell (model, variant, batch, device) per process, results as Parquet
rows following workflow/schemas/results.schema.yaml.

Layout (as in optimum-benchmark: scenario, workload and trackers kept apart):
    harness.py      the timing loop and its statistics (the scenario)
    workloads.py    what one iteration runs: identity, fake, ALFRED-style episode decoding
    memory.py       RSS / CUDA peaks, the RSS trace and its leak fit
    power.py        power samplers: jtop -> NVML -> RAPL -> none
    roofline.py     matmul throughput and memory bandwidth; FLOPs and weight bytes per step
    capacity.py     peak RAM vs batch fit, and the measured capacity search
    environment.py  the host profile recorded in every row
    runner.py       runs a cell in a child process and turns every outcome into a row
    schema.py       the results schema
`python -m alfred_edge.bench` runs one cell without Snakemake (torch, numpy, psutil, pyarrow only).
"""
