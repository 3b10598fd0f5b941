"""Token verification: every way a token can be wrong is a 401 with a detail, never a 500.

The HTTP tests send tokens to the running stack; the JWKS cache tests run the real
:class:`shared.auth.JwksKeys` against a local JWKS server that counts its fetches.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dev.stack import LocalStack
from dev.tokens import LocalSigner
from shared import auth
from shared.auth import JwksKeys, StaticKey, TokenVerifier
from shared.errors import ServiceUnavailable, Unauthorized
from shared.settings import SettingsError
from tests.conftest import ApiClient, assert_error


def call_with(stack: LocalStack, token: str | None, header: str | None = None) -> Any:
    client = ApiClient(stack.base_url)
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.get("/api/chats", headers=headers)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_valid_token_is_accepted(stack: LocalStack) -> None:
    assert call_with(stack, stack.signer.token("user_valid")).status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc"],
)
def test_missing_or_misshapen_header(stack: LocalStack, header: str | None) -> None:
    response = call_with(stack, None, header)
    body = assert_error(response, 401, "missing_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert body["detail"]


def test_malformed_token(stack: LocalStack) -> None:
    for token in ("abc", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30"):
        response = call_with(stack, token)
        assert_error(response, 401, "invalid_token")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_token(stack: LocalStack) -> None:
    token = stack.signer.token("user_expired", lifetime_seconds=-60)
    assert_error(call_with(stack, token), 401, "token_expired")


def test_expiry_within_leeway_is_accepted(stack: LocalStack) -> None:
    token = stack.signer.token("user_leeway", lifetime_seconds=-2)  # leeway is 5 s
    assert call_with(stack, token).status_code == 200


def test_token_not_valid_yet(stack: LocalStack) -> None:
    token = stack.signer.token("user_future", extra_claims={"nbf": int(time.time()) + 600})
    assert_error(call_with(stack, token), 401, "invalid_token")


def test_alg_none_is_refused(stack: LocalStack) -> None:
    claims = {"sub": "user_none", "exp": int(time.time()) + 60, "iss": stack.signer.issuer}
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': stack.signer.kid})}.{b64(claims)}."
    assert_error(call_with(stack, token), 401, "invalid_token")


def test_hs256_signed_with_the_public_key_is_refused(stack: LocalStack) -> None:
    # The classic algorithm-confusion attack: HMAC keyed with the server's public key.
    claims = {"sub": "user_hs", "exp": int(time.time()) + 60, "iss": stack.signer.issuer}
    header = {"alg": "HS256", "typ": "JWT", "kid": stack.signer.kid}
    signing_input = f"{b64(header)}.{b64(claims)}".encode()
    import hashlib
    import hmac

    signature = hmac.new(stack.signer.public_pem().encode(), signing_input, hashlib.sha256).digest()
    token = signing_input.decode() + "." + base64.urlsafe_b64encode(signature).decode().rstrip("=")
    assert_error(call_with(stack, token), 401, "invalid_token")


def test_token_signed_by_another_key_is_refused(stack: LocalStack, tmp_path: Path) -> None:
    impostor = LocalSigner(tmp_path / "other.pem", issuer=stack.signer.issuer)
    # Same kid as the real key, so only the signature can tell them apart.
    forged = impostor.token("user_forged", headers={"kid": stack.signer.kid})
    assert_error(call_with(stack, forged), 401, "invalid_token")
    unknown_kid = impostor.token("user_forged")
    assert_error(call_with(stack, unknown_kid), 401, "invalid_token")


def test_wrong_issuer_is_refused(stack: LocalStack) -> None:
    token = stack.signer.token("user_iss", extra_claims={"iss": "https://evil.example.com"})
    assert_error(call_with(stack, token), 401, "invalid_token")


def test_azp_must_be_an_allowed_origin(stack: LocalStack) -> None:
    assert call_with(stack, stack.signer.token("user_azp", origin="https://app.example.com")).ok
    token = stack.signer.token("user_azp", origin="https://evil.example.com")
    body = assert_error(call_with(stack, token), 401, "invalid_token")
    assert "origin" in body["detail"]


def test_token_without_sub_is_refused(stack: LocalStack) -> None:
    token = stack.signer.token("", extra_claims={})
    assert_error(call_with(stack, token), 401, "invalid_token")


def test_tampered_claims_are_refused(stack: LocalStack) -> None:
    header, _, signature = stack.signer.token("user_honest").split(".")
    claims = {"sub": "user_admin", "exp": int(time.time()) + 60, "iss": stack.signer.issuer}
    assert_error(call_with(stack, f"{header}.{b64(claims)}.{signature}"), 401, "invalid_token")


# --- key sources -------------------------------------------------------------------------------


class JwksServer:
    """A local JWKS endpoint that counts fetches and can rotate keys or go down."""

    def __init__(self) -> None:
        self.fetches = 0
        self.document: dict[str, Any] = {"keys": []}
        self.down = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                if owner.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, *signers: LocalSigner) -> None:
        self.document = {"keys": [key for signer in signers for key in signer.jwks()["keys"]]}


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.server.shutdown()


def verifier_for(keys: Any, issuer: str = "https://clerk.test") -> TokenVerifier:
    return TokenVerifier(keys, issuer=issuer, allowed_origins=["*"], leeway_seconds=5)


def test_jwks_is_cached(jwks_server: JwksServer, tmp_path: Path) -> None:
    signer = LocalSigner(tmp_path / "k.pem", issuer="https://clerk.test")
    jwks_server.publish(signer)
    verifier = verifier_for(JwksKeys(jwks_server.url))
    for n in range(5):
        assert verifier.verify(signer.token(f"user_{n}")).id == f"user_{n}"
    assert jwks_server.fetches == 1


def test_unknown_kid_refetches_once_then_is_rate_limited(
    jwks_server: JwksServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "JWKS_MIN_REFETCH_SECONDS", 0.5)
    old = LocalSigner(tmp_path / "old.pem", issuer="https://clerk.test")
    new = LocalSigner(tmp_path / "new.pem", issuer="https://clerk.test")
    jwks_server.publish(old)
    verifier = verifier_for(JwksKeys(jwks_server.url))
    verifier.verify(old.token("user_a"))
    assert jwks_server.fetches == 1

    # Tokens with made-up kids inside the refetch interval cost no fetch at all.
    for _ in range(10):
        with pytest.raises(Unauthorized):
            verifier.verify(new.token("user_b"))
    assert jwks_server.fetches == 1

    # Clerk rotates its key: after the interval, one unknown kid triggers one refetch.
    jwks_server.publish(old, new)
    time.sleep(0.6)
    assert verifier.verify(new.token("user_b")).id == "user_b"
    assert jwks_server.fetches == 2
    assert verifier.verify(old.token("user_a")).id == "user_a"
    assert jwks_server.fetches == 2


def test_jwks_down_at_first_use_is_503(jwks_server: JwksServer, tmp_path: Path) -> None:
    signer = LocalSigner(tmp_path / "k.pem", issuer="https://clerk.test")
    jwks_server.down = True
    with pytest.raises(ServiceUnavailable):
        verifier_for(JwksKeys(jwks_server.url)).verify(signer.token("user_a"))


def test_jwks_down_later_keeps_known_keys(
    jwks_server: JwksServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "JWKS_MIN_REFETCH_SECONDS", 0.0)
    signer = LocalSigner(tmp_path / "k.pem", issuer="https://clerk.test")
    other = LocalSigner(tmp_path / "o.pem", issuer="https://clerk.test")
    jwks_server.publish(signer)
    verifier = verifier_for(JwksKeys(jwks_server.url))
    verifier.verify(signer.token("user_a"))
    jwks_server.down = True
    with pytest.raises(Unauthorized):
        verifier.verify(other.token("user_b"))  # refetch fails, unknown kid stays unknown
    assert verifier.verify(signer.token("user_a")).id == "user_a"


def test_static_pem_key_verifies_without_network(tmp_path: Path) -> None:
    signer = LocalSigner(tmp_path / "k.pem", issuer="https://clerk.test")
    escaped = signer.public_pem().replace("\n", "\\n")  # as a one-line env var carries it
    verifier = verifier_for(StaticKey(escaped))
    user = verifier.verify(signer.token("user_pem", extra_claims={"email": "p@example.com"}))
    assert (user.id, user.email) == ("user_pem", "p@example.com")


def test_static_key_must_be_an_rsa_public_key() -> None:
    with pytest.raises(SettingsError, match="CLERK_JWT_KEY"):
        StaticKey("not a pem")
    ec_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(SettingsError, match="CLERK_JWT_KEY"):
        StaticKey(private_pem)


def test_template_token_claims_fill_the_profile(tmp_path: Path) -> None:
    signer = LocalSigner(tmp_path / "k.pem", issuer="https://clerk.test")
    token = signer.token(
        "user_tpl",
        extra_claims={"email": "t@example.com", "given_name": "Tia", "family_name": "Lo"},
    )
    user = verifier_for(StaticKey(signer.public_pem())).verify(token)
    assert (user.email, user.first_name, user.last_name, user.display_name) == (
        "t@example.com",
        "Tia",
        "Lo",
        "Tia Lo",
    )
