"""Meshes, logical-to-mesh sharding, the one `shard(x, axes)` helper, and the coverage check."""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdiff.parallel.axes import DEFAULT_RULES, MESH_AXES

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, expert, tensor). Missing axes get size 1; one axis may be -1
    (takes whatever devices remain). Raises naming the axis when sizes don't multiply out."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axis name(s) {sorted(unknown)}; axes are {MESH_AXES}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {free}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices do not divide by the fixed axes' product {known}")
        sizes[free[0]] = len(devices) // known
    total = math.prod(sizes.values())
    if total != len(devices):
        raise ValueError(f"mesh: axes {sizes} need {total} devices, but {len(devices)} are available")
    dims = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


class _Context(threading.local):
    mesh: Mesh | None = None
    rules: Rules = DEFAULT_RULES


_CTX = _Context()


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules: Rules | None = None):
    """Makes `mesh` and `rules` current for `shard()` and for jax's own sharding context."""
    prev = (_CTX.mesh, _CTX.rules)
    _CTX.mesh, _CTX.rules = mesh, tuple(rules) if rules is not None else DEFAULT_RULES
    try:
        if mesh is None:
            yield
        else:
            with jax.set_mesh(mesh):
                yield
    finally:
        _CTX.mesh, _CTX.rules = prev


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: Rules | None = None) -> P:
    """PartitionSpec for logical `axes`. With `shape` and `mesh`, a dimension that the mapped mesh
    axes do not divide stays unsharded, and a mesh axis is used at most once per array."""
    table = dict(rules if rules is not None else _CTX.rules)
    mesh = mesh if mesh is not None else _CTX.mesh
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"no sharding rule for logical axis '{name}'")
        target = table[name]
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        targets = tuple(t for t in targets if t not in used)
        if mesh is not None:
            targets = tuple(t for t in targets if mesh.shape[t] > 1)
            if shape is not None:
                # Keep the longest prefix of mesh axes whose product divides the dimension.
                keep: list[str] = []
                for t in targets:
                    if shape[i] % (math.prod(mesh.shape[k] for k in keep) * mesh.shape[t]) == 0:
                        keep.append(t)
                targets = tuple(keep)
        used.update(targets)
        out.append(None if not targets else (targets[0] if len(targets) == 1 else targets))
    return P(*out)


def named_sharding(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Rules | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def shard(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation to its logical sharding under the current mesh (no-op without one)."""
    mesh = _CTX.mesh
    if mesh is None or mesh.size == 1:
        return x
    if len(axes) != x.ndim:
        raise ValueError(f"shard: {len(axes)} axis names {tuple(axes)} for an array of rank {x.ndim}")
    return jax.lax.with_sharding_constraint(x, named_sharding(axes, x.shape, mesh))


def replicated_report(arrays: Mapping[str, jax.Array], min_bytes: int = 1 << 20) -> list[str]:
    """Names of parameters of at least `min_bytes` that are fully replicated on a mesh with more
    than one device: these silently multiply memory by the device count. Works on abstract arrays
    too (ShapeDtypeStructs sharded over an AbstractMesh), as the memory planner builds them."""
    bad = []
    for name, a in arrays.items():
        sh = getattr(a, "sharding", None)
        nbytes = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
        if sh is None or nbytes < min_bytes or sh.num_devices == 1:
            continue
        if sh.is_fully_replicated:
            bad.append(f"{name} {tuple(a.shape)} {np.dtype(a.dtype).name} ({nbytes / 2**20:.1f} MiB) is fully replicated")
    return bad


def check_sharding_coverage(arrays: Mapping[str, jax.Array], min_bytes: int = 1 << 20) -> None:
    """Raises listing every large parameter that ended up fully replicated."""
    bad = replicated_report(arrays, min_bytes)
    if bad:
        raise ValueError("sharding coverage: large parameters are fully replicated:\n  " + "\n  ".join(bad))


def axis_sizes(mesh: Mesh, names: Iterable[str]) -> int:
    return math.prod(mesh.shape[n] for n in names)
