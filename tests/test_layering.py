"""The package's layer order (docs/architecture.md), checked on the source's AST in well under a second.

    errors -> io (+ logs, progress) -> data -> model -> postprocess -> outputs -> cluster
           -> drivers: infer | evaluation (never each other), then train (its test evaluation and
              calibration are evaluation's) -> viz -> demo, testing -> cli

A module may import its own subpackage and anything in a lower layer, never a higher one or a sibling
of the same layer; lazy imports inside functions count too. The second half checks the one-path rules:
the decode / preprocess / postprocess primitives are called in one place each.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "raysegment"

# subpackage or top-level module -> layer; a module may import only layers below its own (or itself)
LAYER = {
    "errors": 0,
    "io": 1, "logs": 1, "progress": 1,  # one layer: the storage and console plumbing everything uses
    "data": 2,
    "model": 3,
    "postprocess": 4,
    "outputs": 5,
    "cluster": 6,
    "infer": 7, "evaluation": 7,  # the two inference drivers: never each other
    "train": 8,
    "viz": 9,
    "demo": 10, "testing": 10, "cli": 11, "__main__": 12,
}
SAME_LAYER_OK = [{"io", "logs", "progress"}]  # groups of one layer that may import each other


def _unit(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    return path.relative_to(package).with_suffix("").parts[0]


def _imports(tree: ast.AST):
    """(line, imported module) of every absolute raysegment import, lazy ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "raysegment":  # from raysegment import logs
                for alias in node.names:
                    yield node.lineno, f"raysegment.{alias.name}"


def _sources(package: pathlib.Path = PACKAGE) -> list[pathlib.Path]:
    return [p for p in sorted(package.rglob("*.py")) if p.name != "__init__.py" or p.parent != package]


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for path in _sources(package):
        me = _unit(path, package)
        for line, module in _imports(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            if parts[0] != "raysegment" or len(parts) < 2 or parts[1] not in LAYER or parts[1] == me:
                continue
            other = parts[1]
            if LAYER[other] < LAYER[me] or any({me, other} <= group for group in SAME_LAYER_OK):
                continue
            found.append(f"{path.relative_to(package.parent)}:{line}: {me} (layer {LAYER[me]}) imports "
                         f"{module} (layer {LAYER[other]})")
    return found


def test_every_subpackage_has_a_layer():
    units = {_unit(p) for p in _sources()}
    assert units <= set(LAYER), f"give these a layer in LAYER and docs/architecture.md: {units - set(LAYER)}"


def test_imports_follow_the_layer_order():
    assert violations() == []


@pytest.mark.parametrize("source, bad", [
    ("from raysegment.evaluation.evaluate import evaluate\n", True),  # infer -> evaluation: same layer
    ("def f():\n    from raysegment.viz import show\n", True),  # lazy, upwards
    ("from raysegment.postprocess.scoring import score\n", False),
    ("import raysegment.outputs.results\n", False),
])
def test_the_check_sees_a_wrong_import(tmp_path, source, bad):
    probe = tmp_path / "raysegment" / "infer" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert bool(violations(tmp_path / "raysegment")) is bad
