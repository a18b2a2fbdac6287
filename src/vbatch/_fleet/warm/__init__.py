"""Warm fleets: vLLM servers on this machine kept up between runs (``--keep-alive``), one per
GPU set, owned by a keeper process; later runs attach to them instead of starting vLLM."""

from .control import WarmUsage, stop_keeper, usage
from .fleet import WarmFleet
from .match import misfit
from .registry import WarmEntry, gpu_set, read_entry, warm_entries

__all__ = ["WarmEntry", "WarmFleet", "WarmUsage", "gpu_set", "misfit", "read_entry",
           "stop_keeper", "usage", "warm_entries"]  # fmt: skip
