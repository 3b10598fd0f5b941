"""Static checks of terraform/ against the code it deploys.

No Terraform binary or provider is needed: every .tf file is parsed with python-hcl2 and the
configuration is compared with the repository itself: the function folders, what each main.py
require()s from shared/settings.py, dev/bundle.py's archive rules. checkov, when its venv exists
(.venv-checkov, made from tools/requirements-checkov.txt), must report no failed check.

python-hcl2 8.x keeps HCL's quotes around strings ('"python311"'), wraps expressions in ${...}
('${each.key}'), quotes block labels, and renders any non-literal expression as normalized text.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

REPO = Path(__file__).resolve().parent.parent
TERRAFORM = REPO / "terraform"
FUNCTIONS = REPO / "functions"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dev import bundle  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.terraform_schema import SCHEMA  # noqa: E402

TF_FILES = sorted(TERRAFORM.glob("*.tf"))

# Environment variables Terraform sets that shared/settings.py does not read: functions-framework's.
RUNTIME_ONLY_ENV = {"THREADS", "WORKERS"}

# Settings that exist for local development and tests only, never set in a deployment, and why.
DEV_ONLY_SETTINGS = {
    "DEBUG": "settings refuse DEBUG with ENVIRONMENT=production",
    "LOG_FORMAT": "ENVIRONMENT=production means JSON, the only format settings accept there",
    "DATABASE_URL": "deployed, the Cloud SQL connector uses INSTANCE_CONNECTION_NAME, DB_IAM_USER",
    "TASKS_EMULATOR_HOST": "the local Cloud Tasks emulator",
    "GEMINI_BASE_URL": "the local Gemini stand-in",
    "SIGNER_KEY_FILE": (
        "a key file signs URLs locally; deployed, IAM signBlob signs as the function's own "
        "account (SIGNER_SERVICE_ACCOUNT), and settings refuse a key file in production"
    ),
    "STORAGE_EMULATOR_HOST": "the local Cloud Storage emulator; settings refuse it in production",
    "STORAGE_PUBLIC_URL": (
        "the local router's storage base URL; deployed, browsers use Google's endpoint, the default"
    ),
}


# --- reading the configuration -----------------------------------------------------------------


def unquote(value: Any) -> Any:
    """'"python311"' -> 'python311'; '${each.key}' -> 'each.key'; anything else unchanged."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
    return value


@cache
def parsed(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle)


@cache
def all_locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in TF_FILES:
        for block in parsed(path).get("locals", []):
            for name, value in block.items():
                if not name.startswith("__"):
                    assert name not in merged, f"local.{name} is defined twice"
                    merged[name] = value
    return merged


def blocks(kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource or data block: (type, name) -> body."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in TF_FILES:
        for entry in parsed(path).get(kind, []):
            for type_, named in entry.items():
                for name, body in named.items():
                    found[(unquote(type_), unquote(name))] = body
    return found


def resource(type_: str, name: str) -> dict[str, Any]:
    resources = blocks("resource")
    assert (type_, name) in resources, f"no resource {type_}.{name}"
    return resources[(type_, name)]


@cache
def variables() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in TF_FILES:
        for entry in parsed(path).get("variable", []):
            for name, body in entry.items():
                found[unquote(name)] = body
    return found


def strings(values: list[str]) -> list[str]:
    return [unquote(value) for value in values]


def literal_keys(value: Any) -> set[str]:
    assert isinstance(value, dict), f"expected a literal object, got {value!r}"
    return {key for key in value if not key.startswith("__")}


def without_comments(text: str) -> str:
    """HCL source without # and // comments (strings kept)."""
    out = []
    for line in text.splitlines():
        in_string = False
        cut = len(line)
        for index, char in enumerate(line):
            if char == '"' and (index == 0 or line[index - 1] != "\\"):
                in_string = not in_string
            elif not in_string and (char == "#" or line.startswith("//", index)):
                cut = index
                break
        out.append(line[:cut])
    return "\n".join(out)


def function_folders() -> set[str]:
    return {
        path.name
        for path in FUNCTIONS.iterdir()
        if path.is_dir() and not path.name.startswith((".", "_"))
    }


def function_defaults() -> dict[str, dict[str, Any]]:
    return all_locals()["function_defaults"]


def settings_aliases() -> set[str]:
    return {field.alias for field in Settings.model_fields.values() if field.alias}


def tuning_attributes() -> dict[str, str]:
    """var.tuning's attributes and their optional() types, from the type expression."""
    type_expression = variables()["tuning"]["type"]
    return dict(re.findall(r"(\w+)\s*=\s*optional\(([^()]*(?:\([^()]*\))?)\)", type_expression))


def shared_env_keys() -> set[str]:
    """Names local.shared_env may hold: its literal keys and every var.tuning attribute."""
    literal = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", all_locals()["shared_env"]))
    return literal | {name.upper() for name in tuning_attributes()}


def function_function_env_literal_keys() -> set[str]:
    """Keys set literally inside local.function_env's per-function block (DB_IAM_USER, ...)."""
    return set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", all_locals()["function_env"]))


def env_given_to(function: str) -> set[str]:
    """Every environment variable name Terraform gives the function (plain, not secret)."""
    env = set(literal_keys(all_locals()["common_env"]))
    env |= set(strings(all_locals()["tuning_read_by_all"]))
    env |= set(strings(all_locals()["function_env_keys"][function]))
    env |= function_function_env_literal_keys()
    env |= RUNTIME_ONLY_ENV
    return env


def secrets_given_to(function: str) -> set[str]:
    return {
        name
        for name, consumers in all_locals()["secret_consumers"].items()
        if function in strings(consumers)
    }


def _called_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _main_module(function: str) -> ast.Module | None:
    main = FUNCTIONS / function / "main.py"
    return ast.parse(main.read_text(encoding="utf-8")) if main.is_file() else None


# get_settings().require(*names), or shared.runtime.start_function(*names) which forwards to it.
REQUIRE_CALLS = {"require", "start_function"}

# load_settings() always needs the database: INSTANCE_CONNECTION_NAME and DB_IAM_USER when deployed.
ALWAYS_REQUIRED = {"INSTANCE_CONNECTION_NAME", "DB_IAM_USER"}


def required_by(function: str) -> set[str] | None:
    """Names passed to require(...)/start_function(...) in functions/<function>/main.py.

    None when main.py has no such call yet.
    """
    module = _main_module(function)
    if module is None:
        return None
    names: set[str] = set()
    found = False
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and _called_name(node) in REQUIRE_CALLS:
            found = True
            for argument in node.args:
                assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
                    f"functions/{function}/main.py: {_called_name(node)}() arguments must be "
                    "string literals so that tests/test_terraform.py can read them"
                )
                names.add(argument.value)
    return names | ALWAYS_REQUIRED if found else None


