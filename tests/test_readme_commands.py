"""Every command in README.md and config/README.md works as written, run from the root of a copy
of the session's finished tiny run (test_pipeline_reruns.finished_run), in its cheap form; and
README's recovery after a kill -9 of Snakemake completes the run.

What counts as a command (the Markdown is parsed as CommonMark, with tables):
- a code block whose first word is `snakemake`, `pip`, `python` or `export`: a shell script,
  run whole with bash (its `export` reaches the lines after it); its commands are its logical
  lines (a line ending in `\\` joined to the next, a `for … done` loop as one);
- an inline code span whose first word is `snakemake`, `pip`, `python` or `sudo`.
Every other code block must be one of FIGURES (a diagram, a file layout), so a new block fails
until it is classified; other spans (`touch`, `--rerun-incomplete`, file names) are not commands.

Cheap forms: `snakemake`, `pip` and `python` resolve to tests/readme_shims.py, which says how
each runs: Snakemake as a dry run (`-n` added), except `--unlock` and `--report report.html`,
which really run; `pip install` as `pip install --dry-run` (pip resolves every requirement and
extra against the index and what is installed; an extra the project lacks fails); the standalone
runner's commands are recorded and their arguments parsed here with the runner's own parser,
the fleet recipe's loop included; `--help` runs. NOT_AS_WRITTEN lists, each with its reason, the
commands run otherwise or not at all.

config/alfred.yaml's commands read ALFRED's files under data/alfred/: the fixture links there the
real sample tree, its splits file and the golden checkpoint, as test_pipeline_alfred.py does.
The checkpoint's sizes are small, unlike config/alfred.yaml's; the dry runs do not need the
second --configfile that test_pipeline_alfred.py adds for them (a job checks the sizes when it
runs), so the commands run as written."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from conftest import ALFRED_GOLDEN, REPO_ROOT
from test_pipeline_interrupt import cmdline, copy_run, descendants
from test_pipeline_reruns import HOST, finished_run, run_env  # noqa: F401 (fixture)

READMES = ["README.md", "config/README.md"]
BLOCK_PROGRAMS = {"snakemake", "pip", "python", "export"}
SPAN_PROGRAMS = {"snakemake", "pip", "python", "sudo"}
SHIMMED = ("snakemake", "pip", "python")
# Code blocks that are not commands, by their first line: README's pipeline stages and where
# ALFRED's files go.
FIGURES = {
    "ALFRED json_feat (real, or the built-in synthetic generator)",
    "data/alfred/json_feat_2.1.0/    the json_feat download (json_feat_2.1.0.7z, ~35 GB unpacked)",
}
# Commands not run as written: {command: (why, what runs instead; None: nothing)}.
NOT_AS_WRITTEN = {
    "snakemake --workflow-profile workflow/profiles/slurm reports/summary.html": (
        "the profile's executor is the SLURM plugin, which needs a cluster (and is not a test "
        "dependency): the profile is parsed and the plan made with the local executor",
        "snakemake --workflow-profile workflow/profiles/slurm --executor local reports/summary.html"),
    "pip install torch==2.13.0 -e '.[test]' && python -m pytest": (
        "the test command runs this suite, the suite this test is part of: the suite is collected "
        "(test_the_readmes_test_command_is_what_ci_runs checks .ci/run runs exactly this line)",
        "pip install torch==2.13.0 -e '.[test]' && python -m pytest --collect-only -q"),
    "python benchmarks/pipeline_time.py": (
        "times the default main job in a fresh clone (minutes): its --help runs",
        "python benchmarks/pipeline_time.py --help"),
    "python benchmarks/ci_time.py": (
        "times .ci/run, which runs this suite, in a fresh clone: its --help runs",
        "python benchmarks/ci_time.py --help"),
    "python -m alfred_edge.bench": (
        "names the standalone runner, whose commands need a job: its --help runs",
        "python -m alfred_edge.bench --help"),
    "snakemake --configfile my.yaml …": (
        "`…` stands for the user's further arguments and my.yaml for their file: the fixture "
        "writes a my.yaml with one setting, and no further arguments are given",
        "snakemake --configfile my.yaml"),
    "sudo nvpmodel -m 0": ("sets a Jetson's power mode (JetPack's nvpmodel, as root)", None),
    "sudo jetson_clocks": ("pins a Jetson's clocks (JetPack's jetson_clocks, as root)", None),
    "sudo -E": ("a prefix (the runner's cells run as root), not a command of its own", None),
}
MY_YAML = {"storage": {"budget_gb": 8.0}}
PROFILE_IN_USE = "Using workflow specific profile profiles/default"


@dataclass(frozen=True)
class Script:
    """What one code block or span runs: its commands (logical lines) and where it is."""
    where: str
    commands: tuple[str, ...]

    def text(self) -> str | None:
        """The script as it runs: each command as written or as NOT_AS_WRITTEN replaces it
        (None when nothing of it runs)."""
        lines = [NOT_AS_WRITTEN[c][1] if c in NOT_AS_WRITTEN else c for c in self.commands]
        lines = [line for line in lines if line is not None]
        return "\n".join(lines) if lines else None


def logical_lines(block: str) -> list[str]:
    """A block's commands: `\\`-continued lines joined, a `for … done` loop kept whole."""
    commands, current, open_loops = [], [], 0
    for line in block.strip().splitlines():
        current.append(line)
        words = re.findall(r"[^\s;]+", line)
        open_loops += words.count("do") - words.count("done")
        if not line.rstrip().endswith("\\") and open_loops == 0:
            commands.append("\n".join(current))
            current = []
    assert not current, f"unfinished command in block:\n{block}"
    return commands


