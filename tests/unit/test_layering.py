"""The code's three parts keep their direction (README: How the code is laid out): the host engine imports
nothing of Matrix (no service, not the operator's side); a service imports another service only through a
declared interface; the operator's side does not import the lab tool; nothing in the product (matrix_deploy/, deploy.py, bench/) imports the tests."""

import ast
from pathlib import Path

from tests.conftest import ROOT

# What one service may use of another, and why.
INTERFACES = {
    "matrix_deploy.services.postgres.dumps": "the dump MAS and Synapse take before they migrate their database",
    "matrix_deploy.services.delegation": "delegation between MAS and Synapse: the mode, its record, its client",
    "matrix_deploy.services.synapse.workers": "the workers nginx routes to",
    "matrix_deploy.services.redis.service": "Redis, configured by Synapse's stage before its processes restart",
    "matrix_deploy.services.postgres.databases": "the databases, created alike by PostgreSQL's stage and a restore",
    "matrix_deploy.services.synapse.paths": "where Synapse's config, data and signing key are: what backups hold",
    "matrix_deploy.services.mas.paths": "where MAS's config and releases are: what an adoption runs syn2mas from",
    "matrix_deploy.services.mas.secret_files": "MAS's secret files: the upstream client secrets an adoption brings",
}
# The one module that knows every service: which runs for each role (deploy.py composes the stages from it).
REGISTRY = "matrix_deploy.services.roles"


def _imports(path: Path, module: str = "", bases: set[str] | None = None) -> set[str]:
    """Every module `path` imports, relative imports resolved from `module` (its own name); `bases` collects the
    modules named by `from X import ...` (X itself)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
            if bases is not None:
                bases.add(base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _service(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["matrix_deploy", "services"] and len(parts) > 2 else None


def arrows_against_the_layering(root: Path = ROOT) -> list[str]:
    wrong = []
    product = [*(root / "matrix_deploy").rglob("*.py"), root / "deploy.py", *(root / "bench").glob("*.py")]
    for path in product:
        module = _module(path)
        here = _service(module)
        for name in sorted(_imports(path, module)):
            if name == "tests" or name.startswith("tests."):
                wrong.append(f"{module} imports {name}: the product never imports the tests")
            elif module.startswith("matrix_deploy.engine.") and name.startswith("matrix_deploy."):
                if not name.startswith("matrix_deploy.engine"):
                    wrong.append(f"{module} imports {name}: the engine knows no service and not the operator's side")
            elif module.startswith("matrix_deploy.operator.") and name.startswith("matrix_deploy.lab"):
                wrong.append(f"{module} imports {name}: the operator's side starts the lab tool, never imports it")
            elif here and module != REGISTRY and (there := _service(name)) and there != here:
                if not any(name == i or name.startswith(i + ".") for i in INTERFACES) and name != there:
                    wrong.append(f"{module} imports {name}: not a declared interface of {there}")
    return wrong


def test_imports_follow_the_layering():
    assert arrows_against_the_layering() == []


def _exists(module: str, root: Path = ROOT) -> bool:
    path = root / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_import_of_the_product_exists():
    """A relative import that climbs wrong (`from .lab` in the operator's side) names no module: found here, not
    when an operator first runs that command."""
    missing = []
    for path in (ROOT / "matrix_deploy").rglob("*.py"):
        bases: set[str] = set()
        _imports(path, _module(path), bases)
        missing += [f"{_module(path)}: {b}" for b in sorted(bases) if b.startswith("matrix_deploy") and not _exists(b)]
    assert missing == []


def test_every_declared_interface_exists():
    for interface in INTERFACES:
        path = ROOT / interface.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), interface
