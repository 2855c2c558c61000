"""The code a rule runs, found from its script, and its digest (the rules' `code` param).

A rule's code is its script, every module of this package the script imports, transitively,
and the data files those name. Imports are read from the source (ast), wherever they stand
(inside functions too), relative ones included; a string that names a module of the package
("alfred_edge.bench.child", run as a child process) counts as an import, and one that names a
data file of the package or of workflow/schemas ("summary.html.j2", "results.schema.yaml") as
a file the code reads. Importing a module runs its packages' __init__ modules, so they count.
Standard library only: the workflow computes every rule's digest when it is parsed."""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "alfred_edge"
DATA_SUFFIXES = (".yaml", ".json", ".j2", ".html")


class CodeIndex:
    """The package's modules and data files under `root` (the workflow/ folder)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.modules = {self._module_name(path): path for path in (self.root / PACKAGE).rglob("*.py")}
        data = [p for folder in (self.root / PACKAGE, self.root / "schemas") for p in folder.rglob("*")
                if p.suffix in DATA_SUFFIXES]
        self.data_files = {}
        for path in data:
            self.data_files.setdefault(path.name, []).append(path)

    def _module_name(self, path: Path) -> str:
        parts = path.relative_to(self.root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def code_files(self, script: str | Path) -> list[Path]:
        """The script, the package modules it runs and the data files they name, sorted."""
        script = self.root / script
        files, pending, seen = {script}, [script], set()
        while pending:
            path = pending.pop()
            if path in seen:
                continue
            seen.add(path)
            modules, names = self._references(path)
            for module in modules:
                for dependency in self._with_packages(module):
                    files.add(dependency)
                    pending.append(dependency)
            for name in names:
                files.update(self.data_files.get(name, ()))
        return sorted(files)

    def _with_packages(self, module: str) -> list[Path]:
        """The module's file and the __init__ of each package above it."""
        parts = module.split(".")
        return [self.modules[name] for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                if name in self.modules]

    @lru_cache(maxsize=None)
    def _references(self, path: Path) -> tuple[list[str], list[str]]:
        """(package modules the file imports or names, other string constants in it)."""
        tree = ast.parse(path.read_text(), filename=str(path))
        package = self._package_of(path)
        modules, strings = [], []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node.module, node.level, package)
                modules.append(base)
                modules += [f"{base}.{alias.name}" for alias in node.names]  # submodules imported by name
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
        modules += [s for s in strings if s.startswith(PACKAGE + ".")]
        return [m for m in modules if m in self.modules], strings

    def _package_of(self, path: Path) -> str:
        name = self._module_name(path) if path.is_relative_to(self.root / PACKAGE) else ""
        return name if path.name == "__init__.py" else name.rpartition(".")[0]

    @staticmethod
    def _absolute(module: str | None, level: int, package: str) -> str:
        if not level:
            return module or ""
        base = package.split(".")[: len(package.split(".")) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def digest(self, script: str | Path) -> str:
        """Content digest of code_files(script): equal when the code is, whatever the files' times."""
        digest = hashlib.sha256()
        for path in self.code_files(script):
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]
