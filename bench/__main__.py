"""Run every benchmark, print the numbers and save them to bench/results/."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import chats_crud


def main() -> None:
    results = {"chats_crud": chats_crud.run()}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
