"""A job is a value: what to read, how to build requests, where to write; a run's summary is
another. Running one is ``_run``'s (prepare, plan, scan, send)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._client.stats import Stats
from ._config import (
    ENDPOINT_MODES,
    INPUT_FORMATS,
    ORDERS,
    OVERFLOW_POLICIES,
    EndpointMode,
    InputFormat,
    Order,
    OverflowPolicy,
    check_choice,
)
from ._input.data import DataInput
from ._input.requests import FieldMap
from ._input.shard import Shard
from ._models import RequestDefaults
from ._output.writer import OutputState

__all__ = ["Job", "RunSummary"]


@dataclass(frozen=True)
class Job:
    """Everything that decides a job's output. Connection settings (URL, key, window) are the
    dispatcher's, so one dispatcher can serve many jobs and a job can move between servers."""

    input: str | DataInput  # a path (or URL), or Python data (``vbatch.generate``)
    output: str | None = None
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    fields: FieldMap = field(default_factory=FieldMap)
    input_format: InputFormat = "auto"
    endpoint: EndpointMode = "auto"
    order: Order = "completion"
    on_overflow: OverflowPolicy = "error"
    overwrite: bool = False
    retry_failed: bool = False
    force: bool = False
    include_response: bool = False
    shard: Shard | None = None  # only the rows of this shard (an array job's part)
    split: str | None = None  # a dataset's split (a Hub dataset, a saved DatasetDict)

    def __post_init__(self) -> None:
        check_choice("input_format", self.input_format, INPUT_FORMATS)
        check_choice("endpoint", self.endpoint, ENDPOINT_MODES)
        check_choice("order", self.order, ORDERS)
        check_choice("on_overflow", self.on_overflow, OVERFLOW_POLICIES)

    def fingerprint_parts(self, defaults: RequestDefaults, input_digest: str) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        parts: dict[str, Any] = {
            "input": input_digest,
            "model": defaults.model,
            "endpoint": self.endpoint,
            "request_defaults": {**defaults.body_fields(), "system": defaults.system},
            "fields": dataclasses.asdict(self.fields),
            "include_response": self.include_response,
        }
        if self.shard is not None:  # absent otherwise: outputs of unsharded runs still resume
            parts["shard"] = [self.shard.index, self.shard.count]
        return parts


@dataclass
class RunSummary:
    """The end of a run: counts for this run plus what the output held before it."""

    output: str | None
    stats: Stats
    previous: OutputState
    interrupted: bool = False
    servers: dict[str, Any] = field(default_factory=dict)  # the window's and the fleet's side
    sent_to: str | None = None  # an output URL it was sent to (without its query)

    @property
    def failed_total(self) -> int:
        return self.stats.failed + self.previous.failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed_total else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.summary(),
            **self.servers,
            "output": self.output,
            "sent_to": self.sent_to,
            "resumed": self.previous.resumed,
            "previous_ok": self.previous.ok,
            "previous_failed": self.previous.failed,
            "retried_failed": self.previous.dropped_failed,
            "torn_bytes_dropped": self.previous.torn_bytes,
            "interrupted": self.interrupted,
        }