def authenticates_users(function: str) -> bool:
    """Whether the route table gives the function an endpoint with Clerk authentication."""
    from shared.routes import endpoints_of

    return any(endpoint.auth for endpoint in endpoints_of(function))


# --- syntax and hygiene --------------------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=lambda path: path.name)
def test_every_tf_file_parses(path: Path) -> None:
    assert isinstance(parsed(path), dict)


def test_the_expected_files_exist() -> None:
    expected = {
        "versions.tf",
        "variables.tf",
        "apis.tf",
        "iam.tf",
        "database.tf",
        "storage.tf",
        "secrets.tf",
        "tasks.tf",
        "functions.tf",
        "load_balancer.tf",
        "outputs.tf",
        "network.tf",
        "migrations.tf",
        "scheduler.tf",
    }
    assert expected <= {path.name for path in TF_FILES}
    for other in (
        "terraform.tfvars.example",
        "README.md",
        "migrations/migrate.sh",
    ):
        assert (TERRAFORM / other).is_file(), other


def test_providers_are_pinned() -> None:
    terraform = parsed(TERRAFORM / "versions.tf")["terraform"][0]
    # Write-only arguments need Terraform 1.11 (ephemeral variables and resources 1.10).
    assert unquote(terraform["required_version"]) == ">= 1.11"
    providers = terraform["required_providers"][0]
    assert literal_keys(providers) == {"google", "google-beta", "random", "time"}
    for name in ("google", "google-beta", "random", "time"):
        assert unquote(providers[name]["version"]), f"{name} has no version constraint"


def test_every_variable_is_typed_and_described() -> None:
    for name, body in variables().items():
        assert "type" in body, f"variable {name} has no type"
        assert unquote(body.get("description", "")).strip(), f"variable {name} has no description"


MOVED_BLOCK = re.compile(r"^moved \{\n  from = (\S+)\n  to   = (\S+)\n\}$", re.MULTILINE)


def test_moved_blocks_lead_from_a_resource_gone_to_one_defined() -> None:
    resources = {f"{type_}.{name}" for type_, name in blocks("resource")}
    moves = [move for path in TF_FILES for move in MOVED_BLOCK.findall(path.read_text())]
    assert moves, "monitoring.tf's alerts moved into one resource's map"
    assert len(moves) == sum(path.read_text().count("\nmoved {") for path in TF_FILES)
    for old, new in moves:
        assert old not in resources, old
        assert new.split("[", 1)[0] in resources, new


def test_references_resolve() -> None:
    """Every var.X is declared, every local.X defined, every resource and data source exists."""
    declared_variables = set(variables())
    defined_locals = set(all_locals())
    resources = set(blocks("resource"))
    data_sources = set(blocks("data"))
    resource_types = {type_ for type_, _ in resources}
    for path in TF_FILES:
        # A moved block's "from" names an address that is gone on purpose (checked below).
        text = MOVED_BLOCK.sub("", without_comments(path.read_text()))
        for name in re.findall(r"\bvar\.(\w+)", text):
            assert name in declared_variables, f"{path.name}: var.{name} is not declared"
        for name in re.findall(r"\blocal\.(\w+)", text):
            assert name in defined_locals, f"{path.name}: local.{name} is not defined"
        for type_, name in re.findall(r"\bdata\.(\w+)\.(\w+)", text):
            assert (type_, name) in data_sources, f"{path.name}: data.{type_}.{name} does not exist"
        for type_, name in re.findall(r"(?<![\w.\"])((?:google|random|archive)_\w+)\.(\w+)", text):
            if type_ in resource_types or type_.startswith(("google_", "random_")):
                assert (type_, name) in resources, f"{path.name}: {type_}.{name} does not exist"


def test_checkov_skips_carry_their_reason() -> None:
    skips = []
    for path in TERRAFORM.rglob("*"):
        if path.is_file() and ".terraform" not in path.parts:
            for line in path.read_text(errors="ignore").splitlines():
                if "checkov:skip=" in line:
                    match = re.search(r"#\s*checkov:skip=(CKV2?_\w+):(.*)$", line)
                    assert match, f"{path.name}: malformed skip: {line.strip()}"
                    assert len(match.group(2).strip()) >= 30, (
                        f"{path.name}: {match.group(1)} needs a real reason"
                    )
                    skips.append(match.group(1))
    assert skips, "expected the documented skips"


def test_iam_roles_say_why_and_no_basic_roles() -> None:
    for path in TF_FILES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r'"roles/', line):
                assert "#" in line.split('"roles/', 1)[1], (
                    f"{path.name}:{number}: say why this role: {line.strip()}"
                )
                assert not re.search(r'"roles/(owner|editor|viewer)"', line), (
                    f"{path.name}:{number}: basic role"
                )


# --- functions -------------------------------------------------------------------------------


def test_every_function_folder_is_deployed_and_nothing_else() -> None:
    deployed = set(function_defaults())
    assert deployed == function_folders()
    assert set(bundle.function_names()) <= deployed


def test_each_function_is_a_gen2_python311_function_named_after_its_folder() -> None:
    function = resource("google_cloudfunctions2_function", "function")
    assert unquote(function["for_each"]) == "local.functions"
    assert "local.function_defaults" in all_locals()["functions"], (
        "local.functions must cover every function"
    )
    build = function["build_config"][0]
    assert unquote(build["runtime"]) == "python311"
    # for_each over the folder names: the entry point is the folder's name.
    assert unquote(build["entry_point"]) == "each.key"
    source = build["source"][0]["storage_source"][0]
    assert unquote(source["object"]) == "google_storage_bucket_object.source[each.key].name"


def test_threads_equal_max_instance_request_concurrency() -> None:
    service = resource("google_cloudfunctions2_function", "function")["service_config"][0]
    concurrency = unquote(service["max_instance_request_concurrency"])
    match = re.search(r"\bTHREADS\s*=\s*tostring\(([^)]*)\)", service["environment_variables"])
    assert match, "THREADS must be set in the function's environment_variables"
    assert match.group(1).strip() == concurrency
    assert "THREADS" not in all_locals()["function_env"], (
        "THREADS must be set only next to the concurrency"
    )
    for name, defaults in function_defaults().items():
        assert defaults["concurrency"] >= 1, name
        assert float(unquote(defaults["cpu"])) >= 1 or defaults["concurrency"] == 1, name


