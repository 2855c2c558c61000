# Helpers shared by the rule files: config validation, parse-time planning, and the
# get_* functions that hand each job exactly the settings it uses (through params,
# keyed by its wildcards, so that a change reruns only the jobs it touches).
import hashlib
import sys
from pathlib import Path

from snakemake.utils import validate

PACKAGE_ROOT = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PACKAGE_ROOT))

validate(config, schema="../schemas/config.schema.yaml")


def get_code_digest(*parts):
    """Digest of the code a rule runs: its script and the package modules it uses, each
    part a file or a folder relative to workflow/ (e.g. "scripts/train.py",
    "alfred_edge/models"). Passed as a param, it reruns the rule when that code changes,
    and only then: a touch or a fresh checkout leaves it equal. (The profile leaves
    Snakemake's own mtime-based script trigger off for that reason.)"""
    digest = hashlib.sha256()
    root = PACKAGE_ROOT
    for part in parts:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
