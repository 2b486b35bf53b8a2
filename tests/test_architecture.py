"""The package layout's import rules (README "Architecture"), read from the source with ``ast``.

Each rule names the packages a module may not import; a new import that breaks the layout fails
here, whatever the import style (``import x``, ``from x import y``, inside a function).
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
# Monoliths still being split by concern (issue 21); each entry leaves this set when its split lands.
NOT_YET_SPLIT = set()

# package -> imports it must never make (prefix match on the dotted module name)
FORBIDDEN = {
    "mbrec.models": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.results"),
    "baselines": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.results"),
    "mbrec.layers": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.results", "mbrec.training",
                     "mbrec.models", "baselines", "mbrec.data"),
    "mbrec.training": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.results", "mbrec.models",
                       "baselines"),
    "mbrec.data": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.training", "mbrec.models",
                   "baselines", "mbrec.evaluation"),
    "mbrec.evaluation": ("mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.training", "mbrec.models",
                         "baselines"),
    "mbrec.benchmark": ("mbrec.reporting", "mbrec.cli"),
    # reporting reads records only: no torch, no dataset, no model, no trainer, no runner
    "mbrec.reporting": ("torch", "recbole", "mbrec.benchmark", "mbrec.cli", "mbrec.training", "mbrec.models",
                        "baselines", "mbrec.data", "mbrec.layers", "mbrec.registry", "mbrec.config",
                        "mbrec.evaluation.evaluator"),
    "mbrec.results": ("torch", "recbole", "mbrec.benchmark", "mbrec.reporting", "mbrec.cli", "mbrec.training"),
    # the protocol fingerprint: read by the runner and by reporting, so standard library only
    "mbrec.protocol": ("torch", "recbole", "numpy", "mbrec.benchmark", "mbrec.reporting", "mbrec.cli",
                       "mbrec.training", "mbrec.data", "mbrec.models", "baselines", "mbrec.evaluation"),
}


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources():
    for root in ("mbrec", "baselines"):
        for path in sorted((REPO / root).rglob("*.py")):
            yield _module_name(path), path


def imports_of(path, module=None):
    """Every module name ``path`` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def _under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def test_forbidden_imports():
    broken = []
    for module, path in _sources():
        for package, forbidden in FORBIDDEN.items():
            if not _under(module, package):
                continue
            for name in imports_of(path):
                hits = [prefix for prefix in forbidden if _under(name, prefix)]
                broken += [f"{module} imports {name} ({package} must not import {prefix})" for prefix in hits]
    assert not broken, "\n".join(broken)


def _package_of(module):
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "mbrec" and len(parts) > 1 else parts[0]


def test_no_import_cycle_between_packages():
    """Module-level imports only: a cycle through modules of different packages is a layering error."""
    modules = dict(_sources())
    graph = defaultdict(set)
    for module, path in modules.items():
        for name in imports_of(path):
            target = next((m for m in (name, name.rpartition(".")[0]) if m in modules), None)
            if target and target != module:
                graph[module].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.add(item)
                if item == node:
                    break
            if len({_package_of(m) for m in component}) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles across packages: {cycles}"


def test_rules_detect_a_forbidden_import(tmp_path):
    """The checker itself: a model importing the runner, absolutely or relatively, inside a function, is seen."""
    model = tmp_path / "bad.py"
    model.write_text("def f():\n    from mbrec.benchmark.runner import run\nfrom ..reporting import tables\n")
    names = imports_of(model, module="mbrec.models.bad")
    assert "mbrec.benchmark.runner" in names and "mbrec.reporting.tables" in names
    assert all(any(_under(n, p) for p in FORBIDDEN["mbrec.models"])
               for n in ("mbrec.benchmark.runner", "mbrec.reporting.tables"))


@pytest.mark.parametrize("module,path", list(_sources()))
def test_module_size(module, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if module in NOT_YET_SPLIT:
        pytest.xfail(f"{module}: {lines} lines, split pending")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (at most {MAX_MODULE_LINES}: split it by concern)"


def test_every_package_says_what_it_may_import():
    for init in sorted((REPO / "mbrec").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc.lower(), f"{init.relative_to(REPO)}: docstring must say what the package may import"
