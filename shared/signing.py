"""Who signs the uploads bucket's V4 URLs, chosen by settings.

* Deployed (the default code path): no key file exists. The function's own credentials come
  from the metadata server (``google.auth.default()``), are refreshed when stale, and
  ``generate_signed_url`` gets ``service_account_email`` (``SIGNER_SERVICE_ACCOUNT``, else the
  credentials' own) and ``access_token``, so Google's IAM ``signBlob`` API signs with a key
  Google holds (:class:`IamSigner`). Each signature is one network call (~tens of
  milliseconds), and the account needs ``roles/iam.serviceAccountTokenCreator`` on itself.
* Locally and in tests (``SIGNER_KEY_FILE`` set): a service-account key JSON that ``make dev``
  generates in ``.data/`` signs in-process (:class:`KeyFileSigner`), because
  ``iamcredentials.googleapis.com`` cannot be reached and google-auth and google-cloud-storage
  hard-code its address (no stand-in can be slotted in). The URL, its query and its canonical
  request are exactly the deployed ones; only who computes the RSA signature differs.
  Settings refuse a key file in production.

``shared.storage.MediaStorage`` signs with one of them.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.errors import StorageUnavailable
from shared.settings import Settings

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: float  # epoch seconds
    headers: dict[str, str]


class KeyFileSigner:
    """Signs in-process with a service-account key file (local stack and tests only)."""

    network_bound = False

    def __init__(self, key_file: str) -> None:
        self._key_file = key_file
        self._credentials: Any = None
        self._lock = threading.Lock()

    def signing_arguments(self) -> dict[str, Any]:
        with self._lock:
            if self._credentials is None:
                from google.oauth2 import service_account

                # google-auth leaves this classmethod unannotated
                self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    self._key_file
                )
        return {"credentials": self._credentials}


class IamSigner:
    """Signs through IAM signBlob as the function's own service account (deployed)."""

    network_bound = True

    def __init__(self, service_account: str | None) -> None:
        self._service_account = service_account
        self._credentials: Any = None
        self._lock = threading.Lock()

    def signing_arguments(self) -> dict[str, Any]:
        """A fresh access token and the signer's email, as ``generate_signed_url`` takes them."""
        with self._lock:
            if self._credentials is None:
                import google.auth

                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            credentials = self._credentials
            if not credentials.valid:  # expired, or about to: refresh before signing
                from google.auth.transport.requests import Request

                credentials.refresh(Request())
            token = credentials.token
            email = self._service_account or getattr(credentials, "service_account_email", None)
        if not email or email == "default":
            raise StorageUnavailable("Cannot sign URLs: the service account email is unknown")
        return {"service_account_email": email, "access_token": token}


Signer = KeyFileSigner | IamSigner


def signer_from_settings(settings: Settings) -> Signer:
    if settings.signer_key_file:
        return KeyFileSigner(settings.signer_key_file)
    return IamSigner(settings.signer_service_account)


def signed_expiry(url: str, ttl_seconds: int) -> float:
    """The expiry a V4 URL carries: its own ``X-Goog-Date`` plus ``X-Goog-Expires``."""
    signed_at = parse_qs(urlsplit(url).query)["X-Goog-Date"][0]
    start = datetime.datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ")
    return start.replace(tzinfo=datetime.UTC).timestamp() + ttl_seconds
