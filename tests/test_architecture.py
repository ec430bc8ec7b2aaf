"""Architecture tests: the package's layering, checked by static analysis of its source.

A pruning run flows through the stages

    data → features → scores → plan → surgery → repair → finetune → report

and the package is cut into *rooms* along that flow (a room is the first component under
``layerprune/``: a subpackage such as ``criteria`` or a top-level module such as ``io``).
A room may import only the rooms listed for it in ``ALLOWED_IMPORTS`` below: lower rooms
never import higher ones, so e.g. ``surgery`` works without ``criteria`` and ``criteria``
works without ``train``. On top of that, files import no cycles, never import the package
root ``layerprune`` (it imports everything), and never reach for another room's private names.

Every ``.py`` file under ``layerprune/`` is parsed with :mod:`ast` (nothing is imported).
Imports inside functions count like top-level ones: a lazy import hides a cycle, it does not
remove it. Only ``if TYPE_CHECKING:`` blocks are skipped, because they never run.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pytest

# --------------------------------------------------------------------------------------------
# The layer map: which rooms each room may import (besides itself).
# --------------------------------------------------------------------------------------------

#: Leaf utilities: each may import only the others.
BASE = frozenset({"errors", "version", "io", "lock", "registry", "params", "plots", "hooks", "distributed", "lazy"})

#: ``__init__`` (the package root) and ``__main__`` may import anything.
ANYTHING = frozenset({"*"})

_RECIPE = BASE | {"data", "models", "surgery", "evaluation", "tasks", "calibration", "criteria", "train", "pruner", "export"}
_BENCH = _RECIPE | {"recipe"}
_APP = _BENCH | {"bench"}
_CLI = _APP | {"app"}

ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    # base utilities
    **{room: BASE for room in sorted(BASE)},
    # inputs: datasets, model zoo, evaluation loops
    "data": BASE,
    "models": BASE,
    # what a model is asked to do: a batch, its loss, its metric
    "tasks": BASE,
    "evaluation": BASE | {"tasks"},
    # removing blocks from a model (must not know about criteria)
    "surgery": BASE | {"models", "tasks"},
    # calibration batches / batch-norm repair
    "calibration": BASE | {"data", "evaluation", "tasks"},
    # features → scores → plan
    "criteria": BASE | {"data", "models", "surgery", "evaluation", "calibration", "tasks"},
    # deployable files of a pruned model (ONNX, TorchScript, torch.export), checked and timed
    "export": BASE | {"models", "surgery"},
    # finetuning
    "train": BASE | {"models", "evaluation", "tasks"},
    # the whole prune step: score, plan, cut
    "pruner": BASE | {"data", "models", "surgery", "evaluation", "calibration", "criteria", "tasks"},
    # orchestration, from the lowest to the highest
    "recipe": _RECIPE,
    "bench": _BENCH,
    "app": _APP,
    "cli": _CLI,
    "__init__": ANYTHING,
    "__main__": ANYTHING,
}

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "layerprune"
ROOT_ROOM = "__init__"


# --------------------------------------------------------------------------------------------
# The scanner
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported name, resolved to the module file it loads."""

    source: str  # dotted module of the importing file ("pkg.a.b"; a package is its __init__)
    target: str  # dotted module the import loads, inside the package
    name: str | None  # for ``from P import name``: the name; None for ``import P.Q``
    line: int
    statement: str  # the import as written (normalised by ast.unparse)
    lazy: bool  # inside a function
    source_file: str  # path of the importing file, e.g. "layerprune/a/b.py"
    target_file: str

    def where(self) -> str:
        lazy = "  (inside a function)" if self.lazy else ""
        return f"{self.source_file}:{self.line}: {self.statement}{lazy}"


@dataclass
class Scan:
    package: str
    files: dict[str, str]  # dotted module → path relative to the package's parent directory
    imports: list[Import]

    def graph(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {module: set() for module in self.files}
        for imp in self.imports:
            edges[imp.source].add(imp.target)
        return edges


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, with whether it sits inside a function."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: Iterable[ast.AST] = node.orelse  # the body never runs
        else:
            children = ast.iter_child_nodes(node)
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in children)


def scan_package(package_dir: Path) -> Scan:
    """Parse every ``.py`` file under ``package_dir`` and resolve its imports inside it."""
    package = package_dir.name
    paths = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    files = {_module_name(p, package_dir): p.relative_to(package_dir.parent).as_posix() for p in paths}

    def existing(dotted: str) -> str | None:
        """``dotted`` if it is a module in the tree, else its longest prefix that is."""
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in files:
                return ".".join(parts)
            parts.pop()
        return None

    def inside(dotted: str) -> bool:
        return dotted == package or dotted.startswith(package + ".")

    imports: list[Import] = []
    for path in paths:
        source = _module_name(path, package_dir)
        own_package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, lazy in sorted(_import_nodes(tree), key=lambda item: (item[0].lineno, item[0].col_offset)):
            statement = ast.unparse(node)
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if inside(alias.name) and (target := existing(alias.name)):
                        targets.append((target, None))
            else:
                if node.level:
                    base = own_package.split(".") if own_package else []
                    if node.level - 1 > len(base):
                        continue  # beyond the top: not resolvable inside the package
                    base = base[: len(base) - (node.level - 1)]
                    parent = ".".join(base + ([node.module] if node.module else []))
                else:
                    parent = node.module or ""
                if not inside(parent):
                    continue
                for alias in node.names:
                    submodule = f"{parent}.{alias.name}"
                    if alias.name != "*" and submodule in files:
                        targets.append((submodule, alias.name))
                    elif target := existing(parent):
                        targets.append((target, alias.name))
            for target, name in targets:
                imports.append(
                    Import(source, target, name, node.lineno, statement, lazy, files[source], files[target])
                )
    return Scan(package, files, imports)


