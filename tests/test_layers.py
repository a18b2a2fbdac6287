"""Locks the direction of imports between the parts: data flows one way (source -> request
builder -> dispatcher -> transport -> sink; fleets provide endpoints), so the input side, the
output side and the engine never reach into the client, and planning a server never needs HTTP."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import vbatch

ROOT = Path(vbatch.__file__).parent
# Values, settings, helpers.
SHARED = {"_config", "_errors", "_models", "_batchline", "_schema", "_tasks"}
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
    here = package.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:  # from .x (this subpackage), ..x (one up), ...x
                found.add(".".join([*here[: len(here) - node.level + 1], node.module]))
            elif node.module.startswith("vbatch."):
                found.add(node.module.removeprefix("vbatch."))
    return found


def _modules(package: str) -> list[tuple[Path, str]]:
    """(path, its subpackage as dotted name below vbatch) of every module below ``package``."""
    return [(path, ".".join(path.parent.relative_to(ROOT).parts))
            for path in sorted((ROOT / package).rglob("*.py"))]  # fmt: skip


def test_each_part_imports_only_what_lies_upstream_of_it() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path, sub in _modules(package):
            for module in _imports(path, sub):
                if module.split(".")[0] == package:
                    continue
                if module not in allowed and module.split(".")[0] not in allowed:
                    wrong.append(f"{package}/{path.name} imports {module}")
    assert wrong == []


def _top_level_imports(path: Path) -> set[str]:
    """Top-level packages ``path`` imports at module level (not inside a function)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_ray_is_imported_only_inside_the_ray_fleet_and_only_when_asked_for() -> None:
    outside = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if "ray" in _top_level_imports(p)]  # fmt: skip
    assert outside == []  # not even _fleet/ray: it is imported without Ray too
    mentions = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                if re.search(r"^\s+(import ray|from ray[. ])", p.read_text(), re.M)}  # fmt: skip
    assert mentions and all(m.startswith("_fleet/ray/") for m in mentions), mentions
    code = ("import sys, vbatch, vbatch._cli.commands, vbatch._fleet.ray; "
            "print('ray' in sys.modules)")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    assert loaded == "False"


def test_the_client_sees_only_the_fleet_seam() -> None:
    for path, sub in _modules("_client"):
        fleet = {m for m in _imports(path, sub) if m.startswith("_fleet")}
        assert fleet <= {"_fleet.base"}, (path.name, fleet)


def test_only_the_cli_reaches_the_service() -> None:
    """The Batch API service (``_service``) sits on top of the core: nothing in the core
    imports it, so the library works without its web dependencies."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        sub = ".".join(path.parent.relative_to(ROOT).parts)
        if sub.split(".")[0] in ("_service", "_cli"):
            continue
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path, sub)
                  if m.lstrip(".").split(".")[0] == "_service"]  # fmt: skip
    assert wrong == []
    assert any(m.startswith("_service") for m in _imports(ROOT / "_cli" / "api.py", "_cli"))


def test_the_check_sees_imports() -> None:
    client = _imports(ROOT / "_client" / "dispatcher.py", "_client")
    assert "_config" in client and "_client.sender" in client
    fleet = _imports(ROOT / "_fleet" / "ray" / "fleet.py", "_fleet.ray")
    assert "_fleet.roster" in fleet and "_fleet.ray.member" in fleet and "_engine.sizing" in fleet


def _module_path(module: str) -> tuple[Path, str]:
    """(path, its subpackage) of a dotted name below ``vbatch``: a module or a package."""
    parts = module.split(".")
    package = ROOT.joinpath(*parts)
    if package.is_dir():
        return package / "__init__.py", module
    return ROOT.joinpath(*parts[:-1], parts[-1] + ".py"), ".".join(parts[:-1])


def _reach(module: str) -> set[str]:
    """Every vbatch module ``module`` imports, directly or not (packages' ``__init__`` too),
    but the top package's (``vbatch/__init__`` loads the public surface for any import)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
        path, sub = _module_path(name)
        if path.exists():  # a top-level module's ``from ._x`` reads as "._x"
            todo += sorted(m.lstrip(".") for m in _imports(path, sub))
    return seen


def test_the_api_process_never_loads_the_runner_or_the_dispatcher() -> None:
    """The API's own process (issue 19) answers from the database: none of the batches'
    running (the runner, the dispatcher, the fleet) is in what it imports."""
    reached = _reach("_service.apiserver")
    assert {"_service.app", "_service.views", "_service.store"} <= reached
    runner_side = ("_client", "_run", "_fleet", "_api", "_service.runner", "_service.drive",
                   "_service.batchjob", "_service.serve", "_service.webhooks")  # fmt: skip
    wrong = sorted(m for m in reached if m.startswith(runner_side))
    assert wrong == []
    assert "_client.dispatcher" in _reach("_service.serve")  # the check sees the runner's
