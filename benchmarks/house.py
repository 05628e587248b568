"""How the house stands: modules and lines per wing, the longest function, the widest signature,
in-function imports of our own modules, and import cycles — measured from the source with ``ast``.

    python benchmarks/house.py            # the table, for a closing note
    python benchmarks/house.py --json     # the same as JSON

A *wing* is a subpackage of ``cnnvis/`` (``cnnvis/synthesis/``); modules directly in ``cnnvis/`` count
as the wing ``cnnvis``, and ``cli/`` and ``gallery/`` are wings of their own. Imports are read from
every ``import``/``from … import`` statement naming ``cnnvis`` (or a relative one), at module level
and inside functions (not those under ``if TYPE_CHECKING:``, which never run); a cycle is a strongly
connected group of modules in that graph (any import, wherever it stands, ties the modules together).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Dict, List, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Folders measured, and the package name each is installed under (setup.cfg's package_dir).
FOLDERS = {"cnnvis": "cnnvis", "cli": "cnnvis.cli", "gallery": "cnnvis.gallery"}


def modules(root: str = ROOT) -> Dict[str, str]:
    """Dotted module name -> file path, for every ``.py`` file of the measured folders."""
    out = {}
    for folder, package in FOLDERS.items():
        base = os.path.join(root, folder)
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base)[:-3].replace(os.sep, ".")
                parts = [package] + ([] if rel == "__init__" else [rel[: -len(".__init__")] if rel.endswith(".__init__") else rel])
                out[".".join(parts)] = os.path.join(dirpath, name)
    return out


def wing(module: str) -> str:
    """The wing of a dotted module name (a wing's own ``__init__`` belongs to it)."""
    parts = module.split(".")
    if parts[:2] in (["cnnvis", "cli"], ["cnnvis", "gallery"]):
        return parts[1]
    wings = {"cnnvis/" + p for p in ("core", "model", "inspection", "attribution", "synthesis", "atlas")}
    if len(parts) >= 2 and "cnnvis/" + parts[1] in wings:
        return "cnnvis/" + parts[1]
    return "cnnvis/" + parts[1] if len(parts) > 2 else "cnnvis"


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> Optional[str]:
    if node.level == 0:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: Dict[str, str]) -> List[Tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every import of one of ``known``'s modules."""
    out = []
    for module, path in known.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        is_package = path.endswith("__init__.py")
        inside: Set[int] = set()
        typing_only: Set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
            if isinstance(fn, ast.If) and "TYPE_CHECKING" in ast.unparse(fn.test):  # for type checkers only
                typing_only |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, is_package)
                if base:
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for t in dict.fromkeys(targets):
                while t and t not in known:
                    t = t.rpartition(".")[0]
                if t and t != module:
                    out.append((module, t, id(node) in inside))
    return out


def cycles(edges: List[Tuple[str, str, bool]]) -> List[List[str]]:
    """Strongly connected groups of two or more modules (Tarjan)."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def functions(known: Dict[str, str]) -> List[dict]:
    """Every function: module, name, lines, parameters (``self``/``cls`` not counted, ``*args``/``**kw`` counted)."""
    out = []
    for module, path in known.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                names = [n for n in names if n not in ("self", "cls")]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                out.append({"module": module, "name": node.name, "lines": node.end_lineno - node.lineno + 1,
                            "params": count, "public": not node.name.startswith("_")})
    return out


def measure(root: str = ROOT) -> dict:
    known = modules(root)
    edges = imports(known)
    fns = functions(known)
    lines = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in known.items()}
    wings: Dict[str, dict] = {}
    for m, n in lines.items():
        w = wings.setdefault(wing(m), {"modules": 0, "lines": 0, "largest": ("", 0)})
        w["modules"] += 1
        w["lines"] += n
        if n > w["largest"][1]:
            w["largest"] = (m, n)
    longest = max(fns, key=lambda f: f["lines"])
    widest = max(fns, key=lambda f: f["params"])
    up = [(a, b) for a, b, _ in edges if wing(a) in ("cnnvis",) or wing(a).startswith("cnnvis/")
          if wing(b) in ("cli", "gallery") or (b == "cnnvis" and a != "cnnvis")]
    return {
        "modules": len(known),
        "lines": sum(lines.values()),
        "wings": {w: {"modules": v["modules"], "lines": v["lines"], "largest": list(v["largest"])}
                  for w, v in sorted(wings.items())},
        "modules_over_800_lines": sorted(m for m, n in lines.items() if n > 800),
        "longest_function": f"{longest['module']}.{longest['name']} ({longest['lines']} lines)",
        "widest_signature": f"{widest['module']}.{widest['name']} ({widest['params']} parameters)",
        "library_functions_over_10_parameters": sorted(
            f"{f['module']}.{f['name']} ({f['params']})" for f in fns
            if f["public"] and f["params"] > 10 and not f["module"].startswith(("cnnvis.cli", "cnnvis.gallery"))),
        "in_function_imports": sum(inside for _, _, inside in edges),
        "in_function_imports_by_module": {m: n for m, n in sorted(
            ((m, sum(1 for a, _, i in edges if a == m and i)) for m in known), key=lambda x: -x[1]) if n},
        "cycles": cycles(edges),
        "imports_back_up": sorted(set(up)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--root", default=ROOT)
    args = ap.parse_args(argv)
    m = measure(args.root)
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    print("| wing | modules | lines | largest module |\n| --- | --- | --- | --- |")
    for w, v in m["wings"].items():
        print(f"| `{w}` | {v['modules']} | {v['lines']:,} | `{v['largest'][0]}` ({v['largest'][1]:,}) |")
    print()
    print(f"- modules: {m['modules']}, lines: {m['lines']:,}; over 800 lines: {', '.join(m['modules_over_800_lines']) or 'none'}")
    print(f"- longest function: {m['longest_function']}")
    print(f"- widest signature: {m['widest_signature']}")
    print(f"- library functions with more than 10 parameters: {', '.join(m['library_functions_over_10_parameters']) or 'none'}")
    per_wing: Dict[str, int] = {}
    for module, n in m["in_function_imports_by_module"].items():
        per_wing[wing(module)] = per_wing.get(wing(module), 0) + n
    print(f"- in-function imports of our own modules: {m['in_function_imports']} ("
          + ", ".join(f"{w}: {n}" for w, n in sorted(per_wing.items())) + ")")
    print(f"- import cycles: {len(m['cycles'])}" + "".join(f"\n  - {' ↔ '.join(c)}" for c in m["cycles"]))
    print(f"- imports running back up: {len(m['imports_back_up'])}"
          + "".join(f"\n  - {a} → {b}" for a, b in m["imports_back_up"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
