"""The local uploads bucket's front door: V4 signed-URL checks the storage emulator skips.

``gcp-storage-emulator`` serves any request, signed or not. Cloud Storage does not: the uploads
bucket is private, so a browser gets in only with a V4 signed URL, and only for exactly the
request that was signed. Without the same checks locally, a URL that production refuses (a
missing signed header, another content type, an expired URL) would work in ``make dev`` and
in the tests. So the router passes every request for ``/<bucket>/<object>`` through
:meth:`SignatureFront.refusal` first, which follows Google's documented algorithm
(https://cloud.google.com/storage/docs/authentication/signatures, .../canonical-requests and
https://cloud.google.com/storage/docs/access-control/signing-urls-manually):

1. a request with no signature is an anonymous caller: refused, as for any private bucket;
2. ``X-Goog-Algorithm`` is ``GOOG4-RSA-SHA256``; ``X-Goog-Credential``, ``X-Goog-Date``,
   ``X-Goog-Expires`` (1 s to 7 days), ``X-Goog-SignedHeaders`` (lowercase, sorted, with
   ``host``) and ``X-Goog-Signature`` (hex) are present and well formed, the credential's
   scope is ``<YYYYMMDD of X-Goog-Date>/<location>/storage/goog4_request``;
3. not before ``X-Goog-Date`` (beyond :data:`CLOCK_SKEW_SECONDS`) nor after its expiry;
4. every signed header is present in the request;
5. the canonical request (method, path, canonical query without the signature, canonical
   signed headers with the values this request carries, ``UNSIGNED-PAYLOAD``) and the
   string to sign are rebuilt, and the signature must verify with the public half of the
   local signing key (``SIGNER_KEY_FILE``). So the method, object, expiry, host, content
   type and any other signed header must be exactly what was signed;
6. a header the signature does not cover but must (any ``x-goog-*`` header, ``Content-Type``,
   ``Content-MD5``) is refused: "requests made with the created URL must not contain
   Content-MD5, Content-Type, or any header starting with x-goog-" unless signed (Google's
   Cloud Storage .NET reference, ``UrlSigner.RequestTemplate``);
7. a signed ``x-goog-content-length-range: min,max`` must contain the body's length.

Refusals are Cloud Storage's XML API errors: the status and ``<Error><Code>`` of the XML API
(https://cloud.google.com/storage/docs/xml-api/reference-status), with the messages GCS is
seen answering for each (quoted in public bug reports, cited at each constant below).
The functions are not behind this front: they call the emulator directly with their own
credentials, as deployed functions call Cloud Storage's JSON API.

Local use only; nothing here is deployed.
"""

from __future__ import annotations

import binascii
import datetime
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.wrappers import Response

ALGORITHM = "GOOG4-RSA-SHA256"
MAX_EXPIRES_SECONDS = 604_800  # seven days, the V4 maximum
# How far X-Goog-Date may lie in the future (the signer's clock ahead of ours).
CLOCK_SKEW_SECONDS = 900
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
SIGNED_HEADER_NAMES = re.compile(r"[a-z0-9-]+(?:;[a-z0-9-]+)*")
CONTENT_LENGTH_RANGE = "x-goog-content-length-range"
# Headers a request may carry only when the URL signed them (step 6 of the module docstring).
MUST_BE_SIGNED = ("content-type", "content-md5")
REQUIRED_PARAMETERS = (
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
)

# Messages as Cloud Storage answers them:
# - 403 SignatureDoesNotMatch: googleapis/nodejs-storage#244, google-cloud-node#2689;
# - 400 ExpiredToken: fog/fog-google#264; the 400 status: floci-io/floci-gcp#33;
# - 400 MalformedSecurityHeader, "Header was included in signedheaders, but not in the
#   request.": nocodb/nocodb#9858;
# - 403 AccessDenied for anonymous callers of a private bucket ("Anonymous caller does not
#   have storage.objects.get access ..."): the JSON/XML status pages' 403 examples;
# - 400 EntityTooSmall / EntityTooLarge: the XML API status page's 400 list; a body outside
#   x-goog-content-length-range "fails and a 400 Bad Request code is returned" (XML API
#   headers reference, x-goog-content-length-range).
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your Google secret key and signing method."
)
HEADER_NOT_SENT = (
    "Your request has a malformed header. Header was included in signedheaders, "
    "but not in the request."
)


