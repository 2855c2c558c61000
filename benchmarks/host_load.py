"""The machine's load, printed beside every figure: the 2 cores of the development machine
are shared with other work, and a figure means little without the load it was taken under."""
from __future__ import annotations

import os
from pathlib import Path


def host_load() -> str:
    """'load average 1.65 1.21 1.28 on 2 cores' (over the last 1, 5 and 15 minutes)."""
    return "load average {:.2f} {:.2f} {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count())


def last_level_cache() -> str:
    """'L3 cache 105 MiB' (cpu0's largest cache level, from sysfs; 'cache size unknown' where
    sysfs does not say): weights that fit in it are read from the cache, not from memory, and
    this VM's cache size has differed from one machine to the next."""
    levels = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = (index / "level").read_text().strip(), (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)  # sysfs writes "107520K"
        levels[int(level)] = int(size.rstrip("KM")) * unit
    if not levels:
        return "cache size unknown"
    top = max(levels)
    return f"L{top} cache {levels[top] / (1 << 20):.0f} MiB"
