"""The package's import graph has no cycle (function-level imports of its own modules included),
the model layer imports nothing above it, and every module imports on its own."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import jaxselfeval

PKG = Path(jaxselfeval.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ("jaxselfeval",) + p.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports_of(name: str, path: Path, known) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (top level and inside
    functions). `from a import b` counts a.b when b is a module, else a; importing a.b.c also
    runs the packages a.b and a, which count unless they enclose `name` itself (Python has them
    already)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            if t not in known:
                continue
            parts = t.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts))} - own
            found.add(t)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, mods) for n, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_the_cycle_finder_finds_a_hidden_cycle(tmp_path):
    """The walk sees imports inside functions and relative imports (so the test below can fail)."""
    pkg = tmp_path / "jaxselfeval"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from jaxselfeval.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    known = {"jaxselfeval", "jaxselfeval.a", "jaxselfeval.b"}
    graph = {n: imports_of(n, pkg / (n.split(".")[-1] + ".py") if n != "jaxselfeval"
                           else pkg / "__init__.py", known) for n in known}
    assert find_cycle(graph) == ["jaxselfeval.a", "jaxselfeval.b", "jaxselfeval.a"]
    assert find_cycle({**graph, "jaxselfeval.b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "jaxselfeval.model.cache" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_flows_one_way():
    """backends <- model <- sharding / io <- sample <- strategies <- evaluate <- commands: a
    backend imports nothing of the package; the model imports only itself, the backends and
    errors; sharding does not load models; the sampler does not import the strategies, the
    harness or the commands."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("jaxselfeval.backends"):
            assert deps <= {"jaxselfeval.backends"}, (name, deps)
        if name.startswith("jaxselfeval.model"):
            assert deps <= {"jaxselfeval.errors", "jaxselfeval.model", "jaxselfeval.backends"} | {
                d for d in deps if d.startswith(("jaxselfeval.model.", "jaxselfeval.backends.")
                                                )}, (name, deps)
    assert "jaxselfeval.hf_io" not in graph["jaxselfeval.sharding"]
    above = ("jaxselfeval.strategies", "jaxselfeval.evaluate", "jaxselfeval.commands",
             "jaxselfeval.cli")
    for name, deps in graph.items():
        if name.startswith(("jaxselfeval.sample", "jaxselfeval.hf_io", "jaxselfeval.sharding")):
            assert not {d for d in deps if d.startswith(above)}, (name, deps)


def test_every_module_imports_on_its_own():
    """`import jaxselfeval.<module>` with no other module of the package imported first, for every
    module: one fresh interpreter that forgets the whole package before each import (jax and the
    other third-party packages stay loaded, which only saves time)."""
    names = sorted(modules())
    code = (
        "import importlib, json, sys, traceback\n"
        "bad = {}\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'jaxselfeval' or m.startswith('jaxselfeval.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException:\n"
        "        bad[name] = traceback.format_exc(limit=-3)\n"
        "print(json.dumps(bad))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       cwd=PKG.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert bad == {}, "\n".join(f"{k}:\n{v}" for k, v in bad.items())


def test_no_module_imports_jax_private_api():
    """Only jax's public API: `jax._src` moves between releases (a plan that imported
    `jax._src.xla_bridge` would break on an upgrade). The cli may name it as a logger only."""
    bad = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{name}: {m}" for m in mods if m.startswith("jax._src")]
    assert not bad, bad
