"""The ``vbatch`` command line: ``run`` and ``serve`` (commands.py), ``api`` (api.py)."""

from .api import api_command
from .commands import cli, main

cli.add_command(api_command)

__all__ = ["main"]
