"""Named defaults and the options that are declared once: the library's keywords, the CLI's
flags and their help read them from here.

``ClientOptions`` is how vbatch talks to a server (key, window, timeouts, attempts);
``LaunchOptions`` is how it starts one. The fixed choices are ``Literal`` types, and the tuples
beside them (``ORDERS``, ...) are what the CLI offers and ``check_choice`` accepts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ._errors import ConfigError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "ENDPOINT_MODES",
    "INPUT_FORMATS",
    "ORDERS",
    "OVERFLOW_POLICIES",
    "Backend",
    "ClientOptions",
    "EndpointMode",
    "InputFormat",
    "LaunchOptions",
    "Order",
    "OverflowPolicy",
    "check_choice",
    "parse_adapters",
    "parse_duration",
]

# -- fixed choices -------------------------------------------------------------------------------

Order = Literal["completion", "input"]  # write results as they finish, or in input order
OverflowPolicy = Literal["error", "clamp"]  # a row that overflows the context: record or shorten
# The last three take OpenAI Batch lines only (a Batch API batch's endpoint; rows say theirs).
EndpointMode = Literal["auto", "completions", "chat", "embeddings", "score", "rerank", "responses"]
InputFormat = Literal["auto", "jsonl", "csv", "parquet"]
Backend = Literal["cpu", "gpu"]

ORDERS: tuple[Order, ...] = get_args(Order)
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = get_args(OverflowPolicy)
ENDPOINT_MODES: tuple[EndpointMode, ...] = get_args(EndpointMode)
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_adapters(given: Any) -> tuple[tuple[str, str], ...]:
    """LoRA adapters as (name, folder) pairs, from a mapping, "NAME=FOLDER" strings or pairs."""
    if isinstance(given, dict):
        given = given.items()
    pairs = []
    for item in given:
        if isinstance(item, str):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--lora takes NAME=FOLDER; got {item!r}")
            item = (name, path)
        name, path = item
        pairs.append((str(name), str(path)))
    return tuple(pairs)


def parse_duration(text: str) -> float:
    """Seconds of ``text``: a number of seconds, or one with a unit ("90s", "10m", "2h",
    "7d")."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"not a duration (like 90s, 10m, 2h): {text!r}")
    return float(match[1]) * _UNITS[match[2]]


# -- the client ------------------------------------------------------------------------------------

# vLLM's default largest CUDA-graph batch: a bigger step runs without graphs, and a hand-started
# server with default settings gave its best at this window (docs/benchmarks.md, section 2c).
DEFAULT_CONCURRENCY = 512
# The most an adaptive window grows to.
MAX_WINDOW = 4096
# Rows in flight until the first result is back; then the whole window (dispatcher.py says why).
FIRST_WAVE = 16
DEFAULT_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 5
# How often the server's /metrics is read (progress and the adaptive window).
MONITOR_INTERVAL_S = 1.0
# Results that trickle in slowly still reach the output file within this.
FLUSH_INTERVAL_S = 0.2
# With every server down, how long to wait for one to come back before the job stops.
DOWN_TIMEOUT_S = 600.0
# The job's first replies all the same non-retryable error (a bad key, a model not served):
# after this many, stop sending.
FAIL_FAST_REPLIES = 50


@dataclass(frozen=True)
class ClientOptions:
    """How vbatch talks to a server; one set serves every job of a dispatcher."""

    api_key: str | None = dataclasses.field(default=None, repr=False)  # never shown
    concurrency: int | None = None  # None: the adaptive window, from DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    down_timeout_s: float = DOWN_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1; got {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1; got {self.max_attempts}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive; got {self.timeout_s}")


# -- a server vbatch starts ------------------------------------------------------------------------

