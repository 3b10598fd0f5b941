"""The two framings of POST /chat: NDJSON must cost no more per chunk than SSE (within 5%).

(a) The encoder alone: building a chunk event and writing it in each framing, in µs per chunk
    (best of several timeit repeats, so other load on the machine inflates neither).
(b) A whole instance: 50 streams x 50 chunks/s for 5 s on one fresh chat_stream instance, the
    client asking for SSE or NDJSON with Accept, rounds interleaved (SSE, NDJSON, SSE, ...).
    The instance's CPU time (user + system, from /proc) per chunk delivered is the cost that
    sizes chat_stream; the added latency per chunk is reported beside it.
Target: NDJSON / SSE <= 1.05 on both.
"""

from __future__ import annotations

import timeit
from typing import Any

from bench.chat_stream import stream_load
from bench.harness import describe_instance_row, instance_rounds, stack_with_model
from shared.stream_framing import NDJSON, NDJSON_MEDIA_TYPE, SSE, SSE_MEDIA_TYPE, Framing

ROUNDS = 3
STREAMS, RATE = 50, 50
ENCODE_CALLS = 20_000


def encode_us(framing: Framing) -> float:
    """µs to build one chunk event and write it in ``framing`` (best of 7 repeats)."""
    text = "a typical chunk of a streamed answer, some forty to sixty characters"

    def one() -> str:
        return framing.chunk(text)

    best = min(timeit.repeat(one, number=ENCODE_CALLS, repeat=7))
    return best / ENCODE_CALLS * 1e6


def run() -> dict[str, Any]:
    encoder = {"sse": encode_us(SSE), "ndjson": encode_us(NDJSON)}
    per_round: dict[str, list[dict[str, Any]]] = {"sse": [], "ndjson": []}
    with stack_with_model() as (stack, control):
        token = stack.signer.token("user_bench_framing", lifetime_seconds=7200)
        for _ in range(ROUNDS):
            for name, accept in (("sse", SSE_MEDIA_TYPE), ("ndjson", NDJSON_MEDIA_TYPE)):
                load = stream_load(stack.env, token, control, STREAMS, RATE, accept)
                per_round[name].append(load)

    results: dict[str, Any] = {
        "encode_us_per_chunk": encoder,
        "encode_ratio": encoder["ndjson"] / encoder["sse"],
        "instance": {name: instance_rounds(loads) for name, loads in per_round.items()},
    }
    instance = results["instance"]
    results["cpu_ratio"] = (
        instance["ndjson"]["cpu_us_per_chunk"] / instance["sse"]["cpu_us_per_chunk"]
    )
    print("stream framing (NDJSON vs SSE)")
    print(
        f"  encoder: SSE {encoder['sse']:.2f} µs, NDJSON {encoder['ndjson']:.2f} µs per chunk "
        f"(ratio {results['encode_ratio']:.3f})"
    )
    for name in ("sse", "ndjson"):
        print(describe_instance_row(name, instance[name], STREAMS, RATE))
    print(f"  NDJSON/SSE CPU per chunk: {results['cpu_ratio']:.3f} (target <= 1.05)")
    return results
