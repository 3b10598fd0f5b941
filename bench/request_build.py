"""CPU to build one streamGenerateContent request body, by window size: google-genai's
conversion of the contents and config, of the config only (the contents sent as REST JSON),
and of nothing (``shared.gemini_raw.request_body``: the whole body as plain data).

In process, no network, on a window of ``n`` text messages of ~40 tokens (as
bench/chat_stream.py seeds them) with the instruction and config a turn sends. Best of 5
repeats, ``time.process_time``.
"""

from __future__ import annotations

from typing import Any

from bench.harness import best_cpu_seconds_per_call

WINDOWS = (11, 50)
CALLS = 200


def _window(n: int) -> list[dict[str, Any]]:
    return [
        {
            "role": "user" if i % 2 == 0 else "model",
            "parts": [{"text": f"message {i}" + " lorem ipsum" * 12}],
        }
        for i in range(n)
    ]


def _build(client: Any, contents: list[dict[str, Any]], config: Any, sdk_contents: bool) -> Any:
    from google.genai import _common, models, types

    from shared.gemini_raw import wire_contents

    api_client = client.aio.models._api_client
    if sdk_contents:
        parameters = types._GenerateContentParameters(
            model="gemini-2.5-flash", contents=contents, config=config
        )
    else:
        parameters = types._GenerateContentParameters(model="gemini-2.5-flash", config=config)
    request = models._GenerateContentParameters_to_vertex(api_client, parameters, None, parameters)
    request.pop("config", None)
    request = _common.encode_unserializable_types(_common.convert_to_dict(request))
    if not sdk_contents:
        request = {"contents": wire_contents(contents), **request}
    return request


def _per_call_ms(call: Any) -> float:
    return best_cpu_seconds_per_call(call, CALLS, warmup=20) * 1000


def run() -> dict[str, Any]:
    from google import genai
    from google.genai import types

    client = genai.Client(
        vertexai=True,
        project="bench",
        location="us-central1",
        credentials=_anonymous(),
        http_options=types.HttpOptions(base_url="http://127.0.0.1:9"),
    )
    config = types.GenerateContentConfig(
        system_instruction="You are Raven. " * 50,
        thinking_config=types.ThinkingConfig(thinking_budget=0),
        max_output_tokens=2048,
    )
    from shared.gemini_raw import Generation, request_body

    generation = Generation("You are Raven. " * 50, thinking_budget=0, max_output_tokens=2048)
    api_client = client.models._api_client
    results: dict[str, Any] = {}
    for n in WINDOWS:
        contents = _window(n)
        sdk = _per_call_ms(lambda c=contents: _build(client, c, config, sdk_contents=True))
        raw = _per_call_ms(lambda c=contents: _build(client, c, config, sdk_contents=False))
        plain = _per_call_ms(
            lambda c=contents: request_body(api_client, "gemini-2.5-flash", c, generation)
        )
        results[f"window_{n}"] = {"sdk_ms": sdk, "rest_json_ms": raw, "plain_ms": plain}
    print("request building (CPU per request body, in process)")
    for n in WINDOWS:
        row = results[f"window_{n}"]
        print(
            f"  window of {n:>2} messages: google-genai's conversion {row['sdk_ms']:.2f} ms, "
            f"contents as REST JSON {row['rest_json_ms']:.3f} ms, "
            f"the whole body as plain data {row['plain_ms']:.4f} ms"
        )
    return results


def _anonymous() -> Any:
    import google.auth.credentials

    return google.auth.credentials.AnonymousCredentials()
