"""A fleet on a Ray cluster (``--ray``): Ray places, hosts and restarts the vLLM servers; this
process feeds them. Ray is an optional extra, imported only here and only when asked for."""

from .cluster import RAY_INSTALL, RaySession, import_ray, ray_session
from .fleet import RayFleet
from .plan import plan_ray_fleet
from .shape import shape_members

__all__ = ["RAY_INSTALL", "RayFleet", "RaySession", "import_ray", "plan_ray_fleet", "ray_session",
           "shape_members"]  # fmt: skip
