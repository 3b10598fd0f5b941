"""shared.sse_client: the model's stream read on a plain socket by the request thread.

Against a scripted byte-level server (real sockets, real TLS with a self-signed certificate)
for what only bytes can show: bodies framed by Content-Length or chunked, events split
anywhere across ``recv`` calls and chunk boundaries, silence, a pooled connection the server
closed; and against the Gemini stand-in through ``GeminiStreamer`` for the whole path
(heartbeats, the timeout, error statuses and events, a stream left mid-way).
"""

from __future__ import annotations

import datetime
import json
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.genai import errors

from dev.gemini_standin import StandinControl, StandinServer
from shared.gemini import GeminiStreamer
from shared.model_events import Finished, Heartbeat, ModelError, TextChunk
from shared.settings import load_settings
from shared.sse_client import (
    ConnectionPool,
    ErrorStatus,
    ServerSilent,
    StreamBroken,
    stream_events,
)
from tests.conftest import wait_for


@dataclass
class Answer:
    """One scripted response: its bytes written piece by piece, ``pause`` seconds apart."""

    pieces: list[bytes]
    pause: float = 0.0
    close_after: bool = False  # hang up after it (without saying so in a header)


@dataclass
class ByteServer:
    """A TCP (or TLS) server that answers each request with the next scripted Answer."""

    answers: list[Answer]
    tls: ssl.SSLContext | None = None
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    hangups: int = 0  # connections the client closed while being answered or idle

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}/v1/models/m:streamGenerateContent?alt=sse"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        with self.lock:
                            self.hangups += 1
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                    answer = self.answers.pop(0)
                buffer = buffer[length:]
                for index, piece in enumerate(answer.pieces):
                    if index and answer.pause and not self._pause(sock, answer.pause):
                        return
                    sock.sendall(piece)
                if answer.close_after:
                    return
        except (OSError, ssl.SSLError):
            with self.lock:
                self.hangups += 1
        finally:
            sock.close()

    def _pause(self, sock: socket.socket, seconds: float) -> bool:
        """Wait ``seconds`` between pieces; False (and counted) if the client hangs up."""
        readable, _, _ = select.select([sock], [], [], seconds)
        if readable and not sock.recv(1):
            with self.lock:
                self.hangups += 1
            return False
        return True

    def close(self) -> None:
        self.listener.close()


def event(text: str, **extra: Any) -> bytes:
    return b"data: " + json.dumps({"text": text, **extra}).encode() + b"\r\n\r\n"


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def sized_head(body: bytes, status: str = "200 OK", kind: bytes = b"text/event-stream") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        status.encode(),
        kind,
        len(body),
    )


def read_all(
    pool: ConnectionPool, url: str, heartbeat: float = 5.0, silence: float = 10.0
) -> list[list[Any]]:
    return list(
        stream_events(
            pool,
            url,
            {"Content-Type": "application/json"},
            b'{"contents": []}',
            heartbeat_seconds=heartbeat,
            silence_seconds=silence,
        )
    )


def texts(batches: list[list[Any]]) -> list[str]:
    return [item["text"] for batch in batches for item in batch]


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    pool = ConnectionPool(connect_timeout=5)
    yield pool
    pool.close()


