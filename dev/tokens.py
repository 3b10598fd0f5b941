"""A local stand-in for Clerk's signing key: RS256 tokens and the JWKS that verifies them.

The functions verify local tokens exactly as they verify Clerk's: they fetch this key's JWKS
over HTTP from ``CLERK_JWKS_URL`` (served by the local router) through
:class:`shared.auth.JwksKeys`. Local use only; nothing here is deployed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_AUDIENCE_ORIGIN = "http://localhost:3000"


class LocalSigner:
    """An RSA key kept in a file (so tokens survive a restart) that signs Clerk-shaped JWTs."""

    def __init__(self, key_path: Path, issuer: str) -> None:
        if key_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            self._key = loaded
        else:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key_path.write_bytes(
                self._key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        self.kid = "local-" + hashlib.sha256(public_jwk["n"].encode()).hexdigest()[:16]
        self._jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}
        self.issuer = issuer

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._jwk]}

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(
        self,
        sub: str,
        *,
        lifetime_seconds: int = 3600,
        origin: str = DEFAULT_AUDIENCE_ORIGIN,
        extra_claims: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token shaped like a Clerk session token (plus any template claims given)."""
        now = int(time.time())
        claims = {
            "sub": sub,
            "iss": self.issuer,
            "azp": origin,
            "sid": "sess_" + uuid.uuid4().hex[:24],
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime_seconds,
            **(extra_claims or {}),
        }
        return jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})}
        )
