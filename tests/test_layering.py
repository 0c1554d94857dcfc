"""The house's floors, read from the code's own imports: `mint/` and `kernels/` import nothing from
`services/`; each service imports `mint/`, `kernels/`, the scheduler library and itself, never another
service. `services/embedded.py` is the one place where services are wired together in one process."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIRING = {"services/embedded.py"}  # in-process wiring: the one module that may import several services
LIBRARY = "scheduler"  # a library every service may use


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "proto" not in p.relative_to(ROOT).parts[:2])


@pytest.mark.parametrize("folder", ["mint", "kernels"])
def test_the_ground_floor_imports_no_service(folder):
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(folder)
        for line, module in imported_modules(path)
        if module == "services" or module.startswith("services.")
    ]
    assert not crossings, "\n".join(crossings)


def test_no_service_imports_another_service():
    crossings = []
    for path in python_files("services"):
        relative = path.relative_to(ROOT)
        if str(relative) in WIRING or len(relative.parts) < 3:
            continue
        own = relative.parts[1]
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "services" and (len(parts) < 2 or parts[1] not in (own, LIBRARY)):
                crossings.append(f"{relative}:{line} imports {module}")
    assert not crossings, "\n".join(crossings)


def test_modules_directly_under_services_are_wiring_or_tools():
    """A module beside the service folders is either the in-process wiring or a tool that runs services as
    processes (local_fleet) and so imports none of their modules."""
    for path in (ROOT / "services").glob("*.py"):
        relative = str(path.relative_to(ROOT))
        if relative in WIRING or path.name == "__init__.py":
            continue
        services = [m for _, m in imported_modules(path) if m.startswith("services.")]
        assert not services, f"{relative} imports {services}"
