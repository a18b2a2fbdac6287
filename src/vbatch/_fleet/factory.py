"""The one place fleets are made: servers someone runs (URLs), vLLM started on this machine (for
the run, or kept warm across runs: warm/), or vLLM started on a Ray cluster. ``vbatch run``,
``serve`` and ``api`` and the library all come here, so the choice between them, its
conflicts, and the window each member gets are decided once.

A ``FleetFactory`` is entered for the fleet's whole life (for Ray it holds the driver's
connection, and a local Ray instance it started); ``build`` gives a fleet not yet started, with
the plan it was made from. Starting and stopping are the caller's (``running``), so that a job can
start its servers in the background while it reads its input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._config import DOWN_TIMEOUT_S, LaunchOptions, parse_duration
from .._engine.machine import Machine
from .._engine.model import ModelFiles, resolve_model
from .._engine.plan import LaunchPlan, plan_launch
from .._engine.sizing import InputMeasure
from .._errors import ConfigError
from .base import Fleet, base_urls
from .local import LocalFleet, OnLaunch, Settle
from .static import StaticFleet
from .warm import WarmFleet, gpu_set, read_entry

__all__ = ["BuiltFleet", "FleetFactory", "FleetTarget", "running"]


@dataclass(frozen=True)
class FleetTarget:
    """Where a job's servers come from. ``base_urls``: servers someone runs; else vLLM is
    started for the job, on this machine or, with ``ray`` (an address; "" for the default), on a
    Ray cluster, serving ``model`` (None: the embedded default) as ``launch`` says."""

    base_urls: tuple[str, ...] = ()
    ray: str | None = None
    model: str | None = None
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    down_timeout_s: float = DOWN_TIMEOUT_S

    def __post_init__(self) -> None:
        # The one check of "servers of one's own or servers vbatch starts".
        if self.base_urls and self.ray is not None:
            raise ConfigError("--base-url and --ray: servers of one's own, or servers on Ray")
        given = self.launch.given()
        if self.base_urls and given:
            name = given[0]
            flag = name.removesuffix("_s").replace("_", "-")
            raise ConfigError(f"{name} (--{flag}) applies only to a server vbatch starts, not "
                              "beside base_url (--base-url)")  # fmt: skip
        if self.ray is not None and self.launch.keep_alive_s:
            raise ConfigError("--keep-alive keeps servers on this machine, not on Ray")

    @classmethod
    def of(
        cls,
        base_url: str | Sequence[str] | None,
        ray: str | None = None,
        model: str | None = None,
        launch: LaunchOptions | None = None,
        down_timeout_s: float = DOWN_TIMEOUT_S,
    ) -> FleetTarget:
        """The target a caller's options name; ``$VBATCH_BASE_URL`` stands for ``base_url``, and
        ``$VBATCH_KEEP_ALIVE`` for a keep-alive not given, where vbatch starts servers here."""
        urls = base_url or (os.environ.get("VBATCH_BASE_URL") if ray is None else None)
        launch = launch or LaunchOptions()
        keep = os.environ.get("VBATCH_KEEP_ALIVE")
        if keep and not urls and ray is None and not launch.keep_alive_s:
            try:
                launch = dataclasses.replace(launch, keep_alive_s=parse_duration(keep))
            except ConfigError as exc:
                raise ConfigError(f"$VBATCH_KEEP_ALIVE: {exc}") from None
        return cls(tuple(base_urls(urls)) if urls else (), ray, model, launch,
                   down_timeout_s)  # fmt: skip

    @property
    def launches(self) -> bool:
        return not self.base_urls


@dataclass(frozen=True)
class BuiltFleet:
    fleet: Fleet
    plan: LaunchPlan | None = None  # for servers vbatch starts

    @property
    def window_per_member(self) -> int | None:
        """The fixed window for each member up, for servers vbatch planned (twice their batch,
        so a finished sequence finds the next request waiting)."""
        return None if self.plan is None else self.plan.concurrency // self.plan.replicas


class FleetFactory:
    """Builds the fleets of one target (see the module docstring)."""

    def __init__(self, target: FleetTarget) -> None:
        self.target = target
        self._files: ModelFiles | None = None
        self._machine: Machine | None = None
        self._ray: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def __aenter__(self) -> FleetFactory:
        if self.target.ray is not None:
            from .ray import ray_session  # Ray is imported only when asked for

            session = ray_session(self.target.ray or None)
            await session.__aenter__()
            self._ray = session
        return self

    async def __aexit__(self, *exc: Any) -> None:
        ray, self._ray = self._ray, None
        if ray is not None:
            await ray.__aexit__(*exc)

    def model(self) -> ModelFiles:
        """The model vbatch starts servers for (resolved once: the embedded default is
        converted on first use). Blocking: call it in a thread."""
        if self._files is None:
            self._files = resolve_model(self.target.model)
        return self._files

    def plan(self, measure: InputMeasure | None) -> LaunchPlan:
        """The plan of this machine's servers for data that measures ``measure`` (pure but for
        detecting the machine once)."""
        if self._machine is None:
            self._machine = Machine.detect()
        return plan_launch(self.model(), measure, self.target.launch, self._machine)

    def build(
        self,
        measure: InputMeasure | None = None,
        *,
        plan: LaunchPlan | None = None,
        on_launch: OnLaunch | None = None,
        settle: Settle | None = None,
    ) -> BuiltFleet:
        """The fleet, not started. For servers vbatch starts here, from ``plan`` (else planned
        from ``measure``); ``settle`` gives the plan to start again from once the rest of the
        data is measured (``LocalFleet``)."""
        target = self.target
        fleet: Fleet
        if not target.launches:
            return BuiltFleet(StaticFleet(target.base_urls, target.down_timeout_s))
        if target.ray is not None:
            from .ray import plan_ray_fleet

            fleet, ray_plan = plan_ray_fleet(target.model, measure, target.launch,
                                             target.down_timeout_s)  # fmt: skip
            return BuiltFleet(fleet, ray_plan)
        plan = plan or self.plan(measure)
        # A warm fleet when asked for one, or when one is there (to use, or to stop: one fleet
        # per GPU set); else servers of this run's own.
        key = gpu_set(plan.spec.backend)
        if target.launch.keep_alive_s or read_entry(key) is not None:
            fleet = WarmFleet(key, plan, target.launch, on_launch, settle, target.down_timeout_s)
        else:
            fleet = LocalFleet(plan, on_launch, max_restarts=target.launch.max_restarts,
                               settle=settle)  # fmt: skip
        return BuiltFleet(fleet, plan)


@contextlib.asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[Fleet]:
    """``fleet`` started, and stopped when the block is left however it is left (a start that
    fails or is cancelled stops what it started too)."""
    try:
        await fleet.start()
        yield fleet
    finally:
        await fleet.stop()
