"""The embedded default model: SmolLM2-135M-Instruct, converted once into the vbatch home."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .._errors import LaunchError
from .paths import models_dir

__all__ = ["EMBEDDED_MODEL_NAME", "ensure_embedded_model"]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_MARKER = ".vbatch-complete"


def ensure_embedded_model() -> Path:
    """The converted model's folder, converting the packaged GGUF on first use.

    A file lock makes concurrent first uses (tests, two terminals) convert once; the result
    appears by rename, so a killed conversion leaves nothing half-written behind.
    """
    root = models_dir()
    target = root / EMBEDDED_MODEL_NAME
    if (target / _MARKER).exists():
        return target
    with open(root / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "vbatch._engine.convert", str(tmp)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
                raise LaunchError(f"converting the embedded model failed:\n{tail}")
            (tmp / _MARKER).touch()
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
