"""What the supported torch releases (pyproject's range, NVIDIA's Jetson wheels included)
spell differently, in one place."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def safe_globals(allowed: list):
    """torch.load(weights_only=True) admits `allowed` inside the block.
    torch.serialization.safe_globals arrived in 2.5 (pytorch#127939); torch 2.4 (JetPack 6.0's
    wheel) has only the process-wide add_safe_globals (pytorch#124331), so there the globals
    not yet allowed are added for the block and taken out after it (what torch itself added
    meanwhile, registering a module it imported, stays)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(allowed):
            yield
        return
    added = [item for item in allowed if item not in serialization.get_safe_globals()]
    serialization.add_safe_globals(added)
    try:
        yield
    finally:
        kept = [item for item in serialization.get_safe_globals() if item not in added]
        serialization.clear_safe_globals()
        serialization.add_safe_globals(kept)
