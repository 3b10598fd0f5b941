"""POST /api/upload-url through HTTP, the signed PUT through the router to the storage emulator,
and what a signed URL binds (checked on its signature here, and by the router's strict front:
tests/test_storage_front.py)."""

from __future__ import annotations

import binascii
import datetime
import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dev.metadata_standin import LOCAL_ACCESS_TOKEN, LOCAL_SERVICE_ACCOUNT
from dev.stack import LocalStack
from shared.db import Database
from shared.media import resolve_media
from shared.object_names import incoming_prefix
from shared.storage import MediaStorage
from tests.conftest import FRONTEND_ORIGIN, REPO_ROOT, ApiClient, assert_error, upload_file
from tests.helpers import PNG, add_media_message

# --- checking a V4 signature ourselves -------------------------------------------------------


def signer_public_key(stack: LocalStack) -> rsa.RSAPublicKey:
    document = json.loads(Path(stack.env["SIGNER_KEY_FILE"]).read_text())
    key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


def v4_string_to_sign(method: str, url: str, headers: dict[str, str]) -> tuple[str, bytes]:
    """Google's V4 string-to-sign for a request, rebuilt from the spec, and the signature.

    https://cloud.google.com/storage/docs/authentication/canonical-requests
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = binascii.unhexlify(query.pop("X-Goog-Signature"))
    canonical_query = "&".join(
        sorted(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in query.items())
    )
    all_headers = {"host": parts.netloc, **{k.lower(): v.strip() for k, v in headers.items()}}
    signed = query["X-Goog-SignedHeaders"].split(";")
    canonical_headers = "".join(f"{name}:{all_headers[name]}\n" for name in signed)
    canonical_request = "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            canonical_headers,
            query["X-Goog-SignedHeaders"],
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            query["X-Goog-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    return string_to_sign, signature


def signature_valid(key: rsa.RSAPublicKey, method: str, url: str, headers: dict[str, str]) -> bool:
    string_to_sign, signature = v4_string_to_sign(method, url, headers)
    try:
        key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def ask(client: ApiClient, **body: Any) -> requests.Response:
    return client.post("/api/upload-url", json=body)


# --- the answer ------------------------------------------------------------------------------


def test_answer_has_everything_the_upload_needs(
    stack: LocalStack, alice: ApiClient, db: Database
) -> None:
    before = time.time()
    response = ask(alice, filename="Holiday photo.png", contentType="image/png", size=len(PNG))
    assert response.status_code == 200, response.text
    answer = response.json()
    bucket = stack.env["GCS_BUCKET_NAME"]
    upload_id = answer["upload_id"]
    name = f"{incoming_prefix(alice.user_id or '')}{upload_id}/Holiday photo.png"
    assert answer["object_name"] == name
    assert answer["gs_uri"] == f"gs://{bucket}/{name}"
    assert answer["gcs_url"] == f"{stack.base_url}/{bucket}/{quote(name)}"
    assert answer["url"].startswith(answer["gcs_url"] + "?X-Goog-Algorithm=GOOG4-RSA-SHA256")
    assert answer["method"] == "PUT"
    # Only what the existing frontend sends: the size is a pre-check, not a PUT header.
    assert answer["headers"] == {"Content-Type": "image/png"}
    assert answer["max_bytes"] == 20 * 1024 * 1024
    assert before + 900 - 5 <= answer["expires_at"] <= time.time() + 900 + 1
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN

    row = db.fetch_one(
        "SELECT user_id, bucket, object_name, content_type, declared_size, size, state "
        "FROM uploads WHERE id = :id",
        id=uuid.UUID(upload_id),
    )
    assert row == {
        "user_id": alice.user_id,
        "bucket": bucket,
        "object_name": name,
        "content_type": "image/png",
        "declared_size": len(PNG),
        "size": None,
        "state": "pending",
    }


def test_signed_url_binds_object_method_type_and_expiry_only(
    stack: LocalStack, alice: ApiClient
) -> None:
    answer = ask(alice, filename="a.png", contentType="image/png", size=10).json()
    url, headers = answer["url"], answer["headers"]
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["X-Goog-SignedHeaders"] == "content-type;host"
    assert query["X-Goog-Expires"] == "900"  # UPLOAD_URL_TTL_SECONDS
    assert query["X-Goog-Credential"].startswith(LOCAL_SERVICE_ACCOUNT + "/")
    signed_at = datetime.datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ")
    signed_epoch = signed_at.replace(tzinfo=datetime.UTC).timestamp()
    assert abs(signed_epoch - time.time()) < 30
    assert answer["expires_at"] == signed_epoch + 900

    key = signer_public_key(stack)
    assert signature_valid(key, "PUT", url, headers)
    # Everything the signature covers: change any of it and it no longer verifies.
    assert not signature_valid(key, "GET", url, headers)
    assert not signature_valid(key, "POST", url, headers)
    assert not signature_valid(key, "PUT", url, {**headers, "Content-Type": "text/html"})
    assert not signature_valid(key, "PUT", url.replace("/a.png?", "/b.png?"), headers)
    assert not signature_valid(key, "PUT", url.replace("localhost", "127.0.0.1"), headers)
    assert not signature_valid(
        key, "PUT", url.replace("X-Goog-Expires=900", "X-Goog-Expires=9000"), headers
    )


def test_bind_size_is_an_opt_in_that_signs_the_exact_length(
    stack: LocalStack, alice: ApiClient
) -> None:
    answer = ask(alice, filename="a.png", contentType="image/png", size=123, bindSize=True).json()
    assert answer["headers"] == {
        "Content-Type": "image/png",
        "x-goog-content-length-range": "123,123",
    }
    query = dict(parse_qsl(urlsplit(answer["url"]).query))
    assert query["X-Goog-SignedHeaders"] == "content-type;host;x-goog-content-length-range"
    key = signer_public_key(stack)
    assert signature_valid(key, "PUT", answer["url"], answer["headers"])
    other_range = {**answer["headers"], "x-goog-content-length-range": "0,999999999"}
    assert not signature_valid(key, "PUT", answer["url"], other_range)
    # bindSize without a size to bind is refused; bindSize false is the plain flow.
    body = assert_error(ask(alice, filename="a.png", contentType="image/png", bindSize=True), 422)
    assert "bindSize" in body["detail"] and "size" in body["detail"]
    plain = ask(alice, filename="a.png", contentType="image/png", size=5, bindSize=False).json()
    assert plain["headers"] == {"Content-Type": "image/png"}


def test_put_through_the_router_stores_the_object(
    stack: LocalStack, alice: ApiClient, storage_client: Any
) -> None:
    answer = ask(alice, filename="photo.png", contentType="image/png", size=len(PNG)).json()
    # The browser's preflight, then the PUT with exactly the returned headers.
    preflight = requests.options(
        answer["url"],
        headers={
            "Origin": FRONTEND_ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    allowed_headers = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert all(header.lower() in allowed_headers for header in answer["headers"])
    refused = requests.options(
        answer["url"],
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "PUT"},
        timeout=10,
    )
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers

    # Exactly the existing frontend's PUT: the file and its Content-Type, nothing else.
    put = requests.put(
        answer["url"],
        data=PNG,
        headers={"Content-Type": "image/png", "Origin": FRONTEND_ORIGIN},
        timeout=10,
    )
    assert put.status_code == 200, put.text
    assert put.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    blob = storage_client.bucket(stack.env["GCS_BUCKET_NAME"]).get_blob(answer["object_name"])
    assert blob is not None
    assert blob.content_type == "image/png"
    assert blob.download_as_bytes() == PNG


def test_unicode_and_hostile_file_names_become_safe_readable_objects(
    alice: ApiClient, storage_client: Any, media_store: MediaStorage
) -> None:
    cases = {
        "../../etc/passwd.png": "passwd.png",
        "C:\\fakepath\\résumé.pdf": "résumé.pdf",
        "e\u0301te\u0301 \u202eplh.jpg": "été plh.jpg",  # NFC, bidi override removed
        "写真 2024.png": "写真 2024.png",
        "..": "file",
    }
    for filename, expected in cases.items():
        content_type = "application/pdf" if filename.endswith(".pdf") else "image/png"
        answer = upload_file(alice, b"data", filename, content_type)
        assert answer["object_name"].endswith("/" + expected), (filename, answer["object_name"])
        assert answer["object_name"].startswith(incoming_prefix(alice.user_id or ""))
        blob = storage_client.bucket(media_store.bucket_name).get_blob(answer["object_name"])
        assert blob is not None and blob.download_as_bytes() == b"data"
    long_name = "ü" * 600 + ".jpeg"
    answer = upload_file(alice, b"x", long_name, "image/jpeg")
    assert len(answer["object_name"].encode()) <= 1024
    assert answer["object_name"].endswith(".jpeg")


# --- refusals --------------------------------------------------------------------------------


def test_types_outside_the_allowlist_are_refused_naming_what_is_allowed(
    alice: ApiClient, db: Database
) -> None:
    before = db.fetch_one("SELECT count(*) AS n FROM uploads")
    for content_type in ("application/x-msdownload", "text/html", "image/svg+xml", "video/x-flv"):
        body = assert_error(
            ask(alice, filename="f", contentType=content_type), 422, "unsupported_content_type"
        )
        assert content_type in body["detail"]
        assert "image/png" in body["detail"] and "application/pdf" in body["detail"]
    assert db.fetch_one("SELECT count(*) AS n FROM uploads") == before  # nothing recorded


def test_allowed_types_match_case_insensitively_and_sign_the_type_as_sent(
    alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    # The frontend PUTs with the very string it declared (file.type): that is what is signed,
    # while the upload's recorded type is the essence the first-use checks compare.
    declared = "Text/Plain; charset=UTF-8"
    answer = upload_file(alice, "héllo".encode(), "n.txt", declared)
    assert answer["headers"] == {"Content-Type": declared}
    assert alice.user_id is not None
    record = resolve_media(db, media_store, alice.user_id, answer["gcs_url"], None)
    assert record.mime_type == "text/plain"
    for content_type in ("image/heic", "video/quicktime", "audio/mpeg", "audio/x-m4a"):
        assert ask(alice, filename="f", contentType=content_type).status_code == 200


def test_a_declared_size_over_the_limit_is_refused_before_signing(alice: ApiClient) -> None:
    limit = 20 * 1024 * 1024
    body = assert_error(
        ask(alice, filename="big.mp4", contentType="video/mp4", size=limit + 1),
        413,
        "file_too_large",
    )
    assert "20 MB" in body["detail"] and str(limit) in body["detail"]
    assert ask(alice, filename="ok.mp4", contentType="video/mp4", size=limit).status_code == 200


def test_malformed_requests_are_refused(alice: ApiClient, anonymous: ApiClient) -> None:
    assert_error(ask(alice, contentType="image/png"), 422, "validation_error")
    assert_error(ask(alice, filename="", contentType="image/png"), 422, "validation_error")
    assert_error(ask(alice, filename="a", contentType="image/png", size=-1), 422)
    assert_error(ask(alice, filename="a" * 1025, contentType="image/png"), 422)
    assert_error(
        alice.post("/api/upload-url", data="{", headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error(ask(anonymous, filename="a.png", contentType="image/png"), 401, "missing_token")


def test_the_user_id_in_the_body_is_ignored(alice: ApiClient, bob: ApiClient) -> None:
    answer = ask(alice, filename="a.png", contentType="image/png", user_id=bob.user_id).json()
    assert answer["object_name"].startswith(incoming_prefix(alice.user_id or ""))


# --- the whole flow ---------------------------------------------------------------------------


def test_upload_reference_and_history_with_a_working_media_url(
    stack: LocalStack, alice: ApiClient, db: Database, media_store: MediaStorage
) -> None:
    first = upload_file(alice, PNG, "first.png", "image/png")
    second = upload_file(alice, b"%PDF-1.4 tiny", "notes.pdf", "application/pdf", bind_size=True)
    assert alice.user_id is not None
    records = [
        resolve_media(db, media_store, alice.user_id, first["gcs_url"], "image/png"),
        resolve_media(db, media_store, alice.user_id, second["gs_uri"], None),
    ]
    assert [r.type for r in records] == ["image", "document"]
    chat = alice.create_chat("with media")
    add_media_message(db, chat["chatId"], "What are these?", [r.part() for r in records])

    messages = alice.get(f"/api/chats/{chat['chatId']}").json()
    message = messages[-1]
    assert message["content"] == "What are these?"
    assert message["media_type"] == "image/png"
    media_parts = [part for part in message["parts"] if part["type"] != "text"]
    assert [part["mime_type"] for part in media_parts] == ["image/png", "application/pdf"]
    assert message["media_url"] == media_parts[0]["media_url"]
    for part, data in zip(media_parts, [PNG, b"%PDF-1.4 tiny"], strict=True):
        url = part["media_url"]
        assert url.startswith(f"{stack.base_url}/{media_store.bucket_name}/uploads/")
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["X-Goog-Expires"] == "3600"  # MEDIA_URL_TTL_SECONDS
        assert signature_valid(signer_public_key(stack), "GET", url, {})
        fetched = requests.get(url, headers={"Origin": FRONTEND_ORIGIN}, timeout=10)
        assert fetched.status_code == 200 and fetched.content == data
        assert fetched.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
        assert fetched.headers["Content-Type"] == part["mime_type"]

    # Loading the page again reuses the signatures (each is an IAM call when deployed).
    again = alice.get(f"/api/chats/{chat['chatId']}").json()[-1]
    assert [p.get("media_url") for p in again["parts"]] == [
        p.get("media_url") for p in message["parts"]
    ]


# --- the deployed signing path -----------------------------------------------------------------

IAM_SCRIPT = """
import base64, json, sys
import google.cloud.storage._signing as signing
from google.oauth2 import service_account
from shared.signing import IamSigner
from shared.storage import media_storage

