"""The layout's promises: imports flow one way, and the light commands stay light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = ("lana", "op_zoo", "solvers")
# The layers, top to bottom: a module may import its own layer and those below, never above.
LAYERS = [
    ("lana.cli",),
    ("lana.stages", "lana.api"),
    ("lana.distill", "lana.latency", "lana.export", "lana.selection", "op_zoo", "solvers"),
    ("lana.run", "lana.teacher", "lana.data", "lana.device", "lana.config"),
    ("lana.errors", "lana.names", "lana.lazy", "op_zoo._spec"),
]


def _modules():
    for package in OWN:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _layer(module: str) -> int | None:
    """The layer of the longest prefix that names ``module`` (``op_zoo._spec`` before ``op_zoo``)."""
    hits = [(len(p), depth) for depth, prefixes in enumerate(LAYERS) for p in prefixes if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_local_imports_of_own_modules(path):
    """Own modules are imported at the top, so the dependency graph is visible (optional packages may be local)."""
    tree = ast.parse(path.read_text())
    local = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.split(".")[0] in OWN:
                    local.append(f"line {sub.lineno}: from {sub.module}")
                if isinstance(sub, ast.Import) and any(a.name.split(".")[0] in OWN for a in sub.names):
                    local.append(f"line {sub.lineno}: import {sub.names[0].name}")
    assert not local, f"function-local imports of lana's own modules: {local}"


def test_imports_flow_one_way():
    """cli -> stages/api -> {distill, latency, export, selection, op_zoo, solvers} -> {run, teacher, data, config} -> errors."""
    upward = []
    for path, module in _modules():
        here = _layer(module)
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                there = _layer(node.module)
                if there is not None and there < here:
                    upward.append(f"{module} imports {node.module}")
    assert not upward, upward


@pytest.mark.parametrize("modules", ["lana.cli.app", "lana.cli.solve", "lana.selection"])
def test_light_commands_do_not_import_torch(modules):
    """`lana --help` and `lana solve --table` pay for neither torch nor the op zoo."""
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "False"