def room_of(module: str) -> str:
    """The first component under the package (``pkg.criteria.base`` → ``criteria``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_ROOM


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --------------------------------------------------------------------------------------------
# The checks (each returns human-readable violations; an empty list means clean)
# --------------------------------------------------------------------------------------------


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest cycle through the first member, staying inside the component."""
    start = min(members)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & members):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if succ not in previous:
                previous[succ] = node
                queue.append(succ)
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a cyclic component


def find_cycles(scan: Scan) -> list[str]:
    graph = scan.graph()
    messages = []
    for component in strongly_connected_components(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        cycle = _shortest_cycle(graph, set(component))
        lines = [" → ".join(scan.files[m] for m in cycle)]
        for a, b in zip(cycle, cycle[1:]):
            lines += dict.fromkeys(
                "    " + imp.where() for imp in scan.imports if imp.source == a and imp.target == b
            )
        if len(component) > len(cycle) - 1:
            lines.append(f"    (the whole cycle group: {', '.join(scan.files[m] for m in component)})")
        messages.append("\n".join(lines))
    return messages


def root_imports(scan: Scan) -> list[str]:
    allowed = {scan.package, f"{scan.package}.__main__"}
    return [
        f"{imp.where()}  ← imports the package root {scan.files[scan.package]}"
        for imp in scan.imports
        if imp.target == scan.package and imp.source not in allowed
    ]


def private_crossings(scan: Scan) -> list[str]:
    messages = []
    for imp in scan.imports:
        if room_of(imp.source) == room_of(imp.target):
            continue
        private_module = [p for p in imp.target.split(".")[1:] if _is_private(p)]
        private_name = imp.name is not None and _is_private(imp.name)
        if private_module:
            what = f"private module {imp.target}"
        elif private_name:
            what = f"private name {imp.name} of {imp.target}"
        else:
            continue
        messages.append(
            f"{imp.where()}  ← {what} (room {room_of(imp.target)}) used from room {room_of(imp.source)}"
        )
    return messages


def unknown_rooms(scan: Scan, allowed: dict[str, frozenset[str]]) -> list[str]:
    rooms: dict[str, list[str]] = {}
    for module, file in scan.files.items():
        rooms.setdefault(room_of(module), []).append(file)
    return [
        f"room {room!r} ({', '.join(sorted(files))}) is not in the layer map: "
        f"add it to ALLOWED_IMPORTS in tests/test_architecture.py"
        for room, files in sorted(rooms.items())
        if room not in allowed
    ]


def forbidden_room_imports(scan: Scan, allowed: dict[str, frozenset[str]]) -> list[str]:
    messages = []
    for imp in scan.imports:
        source, target = room_of(imp.source), room_of(imp.target)
        if source == target:
            continue
        if source not in allowed or target not in allowed:
            missing = source if source not in allowed else target
            messages.append(
                f"{imp.where()}  ← room {missing!r} is not in the layer map: add it to ALLOWED_IMPORTS"
            )
        elif allowed[source] != ANYTHING and target not in allowed[source]:
            messages.append(
                f"{imp.where()}  ← room {source} may not import room {target} "
                f"(it may import: {', '.join(sorted(allowed[source]))})"
            )
    return messages


def _report(title: str, violations: list[str]) -> str:
    violations = list(dict.fromkeys(violations))  # one line per statement, not per imported name
    return f"{title} ({len(violations)}):\n" + "\n".join(violations)


# --------------------------------------------------------------------------------------------
# Tests on the real package
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan() -> Scan:
    return scan_package(PACKAGE_DIR)


def test_no_import_cycles(scan: Scan) -> None:
    cycles = find_cycles(scan)
    assert not cycles, _report("import cycles between files (lazy imports count)", cycles)


def test_no_file_imports_the_package_root(scan: Scan) -> None:
    violations = root_imports(scan)
    assert not violations, _report(
        "files importing the package root `layerprune` (import the defining module instead)", violations
    )


def test_no_private_name_crosses_rooms(scan: Scan) -> None:
    violations = private_crossings(scan)
    assert not violations, _report("private names or modules used outside their room", violations)


def test_every_room_is_in_the_layer_map(scan: Scan) -> None:
    violations = unknown_rooms(scan, ALLOWED_IMPORTS)
    assert not violations, _report("rooms missing from the layer map", violations)


def test_rooms_import_only_allowed_rooms(scan: Scan) -> None:
    violations = forbidden_room_imports(scan, ALLOWED_IMPORTS)
    assert not violations, _report("imports that break the layering", violations)


def test_surgery_imports_neither_criteria_nor_the_package_root(scan: Scan) -> None:
    violations = [
        imp.where()
        for imp in scan.imports
        if room_of(imp.source) == "surgery" and room_of(imp.target) in {"criteria", ROOT_ROOM}
    ]
    assert not violations, _report("surgery must work without criteria and the package root", violations)


# --------------------------------------------------------------------------------------------
# Tests of the checker itself (so that it cannot pass by finding nothing)
# --------------------------------------------------------------------------------------------


def test_layer_map_names_only_rooms_it_defines() -> None:
    named = {room for rooms in ALLOWED_IMPORTS.values() if rooms != ANYTHING for room in rooms}
    assert named <= set(ALLOWED_IMPORTS), f"rooms allowed but not defined: {sorted(named - set(ALLOWED_IMPORTS))}"


def test_real_scan_finds_many_imports(scan: Scan) -> None:
    assert len(scan.files) > 30, f"only {len(scan.files)} files found under {PACKAGE_DIR}"
    edges = {(imp.source, imp.target) for imp in scan.imports}
    assert len(edges) > 50, f"only {len(edges)} import edges found: is the scanner broken?"
    assert any(imp.lazy for imp in scan.imports), "no lazy (in-function) import found"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "fakepkg"


def test_checker_finds_a_cycle_hidden_in_a_lazy_import(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "fakepkg/__init__.py": "",
            "fakepkg/a.py": "def f():\n    from fakepkg import b\n    return b\n",
            "fakepkg/b.py": "from fakepkg.a import f\n",
            "fakepkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakepkg import d\n",
            "fakepkg/d.py": "import fakepkg.c\n",
        },
    )
    scan = scan_package(package)
    lazy = [imp for imp in scan.imports if imp.source == "fakepkg.a"]
    assert [(imp.target, imp.lazy) for imp in lazy] == [("fakepkg.b", True)]
    cycles = find_cycles(scan)
    assert len(cycles) == 1, cycles  # c → d is skipped (TYPE_CHECKING), so c ↔ d is no cycle
    assert cycles[0].splitlines()[0] == "fakepkg/a.py → fakepkg/b.py → fakepkg/a.py"