calls = []
key = service_account.Credentials.from_service_account_file(sys.argv[1])

def sign_blob(message, access_token, service_account_email, universe_domain=None):
    # Stands in for iamcredentials.googleapis.com's signBlob: signs with the account's key.
    calls.append({"token": access_token, "email": service_account_email})
    data = message.encode() if isinstance(message, str) else message
    return base64.b64encode(key.sign_bytes(data)).decode()

signing._sign_message = sign_blob
storage = media_storage()
assert isinstance(storage.signer, IamSigner), type(storage.signer)
signed = storage.sign_upload("uploads/user_x/1/a.png", "image/png")
downloads = storage.download_urls(["uploads/user_x/2/b.png", "uploads/user_x/3/c.png"])

def unreachable(*args, **kwargs):  # signBlob hanging: the page must not wait for it
    time.sleep(3)
    raise RuntimeError("too late")

import time
import shared.storage
shared.storage.SIGNING_WAIT_SECONDS = 0.5
signing._sign_message = unreachable
started = time.monotonic()
late = storage.download_urls(["uploads/user_x/4/d.png"])
waited = time.monotonic() - started
started = time.monotonic()
try:
    storage.sign_upload("uploads/user_x/5/e.png", "image/png")
    refusal = None
except shared.storage.StorageUnavailable as error:
    refusal = [error.status, error.code, time.monotonic() - started]
