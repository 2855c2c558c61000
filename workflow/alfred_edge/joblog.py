"""Logging for pipeline jobs: each script sends its log (and its progress bars) to the
job's log file under logs/, and an uncaught error ends up there with its message."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def job_logging(snakemake):
    """Route stderr and the `alfred_edge` loggers to the job's log file (if it has one)."""
    log_files = list(snakemake.log)
    if not log_files:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        yield logging.getLogger("alfred_edge")
        return
    Path(log_files[0]).parent.mkdir(parents=True, exist_ok=True)
    with open(log_files[0], "w", buffering=1) as stream:
        old_stderr = sys.stderr
        sys.stderr = stream
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=stream, force=True
        )
        try:
            yield logging.getLogger("alfred_edge")
        except Exception:
            logging.getLogger("alfred_edge").exception("job failed")
            raise
        finally:
            sys.stderr = old_stderr
