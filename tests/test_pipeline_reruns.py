"""Rerun scope of the whole pipeline: one finished run on a tiny config, then each edit's
dry run lists exactly the jobs the edit affects (rules and counts), and nothing else.

The run happens in a copy of the repository's tracked files (its config/config.yaml
replaced by a tiny one), so edits to code, templates and config never touch the repo;
each test restores what it edited. The copy's own package is put first on PYTHONPATH, so
its jobs run the copy's code. The fixture is shared with test_pipeline_interrupt.py and
test_pipeline_cluster.py (session scope: the workflow runs once per test session)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

HOST = "testhost"
PROFILE = ["--workflow-profile", "workflow/profiles/default"]
TINY_CONFIG = {
    "data": {
        "synthetic": {"seed": 0, "trajectories": {"train": 6, "valid_seen": 3, "valid_unseen": 3},
                      "annotations_per_trajectory": 2, "nav_steps": [1, 2]},
    },
    "models": {
        "lstm": {"demb": 16, "dhid": 16, "dframe": 32, "init_from": None,
                 "train": {"epochs": 1, "batch": 4, "lr": 0.001, "seed": 123, "mask_steps_per_batch": 2}},
        "transformer": {"d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ffn": 32,
                        "dframe": 32,
                        "train": {"epochs": 1, "batch": 4, "lr": 0.001, "seed": 123, "mask_steps_per_batch": 2}},
        # the default's cost-only model (rule untrained_model), at a tiny size, with every variant
        "lstm_alfred_size": {"architecture": "lstm", "cost_only": True, "demb": 16, "dhid": 16, "dframe": 32,
                             "variants": None},
    },
    "quantize": {"variants": ["fp32", "int8_dynamic"], "eval_batch": 4,
                 "backends": {"eager": {"variants": None}, "onnxruntime": {"variants": []}},
                 "pruned": {"finetune": {"steps": 1, "batch": 2}}},
    "bench": {
        "host": HOST, "devices": ["cpu"], "batches": [1], "threads": 1, "max_steps": 2,
        "warmup_iterations": 0, "min_iterations": 1, "min_duration_s": 0.0, "max_duration_s": 0.1,
        "timeout_s": 120, "compare_features_in_ram": False,
        "power": {"interval_s": 0.1, "idle_s": 0.0},
        "roofline": {"matmul_size": 64, "copy_mb": 1, "seconds": 0.05},
        "capacity": {"measure": None},
    },
}
# Jobs of the tiny plan, per rule (3 models, 2 of them trained, x 2 variants x 1 batch x 1 device).
FULL_PLAN = {
    "all": 1, "synthesize": 1, "manifest": 3, "subset": 3, "vocab": 1, "preprocess": 3, "storage_plan": 1,
    "train": 2, "untrained_model": 1, "evaluate_fp32": 3, "quantize": 3, "bench_roofline": 1, "bench_flops": 3,
    "bench": 6, "bench_capacity": 6, "aggregate": 1, "summary": 1,
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def tiny_config_text(**changes) -> str:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    return yaml.safe_dump(deep_update(deep_update(config, TINY_CONFIG), changes), sort_keys=False)


def copy_repo(dest: Path) -> Path:
    """The repository's tracked files (as in the working tree) under dest, its symbolic links as
    links (the top-level `profiles`, through which `snakemake` finds the default profile)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if not (src.is_symlink() or src.is_file()):
            continue  # deleted in the working tree
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            (dest / name).symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_env(workdir: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(workdir / "workflow"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> str:
    """`snakemake ARGS` in workdir with the default workflow profile; stdout + stderr.
    (Named explicitly: Snakemake looks for profiles/default beside the Snakefile or the
    working directory, not for workflow/profiles/default.)"""
    done = subprocess.run([sys.executable, "-m", "snakemake", *PROFILE, *args], cwd=workdir, env=run_env(workdir),
                          capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    if check:
        assert done.returncode == 0, output[-4000:]
    return output


def job_stats(output: str) -> dict[str, int]:
    """{rule: jobs} from the first "Job stats:" table of a dry run ({} when nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+(\d+)", output, re.S)
    assert match, output[-4000:]
    stats = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", match.group(1), re.M)}
    assert sum(stats.values()) == int(match.group(2)), output
    return stats


def planned(workdir: Path) -> dict[str, int]:
    return job_stats(snakemake(workdir, "-n", "-q", "rules"))


@contextlib.contextmanager
def edited(path: Path, edit):
    """path's text replaced by edit(text) for the duration (bytes and mtime restored after)."""
    original, stat = path.read_bytes(), path.stat()
    path.write_text(edit(original.decode()))
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


_FINISHED: list[Path] = []


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A copy of the repo with the tiny config, after `snakemake --cores 2` completed.
    The other test_pipeline_* modules import this fixture, which gives each module its own
    definition: the module-level cache makes the workflow run once per session all the same."""
    if not _FINISHED:
        workdir = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
        (workdir / "config" / "config.yaml").write_text(tiny_config_text())
        assert planned(workdir) == FULL_PLAN
        output = snakemake(workdir, "--cores", "2")
        assert "Using workflow specific profile workflow/profiles/default" in output
        assert (workdir / "reports" / "summary.html").is_file()
        _FINISHED.append(workdir)
    return _FINISHED[0]


def test_no_op_rerun_has_nothing_to_do(finished_run):
    assert "Nothing to be done" in snakemake(finished_run, "--cores", "2")


def test_one_models_hyper_parameter_reruns_that_model_and_the_report(finished_run):
    config = finished_run / "config" / "config.yaml"
    with edited(config, lambda text: tiny_config_text(models={"lstm": {"train": {"lr": 0.002}}})):
        output = snakemake(finished_run, "-n")
    # lstm: its train, evaluation and int8 variant, its FLOP count, its 2 variants' cells and
    # capacity rows; then the aggregate and the page. Nothing of the transformer's.
    assert job_stats(output) == {"train": 1, "evaluate_fp32": 1, "quantize": 1, "bench_flops": 1, "bench": 2,
                                 "bench_capacity": 2, "aggregate": 1, "summary": 1, "all": 1}
    assert set(re.findall(r"model=(\w+)", output)) == {"lstm"}


def test_new_batch_size_runs_only_its_cells_and_the_report(finished_run):
    config = finished_run / "config" / "config.yaml"
    with edited(config, lambda text: tiny_config_text(bench={"batches": [1, 2]})):
        output = snakemake(finished_run, "-n")
    # 3 models x 2 variants at batch 2; every capacity row reads all of its batches' cells;
    # the storage plan reserves room for the results of the six more cells.
    assert job_stats(output) == {"bench": 6, "bench_capacity": 6, "storage_plan": 1, "aggregate": 1,
                                 "summary": 1, "all": 1}
    assert set(re.findall(r"batch=(\d+)", output)) == {"2"}


def test_new_variant_runs_its_quantize_and_cells(finished_run):
    config = finished_run / "config" / "config.yaml"
    with edited(config, lambda text: tiny_config_text(quantize={"variants": ["fp32", "int8_dynamic", "fp16"]})):
        output = snakemake(finished_run, "-n")
    # fp16 of the 3 models, its 3 cells and capacity rows; the storage plan reserves its files.
    assert job_stats(output) == {"quantize": 3, "bench": 3, "bench_capacity": 3, "storage_plan": 1,
                                 "aggregate": 1, "summary": 1, "all": 1}
    assert set(re.findall(r"variant=(\w+)", output)) == {"fp16"}


def test_new_backend_runs_its_exports_and_cells(finished_run):
    config = finished_run / "config" / "config.yaml"
    backends = {"onnxruntime": {"variants": ["int8_dynamic"]}}
    with edited(config, lambda text: tiny_config_text(quantize={"backends": backends})):
        output = snakemake(finished_run, "-n")
    # int8_dynamic of the 3 models exported and quantized by ONNX Runtime, and its 3 cells on
    # ONNX Runtime's cpu provider; eager's jobs stay; the storage plan reserves the results.
    assert job_stats(output) == {"export_onnx": 3, "bench": 3, "storage_plan": 1, "aggregate": 1, "summary": 1,
                                 "all": 1}
    assert set(re.findall(r"variant=(\w+)", output)) == {"int8_dynamic"}
    assert set(re.findall(r"backend=(\w+), provider=(\w+)", output)) == {("onnxruntime", "cpu")}


def test_new_structural_variant_and_its_settings_rerun_only_its_jobs(finished_run):
    config = finished_run / "config" / "config.yaml"
    variants = ["fp32", "int8_dynamic", "pruned+int8_dynamic"]
    with edited(config, lambda text: tiny_config_text(quantize={"variants": variants})):
        output = snakemake(finished_run, "-n")
        # pruned+int8_dynamic is built from pruned.pt, whose job runs though pruned is not configured
        assert job_stats(output) == {"quantize": 6, "bench": 3, "bench_capacity": 3, "storage_plan": 1,
                                     "aggregate": 1, "summary": 1, "all": 1}
        assert set(re.findall(r"variant=([\w+]+)", output)) == {"pruned", "pruned+int8_dynamic"}
    # another pruned setting: the same jobs (lowrank's or int8's settings are not theirs to read)
    with edited(config, lambda text: tiny_config_text(quantize={"variants": variants, "lowrank": {"energy": 0.5}})):
        assert job_stats(snakemake(finished_run, "-n")) == job_stats(output)


def test_a_models_own_variants_leave_the_others_out_and_never_retrain_it(finished_run):
    config = finished_run / "config" / "config.yaml"
    changes = {"quantize": {"variants": ["fp32", "int8_dynamic", "fp16"]},
               "models": {"lstm_alfred_size": {"variants": ["fp32", "int8_dynamic"]}}}
    with edited(config, lambda text: tiny_config_text(**changes)):
        output = snakemake(finished_run, "-n")
    # fp16 of the two trained models only; the cost-only model keeps its jobs, untrained_model included
    assert job_stats(output) == {"quantize": 2, "bench": 2, "bench_capacity": 2, "storage_plan": 1,
                                 "aggregate": 1, "summary": 1, "all": 1}
    assert set(re.findall(r"model=(\w+)", output)) == {"lstm", "transformer"}


def test_template_change_reruns_only_the_report_page(finished_run):
    template = finished_run / "workflow/alfred_edge/report/templates/summary.html.j2"
    with edited(template, lambda text: text.replace("</body>", "<p>edited</p></body>", 1)):
        assert planned(finished_run) == {"summary": 1, "all": 1}


def test_package_module_change_reruns_the_rules_that_use_it(finished_run):
    module = finished_run / "workflow/alfred_edge/quantize/__init__.py"
    with edited(module, lambda text: text + "\nSUPPORTED = frozenset(VARIANTS)\n"):
        output = snakemake(finished_run, "-n")
    # the quantize package is used by quantizing, evaluating and benchmarking (FLOP counts,
    # cells, capacity, and the roofline, whose job runs the same measuring process,
    # bench/child.py, that loads variants for the cells): not by the data stage or training.
    assert job_stats(output) == {"evaluate_fp32": 3, "quantize": 3, "bench_roofline": 1, "bench_flops": 3,
                                 "bench": 6, "bench_capacity": 6, "aggregate": 1, "summary": 1, "all": 1}
    assert "Params have changed" in output


def test_touching_every_input_and_source_changes_nothing(finished_run):
    sources = [p for p in finished_run.rglob("*") if p.is_file()
               and not p.relative_to(finished_run).parts[0] in (".snakemake", "models", "reports", "logs")
               and p.relative_to(finished_run).parts[:2] != ("data", "store")]
    assert any(p.name == "feat_conv.pt" for p in sources) and any(p.suffix == ".smk" for p in sources)
    for path in sources:
        path.touch()
    assert planned(finished_run) == {}


def _rule_scripts(workdir: Path) -> dict[str, str]:
    """{rule: its script} from the rule files."""
    scripts = {}
    for smk in (workdir / "workflow/rules").glob("*.smk"):
        for rule, script in re.findall(r"rule (\w+):.*?script:\s*\"\.\./(scripts/[\w.]+)\"", smk.read_text(), re.S):
            scripts[rule] = script
    return scripts


def _modules_run_by(workdir: Path, script: str) -> set[str]:
    """The package modules a rule's script runs, found by the standard library's modulefinder
    (independent of the workflow's own import reader); the benchmark scripts also start
    alfred_edge.bench.child as a process, whose imports count too."""
    import modulefinder

    def found(path):
        finder = modulefinder.ModuleFinder(path=[str(workdir / "workflow")])
        finder.run_script(str(path))
        return {name for name in finder.modules if name.startswith("alfred_edge")}

    modules = found(workdir / "workflow" / script)
    if "alfred_edge.bench.runner" in modules:
        modules |= found(workdir / "workflow/alfred_edge/bench/child.py")
    return modules


def _rule_graph(workdir: Path) -> dict[str, set[str]]:
    """{rule: the rules whose outputs its jobs read} of the run, from a forced dry run."""
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", snakemake(workdir, "-n", "--forceall"))
              if re.match(r"(?:local)?rule \w+:", b)]
    def field(block, name):
        found = re.search(rf"^\s+{name}: (.+)$", block, re.M)
        return found.group(1).split(", ") if found else []

    owner = {path: re.match(r"(?:local)?rule (\w+):", b).group(1) for b in blocks for path in field(b, "output")}
    graph = {}
    for block in blocks:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        graph.setdefault(rule, set()).update(owner[path] for path in field(block, "input") if path in owner)
    return graph


def _upstream(graph: dict[str, set[str]], rule: str) -> set[str]:
    seen, pending = set(), list(graph[rule])
    while pending:
        parent = pending.pop()
        if parent not in seen:
            seen.add(parent)
            pending += graph[parent]
    return seen


def _params_changed(output: str) -> set[str]:
    """Rules of the dry run's jobs listed for changed params. (Snakemake names only the first
    reason: a job whose input an upstream job rewrites is listed for that.)"""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", output)
    return {re.match(r"(?:local)?rule (\w+):", b).group(1) for b in blocks
            if re.match(r"(?:local)?rule \w+:", b) and "Params have changed" in b}


@pytest.mark.parametrize("module", ["data/synthetic.py", "atomic.py", "data/store.py", "models/lstm.py",
                                    "report/plots.py"])
def test_a_module_edit_reruns_the_rules_whose_scripts_run_it(finished_run, module):
    """The rules whose scripts run the module (modulefinder's view) are the rules whose code
    param changes (each rule's param is get_code_digest(<its script>)), and the dry run lists
    for changed params exactly those of them with none upstream (the others are listed for
    their rewritten inputs)."""
    from alfred_edge.code_digest import CodeIndex

    name = "alfred_edge." + module.removesuffix(".py").replace("/", ".")
    graph, scripts = _rule_graph(finished_run), _rule_scripts(finished_run)
    expected = {rule for rule in graph if rule in scripts and name in _modules_run_by(finished_run, scripts[rule])}
    for rule in expected:
        assert re.search(rf"rule {rule}:.*?code=get_code_digest\(\"{scripts[rule]}\"\)",
                         "".join(p.read_text() for p in (finished_run / "workflow/rules").glob("*.smk")), re.S), rule
    digests = lambda: {rule: CodeIndex(finished_run / "workflow").digest(scripts[rule]) for rule in graph if rule in scripts}  # noqa: E731
    before = digests()
    with edited(finished_run / "workflow/alfred_edge" / module, lambda text: text + "\n# a one-line edit\n"):
        after, output = digests(), snakemake(finished_run, "-n")
    assert expected and {rule for rule in before if before[rule] != after[rule]} == expected
    assert _params_changed(output) == {rule for rule in expected if not _upstream(graph, rule) & expected}
