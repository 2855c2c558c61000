"""Hygiene of the Snakefiles: snakefmt leaves them unchanged, and `snakemake --lint` reports
only the categories justified under "Lint" in workflow/README.md."""
import re
import subprocess
import sys

from conftest import REPO_ROOT

JUSTIFIED = (
    "Specify a conda environment or container for each rule.",
    "Mixed rules and functions in same snakefile.",
    "Param bench_dir is a prefix of input or output file but hardcoded",
)


def test_snakefiles_are_formatted():
    done = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules/"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_reports_only_the_justified_categories():
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    lints = re.findall(r"^    \* (.+?):?$", done.stdout + done.stderr, re.M)
    assert lints, done.stdout + done.stderr
    assert [lint for lint in lints if not lint.startswith(JUSTIFIED)] == []
    readme = (REPO_ROOT / "workflow" / "README.md").read_text()
    assert all(category.strip(" .") in readme for category in JUSTIFIED)


def test_the_slurm_profile_sets_resources_of_rules_that_exist():
    import yaml

    profile = yaml.safe_load((REPO_ROOT / "workflow/profiles/slurm/profile.yaml").read_text())
    rules = {name for smk in (REPO_ROOT / "workflow/rules").glob("*.smk")
             for name in re.findall(r"^\s*rule (\w+):", smk.read_text(), re.M)}
    assert set(profile["set-resources"]) <= rules, sorted(set(profile["set-resources"]) - rules)
