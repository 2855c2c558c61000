"""Benchmark harness: one cell (model, variant, batch, device) per process, results as Parquet
rows following workflow/schemas/results.schema.yaml.

Layout (as in optimum-benchmark: scenario, workload and trackers kept apart; each tracker
builds its own columns of a cell's row):
    harness.py      the timing loop, its statistics (LatencyTracker) and the Tracker interface
    workloads.py    what one iteration runs: identity, fake, ALFRED-style episode decoding
    memory.py       RSS / CUDA peaks, the RSS trace and its leak fit (MemoryTracker)
    power.py        power samplers: jtop -> NVML -> RAPL -> none (PowerTracker)
    roofline.py     matmul throughput and memory bandwidth; FLOPs and weight bytes per step
                    and the roof they imply (RooflineTracker)
    capacity.py     peak RAM vs batch fit, and the measured capacity search (both halves)
    environment.py  the host profile recorded in every row
    runner.py       runs a job in a child process and turns every outcome into a row
    child.py        the child process: a cell's scenario, the roofline, FLOPs, the search
    schema.py       the results schema and the files' path patterns
`python -m alfred_edge.bench` runs one cell without Snakemake (torch, numpy, psutil, pyarrow only).
"""
