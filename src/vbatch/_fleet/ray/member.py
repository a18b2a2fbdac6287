"""One member of a ``RayFleet``: a Ray actor that runs one vLLM server on the node Ray placed it
on, planned with that node's own facts (``Machine.detect`` there: its GPU memory, its cores).

Once its server has served, the actor lives exactly as long as it: a thread watches the server
process and ends the actor when it exits, so Ray restarts the actor (``max_restarts``), and with
it a fresh server, on the same node or, when the node died, on another. The server listens on
the node's address as Ray knows it (what the rest of the cluster reaches it by). This class is
plain Python; the fleet makes it a Ray actor (``ray.remote``), and Ray is imported only inside
it, on the member's node.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

from ..._config import LaunchOptions
from ..._engine.machine import Machine
from ..._engine.model import resolve_model
from ..._engine.plan import LaunchPlan, plan_launch
from ..._engine.server import VllmServer
from ..._engine.sizing import InputMeasure

__all__ = ["MemberReady", "ServerMember", "node_replicas"]

WATCH_INTERVAL_S = 0.5


@dataclasses.dataclass(frozen=True)
class MemberReady:
    """What a member reports once its server is healthy."""

    url: str  # base URL, http://NODE:PORT/v1
    window: int  # the client's window for this one server (its plan's, per replica)
    log_path: str  # the server's log, on the member's node
    server_pid: int  # tells a restarted server from the one before


class ServerMember:
    def __init__(
        self,
        model: str | None,
        measure: InputMeasure | None,
        options: LaunchOptions,
    ) -> None:
        """Start the server (returns at once; ``ready`` waits for its health).
        ``options.replicas`` is the number of servers sharing this member's GPU."""
        from ray.util import get_node_ip_address

        host: str = get_node_ip_address()  # type: ignore[no-untyped-call]
        self.plan: LaunchPlan = plan_launch(resolve_model(model), measure, options,
                                            Machine.detect())  # fmt: skip
        spec = self.plan.spec
        extra_args = spec.extra_args
        if (spec.tensor_parallel_size or 1) > 1:
            # vLLM would use Ray for its own workers when it finds itself inside a Ray job;
            # the member's GPUs are all on its node, where plain processes do.
            extra_args = ("--distributed-executor-backend", "mp", *extra_args)
        spec = dataclasses.replace(spec, host=host, port=0, extra_args=extra_args)
        self.server = VllmServer(spec)
        self.server.start()
        self._watcher: threading.Thread | None = None
        self._stopping = False

    def ready(self) -> MemberReady:
        """Block until the server is healthy; ``LaunchError`` (with its log) if it is not. A
        server that never came up is the fleet's to judge (the log says why); one that served
        and then died ends the actor, for Ray to restart."""
        if self._watcher is not None and not self.server.running:
            self._watcher.join()  # it ends the process; Ray restarts it and asks again
        self.server.wait_healthy()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._exit_with_server, daemon=True)
            self._watcher.start()
        window = self.plan.concurrency // self.plan.replicas
        assert self.server.proc is not None
        return MemberReady(self.server.base_url, window, str(self.server.log_path),
                           self.server.proc.pid)  # fmt: skip

    def stop(self) -> None:
        self._stopping = True
        self.server.stop()

    def _exit_with_server(self) -> None:
        proc = self.server.proc
        while proc is not None and proc.poll() is None:
            time.sleep(WATCH_INTERVAL_S)
        if not self._stopping:  # not stopped on purpose: the server died
            self.server.stop(grace_s=5)  # what is left of its process group
            os._exit(1)  # the actor dies with it, and Ray restarts both


def node_replicas(model: str | None, measure: InputMeasure | None, options: LaunchOptions) -> int:
    """The launch plan's replicas for this node's GPU (run as a Ray task on a GPU node)."""
    return plan_launch(resolve_model(model), measure, options, Machine.detect()).replicas
