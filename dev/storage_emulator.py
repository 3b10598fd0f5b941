"""The local Cloud Storage: the ``gcp-storage-emulator`` in a thread, and the URL-signing key.

The functions talk to the emulator directly (``STORAGE_EMULATOR_HOST``) with the credentials
the metadata stand-in gives them, exactly as they talk to Cloud Storage when deployed. The
browser reaches it through the router instead (``STORAGE_PUBLIC_URL``): the emulator answers
no CORS preflight, and a signed URL must name the host the browser uses.

Deployed, URLs are signed by IAM signBlob, which cannot be reached locally (google-auth and
google-cloud-storage hard-code ``iamcredentials.googleapis.com``). So the stack generates a
service-account key for the metadata stand-in's account in the data folder and passes it as
``SIGNER_KEY_FILE``: the URLs are the same, only the RSA signature is computed in-process.
The emulator checks neither signatures nor ``x-goog-content-length-range``: the router does,
with this key's public half, exactly as Cloud Storage checks V4 signed URLs
(:mod:`dev.storage_front`), so a URL that production would refuse is refused locally too.

Local use only; nothing here is deployed.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_signing_key(path: Path, service_account: str, project_id: str) -> Path:
    """A service-account key JSON for ``service_account`` at ``path``, made once and kept."""
    if path.exists():
        return path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "local-url-signer",
        "private_key": pem,
        "client_email": service_account,
        "client_id": "0",
        "token_uri": "https://oauth2.googleapis.com/token",  # never called: it only signs
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return path


class StorageEmulator:
    """``gcp-storage-emulator`` on a free port, with the uploads bucket, data kept on disk."""

    def __init__(self, data_dir: Path, bucket: str) -> None:
        from gcp_storage_emulator.server import create_server

        # Its request log and a warning on every health check would drown the stack's output.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.bucket = bucket
        self._server: Any = create_server(
            "127.0.0.1", self.port, in_memory=False, default_bucket=bucket, data_dir=str(data_dir)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StorageEmulator:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
