"""vbatch: large batch generation on vLLM."""

from ._api import arun, connect, make_job, run, stream
from ._dispatcher import DEFAULT_CONCURRENCY, Dispatcher
from ._errors import InputError, OutputError, ResumeError, VbatchError
from ._job import Job, RunSummary, iter_results, run_job
from ._models import ErrorInfo, PreparedRequest, RequestDefaults, Result
from ._progress import LogProgress, NullProgress, Progress, RichProgress
from ._requests import FieldMap, RequestBuilder
from ._retry import RetryPolicy, StopAfterAttempt, StopAfterDelay, WaitExponentialJitter
from ._stats import Stats
from ._transport import AiohttpTransport, MockTransport, Response, Transport, TransportError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AiohttpTransport",
    "Dispatcher",
    "ErrorInfo",
    "FieldMap",
    "InputError",
    "Job",
    "LogProgress",
    "MockTransport",
    "NullProgress",
    "OutputError",
    "PreparedRequest",
    "Progress",
    "RequestBuilder",
    "RequestDefaults",
    "Response",
    "Result",
    "ResumeError",
    "RetryPolicy",
    "RichProgress",
    "RunSummary",
    "Stats",
    "StopAfterAttempt",
    "StopAfterDelay",
    "Transport",
    "TransportError",
    "VbatchError",
    "WaitExponentialJitter",
    "__version__",
    "arun",
    "connect",
    "iter_results",
    "make_job",
    "run",
    "run_job",
    "stream",
]
