"""``examples/quickstart.ipynb`` runs top to bottom in a real Jupyter kernel (nbclient), against
the session's real vLLM server (``VBATCH_BASE_URL``, as a reader with servers of their own
would set it): every cell without error, the results frame shown, the progress shown in the
cell as a notebook output, with no terminal escape codes anywhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from vbatch._engine.server import VllmServer

NOTEBOOK = Path(__file__).parents[2] / "examples" / "quickstart.ipynb"

pytestmark = pytest.mark.vllm


def _outputs(cell: Any) -> list[dict[str, Any]]:
    return list(cell.get("outputs", []))


def test_the_quickstart_notebook_runs(
    vllm_server: VllmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    monkeypatch.setenv("VBATCH_BASE_URL", vllm_server.base_url)  # the kernel inherits it
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute(env=dict(os.environ))

    code = [c for c in notebook.cells if c.cell_type == "code"]
    every = [o for c in code for o in _outputs(c)]
    assert not [o for o in every if o["output_type"] == "error"]
    assert "\x1b[" not in nbformat.writes(notebook)  # no raw escape codes in any output

    generated = _outputs(code[1])
    shown = [o for o in generated if "text/plain" in o.get("data", {})]
    progress = [o for o in shown if str(o["data"]["text/plain"]).startswith("vbatch: ")]
    assert progress, generated  # the progress display, updated in place to its last view
    assert "6/6 rows" in progress[-1]["data"]["text/plain"]
    assert "<progress" in progress[-1]["data"]["text/html"]
    table = [o for o in generated if o["output_type"] == "execute_result"]
    html = table[0]["data"]["text/html"]
    assert html.split("<tbody>")[1].count("<tr>") == 6 and "finish_reason" in html
    assert _outputs(code[2])[0]["text"] == "6 of 6 rows answered\n"
    assert _outputs(code[3])[-1]["data"]["text/plain"] == "True"
    assert (tmp_path / "quickstart.jsonl").read_text().count("\n") == 6
    typed = [o for o in _outputs(code[4]) if o["output_type"] == "execute_result"]
    html = typed[0]["data"]["text/html"]
    assert "parsed" in html and "schema_error" in html and "'mood': " in html
