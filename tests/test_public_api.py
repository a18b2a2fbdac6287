"""Locks the public surface: a change here is a change users see."""

from __future__ import annotations

import vbatch

EXPECTED = {
    "DEFAULT_CONCURRENCY", "AiohttpTransport", "Dispatcher", "ErrorInfo", "FieldMap",
    "InputError", "Job", "LogProgress", "MockTransport", "NullProgress", "OutputError",
    "PreparedRequest", "Progress", "RequestBuilder", "RequestDefaults", "Response", "Result",
    "ResumeError", "RetryPolicy", "RichProgress", "RunSummary", "Stats", "StopAfterAttempt",
    "StopAfterDelay", "Transport", "TransportError", "VbatchError", "WaitExponentialJitter",
    "__version__", "arun", "connect", "iter_results", "make_job", "run", "run_job", "stream",
}  # fmt: skip


def test_all_is_exactly_the_public_surface() -> None:
    assert set(vbatch.__all__) == EXPECTED
    for name in vbatch.__all__:
        assert hasattr(vbatch, name), name


def test_private_modules_are_private() -> None:
    public_modules = [n for n in dir(vbatch) if not n.startswith("_") and n not in EXPECTED]
    assert public_modules == []
