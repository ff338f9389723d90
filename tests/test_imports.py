"""The shape of the package: the module import graph of src/hsmkm (read with ast, nothing
imported) has no cycle, and dependencies point down the layers of DESIGN.md:
cli, server -> km, client -> cms, x509 -> store, keys -> errors."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hsmkm

PACKAGE = Path(hsmkm.__file__).resolve().parent

# DESIGN.md's layers, highest first; a module may import its own layer or any below it.
# The top-level modules (hsmkm.der, hsmkm.clock, hsmkm.atomic, ...) are the foundation,
# beside hsmkm.errors. server/ is the network adapter beside cli/; bench is a tool
# that drives the KM as the CLI does; est (the EST wire codecs, which both the server and
# the enrollment client speak) sits with km and client. The wire formats at the top level
# (protocol: the enrollment messages; enroll_wire: their codec; smimecaps: the S/MIME
# capabilities a profile announces) are message formats, beside cms and x509.
LAYERS: dict[str, int] = {
    "cli": 4,
    "server": 4,
    "bench": 4,
    "km": 3,
    "client": 3,
    "est": 3,
    "cms": 2,
    "x509": 2,
    "protocol": 2,
    "enroll_wire": 2,
    "smimecaps": 2,
    "store": 1,
    "keys": 1,
}
FOUNDATION = 0


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` at ``line`` (only when type checking, if ``typing``)."""

    importer: str
    imported: str
    line: int
    typing: bool


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imports there never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def edges(root: Path = PACKAGE) -> Iterator[Edge]:
    """Every import of a module of the package, absolute or relative; ``from x import y``
    where y is a submodule counts as an import of x.y."""
    known = modules(root)
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                # `import hsmkm.a.b.C`-style names resolve to the longest module they name
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    yield Edge(name, target, node.lineno, node.lineno in typing_only)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], FOUNDATION) if len(parts) > 1 else FOUNDATION


def test_the_import_graph_has_no_cycle() -> None:
    """Imports that run (module level or in a function; not those only for type checking)."""
    graph: dict[str, set[str]] = {}
    for edge in edges():
        if not edge.typing:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(
        {
            f"{e.importer} (layer {layer(e.importer)}) imports {e.imported} (layer {layer(e.imported)}), line {e.line}"
            for e in edges()
            if layer(e.imported) > layer(e.importer)
        }
    )
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


# --- the graph reader itself, on a package made for it -------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_reader_resolves_relative_absolute_and_submodule_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "from . import b\n",
            "a/b.py": "from ..c import thing\nimport pkg.d.e\n",
            "c.py": "from pkg.a import b as _b\nthing = 1\n",
            "d/__init__.py": "",
            "d/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
            "def f():\n    from .. import a\n",
        },
    )
    got = {(e.importer, e.imported, e.typing) for e in edges(root)}
    assert got == {
        ("pkg.a", "pkg.a.b", False),
        ("pkg.a.b", "pkg.c", False),
        ("pkg.a.b", "pkg.d.e", False),
        ("pkg.c", "pkg.a.b", False),
        ("pkg.d.e", "pkg.c", True),
        ("pkg.d.e", "pkg.a", False),
    }
    graph: dict[str, set[str]] = {}
    for e in edges(root):
        graph.setdefault(e.importer, set()).add(e.imported)
    assert find_cycle(graph) == ["pkg.a.b", "pkg.c", "pkg.a.b"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_module_outside_the_store_reaches_a_database_connection() -> None:
    """km/, cli/, client/ and the rest work through repositories and transactions: no raw
    driver connection (``Database.conn``, ``Tx.connection``) and no SQL driver outside store/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "store" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in {"conn", "connection", "execute", "executemany"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno} import {n}"
                    for n in names
                    if n.split(".")[0] in {"sqlite3", "sqlalchemy", "alembic"}
                ]
    assert found == []
