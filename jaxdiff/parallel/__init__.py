"""Meshes, logical axis rules and the activation sharding helper."""
from jaxdiff.parallel.axes import DEFAULT_RULES, MESH_AXES
from jaxdiff.parallel.mesh import (check_sharding_coverage, logical_to_spec, make_mesh,
                                   named_sharding, replicated_report, shard, use_mesh)

__all__ = ["DEFAULT_RULES", "MESH_AXES", "check_sharding_coverage", "logical_to_spec",
           "make_mesh", "named_sharding", "replicated_report", "shard", "use_mesh"]
