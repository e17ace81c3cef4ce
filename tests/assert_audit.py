"""Find tests whose assertions cannot fail when their feature breaks (run: python tests/assert_audit.py).

Flags, per test function (AST, no import of the tests):
  - WEAK-ONLY: every assert is weak: `x is not None`, `isinstance(...)`, `assert x` on a bare name,
    a constant (`assert True`), or a comparison of an expression with itself;
  - BOUND: an assert that only bounds a value by the range it always has: `0 <= x <= 1` (a ratio) or
    `x >= 0` / `len(x) >= 0` / `x >= 1` where x is a count already known to be non-empty;
  - EMPTY-LOOP: asserts only inside a `for` over a module constant that is empty (e.g. `for name in PENDING`);
  - NO-ASSERT: no assert and no pytest.raises / helper call that could fail.
Prints one line per finding; exits 1 when there is any. Reviewed findings are listed in ALLOWED with why.
"""

from __future__ import annotations

import ast
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ALLOWED: dict[str, str] = {
    "test_metrics.py::test_property_metrics_bounds_symmetry_and_identities":
        "a property test over random masks: the bounds are the property, exact identities follow",
}


def _is_weak(test: ast.expr) -> bool:
    if isinstance(test, ast.Constant):
        return True
    if isinstance(test, ast.Name):
        return True
    if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name)
            and test.func.id in ("isinstance", "callable")):
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right, op = test.left, test.comparators[0], test.ops[0]
        if isinstance(op, ast.IsNot) and isinstance(right, ast.Constant) and right.value is None:
            return True
        if ast.dump(left) == ast.dump(right):
            return True
    if isinstance(test, ast.BoolOp):
        return all(_is_weak(v) for v in test.values)
    return False


def _is_bound(test: ast.expr) -> bool:
    """0 <= x <= 1, x >= 0, x >= 1 (alone)."""
    if not isinstance(test, ast.Compare):  # in an `and` chain, one such part is already suspicious
        return isinstance(test, ast.BoolOp) and any(_is_bound(v) for v in test.values)
    consts = [c.value for c in [test.left, *test.comparators] if isinstance(c, ast.Constant)]
    if len(test.ops) == 2 and consts in ([0, 1], [0.0, 1.0]):
        return True
    return len(test.ops) == 1 and isinstance(test.ops[0], ast.GtE) and consts in ([0], [0.0], [1])


def audit_function(fn: ast.FunctionDef, empty_constants: set[str]) -> list[str]:
    asserts = [n for n in ast.walk(fn) if isinstance(n, ast.Assert)]
    raises = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") in
              ("raises", "warns")]
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)]
    problems = []
    if not asserts and not raises and not calls:
        problems.append("NO-ASSERT")
    if asserts and all(_is_weak(a.test) for a in asserts) and not raises:
        problems.append("WEAK-ONLY")
    for a in asserts:
        if _is_bound(a.test):
            problems.append(f"BOUND line {a.lineno}: {ast.unparse(a.test)}")
    for loop in (n for n in ast.walk(fn) if isinstance(n, ast.For)):
        if (isinstance(loop.iter, ast.Name) and loop.iter.id in empty_constants
                and any(isinstance(n, ast.Assert) for n in ast.walk(loop))):
            problems.append(f"EMPTY-LOOP line {loop.lineno}: for ... in {loop.iter.id} (empty)")
    return problems


def _empty_constants() -> set[str]:
    """Module-level names bound to an empty dict/list/tuple/set anywhere in the package."""
    root = os.path.join(os.path.dirname(HERE), "raysegment")
    names = set()
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    value = getattr(node, "value", None)
                    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
                    if isinstance(value, (ast.Dict, ast.List, ast.Tuple, ast.Set)) and not (
                            getattr(value, "keys", None) or getattr(value, "elts", None)):
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def main(argv: list[str] | None = None) -> int:
    folder = (argv or sys.argv[1:] or [HERE])[0]
    empty = _empty_constants()
    findings = []
    for name in sorted(os.listdir(folder)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                key = f"{name}::{fn.name}"
                for problem in audit_function(fn, empty):
                    if key not in ALLOWED:
                        findings.append(f"{key}: {problem}")
    print("\n".join(findings) or "no weak tests found")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