print(json.dumps({"url": signed.url, "headers": signed.headers, "calls": calls,
                  "downloads": downloads, "late": late, "waited": waited, "refusal": refusal}))
"""


@pytest.mark.parametrize("configured_account", ["", "signer@raven-prod.iam.gserviceaccount.com"])
def test_deployed_signing_uses_iam_sign_blob_with_metadata_credentials(
    stack: LocalStack, configured_account: str
) -> None:
    """Without a key file, URLs are signed by IAM signBlob as the metadata server's account.

    iamcredentials.googleapis.com cannot be reached here, so the SDK's one call to it is
    replaced by a stand-in that signs with the account's key; everything before it (credentials
    from the metadata stand-in, the token refresh, the email) is the deployed code path.
    """
    env = {**stack.env, "SIGNER_KEY_FILE": "", "SIGNER_SERVICE_ACCOUNT": configured_account}
    result = subprocess.run(
        [sys.executable, "-c", IAM_SCRIPT, stack.env["SIGNER_KEY_FILE"]],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    email = configured_account or LOCAL_SERVICE_ACCOUNT
    assert answer["calls"] == [{"token": LOCAL_ACCESS_TOKEN, "email": email}] * 3
    query = dict(parse_qsl(urlsplit(answer["url"]).query))
    assert query["X-Goog-Credential"].startswith(email + "/")
    key = signer_public_key(stack)
    assert signature_valid(key, "PUT", answer["url"], answer["headers"])
    assert len(answer["downloads"]) == 2
    assert all(signature_valid(key, "GET", url, {}) for url in answer["downloads"].values())
    # A signBlob that does not answer costs the page its media URLs, not minutes.
    assert answer["late"] == {} and answer["waited"] < 2
    status, code, waited = answer["refusal"]  # and an upload URL a quick 503
    assert (status, code) == (503, "storage_unavailable") and waited < 2


def test_signing_key_is_refused_in_production(stack: LocalStack) -> None:
    from shared.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="SIGNER_KEY_FILE"):
        load_settings({**stack.env, "ENVIRONMENT": "production", "DEBUG": "false"})
