"""``voicepipe.testing`` is for tests and plugin authors: nothing else in the package imports it, at module level or
inside a function (an import there would make a user's run depend on test-only extras)."""

from __future__ import annotations

import ast
from pathlib import Path

import voicepipe

PACKAGE = Path(voicepipe.__file__).resolve().parent


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_outside_voicepipe_testing_imports_it() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "testing"):
            continue
        for name in _imported_modules(ast.parse(path.read_text(), str(path))):
            if name == "voicepipe.testing" or name.startswith("voicepipe.testing."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    assert not offenders, offenders


def test_the_check_sees_an_import_inside_a_function() -> None:
    tree = ast.parse("def f():\n    from voicepipe.testing import harness\n")
    assert "voicepipe.testing.harness" in _imported_modules(tree)
