"""A Ray fleet's members: how many, and what each asks Ray for, on the cluster joined.

On GPUs a member is one vLLM server per GPU, or per tensor-parallel group, or ``replicas`` of
them sharing a GPU (``num_gpus`` 1/replicas each); ``replicas`` left unset is chosen by the
launch plan's rule, run on a GPU node with that node's facts. On CPU-only clusters a member is
one CPU server per node (``num_cpus`` 1, placed on its node, softly: it may move when the node
dies).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..._config import Backend, LaunchOptions
from ..._engine.sizing import InputMeasure
from ..._errors import ConfigError, LaunchError
from .cluster import import_ray
from .member import node_replicas

__all__ = ["MemberShape", "shape_members"]


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
    """The members for the cluster joined (``cluster.ray_session`` first)."""
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