@dataclass(frozen=True)
class StorageError:
    """One XML API error: the status and the ``<Error>`` document's elements."""

    status: int
    code: str
    message: str
    details: dict[str, str]

    def response(self) -> Response:
        elements = "".join(
            f"<{name}>{escape(value)}</{name}>"
            for name, value in {"Code": self.code, "Message": self.message, **self.details}.items()
        )
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error>{elements}</Error>"
        return Response(body, status=self.status, content_type="application/xml; charset=UTF-8")


def malformed(detail: str, parameter: str) -> StorageError:
    return StorageError(
        400,
        "MalformedSecurityHeader",
        "Invalid argument.",
        {"Details": detail, "ParameterName": parameter},
    )


def anonymous(method: str, bucket: str, object_name: str) -> StorageError:
    permission = "storage.objects.create" if method in {"PUT", "POST"} else "storage.objects.get"
    return StorageError(
        403,
        "AccessDenied",
        "Access denied.",
        {
            "Details": f"Anonymous caller does not have {permission} access to the Google "
            f"Cloud Storage object {bucket}/{object_name}. Permission '{permission}' denied "
            "on resource (or it may not exist)."
        },
    )


def canonical_header_value(value: str) -> str:
    """A header value as the canonical request has it: trimmed, inner whitespace folded."""
    return re.sub(r"\s+", " ", value.strip())


def canonical_query(parameters: list[tuple[str, str]]) -> str:
    """Every parameter but the signature, each name and value percent-encoded, sorted."""
    return "&".join(
        sorted(
            f"{quote(name, safe='~')}={quote(value, safe='~')}"
            for name, value in parameters
            if name != "X-Goog-Signature"
        )
    )


def load_public_key(key_file: str | Path) -> tuple[rsa.RSAPublicKey, str]:
    """The public half of a service-account key JSON, and the account's email."""
    document = json.loads(Path(key_file).read_text())
    key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{key_file} does not hold an RSA key")
    return key.public_key(), str(document["client_email"])


