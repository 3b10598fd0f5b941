"""Extract the provider schema of the Terraform types terraform/ uses, as compact JSON.

The google provider's schema cannot be downloaded on these machines (no provider registry), but the
npm packages ``@cdktf/provider-google``, ``@cdktf/provider-google-beta``, ``@cdktf/provider-random``
and ``@cdktf/provider-time`` carry it in machine-readable form: their ``.jsii`` assembly describes
every resource and data source as a ``<Type>Config`` struct whose properties are the arguments, a
property typed as another struct
of the package being a nested block (the Terraform name of each property is the anchor of its
"Docs at Terraform Registry" link). This script reads those assemblies and writes
``tests/terraform_provider_schema.json`` with only the types terraform/*.tf uses: per type, its
arguments, its nested blocks (recursively), and which arguments are write-only (``<name>_wo``
paired with ``<name>_wo_version``, whose descriptions link the provider's "updating write-only
attributes" guide). Computed-only attributes are not arguments and are
not listed. The .jsii does not carry Terraform's ``sensitive`` flag, so none is recorded:
tests/test_terraform.py treats every argument that is not write-only as stored in state.

Usage (the packages are fetched into a temporary folder, never committed):

    cd "$(mktemp -d)"
    npm pack @cdktf/provider-google@16.12.1 @cdktf/provider-google-beta@16.9.0 \\
        @cdktf/provider-random@12.0.1 @cdktf/provider-time@11.0.1
    for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python tools/provider_schema.py --package cdktf-provider-google-16.12.1/package \\
        --package cdktf-provider-google-beta-16.9.0/package \\
        --package cdktf-provider-random-12.0.1/package \\
        --package cdktf-provider-time-11.0.1/package

Types used from a provider are looked up in that provider's package (``provider = google-beta``
in a block selects google-beta). Running it again after changing terraform/ refreshes the JSON;
tests/test_terraform.py fails when a type in terraform/ is missing from it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parent.parent
TERRAFORM = REPO / "terraform"
OUTPUT = REPO / "tests" / "terraform_provider_schema.json"

DOC_ANCHOR = re.compile(r"/docs/(resources|data-sources)/(\w+)#(\w+) ")
TYPE_DOC = re.compile(r"/providers/hashicorp/([\w-]+)/([\d.]+)/docs/(resources|data-sources)/(\w+)")


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def used_types(terraform_dir: Path) -> dict[str, set[tuple[str, str]]]:
    """{"resource" | "data": {(provider local name, type)}} for every block in terraform_dir."""
    found: dict[str, set[tuple[str, str]]] = {"resource": set(), "data": set()}
    for path in sorted(terraform_dir.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for kind in found:
            for entry in parsed.get(kind, []):
                for type_, named in entry.items():
                    type_ = _unquote(type_)
                    for body in named.values():
                        provider = _unquote(str(body.get("provider", ""))).strip("${}")
                        found[kind].add((provider or type_.split("_", 1)[0], type_))
    return found


class Assembly:
    """One cdktf package's .jsii: its provider, version and the config struct of each type."""

    def __init__(self, package: Path) -> None:
        with (package / ".jsii").open() as handle:
            jsii = json.load(handle)
        self.types: dict[str, dict[str, Any]] = jsii["types"]
        meta = json.loads((package / "package.json").read_text())
        self.package = f"{meta['name']}@{meta['version']}"
        self.provider = meta["cdktf"]["provider"]["name"].rsplit("/", 1)[-1]
        self.version = meta["cdktf"]["provider"]["version"]
        # Terraform type -> fqn of its Config struct, from each construct class's docs link.
        self.configs: dict[tuple[str, str], str] = {}
        for fqn, spec in self.types.items():
            if spec.get("kind") != "class":
                continue
            match = TYPE_DOC.search(spec.get("docs", {}).get("summary", ""))
            if not match:
                continue
            kind = "resource" if match.group(3) == "resources" else "data"
            # google-beta's types are google_* too; random's are random_*.
            # (a few doc pages are named after the full type: google_project_service_identity).
            prefix = f"{self.provider.removesuffix('-beta')}_"
            type_name = match.group(4)
            type_name = type_name if type_name.startswith(prefix) else prefix + type_name
            config = f"{fqn}Config"
            if config in self.types:
                self.configs[(kind, type_name)] = config

    def struct(self, fqn: str) -> dict[str, Any]:
        """{"arguments": [...], "write_only": [...], "blocks": {name: struct}} of one struct."""
        arguments: list[str] = []
        blocks: dict[str, Any] = {}
        for prop in self.types[fqn].get("properties", []):
            docs = prop.get("docs", {})
            text = f"{docs.get('summary', '')} {docs.get('remarks', '')}"
            anchor = DOC_ANCHOR.search(text)
            name = anchor.group(3) if anchor else _snake(prop["name"])
            nested = self._struct_fqn(prop["type"])
            if nested is not None:
                blocks[name] = self.struct(nested)
                continue
            arguments.append(name)
        # Write-only arguments are the "<name>_wo" ones paired with a "<name>_wo_version" trigger
        # (the provider's convention; their descriptions link "updating write-only attributes").
        write_only = [
            name for name in arguments if name.endswith("_wo") and f"{name}_version" in arguments
        ]
        result: dict[str, Any] = {"arguments": sorted(arguments)}
        if write_only:
            result["write_only"] = sorted(write_only)
        if blocks:
            result["blocks"] = dict(sorted(blocks.items()))
        return result

    def _struct_fqn(self, type_: dict[str, Any]) -> str | None:
        """The fqn of the package's struct this property holds (a nested block), if any."""
        if "fqn" in type_:
            spec = self.types.get(type_["fqn"])
            return type_["fqn"] if spec and spec.get("datatype") else None
        if "collection" in type_:
            return self._struct_fqn(type_["collection"]["elementtype"])
        if "union" in type_:
            for member in type_["union"]["types"]:
                found = self._struct_fqn(member)
                if found:
                    return found
        return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def extract(packages: list[Path], terraform_dir: Path) -> dict[str, Any]:
    assemblies = {assembly.provider: assembly for assembly in map(Assembly, packages)}
    used = used_types(terraform_dir)
    providers: dict[str, Any] = {}
    for kind, key in (("resource", "resources"), ("data", "data_sources")):
        for provider, type_ in sorted(used[kind]):
            assembly = assemblies.get(provider)
            if assembly is None:
                continue  # e.g. terraform_data: built into Terraform, no provider schema
            config = assembly.configs.get((kind, type_))
            if config is None:
                print(f"warning: {kind} {type_} not in {assembly.package}", file=sys.stderr)
                continue
            entry = providers.setdefault(
                provider,
                {"version": assembly.version, "source": assembly.package},
            )
            entry.setdefault(key, {})[type_] = assembly.struct(config)
    return {
        "generated_by": "tools/provider_schema.py",
        "providers": dict(sorted(providers.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, action="append", required=True)
    parser.add_argument("--terraform", type=Path, default=TERRAFORM)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    schema = extract(args.package, args.terraform)
    args.output.write_text(json.dumps(schema, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
