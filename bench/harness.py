"""What most benchmarks start from: the whole local stack in a throwaway data folder."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port


@contextlib.contextmanager
def stack_with_model() -> Iterator[tuple[LocalStack, StandinControl]]:
    """The local stack (functions' logs to files, so the terminal stays the bench's) and the
    control of its Gemini stand-in; stopped, its data folder deleted, when the block ends."""
    with tempfile.TemporaryDirectory() as data_dir:
        stack = LocalStack(Path(data_dir), free_port(), log_to_files=True)
        stack.start()
        try:
            assert stack.gemini_standin_url is not None
            yield stack, StandinControl(stack.gemini_standin_url)
        finally:
            stack.stop()


def best_cpu_seconds_per_call(call: Callable[[], object], calls: int, warmup: int) -> float:
    """CPU seconds one ``call()`` takes: the best of 5 timed runs of ``calls`` calls each,
    after ``warmup`` untimed ones (process time, so other processes' load counts less)."""
    for _ in range(warmup):
        call()
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, time.process_time() - started)
    return best / calls
