"""The servers' side of one run: a dispatcher its owner keeps (``vbatch.connect``), or a fleet
built for the run from its ``FleetTarget`` and stopped with it.

When the run starts vLLM here, the plan is made from the scan's first rows and the servers start
from a worker thread's call (``on_sample``) while the scan goes on; once the scan has measured
everything, ``settle`` tells the fleet whether a later row needs a bigger context (then it starts
again from the plan for all rows, before any request is sent). On Ray, the members start once
the scan is done. Servers someone runs are looked at as soon as the run begins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from .._client.dispatcher import Dispatcher, dispatcher_for
from .._config import ClientOptions
from .._engine.model import ModelFiles
from .._engine.plan import LaunchPlan, replan
from .._engine.sizing import InputMeasure
from .._fleet.base import Fleet
from .._fleet.factory import BuiltFleet, FleetFactory, FleetTarget
from .._fleet.local import OnLaunch

__all__ = ["RunServers"]


class RunServers:
    def __init__(
        self,
        servers: FleetTarget | Dispatcher,
        client: ClientOptions,
        on_launch: OnLaunch | None = None,
    ) -> None:
        self._given = servers if isinstance(servers, Dispatcher) else None
        self.target = servers if isinstance(servers, FleetTarget) else None
        self._factory = FleetFactory(self.target) if self.target is not None else None
        self._client = client
        self._on_launch = on_launch
        self._group: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._built: BuiltFleet | None = None
        self._up = asyncio.Event()
        self._measured: asyncio.Future[InputMeasure | None] | None = None
        self._dispatcher: Dispatcher | None = None

    @property
    def launches(self) -> bool:
        return self.target is not None and self.target.launches

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters servers this run launches serve, by name."""
        if not self.launches:
            return []
        assert self.target is not None
        return [name for name, _ in self.target.launch.lora]

    @property
    def plan(self) -> LaunchPlan | None:
        return self._built.plan if self._built is not None else None

    async def __aenter__(self) -> RunServers:
        if self._factory is not None:
            await self._factory.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop sending, then stop the servers this run started, whatever ended it."""
        try:
            if self._dispatcher is not None:
                await self._dispatcher.aclose()
            if self._built is not None:
                await self._built.fleet.stop()
        finally:
            if self._factory is not None:
                await self._factory.__aexit__(*exc)

    def begin(self, group: asyncio.TaskGroup) -> None:
        """Start what can start before the input is read: servers someone runs."""
        self._group, self._loop = group, asyncio.get_running_loop()
        if self.target is not None and not self.target.launches:
            self._start(self._factory_().build())
        elif self._given is not None:
            self._up.set()

    def _factory_(self) -> FleetFactory:
        assert self._factory is not None
        return self._factory

    async def model_name(self) -> str:
        """The model vbatch launches (resolved: the embedded default converted on first use)."""
        return (await asyncio.to_thread(self.model_files)).served

    def model_files(self) -> ModelFiles:
        """The launched model's files (blocking, the first time: call it in a thread)."""
        return self._factory_().model()

    # -- launching, from the scan ----------------------------------------------------------------

    def on_sample(self, measure: InputMeasure) -> int | None:
        """From the scan's thread: plan on the first rows and start this machine's servers;
        returns the context planned (rows that fit it need no exact count)."""
        assert self.target is not None and self._loop is not None
        if self.target.ray is not None:
            return None  # Ray plans from every row, once measured
        plan = self._factory_().plan(measure)
        self._loop.call_soon_threadsafe(self._launch, plan)
        return plan.spec.max_model_len

    def _launch(self, plan: LaunchPlan) -> None:
        assert self._loop is not None
        self._measured = self._loop.create_future()

        async def settle() -> LaunchPlan | None:
            assert self._measured is not None and self.target is not None
            measure = await self._measured
            return None if measure is None else replan(plan, measure, self.target.launch)

        self._start(self._factory_().build(plan=plan, on_launch=self._on_launch, settle=settle))

    def scanned(self, measure: InputMeasure | None) -> None:
        """The scan is over: settle a launch begun on its first rows, or launch now (Ray; or a
        scan too short to reach ``on_sample``)."""
        if not self.launches or self._given is not None:
            return
        if self._measured is not None:
            if not self._measured.done():
                self._measured.set_result(measure)
            return
        if self._built is None:
            assert self.target is not None
            if self.target.ray is None:
                self._launch(self._factory_().plan(measure))
                self.scanned(measure)
            else:  # planning asks the cluster (a Ray task): off the loop
                self._start(lambda: self._factory_().build(measure))

    def _start(self, build: BuiltFleet | Callable[[], BuiltFleet]) -> None:
        assert self._group is not None

        async def start() -> None:
            built = build if isinstance(build, BuiltFleet) else await asyncio.to_thread(build)
            self._built = built
            await built.fleet.start()
            self._up.set()

        self._group.create_task(start())

    # -- sending -------------------------------------------------------------------------------

    async def dispatcher(self) -> Dispatcher:
        """The dispatcher, once a server is up (a fleet that fails to start fails the run)."""
        await self._up.wait()
        if self._given is not None:
            return self._given
        if self._dispatcher is None:
            assert self._built is not None
            self._dispatcher = dispatcher_for(
                self._built.fleet, self._client, window_per_member=self._built.window_per_member
            )
            self._dispatcher.start()  # fmt: skip
        return self._dispatcher

    async def served(self) -> Mapping[str, int | None]:
        """What the servers serve (model -> context size): from the plan for servers vbatch
        starts, else asked of them (``TransportError`` when they cannot say)."""
        return await (await self.dispatcher()).server.served()

    def status_fleet(self) -> Fleet | None:
        if self._given is not None:
            return self._given.fleet
        return self._built.fleet if self._built is not None else None
