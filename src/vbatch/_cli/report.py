"""What the CLI tells the user on stderr: the servers it starts, and the run's summary."""

from __future__ import annotations

import click

from .._fleet.local import Launched
from .._job import RunSummary

__all__ = ["announce", "print_summary"]


def announce(launched: Launched) -> None:
    plan, spec = launched.plan, launched.plan.spec
    size = f"max_model_len {spec.max_model_len}" if spec.max_model_len else "the model's context"
    count = f"{len(launched.urls)} replicas of " if len(launched.urls) > 1 else ""
    where = launched.urls[0] if launched.urls else "?"
    if launched.warm is None:
        click.echo(f"vbatch: starting {count}vLLM ({spec.backend}) for {plan.served_model} on "
                   f"{where}, {size}, window {plan.concurrency}", err=True)  # fmt: skip
    else:
        click.echo(f"vbatch: {launched.warm}: {count}vLLM ({spec.backend}) for "
                   f"{plan.served_model} on {where}, {size}", err=True)  # fmt: skip
    for note in plan.notes:
        click.echo(f"vbatch: {note}", err=True)
    click.echo(f"vbatch: server log: {launched.log}", err=True)


def print_summary(summary: RunSummary) -> None:
    s = summary.stats
    prev = summary.previous
    lines = [
        f"vbatch: {'interrupted' if summary.interrupted else 'done'}: {s.done:,} rows sent "
        f"({s.ok:,} ok, {s.failed:,} errors, {s.retries:,} retries"
        + (
            f", {s.schema_errors:,} of the errors replies not fitting the schema"
            if s.schema_errors
            else ""
        )
        + (f", {s.clamped:,} clamped" if s.clamped else "")
        + ")"
        + (f", {s.skipped:,} already done" if s.skipped else ""),
        "vbatch: "
        + (f"{s.startup_s:.1f}s starting, then " if s.startup_s >= 0.5 else "")
        + f"{s.elapsed_s:.1f}s, {s.requests_per_s:,.1f} req/s, "
        f"{s.completion_tokens:,} output tokens ({s.output_tokens_per_s:,.0f} tok/s), "
        f"{s.prompt_tokens:,} prompt tokens",
    ]
    lines += [f"vbatch: restarted: {why}" for why in summary.servers.get("restart_reasons", ())]
    if prev.torn_bytes:
        lines.append(f"vbatch: dropped a torn last line ({prev.torn_bytes} bytes) from the output")
    if summary.failed_total:
        lines.append(f"vbatch: {summary.failed_total:,} rows are error records in {summary.output}"
                     " (re-run with --retry-failed to send them again)")  # fmt: skip
    else:
        lines.append(f"vbatch: results in {summary.output}")
    if summary.sent_to:
        lines.append(f"vbatch: and sent to {summary.sent_to}")
    for line in lines:
        click.echo(line, err=True)