def readme_scripts() -> tuple[list[Script], list[str]]:
    """(scripts found in the READMEs, first lines of code blocks that are neither commands nor
    FIGURES)."""
    scripts, unclassified = [], []
    parser = MarkdownIt("commonmark").enable("table")
    for name in READMES:
        text = (REPO_ROOT / name).read_text()
        for token in parser.parse(text):
            where = f"{name}:{token.map[0] + 1}" if token.map else name
            if token.type in ("code_block", "fence"):
                first_line = token.content.strip().splitlines()[0]
                if first_line.split()[0] in BLOCK_PROGRAMS:
                    scripts.append(Script(where, tuple(logical_lines(token.content))))
                elif first_line not in FIGURES:
                    unclassified.append(f"{where}: {first_line}")
            elif token.type == "inline":
                for child in token.children:
                    words = child.content.split()
                    if child.type == "code_inline" and words and words[0] in SPAN_PROGRAMS:
                        where = span_line(name, text, token.map[0], child.content)
                        scripts.append(Script(where, (child.content,)))
    return scripts, unclassified


def span_line(name: str, text: str, paragraph_start: int, span: str) -> str:
    """name:line of the line where the span starts (a span may wrap onto the next line)."""
    pattern = re.compile("`" + r"\s+".join(map(re.escape, span.split())) + "`")
    match = pattern.search(text, sum(len(line) for line in text.splitlines(keepends=True)[:paragraph_start]))
    return f"{name}:{text.count(chr(10), 0, match.start()) + 1}"


SCRIPTS, UNCLASSIFIED = readme_scripts()
# One run per distinct script (a command both in a block and in the text runs once, named by
# where it is first found).
RUNS: dict[str, Script] = {}
for _script in SCRIPTS:
    if _script.text() is not None:
        RUNS.setdefault(_script.text(), _script)


def test_every_code_block_is_a_command_or_a_figure():
    assert SCRIPTS and not UNCLASSIFIED, UNCLASSIFIED


def test_every_command_not_run_as_written_says_why_and_is_in_a_readme():
    commands = {command for script in SCRIPTS for command in script.commands}
    assert set(NOT_AS_WRITTEN) <= commands, set(NOT_AS_WRITTEN) - commands  # no stale entry
    assert all(why for why, _ in NOT_AS_WRITTEN.values())


def test_the_readmes_test_command_is_what_ci_runs():
    test_command = next(c for c in NOT_AS_WRITTEN if c.endswith("python -m pytest"))
    assert any(test_command in script.commands for script in SCRIPTS)
    assert (REPO_ROOT / ".ci/run").read_text().strip().splitlines()[-1] == test_command


@pytest.fixture(scope="module")
def readme_run(finished_run, real_tree, tmp_path_factory):  # noqa: F811
    """A copy of the finished run, with ALFRED's files linked where config/alfred.yaml expects
    them, my.yaml, and a bin folder whose snakemake, pip and python are tests/readme_shims.py."""
    work = copy_run(finished_run, tmp_path_factory.mktemp("readme") / "repo")
    alfred = work / "data/alfred"
    (alfred / "splits").mkdir(parents=True)
    tree, splits_file = real_tree
    (alfred / "json_feat_2.1.0").symlink_to(tree)
    (alfred / "splits/oct21.json").symlink_to(splits_file)
    (alfred / "best_seen.pth").symlink_to(ALFRED_GOLDEN / "best_seen.pth")
    (work / "my.yaml").write_text(yaml.safe_dump(MY_YAML))
    bin_dir = tmp_path_factory.mktemp("readme-bin")
    for program in SHIMMED:
        shim = bin_dir / program
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO_ROOT / "tests/readme_shims.py"}" {program} "$@"\n')
        shim.chmod(0o755)
    return work, bin_dir


