"""Every resource, data source and ephemeral resource in terraform/ exists in its provider's schema,
with only arguments and nested blocks that the schema has.

No provider can be downloaded here, so the schema comes from tests/terraform_provider_schema.json,
which tools/provider_schema.py extracts from the cdktf npm packages (google 6.50.0, google-beta
6.47.0, random 3.7.2, time 0.13.1), keeping only the types terraform/ uses. The few paths newer
than those schemas are listed in NEWER_THAN_SCHEMA (tests/terraform_schema.py), each with the
provider release that added it; versions.tf requires at least those releases (tested).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.terraform_schema import KIND_KEYS, NEWER_THAN_SCHEMA, SCHEMA, SCHEMA_FILE

REPO = Path(__file__).resolve().parent.parent
TERRAFORM = REPO / "terraform"
TF_FILES = sorted(TERRAFORM.glob("*.tf"))

# Minimum provider versions NEWER_THAN_SCHEMA needs: versions.tf must not allow older ones.
MINIMUM_PROVIDER = {"google": (7, 21), "google-beta": (7, 21), "random": (3, 7)}

# Terraform's own arguments and blocks, valid in every resource, data or ephemeral block.
META_ARGUMENTS = {"count", "for_each", "provider", "depends_on"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}
BUILT_IN = {"terraform_data"}  # Terraform's own resource: no provider schema


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _check_body(body: dict[str, Any], node: dict[str, Any], where: str) -> list[Problem]:
    problems: list[Problem] = []
    arguments = set(node.get("arguments", []))
    blocks = node.get("blocks", {})
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if key == "dynamic":
            for entry in value:
                for label, dynamic in entry.items():
                    name = unquote(label)
                    if name not in blocks:
                        problems.append(Problem(where, f"unknown nested block {name!r} (dynamic)"))
                        continue
                    for content in dynamic.get("content", []):
                        problems += _check_body(content, blocks[name], f"{where}.{name}")
            continue
        is_block = (
            isinstance(value, list)
            and value
            and all(isinstance(item, dict) and item.get("__is_block__") for item in value)
        )
        if is_block:
            if key not in blocks:
                problems.append(Problem(where, f"unknown nested block {key!r}"))
                continue
            for item in value:
                problems += _check_body(item, blocks[key], f"{where}.{key}")
        elif key not in arguments:
            kind = "a nested block, written as an argument" if key in blocks else "unknown argument"
            problems.append(Problem(where, f"{kind} {key!r}"))
    return problems


def check_configuration(parsed: dict[str, Any], source: str) -> list[Problem]:
    """Problems of one parsed .tf file against the provider schemas."""
    problems: list[Problem] = []
    for kind, key in KIND_KEYS.items():
        for entry in parsed.get(kind, []):
            for raw_type, named in entry.items():
                type_ = unquote(raw_type)
                for raw_name, body in named.items():
                    where = f"{source}: {kind} {type_}.{unquote(raw_name)}"
                    provider = re.sub(r"^\$\{|\}$", "", unquote(str(body.get("provider", ""))))
                    provider = provider or type_.split("_", 1)[0]
                    if type_ in BUILT_IN:
                        continue  # built into Terraform
                    node = SCHEMA.get(provider, {}).get(key, {}).get(type_)
                    if node is None:
                        problems.append(Problem(where, f"unknown {kind} type for {provider}"))
                        continue
                    local = {k: v for k, v in body.items() if k not in META_ARGUMENTS}
                    local = {k: v for k, v in local.items() if k not in META_BLOCKS}
                    problems += _check_body(local, node, where)
    return problems


def problems_in(text: str, source: str = "snippet") -> list[str]:
    return [str(problem) for problem in check_configuration(hcl2.loads(text), source)]


# --- the configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=lambda path: path.name)
def test_every_type_argument_and_block_is_in_the_provider_schema(path: Path) -> None:
    with path.open() as handle:
        problems = problems_in(handle.read(), path.name)
    assert not problems, "\n".join(problems)


def test_the_schema_file_covers_exactly_the_types_used() -> None:
    """Regenerate with tools/provider_schema.py when a type is added or no longer used."""
    used: set[tuple[str, str]] = set()
    for path in TF_FILES:
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for kind, key in KIND_KEYS.items():
            for entry in parsed.get(kind, []):
                used |= {(key, unquote(type_)) for type_ in entry if unquote(type_) not in BUILT_IN}
    extracted = json.loads(SCHEMA_FILE.read_text())["providers"]
    in_file = {
        (key, type_)
        for provider in extracted.values()
        for key, types in provider.items()
        if isinstance(types, dict)
        for type_ in types
    }
    newer = {(KIND_KEYS[kind], type_) for (_, kind, type_, path) in NEWER_THAN_SCHEMA if not path}
    assert in_file == used - newer, (
        f"stale: {sorted(in_file - used)}; missing: {sorted(used - newer - in_file)}"
    )


def test_required_provider_versions_cover_the_newer_paths() -> None:
    with (TERRAFORM / "versions.tf").open() as handle:
        terraform = hcl2.load(handle)["terraform"][0]
    providers = terraform["required_providers"][0]
    for name, (major, minor) in MINIMUM_PROVIDER.items():
        constraint = unquote(providers[name]["version"])
        match = re.search(r">=\s*(\d+)\.(\d+)", constraint)
        assert match, f"{name}: no lower bound in {constraint!r}"
        assert (int(match.group(1)), int(match.group(2))) >= (major, minor), (
            f"{name} {constraint!r} allows releases without the paths in NEWER_THAN_SCHEMA"
        )
    for (provider, _kind, _type, _path), extra in NEWER_THAN_SCHEMA.items():
        name, release = extra["added_in"].split()
        assert name == provider
        floor = tuple(int(part) for part in release.split(".")[:2])
        assert MINIMUM_PROVIDER[provider] >= floor, (provider, release)


# --- the check itself ---------------------------------------------------------------------------


def test_a_misspelled_argument_fails() -> None:
    problems = problems_in(
        """
        resource "google_storage_bucket" "uploads" {
          name     = "b"
          locaton  = "US"
        }
        """
    )
    assert problems == [
        "snippet: resource google_storage_bucket.uploads: unknown argument 'locaton'"
    ]


def test_a_misspelled_nested_block_or_argument_inside_one_fails() -> None:
    problems = problems_in(
        """
        resource "google_cloudfunctions2_function" "f" {
          name = "f"
          build_config {
            runtime = "python311"
            source {
              storage_source {
                bucket = "b"
                objekt = "o"
              }
            }
          }
          service_conifg {
            timeout_seconds = 60
          }
          dynamic "secret_environment_variable" {
            for_each = {}
            content {}
          }
        }
        """
    )
    assert problems == [
        "snippet: resource google_cloudfunctions2_function.f.build_config.source.storage_source: "
        "unknown argument 'objekt'",
        "snippet: resource google_cloudfunctions2_function.f: unknown nested block "
        "'service_conifg'",
        "snippet: resource google_cloudfunctions2_function.f: unknown nested block "
        "'secret_environment_variable' (dynamic)",
    ]


def test_an_unknown_type_and_a_block_written_as_an_argument_fail() -> None:
    problems = problems_in(
        """
        resource "google_storage_buckets" "a" {
          name = "a"
        }
        data "google_projects_x" "p" {}
        resource "google_storage_bucket" "b" {
          name     = "b"
          location = "US"
          versioning = { enabled = true }
        }
        """
    )
    assert problems == [
        "snippet: resource google_storage_buckets.a: unknown resource type for google",
        "snippet: resource google_storage_bucket.b: a nested block, written as an argument "
        "'versioning'",
        "snippet: data google_projects_x.p: unknown data type for google",
    ]


def test_newer_paths_and_meta_arguments_pass() -> None:
    problems = problems_in(
        """
        resource "google_cloudfunctions2_function" "f" {
          for_each = {}
          name     = "f"
          service_config {
            direct_vpc_egress = "VPC_EGRESS_PRIVATE_RANGES_ONLY"
            direct_vpc_network_interface {
              network    = "n"
              subnetwork = "s"
            }
          }
          lifecycle {
            create_before_destroy = true
          }
          depends_on = []
        }
        ephemeral "random_password" "p" {
          length  = 32
          special = false
        }
        resource "terraform_data" "t" {
          input = 1
        }
        """
    )
    assert problems == []
