"""A fleet on a Ray cluster (``--ray``): Ray places, hosts and restarts the vLLM servers; this
process feeds them. Ray is an optional extra, imported only here and only when asked for."""

from .cluster import RAY_INSTALL, connect, import_ray, shape_members
from .fleet import RayFleet
from .plan import plan_ray_fleet

__all__ = ["RAY_INSTALL", "RayFleet", "connect", "import_ray", "plan_ray_fleet", "shape_members"]
