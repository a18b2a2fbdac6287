"""vbatch: large batch generation on vLLM.

The public surface is exactly ``__all__``; the subpackages (``_input``, ``_client``,
``_output``, ``_engine``, ``_fleet``, ``_run``, ``_cli``) are the internal layout and may
change.
"""

from ._api import agenerate, arun, connect, generate, make_job, run, stream
from ._client.dispatcher import Dispatcher
from ._client.retry import RetryPolicy, StopAfterAttempt, StopAfterDelay, WaitExponentialJitter
from ._client.stats import Stats
from ._client.transport import AiohttpTransport, MockTransport, Response, Transport
from ._config import DEFAULT_CONCURRENCY, ClientOptions, LaunchOptions
from ._errors import (
    ConfigError,
    FleetError,
    InputError,
    LaunchError,
    MergeError,
    OutputError,
    RejectedError,
    ResumeError,
    TransportError,
    VbatchError,
)
from ._input.requests import FieldMap, RequestBuilder
from ._job import Job, RunSummary
from ._models import ErrorInfo, PreparedRequest, RequestDefaults, Result
from ._options import Options
from ._output.merge import MergeSummary, merge
from ._output.rows import RowResult
from ._progress import LogProgress, NullProgress, Progress, RichProgress, RunView
from ._run.runner import ResultStream, iter_results, run_job

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AiohttpTransport",
    "ClientOptions",
    "ConfigError",
    "Dispatcher",
    "ErrorInfo",
    "FieldMap",
    "FleetError",
    "InputError",
    "Job",
    "LaunchError",
    "LaunchOptions",
    "LogProgress",
    "MergeError",
    "MergeSummary",
    "MockTransport",
    "NullProgress",
    "Options",
    "OutputError",
    "PreparedRequest",
    "Progress",
    "RejectedError",
    "RequestBuilder",
    "RequestDefaults",
    "Response",
    "Result",
    "ResultStream",
    "ResumeError",
    "RetryPolicy",
    "RichProgress",
    "RowResult",
    "RunSummary",
    "RunView",
    "Stats",
    "StopAfterAttempt",
    "StopAfterDelay",
    "Transport",
    "TransportError",
    "VbatchError",
    "WaitExponentialJitter",
    "__version__",
    "agenerate",
    "arun",
    "connect",
    "generate",
    "iter_results",
    "make_job",
    "merge",
    "run",
    "run_job",
    "stream",
]
