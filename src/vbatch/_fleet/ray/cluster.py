"""Reaching a Ray cluster, and deciding its fleet's members: how many, and what each asks Ray for.

On GPUs a member is one vLLM server per GPU, or per tensor-parallel group, or ``replicas`` of
them sharing a GPU (``num_gpus`` 1/replicas each); ``replicas`` left unset is chosen by the
launch plan's rule, run on a GPU node with that node's facts. On CPU-only clusters a member is
one CPU server per node (``num_cpus`` 1, placed on its node, softly: it may move when the node
dies).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from ..._config import Backend, LaunchOptions
from ..._engine.sizing import InputMeasure
from ..._errors import ConfigError, LaunchError
from .member import node_replicas

__all__ = ["RAY_INSTALL", "MemberShape", "connect", "import_ray", "shape_members"]

RAY_INSTALL = "pip install 'vbatch[ray]'"
# Ray rewrites a loopback address (127.0.0.1) to this machine's network address before it
# connects (ray._private.services.resolve_ip_for_localhost), so a driver cannot reach a cluster
# started on loopback only (`ray start --head --node-ip-address 127.0.0.1`) - unless told this,
# which makes it keep loopback addresses as they are. Ray reads it when first imported: a
# program that imported Ray before sets it itself.
_KEEP_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray() -> Any:
    """The ``ray`` module; ``ConfigError`` (exit 2) saying how to get it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def connect(address: str | None) -> str:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; None:
    ``$RAY_ADDRESS``, else ``auto``) as a driver; returns the address used."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if not address.startswith("ray://") and _loopback(address):
        os.environ.setdefault(_KEEP_LOOPBACK_ENV, "0")  # read once, as Ray is imported
    ray = import_ray()
    if ray.is_initialized():
        return address
    try:
        # Members' output stays in their own logs (each server's log is on its node), not on
        # this terminal under the progress display.
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LaunchError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return address


@dataclass(frozen=True)
class MemberShape:
    backend: Backend  # gpu when the cluster has GPUs
    count: int
    replicas: int  # servers sharing one GPU (each member's plan divides the GPU by it)
    num_gpus: float
    nodes: tuple[str, ...] = ()  # CPU: the node each member is placed on

    def actor_options(self, k: int) -> dict[str, Any]:
        """What member ``k`` asks Ray for."""
        if self.backend == "gpu":
            return {"num_gpus": self.num_gpus, "num_cpus": 1}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(self.nodes[k], soft=True)
        return {"num_cpus": 1, "scheduling_strategy": strategy}


def shape_members(
    model: str | None, measure: InputMeasure | None, options: LaunchOptions
) -> MemberShape:
    """The members for the cluster joined (``connect`` first)."""
    ray = import_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if not gpus:
        if options.replicas not in (None, 1) or options.tensor_parallel_size not in (None, 1):
            raise ConfigError("--replicas and --tensor-parallel-size count GPUs; the Ray "
                              "cluster has none (on CPUs it runs one server per node)")  # fmt: skip
        nodes = tuple(n["NodeID"] for n in ray.nodes()
                      if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1)  # fmt: skip
        if not nodes:
            raise LaunchError("the Ray cluster has no node with a CPU to spare for a server")
        return MemberShape("cpu", len(nodes), 1, 0.0, nodes)
    group = options.tensor_parallel_size or 1
    if group > gpus:
        raise ConfigError(f"--tensor-parallel-size {group}: the Ray cluster has {gpus} GPUs")
    replicas = options.replicas
    if replicas is None:
        # The plan's replica rule, with the facts of a GPU node (its memory, its cores).
        one = dataclasses.replace(options, replicas=None)
        task = ray.remote(num_gpus=group, num_cpus=0)(node_replicas)
        replicas = int(ray.get(task.remote(model, measure, one)))
    if replicas > 1 and group > 1:
        raise ConfigError("--replicas > 1 shares one GPU between servers; with "
                          "--tensor-parallel-size > 1 each server spans GPUs")  # fmt: skip
    return MemberShape("gpu", gpus // group * replicas, replicas, group / replicas)
