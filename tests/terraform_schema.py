"""The Terraform providers' schemas the tests check terraform/ against.

No provider can be downloaded here, so the schema comes from tests/terraform_provider_schema.json,
which tools/provider_schema.py extracts from the cdktf npm packages, plus the few paths newer than
those packages (NEWER_THAN_SCHEMA). tests/test_terraform_schema.py checks terraform/ against it;
tests/test_terraform.py reads which arguments are write-only from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parent / "terraform_provider_schema.json"

# Paths the extracted schemas are too old to have. Key: (provider, kind, type, dotted path of a
# block or argument; "" for the whole type). Value: the release that added it and where that is
# documented, and, for a block or type, its arguments.
NEWER_THAN_SCHEMA: dict[tuple[str, str, str, str], dict[str, Any]] = {
    # Direct VPC egress for Cloud Run functions. Google's page "Direct VPC egress" for Cloud Run
    # functions (2nd gen), Terraform section: "You must use Terraform version 7.21.0 or later"
    # (the google provider); it names the fields direct_vpc_network_interface.network,
    # .subnetwork and direct_vpc_egress (network tags are the interface's third field).
    ("google", "resource", "google_cloudfunctions2_function", "service_config.direct_vpc_egress"): {
        "added_in": "google 7.21.0",
    },
    (
        "google",
        "resource",
        "google_cloudfunctions2_function",
        "service_config.direct_vpc_network_interface",
    ): {
        "added_in": "google 7.21.0",
        "arguments": ["network", "subnetwork", "tags"],
    },
    # Ephemeral random_password: hashicorp/terraform-provider-random CHANGELOG.md, 3.7.0
    # (February 25, 2025): "ephemeral/random_password: New ephemeral resource that generates a
    # password string". cdktf packages carry no ephemeral resources at all. Its arguments are the
    # managed random_password's, without keepers (an ephemeral value is never stored to keep).
    ("random", "ephemeral", "random_password", ""): {
        "added_in": "random 3.7.0",
        "arguments": [
            "length",
            "lower",
            "min_lower",
            "min_numeric",
            "min_special",
            "min_upper",
            "numeric",
            "override_special",
            "special",
            "upper",
        ],
    },
}

KIND_KEYS = {"resource": "resources", "data": "data_sources", "ephemeral": "ephemeral_resources"}


def load_schema() -> dict[str, Any]:
    """The extracted schemas with NEWER_THAN_SCHEMA merged in."""
    schema = json.loads(SCHEMA_FILE.read_text())["providers"]
    for (provider, kind, type_, path), extra in NEWER_THAN_SCHEMA.items():
        types = schema.setdefault(provider, {}).setdefault(KIND_KEYS[kind], {})
        node = types.setdefault(type_, {"arguments": []})
        parts = path.split(".") if path else []
        for part in parts[:-1]:
            node = node["blocks"][part]
        if not parts:
            node["arguments"] = sorted(set(node["arguments"]) | set(extra["arguments"]))
        elif "arguments" in extra:
            node.setdefault("blocks", {})[parts[-1]] = {"arguments": extra["arguments"]}
        else:
            node["arguments"] = sorted({*node["arguments"], parts[-1]})
    return schema


SCHEMA = load_schema()
