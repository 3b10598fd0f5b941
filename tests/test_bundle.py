"""Each function deploys on its own: its bundle alone must start and answer.

The bundle is built exactly as Terraform builds the archive (``dev/bundle.py``), then served
by functions-framework from the bundle's folder with nothing of this repository on the path.
Its direct requirements (``requirements.in``) must cover every third-party import reachable from
``main.py`` and list nothing it does not use; the ``requirements.txt`` it ships is their lock
(tests/test_locks.py).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dev.bundle import REPO_ROOT, build_bundle, bundle_manifest, function_names
from dev.stack import LocalStack, free_port, function_command

FUNCTIONS = function_names()
STDLIB = set(sys.stdlib_module_names)


def test_every_function_folder_is_deployable() -> None:
    assert FUNCTIONS == [
        "chat_stream",
        "chats_crud",
        "clerk_webhook",
        "storage_sweep",
        "summarize",
        "upload_url",
    ]
    for name in FUNCTIONS:
        source = (REPO_ROOT / "functions" / name / "main.py").read_text()
        tree = ast.parse(source)
        entry = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert entry, f"functions/{name}/main.py has no entry point named {name}"
        requirements = (REPO_ROOT / "functions" / name / "requirements.in").read_text()
        for line in requirements.splitlines():
            if line.strip() and not line.startswith("#"):
                assert "==" in line, f"{name}: {line!r} is not pinned with =="


def test_manifest_holds_main_requirements_and_shared() -> None:
    manifest = bundle_manifest("chats_crud")
    assert {"main.py", "requirements.txt", "shared/__init__.py", "shared/db.py"} <= set(manifest)
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in manifest)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_bundle_starts_and_answers_alone(function: str, stack: LocalStack, tmp_path: Path) -> None:
    bundle = build_bundle(function, tmp_path / function)
    port = free_port()
    env = {key: value for key, value in stack.env.items() if key != "PYTHONPATH"}
    env["PORT"] = str(port)
    # Started the way Cloud Run starts it: from the bundle's folder, by entry point name.
    process = subprocess.Popen(
        function_command(function, port, source="main.py"),
        cwd=bundle,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/__bundle_check", timeout=2)
            except urllib.error.HTTPError as error:
                assert error.code == 404
                body = error.read()
                break
            except OSError:
                time.sleep(0.1)
        assert b'"detail"' in body, "the shared JSON error pipeline did not answer"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert os.path.exists(bundle / "shared" / "web.py")


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: ``if TYPE_CHECKING:`` blocks are for type checkers only."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def reachable_imports(function: str) -> set[str]:
    """Top-level third-party modules imported by main.py and the shared modules it reaches."""
    manifest = bundle_manifest(function)
    pending, seen, third_party = ["main.py"], set(), set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in runtime_nodes(ast.parse(manifest[path].read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from google.cloud import storage` imports the module google.cloud.storage;
                # `from flask import Request` a name of flask: distribution_of tries both.
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "shared":
                    parts = name.split(".")
                    candidates = [
                        "/".join(parts[:length]) + suffix
                        for length in range(len(parts), 0, -1)
                        for suffix in (".py", "/__init__.py")
                    ]
                    pending.append(next(c for c in candidates if c in manifest))
                elif top not in STDLIB and top != "__future__":
                    third_party.add(name)
    return third_party


@functools.cache
def _installed_files() -> list[tuple[str, set[str]]]:
    return [
        (dist.metadata["Name"].lower(), {str(f) for f in dist.files or []})
        for dist in importlib.metadata.distributions()
    ]


def distribution_of(module: str) -> str:
    """The installed distribution whose files hold ``module`` (namespace packages included).

    The longest importable prefix wins: ``google.cloud.storage.Blob`` is google-cloud-storage.
    """
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        path = "/".join(parts[:length])
        for name, files in _installed_files():
            if f"{path}/__init__.py" in files or f"{path}.py" in files:
                return name
    raise AssertionError(f"no installed distribution provides {module}")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_requirements_match_imports(function: str) -> None:
    requirements = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (REPO_ROOT / "functions" / function / "requirements.in")
        .read_text()
        .splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {distribution_of(module).replace("_", "-") for module in reachable_imports(function)}
    assert needed - requirements == set(), f"{function} imports packages it does not list"
    assert requirements - needed == set(), f"{function} lists packages it never imports"
