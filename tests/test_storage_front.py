"""The local uploads bucket refuses what Cloud Storage refuses (dev/storage_front.py).

Every request goes over HTTP through the router at ``/<bucket>/<object>``, exactly where the
browser sends its PUT; the objects are then looked up with google-cloud-storage on the
emulator. URLs come from POST /api/upload-url, or from the same signing code the functions
use (google-cloud-storage's V4 signer with the local key) when a test needs one the API does
not make (expired, dated in the future).
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ElementTree
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from dev.stack import LocalStack
from shared.storage import MediaStorage
from tests.conftest import FRONTEND_ORIGIN, ApiClient

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def ask(client: ApiClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/upload-url", json={"filename": "a.png", **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def put(url: str, data: bytes = PNG, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.put(
        url, data=data, headers={"Origin": FRONTEND_ORIGIN, **(headers or {})}, timeout=10
    )


def gcs_error(response: requests.Response, status: int, code: str) -> dict[str, str]:
    """Cloud Storage's XML error: the status, ``application/xml``, ``<Error><Code>``..."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/xml")
    assert response.text.startswith("<?xml version='1.0' encoding='UTF-8'?><Error>")
    root = ElementTree.fromstring(response.content)
    assert root.tag == "Error"
    fields = {child.tag: child.text or "" for child in root}
    assert fields["Code"] == code, fields
    assert fields["Message"]
    # The browser can read the refusal (the bucket's CORS applies to errors too).
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    return fields


def stored(storage_client: Any, stack: LocalStack, name: str) -> bool:
    return storage_client.bucket(stack.env["GCS_BUCKET_NAME"]).blob(name).exists()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def signed_put_url(media_store: MediaStorage, name: str, signed_at: datetime.datetime) -> str:
    """A PUT URL for ``content-type: image/png`` dated ``signed_at``, valid 60 s from then,
    made by google-cloud-storage's own V4 signer with the stack's key."""
    from urllib.parse import quote

    from google.cloud.storage._signing import generate_signed_url_v4

    return str(
        generate_signed_url_v4(
            media_store.signer.signing_arguments()["credentials"],
            f"/{media_store.bucket_name}/{quote(name, safe='/~')}",
            expiration=60,
            api_access_endpoint=media_store.public_url,
            method="PUT",
            content_type="image/png",
            _request_timestamp=signed_at.strftime("%Y%m%dT%H%M%SZ"),
        )
    )


# --- what works --------------------------------------------------------------------------------


