"""No function in the package is longer than a reader can hold: 60 lines, docstring included.

The one exception is listed with its reason; `python tests/test_code_shape.py` prints every function
over the limit (or another limit given as its argument).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tlora_analysis"
LIMIT = 60
EXCEPTIONS = {
    # Triton device code: one kernel body compiled to one GPU program (its tile arithmetic is already its own
    # @triton.jit helper); splitting it further changes the compiled program, which only a GPU run can re-measure.
    "adapters/fused/kernels.py::lowrank_matmul_kernel",
}


def long_functions(limit: int = LIMIT) -> dict[str, int]:
    """``path::qualified name`` → lines, for every function (or method) longer than ``limit``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    lines = child.end_lineno - child.lineno + 1
                    if not isinstance(child, ast.ClassDef) and lines > limit:
                        found[f"{path.relative_to(PACKAGE).as_posix()}::{name}"] = lines
                    stack.append((child, name + "."))
    return found


def test_no_function_is_longer_than_the_limit():
    assert set(long_functions()) == EXCEPTIONS


def test_the_counter_sees_nested_functions_and_methods(tmp_path, monkeypatch):
    source = "class A:\n    def f(self):\n" + "        x = 1\n" * 70 + "def g():\n    def h():\n" + "        y = 2\n" * 70
    (tmp_path / "m.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert long_functions() == {"m.py::A.f": 71, "m.py::g": 72, "m.py::g.h": 71}


if __name__ == "__main__":
    for where, lines in sorted(long_functions(int(sys.argv[1]) if len(sys.argv) > 1 else LIMIT).items(),
                               key=lambda kv: -kv[1]):
        print(f"{lines:5d}  {where}")
