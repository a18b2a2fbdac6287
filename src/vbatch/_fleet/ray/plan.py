"""Planning a job's Ray fleet on the driver, for the data as measured once here: the members
shaped for the cluster, and what the client needs of them (the served name, each member's
window). Each member then plans its own server with its node's facts (member.py)."""

from __future__ import annotations

import dataclasses

from ..._config import DEFAULT_HOST, DOWN_TIMEOUT_S, LaunchOptions
from ..._engine.machine import Machine
from ..._engine.model import resolve_model
from ..._engine.plan import LaunchPlan, plan_launch
from ..._engine.sizing import InputMeasure
from ..._errors import ConfigError
from .fleet import RayFleet
from .shape import shape_members

__all__ = ["plan_ray_fleet"]


def plan_ray_fleet(
    model: str | None,
    measure: InputMeasure | None,
    options: LaunchOptions,
    down_timeout_s: float = DOWN_TIMEOUT_S,
) -> tuple[RayFleet, LaunchPlan]:
    """The fleet for a cluster joined (``cluster.ray_session``), and the plan of one of its
    servers as this driver sees it (``served_model``; ``concurrency`` per member), for data
    that measures ``measure`` (None: no data, as for ``vbatch serve``). Blocking (on GPUs it
    asks a node): call it in a thread."""
    if options.host != DEFAULT_HOST or options.port:
        raise ConfigError("--host and --port do not apply with --ray: each member listens on "
                          "its node's address, on a free port")  # fmt: skip
    files = resolve_model(model)
    shape = shape_members(model, measure, options)
    one = dataclasses.replace(options, replicas=shape.replicas)
    plan = plan_launch(files, measure, one, Machine(shape.backend))
    plan = dataclasses.replace(plan, concurrency=plan.concurrency // plan.replicas, replicas=1)
    return RayFleet(shape, model, measure, options, down_timeout_s), plan
