"""Check that the code's layers run one way: no import cycle, no upward import, no C naming a higher layer.

The layers, bottom up (docs/design.md, "Layers"):

0. ``nmsgdns`` (the NMSG/dnsqr/EDNS domain)
1. ``dnsqr_schemas`` (the data contracts, ``schemas/``, and the codecs of the topic values the stages share)
2. ``dnsqr_kafka`` (Kafka plumbing shared by the stages)
3. the stages: ``ingest``, ``processors``, ``sink`` (none imports another)
4. ``dnsqr_pipeline`` (the CLI, the local Kafka, the jobs)

Every import statement counts: at module level, inside functions and under ``if TYPE_CHECKING:``. Checked:

- a package imports only its own layer's package or lower layers, and no other stage;
- no cycle among the modules (a strongly connected group of two or more);
- a C or header file of a package includes only its own or lower packages' headers, and names no module
  of a higher or sibling package (``processors.``, ``sink/`` ...) anywhere, comments included.

Exit status 0 when all holds, 1 with one line per finding otherwise. Tests, benchmarks and scripts are not
checked (they may import anything).

    python scripts/check_layers.py [REPO]
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

#: package -> (layer, folder in the repository)
PACKAGES = {
    "nmsgdns": (0, "nmsgdns"),
    "dnsqr_schemas": (1, "schemas"),
    "dnsqr_kafka": (2, "dnsqr_kafka"),
    "ingest": (3, "ingest"),
    "processors": (3, "processors"),
    "sink": (3, "sink"),
    "dnsqr_pipeline": (4, "dnsqr_pipeline"),
}
#: generated code, not ours to layer
SKIP = ("nmsgdns/proto/",)


def may_import(importer: str, imported: str) -> bool:
    """Whether package ``importer`` may import package ``imported``."""
    if importer == imported:
        return True
    (low, _), (high, _) = PACKAGES[imported], PACKAGES[importer]
    return low < high


def modules(repo: Path) -> dict[str, Path]:
    """Module name -> file of every Python module of the packages."""
    out = {}
    for package, (_, folder) in PACKAGES.items():
        for path in sorted((repo / folder).rglob("*.py")):
            rel = path.relative_to(repo).as_posix()
            if rel.startswith(SKIP):
                continue
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import statement of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The known module ``name`` refers to (``a.b.c`` may be module ``a.b`` and its attribute ``c``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def python_findings(repo: Path) -> tuple[list[str], dict[str, set[str]]]:
    """Upward or sideways imports, and the module graph."""
    known = modules(repo)
    findings = []
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        package = module.partition(".")[0]
        for line, name in imports(path, module):
            target = resolve(name, known)
            if target is None:
                continue
            other = target.partition(".")[0]
            finding = f"{path.relative_to(repo)}:{line}: {package} imports {target} ({other})"
            if not may_import(package, other) and finding not in findings:
                findings.append(finding)
            if target != module:
                graph[module].add(target)
    return findings, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def c_findings(repo: Path) -> list[str]:
    """C sources and headers that include or name a package they may not import."""
    findings = []
    for package, (_, folder) in PACKAGES.items():
        others = [p for p in PACKAGES if not may_import(package, p)]
        # a module path (processors.x, processors/x) or an include of the folder
        # (tests/processors/... names a test file, which is no module of the package)
        pattern = re.compile(
            r"(?<!tests/)\b("
            + "|".join(re.escape(PACKAGES[p][1]) + "|" + re.escape(p) for p in others)
            + r")[./]\w"
        )
        for path in sorted([*(repo / folder).rglob("*.c"), *(repo / folder).rglob("*.h")]):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                found = pattern.search(line)
                if found:
                    findings.append(f"{path.relative_to(repo)}:{number}: {package} C names {found.group(0)}")
    return findings


def main(argv: list[str]) -> int:
    repo = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1])
    findings, graph = python_findings(repo)
    findings += [f"import cycle: {' -> '.join(group)}" for group in cycles(graph)]
    findings += c_findings(repo)
    for finding in findings:
        print(finding)
    if findings:
        print(f"check_layers: {len(findings)} findings", file=sys.stderr)
        return 1
    print(f"check_layers: {len(graph)} modules, layers one way, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
