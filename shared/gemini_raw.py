"""The model's stream read by the request thread itself: google-genai for the rest.

google-genai's streams cost two things per chunk that a chat does not need: pydantic
validation of every chunk (~200 µs of CPU) and, for its async client, a second thread (an
asyncio loop running aiohttp) that hands each chunk to the request thread through a queue.
Here google-genai still builds the request's URL and headers (``_build_request``),
authenticates it (the Gemini API's key header; for Vertex AI its credentials' access token,
as its sync ``_request_once`` adds it) and raises its errors (``APIError.raise_error`` for
an HTTP error status or an ``{"error": ...}`` event), but the request is sent and its SSE
answer read on a plain socket in the calling thread (:mod:`shared.sse_client`), and each
event's dict is read directly for the few fields a chat needs (:func:`read_chunk`).

The body is the REST API's JSON built once per turn without the SDK's conversion (~0.8 ms
of pydantic per turn): the contents as shared.context builds them (:func:`wire_contents`),
``systemInstruction`` and ``generationConfig`` exactly as the SDK spells them
(:func:`request_body`; tests/test_gemini_raw.py checks they equal the SDK's for Vertex AI and
the Gemini API). Anything else (contents in another form, a continuation token) goes through
the SDK's own conversion.

The seam is private SDK API, written against **google-genai 3.4.0** (``SDK_VERSION``):
``models._GenerateContentParameters_to_vertex`` / ``_to_mldev``, ``_transformers.t_model``,
``BaseApiClient._build_request`` and ``_access_token``. ``check_seam`` fails loudly when any
of it is missing (tests/test_gemini_raw.py), so an SDK upgrade that moves it breaks the
build instead of silently breaking streams.

Automatic continuation, which the SDK's stream does, is done here too (see
:func:`raw_stream`): a hop that ends with ``finishReason: CONTINUATION``, or breaks after a
``continuationToken`` checkpoint, is resumed from that token, as the SDK does. Against the
stand-in, which sends no token unless scripted to, a broken stream fails as it always did.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from shared.sse_client import ConnectionPool, ErrorStatus, ServerSilent, stream_events

SDK_VERSION = "3.4.0"

# Requests one stream may take, at most (the SDK has no limit; a stream that keeps asking to
# continue is a fault, not an answer), and resumes in a row without progress (the SDK's 3).
MAX_HOPS = 16
MAX_RECONNECTS_WITHOUT_PROGRESS = 3


@dataclass
class ChunkFields:
    """What a chat needs from one streamed GenerateContentResponse."""

    text: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None  # Gemini's FinishReason of the first candidate
    block_reason: str | None = None  # promptFeedback.blockReason: the prompt was refused
    continuation_token: str | None = None


def read_chunk(response: dict[str, Any]) -> ChunkFields:
    """The fields of one raw (camelCase JSON) GenerateContentResponse.

    Mirrors what shared.gemini read from the SDK's models: the first candidate's non-thought
    text parts joined, its finish reason, the usage's prompt and candidates token counts
    (a zero or missing count is None, as ``count or previous`` treated it), and the prompt's
    block reason.
    """
    fields = ChunkFields()
    candidates = response.get("candidates")
    if candidates:
        candidate = candidates[0]
        content = candidate.get("content")
        if content:
            parts = content.get("parts")
            if parts:
                fields.text = "".join(
                    part["text"] for part in parts if part.get("text") and not part.get("thought")
                )
        fields.finish_reason = candidate.get("finishReason") or None
        fields.continuation_token = candidate.get("continuationToken") or None
    usage = response.get("usageMetadata")
    if usage:
        fields.prompt_tokens = usage.get("promptTokenCount") or None
        fields.output_tokens = usage.get("candidatesTokenCount") or None
    feedback = response.get("promptFeedback")
    if feedback:
        fields.block_reason = feedback.get("blockReason") or None
    return fields


@dataclass(frozen=True)
class Generation:
    """What a turn asks of the model besides the contents (the SDK's config, as plain data)."""

    system_instruction: str
    thinking_budget: int
    max_output_tokens: int | None = None

    def sdk_config(self, continuation_token: Any = None) -> Any:
        """The same as google-genai's ``GenerateContentConfig`` (its conversion's input)."""
        from google.genai import types

        return types.GenerateContentConfig(
            system_instruction=self.system_instruction,
            thinking_config=types.ThinkingConfig(thinking_budget=self.thinking_budget),
            max_output_tokens=self.max_output_tokens,
            continuation_token=continuation_token,
        )

    def wire(self) -> dict[str, Any]:
        """``systemInstruction`` and ``generationConfig`` as the SDK's conversion spells them
        (``thinking_budget`` in snake_case, as the SDK sends it; proto3 JSON takes either)."""
        generation_config: dict[str, Any] = {}
        if self.max_output_tokens is not None:
            generation_config["maxOutputTokens"] = self.max_output_tokens
        generation_config["thinkingConfig"] = {"thinking_budget": self.thinking_budget}
        return {
            "systemInstruction": {"parts": [{"text": self.system_instruction}], "role": "user"},
            "generationConfig": generation_config,
        }


def check_seam() -> None:
    """Raise if the private google-genai API this module uses is not there.

    Raises:
        RuntimeError: naming what is missing and the version this was written against.
    """
    from google.genai import _api_client, _common, _transformers, errors, models, version

    missing = [
        name
        for owner, name in (
            (models, "_GenerateContentParameters_to_vertex"),
            (models, "_GenerateContentParameters_to_mldev"),
            (models.types, "_GenerateContentParameters"),
            (_common, "convert_to_dict"),
            (_common, "encode_unserializable_types"),
            (_transformers, "t_model"),
            (_api_client.BaseApiClient, "_build_request"),
            (_api_client.BaseApiClient, "_access_token"),
            (errors.APIError, "raise_error"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise RuntimeError(
            f"google-genai {version.__version__} lacks {', '.join(missing)}, which "
            f"shared/gemini_raw.py uses (written against {SDK_VERSION}); update it"
        )


def raw_stream(
    client: Any,
    pool: ConnectionPool,
    model: str,
    contents: Any,
    generation: Generation,
    *,
    heartbeat_seconds: float,
    silence_seconds: float,
) -> Generator[list[dict[str, Any]], None, None]:
    """Stream ``generateContent``'s raw responses (dicts), continuing as google-genai does.

    Each item is the responses that arrived together (one ``recv``), or an empty list after
    ``heartbeat_seconds`` of silence. Runs in the calling thread.

    Mirrors the SDK's ``StreamContinuation`` (3.4.0): a hop that ends with ``CONTINUATION``
    (the finish reason is then removed), ends early, or breaks after a new
    ``continuationToken`` is resumed from that token; the hops' usage is summed.

    Raises:
        google.genai.errors.APIError: an error status or an error event, as the SDK raises.
        ServerSilent: nothing from the model for ``silence_seconds`` (never resumed).
        OSError: the connection failed or broke (``StreamBroken`` mid-response).
    """
    from google.genai import errors

    api_client = client.models._api_client
    resume: str | None = None
    reconnects = 0  # hops in a row that made no progress
    last_error: Exception | None = None
    usage_before: dict[str, int] = {}  # summed usage of the finished hops
    for _hop in range(MAX_HOPS):
        start, token = resume, None
        finish: str | None = None
        received = blocked = content = False
        hop_usage: dict[str, Any] | None = None
        error: Exception | None = None
        url, headers, body = prepared_request(api_client, model, contents, generation, start)
        try:
            for batch in _one_hop(pool, url, headers, body, heartbeat_seconds, silence_seconds):
                for response in batch:
                    received = True
                    blocked = blocked or response.get("promptFeedback") is not None
                    candidates = response.get("candidates")
                    if candidates:
                        candidate = candidates[0]
                        content = content or bool((candidate.get("content") or {}).get("parts"))
                        reason = candidate.get("finishReason") or None
                        finish = reason or finish
                        if candidate.get("continuationToken"):
                            token = candidate["continuationToken"]
                        elif reason and reason != "CONTINUATION":
                            token = None
                        if reason == "CONTINUATION" and token:
                            del candidate["finishReason"]  # not the end: the next hop continues
                    usage = response.get("usageMetadata")
                    if usage:
                        hop_usage = usage
                        if usage_before:
                            response["usageMetadata"] = _summed(usage_before, usage)
                yield batch
        except ServerSilent:
            raise  # the user has waited long enough: not resumed
        except Exception as failure:  # noqa: BLE001 - decided below, as the SDK decides
            error = failure
        if hop_usage:
            usage_before = _summed(usage_before, hop_usage)
        if isinstance(error, errors.APIError) and not received:
            raise error
        progressed = content or bool(token and token != start)
        if error is not None:
            last_error = error
        elif progressed:
            last_error = None
        if finish is not None or blocked:
            ended_to_continue = finish == "CONTINUATION" and not blocked
            resume = token if ended_to_continue and token and token != start else None
            reconnects = 0
        elif token and token != start:
            resume, reconnects = token, 0
        elif content or reconnects >= MAX_RECONNECTS_WITHOUT_PROGRESS:
            resume = None
        else:
            resume, reconnects = start, reconnects + 1
        if resume and not blocked and finish in (None, "CONTINUATION"):
            continue
        if error is not None:
            raise error
        if finish is None and not blocked and last_error is not None:
            raise last_error
        return
    raise RuntimeError(f"the model's stream asked to continue more than {MAX_HOPS} times")


def request_body(
    api_client: Any,
    model: str,
    contents: Any,
    generation: Generation,
    continuation_token: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The ``streamGenerateContent`` path (relative to the API version) and JSON body.

    Plain data, no SDK conversion, for contents in the REST API's form (what shared.context
    builds); the SDK's own conversion for anything else and for a resumed hop (its
    continuation token is decoded by the SDK's model).
    """
    from google.genai import _transformers

    ready = wire_contents(contents)
    if ready is None or continuation_token is not None or not generation.system_instruction:
        return _sdk_request_body(api_client, model, contents, generation, continuation_token)
    path = f"{_transformers.t_model(api_client, model)}:streamGenerateContent?alt=sse"
    return path, {"contents": ready, **generation.wire()}


def _sdk_request_body(
    api_client: Any,
    model: str,
    contents: Any,
    generation: Generation,
    continuation_token: str | None,
) -> tuple[str, dict[str, Any]]:
    """The path and body as google-genai 3.4.0's ``_generate_content_stream`` builds them."""
    from urllib.parse import urlencode

    from google.genai import _common, models, types

    decoded = None
    if continuation_token is not None:
        decoded = types.Candidate.model_validate(
            {"continuationToken": continuation_token}
        ).continuation_token
    config = generation.sdk_config(decoded)
    ready = wire_contents(contents)
    if ready is None:  # not plain text and file parts: the SDK converts them
        parameters = types._GenerateContentParameters(model=model, contents=contents, config=config)
    else:
        parameters = types._GenerateContentParameters(model=model, config=config)
    to_wire = (
        models._GenerateContentParameters_to_vertex
        if api_client.vertexai
        else models._GenerateContentParameters_to_mldev
    )
    request: dict[str, Any] = to_wire(api_client, parameters, None, parameters)
    url = request.get("_url")
    path = "{model}:streamGenerateContent?alt=sse"
    path = path.format_map(url) if url else path
    query = request.get("_query")
    if query:
        path = f"{path}?{urlencode(query)}"
    request = {key: value for key, value in request.items() if key != "config" and key[:1] != "_"}
    request = _common.encode_unserializable_types(_common.convert_to_dict(request))
    if ready is not None:
        request = {"contents": ready, **request}
    return path, request


def prepared_request(
    api_client: Any,
    model: str,
    contents: Any,
    generation: Generation,
    continuation_token: str | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers (authenticated) and body bytes of one ``streamGenerateContent``."""
    path, body = request_body(api_client, model, contents, generation, continuation_token)
    http_request = api_client._build_request("post", path, body, None)
    headers = http_request.headers
    # As the SDK's sync _request_once: Vertex AI with a project or location and no API key
    # sends its credentials' access token (refreshed when expired); an API key is already
    # in the headers (x-goog-api-key).
    if (
        api_client.vertexai
        and (api_client.project or api_client.location)
        and not api_client.api_key
    ):
        headers["Authorization"] = f"Bearer {api_client._access_token()}"
        credentials = api_client._credentials
        if credentials and credentials.quota_project_id:
            headers["x-goog-user-project"] = credentials.quota_project_id
    return http_request.url, headers, json.dumps(http_request.data).encode()


def _one_hop(
    pool: ConnectionPool,
    url: str,
    headers: dict[str, str],
    body: bytes,
    heartbeat_seconds: float,
    silence_seconds: float,
) -> Iterator[list[dict[str, Any]]]:
    """One streamGenerateContent request; its errors raised as google-genai raises them."""
    from google.genai import errors

    try:
        for batch in stream_events(
            pool,
            url,
            headers,
            body,
            heartbeat_seconds=heartbeat_seconds,
            silence_seconds=silence_seconds,
        ):
            for index, event in enumerate(batch):
                if isinstance(event, dict) and "error" in event:
                    # An error event inside the stream, raised as the SDK does, after the
                    # responses before it.
                    if index:
                        yield batch[:index]
                    error = event["error"]
                    code = error.get("code") if isinstance(error, dict) else None
                    errors.APIError.raise_error(int(code or 0), event, None)
            yield batch
    except ErrorStatus as status:
        errors.APIError.raise_error(status.status, _error_json(status), None)


def _error_json(status: ErrorStatus) -> Any:
    """An error answer's body as the SDK's aiohttp path reads it: its JSON, or else its text."""
    try:
        return json.loads(status.body)
    except ValueError:
        return {"message": status.body.decode("utf-8", "replace"), "status": status.reason}


def wire_contents(contents: Any) -> list[dict[str, Any]] | None:
    """``contents`` as the REST API's JSON (``{"role", "parts": [{"text"} | {"fileData"}]}``),
    or None when they are anything else the SDK accepts (a string, its models, other parts),
    which the SDK then converts.

    shared.context builds them as REST JSON already: returned as they are, not copied. A file
    part in the SDK's snake_case form (``file_data``: ``file_uri``, ``mime_type``) is renamed
    in a copy.
    """
    if not isinstance(contents, list) or not contents:
        return None
    renamed = False
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not set(content) <= {"role", "parts"}:
            return None
        for part in parts:
            if not isinstance(part, dict) or len(part) != 1:
                return None
            if "file_data" in part:
                renamed = True
            elif not isinstance(part.get("text"), str) and "fileData" not in part:
                return None
    if not renamed:
        return contents
    return [
        {**content, "parts": [_wire_part(part) for part in content["parts"]]}
        for content in contents
    ]


def _wire_part(part: dict[str, Any]) -> dict[str, Any]:
    data = part.get("file_data")
    if data is None:
        return part
    return {"fileData": {"fileUri": data["file_uri"], "mimeType": data["mime_type"]}}


def _summed(before: dict[str, int], usage: dict[str, Any]) -> dict[str, Any]:
    summed = dict(usage)
    for key, value in before.items():
        if isinstance(value, int):
            summed[key] = summed.get(key, 0) + value
    return summed
