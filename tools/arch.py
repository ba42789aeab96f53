"""Architecture report for healerd/: big modules and classes, import cycles, SQL outside the store,
citations of documents kept outside the repository, constructors that take more than two positional
parameters, and attributes of a collaborator assigned from outside it (`self.part.attr = ...`).

It reports and always exits 0; `make arch` runs it. Import edges are read with `ast` from every module,
function-local imports included; the cycles are reported twice, without and with the `if TYPE_CHECKING:`
blocks (a cycle closed only by type annotations still ties the modules together for a reader). Importing
`healerd.a.b` also runs `healerd/a/__init__.py` first, so that counts as an edge to `healerd.a` too, unless the
importer is itself inside `healerd.a` (then that package is already being imported). A class's size counts
the healerd classes it inherits that no other class inherits (a mixin used once is part of that class).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "healerd"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
SHOW = 12
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|BEGIN|COMMIT|ROLLBACK|PRAGMA)\b", re.IGNORECASE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST, typing_too: bool = False) -> Iterator[ast.AST]:
    """Every node, except the bodies of `if TYPE_CHECKING:` (their `else:` runs, so it is kept) unless
    `typing_too`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not typing_too and isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def inside(importer: str, package: str) -> bool:
    return importer == package or importer.startswith(package + ".")


def imports_of(path: Path, modules: set[str], typing_too: bool = False) -> set[str]:
    """The healerd modules that importing `path` runs (with `typing_too`, also those it imports for types)."""
    me = module_name(path)
    here = me if is_package(path) else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    wanted: set[str] = set()  # modules named by an import, before the enclosing packages are added
    for node in runtime_nodes(tree, typing_too):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules
            wanted.update(submodules)
            if len(submodules) < len(node.names):  # a name from the module itself: it must have run
                wanted.add(source)
    found: set[str] = set()
    for target in wanted:
        if target not in modules:
            continue
        if not inside(me, target) or target == me:
            found.add(target)
        found.update(a for a in ancestors(target) if a in modules and not inside(me, a))
    found.discard(me)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def class_sizes(trees: dict[Path, ast.AST]) -> list[tuple[int, str]]:
    """Each class's lines plus those of the healerd classes only it inherits (recursively), largest first."""
    defs: dict[str, tuple[int, str, list[str]]] = {}  # name -> (lines, where, base names)
    for p, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [
                    b.id if isinstance(b, ast.Name) else b.attr
                    for b in node.bases
                    if isinstance(b, ast.Name | ast.Attribute)
                ]
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                defs.setdefault(node.name, (lines, f"{p.relative_to(ROOT)}:{node.lineno} {node.name}", bases))
    heirs: dict[str, int] = {}
    for _, _, bases in defs.values():
        for b in bases:
            heirs[b] = heirs.get(b, 0) + 1

    def size(name: str, seen: frozenset[str]) -> tuple[int, list[str]]:
        lines, _, bases = defs[name]
        mixins = []
        for b in bases:
            if b in defs and heirs.get(b) == 1 and b not in seen:
                more, inner = size(b, seen | {b})
                lines += more
                mixins += [b, *inner]
        return lines, mixins

    out = []
    for name, (_, where, _) in defs.items():
        lines, mixins = size(name, frozenset({name}))
        out.append((lines, where + (f" (with {', '.join(mixins)})" if mixins else "")))
    return sorted(out, reverse=True)


#: a section of a design document kept outside the repository, or a path above it
ELSEWHERE = re.compile("DESIGN" + r" §|\.\./shared/")
TEXT = (".py", ".md", ".html", ".yaml", ".yml", ".toml", ".cfg", ".txt", "")


