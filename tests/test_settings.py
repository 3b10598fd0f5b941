"""Settings: the one reader of the environment fails fast and names the variable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dev.stack import function_command, read_env_file
from shared.settings import Settings, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = read_env_file(REPO_ROOT / ".env.example")
LOCAL = {**EXAMPLE, "DATABASE_URL": "postgresql://postgres@/postgres?host=/tmp/pg"}


def test_env_example_loads_with_its_documented_defaults() -> None:
    settings = load_settings(LOCAL)
    assert settings.environment == "development"
    assert settings.allowed_origins[0] == "http://localhost:3000"
    assert settings.upload_max_bytes == 20 * 1024 * 1024
    assert "image/heic" in settings.upload_allowed_types
    assert settings.clerk_webhook_secret is not None
    assert settings.clerk_webhook_secret.startswith("whsec_")
    assert settings.media_include_only_current is False


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert aliases == set(EXAMPLE)
    text = (REPO_ROOT / ".env.example").read_text()
    for alias in aliases:
        # each variable is preceded by a comment line (its documentation)
        assert re.search(rf"#[^\n]*\n(?:#[^\n]*\n|[A-Z_]+=[^\n]*\n)*{alias}=", text), alias


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHAT_WINDOW_SIZE", "abc"),
        ("CHAT_WINDOW_SIZE", "0"),
        ("DEBUG", "maybe"),
        ("ENVIRONMENT", "staging"),
        ("CLERK_WEBHOOK_SECRET", "not-a-svix-secret"),
        ("DATABASE_URL", "mysql://root@localhost/raven"),
        ("ALLOWED_ORIGINS", "localhost:3000"),
        ("DB_IP_TYPE", "CARRIER_PIGEON"),
        ("UPLOAD_URL_TTL_SECONDS", "5"),
        ("MEDIA_INCLUDE_ONLY_CURRENT", "sometimes"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({**LOCAL, variable: value})
    assert variable in str(error.value)


def test_missing_database_is_named() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings({**LOCAL, "DATABASE_URL": ""})


def test_cloud_sql_needs_the_iam_user() -> None:
    env = {**LOCAL, "DATABASE_URL": "", "INSTANCE_CONNECTION_NAME": "p:r:i"}
    with pytest.raises(SettingsError, match="DB_IAM_USER"):
        load_settings(env)
    settings = load_settings({**env, "DB_IAM_USER": "raven-chats@p.iam"})
    assert settings.instance_connection_name == "p:r:i"


def test_inconsistent_budgets_are_refused() -> None:
    with pytest.raises(SettingsError, match="TARGET_WINDOW_TOKENS"):
        load_settings({**LOCAL, "TARGET_WINDOW_TOKENS": "50000", "MAX_CONTEXT_TOKENS": "1000"})
    with pytest.raises(SettingsError, match="SUMMARY_TARGET_TOKENS"):
        load_settings({**LOCAL, "SUMMARY_TARGET_TOKENS": "2000", "SUMMARY_MAX_TOKENS": "100"})


def test_debug_is_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="DEBUG"):
        load_settings({**LOCAL, "ENVIRONMENT": "production", "DEBUG": "true"})


def test_log_lines_are_readable_in_development_only() -> None:
    assert load_settings(LOCAL).readable_logs  # .env.example: ENVIRONMENT=development
    assert not load_settings({**LOCAL, "ENVIRONMENT": "test"}).readable_logs
    production = load_settings({**LOCAL, "ENVIRONMENT": "production", "DEBUG": "false"})
    assert not production.readable_logs
    assert not load_settings({**LOCAL, "LOG_FORMAT": "json"}).readable_logs
    assert load_settings({**LOCAL, "ENVIRONMENT": "test", "LOG_FORMAT": "text"}).readable_logs
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings({**LOCAL, "ENVIRONMENT": "production", "LOG_FORMAT": "text"})
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings({**LOCAL, "LOG_FORMAT": "pretty"})


def test_lists_parse_from_commas() -> None:
    settings = load_settings(
        {**LOCAL, "ALLOWED_ORIGINS": " https://a.example.com/ ,https://b.example.com,"}
    )
    assert settings.allowed_origins == ["https://a.example.com", "https://b.example.com"]


def test_require_names_each_missing_variable() -> None:
    settings = load_settings({**LOCAL, "GCS_BUCKET_NAME": "", "TASKS_QUEUE": ""})
    with pytest.raises(SettingsError) as error:
        settings.require("GCS_BUCKET_NAME", "TASKS_QUEUE", "PROJECT_ID")
    message = str(error.value)
    assert "GCS_BUCKET_NAME" in message and "TASKS_QUEUE" in message
    assert "PROJECT_ID" not in message


def start_failure(**env: str) -> str:
    """Start chats_crud with these settings; it must exit at once. Returns its stderr."""
    result = subprocess.run(
        function_command("chats_crud", 0),
        env={**LOCAL, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    return result.stderr


def test_a_function_with_a_bad_value_fails_at_start() -> None:
    stderr = start_failure(CHAT_WINDOW_SIZE="lots", CLERK_JWKS_URL="http://127.0.0.1:9/jwks")
    assert "CHAT_WINDOW_SIZE" in stderr
    assert "SettingsError" in stderr


def test_a_function_without_a_clerk_key_fails_at_start() -> None:
    assert "CLERK_JWT_KEY, CLERK_JWKS_URL or CLERK_SECRET_KEY" in start_failure()


def test_an_upload_type_whose_content_cannot_be_checked_is_refused() -> None:
    # Every upload's bytes are checked against its declared type at first use: a type with no
    # known signature could never be accepted, so it cannot be configured either.
    with pytest.raises(SettingsError, match="UPLOAD_ALLOWED_TYPES") as error:
        load_settings({**LOCAL, "UPLOAD_ALLOWED_TYPES": "image/png,image/bmp"})
    assert "image/bmp" in str(error.value)
    mixed_case = load_settings({**LOCAL, "UPLOAD_ALLOWED_TYPES": "Image/PNG, text/plain"})
    assert mixed_case.upload_allowed_types == ["image/png", "text/plain"]
