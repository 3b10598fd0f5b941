"""The one reader of the environment.

Every function reads its configuration through :func:`get_settings`, never through
``os.environ`` directly. Values are validated once per instance, at start: a wrong or
missing value raises :class:`SettingsError` naming the variable, so a bad deploy fails at
once instead of on the first request that happens to need the value.

Each variable is documented, with a working local default, in ``.env.example``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.functional_validators import BeforeValidator

from shared.file_types import CHECKED_TYPES


class SettingsError(RuntimeError):
    """The environment holds a missing or invalid value; the message names the variable."""


def _split_list(value: object) -> object:
    """Accept ``a,b , c`` (how an environment variable carries a list) as ``["a", "b", "c"]``."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _empty_is_none(value: object) -> object:
    """Treat ``VAR=`` like an unset variable, as shells and .env files write it."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _json_object(value: object) -> object:
    """Accept a JSON object in a string (how an environment variable carries a mapping)."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON: {error.msg}") from None
    return value


CommaList = Annotated[list[str], BeforeValidator(_split_list)]
OptionalStr = Annotated[str | None, BeforeValidator(_empty_is_none)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# Content types the product accepts for upload (the contract's "Allowed types").
DEFAULT_UPLOAD_TYPES = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "image/gif",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "audio/mpeg",
    "audio/wav",
    "audio/x-wav",
    "audio/mp4",
    "audio/x-m4a",
    "audio/ogg",
    "application/pdf",
    "text/plain",
]