def run_script(work: Path, bin_dir: Path, text: str, log: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**run_env(work), "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]]), "README_SHIM_LOG": str(log)}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, records


def runner_parse_error(args: list[str]) -> str | None:
    """The standalone runner's own parser on a recorded `python -m alfred_edge.bench …`."""
    from alfred_edge.bench.__main__ import config_bench, parse_args

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_args(args[2:], config_bench())
    except SystemExit:
        return stderr.getvalue() or "exit"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("text", list(RUNS), ids=[RUNS[t].where for t in RUNS])
def test_readme_command_works_as_written(readme_run, text, tmp_path):
    work, bin_dir = readme_run
    done, records = run_script(work, bin_dir, text, tmp_path / "shims.jsonl")
    for record in records:
        output = "\n".join(line for line in record["output"].splitlines()
                           if not line.startswith("Requirement already satisfied"))  # pip's
        assert record["returncode"] == 0, f"{record['program']} {' '.join(record['args'])}\n{output[-4000:]}"
    assert done.returncode == 0, f"{text}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # every program the script names was reached
    named = set(re.findall(r"(?:^|&&|;|\bdo)\s*(" + "|".join(SHIMMED) + r")\b", text, re.M))
    assert named == {r["program"] for r in records}, records
    for record in records:
        if record["program"] == "snakemake" and "--workflow-profile" not in record["args"]:
            assert PROFILE_IN_USE in record["output"], record["output"][-3000:]
        if record["ran"] is None:
            error = runner_parse_error(record["args"])
            assert error is None, f"python {' '.join(record['args'])}: {error}"
            assert record["pythonpath"].split(os.pathsep)[0] == str(work / "workflow")
        if "--report" in record["args"]:
            assert (work / record["args"][record["args"].index("--report") + 1]).stat().st_size > 0


RUN = ["snakemake", "--cores", "4", "reports/summary.html"]
RECOVERY = re.compile(r"rerun the same\s+command \(after a crash of Snakemake itself, `snakemake --unlock` first, "
                      r"once the\s+jobs it left\s+running have ended; add\s+`--rerun-incomplete` if Snakemake asks\)")


def kill_snakemake_during_a_job(work: Path, log: Path) -> dict[int, str]:
    """Start RUN, SIGKILL Snakemake's own process once a benchmark cell measures; returns its
    job processes ({pid: command line}), which live on."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *RUN], cwd=work, env=run_env(work), stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not any("alfred_edge.bench.child" in cmdline(pid) for pid in descendants(proc.pid)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no benchmark job started:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    jobs = {pid: cmdline(pid) for pid in descendants(proc.pid)}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return jobs


def running(jobs: dict[int, str]) -> list[int]:
    return [pid for pid, line in jobs.items() if cmdline(pid) == line]


def typed(work: Path, *args: str) -> tuple[int, str]:
    """`args` as typed at the repository root (the default profile found through `profiles`)."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=work, env=run_env(work), capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert PROFILE_IN_USE in output, output[-3000:]
    return done.returncode, output


@pytest.mark.slow
def test_after_kill_9_of_snakemake_readmes_recovery_completes_the_run(finished_run, tmp_path):  # noqa: F811
    """kill -9 of a running `snakemake --cores 4 reports/summary.html` while one of its jobs (a
    benchmark cell) runs; Snakemake's own process only, as a user's kill would, so the job goes
    on. Then README's recovery, typed as written: once that job has ended, `snakemake --unlock`,
    the same command, and `--rerun-incomplete` added when Snakemake asks, as it does here (the
    job wrote its file, which Snakemake never saw finish); `snakemake -n` then has nothing to do."""
    assert RECOVERY.search((REPO_ROOT / "README.md").read_text())
    work = copy_run(finished_run, tmp_path / "run")
    # the lstm's benchmark cells and capacity rows, and what reads them, are left to do
    for left in (f"reports/bench/{HOST}/cells/lstm", f"reports/bench/{HOST}/capacity/lstm"):
        shutil.rmtree(work / left)
    for left in ("reports/results.parquet", "reports/summary.html"):
        (work / left).unlink()
    jobs = kill_snakemake_during_a_job(work, tmp_path / "killed.log")
    try:
        assert running(jobs)  # the job outlives Snakemake
        deadline = time.monotonic() + 300
        while running(jobs):
            assert time.monotonic() < deadline, "the killed run's job did not end"
            time.sleep(0.1)
        assert typed(work, "snakemake", "--unlock")[0] == 0
        returncode, output = typed(work, *RUN)
        assert returncode != 0 and "rerun your command with the --rerun-incomplete flag" in output, output[-3000:]
        returncode, output = typed(work, *RUN, "--rerun-incomplete")
        assert returncode == 0, output[-3000:]
        assert "Nothing to be done" in typed(work, "snakemake", "-n")[1]
    finally:
        for pid in running(jobs):
            os.kill(pid, signal.SIGKILL)
