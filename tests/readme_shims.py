"""Stand-ins for `snakemake`, `pip` and `python` while test_readme_commands.py runs the READMEs'
commands with bash: each runs its program in the command's cheap form, and appends what it was
called with (program, arguments, exit status, output) as one JSON line to $README_SHIM_LOG.

    snakemake ARGS   python -m snakemake -n ARGS (with --unlock or --report: ARGS as given)
    pip install ARGS python -m pip install --dry-run ARGS; an extra the project lacks fails
                     (pip only warns of it)
    python ARGS      -m alfred_edge.bench JOB ...: recorded only (the test parses the arguments
                     with the runner's own parser); with --help, or pytest's --collect-only,
                     run as given; anything else is refused (it has no cheap form yet)

Usage (what the test's bin folder holds): readme_shims.py PROGRAM ARGS..."""
from __future__ import annotations

import json
import os
import subprocess
import sys

RECORDED_ONLY = ["-m", "alfred_edge.bench"]


def cheap_form(program: str, args: list[str]) -> list[str] | None:
    """The command that runs instead of `program args`; None: only recorded."""
    if program == "snakemake":
        as_given = "--unlock" in args or any(a == "--report" or a.startswith("--report=") for a in args)
        return [sys.executable, "-m", "snakemake", *(args if as_given else ["-n", *args])]
    if program == "pip":
        if args[:1] != ["install"]:
            raise SystemExit(f"readme_shims: no cheap form for pip {' '.join(args)}")
        return [sys.executable, "-m", "pip", "install", "--dry-run", *args[1:]]
    if "--help" in args or "-h" in args or "--collect-only" in args:
        return [sys.executable, *args]
    if args[:2] == RECORDED_ONLY and len(args) > 2:
        return None
    raise SystemExit(f"readme_shims: no cheap form for python {' '.join(args)}")


def main(program: str, args: list[str]) -> int:
    command = cheap_form(program, args)
    returncode, output = 0, ""
    if command is not None:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        returncode, output = done.returncode, done.stdout
        if program == "pip" and "does not provide the extra" in output:
            returncode = 1
        sys.stdout.write(output)
    with open(os.environ["README_SHIM_LOG"], "a") as log:
        log.write(json.dumps({"program": program, "args": args, "ran": command, "returncode": returncode,
                              "output": output, "pythonpath": os.environ.get("PYTHONPATH", "")}) + "\n")
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