class PlanLimits(BaseModel):
    """One plan's limits; a limit left out is the default plan's (the RATE_LIMIT_* values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages_per_minute: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None


class Settings(BaseModel):
    """Validated configuration. Field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # --- runtime -----------------------------------------------------------------------
    environment: Literal["development", "test", "production"] = Field(
        "production", alias="ENVIRONMENT"
    )
    debug: bool = Field(False, alias="DEBUG")
    # Unset: JSON (Cloud Logging's) unless ENVIRONMENT is development (see readable_logs).
    log_format: Annotated[Literal["json", "text"] | None, BeforeValidator(_empty_is_none)] = Field(
        None, alias="LOG_FORMAT"
    )
    allowed_origins: CommaList = Field(default_factory=list, alias="ALLOWED_ORIGINS")
    max_request_bytes: PositiveInt = Field(1_048_576, alias="MAX_REQUEST_BYTES")
    request_body_timeout_seconds: PositiveInt = Field(10, alias="REQUEST_BODY_TIMEOUT_SECONDS")

    # --- database ------------------------------------------------------------------------
    database_url: OptionalStr = Field(None, alias="DATABASE_URL")
    instance_connection_name: OptionalStr = Field(None, alias="INSTANCE_CONNECTION_NAME")
    db_name: str = Field("raven", alias="DB_NAME")
    db_iam_user: OptionalStr = Field(None, alias="DB_IAM_USER")
    db_pool_size: PositiveInt = Field(4, alias="DB_POOL_SIZE")
    db_ip_type: Literal["PRIVATE", "PUBLIC", "PSC"] = Field("PRIVATE", alias="DB_IP_TYPE")
    db_acquire_timeout_seconds: PositiveInt = Field(10, alias="DB_ACQUIRE_TIMEOUT_SECONDS")

    # --- Clerk ---------------------------------------------------------------------------
    clerk_jwt_key: OptionalStr = Field(None, alias="CLERK_JWT_KEY")
    clerk_jwks_url: OptionalStr = Field(None, alias="CLERK_JWKS_URL")
    clerk_secret_key: OptionalStr = Field(None, alias="CLERK_SECRET_KEY")
    clerk_issuer: OptionalStr = Field(None, alias="CLERK_ISSUER")
    clerk_webhook_secret: OptionalStr = Field(None, alias="CLERK_WEBHOOK_SECRET")
    jwt_leeway_seconds: NonNegativeInt = Field(5, alias="JWT_LEEWAY_SECONDS")

    # --- Google Cloud --------------------------------------------------------------------
    project_id: OptionalStr = Field(None, alias="PROJECT_ID")
    location: str = Field("us-central1", alias="LOCATION")
    gcs_bucket_name: OptionalStr = Field(None, alias="GCS_BUCKET_NAME")

    # --- Gemini --------------------------------------------------------------------------
    raven_model: str = Field("gemini-2.5-flash", alias="RAVEN_MODEL")
    summary_model: str = Field("gemini-2.5-flash", alias="SUMMARY_MODEL")
    gemini_api_key: OptionalStr = Field(None, alias="GEMINI_API_KEY")
    gemini_base_url: OptionalStr = Field(None, alias="GEMINI_BASE_URL")
    thinking_budget: NonNegativeInt = Field(0, alias="THINKING_BUDGET")
    model_timeout_seconds: PositiveInt = Field(120, alias="MODEL_TIMEOUT_SECONDS")
    sse_heartbeat_seconds: Annotated[float, Field(gt=0)] = Field(
        15.0, alias="SSE_HEARTBEAT_SECONDS"
    )
    chat_stream_format: Literal["sse", "ndjson"] = Field("sse", alias="CHAT_STREAM_FORMAT")
    # Before the first chunk only: a busy or unavailable model call is retried with jittered
    # backoff for at most this long, then tried once on GEMINI_FALLBACK_MODEL if set.
    gemini_retry_budget_seconds: Annotated[float, Field(ge=0)] = Field(
        4.0, alias="GEMINI_RETRY_BUDGET_SECONDS"
    )
    gemini_fallback_model: OptionalStr = Field(None, alias="GEMINI_FALLBACK_MODEL")
    chat_max_request_bytes: PositiveInt = Field(8 * 1024 * 1024, alias="CHAT_MAX_REQUEST_BYTES")
    max_message_chars: PositiveInt = Field(32_000, alias="MAX_MESSAGE_CHARS")
    system_instruction_url: OptionalStr = Field(None, alias="SYSTEM_INSTRUCTION_URL")
    system_instruction_ttl_seconds: PositiveInt = Field(300, alias="SYSTEM_INSTRUCTION_TTL_SECONDS")

    # --- context window ----------------------------------------------------------------------
    chat_window_size: PositiveInt = Field(50, alias="CHAT_WINDOW_SIZE")
    max_context_tokens: PositiveInt = Field(32_000, alias="MAX_CONTEXT_TOKENS")
    target_window_tokens: PositiveInt = Field(8_000, alias="TARGET_WINDOW_TOKENS")

    # --- rolling summaries ---------------------------------------------------------------------
    summary_trigger_tokens: PositiveInt = Field(6_000, alias="SUMMARY_TRIGGER_TOKENS")
    summary_target_tokens: PositiveInt = Field(600, alias="SUMMARY_TARGET_TOKENS")
    summary_max_tokens: PositiveInt = Field(1_000, alias="SUMMARY_MAX_TOKENS")
    summary_min_messages: PositiveInt = Field(6, alias="SUMMARY_MIN_MESSAGES")
    summary_keep_recent: NonNegativeInt = Field(4, alias="SUMMARY_KEEP_RECENT")

    # --- media in the context ------------------------------------------------------------------
    media_include_only_current: bool = Field(False, alias="MEDIA_INCLUDE_ONLY_CURRENT")
    media_allow_history_if_referenced: bool = Field(True, alias="MEDIA_ALLOW_HISTORY_IF_REFERENCED")
    media_max_parts: PositiveInt = Field(8, alias="MEDIA_MAX_PARTS")
    media_max_images: NonNegativeInt = Field(6, alias="MEDIA_MAX_IMAGES")
    media_max_videos: NonNegativeInt = Field(1, alias="MEDIA_MAX_VIDEOS")

    # --- uploads -------------------------------------------------------------------------------
    upload_max_bytes: PositiveInt = Field(20 * 1024 * 1024, alias="UPLOAD_MAX_BYTES")
    upload_allowed_types: CommaList = Field(
        default_factory=lambda: list(DEFAULT_UPLOAD_TYPES), alias="UPLOAD_ALLOWED_TYPES"
    )
    upload_url_ttl_seconds: Annotated[int, Field(ge=60, le=604_800)] = Field(
        900, alias="UPLOAD_URL_TTL_SECONDS"
    )
    media_url_ttl_seconds: Annotated[int, Field(ge=60, le=604_800)] = Field(
        3600, alias="MEDIA_URL_TTL_SECONDS"
    )
    signer_service_account: OptionalStr = Field(None, alias="SIGNER_SERVICE_ACCOUNT")
    signer_key_file: OptionalStr = Field(None, alias="SIGNER_KEY_FILE")
    storage_emulator_host: OptionalStr = Field(None, alias="STORAGE_EMULATOR_HOST")
    storage_public_url: OptionalStr = Field(None, alias="STORAGE_PUBLIC_URL")

    # --- rate limits -----------------------------------------------------------------------------
    rate_limit_messages_per_minute: PositiveInt = Field(20, alias="RATE_LIMIT_MESSAGES_PER_MINUTE")
    rate_limit_tokens_per_day: PositiveInt = Field(2_000_000, alias="RATE_LIMIT_TOKENS_PER_DAY")
    # Plans: the token claim naming the caller's plan (a dotted path reaches into an object,
    # e.g. "metadata.plan"), each plan's limits, and the name of the plan without a claim.
    plan_claim: str = Field("plan", alias="PLAN_CLAIM", min_length=1)
    plan_limits: Annotated[dict[str, PlanLimits], BeforeValidator(_json_object)] = Field(
        default_factory=dict, alias="PLAN_LIMITS"
    )
    default_plan: str = Field("free", alias="DEFAULT_PLAN", min_length=1)

    # --- Cloud Tasks (summaries) ---------------------------------------------------------------
    tasks_queue: OptionalStr = Field(None, alias="TASKS_QUEUE")
    tasks_emulator_host: OptionalStr = Field(None, alias="TASKS_EMULATOR_HOST")
    summarize_url: OptionalStr = Field(None, alias="SUMMARIZE_URL")
    tasks_invoker_service_account: OptionalStr = Field(None, alias="TASKS_INVOKER_SERVICE_ACCOUNT")

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
        return [origin.rstrip("/") for origin in origins]

    @field_validator("clerk_webhook_secret")
    @classmethod
    def _webhook_secret_form(cls, secret: str | None) -> str | None:
        if secret is not None and not secret.startswith("whsec_"):
            raise ValueError("must be the signing secret Clerk shows, starting with whsec_")
        return secret

    @field_validator("storage_emulator_host")
    @classmethod
    def _emulator_is_url(cls, host: str | None) -> str | None:
        # google-cloud-storage reads the same variable and wants a scheme; accept host:port too.
        if host is not None and "://" not in host:
            host = f"http://{host}"
        return host.rstrip("/") if host else host

    @field_validator("storage_public_url")
    @classmethod
    def _public_url_form(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// base URL")
        return url.rstrip("/") if url else url

    @field_validator("upload_allowed_types")
    @classmethod
    def _verifiable_types(cls, types: list[str]) -> list[str]:
        # An upload's bytes are checked against its declared type before use (file_types):
        # a type with no known signature could never be accepted, so refuse it here.
        types = [content_type.strip().lower() for content_type in types]
        unknown = sorted(set(types) - CHECKED_TYPES)
        if unknown:
            raise ValueError(
                f"cannot verify uploads of {', '.join(unknown)}; "
                f"known types: {', '.join(sorted(CHECKED_TYPES))}"
            )
        return types

    @field_validator("database_url")
    @classmethod
    def _database_url_form(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return url

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.target_window_tokens > self.max_context_tokens:
            raise ValueError(
                "TARGET_WINDOW_TOKENS must not exceed MAX_CONTEXT_TOKENS "
                f"({self.target_window_tokens} > {self.max_context_tokens})"
            )
        if self.summary_target_tokens > self.summary_max_tokens:
            raise ValueError(
                "SUMMARY_TARGET_TOKENS must not exceed SUMMARY_MAX_TOKENS "
                f"({self.summary_target_tokens} > {self.summary_max_tokens})"
            )
        if self.environment == "production" and self.debug:
            raise ValueError("DEBUG must be off when ENVIRONMENT is production")
        if self.environment == "production" and self.log_format == "text":
            # Cloud Logging reads severity, trace and request fields from JSON lines only.
            raise ValueError("LOG_FORMAT must be json when ENVIRONMENT is production")
        if self.environment == "production" and self.signer_key_file:
            # Deployed, URLs are signed by IAM signBlob: no private key may exist anywhere.
            raise ValueError("SIGNER_KEY_FILE must be empty when ENVIRONMENT is production")
        if self.environment == "production" and self.storage_emulator_host:
            raise ValueError("STORAGE_EMULATOR_HOST must be empty when ENVIRONMENT is production")
        return self

    @property
    def readable_logs(self) -> bool:
        """Log lines for a person (``LOG_FORMAT=text``) rather than Cloud Logging JSON.

        By default only in development: deployed, Cloud Logging reads the JSON, and the tests
        read it too.
        """
        if self.log_format is not None:
            return self.log_format == "text"
        return self.environment == "development"

    @property
    def uses_vertex_ai(self) -> bool:
        """Gemini through Vertex AI (the service account's identity) unless an API key is set."""
        return self.gemini_api_key is None

    def require(self, *names: str) -> Settings:
        """Fail fast unless every named variable is set, for the function that needs them.

        Args:
            *names: environment variable names, e.g. ``"GCS_BUCKET_NAME"``.

        Raises:
            SettingsError: naming every variable that is unset.
        """
        by_alias = {field.alias: name for name, field in type(self).model_fields.items()}
        missing = [alias for alias in names if getattr(self, by_alias[alias]) in (None, [])]
        if missing:
            raise SettingsError(
                "Missing required environment variable(s): "
                + ", ".join(missing)
                + " (see .env.example)"
            )
        return self


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a mapping of environment variables (``os.environ`` unless given).

    Raises:
        SettingsError: with one line per invalid variable, each naming it.
    """
    source = os.environ if environ is None else environ
    try:
        settings = Settings.model_validate(dict(source))
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            variable = ".".join(str(part) for part in issue["loc"]) or "settings"
            problems.append(f"{variable}: {issue['msg']}")
        raise SettingsError("Invalid configuration:\n  " + "\n  ".join(problems)) from None
    if settings.database_url is None and settings.instance_connection_name is None:
        raise SettingsError(
            "Missing required environment variable: DATABASE_URL "
            "(or INSTANCE_CONNECTION_NAME with DB_IAM_USER on Cloud Run)"
        )
    if settings.instance_connection_name is not None and settings.db_iam_user is None:
        raise SettingsError(
            "Missing required environment variable: DB_IAM_USER "
            "(the IAM database user, needed with INSTANCE_CONNECTION_NAME)"
        )
    return settings


def function_target(environ: Mapping[str, str] | None = None) -> str | None:
    """The running function's entry point name, which the platform sets (not a setting).

    Cloud Run functions sets ``FUNCTION_TARGET`` on every instance
    (https://cloud.google.com/run/docs/configuring/services/overview-environment-variables);
    ``make dev`` sets it for each local function, as functions-framework also reads it.
    """
    source = os.environ if environ is None else environ
    return source.get("FUNCTION_TARGET") or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The instance's settings, validated on first use and cached for its lifetime."""
    return load_settings()
