"""storage_sweep: finishes the bucket work of deleted chats and users. Private.

| call    | handler |
|---------|---------|
| POST /  | sweep   |

Deleting a chat or a user queues its objects in ``storage_deletions`` and starts the bucket
work in the background of the request that did it (``shared.deletions``). On Cloud Run that
background work may be throttled or lost with its instance, and a failed deletion waits for
its backoff: this function is what guarantees the queue drains even when no further deletion
happens. Cloud Scheduler calls it every few minutes with an OIDC token; like summarize it
has no public invoker, so Cloud Run admits only the scheduler's service account and the
handler itself needs no authentication. It works through every due row until none is left
or its time budget ends, and answers how many rows it finished and how many are still due.
"""

from __future__ import annotations

import time

import functions_framework
from flask import Request, Response

from shared.deletions import run_storage_sweep, storage_deletions_backlog
from shared.runtime import database, make_api, start_function
from shared.schemas import SweepReport
from shared.storage import object_store
from shared.telemetry import log_storage_sweep
from shared.web import json_response

start_function()

# Well inside the function's request timeout (300 s deployed), so a sweep ends cleanly and
# the rest waits for the next trigger rather than being cut off mid-row.
SWEEP_BUDGET_SECONDS = 240.0


def sweep(request: Request) -> Response:
    started = time.perf_counter()
    result = run_storage_sweep(database(), object_store, SWEEP_BUDGET_SECONDS)
    pending, oldest = storage_deletions_backlog(database())
    log_storage_sweep(
        result.finished,
        result.due,
        pending,
        oldest,
        round((time.perf_counter() - started) * 1e3, 2),
    )
    return json_response(SweepReport(finished=result.finished, due=result.due))


API = make_api("storage_sweep", {"sweepStorage": sweep})


@functions_framework.http
def storage_sweep(request: Request) -> Response:
    """Entry point: Cloud Scheduler's periodic call."""
    return API.handle(request)
