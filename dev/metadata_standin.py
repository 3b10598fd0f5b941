"""A local stand-in for the Cloud Run metadata server: where deployed code gets its identity.

On Cloud Run, ``google.auth.default()`` finds no key file and asks the metadata server for
the service account's email and access tokens. Pointing ``GCE_METADATA_HOST`` and
``GCE_METADATA_IP`` at this server makes the functions take exactly that code path locally:
the Google SDKs build the same credentials object they build in the cloud, and send its token
to whichever local stand-in they talk to (Gemini, storage). The token is a fixed string;
nothing here is a secret and nothing is deployed.

Endpoints (``Metadata-Flavor: Google`` required on every request but the root, as on GCP):

* ``/`` answers with the ``Metadata-Flavor: Google`` header (google-auth's "am I on GCP" ping);
* ``/computeMetadata/v1/project/project-id``;
* ``/computeMetadata/v1/instance/service-accounts/default/`` (JSON, ``?recursive=true``);
* ``/computeMetadata/v1/instance/service-accounts/default/email``;
* ``/computeMetadata/v1/instance/service-accounts/default/token``;
* ``/computeMetadata/v1/instance/service-accounts/default/identity?audience=...`` (an
  unsigned-looking but well-formed JWT, for code that asks for an OIDC token).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOCAL_SERVICE_ACCOUNT = "raven-local@raven-local.iam.gserviceaccount.com"
LOCAL_ACCESS_TOKEN = "local-metadata-token"


class MetadataStandin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, project_id: str, service_account: str = LOCAL_SERVICE_ACCOUNT) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.project_id = project_id
        self.service_account = service_account

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the value for GCE_METADATA_HOST and GCE_METADATA_IP."""
        return f"127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def environment(self) -> dict[str, str]:
        """The variables that send google-auth here instead of to 169.254.169.254."""
        return {"GCE_METADATA_HOST": self.host, "GCE_METADATA_IP": self.host}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class _Handler(BaseHTTPRequestHandler):
    server: MetadataStandin

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if path == "":
            self._send(200, "text/plain", "ok")
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, "text/plain", "Missing Metadata-Flavor:Google header")
            return
        prefix = "/computeMetadata/v1"
        account = f"{prefix}/instance/service-accounts/default"
        if path == f"{prefix}/project/project-id":
            self._send(200, "text/plain", self.server.project_id)
        elif path == f"{account}/email":
            self._send(200, "text/plain", self.server.service_account)
        elif path == account:
            body = {
                "email": self.server.service_account,
                "aliases": ["default"],
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
            self._send(200, "application/json", json.dumps(body))
        elif path == f"{account}/token":
            token = {"access_token": LOCAL_ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            self._send(200, "application/json", json.dumps(token))
        elif path == f"{account}/identity":
            audience = parse_qs(url.query).get("audience", [""])[0]
            now = int(time.time())
            claims = {
                "aud": audience,
                "email": self.server.service_account,
                "iss": "https://accounts.google.com",
                "iat": now,
                "exp": now + 3600,
            }
            identity = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"
            self._send(200, "text/plain", identity)
        else:
            self._send(404, "text/plain", f"no metadata at {path}")

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_metadata_standin(project_id: str) -> MetadataStandin:
    """Start the stand-in on a free port in a background thread."""
    server = MetadataStandin(project_id)
    threading.Thread(target=server.serve_forever, daemon=True, name="metadata-standin").start()
    return server
