"""Where vbatch keeps its own files: converted models and server logs.

``$VBATCH_HOME`` moves it (tests point it at a temporary folder); the default follows XDG.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "logs_dir", "models_dir"]


def home() -> Path:
    env = os.environ.get("VBATCH_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "vbatch"


def models_dir() -> Path:
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
