"""The machine's load, printed beside every figure: the 2 cores of the development machine
are shared with other work, and a figure means little without the load it was taken under."""
from __future__ import annotations

import os


def host_load() -> str:
    """'load average 1.65 1.21 1.28 on 2 cores' (over the last 1, 5 and 15 minutes)."""
    return "load average {:.2f} {:.2f} {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count())
