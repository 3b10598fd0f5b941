"""Compile every requirements ``.in`` file into its lock file, or check that the locks are in sync.

    python tools/locks.py           # make lock: write the locks
    python tools/locks.py --check   # make lock-check: fail, naming the file, when a lock is stale

Each ``<name>.in`` lists a virtualenv's or a deployment's direct requirements; its lock
``<name>.txt`` beside it pins every package, transitive ones included, with the sha256 of each of
its files, for CPython 3.11 on x86_64 Linux (Cloud Run functions, the migrations image, CI and
the development machines). pip installs a file with hashes in hash-checking mode: a package
whose file does not match, or a dependency the lock does not name, fails the install.

The functions' and the migrations image's locks are compiled within the versions of
``requirements-dev.txt`` (``-c``), so what is deployed is exactly what the tests ran with.
Compiling starts from the existing lock (uv keeps its versions unless an input asks for others),
so ``--check`` fails only when an input changed, never because a newer release appeared.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEV_LOCK = "requirements-dev.txt"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"


@dataclass(frozen=True)
class Lock:
    source: str  # the .in file, relative to the repository
    constraint: str | None = None  # a lock whose versions this one must keep

    @property
    def lock(self) -> str:
        return self.source.removesuffix(".in") + ".txt"


def locks() -> list[Lock]:
    """Every lock, the development one first (the others are compiled within it)."""
    within_dev = [
        *sorted(path.relative_to(REPO).as_posix() for path in REPO.glob("functions/*/*.in")),
        "terraform/migrations/requirements.in",
    ]
    own_venvs = sorted(path.relative_to(REPO).as_posix() for path in REPO.glob("tools/*.in"))
    return [
        Lock("requirements-dev.in"),
        *(Lock(source, DEV_LOCK) for source in within_dev),
        *(Lock(source) for source in own_venvs),
    ]


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise SystemExit("uv is not installed: run `make install` (it is in requirements-dev.in)")
    return found


def compile_lock(lock: Lock, output: Path) -> None:
    """uv pip compile ``lock.source`` into ``output``, keeping the versions ``output`` has."""
    command = [
        uv(),
        "pip",
        "compile",
        "--quiet",
        "--generate-hashes",
        # Keep extras (google-auth[requests]); with_plain_pins adds the plain pin beside them.
        "--no-strip-extras",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--annotation-style",
        "line",
        "--custom-compile-command",
        "make lock",
        lock.source,
        "--output-file",
        str(output),
    ]
    if lock.constraint:
        command += ["--constraints", lock.constraint]
    # uv reads no pip.conf: only PyPI, as Cloud Build and a developer's machine see it.
    subprocess.run(command, cwd=REPO, check=True)
    output.write_text(with_plain_pins(output.read_text()))


def with_plain_pins(lock_text: str) -> str:
    """Beside each ``name[extra]==version`` entry, the same entry for plain ``name``.

    In hash-checking mode pip 23.2 (the one Python 3.11's early releases bundle) refuses a
    dependency on ``google-auth[requests]`` unless the lock pins ``google-auth[requests]``, and one
    on plain ``google-auth`` unless it pins plain ``google-auth``; pip 24 accepts either. With both
    pins, pip 23.2 and later install the lock, whatever pip the deployment's build brings.
    """
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock_text)
    pinned = {entry.split("==", 1)[0] for entry in entries if "==" in entry}
    result: list[str] = []
    for entry in entries:
        result.append(entry)
        extras = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\[[^\]]*\](==.*)", entry, re.S)
        if extras and extras[1] not in pinned:
            result.append(extras[1] + extras[2].rstrip("\n"))
    return "\n".join(result).rstrip("\n") + "\n"


def write() -> int:
    for lock in locks():
        compile_lock(lock, REPO / lock.lock)
        print(f"{lock.lock}  <- {lock.source}")
    return 0


def check() -> int:
    stale: list[str] = []
    with tempfile.TemporaryDirectory(prefix="locks-") as scratch:
        for lock in locks():
            current = REPO / lock.lock
            fresh = Path(scratch) / lock.lock.replace("/", "__")
            if current.exists():
                shutil.copyfile(current, fresh)  # start from its versions, as `make lock` does
            compile_lock(lock, fresh)
            before = current.read_text() if current.exists() else ""
            after = fresh.read_text()
            if before != after:
                stale.append(lock.lock)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        before.splitlines(keepends=True),
                        after.splitlines(keepends=True),
                        lock.lock,
                        f"{lock.lock} (from {lock.source})",
                        n=1,
                    )
                )
    if stale:
        print(f"\nout of sync with their .in files: {', '.join(stale)}; run `make lock`")
        return 1
    print(f"{len(locks())} lock files in sync with their inputs")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    return check() if parser.parse_args().check else write()


if __name__ == "__main__":
    sys.exit(main())
