"""``vbatch api``: the OpenAI-compatible Batch API service (``_service``), loaded only when
the command runs, so the rest of the CLI needs none of its web dependencies."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .._config import (
    DEFAULT_API_PORT,
    DEFAULT_HOST,
    MAX_BATCH_LINES,
    MAX_FILE_BYTES,
    LaunchOptions,
    OverflowPolicy,
)
from .._errors import VbatchError
from .._fleet.base import base_urls
from .._fleet.factory import FleetTarget
from .._options import client_options as client_settings
from .commands import UserError, _fail
from .options import client_options, engine_options

__all__ = ["api_command"]


@click.command("api")
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Interface the service listens on; without API keys only a loopback one.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_API_PORT,
    show_default=True,
    help="The service's port (0: a free one, printed).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Where files, outputs and the database are kept [default: $VBATCH_HOME/api].",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="The service's bearer keys, one a line (else $VBATCH_API_KEYS, comma-"
    "separated); each key sees only its own files and batches. Without any the "
    "service listens on loopback only. Keys are never printed or logged.",
)
@click.option(
    "--webhook-url",
    metavar="URL",
    help="POST batch.completed|failed|expired|cancelled events here (Standard "
    "Webhooks), retried with back-off.",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="The webhook signing secret (whsec_...) [else $VBATCH_WEBHOOK_SECRET].",
)
@click.option(
    "--max-lines",
    type=click.IntRange(min=1),
    default=MAX_BATCH_LINES,
    show_default=True,
    help="Most lines a batch's input may have.",
)
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=MAX_FILE_BYTES,
    show_default=True,
    help="Largest file an upload may be.",
)
@click.option("--model", help="Model to launch when no --base-url is given, a path or hub "
              "name [default: the embedded SmolLM2-135M-Instruct].")  # fmt: skip
@client_options
@engine_options
def api_command(
    host: str,
    port: int,
    data_dir: str | None,
    api_key_file: str | None,
    webhook_url: str | None,
    webhook_secret_file: str | None,
    max_lines: int,
    max_file_bytes: int,
    model: str | None,
    base_url: tuple[str, ...],
    api_key: str | None,
    concurrency: int | None,
    timeout_s: float,
    max_attempts: int,
    down_timeout_s: float,
    on_overflow: OverflowPolicy,
    **engine: Any,
) -> None:
    """Serve an OpenAI-compatible Batch API (/v1/files, /v1/batches) on your own servers.

    \b
    vbatch api --model /models/Qwen2.5-7B-Instruct --api-key-file keys.txt
    vbatch api --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1

    Batches survive restarts (a killed service resumes them without sending a finished row
    again), share one in-flight window fairly (metadata["priority"] weights a batch's share)
    and show live at http://HOST:PORT/.
    """
    try:
        from .._service.auth import load_keys
        from .._service.serve import ServiceSettings, default_data_dir, serve
    except ImportError as exc:  # pragma: no cover - fastapi and uvicorn come with vLLM
        raise UserError(
            f"vbatch api needs the api extra (pip install 'vbatch[api]'): {exc}"
        ) from None
    try:
        fleet = FleetTarget(tuple(base_urls(list(base_url))), model=model,
                            launch=LaunchOptions.pop_from(dict(engine)),
                            down_timeout_s=down_timeout_s)  # fmt: skip
        secret = os.environ.get("VBATCH_WEBHOOK_SECRET")
        if webhook_secret_file is not None:
            with open(webhook_secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        settings = ServiceSettings(
            keys=load_keys(api_key_file), host=host, port=port,
            data_dir=data_dir or default_data_dir(), fleet=fleet,
            client=client_settings(dict(api_key=api_key, concurrency=concurrency,
                                       timeout_s=timeout_s, max_attempts=max_attempts,
                                       down_timeout_s=down_timeout_s)),
            on_overflow=on_overflow, max_lines=max_lines, max_file_bytes=max_file_bytes,
            webhook_url=webhook_url, webhook_secret=secret,
        )  # fmt: skip
        settings.check()
        serve(settings)
    except OSError as exc:
        raise UserError(str(exc)) from None
    except VbatchError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
