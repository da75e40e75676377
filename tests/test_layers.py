"""The package's layers (``docs/internals/architecture.rst``), read from its imports:
no import circle, none hidden in a function, nothing imported from above."""

import ast
import importlib.util
from pathlib import Path

import django_bgtasks

PACKAGE = Path(django_bgtasks.__file__).parent
# The modules below the models, which the models may import.
BASE = {
    "backoff",
    "compat",
    "conf",
    "control",
    "cron",
    "db",
    "exceptions",
    "limits",
    "locking",
    "notify",
    "private_api",
    "registry",
    "routes",
    "serialization",
    "steps",
    "unique",
}
# Where an import inside a function is on purpose: the AppConfig, which
# loads the rest once Django is ready, and the package's lazy public names.
# Modules that must import lazily: the app config, the package, and the
# pytest plugin (loaded before Django is set up).
LAZY = {"apps", "__init__", "pytest_plugin"}


def module_name(path: Path) -> str:
    """``worker.runner`` for django_bgtasks/worker/runner.py; a package's
    ``__init__`` is the package itself (``__init__`` at the top)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    where = PACKAGE.joinpath(*name.split("."))
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, bool]]:
    """The package's modules ``path`` imports: (name, inside a function)."""
    name = module_name(path)
    full = "django_bgtasks" if name == "__init__" else f"django_bgtasks.{name}"
    package = full if path.name == "__init__.py" else full.rpartition(".")[0]
    found = []

    def add(absolute: str, nested: bool) -> None:
        if absolute == "django_bgtasks":
            found.append(("__init__", nested))
        elif absolute.startswith("django_bgtasks."):
            found.append((absolute.removeprefix("django_bgtasks."), nested))

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                relative = "." * child.level + (child.module or "")
                base = importlib.util.resolve_name(relative, package)
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    inside = submodule.removeprefix("django_bgtasks.")
                    if submodule.startswith("django_bgtasks.") and is_module(inside):
                        add(submodule, inner)
                    else:
                        add(base, inner)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, inner)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = module_name(path)
        modules[name] = {target for target, _ in imports(path)} - {name}
    return modules


def test_no_import_circle():
    modules = graph()
    done, path = set(), []

    def visit(name):
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError(f"import circle: {' -> '.join(cycle)}")
        if name in done or name not in modules:
            return
        path.append(name)
        for target in modules[name]:
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(modules):
        visit(name)


def test_no_import_of_the_package_hides_in_a_function():
    hidden = [
        f"{module_name(path)} imports {target}"
        for path in PACKAGE.rglob("*.py")
        if module_name(path).split(".")[-1] not in LAZY
        for target, nested in imports(path)
        if nested
    ]
    assert hidden == []


def test_the_models_import_nothing_above_them():
    upward = {
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith("models")
        for target in targets
        if not target.startswith("models") and target.split(".")[0] not in BASE
    }
    assert upward == set()


def test_the_base_modules_import_no_model_and_no_worker():
    upward = {
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name in BASE
        for target in targets
        if target.split(".")[0] not in BASE
    }
    assert upward == set()