def test_workers_follow_the_vcpus() -> None:
    """WORKERS is set next to THREADS; chat_stream runs one worker process per vCPU (one GIL
    each), and no function runs more workers than it has vCPUs."""
    service = resource("google_cloudfunctions2_function", "function")["service_config"][0]
    match = re.search(r"\bWORKERS\s*=\s*tostring\(([^)]*)\)", service["environment_variables"])
    assert match, "WORKERS must be set in the function's environment_variables"
    assert match.group(1).strip() == "each.value.workers"
    assert "WORKERS" not in all_locals()["function_env"]
    defaults = function_defaults()
    for name, sizing in defaults.items():
        cpus = float(unquote(sizing["cpu"]))
        assert 1 <= sizing["workers"] <= max(1, math.ceil(cpus)), name
    assert defaults["chat_stream"]["workers"] == float(unquote(defaults["chat_stream"]["cpu"])) > 1
    function = resource("google_cloudfunctions2_function", "function")
    conditions = [unquote(p["condition"]) for p in function["lifecycle"][0]["precondition"]]
    assert "each.value.workers <= max(1, ceil(tonumber(each.value.cpu)))" in conditions


def test_chat_stream_allows_long_answers() -> None:
    assert 600 <= function_defaults()["chat_stream"]["timeout_seconds"] <= 3600


@pytest.mark.parametrize("function", sorted(function_folders()))
def test_every_required_setting_is_provided(function: str) -> None:
    required = required_by(function)
    if required is None:
        pytest.skip(f"functions/{function}/main.py has no get_settings().require(...) call yet")
    provided_env = env_given_to(function)
    provided_secrets = secrets_given_to(function)
    missing = required - provided_env - provided_secrets
    assert not missing, f"{function} requires {sorted(missing)}, which Terraform does not give it"
    # A secret the function cannot start without must be one the deployment must have: a
    # validation of var.secret_versions requires it (and secrets.tf's precondition its value).
    validations = json.dumps(variables()["secret_versions"]["validation"])
    for name in sorted(required & provided_secrets):
        assert f'contains(keys(var.secret_versions), \\"{name}\\")' in validations, (
            f"{function} requires {name}, but var.secret_versions does not require it"
        )


@pytest.mark.parametrize("function", sorted(function_folders()))
def test_functions_that_authenticate_users_can_verify_clerk_tokens(function: str) -> None:
    env = env_given_to(function)
    if not authenticates_users(function):
        # No endpoint of it has auth (shared/routes.py): it verifies no session token, so it gets no
        # Clerk key (clerk_webhook's own secret is checked in the secrets test).
        assert not {"CLERK_JWT_KEY", "CLERK_SECRET_KEY"} & secrets_given_to(function), function
        assert not {"CLERK_ISSUER", "CLERK_JWKS_URL"} & env, function
        return
    assert "CLERK_ISSUER" in env, function
    # shared/auth.py: CLERK_JWT_KEY, else CLERK_JWKS_URL (Terraform defaults it from the issuer).
    assert "CLERK_JWKS_URL" in env and "CLERK_JWT_KEY" in secrets_given_to(function), function
    assert "ALLOWED_ORIGINS" in env, (
        f"{function} answers browsers: it needs ALLOWED_ORIGINS for CORS"
    )


def test_function_env_keys_name_known_values() -> None:
    known = shared_env_keys() | set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", all_locals()["own_env"]))
    for function, keys in all_locals()["function_env_keys"].items():
        assert function in function_defaults()
        for key in strings(keys) + strings(all_locals()["tuning_read_by_all"]):
            assert key in known, (
                f"{function}: {key} has no value in local.shared_env or local.own_env"
            )


def test_every_environment_variable_is_a_setting() -> None:
    """Terraform sets only names shared/settings.py reads: a typo would be silently ignored."""
    aliases = settings_aliases()
    for function in function_defaults():
        unknown = env_given_to(function) - aliases - RUNTIME_ONLY_ENV
        assert not unknown, (
            f"{function} is given {sorted(unknown)}, which shared/settings.py does not read"
        )


def test_every_setting_is_deployed_or_dev_only() -> None:
    deployed = set().union(*(env_given_to(function) for function in function_defaults()))
    deployed |= set(all_locals()["secret_consumers"])
    missing = settings_aliases() - deployed - set(DEV_ONLY_SETTINGS)
    assert not missing, f"settings with no way to set them in a deployment: {sorted(missing)}"
    assert set(DEV_ONLY_SETTINGS) <= settings_aliases(), "a dev-only setting that does not exist"
    leaked = deployed & set(DEV_ONLY_SETTINGS)
    assert not leaked, f"dev-only settings given to a deployment: {sorted(leaked)}"
    for name, reason in DEV_ONLY_SETTINGS.items():
        assert reason.strip(), f"say why {name} is dev-only"


def test_tuning_fields_are_settings_fields_of_the_same_type() -> None:
    fields = Settings.model_fields
    expected_types: dict[object, str] = {
        int: "number",
        float: "number",
        bool: "bool",
        list: "list(string)",
    }
    for name, type_ in tuning_attributes().items():
        assert name in fields and fields[name].alias == name.upper(), (
            f"tuning.{name} is not a Settings field"
        )
        annotation = fields[name].annotation
        origin: object = getattr(annotation, "__origin__", annotation)
        assert expected_types.get(origin) == type_, f"tuning.{name}: {type_} for {annotation}"


def test_public_functions_and_private_workers() -> None:
    defaults = function_defaults()
    assert defaults["summarize"]["public"] is False
    assert defaults["storage_sweep"]["public"] is False
    for name in ("chat_stream", "chats_crud", "upload_url", "clerk_webhook"):
        assert defaults[name]["public"] is True, name
    public = resource("google_cloud_run_v2_service_iam_member", "public")
    assert unquote(public["for_each"]) == "local.public_functions"
    assert (
        unquote(public["member"]) == "allUsers" and unquote(public["role"]) == "roles/run.invoker"
    )
    assert "config.public" in all_locals()["public_functions"]
    # summarize: only the tasks invoker may call it.
    invoker = resource("google_cloud_run_v2_service_iam_member", "tasks_invoke_summarize")
    assert unquote(invoker["name"]) == 'google_cloudfunctions2_function.function["summarize"].name'
    assert unquote(invoker["member"]) == "google_service_account.tasks_invoker.member"
    # storage_sweep: only the sweep scheduler may call it.
    sweep = resource("google_cloud_run_v2_service_iam_member", "scheduler_invokes_storage_sweep")
    assert (
        unquote(sweep["name"]) == 'google_cloudfunctions2_function.function["storage_sweep"].name'
    )
    assert unquote(sweep["role"]) == "roles/run.invoker"
    assert unquote(sweep["member"]) == "google_service_account.sweep_scheduler.member"
    for type_, name in blocks("resource"):
        if "allUsers" in json.dumps(blocks("resource")[(type_, name)]):
            assert (type_, name) == ("google_cloud_run_v2_service_iam_member", "public"), (
                type_,
                name,
            )


