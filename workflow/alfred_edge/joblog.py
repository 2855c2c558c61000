"""Logging for pipeline jobs: each script sends its log (and its progress bars) to the
job's log file under logs/, and an uncaught error ends up there with its message. A JobError
(bad input, a store over the budget) is the user's to fix, not a bug: it is reported in one
line, which names the file or setting, without a traceback."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path


class JobError(Exception):
    """A failure whose message says what to fix (naming the file or setting)."""


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
        except JobError as error:
            logging.getLogger("alfred_edge").error("%s", error)
            print(error, file=old_stderr)
            raise SystemExit(1) from None
        except Exception:
            logging.getLogger("alfred_edge").exception("job failed")
            raise
        finally:
            sys.stderr = old_stderr
