"""The MoE layer's compiled cost, now and before (compile only, abstract arrays; XLA:CPU, tiled kernel).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/bench_moe_cost.py [--before b0844e0]

1. Expert-parallel dispatch on 4 devices, E and 2E experts at fixed tokens and k: FLOPs
   (`cost_analysis`, the kernel's loop unrolled: XLA counts a loop body once) and temp bytes
   (`memory_analysis`, the real loop) of the capacity and dropless dispatches and of the one-device
   grouped layer, beside the old code's (its modules read from git at --before).
2. One block-FP8 MoE layer's forward at the Qwen3-Coder-30B-A3B width (D 2048, F 768, 128 experts,
   top-8, bf16 activations, 512 tokens): temp bytes now and before (the old path dequantized every
   expert, then ran its tiled kernel).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.checkpoint import fp8
from jaxdiff.model.expert_parallel import expert_parallel_moe
from jaxdiff.model.layers import BlockFp8, dequantize_blocks
from jaxdiff.model.moe import BATCH_AXES, grouped_moe
from jaxdiff.parallel import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def old_module(rev: str, path: str, name: str):
    """A module of the repository as it was at `rev` (importing today's jaxdiff for the rest)."""
    src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    sys.modules[name] = mod
    return mod


def cost(fn, args, unroll_kw: bool):
    f = functools.partial(fn, unroll=True) if unroll_kw else fn
    flops = jax.jit(f).lower(*args).compile().cost_analysis()["flops"]
    temp = jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
    return flops, temp


def scaling(rev: str, t: int, d: int, f: int, k: int, e: int):
    old_ep = old_module(rev, "jaxdiff/model/expert_parallel.py", "_old_expert_parallel")
    old_moe = old_module(rev, "jaxdiff/model/moe.py", "_old_moe")
    mesh = make_mesh({"expert": 4}, devices=jax.devices()[:4])

    def args(n_exp, sharded):
        spec = lambda *p: NamedSharding(mesh, P(*p)) if sharded else None
        arr = lambda shape, *p: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=spec(*p))
        proj = lambda o, i: (arr((n_exp, o, i), "expert", None, None), None)
        return (arr((t, d), BATCH_AXES, None), arr((n_exp, d), None, None), proj(f, d), proj(f, d), proj(d, f))

    def old_single(x, r, g, u, dn):   # the old SparseMoeBlock's one-device path
        _, w, chosen = old_moe.route(x, r, k, True)
        flat = chosen.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        sizes = jnp.bincount(flat, length=r.shape[0]).astype(jnp.int32)
        ys = old_moe.grouped_swiglu(x[order // k], g, u, dn, sizes, "tiled") * w.reshape(-1)[order][:, None]
        return jnp.zeros_like(x).at[order // k].add(ys)

    rows = [
        ("capacity 1.25, 4 dev", True, lambda *a, unroll=False: expert_parallel_moe(
            *a, mesh=mesh, top_k=k, norm_topk_prob=True, capacity_factor=1.25, unroll=unroll),
         lambda *a: old_ep.expert_parallel_moe(*a, mesh=mesh, top_k=k, norm_topk_prob=True, capacity_factor=1.25)),
        ("dropless, 4 dev", True, lambda *a, unroll=False: expert_parallel_moe(
            *a, mesh=mesh, top_k=k, norm_topk_prob=True, unroll=unroll),
         lambda *a: old_ep.expert_parallel_moe(*a, mesh=mesh, top_k=k, norm_topk_prob=True)),
        ("grouped, 1 dev", False, lambda *a, unroll=False: grouped_moe(
            *a, top_k=k, norm_topk_prob=True, impl="tiled", unroll=unroll), old_single),
    ]
    print(f"T={t} tokens (global), D={d}, F={f}, k={k}; E={e} vs {2 * e}; per device: FLOPs / temp MiB")
    print(f"{'path':22s} {'':6s} {'FLOPs E':>10s} {'FLOPs 2E':>10s} {'ratio':>6s} {'temp E':>8s} {'temp 2E':>8s} {'ratio':>6s}")
    for name, sharded, new, old in rows:
        for label, fn, unroll in (("now", new, True), ("before", old, False)):
            (f1, m1), (f2, m2) = (cost(fn, args(n, sharded), unroll) for n in (e, 2 * e))
            print(f"{name:22s} {label:6s} {f1:10.3g} {f2:10.3g} {f2 / f1:6.2f} {m1 / 2**20:8.1f} {m2 / 2**20:8.1f} "
                  f"{m2 / m1:6.2f}", flush=True)


def fp8_layer(rev: str, t=512, d=2048, f=768, e=128, k=8):
    old_moe = old_module(rev, "jaxdiff/model/moe.py", "_old_moe")
    blk, sds = (128, 128), jax.ShapeDtypeStruct
    w8 = lambda o, i: BlockFp8(sds((e, o, i), ml_dtypes.float8_e4m3fn), sds(fp8.scale_shape((e, o, i), blk), jnp.float32), blk)
    x, r = sds((t, d), jnp.bfloat16), sds((e, d), jnp.bfloat16)

    def now(x, r, g, u, dn):
        return grouped_moe(x, r, (g, None), (u, None), (dn, None), top_k=k, norm_topk_prob=True, impl="tiled")[0]

    def before(x, r, g, u, dn):   # the old block: ExpertLinear.kernel(dtype) dequantized every expert
        full = [(dequantize_blocks(p.w, p.scale_inv, p.block, x.dtype), None) for p in (g, u, dn)]
        _, w, chosen = old_moe.route(x, r, k, True)
        flat = chosen.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
        ys = old_moe.grouped_swiglu(x[order // k], *full, sizes, "tiled") * w.reshape(-1)[order][:, None]
        return jnp.zeros_like(x).at[order // k].add(ys)

    full_bf16, fp8_bytes = 3 * e * f * d * 2, 3 * e * f * d
    print(f"\nFP8 MoE layer forward, D={d} F={f} E={e} k={k}, {t} tokens, bf16 activations "
          f"(FP8 experts {fp8_bytes / 2**20:.0f} MiB; dequantized to bf16 {full_bf16 / 2**20:.0f} MiB)")
    for label, fn in (("now", now), ("before", before)):
        c = jax.jit(fn).lower(x, r, w8(f, d), w8(f, d), w8(d, f)).compile()
        print(f"  {label:6s} temp {c.memory_analysis().temp_size_in_bytes / 2**20:8.0f} MiB", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="b0844e0", help="git revision holding the old MoE code")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--experts", type=int, default=8)
    a = p.parse_args()
    if jax.device_count() < 4:
        sys.exit("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    scaling(a.before, a.tokens, 64, 128, 2, a.experts)
    fp8_layer(a.before)


if __name__ == "__main__":
    main()