def test_functions_that_use_the_uploads_bucket_are_given_it() -> None:
    """shared.storage.media_storage() require()s GCS_BUCKET_NAME, also inside a handler."""
    for function in sorted(function_folders()):
        module = _main_module(function)
        assert module is not None, function
        uses_media_storage = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "shared.storage"
            and any(alias.name == "media_storage" for alias in node.names)
            for node in ast.walk(module)
        )
        if uses_media_storage:
            assert "GCS_BUCKET_NAME" in env_given_to(function), function
            assert function in literal_keys(all_locals()["uploads_bucket_roles"]), function


def test_bucket_roles_of_each_function() -> None:
    roles = {
        function: set(re.findall(r'"(roles/[\w.]+)"', expression))
        for function, expression in all_locals()["uploads_bucket_roles"].items()
    }
    assert set(roles) == set(function_defaults())
    # chat_stream reads an upload (get), promotes it (rewrite: create) and deletes the incoming or
    # refused object; chats_crud, clerk_webhook and storage_sweep delete objects; upload_url only
    # signs PUTs; summarize none.
    for function in ("chat_stream", "chats_crud", "clerk_webhook", "storage_sweep"):
        assert roles[function] == {"roles/storage.objectUser"}, function
    assert roles["upload_url"] == {"roles/storage.objectCreator"}
    assert roles["summarize"] == set()
    grant = resource("google_storage_bucket_iam_member", "uploads")
    assert unquote(grant["bucket"]) == "google_storage_bucket.uploads.name"
    # Vertex AI fetches gs:// media parts itself, as its service agent.
    vertex = resource("google_storage_bucket_iam_member", "uploads_vertex_ai")
    assert unquote(vertex["bucket"]) == "google_storage_bucket.uploads.name"
    assert unquote(vertex["role"]) == "roles/storage.objectViewer"
    assert "google_project_service_identity.vertex_ai[0].email" in unquote(vertex["member"])
    assert unquote(vertex["count"]) == "local.use_vertex_ai ? 1 : 0"
    # chat_stream reads SYSTEM_INSTRUCTION_URL (gs://<config bucket>/...) with its own account.
    config = resource("google_storage_bucket_iam_member", "config_chat_stream")
    assert unquote(config["bucket"]) == "google_storage_bucket.config.name"
    assert unquote(config["role"]) == "roles/storage.objectViewer"
    assert unquote(config["member"]) == 'google_service_account.function["chat_stream"].member'
    assert "SYSTEM_INSTRUCTION_URL" in env_given_to("chat_stream")
    assert (
        "SYSTEM_INSTRUCTION_URL" in all_locals()["shared_env"]
        and "gs://${google_storage_bucket.config.name}/" in all_locals()["shared_env"]
    )


def test_storage_sweep_is_called_every_ten_minutes_by_its_own_account() -> None:
    defaults = function_defaults()["storage_sweep"]
    assert 240 < defaults["timeout_seconds"] <= 600, "the sweep's budget is 240 s"
    assert 1 <= defaults["concurrency"] <= 2 and defaults["max_instances"] <= 3
    roles = unquote(all_locals()["function_project_roles"]["storage_sweep"])
    assert roles == "local.database_client_roles", "the database, and no Gemini"
    assert "cloudscheduler.googleapis.com" in all_locals()["apis"]

    job = resource("google_cloud_scheduler_job", "storage_sweep")
    assert unquote(job["schedule"]) == "var.storage_sweep_schedule"
    assert unquote(variables()["storage_sweep_schedule"]["default"]) == "*/10 * * * *"
    assert "local.functions.storage_sweep.timeout_seconds" in unquote(job["attempt_deadline"])
    target = job["http_target"][0]
    assert unquote(target["http_method"]) == "POST"
    assert unquote(target["uri"]) == "${local.storage_sweep_url}/"
    token = target["oidc_token"][0]
    assert unquote(token["service_account_email"]) == "google_service_account.sweep_scheduler.email"
    assert unquote(token["audience"]) == "local.storage_sweep_url"
    assert 'google_cloudfunctions2_function.function["storage_sweep"]' in unquote(
        all_locals()["storage_sweep_url"]
    )
    # The scheduler's account holds nothing but run.invoker on storage_sweep.
    holders = [
        key
        for key, body in blocks("resource").items()
        if "google_service_account.sweep_scheduler.member" in json.dumps(body)
    ]
    assert holders == [
        ("google_cloud_run_v2_service_iam_member", "scheduler_invokes_storage_sweep")
    ]


def test_chat_stream_concurrency_stays_in_the_measured_range() -> None:
    """README.md (chat_stream's concurrency): bench/chat_stream.py on 2 vCPU."""
    defaults = function_defaults()["chat_stream"]
    assert unquote(defaults["cpu"]) == "2"
    assert 50 <= defaults["concurrency"] <= 100


def test_summarize_url_is_the_summarize_service() -> None:
    url = unquote(all_locals()["summarize_url"])
    assert 'local.resource_names["summarize"]' in url and url.endswith(".run.app")


# --- source archives -----------------------------------------------------------------------------


def test_archive_patterns_match_dev_bundle() -> None:
    local = all_locals()
    assert tuple(strings(local["archive_function_patterns"])) == bundle.FUNCTION_PATTERNS
    assert tuple(strings(local["archive_shared_patterns"])) == bundle.SHARED_PATTERNS
    assert not blocks("data").get(("archive_file", "source")), "Terraform no longer zips"


@pytest.mark.parametrize("function", bundle.function_names())
def test_archives_hold_only_the_allow_list(function: str, tmp_path: Path) -> None:
    """A stray file in a function folder is never shipped; the zip is the same on every build."""
    manifest = bundle.bundle_manifest(function)
    for archive_path in manifest:
        assert archive_path in {"main.py", "requirements.txt"} or (
            archive_path.startswith("shared/")
            and (archive_path.endswith(".py") or archive_path == "shared/system_instruction.md")
        ), archive_path
    assert "main.py" in manifest and "requirements.txt" in manifest
    first = bundle.write_archive(function, tmp_path / "a" / f"{function}.zip")
    second = bundle.write_archive(function, tmp_path / "b" / f"{function}.zip")
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a" / f"{function}.zip.sha256").read_text().strip() == (
        bundle.source_hash(function)
    )


