"""The package's layer order (docs/architecture.md), checked on the source's AST in well under a second.

    errors -> io (+ logs, progress) -> data -> model -> postprocess -> outputs -> cluster
           -> drivers: infer | evaluation (never each other), then train (its test evaluation and
              calibration are evaluation's) -> viz -> demo, testing -> cli

A module may import its own subpackage and anything in a lower layer, never a higher one or a sibling
of the same layer; lazy imports inside functions count too. The second half checks the one-path rules:
the decode / preprocess / postprocess primitives are called in one place each (ONE_PATH).
"""

from __future__ import annotations

import ast
import functools
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


@functools.cache
def _tree(path: pathlib.Path) -> ast.AST:
    """The parsed source (parsed once per session: both checks walk every file)."""
    return ast.parse(path.read_text(), str(path))


def _sources(package: pathlib.Path = PACKAGE) -> list[pathlib.Path]:
    return [p for p in sorted(package.rglob("*.py")) if p.name != "__init__.py" or p.parent != package]


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for path in _sources(package):
        me = _unit(path, package)
        for line, module in _imports(_tree(path)):
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


# --- one path: the decode / preprocess / postprocess primitives are called in one place each ----------

# primitive -> the files (relative to the package) allowed to call it. Everything else goes through
# data/model_input.py (bytes -> model input) and postprocess/scoring.py (probability -> scored mask).
ONE_PATH = {
    "decode_image": {"data/model_input.py"},
    "decode_mask": {"data/datasets.py"},  # expert masks: datasets.load_mask
    "preprocess_image": {"data/model_input.py"},
    # masks.py: postprocess_structure is the lungs' postprocess with its own number of parts
    "postprocess": {"postprocess/scoring.py", "postprocess/masks.py"},
    "postprocess_structure": {"postprocess/scoring.py"},
    "qc_reasons": {"postprocess/scoring.py"},
    # show measures again on the decoded masks only to DRAW the two widths (a row keeps the widths, not
    # where they lie); it never reports a CTR of its own.
    "measure_ctr": {"postprocess/scoring.py", "viz/show.py"},
}
OWN_CALLS_OK = {"io"}  # the decoder's own module may call its functions (decode_mask_png -> decode_mask)


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def one_path_violations(package: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for path in _sources(package):
        rel = path.relative_to(package).as_posix()
        if _unit(path, package) in OWN_CALLS_OK:
            continue
        for node in ast.walk(_tree(path)):
            name = _called_name(node) if isinstance(node, ast.Call) else None
            if name in ONE_PATH and rel not in ONE_PATH[name]:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}: calls {name}() outside "
                             f"{', '.join(sorted(ONE_PATH[name]))}")
    return found


def test_primitives_are_called_only_by_the_one_input_and_scoring_path():
    assert one_path_violations() == []


@pytest.mark.parametrize("where, source, bad", [
    ("evaluation/probe.py", "from raysegment.io.decode import decode_image\nx = decode_image(b'')\n", True),
    ("infer/probe.py", "import raysegment.postprocess.masks as m\ndef f(p):\n    return m.postprocess(p)\n",
     True),  # called as an attribute, inside a function
    ("train/probe.py", "from raysegment.data import preprocess\npreprocess.preprocess_image(x, c)\n", True),
    ("viz/probe.py", "qc_reasons(seg)\n", True),
    ("data/model_input.py", "decode_image(b'')\npreprocess_image(x, c)\n", False),
    ("postprocess/scoring.py", "postprocess(p, g, 0.5)\nmeasure_ctr(a, b)\n", False),
    ("infer/probe.py", "from raysegment.data.model_input import prepare_input\nprepare_input(b'', 'a', c)\n",
     False),
])
def test_the_check_sees_a_primitive_called_outside_its_place(tmp_path, where, source, bad):
    probe = tmp_path / "raysegment" / where
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert bool(one_path_violations(tmp_path / "raysegment")) is bad


def test_every_error_class_lives_in_errors_py():
    """errors.py is the one home of the package's exception classes (what a user or a row can see)."""
    elsewhere = []
    for path in _sources():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                elsewhere.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}")
    assert elsewhere == []