def test_a_chunked_body_split_anywhere_is_read_whole(pool: ConnectionPool) -> None:
    """Every byte its own write: events split across recv calls, chunk sizes, CRLFs."""
    events = [event("one"), event("two, ünïcödé 🐦"), event("three")]
    # Chunk boundaries in the middle of events too (Google flushes where it likes).
    joined = b"".join(events)
    body = chunked(joined[:7], joined[7:60], joined[60:])
    response = CHUNKED_HEAD + body
    server = ByteServer([Answer([bytes([b]) for b in response], pause=0.0005)])
    try:
        batches = read_all(pool, server.url())
    finally:
        server.close()

    assert texts(batches) == ["one", "two, ünïcödé 🐦", "three"]
    request = server.requests[0]
    assert request.startswith(b"POST /v1/models/m:streamGenerateContent?alt=sse HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"\r\nContent-Type: application/json\r\n" in request
    assert request.endswith(b'\r\nContent-Length: 16\r\n\r\n{"contents": []}')
    assert pool.idle_count(("http", "127.0.0.1", server.port)) == 1  # read to its end: kept


def test_events_that_arrive_together_are_one_batch(pool: ConnectionPool) -> None:
    response = CHUNKED_HEAD + chunked(event("a") + event("b"), event("c"))
    server = ByteServer([Answer([response])])
    try:
        batches = read_all(pool, server.url())
    finally:
        server.close()
    assert [[item["text"] for item in batch] for batch in batches] == [["a", "b", "c"]]


def test_a_content_length_body_and_lf_only_lines(pool: ConnectionPool) -> None:
    body = b'data: {"text": "x"}\n\n: a comment\n\ndata: {"text":\ndata: "y"}\n\n'
    server = ByteServer([Answer([sized_head(body), body[:10], body[10:]], pause=0.02)] * 2)
    try:
        first = read_all(pool, server.url())
        second = read_all(pool, server.url())  # on the same, kept-alive, connection
    finally:
        server.close()
    assert texts(first) == texts(second) == ["x", "y"]
    assert server.connections == 1


def test_heartbeats_while_silent_then_the_rest(pool: ConnectionPool) -> None:
    response = [CHUNKED_HEAD, chunked(event("late"))]
    server = ByteServer([Answer(response, pause=0.5)])
    try:
        batches = read_all(pool, server.url(), heartbeat=0.1)
    finally:
        server.close()
    assert batches[-1] == [{"text": "late"}]
    assert batches[:-1] and all(batch == [] for batch in batches[:-1])


@pytest.mark.parametrize("after_head", [False, True], ids=["before the head", "mid-body"])
def test_silence_for_too_long_gives_up_and_drops_the_connection(
    pool: ConnectionPool, after_head: bool
) -> None:
    pieces = [CHUNKED_HEAD + b"5\r\n"] if after_head else [b"HTTP/1.1 2"]
    server = ByteServer([Answer([*pieces, b"never"], pause=30)])
    try:
        seen: list[list[Any]] = []
        with pytest.raises(ServerSilent):
            for batch in stream_events(
                pool, server.url(), {}, b"{}", heartbeat_seconds=0.1, silence_seconds=0.45
            ):
                seen.append(batch)
        assert 3 <= len(seen) <= 5 and all(batch == [] for batch in seen)
        assert pool.idle_count(("http", "127.0.0.1", server.port)) == 0
    finally:
        server.close()


def test_an_error_status_is_read_whole(pool: ConnectionPool) -> None:
    body = b'{"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}'
    server = ByteServer(
        [Answer([sized_head(body, "503 Service Unavailable", b"application/json"), body])]
    )
    try:
        with pytest.raises(ErrorStatus) as raised:
            read_all(pool, server.url())
    finally:
        server.close()
    assert (raised.value.status, raised.value.reason) == (503, "Service Unavailable")
    assert json.loads(raised.value.body)["error"]["status"] == "UNAVAILABLE"


def test_a_broken_body_is_a_broken_stream(pool: ConnectionPool) -> None:
    piece = event("a")
    server = ByteServer(
        [Answer([CHUNKED_HEAD + b"%x\r\n%s\r\n" % (len(piece), piece)], close_after=True)]
    )
    seen: list[list[Any]] = []
    try:
        with pytest.raises(StreamBroken):
            for batch in stream_events(
                pool, server.url(), {}, b"{}", heartbeat_seconds=5, silence_seconds=10
            ):
                seen.append(batch)
    finally:
        server.close()
    assert texts(seen) == ["a"]  # what came before the break was passed on


def test_a_pooled_connection_the_server_closed_is_retried_on_a_fresh_one(
    pool: ConnectionPool,
) -> None:
    whole = CHUNKED_HEAD + chunked(event("ok"))
    # The first answer leaves the connection open as far as the client knows, then the
    # server hangs up: the second request finds the pooled connection dead.
    server = ByteServer([Answer([whole], close_after=True), Answer([whole])])
    try:
        assert texts(read_all(pool, server.url())) == ["ok"]
        wait_for(lambda: server.connections == 1)
        time.sleep(0.05)  # the server's FIN reaches the client's idle socket
        assert texts(read_all(pool, server.url())) == ["ok"]
    finally:
        server.close()
    assert server.connections == 2
    assert len(server.requests) == 2  # the dead connection carried no request to the server


def test_connection_close_is_not_pooled(pool: ConnectionPool) -> None:
    head = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    server = ByteServer([Answer([head + chunked(event("x"))], close_after=True)])
    try:
        assert texts(read_all(pool, server.url())) == ["x"]
    finally:
        server.close()
    assert pool.idle_count(("http", "127.0.0.1", server.port)) == 0


def test_a_stream_left_mid_way_closes_its_socket(pool: ConnectionPool) -> None:
    pieces = [CHUNKED_HEAD + chunked(event("first"))[:-5], b"never sent"]
    server = ByteServer([Answer(pieces, pause=30)])
    try:
        stream = stream_events(
            pool, server.url(), {}, b"{}", heartbeat_seconds=5, silence_seconds=60
        )
        assert next(stream) == [{"text": "first"}]
        stream.close()  # the reader stops: the request thread's turn is over
        wait_for(lambda: server.hangups == 1)  # the server saw the hang-up at once
    finally:
        server.close()
    assert pool.idle_count(("http", "127.0.0.1", server.port)) == 0


def test_a_refused_connection_raises_oserror(pool: ConnectionPool) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        read_all(pool, f"http://127.0.0.1:{port}/x")


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` (only: not for 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_server(certificate: tuple[Path, Path], answers: list[Answer]) -> ByteServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return ByteServer(answers, tls=context)


def test_tls_with_a_verified_certificate_and_sni(certificate: tuple[Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    pool = ConnectionPool(ssl_context=trusting, connect_timeout=5)
    whole = CHUNKED_HEAD + chunked(event("secret"))
    server = tls_server(certificate, [Answer([whole]), Answer([whole])])
    try:
        assert texts(read_all(pool, server.url("localhost"))) == ["secret"]
        assert texts(read_all(pool, server.url("localhost"))) == ["secret"]
        assert server.connections == 1  # kept alive over TLS too
        assert f"\r\nHost: localhost:{server.port}\r\n".encode() in server.requests[0]
    finally:
        server.close()
        pool.close()


def test_tls_refuses_an_unverified_certificate(certificate: tuple[Path, Path]) -> None:
    pool = ConnectionPool(connect_timeout=5)  # the system's roots: the certificate is unknown
    server = tls_server(certificate, [Answer([CHUNKED_HEAD + chunked(event("x"))])])
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            read_all(pool, server.url("localhost"))
    finally:
        server.close()
        pool.close()


def test_tls_checks_the_host_name(certificate: tuple[Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    pool = ConnectionPool(ssl_context=trusting, connect_timeout=5)
    server = tls_server(certificate, [Answer([CHUNKED_HEAD + chunked(event("x"))])])
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
            # The same server by its address, which the certificate does not name.
            read_all(pool, server.url("127.0.0.1"))
    finally:
        server.close()
        pool.close()


GENERATED = json.dumps(
    {
        "candidates": [
            {"content": {"parts": [{"text": "A title"}], "role": "model"}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
    }
).encode()


@contextmanager
def pool_trusting_only(certificate: tuple[Path, Path]) -> Iterator[GeminiStreamer]:
    """A streamer whose stream pool alone trusts the self-signed ``certificate``, pointed
    at a TLS server that answers one whole generation ("A title")."""
    answer = sized_head(GENERATED, kind=b"application/json") + GENERATED
    server = tls_server(certificate, [Answer([answer])])
    gemini = streamer(f"https://localhost:{server.port}")
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    gemini.pool = ConnectionPool(ssl_context=trusting, connect_timeout=5)
    try:
        yield gemini
    finally:
        server.close()
        gemini.pool.close()


def whole_generation(gemini: GeminiStreamer) -> str:
    text, _ = gemini.generate(
        model="gemini-2.5-flash",
        system_instruction="Title it.",
        contents=[{"role": "user", "parts": [{"text": "hi"}]}],
    )
    return text


def test_the_sdks_own_requests_trust_what_the_stream_pool_trusts(
    certificate: tuple[Path, Path],
) -> None:
    """google-genai's HTTP clients (whole generations: summaries, titles) use the stream
    pool's one TLS context, not three of their own (each loading the CA bundle): a
    certificate only that context trusts is accepted by them too."""
    with pool_trusting_only(certificate) as gemini:
        assert whole_generation(gemini) == "A title"


def test_with_client_certificates_the_sdk_builds_its_own_tls(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """mTLS is google-auth's to set up: the pool's context is not imposed then (so the
    self-signed certificate only the pool trusts is refused)."""
    monkeypatch.setenv("GOOGLE_API_USE_CLIENT_CERTIFICATE", "true")
    with pool_trusting_only(certificate) as gemini, pytest.raises(ModelError):
        whole_generation(gemini)


# --- the whole path against the Gemini stand-in ------------------------------------------


def streamer(base_url: str, **environment: str) -> GeminiStreamer:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://raven@localhost/raven",
            "CLERK_ISSUER": "https://clerk.example",
            "CLERK_JWKS_URL": "https://clerk.example/jwks",
            "GEMINI_BASE_URL": base_url,
            "GEMINI_API_KEY": "test-key",
            "GEMINI_RETRY_BUDGET_SECONDS": "0",
            **environment,
        }
    )
    return GeminiStreamer(settings)


def run(gemini: GeminiStreamer, text: str, heartbeat: float = 5.0) -> list[Any]:
    return list(
        gemini.stream(
            model="gemini-2.5-flash",
            system_instruction="You are Raven.",
            contents=[{"role": "user", "parts": [{"text": text}]}],
            heartbeat_seconds=heartbeat,
        )
    )


def test_streams_heartbeats_and_keeps_the_connection(
    standin: tuple[StandinServer, str], control: StandinControl
) -> None:
    key = f"paced-{uuid.uuid4().hex[:8]}"
    control.script(chunks=["slow ", "answer"], delay_per_chunk=0.35, match=key)
    gemini = streamer(standin[1])
    host, port = standin[1].removeprefix("http://").split(":")
    try:
        events = run(gemini, key, heartbeat=0.1)
        assert gemini.pool.idle_count(("http", host, int(port))) == 1  # read to its end
        again = run(gemini, f"{key} again")
        assert gemini.pool.idle_count(("http", host, int(port))) == 1  # the same one reused
    finally:
        gemini.pool.close()
    assert "".join(e.text for e in events if isinstance(e, TextChunk)) == "slow answer"
    assert sum(isinstance(e, Heartbeat) for e in events) >= 2
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"
    assert isinstance(again[-1], Finished)
    assert [r["outcome"] for r in control.requests(match=key)] == ["ok", "ok"]


def test_a_stream_closed_mid_way_hangs_up_on_the_model(
    standin: tuple[StandinServer, str], control: StandinControl
) -> None:
    key = f"left-{uuid.uuid4().hex[:8]}"
    control.script(chunks=[f"c{i} " for i in range(50)], delay_per_chunk=0.1, match=key)
    gemini = streamer(standin[1])
    stream = gemini.stream(
        model="gemini-2.5-flash",
        system_instruction="You are Raven.",
        contents=[{"role": "user", "parts": [{"text": key}]}],
        heartbeat_seconds=5,
    )
    assert isinstance(next(stream), TextChunk)
    stream.close()  # the client left: the turn closes the model's stream
    wait_for(lambda: control.requests(match=key)[0]["outcome"] == "client_gone", timeout=5)
    assert control.health()["active_streams"] == 0


def test_a_silent_model_times_out(
    standin: tuple[StandinServer, str], control: StandinControl
) -> None:
    key = f"silent-{uuid.uuid4().hex[:8]}"
    control.script(hang=5, match=key)
    gemini = streamer(standin[1], MODEL_TIMEOUT_SECONDS="1")
    seen: list[Any] = []
    with pytest.raises(ModelError) as raised:
        for item in gemini.stream(
            model="gemini-2.5-flash",
            system_instruction="You are Raven.",
            contents=[{"role": "user", "parts": [{"text": key}]}],
            heartbeat_seconds=0.3,
        ):
            seen.append(item)
    assert (raised.value.kind, raised.value.cause) == ("unavailable", "timeout")
    assert seen and all(isinstance(item, Heartbeat) for item in seen)
    wait_for(lambda: control.requests(match=key)[0]["outcome"] == "client_gone")


@pytest.mark.parametrize(
    ("script", "kind", "cause"),
    [
        ({"http_error": {"status": 429, "message": "slow down"}}, "busy", "429"),
        ({"http_error": {"status": 503, "message": "down"}}, "unavailable", "503"),
        ({"http_error": {"status": 400, "message": "no"}}, "refused", "400"),
        (
            {"reply": "one two three", "stream_error": {"after_chunks": 1, "status": 500}},
            "unavailable",
            "500",
        ),
        ({"reply": "one two three", "fail_after_chunks": 1}, "unavailable", "StreamBroken"),
    ],
    ids=["429", "503", "400", "error event mid-stream", "cut mid-stream"],
)
def test_failures_become_the_right_model_error(
    standin: tuple[StandinServer, str],
    control: StandinControl,
    script: dict[str, Any],
    kind: str,
    cause: str,
) -> None:
    key = f"fail-{uuid.uuid4().hex[:8]}"
    control.script(**script, match=key)
    gemini = streamer(standin[1])
    with pytest.raises(ModelError) as raised:
        run(gemini, key)
    assert (raised.value.kind, raised.value.cause) == (kind, cause)
    assert isinstance(raised.value.__cause__, errors.APIError) == (cause != "StreamBroken")


def test_a_wrong_api_key_is_refused_as_google_refuses_it() -> None:
    from dev.gemini_standin import start_standin

    server, base_url = start_standin(port=0, api_key="the-right-key")
    try:
        with pytest.raises(ModelError) as raised:
            run(streamer(base_url), "hello")
        assert (raised.value.kind, raised.value.cause) == ("refused", "400")
        assert isinstance(raised.value.__cause__, errors.ClientError)
        assert "API key not valid" in str(raised.value.__cause__)
        events = run(streamer(base_url, GEMINI_API_KEY="the-right-key"), "hello")
        assert isinstance(events[-1], Finished)
    finally:
        server.stop()