def test_terraform_hashes_the_archives_like_dev_bundle(tmp_path: Path) -> None:
    """terraform/archives.tf, evaluated by terraform console, gives dev/bundle.py's hashes.

    archives.tf has only locals and needs no provider: it is copied beside a stub that names the
    functions, with functions/ and shared/ linked in, where `terraform console` evaluates it.
    """
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary on PATH: the hash comparison needs `terraform console`")
    module = tmp_path / "terraform"
    module.mkdir()
    (tmp_path / "functions").symlink_to(FUNCTIONS)
    (tmp_path / "shared").symlink_to(REPO / "shared")
    shutil.copy(TERRAFORM / "archives.tf", module / "archives.tf")
    names = ", ".join(f"{name} = {{}}" for name in bundle.function_names())
    (module / "stub.tf").write_text(f"locals {{\n  function_defaults = {{ {names} }}\n}}\n")
    result = subprocess.run(
        [terraform, "console"],
        input="jsonencode(local.source_hash)\n",
        capture_output=True,
        text=True,
        cwd=module,
        timeout=120,
        env={**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr
    hashes = json.loads(json.loads(result.stdout.strip().splitlines()[-1]))
    assert hashes == {name: bundle.source_hash(name) for name in bundle.function_names()}


def test_the_uploaded_object_is_named_by_the_planned_hash_and_checked() -> None:
    obj = resource("google_storage_bucket_object", "source")
    assert unquote(obj["name"]) == "functions/${each.key}/${local.source_hash[each.key]}.zip"
    assert unquote(obj["source"]) == "${path.module}/.build/${each.key}.zip"
    condition = unquote(obj["lifecycle"][0]["precondition"][0]["condition"])
    assert (
        ".build/${each.key}.zip.sha256" in condition and "local.source_hash[each.key]" in condition
    )
    assert "make archives" in unquote(obj["lifecycle"][0]["precondition"][0]["error_message"])
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^archives:.*\n\t\$\(PY\) tools/build_function_archives\.py$", makefile, re.M)


# --- secrets ---------------------------------------------------------------------------------


def test_every_secret_exists_and_is_granted_only_to_its_readers() -> None:
    local = all_locals()
    consumers = {name: set(strings(readers)) for name, readers in local["secret_consumers"].items()}
    assert set(consumers) == literal_keys(local["secret_values"])
    for name, readers in consumers.items():
        assert readers <= set(function_defaults()), name
    assert set(consumers) & settings_aliases() == set(consumers), (
        "secret names must be settings aliases"
    )
    assert consumers["CLERK_WEBHOOK_SECRET"] == {"clerk_webhook"}

    secret = resource("google_secret_manager_secret", "secret")
    assert unquote(secret["for_each"]) == "local.secrets"
    assert "keys(var.secret_versions)" in local["secrets"], "an ephemeral value decides nothing"
    version = resource("google_secret_manager_secret_version", "secret")
    assert unquote(version["secret_data_wo"]) == "local.secret_values[each.key]"
    assert unquote(version["secret_data_wo_version"]) == "var.secret_versions[each.key]"
    assert "secret_data" not in version
    # Rotation: the new version exists before the old one goes, and the functions move in between.
    assert version["lifecycle"][0]["create_before_destroy"] is True

    grant = resource("google_secret_manager_secret_iam_member", "function")
    assert unquote(grant["for_each"]) == "local.secret_grants"
    assert (
        unquote(grant["secret_id"]) == "google_secret_manager_secret.secret[each.value.secret].id"
    )
    assert unquote(grant["member"]) == "google_service_account.function[each.value.function].member"
    assert unquote(grant["role"]) == "roles/secretmanager.secretAccessor"
    assert "local.secret_consumers" in local["secret_grants"]

    # The function receives exactly the secrets it may read, as secret environment variables.
    service = resource("google_cloudfunctions2_function", "function")["service_config"][0]
    secret_env = service["dynamic"][0]['"secret_environment_variables"']
    assert unquote(secret_env["for_each"]) == "local.function_secrets[each.key]"
    assert "contains(consumers, function)" in local["function_secrets"]
    assert "local.secret_consumers" in local["function_secrets"]
    content = secret_env["content"][0]
    assert unquote(content["secret"]).startswith("google_secret_manager_secret.secret[")

    # No other grant reaches these secrets: nothing else holds a Secret Manager role.
    for (type_, name), body in blocks("resource").items():
        if "roles/secretmanager" in json.dumps(body):
            assert (type_, name) in {
                ("google_secret_manager_secret_iam_member", "function"),
                ("google_secret_manager_secret_iam_member", "migrate_reads_password"),
            }, (type_, name)


def test_secret_values_never_reach_plain_env_or_outputs() -> None:
    sensitive = {name for name, body in variables().items() if body.get("sensitive") is True}
    assert {
        "clerk_webhook_secret",
        "clerk_secret_key",
        "clerk_jwt_key",
        "gemini_api_key",
    } <= sensitive
    for path in TF_FILES:
        if path.name == "variables.tf":
            continue
        text = without_comments(path.read_text())
        for match in re.finditer(r"var\.(\w+)", text):
            if match.group(1) not in sensitive:
                continue
            before = text[max(0, match.start() - 20) : match.start()]
            after = text[match.end() : match.end() + 9]
            in_secret_values = path.name == "secrets.tf" and re.search(
                rf"\b[A-Z_]+\s*=\s*var\.{match.group(1)}\b", text[match.start() - 40 : match.end()]
            )
            only_nullness = before.endswith("nonsensitive(") and re.match(r"\s*[!=]= null\)", after)
            assert in_secret_values or only_nullness, (
                f"{path.name}: var.{match.group(1)} used outside secrets"
            )
    outputs = without_comments((TERRAFORM / "outputs.tf").read_text())
    for forbidden in (
        "secret_data",
        "random_password",
        "google_secret_manager_secret_version",
        "sensitive",
    ):
        assert forbidden not in outputs


# --- data ------------------------------------------------------------------------------------


def test_database() -> None:
    instance = resource("google_sql_database_instance", "main")
    assert unquote(instance["database_version"]) == "POSTGRES_16"
    assert unquote(instance["deletion_protection"]) == "var.deletion_protection"
    assert variables()["deletion_protection"]["default"] is True
    settings = instance["settings"][0]
    ip = settings["ip_configuration"][0]
    assert unquote(ip["ipv4_enabled"]) == "var.database_public_ip"
    assert variables()["database_public_ip"]["default"] is False
    assert "authorized_networks" not in ip
    backups = settings["backup_configuration"][0]
    assert backups["enabled"] is True and backups["point_in_time_recovery_enabled"] is True
    flags = {unquote(flag["name"]): unquote(flag["value"]) for flag in settings["database_flags"]}
    assert flags["cloudsql.iam_authentication"] == "on"
    # A ceiling, not the sizing: resizing the functions never restarts the database.
    assert flags["max_connections"] == "tostring(var.database_max_connections)"
    assert "log_hostname" not in flags, "a reverse DNS lookup per connection"
    assert unquote(resource("google_sql_database", "raven")["name"]) == "raven"

    users = resource("google_sql_user", "function")
    assert unquote(users["for_each"]) == "local.functions"
    assert unquote(users["type"]) == "CLOUD_IAM_SERVICE_ACCOUNT"
    assert "password" not in users
    assert unquote(users["name"]) == (
        'trimsuffix(google_service_account.function[each.key].email, ".gserviceaccount.com")'
    )
    assert (
        'trimsuffix(google_service_account.function[function].email, ".gserviceaccount.com")'
        in (all_locals()["function_env"])
    ), "DB_IAM_USER must be the same name as the IAM database user"


def test_max_connections_cover_every_pool() -> None:
    local = all_locals()
    assert (
        "function.max_instances * function.workers * function.db_pool_size"
        in local["database_connections_needed"]
    )
    assert "local.functions" in local["database_connections_needed"]
    assert "var.database_connection_headroom" in local["database_connections_needed"]
    assert "DB_POOL_SIZE = tostring(config.db_pool_size)" in local["function_env"]
    instance = resource("google_sql_database_instance", "main")
    conditions = [unquote(p["condition"]) for p in instance["lifecycle"][0]["precondition"]]
    assert "local.database_connections_needed <= var.database_max_connections" in conditions
    needed = sum(
        d["max_instances"] * d["workers"] * d["db_pool_size"] for d in function_defaults().values()
    )
    needed += variables()["database_connection_headroom"]["default"]
    assert needed <= variables()["database_max_connections"]["default"], (
        "the default sizing must fit under the default ceiling"
    )


def test_every_function_service_account_may_use_the_database() -> None:
    roles = all_locals()["database_client_roles"]
    assert "roles/cloudsql.client" in roles and "roles/cloudsql.instanceUser" in roles
    for function in function_defaults():
        assert function in all_locals()["function_project_roles"], function


def test_buckets_are_private_and_uploads_have_cors_and_cleanup() -> None:
    for name in ("uploads", "sources", "config"):
        bucket = resource("google_storage_bucket", name)
        assert bucket["uniform_bucket_level_access"] is True, name
        assert unquote(bucket["public_access_prevention"]) == "enforced", name
    uploads = resource("google_storage_bucket", "uploads")
    cors = uploads["cors"][0]
    assert unquote(cors["origin"]) == "var.allowed_origins"
    assert {"PUT", "GET"} <= set(strings(cors["method"]))
    # What a signed PUT may carry (the plain one: Content-Type only; bindSize adds the range),
    # exactly what the local router's preflight allows.
    from dev.router import STORAGE_CORS_HEADERS

    headers = set(strings(cors["response_header"]))
    assert headers == {h.strip() for h in STORAGE_CORS_HEADERS.split(",")}
    assert "x-goog-custom-time" not in headers
    rules = [rule["condition"][0] for rule in uploads["lifecycle_rule"]]
    cleanup = [rule for rule in rules if "matches_prefix" in rule]
    # Unchecked uploads (never used in a message) go after a day; checked ones under uploads/
    # are never touched by a rule.
    assert len(cleanup) == 1 and strings(cleanup[0]["matches_prefix"]) == ["incoming/"]
    assert unquote(cleanup[0]["age"]) == "var.unreferenced_upload_days"
    assert "custom_time_before" not in cleanup[0]
    assert all("uploads/" not in strings(rule.get("matches_prefix", [])) for rule in rules)


def test_system_instruction_has_only_the_user_name_placeholder() -> None:
    text = (REPO / "shared" / "system_instruction.md").read_text(encoding="utf-8")
    assert "Raven" in text and "{user_name}" in text
    assert set(re.findall(r"\{[^{}]*\}", text)) == {"{user_name}"}
    assert text.count("{") == text.count("{user_name}") == text.count("}")


def test_one_system_instruction_file() -> None:
    """The config bucket's object is the very file bundled as the functions' default: one text."""
    obj = resource("google_storage_bucket_object", "system_instruction")
    assert unquote(obj["source"]) == "${path.module}/../shared/system_instruction.md"
    copies = [
        path.relative_to(REPO).as_posix()
        for folder in ("shared", "functions", "terraform", "dev", "docs", "tools", "migrations")
        for path in (REPO / folder).rglob("system_instruction*.md")
    ]
    assert copies == ["shared/system_instruction.md"]


# --- tasks, load balancer, outputs, example ------------------------------------------------------


def test_tasks_queue_retries_and_rate_limits() -> None:
    queue = resource("google_cloud_tasks_queue", "summaries")
    assert queue["rate_limits"][0]["max_dispatches_per_second"]
    retry = queue["retry_config"][0]
    assert {"max_attempts", "min_backoff", "max_backoff", "max_doublings"} <= set(retry)
    enqueuer = resource("google_cloud_tasks_queue_iam_member", "chat_stream_enqueuer")
    assert unquote(enqueuer["role"]) == "roles/cloudtasks.enqueuer"
    acts_as = resource("google_service_account_iam_member", "chat_stream_acts_as_invoker")
    assert unquote(acts_as["service_account_id"]) == "google_service_account.tasks_invoker.name"
    assert unquote(acts_as["role"]) == "roles/iam.serviceAccountUser"


def test_load_balancer_serves_every_contract_path() -> None:
    # The URL map's path rules are the route table's (shared/routes.py), through the JSON
    # file `make routes` writes (tests/test_routes.py checks it is current).
    assert all_locals()["load_balancer_routes"] == (
        '${jsondecode(file("${path.module}/load_balancer_routes.json"))}'
    )
    routes = {
        name: set(paths)
        for name, paths in json.loads((TERRAFORM / "load_balancer_routes.json").read_text()).items()
    }
    assert routes == {
        "chat_stream": {
            "/chat",
            "/api/chats/*/messages/*/stream",
            "/api/chats/*/messages/*/stop",
        },
        "chats_crud": {"/api/chats", "/api/chats/*", "/api/usage"},
        "upload_url": {"/api/upload-url"},
        "clerk_webhook": {"/clerk-webhook"},
    }
    # The local router maps the same paths to the same functions.
    from dev.router import CONTRACT_ROUTES

    local: dict[str, set[str]] = {}
    for path, function in CONTRACT_ROUTES.items():
        local.setdefault(function, set()).add(re.sub(r"<(?:path:)?\w+>", "*", path))
    assert local == routes
    assert variables()["enable_load_balancer"]["default"] is False


def test_outputs() -> None:
    outputs = set()
    for entry in parsed(TERRAFORM / "outputs.tf")["output"]:
        outputs |= {unquote(name) for name in entry}
    assert {
        "function_urls",
        "uploads_bucket",
        "sources_bucket",
        "config_bucket",
        "tasks_queue",
        "instance_connection_name",
        "backend_url",
        "clerk_webhook_url",
        "project_id",
        "region",
        "migrations_job",
        "images_repository",
        "build_service_account",
        "cloudbuild_staging_dir",
    } <= outputs


def test_tfvars_example_sets_every_required_variable() -> None:
    example = hcl2.load((TERRAFORM / "terraform.tfvars.example").open())
    required = {name for name, body in variables().items() if "default" not in body}
    assert required <= set(example), (
        f"terraform.tfvars.example misses {sorted(required - set(example))}"
    )


def test_migrate_script_reads_existing_outputs() -> None:
    script = (TERRAFORM / "migrations" / "migrate.sh").read_text()
    outputs = set()
    for entry in parsed(TERRAFORM / "outputs.tf")["output"]:
        outputs |= {unquote(name) for name in entry}
    for name in re.findall(r"\$\(output (\w+)\)", script):
        assert name in outputs, name


def test_migration_grants_quote_iam_user_names() -> None:
    sys.path.insert(0, str(TERRAFORM / "migrations"))
    try:
        import run_migrations
    finally:
        sys.path.remove(str(TERRAFORM / "migrations"))
    statements = run_migrations.grant_statements("raven", ["raven-chat-stream@p.iam"])
    assert statements[-1] == 'GRANT "raven_app" TO "raven-chat-stream@p.iam"'
    assert any("ALTER DEFAULT PRIVILEGES" in statement for statement in statements)
    url = run_migrations.database_url("raven_migrator", "a/b@c", "raven")
    assert url == "postgresql://raven_migrator:a%2Fb%40c@127.0.0.1:5432/raven"


# --- checkov -----------------------------------------------------------------------------------


def test_checkov_reports_no_failed_check() -> None:
    if not CHECKOV.exists():
        pytest.skip(
            "checkov is not installed: python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install --require-hashes -r tools/requirements-checkov.txt"
        )
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(TERRAFORM),
            "--quiet",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    for report in reports:
        if "summary" not in report:
            continue
        summary = report["summary"]
        failed = [
            f"{check['check_id']} {check['resource']}: {check['check_name']}"
            for check in report["results"].get("failed_checks", [])
        ]
        assert summary["failed"] == 0, "\n".join(failed)
        assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")


# --- every setting given to a function is read by it -------------------------------------------


def _module_file(name: str) -> Path | None:
    path = REPO / (name.replace(".", "/") + ".py")
    if path.is_file():
        return path
    package = REPO / name.replace(".", "/") / "__init__.py"
    return package if package.is_file() else None


def archive_modules(function: str) -> list[Path]:
    """main.py and every shared/ module it imports, directly or not (lazy imports included)."""
    seen: list[Path] = []
    todo = [FUNCTIONS / function / "main.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative imports exist only inside shared/
                    base = "shared" + (f".{base}" if base else "")
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for name in names:
                module = _module_file(name) if name.startswith("shared") else None
                if module is not None:
                    todo.append(module)
    return seen


def settings_read_by(function: str) -> set[str]:
    """Aliases of the Settings fields that the function's code accesses (settings.<field>).

    shared/settings.py is in every function's archive, so what its own validators read at start
    counts as read by every function.
    """
    fields = {name: field.alias or name.upper() for name, field in Settings.model_fields.items()}
    accessed: set[str] = set()
    for path in archive_modules(function):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in fields:
                accessed.add(fields[node.attr])
    return accessed


@pytest.mark.parametrize("function", sorted(function_folders()))
def test_every_variable_given_to_a_function_is_read_by_it(function: str) -> None:
    """The reverse of test_every_required_setting_is_provided: nothing is given that is unread."""
    given = (env_given_to(function) | secrets_given_to(function)) - RUNTIME_ONLY_ENV
    unread = given - settings_read_by(function)
    assert not unread, f"{function} is given {sorted(unread)}, which its code never reads"


def test_every_tuning_setting_reaches_every_function_that_reads_it() -> None:
    tuning = {name.upper() for name in tuning_attributes()}
    for function in sorted(function_folders()):
        missing = (settings_read_by(function) & tuning) - env_given_to(function)
        assert not missing, f"{function} reads {sorted(missing)}, which var.tuning never gives it"


def test_reads_are_found_through_imports() -> None:
    """The analysis itself: chat_stream reaches shared/tasks.py (summaries) through its imports."""
    modules = {path.relative_to(REPO).as_posix() for path in archive_modules("chat_stream")}
    assert {"functions/chat_stream/main.py", "shared/settings.py", "shared/tasks.py"} <= modules
    assert "SUMMARIZE_URL" in settings_read_by("chat_stream")
    assert "SUMMARY_MODEL" not in settings_read_by("chat_stream")
    assert "TASKS_INVOKER_SERVICE_ACCOUNT" not in settings_read_by("summarize")


# --- no secret in the state ----------------------------------------------------------------------

REFERENCE = re.compile(r"\b(var|local|ephemeral)\.(\w+)(?:\.(\w+))?")


def _references(value: Any) -> set[str]:
    """var.x, local.x and ephemeral.<type>.<name> referenced anywhere in an HCL value."""
    found = set()
    for kind, first, second in REFERENCE.findall(json.dumps(value)):
        found.add(f"{kind}.{first}.{second}" if kind == "ephemeral" else f"{kind}.{first}")
    return found


def secret_sources(parsed_files: list[dict[str, Any]]) -> set[str]:
    """Every name whose value is secret: sensitive or ephemeral variables, ephemeral resources,
    and the locals computed from any of them (followed until nothing changes)."""
    tainted: set[str] = set()
    local_values: dict[str, Any] = {}
    for parsed_file in parsed_files:
        for entry in parsed_file.get("variable", []):
            for name, body in entry.items():
                if body.get("sensitive") is True or body.get("ephemeral") is True:
                    tainted.add(f"var.{unquote(name)}")
        for entry in parsed_file.get("ephemeral", []):
            for type_, named in entry.items():
                tainted |= {f"ephemeral.{unquote(type_)}.{unquote(name)}" for name in named}
        for block in parsed_file.get("locals", []):
            local_values |= {f"local.{k}": v for k, v in block.items() if not k.startswith("__")}
    changed = True
    while changed:
        changed = False
        for name, value in local_values.items():
            if name not in tainted and _references(value) & tainted:
                tainted.add(name)
                changed = True
    return tainted


def _stored_arguments(
    body: dict[str, Any], node: dict[str, Any], where: str
) -> list[tuple[str, Any]]:
    """(where, value) of every argument of a block that the state stores: all but write-only ones
    and lifecycle conditions (evaluated, never stored)."""
    found: list[tuple[str, Any]] = []
    write_only = set(node.get("write_only", []))
    blocks_ = node.get("blocks", {})
    for key, value in body.items():
        if key.startswith("__") or key in {"lifecycle", "depends_on", "provider"}:
            continue
        if key == "dynamic":
            for entry in value:
                for label, dynamic in entry.items():
                    name = unquote(label)
                    found.append((f"{where}.{name}.for_each", dynamic.get("for_each")))
                    for content in dynamic.get("content", []):
                        found += _stored_arguments(
                            content, blocks_.get(name, {}), f"{where}.{name}"
                        )
            continue
        if (
            isinstance(value, list)
            and value
            and all(isinstance(item, dict) and item.get("__is_block__") for item in value)
        ):
            for item in value:
                found += _stored_arguments(item, blocks_.get(key, {}), f"{where}.{key}")
        elif key not in write_only:
            found.append((f"{where}.{key}", value))
    return found


def secrets_reaching_state(parsed_files: list[dict[str, Any]]) -> list[str]:
    """Where a secret value reaches something Terraform stores: a resource or data source argument
    that is not write-only, count/for_each, or an output."""
    tainted = secret_sources(parsed_files)
    leaks: list[str] = []
    for parsed_file in parsed_files:
        for kind in ("resource", "data"):
            for entry in parsed_file.get(kind, []):
                for raw_type, named in entry.items():
                    type_ = unquote(raw_type)
                    provider = type_.split("_", 1)[0]
                    key = "resources" if kind == "resource" else "data_sources"
                    node = SCHEMA.get(provider, {}).get(key, {}).get(type_, {})
                    for raw_name, body in named.items():
                        where = f"{type_}.{unquote(raw_name)}"
                        for location, value in _stored_arguments(body, node, where):
                            secret = _references(value) & tainted
                            if secret:
                                leaks.append(f"{location} <- {', '.join(sorted(secret))}")
        for entry in parsed_file.get("output", []):
            for name, body in entry.items():
                secret = _references(body.get("value")) & tainted
                if secret:
                    leaks.append(f"output {unquote(name)} <- {', '.join(sorted(secret))}")
    return leaks


def test_no_secret_reaches_the_state() -> None:
    """Sensitive variables and generated passwords reach only write-only arguments."""
    parsed_files = [parsed(path) for path in TF_FILES]
    leaks = secrets_reaching_state(parsed_files)
    assert not leaks, "\n".join(leaks)
    tainted = secret_sources(parsed_files)
    # The secrets really are tracked: the four values, the generated password, and the local.
    assert {
        "var.clerk_webhook_secret",
        "var.clerk_secret_key",
        "var.clerk_jwt_key",
        "var.gemini_api_key",
        "ephemeral.random_password.migrator",
        "local.secret_values",
    } <= tainted
    # Every secret variable is ephemeral (never in the plan either), and no managed resource
    # generates a password or key into the state.
    for name, body in variables().items():
        if body.get("sensitive") is True:
            assert body.get("ephemeral") is True, f"var.{name} is sensitive but not ephemeral"
    generated = {
        "random_password",
        "random_string",
        "tls_private_key",
        "google_service_account_key",
    }
    assert not {type_ for type_, _ in blocks("resource")} & generated


def test_the_state_check_finds_a_leak() -> None:
    """The walker itself, on snippets: a secret in a stored argument, a local, an output."""
    leaky = hcl2.loads(
        """
        variable "token" {
          type      = string
          sensitive = true
        }
        ephemeral "random_password" "p" {
          length = 16
        }
        locals {
          values = { TOKEN = var.token }
        }
        resource "google_secret_manager_secret_version" "a" {
          secret      = "s"
          secret_data = local.values["TOKEN"]
        }
        resource "google_sql_user" "u" {
          instance    = "i"
          name        = "n"
          password_wo = ephemeral.random_password.p.result
          password    = ephemeral.random_password.p.result
        }
        resource "google_secret_manager_secret_version" "ok" {
          secret                 = "s"
          secret_data_wo         = var.token
          secret_data_wo_version = 1
          lifecycle {
            precondition {
              condition     = var.token != null
              error_message = "needed"
            }
          }
        }
        output "o" {
          value = var.token
        }
        """
    )
    assert secrets_reaching_state([leaky]) == [
        "google_secret_manager_secret_version.a.secret_data <- local.values",
        "google_sql_user.u.password <- ephemeral.random_password.p",
        "output o <- var.token",
    ]


# --- migrations build context and operations -----------------------------------------


def test_migrations_build_context_holds_only_the_allow_list(tmp_path: Path) -> None:
    """migrate.sh uploads a context it assembles, never the checkout (tfvars, .data/, venvs)."""
    context = tmp_path / "context"
    subprocess.run(
        ["bash", str(TERRAFORM / "migrations" / "migrate.sh"), "--context-only", str(context)],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    files = {path.relative_to(context).as_posix() for path in context.rglob("*") if path.is_file()}
    assert {
        "Dockerfile",
        "cloudbuild.yaml",
        "requirements.txt",
        "app/alembic.ini",
        "app/migrations/env.py",
        "app/shared/settings.py",
        "app/terraform/migrations/run_migrations.py",
    } <= files
    for name in files:
        assert name in {"Dockerfile", "cloudbuild.yaml", "requirements.txt", "app/alembic.ini"} or (
            name.startswith(("app/migrations/", "app/shared/", "app/terraform/migrations/"))
            and name.endswith((".py", ".mako", "system_instruction.md"))
        ), name
    assert not any("__pycache__" in name or "tfvars" in name for name in files)
    requirements = (context / "requirements.txt").read_text()
    assert re.search(r"^alembic==", requirements, re.M) and re.search(
        r"^pg8000==", requirements, re.M
    )
    dockerfile = (TERRAFORM / "migrations" / "Dockerfile").read_text()
    assert "COPY . ." not in dockerfile and "COPY app/ ./" in dockerfile


def test_readme_has_the_operations_section() -> None:
    readme = (TERRAFORM / "README.md").read_text()
    operations = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    for heading in ("Rotate a secret", "Resize", "Change domain", "Destroy and re-create"):
        assert f"### {heading}" in operations, heading
