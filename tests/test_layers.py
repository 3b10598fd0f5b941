"""The layers of shared/ (tools/layers.py): no module imports one above its own, no circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools import layers

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_shared_is_layered() -> None:
    """``python -m tools.layers`` on the real tree: every module listed with its layer, exit 0."""
    run = subprocess.run(
        [sys.executable, "-m", "tools.layers"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for module in layers.shared_modules():
        assert f"  {module.removeprefix('shared.')} " in run.stdout, module
    for layer in layers.LAYER_NAMES:
        assert f"{layer}:" in run.stdout


def fake_shared(root: Path, modules: dict[str, str]) -> Path:
    """A copy of shared/ with the given module sources (empty for every other listed one)."""
    package = root / "shared"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in layers.LAYERS:
        (package / f"{name.removeprefix('shared.')}.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source)
    return root


def test_an_upward_import_inside_a_function_fails(tmp_path: Path) -> None:
    root = fake_shared(tmp_path, {"users": "def f():\n    from shared.storage import x\n"})
    found, _ = layers.problems(root)
    assert found == ["shared.users (domain) imports shared.storage (adapters): an upward import"]


def test_every_spelling_of_an_import_counts(tmp_path: Path) -> None:
    root = fake_shared(
        tmp_path,
        {
            "db": "import shared.runtime\n",
            "errors": "from shared import chats\n",
            "text": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from shared.gemini import GeminiStreamer\n"
            ),
        },
    )
    found, _ = layers.problems(root)
    assert sorted(found) == [
        "shared.db (objects) imports shared.runtime (runtime): an upward import",
        "shared.errors (base) imports shared.chats (domain): an upward import",
        "shared.text (base) imports shared.gemini (adapters): an upward import",
    ]


def test_a_circle_within_a_layer_fails(tmp_path: Path) -> None:
    root = fake_shared(
        tmp_path,
        {"chats": "from shared import media\n", "media": "from shared.chats import x\n"},
    )
    found, _ = layers.problems(root)
    assert found == ["import circle: shared.chats -> shared.media -> shared.chats"]


def test_a_module_without_a_layer_fails(tmp_path: Path) -> None:
    root = fake_shared(tmp_path, {"helpers": "from shared.errors import ApiError\n"})
    found, _ = layers.problems(root)
    assert found == ["shared.helpers: not in tools/layers.py LAYERS; give it a layer"]


def test_importing_a_missing_module_fails(tmp_path: Path) -> None:
    root = fake_shared(tmp_path, {"chats": "from shared.nothing import x\n"})
    found, _ = layers.problems(root)
    assert found == ["shared.chats imports shared.nothing, which does not exist"]
