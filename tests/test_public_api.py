"""Locks the public surface: a change here is a change users see."""

from __future__ import annotations

import pkgutil

import vbatch

EXPECTED = {
    "DEFAULT_CONCURRENCY", "AiohttpTransport", "ConfigError", "Dispatcher", "ErrorInfo",
    "FieldMap", "FleetError", "InputError", "Job", "LaunchError", "LogProgress",
    "MockTransport", "NullProgress", "OutputError", "PreparedRequest", "Progress",
    "RejectedError", "RequestBuilder", "RequestDefaults", "Response", "Result", "ResumeError",
    "RetryPolicy", "RichProgress", "RunSummary", "Stats", "StopAfterAttempt", "StopAfterDelay",
    "Transport", "TransportError", "VbatchError", "WaitExponentialJitter", "__version__",
    "arun", "connect", "iter_results", "make_job", "run", "run_job", "stream",
    "MergeError", "MergeSummary", "merge",
    "ClientOptions", "LaunchOptions", "Options", "ResultStream", "RunView",
    "generate", "agenerate", "RowResult",
}  # fmt: skip


def test_all_is_exactly_the_public_surface() -> None:
    assert set(vbatch.__all__) == EXPECTED
    for name in vbatch.__all__:
        assert hasattr(vbatch, name), name


def test_private_modules_are_private() -> None:
    public_modules = [n for n in dir(vbatch) if not n.startswith("_") and n not in EXPECTED]
    assert public_modules == []
    # Every module and subpackage of the layout is private, however deep it sits.
    for info in pkgutil.walk_packages(vbatch.__path__, "vbatch."):
        top = info.name.split(".")[1]
        assert top.startswith("_"), info.name


def test_one_exception_tree() -> None:
    errors = [vbatch.ConfigError, vbatch.FleetError, vbatch.InputError, vbatch.LaunchError,
              vbatch.OutputError, vbatch.RejectedError, vbatch.ResumeError,
              vbatch.TransportError, vbatch.MergeError]  # fmt: skip
    for error in errors:
        assert issubclass(error, vbatch.VbatchError), error
