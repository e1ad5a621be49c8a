"""The code's three parts keep their direction (README: How the code is laid out): the host engine imports
nothing of Matrix (no service, not the operator's side); a service imports another service only through a
declared interface; nothing in the product (matrix_deploy/, deploy.py, bench/) imports the tests."""

import ast
from pathlib import Path

from tests.conftest import ROOT

# What one service may use of another, and why.
INTERFACES = {
    "matrix_deploy.services.postgres.dumps": "the dump MAS and Synapse take before they migrate their database",
    "matrix_deploy.services.delegation": "delegation between MAS and Synapse: the mode, its record, its client",
    "matrix_deploy.services.synapse.workers": "the workers nginx routes to",
    "matrix_deploy.services.redis.service": "Redis, configured by Synapse's stage before its processes restart",
}
# The one module that knows every service: which runs for each role (deploy.py composes the stages from it).
REGISTRY = "matrix_deploy.services.roles"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
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
        for name in sorted(_imports(path)):
            if name == "tests" or name.startswith("tests."):
                wrong.append(f"{module} imports {name}: the product never imports the tests")
            elif module.startswith("matrix_deploy.engine.") and name.startswith("matrix_deploy."):
                if not name.startswith("matrix_deploy.engine"):
                    wrong.append(f"{module} imports {name}: the engine knows no service and not the operator's side")
            elif here and module != REGISTRY and (there := _service(name)) and there != here:
                if not any(name == i or name.startswith(i + ".") for i in INTERFACES) and name != there:
                    wrong.append(f"{module} imports {name}: not a declared interface of {there}")
    return wrong


def test_imports_follow_the_layering():
    assert arrows_against_the_layering() == []


def test_every_declared_interface_exists():
    for interface in INTERFACES:
        path = ROOT / interface.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), interface
