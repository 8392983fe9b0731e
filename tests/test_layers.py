"""
The layer rule of doc/hacking.md, checked on the code: no import cycle inside
``crust``, and no import from a lower layer to a higher one.

Imports are read from the source (every ``import`` and ``from ... import``,
at module level or inside functions); those under ``if TYPE_CHECKING:`` are
not executed, so they do not make cycles, but they must respect the layers
all the same.
"""

import ast
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import crust

ROOT = Path(crust.__file__).parent

#: From the bottom up; a module may import only modules of its own layer or below.
LAYERS = (
    ("foundations", ("crust._util", "crust._version", "crust.errors", "crust.interfaces", "crust.observer",
                     "crust.address", "crust.identity", "crust.roles", "crust.config", "crust.candidates",
                     "crust.connection_info", "crust.wire", "crust.signed")),
    ("transport", ("crust.transport",)),
    ("session", ("crust.session",)),
    ("nat", ("crust.nat",)),
    ("peering", ("crust.peering",)),
    ("bootstrap", ("crust.bootstrap",)),
    ("punch", ("crust.punch",)),
    ("relay", ("crust.relay",)),
    ("streams", ("crust.streams",)),
    ("service", ("crust.service", "crust.metrics")),
    ("node", ("crust.node",)),
    ("endpoints", ("crust.endpoints",)),
)
PUBLIC_FACE = "crust"  # crust/__init__.py: lazy re-exports by name, imports nothing of crust's


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    if found is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, module: str, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported crust module, only under TYPE_CHECKING) for every import in C{path}."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def resolve(name: str) -> str:
        # the longest prefix of name that is one of our modules
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "crust":
                    found.append((resolve(alias.name), typing_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "crust":
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.append((resolve(full) if full in modules else resolve(target), typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return [(m, t) for m, t in found if m and m != module]


def graph() -> dict[str, list[tuple[str, bool]]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {m: imports_of(p, m, modules) for m, p in paths.items()}


class LayerTests(SynchronousTestCase):
    def test_every_module_has_a_layer(self):
        for module in graph():
            if module != PUBLIC_FACE:
                layer_of(module)

    def test_no_import_goes_up(self):
        upward = []
        for module, imports in graph().items():
            if module == PUBLIC_FACE:
                continue
            mine = layer_of(module)
            for imported, _ in imports:
                if imported == PUBLIC_FACE:
                    upward.append(f"{module} imports the package face {imported}: import the module instead")
                elif layer_of(imported) > mine:
                    upward.append(f"{module} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")
        self.assertEqual(upward, [], "\n".join(upward))

    def test_no_import_cycle(self):
        edges = {m: sorted({i for i, typing_only in imports if not typing_only}) for m, imports in graph().items()}
        # Tarjan's strongly connected components
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        cycles: list[list[str]] = []
        counter = [0]

        def strongconnect(v: str) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on_stack.add(v)
            for w in edges.get(v, ()):
                if w not in index:
                    strongconnect(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

        for v in sorted(edges):
            if v not in index:
                strongconnect(v)
        self.assertEqual(cycles, [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles))

    def test_the_face_lists_every_lazy_name(self):
        self.assertEqual(sorted(crust.__all__), sorted(["__version__", *crust._LAZY]))

    def test_the_checker_sees_a_violation(self):
        """The walk finds imports at any depth, and tells TYPE_CHECKING ones apart."""
        source = ("from typing import TYPE_CHECKING\nimport crust.errors\n"
                  "if TYPE_CHECKING:\n    from crust.service import Service\n"
                  "def f():\n    from crust.node import node\n")
        path = Path(self.mktemp())
        path.write_text(source)
        modules = {"crust.errors", "crust.service", "crust.node", "crust.node.node"}
        found = imports_of(path, "crust.errors_user", modules)
        self.assertEqual(sorted(found), [("crust.errors", False), ("crust.node.node", False), ("crust.service", True)])
        self.assertGreater(layer_of("crust.service"), layer_of("crust.session.connection"))
        os.remove(path)
