"""Build a function's deployment bundle exactly as Terraform does.

A deployed function's source archive is its folder ``functions/<name>/`` at the archive's
root, plus the ``shared/`` package beside ``main.py``. Terraform builds it in
``terraform/functions.tf`` from two ``fileset()`` calls with the same exclusions as
:data:`EXCLUDED_PARTS` below; ``tests/test_bundle.py`` builds it here and imports the entry
point from the bundle alone, and ``tests/test_terraform.py`` checks both lists agree.

Run ``python -m dev.bundle chats_crud build/chats_crud`` to build one by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"
SHARED_DIR = REPO_ROOT / "shared"

# Never shipped: bytecode caches and editor or OS litter.
EXCLUDED_PARTS = ("__pycache__",)
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


def function_names() -> list[str]:
    """Every deployable function: each folder under ``functions/`` with a ``main.py``."""
    return sorted(path.parent.name for path in FUNCTIONS_DIR.glob("*/main.py"))


def _files_under(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part in EXCLUDED_PARTS for part in path.relative_to(root).parts)
        and path.suffix not in EXCLUDED_SUFFIXES
    )


def bundle_manifest(function: str) -> dict[str, Path]:
    """Map each path inside the function's archive to the repository file it comes from."""
    function_dir = FUNCTIONS_DIR / function
    if not (function_dir / "main.py").is_file():
        raise ValueError(f"no function named {function!r} under {FUNCTIONS_DIR}")
    manifest = {
        path.relative_to(function_dir).as_posix(): path for path in _files_under(function_dir)
    }
    for path in _files_under(SHARED_DIR):
        manifest["shared/" + path.relative_to(SHARED_DIR).as_posix()] = path
    return manifest


def build_bundle(function: str, destination: Path) -> Path:
    """Copy the function's archive contents into an empty ``destination`` folder."""
    destination.mkdir(parents=True, exist_ok=False)
    for archive_path, source in bundle_manifest(function).items():
        target = destination / archive_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return destination


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m dev.bundle FUNCTION DESTINATION")
    print(build_bundle(sys.argv[1], Path(sys.argv[2])))
