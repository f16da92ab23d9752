"""The package's layers: imports point down the layers of the design, and no import cycle exists.

Every import counts, at module level or inside a function, and under TYPE_CHECKING too: a late
import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "emsbms"

BASE = {"errors", "types", "resources"}
TOOLS = {"sim", "monitor", "diag", "bench", "demo", "cli"}

# what each layer may import besides itself and the base modules (docs/architecture.md, "The tree")
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "can": set(),
    "profile": set(),
    "protocols": {"profile"},
    "site": {"can", "profile", "protocols"},
    "db": {"can", "profile", "protocols", "site"},
    "edge": {"can", "profile", "protocols", "site", "db"},
    "commissioning": {"can", "profile", "protocols", "site", "db", "edge"},
    "core": {"can", "profile", "protocols", "site", "db", "edge"},  # the cycle and the command dispatcher
    "alarms": {"can", "profile", "protocols", "site", "db", "edge"},  # the edge never imports it
    "uplink": {"can", "profile", "protocols", "site", "db", "edge", "core", "alarms"},
    "cloud": {"can", "profile", "protocols", "site", "db", "uplink", "alarms"},  # the service; nothing below imports it
    "tools": {"can", "profile", "protocols", "site", "db", "edge", "commissioning", "core", "uplink", "cloud",
              "tools", "api", "alarms"},
    "api": {"can", "profile", "protocols", "site", "db", "edge", "commissioning", "core", "uplink", "tools",
            "alarms"},
}


def module_name(path: Path) -> str:
    parts = ("emsbms", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    top = parts[1]
    if top in BASE:
        return "base"
    if top in TOOLS:
        return "tools"
    assert top in ALLOWED, f"{module}: package {top!r} has no layer; add it to ALLOWED and docs/architecture.md"
    return top


def resolve(name: str) -> str:
    """The module an import names (`emsbms.site.Site` is the module `emsbms.site`)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        found.update(resolve(n) for n in names if n == "emsbms" or n.startswith("emsbms."))
    found.discard(module)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_package_has_a_layer() -> None:
    assert {layer(m) for m in MODULES} == set(ALLOWED)


def test_imports_point_down_the_layers() -> None:
    upward = sorted(
        f"{m} ({layer(m)}) imports {d} ({layer(d)})"
        for m, deps in GRAPH.items()
        for d in deps
        if layer(d) not in {layer(m), "base"} and layer(d) not in ALLOWED[layer(m)]
    )
    assert upward == []


def test_protocols_know_the_profile_models_not_the_loader() -> None:
    found = sorted(
        f"{m} imports {d}" for m, deps in GRAPH.items() if layer(m) == "protocols"
        for d in deps if d in {"emsbms.profile", "emsbms.profile.loader"}
    )
    assert found == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    assert strongly_connected(GRAPH) == []


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycles: list[list[str]]) -> None:
    assert strongly_connected(graph) == cycles


def test_the_layers_of_known_modules() -> None:
    # the two cycles this layout broke ran db -> edge and profile.loader -> protocols: both upward now
    assert "edge" not in ALLOWED["db"] and "protocols" not in ALLOWED["profile"]
    assert [layer(m) for m in ("emsbms.can.bus", "emsbms.profile.codec", "emsbms.protocols.supervision",
                               "emsbms.site.build", "emsbms.edge.watch", "emsbms.cli.read", "emsbms.errors",
                               "emsbms")] == ["can", "profile", "protocols", "site", "edge", "tools", "base", "api"]
    assert imports("emsbms.profile.loader") >= {"emsbms.profile.checks", "emsbms.profile.models"}
    assert "emsbms.protocols" not in imports("emsbms.profile.loader")


def test_the_core_sits_above_the_edge_and_below_the_uplink() -> None:
    assert layer("emsbms.core.cycle") == "core"
    assert "core" not in ALLOWED["edge"] and "core" in ALLOWED["uplink"] and "core" in ALLOWED["tools"]
    assert sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if layer(m) in {"edge", "db", "site", "protocols"}
                  for d in deps if layer(d) == "core") == []


def test_only_the_tools_may_import_the_cloud() -> None:
    # the edge stays lean: the cloud (psycopg, FastAPI) is an extra that no layer below the tools loads
    assert sorted(k for k, allowed in ALLOWED.items() if "cloud" in allowed) == ["tools"]
    assert layer("emsbms.cloud.database") == "cloud"
    assert sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if layer(m) not in {"cloud", "tools"}
                  for d in deps if layer(d) == "cloud") == []


def test_the_cloud_imports_only_the_pure_rules_of_the_alarms() -> None:
    # docs/alarms.md: the cloud validates desired rules with emsbms.alarms.rules, never runs the engine
    pure = {"emsbms.alarms.rules", "emsbms.alarms.expr", "emsbms.alarms.nodes"}
    assert sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if layer(m) == "cloud"
                  for d in deps if layer(d) == "alarms" and d not in pure) == []
    assert {d for m in pure for d in GRAPH[m]} <= pure | {"emsbms.errors"}
    assert layer("emsbms.alarms.engine") == "alarms" and "alarms" not in ALLOWED["edge"]