class SignatureFront:
    """Checks requests for one private bucket the way Cloud Storage checks V4 signed URLs."""

    def __init__(
        self,
        bucket: str,
        public_key: rsa.RSAPublicKey,
        signer_email: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self._key = public_key
        self._email = signer_email
        self._clock = clock

    @classmethod
    def from_key_file(cls, bucket: str, key_file: str | Path) -> SignatureFront:
        key, email = load_public_key(key_file)
        return cls(bucket, key, email)

    def refusal(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, str],
        body_length: int,
    ) -> StorageError | None:
        """Why Cloud Storage would refuse this request, or None when it would serve it.

        Args:
            method: the HTTP method.
            raw_path: the path as sent (percent-encoded), ``/<bucket>/<object>``.
            raw_query: the query string as sent, without the ``?``.
            headers: the request's headers (any case).
            body_length: the body's length in bytes.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        parameters = parse_qsl(raw_query, keep_blank_values=True)
        query = dict(parameters)
        object_name = unquote(raw_path).split("/", 2)[-1]
        if not any(name.lower().startswith("x-goog-") for name in query):
            return anonymous(method, self.bucket, object_name)
        for name in REQUIRED_PARAMETERS:
            if not query.get(name):
                return malformed(f"Missing required parameter {name}.", name)
        if query["X-Goog-Algorithm"] != ALGORITHM:
            return malformed(f"Unsupported algorithm; use {ALGORITHM}.", "X-Goog-Algorithm")

        signed_at_text = query["X-Goog-Date"]
        try:
            signed_at = (
                datetime.datetime.strptime(signed_at_text, DATE_FORMAT)
                .replace(tzinfo=datetime.UTC)
                .timestamp()
            )
        except ValueError:
            return malformed("X-Goog-Date is not of the form YYYYMMDDTHHMMSSZ.", "X-Goog-Date")
        expires_text = query["X-Goog-Expires"]
        if not expires_text.isdigit() or not 1 <= int(expires_text) <= MAX_EXPIRES_SECONDS:
            return malformed(
                f"X-Goog-Expires must be a whole number of seconds, 1 to {MAX_EXPIRES_SECONDS}.",
                "X-Goog-Expires",
            )
        email, _, scope = query["X-Goog-Credential"].partition("/")
        scope_parts = scope.split("/")
        if (
            not email
            or len(scope_parts) != 4
            or scope_parts[0] != signed_at_text[:8]
            or scope_parts[2:] != ["storage", "goog4_request"]
        ):
            return malformed(
                "X-Goog-Credential must be <email>/<YYYYMMDD of X-Goog-Date>/<location>/"
                "storage/goog4_request.",
                "X-Goog-Credential",
            )

        now = self._clock()
        if signed_at > now + CLOCK_SKEW_SECONDS:
            return malformed("X-Goog-Date is in the future: the request is not yet valid.",
                             "X-Goog-Date")  # fmt: skip
        if now > signed_at + int(expires_text):
            return StorageError(
                400,
                "ExpiredToken",
                "The provided token has expired.",
                {"Details": f"Request has expired: {signed_at_text}"},
            )

        signed_headers = query["X-Goog-SignedHeaders"]
        names = signed_headers.split(";")
        if (
            not SIGNED_HEADER_NAMES.fullmatch(signed_headers)
            or names != sorted(set(names))
            or "host" not in names
        ):
            return malformed(
                "X-Goog-SignedHeaders must be the lowercase names of the signed headers, "
                "sorted, separated by ';', including host.",
                "X-Goog-SignedHeaders",
            )
        for name in names:
            if name not in lowered:
                return malformed(HEADER_NOT_SENT, name)
        try:
            signature = binascii.unhexlify(query["X-Goog-Signature"])
        except (binascii.Error, ValueError):
            return malformed("The signature is not hex encoded.", "X-Goog-Signature")

        canonical_request = "\n".join(
            [
                method,
                quote(unquote(raw_path), safe="/~"),
                canonical_query(parameters),
                "".join(f"{name}:{canonical_header_value(lowered[name])}\n" for name in names),
                signed_headers,
                "UNSIGNED-PAYLOAD",
            ]
        )
        string_to_sign = "\n".join(
            [
                ALGORITHM,
                signed_at_text,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        try:
            if email != self._email:
                raise InvalidSignature
            self._key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(),
                             hashes.SHA256())  # fmt: skip
        except InvalidSignature:
            return StorageError(
                403,
                "SignatureDoesNotMatch",
                "Access denied.",
                {
                    "Details": SIGNATURE_MISMATCH,
                    "StringToSign": string_to_sign,
                    "CanonicalRequest": canonical_request,
                },
            )

        unsigned = sorted(
            name
            for name in lowered
            if (name.startswith("x-goog-") or name in MUST_BE_SIGNED) and name not in names
        )
        if unsigned:
            return StorageError(
                403,
                "SignatureDoesNotMatch",
                "Access denied.",
                {
                    "Details": f"{SIGNATURE_MISMATCH} The request carries headers the "
                    f"signature does not cover: {', '.join(unsigned)}.",
                    "StringToSign": string_to_sign,
                    "CanonicalRequest": canonical_request,
                },
            )

        if CONTENT_LENGTH_RANGE in names:
            bounds = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", lowered[CONTENT_LENGTH_RANGE])
            if bounds is None:
                return malformed(
                    "x-goog-content-length-range must be <min>,<max>.", CONTENT_LENGTH_RANGE
                )
            low, high = int(bounds[1]), int(bounds[2])
            if body_length < low:
                return StorageError(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum object size specified "
                    "in your Policy Document.",
                    {"Details": f"Content-length is smaller than lower bound on range ({low})."},
                )
            if body_length > high:
                return StorageError(
                    400,
                    "EntityTooLarge",
                    "Your proposed upload is larger than the maximum object size specified "
                    "in your Policy Document.",
                    {"Details": f"Content-length exceeds upper bound on range ({high})."},
                )
        return None
