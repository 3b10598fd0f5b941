"""Build every function's source archive into terraform/.build/ (make archives).

Run before any terraform plan or apply, on every machine that runs one: the archives are
deterministic (dev/bundle.py: allow-listed files, sorted, fixed timestamps, stored), so a plan made
on one machine and applied on another upload the same bytes under the same content-hash name.
terraform/functions.tf refuses to upload an archive whose <name>.zip.sha256 does not match the
hash it computes from the sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dev import bundle  # noqa: E402

BUILD_DIR = REPO / "terraform" / ".build"


def main() -> int:
    for function in bundle.function_names():
        archive = bundle.write_archive(function, BUILD_DIR / f"{function}.zip")
        print(f"{archive.relative_to(REPO)}  {bundle.source_hash(function)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