def test_the_plain_frontend_put_is_accepted(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png", size=len(PNG))
    response = put(answer["url"], headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert stored(storage_client, stack, answer["object_name"])


# --- what Cloud Storage refuses ------------------------------------------------------------------


def test_another_content_type_than_signed_is_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png")
    error = gcs_error(put(answer["url"], b"<html>", headers={"Content-Type": "text/html"}), 403,
                      "SignatureDoesNotMatch")  # fmt: skip
    assert "content-type:text/html" in error["CanonicalRequest"]
    assert "does not match the signature you provided" in error["Details"]
    assert not stored(storage_client, stack, answer["object_name"])


def test_a_signed_header_missing_from_the_request_is_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png")
    error = gcs_error(put(answer["url"]), 400, "MalformedSecurityHeader")
    assert error["ParameterName"] == "content-type"
    assert "signedheaders, but not in the request" in error["Details"]
    bound = ask(alice, contentType="image/png", size=len(PNG), bindSize=True)
    error = gcs_error(put(bound["url"], headers={"Content-Type": "image/png"}), 400,
                      "MalformedSecurityHeader")  # fmt: skip
    assert error["ParameterName"] == "x-goog-content-length-range"
    assert not stored(storage_client, stack, answer["object_name"])
    assert not stored(storage_client, stack, bound["object_name"])


def test_a_header_sent_with_another_value_than_signed_is_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    bound = ask(alice, contentType="image/png", size=len(PNG), bindSize=True)
    headers = {**bound["headers"], "x-goog-content-length-range": "0,999999999"}
    gcs_error(put(bound["url"], headers=headers), 403, "SignatureDoesNotMatch")
    assert not stored(storage_client, stack, bound["object_name"])


def test_a_header_the_url_did_not_sign_is_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    """What the old URLs asked for (a size range and a custom time) cannot be added to a URL
    that did not sign them, nor can a content hash: the signature must cover them."""
    answer = ask(alice, contentType="image/png", size=len(PNG))
    for extra in (
        {"x-goog-custom-time": "1970-01-01T00:00:00Z"},
        {"x-goog-content-length-range": f"0,{len(PNG)}"},
        {"Content-MD5": "rmYdCNHKFXam78uCt7xQLw=="},
    ):
        headers = {"Content-Type": "image/png", **extra}
        error = gcs_error(put(answer["url"], headers=headers), 403, "SignatureDoesNotMatch")
        assert next(iter(extra)).lower() in error["Details"]
    assert not stored(storage_client, stack, answer["object_name"])
    # The same URL with only the header it signed goes through.
    assert put(answer["url"], headers={"Content-Type": "image/png"}).status_code == 200


def test_the_bound_size_is_enforced_when_a_client_opts_in(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    bound = ask(alice, contentType="image/png", size=len(PNG), bindSize=True)
    small = gcs_error(put(bound["url"], PNG[:-1], headers=bound["headers"]), 400, "EntityTooSmall")
    assert str(len(PNG)) in small["Details"]
    gcs_error(put(bound["url"], PNG + b"!", headers=bound["headers"]), 400, "EntityTooLarge")
    assert not stored(storage_client, stack, bound["object_name"])
    assert put(bound["url"], PNG, headers=bound["headers"]).status_code == 200
    assert stored(storage_client, stack, bound["object_name"])


def test_an_expired_url_is_refused(
    alice: ApiClient, media_store: MediaStorage, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png")
    two_minutes_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=2)
    url = signed_put_url(media_store, answer["object_name"], two_minutes_ago)
    error = gcs_error(put(url, headers={"Content-Type": "image/png"}), 400, "ExpiredToken")
    assert "expired" in error["Details"]
    assert not stored(storage_client, stack, answer["object_name"])
    # The same signer, dated now: accepted (so the refusal above was the date alone).
    fresh = signed_put_url(media_store, answer["object_name"], datetime.datetime.now(datetime.UTC))
    assert put(fresh, headers={"Content-Type": "image/png"}).status_code == 200


def test_a_url_dated_in_the_future_or_valid_too_long_is_refused(
    alice: ApiClient, media_store: MediaStorage
) -> None:
    answer = ask(alice, contentType="image/png")
    next_hour = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    url = signed_put_url(media_store, answer["object_name"], next_hour)
    error = gcs_error(
        put(url, headers={"Content-Type": "image/png"}), 400, "MalformedSecurityHeader"
    )
    assert error["ParameterName"] == "X-Goog-Date"
    too_long = with_query(answer["url"], **{"X-Goog-Expires": "604801"})
    error = gcs_error(put(too_long, headers={"Content-Type": "image/png"}), 400,
                      "MalformedSecurityHeader")  # fmt: skip
    assert error["ParameterName"] == "X-Goog-Expires"


def test_a_tampered_url_is_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png")
    signature = dict(parse_qsl(urlsplit(answer["url"]).query))["X-Goog-Signature"]
    flipped = ("0" if signature[10] != "0" else "1").join([signature[:10], signature[11:]])
    tampered = [
        with_query(answer["url"], **{"X-Goog-Signature": flipped}),
        with_query(answer["url"], **{"X-Goog-Expires": "901"}),  # a longer life
        answer["url"].replace("/a.png?", "/b.png?"),  # another object
        answer["url"].replace("localhost", "127.0.0.1"),  # another host
    ]
    for url in tampered:
        gcs_error(put(url, headers={"Content-Type": "image/png"}), 403, "SignatureDoesNotMatch")
    gcs_error(
        put(with_query(answer["url"], **{"X-Goog-Signature": "not-hex"}),
            headers={"Content-Type": "image/png"}),
        400,
        "MalformedSecurityHeader",
    )  # fmt: skip
    assert not stored(storage_client, stack, answer["object_name"])


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_another_method_than_signed_is_refused(alice: ApiClient, method: str) -> None:
    answer = ask(alice, contentType="image/png")
    response = requests.request(
        method,
        answer["url"],
        headers={"Content-Type": "image/png", "Origin": FRONTEND_ORIGIN},
        timeout=10,
    )
    gcs_error(response, 403, "SignatureDoesNotMatch")


def test_unsigned_requests_to_the_private_bucket_are_refused(
    alice: ApiClient, storage_client: Any, stack: LocalStack
) -> None:
    answer = ask(alice, contentType="image/png")
    error = gcs_error(put(answer["gcs_url"], headers={"Content-Type": "image/png"}), 403,
                      "AccessDenied")  # fmt: skip
    assert "Anonymous caller does not have storage.objects.create access" in error["Details"]
    assert not stored(storage_client, stack, answer["object_name"])
    assert put(answer["url"], headers={"Content-Type": "image/png"}).status_code == 200
    read = requests.get(answer["gcs_url"], headers={"Origin": FRONTEND_ORIGIN}, timeout=10)
    assert "storage.objects.get" in gcs_error(read, 403, "AccessDenied")["Details"]
    listing = requests.get(
        f"{stack.base_url}/{stack.env['GCS_BUCKET_NAME']}/incoming/",
        headers={"Origin": FRONTEND_ORIGIN},
        timeout=10,
    )
    gcs_error(listing, 403, "AccessDenied")


def test_the_preflight_allows_only_what_the_signed_requests_need(alice: ApiClient) -> None:
    answer = ask(alice, contentType="image/png")
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
    allowed = {
        h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert allowed == {"content-type", "x-goog-content-length-range", "range"}
