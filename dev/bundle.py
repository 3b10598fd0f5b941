"""Build a function's deployment bundle exactly as it is deployed.

A deployed function's source archive holds only the files of an allow-list: the function's
``functions/<name>/*.py`` and ``requirements.txt`` (its lock file: pinned, hashed) at the
archive's root, plus ``shared/**/*.py`` and ``shared/system_instruction.md`` beside ``main.py``
(:data:`FUNCTION_PATTERNS`, :data:`SHARED_PATTERNS`). ``make archives``
(``tools/build_function_archives.py``) zips it with :func:`write_archive`, deterministically,
and ``terraform/functions.tf`` computes the same :func:`source_hash` from the same patterns to
name the uploaded object; ``tests/test_bundle.py`` builds the bundle here and imports the entry
point from it alone, and ``tests/test_terraform.py`` checks that Terraform's patterns and hash
agree with these.

Run ``python -m dev.bundle chats_crud build/chats_crud`` to build one by hand.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "functions"
SHARED_DIR = REPO_ROOT / "shared"

# The only files shipped (glob patterns, as Terraform's fileset() reads them): a stray file in a
# function folder or in shared/ (notes, local data, editor litter, bytecode) never is.
FUNCTION_PATTERNS = ("*.py", "requirements.txt")
SHARED_PATTERNS = ("**/*.py", "system_instruction.md")

# Every zip entry gets these, so the same files give the same bytes on any machine.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--


def function_names() -> list[str]:
    """Every deployable function: each folder under ``functions/`` with a ``main.py``."""
    return sorted(path.parent.name for path in FUNCTIONS_DIR.glob("*/main.py"))


def _matching(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = {path for pattern in patterns for path in root.glob(pattern) if path.is_file()}
    return sorted(found)


def bundle_manifest(function: str) -> dict[str, Path]:
    """Map each path inside the function's archive to the repository file it comes from."""
    function_dir = FUNCTIONS_DIR / function
    if not (function_dir / "main.py").is_file():
        raise ValueError(f"no function named {function!r} under {FUNCTIONS_DIR}")
    manifest = {
        path.relative_to(function_dir).as_posix(): path
        for path in _matching(function_dir, FUNCTION_PATTERNS)
    }
    for path in _matching(SHARED_DIR, SHARED_PATTERNS):
        manifest["shared/" + path.relative_to(SHARED_DIR).as_posix()] = path
    return dict(sorted(manifest.items()))


def source_hash(function: str) -> str:
    """The archive's content hash, as terraform/functions.tf computes it (local.source_hash).

    sha256 over one line per file, sorted by archive path: "<archive path> <sha256 of the file>".
    """
    lines = "".join(
        f"{archive_path} {hashlib.sha256(source.read_bytes()).hexdigest()}\n"
        for archive_path, source in sorted(bundle_manifest(function).items())
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def write_archive(function: str, destination: Path) -> Path:
    """Zip the bundle to ``destination``: same files, same bytes, on any machine.

    Sorted entries, fixed timestamps and permissions, stored (not deflated, so no dependence on the
    local zlib). Writes ``<destination>.sha256`` with :func:`source_hash` beside it, which
    Terraform checks before uploading.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for archive_path, source in bundle_manifest(function).items():
            info = zipfile.ZipInfo(archive_path, date_time=ZIP_TIMESTAMP)
            info.create_system = 3  # unix, whatever machine builds it
            info.external_attr = ZIP_FILE_MODE << 16
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, source.read_bytes())
    partial.replace(destination)
    destination.with_name(destination.name + ".sha256").write_text(source_hash(function) + "\n")
    return destination


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