def test_checker_resolves_imports_like_python(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "fakepkg/__init__.py": "from fakepkg.sub import thing\n",
            "fakepkg/__main__.py": "import fakepkg\n",
            "fakepkg/util.py": "X = 1\n",
            "fakepkg/sub/__init__.py": "from .mod import thing\n",
            "fakepkg/sub/mod.py": (
                "from . import other\n"  # a submodule, via the package
                "from .. import util\n"  # a submodule of the parent
                "from fakepkg import VERSION\n"  # a name of the root: edge to the root
                "from fakepkg.sub._hidden import _secret\n"
                "thing = 1\n"
            ),
            "fakepkg/sub/other.py": "import fakepkg.util\n",
            "fakepkg/sub/_hidden.py": "_secret = 2\n",
            "fakepkg/other/__init__.py": "",
            "fakepkg/other/user.py": "from fakepkg.sub import _hidden\nfrom fakepkg.sub.mod import _private\n",
        },
    )
    scan = scan_package(package)
    edges = {(imp.source, imp.target) for imp in scan.imports}
    assert edges == {
        ("fakepkg", "fakepkg.sub"),
        ("fakepkg.__main__", "fakepkg"),
        ("fakepkg.sub", "fakepkg.sub.mod"),
        ("fakepkg.sub.mod", "fakepkg.sub.other"),
        ("fakepkg.sub.mod", "fakepkg.util"),
        ("fakepkg.sub.mod", "fakepkg"),
        ("fakepkg.sub.mod", "fakepkg.sub._hidden"),
        ("fakepkg.sub.other", "fakepkg.util"),
        ("fakepkg.other.user", "fakepkg.sub._hidden"),
        ("fakepkg.other.user", "fakepkg.sub.mod"),
    }
    assert [m.split(":")[0] for m in root_imports(scan)] == ["fakepkg/sub/mod.py"]
    assert [m.split(":")[1] for m in private_crossings(scan)] == ["1", "2"]  # both lines of user.py
    assert all(m.startswith("fakepkg/other/user.py") for m in private_crossings(scan))
    allowed = {"__init__": ANYTHING, "__main__": ANYTHING, "util": frozenset(), "sub": frozenset({"util"})}
    assert unknown_rooms(scan, allowed) == [
        "room 'other' (fakepkg/other/__init__.py, fakepkg/other/user.py) is not in the layer map: "
        "add it to ALLOWED_IMPORTS in tests/test_architecture.py"
    ]
    forbidden = forbidden_room_imports(scan, allowed)
    assert any("fakepkg/sub/mod.py:3" in m and "may not import room __init__" in m for m in forbidden)
    assert sum("'other' is not in the layer map" in m for m in forbidden) == 2
