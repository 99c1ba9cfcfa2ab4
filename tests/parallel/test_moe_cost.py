"""The MoE layer costs what its tokens route, not what its experts number: compiled for 4 fake CPU
devices (XLA:CPU, the tiled kernel; abstract arrays, nothing runs), doubling E at fixed T and k
changes the FLOPs (`cost_analysis`) and the temp bytes (`memory_analysis`) by at most 10%, for the
capacity dispatch and the dropless dispatch (the one-device grouped layer: tools/bench_moe_cost.py,
kept out of CI for time). FLOPs are counted with
the kernel's loop unrolled (XLA counts a loop body once; same arithmetic), temp bytes of the real
loop. The old dropless dispatch (an [E, T, D] buffer per device) failed this by ~2x at E -> 2E."""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.model.expert_parallel import expert_parallel_moe
from jaxdiff.model.moe import BATCH_AXES
from jaxdiff.parallel import make_mesh

T, D, F, K = 4096, 64, 128, 2   # global tokens; per device 1024 tokens, 2048 assignments


def _args(e, mesh):
    spec = lambda *p: NamedSharding(mesh, P(*p))
    arr = lambda shape, *p: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=spec(*p))
    proj = lambda o, i: (arr((e, o, i), "expert", None, None), None)
    return (arr((T, D), BATCH_AXES, None), arr((e, D), None, None), proj(F, D), proj(F, D), proj(D, F))


def _cost(fn, args):
    flops = jax.jit(functools.partial(fn, unroll=True)).lower(*args).compile().cost_analysis()["flops"]
    temp = jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
    return flops, temp


def _layer(kind):
    mesh = make_mesh({"expert": 4}, devices=jax.devices()[:4])
    cf = 1.25 if kind == "capacity" else None
    return mesh, lambda *a, unroll=False: expert_parallel_moe(*a, mesh=mesh, top_k=K, norm_topk_prob=True,
                                                              capacity_factor=cf, impl="tiled", unroll=unroll)


@pytest.mark.parametrize("kind", ["capacity", "dropless"])
def test_doubling_the_experts_keeps_flops_and_buffers(kind):
    mesh, fn = _layer(kind)
    (f1, m1), (f2, m2) = (_cost(fn, _args(e, mesh)) for e in (8, 16))
    # useful expert FLOPs per device: 3 matmuls of 2 * rows * D * F over the routed rows
    useful = 3 * 2 * (T // 4) * K * D * F
    assert f1 >= useful, (f1, useful)       # the unrolled count sees every chunk of the loop
    assert abs(f2 / f1 - 1) <= 0.10, f"FLOPs {f1:.4g} at E=8, {f2:.4g} at E=16"
    assert abs(m2 / m1 - 1) <= 0.10, f"temp bytes {m1} at E=8, {m2} at E=16"
