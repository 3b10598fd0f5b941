"""The suite's own layout: test modules share code through conftest.py and helper modules only.

Importing one test module from another runs (and, under pytest, collects) its module-level code
twice and ties unrelated tests together; shared helpers live in tests/helpers.py,
tests/terraform_schema.py or conftest.py instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_module_of_the_suite_imports_a_test_module() -> None:
    offenders = {
        path.name: sorted(
            module
            for module in imported_modules(path)
            if module.rsplit(".", 1)[-1].startswith("test_")
        )
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {name: modules for name, modules in offenders.items() if modules} == {}
