"""Monitoring as code, checked against what the code really logs.

Every log-based metric in terraform/monitoring.tf is a Cloud Logging filter plus extractors
over field paths. These tests run turns, a summary task, an upload check and a storage sweep
on the local stack, turn each JSON line the functions wrote into the LogEntry Cloud Logging
makes of it on Cloud Run, and evaluate each metric's filter and extractors on those entries:
the field paths are parsed and looked up, not compared as strings. Renaming a logged field
(in shared/telemetry.py) or a path in Terraform makes them fail, which the second test shows
for every field a metric reads.

They also check /dev/metrics (the local view of the same numbers), make dev's readable line
per turn, and that the dashboard and the alerts name only metrics that exist.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import requests

from dev.gemini_standin import StandinControl
from dev.logs import DevMetrics, LogRelay, readable
from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import ApiClient, read_logs, stream_events, upload_file, wait_for

TERRAFORM = Path(__file__).resolve().parent.parent / "terraform"
NAME_PREFIX = "raven"  # variables.tf's default

# Fields Cloud Logging lifts out of a JSON line written to stdout on Cloud Run; the rest of
# the object becomes jsonPayload
# (https://cloud.google.com/logging/docs/structured-logging#special-payload-fields).
SPECIAL_FIELDS = {
    "severity": "severity",
    "httpRequest": "httpRequest",
    "time": "timestamp",
    "logging.googleapis.com/trace": "trace",
    "logging.googleapis.com/spanId": "spanId",
    "logging.googleapis.com/labels": "labels",
    "logging.googleapis.com/sourceLocation": "sourceLocation",
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# --- Terraform: the metrics as written --------------------------------------------------------


def hcl_string(raw: str) -> str:
    """An HCL string literal as python-hcl2 keeps it ('"a \\"b\\""') -> its text (a "b")."""
    assert raw.startswith('"') and raw.endswith('"'), raw
    return str(json.loads(raw))


@cache
def monitoring_locals() -> dict[str, Any]:
    with (TERRAFORM / "monitoring.tf").open() as handle:
        parsed = hcl2.load(handle)
    merged: dict[str, Any] = {}
    for block in parsed["locals"]:
        merged.update({k: v for k, v in block.items() if not k.startswith("__")})
    return merged


def resolve(text: str) -> str:
    """Interpolate ${var.name_prefix} and ${local.<string local>} the way Terraform would."""

    def substitute(match: re.Match[str]) -> str:
        reference = match.group(1)
        if reference == "var.name_prefix":
            return NAME_PREFIX
        if reference.startswith("local."):
            return resolve(hcl_string(monitoring_locals()[reference[len("local.") :]]))
        raise AssertionError(f"cannot resolve ${{{reference}}} in a metric's filter")

    return re.sub(r"\$\{([^}]+)\}", substitute, text)


def optional_string(raw: Any) -> str | None:
    """A metric attribute: null, a string literal, or a reference to a string local."""
    if raw is None:
        return None
    if raw.startswith("${") and raw.endswith("}"):
        return resolve(raw)
    return resolve(hcl_string(raw))


@cache
def log_metrics() -> dict[str, dict[str, Any]]:
    """name -> {"filter", "value" (extractor or None), "labels" {key: extractor}}."""
    metrics = {}
    for name, body in monitoring_locals()["log_metrics"].items():
        metrics[name] = {
            "filter": optional_string(body["filter"]),
            "value": optional_string(body["value"]),
            "labels": {key: optional_string(value) for key, value in body["labels"].items()},
        }
    return metrics


# --- Cloud Logging's filter language and extractors (the subset the metrics use) ------------

_TERM = re.compile(
    r"""\s*(?P<path>[A-Za-z_][\w.]*)\s*
        (?:(?P<presence>:\*)|(?P<op>=~|!~|!=|>=|<=|=|>|<)\s*
           (?:"(?P<string>(?:[^"\\]|\\.)*)"|(?P<number>-?\d+(?:\.\d+)?)))\s*""",
    re.VERBOSE,
)