def citations_elsewhere() -> list[str]:
    """Every line of a text file git tracks here that cites a document kept outside the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    hits = []
    for name in tracked.split():
        p = ROOT / name
        if p.suffix in TEXT and p.is_file():
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if ELSEWHERE.search(line):
                    hits.append(f"{name}:{n}")
    return hits


def positional_constructors(trees: dict[Path, ast.AST]) -> list[str]:
    """Classes whose __init__ takes more than two positional parameters (exceptions, which are values, aside)."""
    out = []
    for p, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases
            }
            if any(b.endswith(("Error", "Exception", "Refused", "Failed")) for b in bases):
                continue
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "__init__":
                    positional = [a.arg for a in f.args.posonlyargs + f.args.args][1:]
                    if len(positional) > 2:
                        out.append(f"{p.relative_to(ROOT)}:{f.lineno} {node.name}({', '.join(positional)})")
    return out


def assigned_from_outside(trees: dict[Path, ast.AST]) -> list[str]:
    """`self.part.attr = ...`: a class setting an attribute of one of its parts, instead of giving it at
    construction or calling a method of the part."""
    out = []
    for p, tree in trees.items():
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for t in targets:
                for leaf in t.elts if isinstance(t, ast.Tuple) else [t]:
                    chain = leaf
                    depth = 0
                    while isinstance(chain, ast.Attribute):
                        chain, depth = chain.value, depth + 1
                    if depth >= 2 and isinstance(chain, ast.Name) and chain.id == "self":
                        out.append(f"{p.relative_to(ROOT)}:{node.lineno} {ast.unparse(leaf)}")
    return out


def in_store(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return rel == f"{PACKAGE}/store.py" or rel.startswith(f"{PACKAGE}/store/")


def sql_literals(path: Path, tree: ast.AST) -> Iterator[int]:
    skip = docstrings(tree)
    for node in ast.walk(tree):
        text, line = None, 0
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text, line = node.values[0].value, node.lineno  # an f-string: its text before the first {field}
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            text, line = node.value, node.lineno
        if isinstance(text, str) and SQL.match(text):
            yield line


def report(title: str, hits: list[str]) -> None:
    print("\n" + title)
    for hit in hits or ["none"]:
        print(f"  {hit}")


def main() -> int:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in files}
    trees = {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in files}

    print(f"Largest modules (lines; flagged over {MAX_MODULE_LINES}):")
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), p) for p in files), reverse=True)
    for n, p in sizes[:SHOW]:
        print(f"  {n:6d}  {p.relative_to(ROOT)}{'  <-- over ' + str(MAX_MODULE_LINES) if n > MAX_MODULE_LINES else ''}")
    over = sum(1 for n, _ in sizes if n > MAX_MODULE_LINES)
    print(f"  {over} module(s) over {MAX_MODULE_LINES} lines")

    print(f"\nLargest classes (lines, with the healerd classes only they inherit; flagged over {MAX_CLASS_LINES}):")
    classes = class_sizes(trees)
    for n, where in classes[:SHOW]:
        print(f"  {n:6d}  {where}{'  <-- over ' + str(MAX_CLASS_LINES) if n > MAX_CLASS_LINES else ''}")
    over = sum(1 for n, _ in classes if n > MAX_CLASS_LINES)
    print(f"  {over} class(es) over {MAX_CLASS_LINES} lines")

    for title, typing_too in (
        ("Import cycles among healerd modules (function-local imports count, TYPE_CHECKING ones do not):", False),
        ("Import cycles counting TYPE_CHECKING imports too:", True),
    ):
        print("\n" + title)
        found = cycles({module_name(p): imports_of(p, modules, typing_too) for p in files})
        for component in found:
            print(f"  {len(component)} modules: {', '.join(component)}")
        if not found:
            print("  none")

    report("Citations of a document outside the repository (cite docs/ instead):", citations_elsewhere())
    report(
        "Constructors taking more than two positional parameters (past them, keyword-only):",
        positional_constructors(trees),
    )
    report("Attributes of a part assigned by its holder (self.part.attr = ...):", assigned_from_outside(trees))
    report(
        f"SQL outside {PACKAGE}/store:",
        [
            f"{p.relative_to(ROOT)}:{line}"
            for p, tree in trees.items()
            if not in_store(p)
            for line in sorted(set(sql_literals(p, tree)))
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
