"""Locks the direction of imports between the parts: data flows one way (source -> request
builder -> dispatcher -> transport -> sink; fleets provide endpoints), so the input side, the
output side and the engine never reach into the client, and planning a server never needs HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import vbatch

ROOT = Path(vbatch.__file__).parent
SHARED = {"_config", "_errors", "_models", "_batchline", "_tasks"}  # values, settings, helpers
ALLOWED = {
    "_input": SHARED,
    "_output": SHARED | {"_input"},  # row identity: id digests, the validated index
    "_engine": SHARED,
    "_fleet": SHARED | {"_engine"},
    "_client": SHARED | {"_fleet.base"},  # the fleet seam only, not how fleets are made
}


def _imports(path: Path, package: str) -> set[str]:
    """The vbatch modules ``path`` (in subpackage ``package``) imports, as dotted names below
    ``vbatch``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level == 2:  # from ..x import y
                found.add(node.module)
            elif node.level == 1:  # from .x import y: the same subpackage
                found.add(f"{package}.{node.module}")
            elif node.module.startswith("vbatch."):
                found.add(node.module.removeprefix("vbatch."))
    return found


def test_each_part_imports_only_what_lies_upstream_of_it() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).glob("*.py")):
            for module in _imports(path, package):
                if module.split(".")[0] == package:
                    continue
                if module not in allowed and module.split(".")[0] not in allowed:
                    wrong.append(f"{package}/{path.name} imports {module}")
    assert wrong == []


def test_only_the_cli_reaches_the_service() -> None:
    """The Batch API service (``_service``) sits on top of the core: nothing in the core
    imports it, so the library works without its web dependencies."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        package = path.parent.relative_to(ROOT).parts[0] if path.parent != ROOT else ""
        if package in ("_service", "_cli"):
            continue
        modules = _imports(path, package) if package else _top_level_imports(path)
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in modules
                  if m.split(".")[0] == "_service"]  # fmt: skip
    assert wrong == []
    assert "_service" in _top_level_imports(ROOT / "_cli" / "api.py", "_cli")


def _top_level_imports(path: Path, package: str = "") -> set[str]:
    """Like ``_imports``, with imports inside functions (the CLI loads the service lazily)
    and for modules at the package's top level (``from ._x import``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level == 1 and not package:
                found.add(node.module)
            elif node.level == 2 or (node.level == 1 and package):
                found.add(node.module if node.level == 2 else f"{package}.{node.module}")
    return {m.split(".")[0] for m in found}


def test_the_check_sees_imports() -> None:
    client = _imports(ROOT / "_client" / "dispatcher.py", "_client")
    assert "_config" in client and "_client.sender" in client
