"""Run the benchmarks, print the numbers and save them to bench/results/.

``python -m bench`` runs them all; ``python -m bench chat_stream`` runs the named ones.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    chat_stream,
    chats_crud,
    chunk_cost,
    clerk_webhook,
    controls,
    hostile,
    list_baseline,
    profile,
    progress_cost,
    relay_floor,
    request_build,
    request_path,
    resume,
    stream_framing,
    stream_parse,
    summaries,
    telemetry,
    turn_cost,
    workers,
)

BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "chats_crud": chats_crud.run,
    "list_baseline": list_baseline.run,
    "chat_stream": chat_stream.run,
    "chat_stream_turn": chat_stream.run_turn,
    "stream_framing": stream_framing.run,
    "chunk_cost": chunk_cost.run,
    "stream_parse": stream_parse.run,
    "summaries": summaries.run,
    "clerk_webhook": clerk_webhook.run,
    "hostile": hostile.run,
    "controls": controls.run,
    "resume": resume.run,
    "progress_cost": progress_cost.run,
    "telemetry": telemetry.run,
    "profile": profile.run,
    "request_build": request_build.run,
    "request_path": request_path.run,
    "workers": workers.run,
    "turn_cost": turn_cost.run,
    "burst": workers.run_burst,
    "relay_floor": relay_floor.run,
}


def main() -> None:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    results = {}
    for name in names:
        results[name] = BENCHMARKS[name]()
        print()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
