"""Whether a warm fleet can serve a job: pure, from the fleet's entry and the job's plan."""

from __future__ import annotations

from typing import Any

import orjson

from ..._config import LaunchOptions
from ..._engine.plan import LaunchPlan
from .registry import WarmEntry

__all__ = ["ENGINE_OPTIONS", "engine_options", "misfit"]

# The launch options that shape the engine: a fleet started with other values is another
# engine. (The context is compared by size, replicas by count; timeouts and the keep-alive
# are the run's own.)
ENGINE_OPTIONS = ("max_num_seqs", "tensor_parallel_size", "data_parallel_size",
                  "gpu_memory_utilization", "dtype", "vllm_args", "host", "lora")  # fmt: skip


def engine_options(options: LaunchOptions) -> dict[str, Any]:
    """``options``' engine settings as JSON values (as a warm entry keeps them)."""
    values = {name: getattr(options, name) for name in ENGINE_OPTIONS}
    result: dict[str, Any] = orjson.loads(orjson.dumps(values))  # tuples as lists, nested too
    return result


def misfit(entry: WarmEntry, options: LaunchOptions, plan: LaunchPlan) -> str | None:
    """Why the warm fleet of ``entry`` cannot serve a job planned as ``plan`` with ``options``;
    None when it can: the same model and engine settings, a context at least the one planned,
    and as many replicas as asked for (or, left to the plan, at least as many as it chose)."""
    if entry.model != plan.spec.model:
        return f"it serves {entry.served_model}, not {plan.served_model}"
    wanted = engine_options(options)
    # An entry written before an option existed holds the option's default.
    default = engine_options(LaunchOptions())
    changed = [name for name in ENGINE_OPTIONS
               if entry.engine.get(name, default[name]) != wanted[name]]  # fmt: skip
    if changed:
        return f"it was started with other {', '.join(changed)}"
    need = plan.spec.max_model_len
    if entry.context is not None and (need is None or entry.context < need):
        return (f"its context is {entry.context} tokens; this job needs "
                f"{need or 'the model maximum'}")  # fmt: skip
    if options.replicas is not None and entry.replicas != options.replicas:
        return f"it has {entry.replicas} replica(s), not the {options.replicas} asked for"
    if entry.replicas < plan.replicas:
        return f"it has {entry.replicas} replica(s); this job's plan has {plan.replicas}"
    if options.port and not any(url.endswith(f":{options.port}/v1") for url in entry.urls):
        return f"it does not listen on port {options.port}"
    return None
