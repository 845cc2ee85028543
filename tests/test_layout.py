"""The package layout the contracts promise (docs/CONTRACTS.md): benchmark code stays out of the serving path,
and modules do not read each other's underscore names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "textguide"


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, names, at module level) for every import in a file, relative imports resolved."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    if path.name == "__init__.py":
        package = parts[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in top) for a in node.names]
    return out


def test_serving_path_does_not_import_the_benchmarks():
    code = ("import sys, textguide, textguide.guide, textguide.serve, textguide.cli, textguide.training, "
            "textguide.transfer, textguide.privacy, textguide.decisions; "
            "print(sorted(m for m in sys.modules if m.startswith('textguide.bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]", f"the serving path imported benchmark modules: {out}"


def test_only_the_cli_reaches_into_bench_and_only_lazily():
    for path in PACKAGE.rglob("*.py"):
        if "bench" in path.relative_to(PACKAGE).parts:
            continue
        for module, _, top_level in _imports(path):
            if module.startswith("textguide.bench"):
                assert path.name == "cli.py" and not top_level, f"{path}: imports {module}"


def test_no_module_imports_another_modules_underscore_names():
    for path in PACKAGE.rglob("*.py"):
        for module, names, _ in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(PACKAGE.parent)} imports {private} from {module}"
