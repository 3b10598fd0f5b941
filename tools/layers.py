"""The layers of ``shared/``, and the check that no module imports one above its own.

Run ``python -m tools.layers``: it prints each module of ``shared/`` with its layer, then
every upward import, import circle, and module missing from :data:`LAYERS`, and exits 1
if it found any (``tests/test_layers.py`` runs it with the suite).

Bottom to top:

1. **base**: pure helpers every other layer may use: errors, logging, settings, text rules.
2. **objects**: the shapes and pipes data travels in: the database pool, the HTTP
   pipeline, the wire's models and the model's stream events, telemetry events, the
   ``LISTEN``/``NOTIFY`` fan-out.
3. **domain**: one module per concern, each owning its tables' SQL (users, chats, the
   turn, summaries, media, usage, the storage deletion queue...). A domain module that
   needs a Google service receives it as an argument from the entry point.
4. **adapters**: the Google services (Gemini, Cloud Storage, Cloud Tasks, the prompt's
   source), each on its SDK, imported lazily.
5. **runtime**: the per-instance wiring of a function (``shared.runtime``); nothing in
   ``shared/`` imports it, only the functions' ``main.py``.

A module may import any module of its own layer or below. Every import statement counts,
wherever it is (inside a function, under ``TYPE_CHECKING``): a deferred import is still a
dependency. A new module must be added to :data:`LAYERS`, so its place is a decision.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "shared"

LAYER_NAMES = ("base", "objects", "domain", "adapters", "runtime")

# The one table of where each module of shared/ lives.
LAYERS: dict[str, str] = {
    # base
    "shared.errors": "base",
    "shared.log": "base",
    "shared.settings": "base",
    "shared.text": "base",
    "shared.token_estimate": "base",
    "shared.file_types": "base",
    "shared.object_names": "base",
    # objects
    "shared.db": "objects",
    "shared.web": "objects",
    "shared.serving": "objects",
    "shared.schemas": "objects",
    "shared.stream_events": "objects",
    "shared.routes": "objects",
    "shared.stream_framing": "objects",
    "shared.sse_client": "objects",
    "shared.model_events": "objects",
    "shared.notifications": "objects",
    "shared.telemetry": "objects",
    "shared.clerk_events": "objects",
    # domain
    "shared.users": "domain",
    "shared.auth": "domain",
    "shared.chats": "domain",
    "shared.chat_list": "domain",
    "shared.history": "domain",
    "shared.turn": "domain",
    "shared.turn_request": "domain",
    "shared.answers": "domain",
    "shared.answer_progress": "domain",
    "shared.summaries": "domain",
    "shared.context": "domain",
    "shared.media": "domain",
    "shared.media_references": "domain",
    "shared.usage": "domain",
    "shared.deletions": "domain",
    # adapters
    "shared.gemini": "adapters",
    "shared.gemini_raw": "adapters",
    "shared.signing": "adapters",
    "shared.storage": "adapters",
    "shared.tasks": "adapters",
    "shared.system_instruction": "adapters",
    # runtime
    "shared.runtime": "runtime",
}


def shared_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name (``__init__`` excluded: it is empty)."""
    return {
        f"{PACKAGE}.{path.stem}": path
        for path in sorted((root / PACKAGE).glob("*.py"))
        if path.stem != "__init__"
    }


def imported_modules(path: Path) -> set[str]:
    """The ``shared`` modules a file imports, by every import statement in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:  # from shared import chats, media
                names = [f"{PACKAGE}.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                found.add(".".join(parts[:2]))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imported_modules(path) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules on it (first repeated at the end)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def problems(root: Path = ROOT) -> tuple[list[str], dict[str, set[str]]]:
    """What breaks the layering (empty when nothing does), and the import graph."""
    modules = shared_modules(root)
    graph = import_graph(modules)
    found = [
        f"{name}: not in tools/layers.py LAYERS; give it a layer"
        for name in modules
        if name not in LAYERS
    ]
    found += [
        f"{name}: listed in tools/layers.py LAYERS but there is no such module"
        for name in LAYERS
        if name not in modules
    ]
    rank = {name: LAYER_NAMES.index(layer) for name, layer in LAYERS.items()}
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if name in rank and target in rank and rank[target] > rank[name]:
                found.append(
                    f"{name} ({LAYERS[name]}) imports {target} ({LAYERS[target]}): an upward import"
                )
            elif target not in modules:
                found.append(f"{name} imports {target}, which does not exist")
    cycle = find_cycle(graph)
    if cycle:
        found.append("import circle: " + " -> ".join(cycle))
    return found, graph


def main() -> int:
    found, graph = problems()
    for layer in reversed(LAYER_NAMES):
        members = sorted(name for name in graph if LAYERS.get(name) == layer)
        print(f"{layer}:")
        for name in members:
            uses = ", ".join(sorted(target.removeprefix("shared.") for target in graph[name]))
            print(f"  {name.removeprefix('shared.'):<20} -> {uses or '-'}")
    unlisted = sorted(name for name in graph if name not in LAYERS)
    if unlisted:
        print("unlisted:", ", ".join(unlisted))
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found:
        return 1
    print("ok: no module imports a layer above its own, no import circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