DEFAULT_HOST = "127.0.0.1"  # servers vbatch starts are not reachable from elsewhere unless asked
STARTUP_TIMEOUT_S = 900.0
# Stopping: SIGTERM to the server's process group, then SIGKILL after a grace. A server that
# served gets the long one. One still starting has nothing to finish and does not stop on
# SIGTERM: vLLM's API process waits for its engine, which SIGTERM ended, until killed
# (measured: docs/benchmarks.md §1, "Stopping a replica that is still starting").
STOP_GRACE_S = 30.0
STARTING_STOP_GRACE_S = 3.0
# A server vbatch started that dies is restarted, at most this many times within
# RESTART_WINDOW_S; one more death fails the job (with the server's last log lines).
MAX_RESTARTS = 3
RESTART_WINDOW_S = 600.0
RESTART_REASONS_KEPT = 10  # why each restart happened: the summary keeps the last this many

# -- the Batch API service (vbatch api) ----------------------------------------------------------

DEFAULT_API_PORT = 8300
# OpenAI's limits for one batch: its input may hold this many lines and bytes (both settable).
MAX_BATCH_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
# The completion window OpenAI offers; the service also takes shorter ones ("90s", "30m").
COMPLETION_WINDOW = "24h"
# A failed validation names at most this many bad lines.
MAX_REPORTED_ERRORS = 100
# A scan that cannot yet check rows' models against the servers' list records at most this many
# distinct names to check once it comes: a server serves a handful (a model, its adapters).
MAX_RECORDED_MODELS = 1_000
# The service's two processes (_service/serve.py): the runner ticks this often (starting the
# batches the API's process created, applying its cancels, publishing live counts for it), so
# what the API shows of a running batch is at most about this old.
RUNNER_TICK_S = 0.5
# The API's process says it serves within this (imports, the database), else the service ends.
API_START_TIMEOUT_S = 60.0
# SIGTERM lets the API's process finish the requests it holds for this long, then SIGKILL.
API_STOP_GRACE_S = 10.0

# -- watching servers ------------------------------------------------------------------------------

HEALTH_INTERVAL_S = 1.0  # every member's /health is asked this often
# A starting server is asked more often: the first result waits on the first answer, and a
# refused connection costs nothing.
STARTUP_POLL_S = 0.1
PROBE_TIMEOUT_S = 5.0  # a /health that takes longer counts as a failed probe
# A member whose process lives but fails this many probes in a row is taken out (a hung
# server); a probe after a request failed without a reply takes it out at once.
UNHEALTHY_PROBES = 3


@dataclass(frozen=True)
class LaunchOptions:
    """What a caller may say about the vLLM server(s) vbatch starts; ``None`` lets the plan
    choose (engine/plan.py). Beside a server of one's own (``base_url``) any of these set to
    other than its default is an error: ``given()`` names them."""

    max_model_len: int | None = None
    max_num_seqs: int | None = None
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    replicas: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    vllm_args: tuple[str, ...] = ()
    host: str = DEFAULT_HOST
    port: int = 0  # 0: a free port
    startup_timeout_s: float = STARTUP_TIMEOUT_S
    max_restarts: int = MAX_RESTARTS
    # Seconds the servers stay up, idle, after the run (a warm fleet that later runs attach
    # to); 0: stopped with the run.
    keep_alive_s: float = 0.0
    # LoRA adapters each server serves beside the model, as (name, folder): rows ask for one
    # by its name in ``model``. Also given as {name: folder} or "NAME=FOLDER" strings.
    lora: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", parse_adapters(self.lora))
        if self.replicas is not None and self.replicas > 1 and self.port:
            raise ConfigError("--port names one port; replicas each take a free one")
        if self.keep_alive_s < 0:
            raise ConfigError(f"keep_alive must not be negative; got {self.keep_alive_s}")

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> LaunchOptions:
        """Take the launch settings out of flat keyword ``options`` (the CLI's and the
        library's alike); what is left belongs to the job and the client."""
        taken = {name: options.pop(name) for name in cls.names() & options.keys()}
        if isinstance(taken.get("vllm_args"), list):
            taken["vllm_args"] = tuple(taken["vllm_args"])
        # A flag left unset arrives as None: the default, as if not given.
        defaults = cls()
        taken = {k: getattr(defaults, k) if v is None else v for k, v in taken.items()}
        return cls(**taken)

    def given(self) -> list[str]:
        """The settings that differ from their defaults, in declaration order."""
        defaults = LaunchOptions()
        return [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        ]