def parse_filter(text: str) -> list[tuple[str, str, Any]]:
    """``a.b="x" AND c:* AND d>=1`` -> [(path, op, value)]; anything else is refused.

    Only conjunctions of comparisons on field paths: the subset terraform/monitoring.tf
    uses, so every part of a filter is understood here and checked against real entries.
    """
    terms: list[tuple[str, str, Any]] = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _TERM.fullmatch(part)
        assert match, f"unsupported filter term {part!r} in {text!r}"
        if match["presence"]:
            terms.append((match["path"], ":*", None))
        elif match["string"] is not None:
            terms.append((match["path"], match["op"], json.loads(f'"{match["string"]}"')))
        else:
            terms.append((match["path"], match["op"], float(match["number"])))
    return terms


_MISSING = object()


def lookup(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def matches(terms: list[tuple[str, str, Any]], entry: dict[str, Any]) -> bool:
    for path, op, expected in terms:
        value = lookup(entry, path)
        if value is _MISSING or value is None:
            return False
        if op == ":*":
            continue
        if isinstance(expected, float):
            if not isinstance(value, int | float):
                return False
            ok = {
                "=": value == expected,
                "!=": value != expected,
                ">=": value >= expected,
                "<=": value <= expected,
                ">": value > expected,
                "<": value < expected,
            }[op]
        else:
            text = str(value)
            ok = {
                "=": text == expected,
                "!=": text != expected,
                "=~": re.search(expected, text) is not None,
                "!~": re.search(expected, text) is None,
            }.get(op, False)
        if not ok:
            return False
    return True


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    """``EXTRACT(path)`` or ``REGEXP_EXTRACT(path, "re")`` (one capture group); None if absent."""
    plain = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    if plain:
        value = lookup(entry, plain.group(1))
        return None if value is _MISSING else value
    regexp = re.fullmatch(r'REGEXP_EXTRACT\(([\w.]+),\s*"((?:[^"\\]|\\.)*)"\)', extractor)
    assert regexp, f"unsupported extractor {extractor!r}"
    value = lookup(entry, regexp.group(1))
    if value is _MISSING or value is None:
        return None
    pattern = re.compile(json.loads(f'"{regexp.group(2)}"'))
    assert pattern.groups == 1, f"{extractor}: exactly one capture group"
    found = pattern.search(str(value))
    return found.group(1) if found else None


def field_paths(metric: dict[str, Any]) -> set[str]:
    """Every jsonPayload path a metric's filter and extractors read."""
    paths = {path for path, _, _ in parse_filter(metric["filter"])}
    for extractor in [metric["value"], *metric["labels"].values()]:
        if extractor:
            paths.add(re.search(r"\(([\w.]+)", extractor).group(1))  # type: ignore[union-attr]
    return {path for path in paths if path.startswith("jsonPayload.")}


def problems(name: str, metric: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """Why the metric would stay empty or wrong on these entries (empty: it works)."""
    matched = [entry for entry in entries if matches(parse_filter(metric["filter"]), entry)]
    if not matched:
        return [f"{name}: its filter matches none of the lines the code wrote"]
    found = []
    if metric["value"]:
        values = [extract(metric["value"], entry) for entry in matched]
        bad = [v for v in values if not isinstance(v, int | float) or isinstance(v, bool)]
        if bad:
            found.append(f"{name}: value {metric['value']} is not a number in {len(bad)} lines")
    for key, extractor in metric["labels"].items():
        if not any(extract(extractor, entry) for entry in matched):
            found.append(f"{name}: label {key} ({extractor}) is empty in every matching line")
    return found


# --- the lines, as Cloud Logging receives them ------------------------------------------------


def as_log_entry(function: str, line: dict[str, Any]) -> dict[str, Any]:
    """What Cloud Logging stores for a JSON line a Cloud Run function wrote to stdout."""
    entry: dict[str, Any] = {
        "resource": {
            "type": "cloud_run_revision",
            # terraform/main.tf's resource_names: <prefix>-<function with dashes>.
            "labels": {"service_name": f"{NAME_PREFIX}-{function.replace('_', '-')}"},
        },
        "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
    }
    payload = {}
    for key, value in line.items():
        if key in SPECIAL_FIELDS:
            entry[SPECIAL_FIELDS[key]] = value
        else:
            payload[key] = value
    entry["jsonPayload"] = payload
    return entry


FUNCTIONS = ("chat_stream", "summarize", "storage_sweep", "chats_crud", "upload_url")


def captured_entries(stack: LocalStack) -> list[dict[str, Any]]:
    return [as_log_entry(f, line) for f in FUNCTIONS for line in read_logs(stack, f)]


@pytest.fixture(scope="module")
def logged(stack: LocalStack, model: StandinControl, db: Database) -> list[Any]:
    """Run what every metric counts, once, and return the LogEntries the stack wrote."""
    marker = uuid.uuid4().hex[:8]
    user_id = "user_" + uuid.uuid4().hex[:20]
    user = ApiClient(stack.base_url, stack.signer.token(user_id), user_id)
    # A turn with an attachment: a chat_turn (ok) and a media_check (ok).
    upload = upload_file(user, PNG)
    media = [{"type": "image", "text": upload["gcs_url"], "mimeType": "image/png"}]
    events = stream_events(user.send(f"{marker} what is this?", media=media))
    assert events[-1]["type"] == "done", events
    chat_id = events[0]["chat_id"]
    # A turn the model fails: chat_turn with outcome model_error:unavailable.
    model.script(
        match=f"{marker} fail", http_error={"status": 503, "message": "overloaded"}, times=100
    )
    failed = stream_events(user.send(f"{marker} fail please", chat_id))
    assert failed[-1]["type"] == "error", failed
    # A summary task as Cloud Tasks delivers it (with its schedule time).
    response = requests.post(
        stack.function_urls["summarize"] + "/",
        json={"chat_id": chat_id, "cut": 1},
        headers={
            "X-CloudTasks-QueueName": "summaries",
            "X-CloudTasks-TaskName": f"summary-{marker}",
            "X-CloudTasks-TaskRetryCount": "0",
            "X-CloudTasks-TaskETA": f"{time.time() - 2:.6f}",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    # A sweep that leaves a row behind (not due for an hour): storage_sweep with a backlog.
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO storage_deletions (bucket, object_name, not_before) "
            "VALUES (:bucket, :name, now() + interval '1 hour')",
            bucket=stack.env["GCS_BUCKET_NAME"],
            name=f"users/nobody/{marker}",
        )
    try:
        sweep = requests.post(stack.function_urls["storage_sweep"] + "/", timeout=60)
        assert sweep.status_code == 200, sweep.text
    finally:
        with db.transaction() as tx:
            tx.execute(
                "DELETE FROM storage_deletions WHERE object_name = :name",
                name=f"users/nobody/{marker}",
            )

    def everything_logged() -> list[Any] | None:
        entries = captured_entries(stack)
        kinds = {e["jsonPayload"].get("event") for e in entries}
        wanted = {"chat_turn", "task", "media_check", "storage_sweep"}
        return entries if wanted <= kinds and chat_id in json.dumps(entries) else None

    return list(wait_for(everything_logged))


# --- the tests --------------------------------------------------------------------------------


def test_every_metric_filter_and_extractor_reads_what_the_code_logs(logged: list[Any]) -> None:
    metrics = log_metrics()
    assert len(metrics) >= 10
    found = [problem for name, m in metrics.items() for problem in problems(name, m, logged)]
    assert not found, "\n".join(found)


def test_renaming_a_logged_field_breaks_its_metric(logged: list[Any]) -> None:
    """The check above is real: each field any metric reads, renamed, fails it."""
    checked = 0
    for name, metric in log_metrics().items():
        for path in field_paths(metric):
            field = path.split(".", 1)[1]
            renamed = []
            for entry in logged:
                payload = dict(entry["jsonPayload"])
                if field in payload:
                    payload[field + "_renamed"] = payload.pop(field)
                renamed.append({**entry, "jsonPayload": payload})
            assert problems(name, metric, renamed), f"{name} still works without {path}"
            checked += 1
    assert checked >= 15


def test_turn_events_carry_the_numbers_and_no_text(logged: list[Any]) -> None:
    turns = [e["jsonPayload"] for e in logged if e["jsonPayload"].get("event") == "chat_turn"]
    ok = [t for t in turns if t["outcome"] == "ok"]
    assert ok
    for turn in ok:
        assert 0 < turn["model_ttft_ms"] <= turn["ttft_ms"] <= turn["turn_ms"]
        assert 0 < turn["to_model_ms"] < turn["ttft_ms"]
        # The turn's end, in its order: stored, then done written, then the response ended
        # (the line is written after that, so within the turn).
        assert 0 < turn["stored_ms"] <= turn["done_ms"] <= turn["end_ms"] < turn["turn_ms"]
        assert turn["input_tokens"] > 0 and turn["output_tokens"] > 0
        # Other tests' turns share the log: retried ones are checked in tests/test_retries.py.
        assert turn["finish_reason"] in {"stop", "max_tokens", "other"}
        assert isinstance(turn["retries"], int) and turn["retries"] >= 0
        assert turn["window_messages"] >= 1 and turn["function"] == "chat_stream"
    assert any(t["finish_reason"] == "stop" and t["retries"] == 0 for t in ok)
    failed = [t for t in turns if t["outcome"] == "model_error:unavailable"]
    assert failed and all(t["code"] == "model_unavailable" for t in failed)
    assert all("stored_ms" not in t for t in failed)  # no model end: no end fields
    for entry in logged:
        assert "what is this" not in json.dumps(entry)  # ids and numbers only, never text


def test_the_access_lines_name_their_function(logged: list[Any]) -> None:
    access = [e for e in logged if "httpRequest" in e]
    assert access
    for entry in access:
        service = entry["resource"]["labels"]["service_name"]
        assert service == f"{NAME_PREFIX}-{entry['jsonPayload']['function'].replace('_', '-')}"
        assert entry["httpRequest"]["latency"].endswith("s")


def test_dev_metrics_counts_what_was_logged(stack: LocalStack, logged: list[Any]) -> None:
    metrics = requests.get(stack.base_url + "/dev/metrics", timeout=10).json()
    turns = metrics["turns"]
    assert turns["outcomes"]["ok"] >= 1 and turns["outcomes"]["model_error:unavailable"] >= 1
    assert turns["ttft_ms"]["count"] >= 1
    assert turns["ttft_ms"]["p50"] <= turns["ttft_ms"]["p95"] <= turns["ttft_ms"]["p99"]
    assert turns["output_tokens"] > 0 and turns["models"]
    assert metrics["requests"]["chat_stream"]["count"] >= 2
    assert metrics["requests"]["chat_stream"]["latency_ms"]["p99"] > 0
    assert metrics["tasks"]["summary"]["outcomes"]
    assert metrics["tasks"]["summary"]["queue_delay_s"]["p50"] >= 1.5
    assert metrics["media_checks"]["ok"] >= 1
    assert metrics["storage_sweep"]["runs"] >= 1
    assert metrics["storage_sweep"]["last"]["pending"] >= 1


def test_make_dev_prints_one_readable_line_per_turn(logged: list[Any]) -> None:
    ok = next(
        e
        for e in logged
        if e["jsonPayload"].get("event") == "chat_turn" and "ttft_ms" in e["jsonPayload"]
    )
    line = {**ok["jsonPayload"], "severity": ok["severity"], "time": ok["timestamp"]}
    text = readable("chat_stream", json.dumps(line))
    # time, function, level, then the turn in words
    assert "\n" not in text and re.match(r"\d\d:\d\d:\d\d chat_stream +INFO +turn ok", text)
    assert "turn ok" in text and "first token" in text and "tokens" in text
    assert str(ok["jsonPayload"]["output_tokens"]) in text


def test_make_dev_relays_a_function_s_output_readably_and_counts_it(logged: list[Any]) -> None:
    """The relay make dev puts between each function's stdout and the terminal."""
    lines = [
        json.dumps({**e["jsonPayload"], "severity": e.get("severity", "INFO")})
        for e in logged
        if e["jsonPayload"].get("function") == "chat_stream"
    ]
    script = "import sys; sys.stdout.write(sys.stdin.read()); print('a plain line')"
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    out, metrics = io.StringIO(), DevMetrics()
    LogRelay(metrics, out).attach("chat_stream", process)
    assert process.stdin is not None
    process.stdin.write(("\n".join(lines) + "\n").encode())
    process.stdin.close()
    process.wait(timeout=30)
    printed = wait_for(lambda: out.getvalue() if "a plain line" in out.getvalue() else None)
    assert re.search(r"chat_stream +INFO +turn ok · first token", printed)
    assert re.search(r"\d\d:\d\d:\d\d chat_stream +a plain line", printed)
    assert '{"severity"' not in printed  # no raw JSON reaches the terminal
    turns = sum(1 for e in logged if e["jsonPayload"].get("event") == "chat_turn")
    assert metrics.snapshot()["turns"]["count"] == turns


def test_dashboard_and_alerts_name_only_defined_metrics() -> None:
    defined = set(log_metrics())
    dashboard = (TERRAFORM / "dashboard.json.tftpl").read_text()
    used = set(re.findall(r"\$\{metric\.(\w+)\}", dashboard))
    used |= {
        name for name in re.findall(r"\$\{prom_prefix\}_(\w+?)_(?:sum|count|bucket)\b", dashboard)
    }
    monitoring = (TERRAFORM / "monitoring.tf").read_text()
    used |= set(re.findall(r"local\.metric_types\.(\w+)", monitoring))
    assert used and used <= defined, used - defined
    # The template renders to JSON once Terraform fills it (numbers for the thresholds).
    rendered = re.sub(r"\$\{(alert_5xx_ratio|alert_ttft_p95_ms|max_db_conns)\}", "1", dashboard)
    rendered = re.sub(r"(?<!\$)\$\{[^}]+\}", "x", rendered).replace("$${", "${")
    widgets = json.loads(rendered)["mosaicLayout"]["tiles"]
    assert len(widgets) >= 14


def test_each_alert_has_a_threshold_variable_with_the_issue_default() -> None:
    with (TERRAFORM / "monitoring_variables.tf").open() as handle:
        variables = {
            name: body for block in hcl2.load(handle)["variable"] for name, body in block.items()
        }
    defaults = {name.strip('"'): body.get("default") for name, body in variables.items()}
    assert defaults == {
        "alert_email": None,
        "alert_5xx_ratio": 0.02,
        "alert_ttft_p95_ms": 5000,
        "alert_model_error_ratio": 0.05,
        "alert_queue_delay_seconds": 600,
        "alert_database_connections_ratio": 0.8,
        "alert_storage_pending_seconds": 3600,
    }
    monitoring = (TERRAFORM / "monitoring.tf").read_text()
    for name in defaults:
        assert f"var.{name}" in monitoring, name
    [alerts] = [block["alerts"] for block in hcl2.loads(monitoring)["locals"] if "alerts" in block]
    assert len(alerts) == 6
    assert all(alert["runbook"] and alert["threshold"] for alert in alerts.values())
